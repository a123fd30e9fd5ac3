"""restorer-cli models ...: list, info, add, verify, remove, download, export; and restoring
with a model that is not installed."""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from restorer.cli import main
from restorer.run.loader import build_runner
from restorer.zoo import layout
from restorer.zoo import recognise as recognise_mod
from restorer.zoo.catalog import human_size
from tests.store_helpers import HAT_TINY, FileServer, tiny_hat_entry, use_catalog, write_sparse_safetensors

LONG_LICENCE = "Academic Public License (the authors' repository: non-commercial academic use only)"
CATALOG = (
    tiny_hat_entry("tiny-hat", notes="Upscales tiny test images x2.",
                   files=[{"name": "tiny-hat.safetensors", "url": "https://example.invalid/tiny-hat.safetensors"}])
    + tiny_hat_entry("tiny-nc", tiny="hat_tiny_x3", licence=LONG_LICENCE, non_commercial=True,
                     files=[{"name": "HAT_SRx3.pth", "url": "https://drive.google.com/XYZ", "browser": True}])
    + tiny_hat_entry("tiny-gone", tiny="hat_tiny_x4", released=False, files=[])
)


@pytest.fixture(autouse=True)
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    return use_catalog(monkeypatch, CATALOG)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def add_tiny(tmp_path, capsys):
    source = tmp_path / "tiny-hat.safetensors"
    source.write_bytes((HAT_TINY / "hat_tiny_x2.safetensors").read_bytes())
    return run(capsys, "models", "add", str(source))


def table(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}


def test_list_hides_unreleased_and_never_cuts_the_licence(tmp_path, capsys):
    code, out, err = run(capsys, "models", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "FOR", "SCALE", "SIZE", "STATUS", "LICENCE"]
    lines = table(out)
    assert set(lines) == {"tiny-hat", "tiny-nc"}  # tiny-gone was announced, never released
    assert "1 model(s) announced by their authors but never released are hidden: --all lists them" in err
    assert "not installed" in lines["tiny-hat"] and lines["tiny-hat"].endswith("  MIT")
    assert lines["tiny-nc"].endswith(f"  {LONG_LICENCE} [non-commercial]")  # whole, however long
    assert "[non-commercial] = the licence forbids commercial use" in err

    code, out, err = run(capsys, "models", "list", "--all")
    lines = table(out)
    assert set(lines) == {"tiny-hat", "tiny-nc", "tiny-gone"} and "hidden" not in err
    assert "never released" in lines["tiny-gone"]
    assert [r["id"] for r in json.loads(run(capsys, "models", "list", "--json")[1])] == ["tiny-hat", "tiny-nc"]
    assert len(json.loads(run(capsys, "models", "list", "--all", "--json")[1])) == 3

    assert add_tiny(tmp_path, capsys)[0] == 0
    code, out, _ = run(capsys, "models", "list", "--json")
    rows = {r["id"]: r for r in json.loads(out)}
    assert {"id", "tasks", "arch", "scale", "size", "licence", "installed"} <= set(rows["tiny-hat"])
    assert rows["tiny-hat"]["installed"] is True and rows["tiny-nc"]["installed"] is False
    assert rows["tiny-nc"]["non_commercial"] is True and rows["tiny-hat"]["scale"] == 2
    # The catalog does not know this file's size; once installed, its size on disk is shown.
    size = (HAT_TINY / "hat_tiny_x2.safetensors").stat().st_size
    assert rows["tiny-hat"]["size"] == size and rows["tiny-nc"]["size"] == 0
    line = table(run(capsys, "models", "list")[1])["tiny-hat"]
    assert human_size(size) in line and "installed" in line and "not installed" not in line
    code, out, _ = run(capsys, "models", "list", "--installed", "--json")
    assert [r["id"] for r in json.loads(out)] == ["tiny-hat"]


def test_info_speaks_to_users(capsys):
    code, out, _ = run(capsys, "models", "info", "tiny-nc")
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines()[1:])
    assert out.splitlines()[0] == "tiny HAT tiny-nc"
    assert fields["licence"].strip() == LONG_LICENCE  # already says non-commercial: nothing added
    assert fields["status"].strip() == "not installed"
    assert fields["install"].strip().startswith("download HAT_SRx3.pth in a browser from https://drive.google.com/XYZ")
    assert "pad_multiple" not in out and "precisions" not in out  # implementation details stay in --json
    code, out, _ = run(capsys, "models", "info", "tiny-hat")
    assert "about:      Upscales tiny test images x2." in out.splitlines()
    assert "details:    docs/models.md in restorer's source, section tiny-hat" in out.splitlines()
    code, out, _ = run(capsys, "models", "info", "tiny-gone")
    assert "status:     never released" in out and "install" not in out


