"""The old-photo pipeline on ONNX Runtime: `restorer-cli models export oldphoto` exports the
parts that are installed (the VAEs as their encoder and decoder sub-graphs, each checked
against PyTorch), and the scratch path then runs on those exports, without importing
torch, to the eager-PyTorch result. Fixture weights as in tests/test_old_photo_cli.py.

Faces are left out (--no-faces): the fixture's random face generator gives NaN in PyTorch
itself, so there is nothing to compare it on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_old_photo_cli import PHOTO, _register_fixture_parts

REPO = Path(__file__).resolve().parents[1]
SCRATCH_PARTS = ("oldphoto-scratch-detector", "oldphoto-vae-a-quality", "oldphoto-mapping-scratch",
                 "oldphoto-vae-b-scratch")
# restorer-cli in a fresh interpreter, saying on stderr whether torch got imported.
CLI_WATCHING_TORCH = ("import sys\nfrom restorer.cli import main\ncode = main(sys.argv[1:])\n"
                      "print('TORCH IMPORTED', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(code)")


def restore(home: Path, out: Path) -> tuple[dict, str]:
    env = {**os.environ, "RESTORER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CLI_WATCHING_TORCH, str(PHOTO), "-o", str(out), "--task", "old-photo",
                        "--scratches", "yes", "--no-faces", "--json",
                        "--device", "cpu"],  # ONNX Runtime (auto would pick OpenVINO on an Intel CPU)
                       capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["files"][0]["steps"][0], r.stderr


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_exported_parts_run_on_onnx_runtime_without_torch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    home = tmp_path / "h"
    _register_fixture_parts(home)
    catalog = home / "catalog.toml"  # the detector is gray: the export traces it with 1 channel
    catalog.write_text(catalog.read_text().replace('id = "oldphoto-scratch-detector"',
                                                   'id = "oldphoto-scratch-detector"\nchannels = 1'))
    monkeypatch.setenv("RESTORER_HOME", str(home))

    eager, err = restore(home, tmp_path / "torch")
    # The fixture VAEs have the released configuration: restorer's templates run them on ONNX
    # Runtime from the first use; the other parts (tiny fixture configs) run in PyTorch.
    assert eager["runner"] == "onnx+torch" and eager["provider"].endswith("torch:cpu")
    assert "TORCH IMPORTED True" in err

    # Only the scratch path's parts are here while exporting: the others are skipped, by name.
    from restorer.zoo import install
    from restorer.zoo import layout
    from restorer.zoo.catalog import load_catalog
    from restorer.models_cli import main as models_main

    others = [n for n in load_catalog().get("oldphoto").needs if n not in SCRATCH_PARTS]
    for part_id in others:
        (home / "models" / part_id).rename(tmp_path / part_id)
    assert models_main(["export", "oldphoto", "--tile", "64"]) == 0
    out, err = capsys.readouterr()
    assert f"skipping {', '.join(others)} (not installed)" in err
    assert len(out.splitlines()) == len(SCRATCH_PARTS)
    for part_id in others:
        (tmp_path / part_id).rename(home / "models" / part_id)

    vae_a = load_catalog().get("oldphoto-vae-a-quality")
    for part in ("encoder", "decoder"):
        path = layout.onnx_path(vae_a, "fp32", part)
        assert path.name == f"oldphoto-vae-a-quality.{part}.fp32.onnx" and str(path) in out
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["part"] == part and record["tolerance"] == 1e-4
        assert record["max_abs_diff"] <= record["tolerance"] * record["scale"]
    assert not layout.onnx_path(vae_a).exists()  # a VAE is never exported whole
    assert layout.exported_parts(vae_a) == ["decoder", "encoder"]
    assert layout.exported_precisions(vae_a) == ["fp32"] and layout.state(vae_a) == "onnx"
    assert layout.state(load_catalog().get("oldphoto-vae-b-quality")) == "installed"

    onnx, err = restore(home, tmp_path / "onnx")
    assert (onnx["runner"], onnx["provider"]) == ("onnx", "CPUExecutionProvider")
    assert "TORCH IMPORTED False" in err
    assert [s["stage"] for s in onnx["stages"]] == ["scratch-detection", "global-restoration"]
    assert onnx["stages"][0]["share"] == eager["stages"][0]["share"]  # the same scratch mask
    got, want = pixels(tmp_path / "onnx" / PHOTO.name), pixels(tmp_path / "torch" / PHOTO.name)
    assert got.shape == want.shape and np.abs(got - want).max() <= 2

    # Removing a model removes its part exports and their records.
    removed = install.remove(vae_a)
    assert layout.onnx_path(vae_a, "fp32", "encoder").with_suffix(".json") in removed
    assert layout.exported_parts(vae_a) == [] and layout.state(vae_a) == "missing"
