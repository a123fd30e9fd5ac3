"""ONNX graph templates: a network exported once without its weights is filled with a
checkpoint's tensors without torch, and gives what the network gives (the official golden
outputs of the tiny fixtures, and the torch export of the same weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.manifests import FIXTURES, load_safetensors

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
# (fixture base, arch, extra catalog fields): families whose tiny nets export quickly
CASES = {
    "hat_x2": ("hat/tiny/hat_tiny_x2", "HAT", {"pad_multiple": 4}),
    "cgnet": ("cgnet/cgnet_tiny", "CascadedGaze", {}),
    "mirnet_v1": ("mirnet/mirnet_v1_tiny", "MIRNet", {"pad_multiple": 4}),
}


def _spec(key: str):
    from restorer.zoo.catalog import parse

    base, arch, fields = CASES[key]
    hparams = json.loads((FIXTURES / f"{base}.json").read_text())["hyperparameters"]
    scale = hparams.get("upscale", 1)
    lines = [f'[[model]]\nid = "tiny-{key}"\ntitle = "t"\nfamily = "t"\ntasks = ["denoise"]\narch = "{arch}"',
             f"scale = {scale}", *(f"{k} = {json.dumps(v)}" for k, v in fields.items()),
             "[model.hparams]", *(f"{k} = {json.dumps(v)}" for k, v in hparams.items()),
             "[[model.files]]", 'name = "w.safetensors"']
    return parse("\n".join(lines)).get(f"tiny-{key}")


def _run(path: Path, image: np.ndarray, spec) -> np.ndarray:
    """An NCHW batch of one through the export as the engine runs it (padded to the
    network's multiple, cropped back)."""
    from restorer.run.onnx import OnnxRunner
    from restorer.run.runner import RunnerInfo
    from restorer.run.tiles import run_runner

    runner = OnnxRunner(path, RunnerInfo(spec.id, "", ""), spec.requirements, device="cpu")
    return run_runner(runner, image[0].transpose(1, 2, 0)).transpose(2, 0, 1)[None]


@pytest.fixture(scope="module", params=list(CASES))
def filled(request, tmp_path_factory):
    from restorer.convert.templates import make_template
    from restorer.zoo.templates import fill

    key = request.param
    spec = _spec(key)
    folder = tmp_path_factory.mktemp(key)
    records = make_template(spec, folder)
    template = folder / next(iter(records))
    weights = load_safetensors(FIXTURES / f"{CASES[key][0]}.safetensors")
    return key, spec, template, fill(template, weights, folder / "filled.onnx"), weights


def test_template_holds_no_weights(filled):
    from restorer.zoo.templates import read_template

    _, _, template, filled_path, weights = filled
    model = read_template(template)
    entries = json.loads(next(p.value for p in model.metadata_props if p.key == "restorer.weights"))
    assert {e["key"] for e in entries} <= set(weights)
    stored = sum(np.asarray(weights[e["key"]]).nbytes for e in entries)
    # the weights are what the filled model adds: the template is the graph alone
    assert filled_path.stat().st_size - model.ByteSize() >= 0.99 * stored


def test_filled_template_gives_the_golden_output(filled):
    key, spec, _, filled_path, _ = filled
    base = FIXTURES / CASES[key][0]
    image = np.load(base.with_suffix(".input.npy"))
    golden = np.load(base.with_suffix(".output.npy"))
    got = _run(filled_path, image, spec)
    assert got.shape == golden.shape
    assert np.abs(got - golden).max() <= 1e-4 * max(1.0, float(np.abs(golden).max()))


def test_filled_template_equals_the_torch_export_of_the_same_weights(filled, tmp_path):
    from restorer.archs import build
    from restorer.convert.export import example_inputs
    from restorer.convert.graph import export_onnx

    key, spec, _, filled_path, weights = filled
    if key != "hat_x2":
        pytest.skip("one family is enough for the export comparison (each export takes a while)")
    module = build(spec.arch, spec.hparams).eval()
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    direct = export_onnx(module, example_inputs(spec, module, 16, batch=2), tmp_path / "direct.onnx")
    image = np.load((FIXTURES / CASES[key][0]).with_suffix(".input.npy"))
    assert np.abs(_run(filled_path, image, spec) - _run(direct, image, spec)).max() <= 1e-5


def test_fill_needs_no_torch(filled, tmp_path):
    """The fill runs where torch cannot be imported, and its result is the network."""
    key, spec, template, _, _ = filled
    base = FIXTURES / CASES[key][0]
    target = tmp_path / "f.onnx"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pathlib import Path\n"
            "from safetensors.numpy import load_file\n"
            "from restorer.zoo.templates import fill\n"
            f"fill(Path({str(template)!r}), load_file({str(base.with_suffix('.safetensors'))!r}), Path({str(target)!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    golden = np.load(base.with_suffix(".output.npy"))
    got = _run(target, np.load(base.with_suffix(".input.npy")), spec)
    assert np.abs(got - golden).max() <= 1e-4 * max(1.0, float(np.abs(golden).max()))


def test_shipped_hat_s_template_installs_and_restores_without_torch(tmp_path):
    """The double-click path: a HAT-S x4 checkpoint (official names and shapes, random values)
    added and run by restorer-cli where `import torch` fails: recognised from the shipped
    layouts, filled into the shipped template, restored on ONNX Runtime."""
    from safetensors.numpy import save_file

    from restorer.zoo.catalog import load_catalog
    from restorer.zoo.templates import template_for
    from tests.manifests import load_manifest, random_state_dict

    spec = load_catalog().get("hat-s-x4")
    assert template_for(spec) is not None, "restorer ships the HAT-S x4 template"
    _, entries = load_manifest(FIXTURES / "hat" / "manifests" / "HAT-S_SRx4.keys.json")
    checkpoint = tmp_path / "HAT-S_SRx4.safetensors"
    save_file(random_state_dict(entries), checkpoint)
    photo = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(photo)
    env = {**__import__("os").environ, "RESTORER_HOME": str(tmp_path / "home")}
    no_torch = "import sys; sys.modules['torch'] = None\nfrom restorer.cli import main\nsys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", no_torch, "models", "add", str(checkpoint)],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0 and "hat-s-x4" in r.stdout + r.stderr, r.stderr
    assert "ready hat-s-x4: ONNX model made from restorer's template" in r.stdout
    r = subprocess.run([sys.executable, "-c", no_torch, str(photo), "-o", str(tmp_path / "out"), "--model", "hat-s-x4",
                        "--json"], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    step = json.loads(r.stdout)["files"][0]["steps"][0]
    assert step["runner"] in ("onnx", "openvino")  # torch-free either way; auto picks OpenVINO on Intel CPUs
    assert Image.open(tmp_path / "out" / "small.png").size == (80, 96)