PACKAGED = tomllib.loads(resources.files("restorer_models").joinpath("catalog.toml").read_text())["model"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def test_catalog_notes_are_short_and_details_are_in_docs():
    """`notes` is what users read (models info, the app); implementation details live in
    docs/models.md, one section per catalog id."""
    sections = {line[3:].strip() for line in DOCS.read_text().splitlines() if line.startswith("## ")}
    missing = [e["id"] for e in PACKAGED if e["id"] not in sections]
    assert not missing, f"docs/models.md has no section for {missing}"
    long = {e["id"]: len(e.get("notes", "")) for e in PACKAGED if len(e.get("notes", "")) > 250}
    assert not long, f"notes over 250 characters (move the details to docs/models.md): {long}"


def test_restoring_with_a_model_not_installed_prints_the_hint(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code, _, err = run(capsys, str(image), "-o", str(tmp_path / "out"), "--model", "tiny-hat")
    assert code == 2
    assert err.strip() == "restorer-cli: model 'tiny-hat' is not installed: restorer-cli models download tiny-hat"
    code, _, err = run(capsys, str(image), "-o", str(tmp_path / "out"), "--model", "tiny-nc")
    assert code == 2 and "restorer-cli models add HAT_SRx3.pth --id tiny-nc" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_add_info_verify_remove(tmp_path, capsys):
    code, out, _ = add_tiny(tmp_path, capsys)
    assert code == 0 and out.startswith("installed tiny-hat: ")
    code, out, _ = run(capsys, "models", "info", "tiny-hat", "--json")
    info = json.loads(out)
    assert info["installed"] and info["state"] == "installed" and info["files"][0]["name"] == "tiny-hat.safetensors"
    assert run(capsys, "models", "verify")[1].strip() == "tiny-hat: ok"
    # an export and the optimised graph a runner kept beside it go with the model
    from restorer.run.onnx import optimized_path

    export = layout.onnx_path(store_spec("tiny-hat"))
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_bytes(b"graph")
    kept = optimized_path(export, {"s0": 64})
    kept.write_bytes(b"optimised graph")
    assert run(capsys, "models", "remove", "tiny-hat")[0] == 0
    assert not export.exists() and not kept.exists()
    code, _, err = run(capsys, "models", "remove", "tiny-hat")
    assert code == 2 and err.strip() == "restorer-cli: model 'tiny-hat' is not installed"


def test_add_refusals_are_one_line(tmp_path, capsys):
    broken = tmp_path / "weird.safetensors"
    entries = [[k, list(v), "float32"] for k, v in recognise_mod.signature(store_spec("tiny-hat")).items()]
    bad = write_sparse_safetensors(broken, entries, broken="first")
    code, out, err = run(capsys, "models", "add", str(broken))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("restorer-cli: weird.safetensors matches no catalog model")
    assert f"tensor {bad}: expected shape" in err
    code, _, err = run(capsys, "models", "add", str(tmp_path / "nope.pth"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "models", "add", str(broken), "--id", "no-such-model")
    assert code == 2 and "unknown model 'no-such-model'" in err


def store_spec(model_id):
    from restorer.zoo import catalog

    return catalog.load_catalog().get(model_id)


def test_download_command_from_a_mirror(tmp_path, capsys):
    data = (HAT_TINY / "hat_tiny_x2.safetensors").read_bytes()
    with FileServer({"/m/tiny-hat.safetensors": data}) as server:
        code, out, err = run(capsys, "models", "download", "tiny-hat", "--mirror", f"{server.url}/m")
    assert code == 0, err
    assert "installed tiny-hat" in out
    assert hashlib.sha256(layout.weights_path(store_spec("tiny-hat")).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    code, _, err = run(capsys, "models", "download", "tiny-nc")
    assert code == 2 and "https://drive.google.com/XYZ" in err and "models add HAT_SRx3.pth --id tiny-nc" in err


@pytest.mark.slow
def test_export_checks_parity_and_the_runner_uses_it(tmp_path, capsys):
    """One real export (the slowest test here): a tiny HAT through `models export`."""
    spec = store_spec("tiny-hat")
    code, _, err = run(capsys, "models", "export", "tiny-hat")
    assert code == 2 and err.strip() == "restorer-cli: model 'tiny-hat' is not installed: restorer-cli models download tiny-hat"
    assert add_tiny(tmp_path, capsys)[0] == 0
    code, _, err = run(capsys, "models", "export", "tiny-hat", "--fp16")
    assert code == 2 and "fp16 is not known to be safe for 'tiny-hat'" in err and "--force" in err

    eager = build_runner(spec, device="cpu")
    assert eager.info.backend == "torch"
    assert any("restorer-cli models export tiny-hat" in n for n in eager.info.notes)

    code, out, err = run(capsys, "models", "export", "tiny-hat", "--tile", "16")
    assert code == 0, err
    path = layout.onnx_path(spec)
    assert path.is_file() and f"exported tiny-hat (fp32): {path}" in out
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["dynamic_hw"] is True and sidecar["tile"] == 16 and sidecar["max_abs_diff"] <= 1e-4

    onnx = build_runner(spec, device="cpu")
    assert (onnx.info.backend, onnx.needs.preferred_tile, onnx.needs.scale, onnx.needs.pad_multiple) == ("onnx", None, 2, 4)
    x = np.random.default_rng(0).random((1, 3, 12, 20), dtype=np.float32)  # not the export size
    np.testing.assert_allclose(onnx(x), eager(x), atol=1e-4)
    assert json.loads(run(capsys, "models", "list", "--json")[1])[0]["state"] == "onnx"
    code, out, _ = run(capsys, "models", "export", "tiny-hat")  # cached: no second export
    assert code == 0 and "max abs diff" in out
