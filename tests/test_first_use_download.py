"""First-use download with consent: a request that needs a model that is not installed
asks once on a terminal, --download / --no-download decide without asking, and a run
without a terminal prints the command to type (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restorer.cli import main
from restorer.plan import request
from restorer.zoo import layout
from tests.store_helpers import HAT_TINY, FileServer, tiny_hat_entry, use_catalog

ROOT = Path(__file__).resolve().parents[1]
DATA = (HAT_TINY / "hat_tiny_x2.safetensors").read_bytes()
ENTRY = tiny_hat_entry("tiny-hat",
                       files=[{"name": "tiny-hat.safetensors", "url": "https://example.invalid/tiny-hat.safetensors",
                               "size": len(DATA)}])
# the same network offered for a task with no built-in operator (the task path)
DERAIN = tiny_hat_entry("tiny-derain", tasks=["derain"], rank=99,
                        files=[{"name": "tiny-derain.safetensors", "url": "https://example.invalid/tiny-derain.safetensors"}])


def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 12, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    use_catalog(monkeypatch, ENTRY + DERAIN)
    # the ONNX conversion after a download is tested with `models export`; skip it here
    import restorer.convert.export as export

    calls = []
    monkeypatch.setattr(export, "export_model", lambda spec, **kw: calls.append(spec.id) or (_ for _ in ()).throw(RuntimeError("skipped")))
    return calls


def test_planner_says_what_to_download(store):
    with pytest.raises(request.ModelMissing) as e:
        request.plan_request(request.Options(), model="tiny-hat")
    assert [s.id for s in e.value.specs] == ["tiny-hat"] and e.value.wanted == "tiny-hat"
    assert str(e.value) == "model 'tiny-hat' is not installed: restorer-cli models download tiny-hat"
    with pytest.raises(request.ModelMissing) as e:
        request.plan_request(request.Options(), task="derain")
    assert [s.id for s in e.value.specs] == ["tiny-derain"] and e.value.wanted == "derain"
    assert str(e.value).startswith("no installed model can do 'derain'")


def test_download_flag_fetches_and_restores_in_one_command(tmp_path, monkeypatch, store, capsys):
    src = image(tmp_path)
    with FileServer({"/m/tiny-hat.safetensors": DATA, "/m/tiny-derain.safetensors": DATA}) as server:
        monkeypatch.setenv("RESTORER_MIRROR", f"{server.url}/m")
        code = main([str(src), "-o", str(tmp_path / "out"), "--model", "tiny-hat", "--download", "--device", "cpu"])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert "downloading tiny-hat" in err and "1 restored" in err
        assert store == ["tiny-hat"]  # converted (tried) at once
        from PIL import Image

        assert Image.open(tmp_path / "out" / "in.png").size == (24, 24)
        assert layout.is_installed(request.load_catalog().get("tiny-hat"))

        code = main([str(src), "-o", str(tmp_path / "out2"), "--task", "derain", "--download", "--device", "cpu"])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert "downloading tiny-derain" in err and (tmp_path / "out2" / "in.png").is_file()


def test_no_download_and_no_terminal_print_the_command(tmp_path, store, capsys, monkeypatch):
    src = image(tmp_path)
    for extra in (["--no-download"], []):
        code = main([str(src), "-o", str(tmp_path / "out"), "--model", "tiny-hat", *extra])
        _, err = capsys.readouterr()
        assert code == 2
        assert err.strip() == "restorer-cli: model 'tiny-hat' is not installed: restorer-cli models download tiny-hat"
    assert not (tmp_path / "out").exists()


def test_a_failed_download_is_one_line_and_exit_2(tmp_path, store, capsys, monkeypatch):
    src = image(tmp_path)
    with FileServer({}) as server:
        monkeypatch.setenv("RESTORER_MIRROR", f"{server.url}/m")
        code = main([str(src), "-o", str(tmp_path / "out"), "--model", "tiny-hat", "--download"])
    _, err = capsys.readouterr()
    assert code == 2 and "HTTP 404" in err
    assert not layout.model_dir(request.load_catalog().get("tiny-hat")).exists() or not any(
        layout.model_dir(request.load_catalog().get("tiny-hat")).iterdir())


# ---------------------------------------------------------------- a real terminal


# restorer-cli with the ONNX conversion stubbed out (a real export of even the tiny HAT takes
# most of a minute; `models export` has its own test)
CLI_WITHOUT_EXPORT = """
import sys, types
stub = types.ModuleType("restorer.convert.export")
def export_model(spec, **kw):
    raise RuntimeError("skipped in this test")
stub.export_model = export_model
sys.modules["restorer.convert.export"] = stub
from restorer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_on_a_terminal(tmp_path, server_url, answer: bytes, *args) -> tuple[int, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "catalog.toml").write_text(ENTRY)
    env = dict(os.environ, RESTORER_HOME=str(home), RESTORER_MIRROR=f"{server_url}/m", PYTHONPATH=str(ROOT))
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", CLI_WITHOUT_EXPORT, *args], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=ROOT)
        os.close(slave)
        os.write(master, answer)  # typed ahead: the terminal holds it until the question reads it
        out, err = proc.communicate(timeout=300)
        return proc.returncode, err.decode()
    finally:
        os.close(master)


@pytest.mark.parametrize("answer", [b"y\n", b"n\n"])
def test_the_terminal_asks_once(tmp_path, answer):
    src = image(tmp_path)
    with FileServer({"/m/tiny-hat.safetensors": DATA}) as server:
        code, err = _run_on_a_terminal(tmp_path, server.url, answer, str(src), "-o", str(tmp_path / "out"),
                                       "--model", "tiny-hat", "--device", "cpu")
        fetched = [r for r in server.requests if r["path"] == "/m/tiny-hat.safetensors"]
    assert err.count("download now? [Y/n]") == 1, err
    assert "--model tiny-hat needs tiny-hat" in err and "licence MIT" in err
    if answer == b"y\n":
        assert code == 0, err
        assert fetched and (tmp_path / "out" / "in.png").is_file()
        assert (tmp_path / "home" / "models").exists()
    else:
        assert code == 2, err
        assert not fetched
        assert "restorer-cli models download tiny-hat" in err
