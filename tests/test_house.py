"""The shape of the house: no import cycles, torch only where a network is built or exported,
runners built once per batch (ONNX Runtime sessions counted), licences listed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "restorer"
# The only places torch may be imported (DESIGN: networks, the eager runner, export).
TORCH_ALLOWED = ("restorer/archs/", "restorer/run/torch.py", "restorer/run/diffusion.py", "restorer/convert/")


def test_no_import_cycles():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "import_cycles.py"), str(REPO)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_torch_and_qt_are_imported_only_where_they_belong():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        names = _imports(path)
        assert "PySide6" not in names, f"{rel} imports Qt: the core library never does"
        if "torch" in names:
            # run/loader.py only probes whether torch is installed before choosing the eager runner
            assert rel.startswith(TORCH_ALLOWED) or rel == "restorer/run/loader.py", f"{rel} imports torch"


def test_cli_help_imports_neither_torch_nor_qt():
    code = ("import sys, restorer.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6')]\n"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_third_party_notices_are_current():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "third_party_notices.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (REPO / "LICENSE").read_text().startswith(" " * 30) or "Apache License" in (REPO / "LICENSE").read_text()


# ---- one runner per batch ----


def _identity_onnx(path: Path) -> None:
    """A 1-node ONNX model (Identity on an NCHW image): cheap, but a real ORT session."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "identity", [image], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def test_folder_batch_of_five_creates_one_onnx_session(tmp_path, monkeypatch):
    import onnxruntime

    from restorer.cli import main
    from restorer.zoo import catalog as catalog_module

    home = tmp_path / "home"
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.setattr(catalog_module, "_PINNED", catalog_module.parse(
        '[[model]]\nid = "ident"\ntitle = "identity"\nfamily = "test"\ntasks = ["denoise"]\narch = "HAT"\n'
        'rank = 99\n[[model.files]]\nname = "ident.safetensors"\n'))
    _identity_onnx(home / "onnx" / "ident.fp32.onnx")
    created = []
    real = onnxruntime.InferenceSession

    def counting(*args, **kwargs):
        created.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(src / f"p{i}.png")
    assert main([str(src), "-o", str(tmp_path / "out"), "--model", "ident", "--device", "cpu", "--quiet"]) == 0
    assert len(created) == 1, created
    for i in range(5):  # and the identity network really ran: outputs equal inputs
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"p{i}.png")),
                              np.asarray(Image.open(src / f"p{i}.png")))


def test_old_photo_batch_builds_each_network_once(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from restorer.cli import main
    from restorer.run import loader
    from tests.test_old_photo_cli import PHOTO, _register_fixture_parts

    home = tmp_path / "h"
    _register_fixture_parts(home)
    monkeypatch.setenv("RESTORER_HOME", str(home))
    built = []
    real = loader.build_runner

    def counting(spec, *args, **kwargs):
        built.append((spec.id, args, tuple(sorted(kwargs.items()))))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(loader, "build_runner", counting)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"old{i}.png").write_bytes(PHOTO.read_bytes())
    code = main([str(src), "-o", str(tmp_path / "out"), "--task", "old-photo", "--scratches", "yes",
                 "--device", "cpu", "--quiet", "--json"])
    assert code == 0
    assert len({b[0] for b in built}) >= 4  # detector, VAE halves, mapping (faces when found)
    assert len(built) == len(set(built)), f"a network was built twice: {built}"
    assert len(list((tmp_path / "out").glob("old*.png"))) == 3
