"""`restorer-cli models export` for networks that take more than an image: GaRNet (image +
text mask) and InstructIR (image + instruction embedding), each a tiny fixture registered as
a user catalog entry in a temporary store; the export is checked against PyTorch, then
becomes the model's runner (for GaRNet: the text-removal pipeline's fill through the CLI).
The old-photo mappings' example inputs are checked against their forward without an export
(an export of the tiny masked mappings takes 15-40 s each)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.manifests import FIXTURES

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
TINY_GARNET = {"in_channels": 3, "ndf": 8}


def cli(*args, home: Path):
    env = {**os.environ, "RESTORER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def _table(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def _install(home: Path, model_id: str, source: Path, entry: str) -> None:
    """Put a fixture file in the store as `model_id` and append its catalog entry."""
    folder = home / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / source.name).write_bytes(source.read_bytes())
    catalog = home / "catalog.toml"
    catalog.write_text((catalog.read_text() if catalog.is_file() else "") + entry)


def register_tiny_garnet(home: Path, model_id: str = "garnet") -> None:
    """The tiny GaRNet fixture as catalog id `model_id` (the packaged entry's conventions)."""
    _install(home, model_id, FIXTURES / "garnet" / "garnet_tiny.safetensors", f"""
[[model]]
id = "{model_id}"
title = "GaRNet (tiny test fixture)"
family = "garnet"
tasks = ["remove-text"]
arch = "GaRNet"
hparams = {_table(TINY_GARNET)}
input_range = [-1.0, 1.0]
output_range = [-1.0, 1.0]
pad_multiple = 32
overlap = 32
tile = 64
rank = 80
[[model.files]]
name = "garnet_tiny.safetensors"
""")


def register_tiny_instructir(home: Path, model_id: str = "instructir-tiny") -> None:
    """The tiny InstructIR image model alone (an export needs no text side)."""
    from tests.test_arch_instructir import TINY_IMAGE

    _install(home, model_id, FIXTURES / "instructir" / "instructir_tiny.safetensors", f"""
[[model]]
id = "{model_id}"
title = "InstructIR (tiny test fixture)"
family = "instructir"
tasks = []
arch = "InstructIR"
hparams = {_table(TINY_IMAGE)}
overlap = 16
tile = 48
[[model.files]]
name = "instructir_tiny.safetensors"
""")


def _export(model_id: str, home: Path) -> tuple[Path, dict]:
    r = cli("models", "export", model_id, home=home)
    assert r.returncode == 0, r.stderr
    path = home / "onnx" / f"{model_id}.fp32.onnx"
    assert path.is_file() and str(path) in r.stdout
    said = float(re.search(r"max abs diff vs PyTorch ([0-9.e+-]+)", r.stdout).group(1))
    record = json.loads(path.with_suffix(".json").read_text())
    assert said <= 1e-4 and record["max_abs_diff"] <= 1e-4 and record["tolerance"] == 1e-4
    return path, record


def _runners(model_id: str, home: Path, monkeypatch):
    """The store's runner (now the export) and an eager PyTorch runner of the same weights."""

    from restorer.zoo.catalog import load_catalog
    from restorer.run.runner import RunnerInfo
    from restorer.run.loader import build_runner
    from restorer.run.torch import TorchRunner, load_module

    monkeypatch.setenv("RESTORER_HOME", str(home))
    spec = load_catalog().get(model_id)
    run = build_runner(spec, device="cpu")
    eager = TorchRunner(load_module(spec), RunnerInfo(spec.id, "torch", ""), spec.requirements, device="cpu")
    return spec, run, eager


def test_garnet_exports_with_its_mask_and_runs_from_onnx(tmp_path, monkeypatch):
    import onnx
    from PIL import Image

    from restorer.io import imaging

    home = tmp_path / "h"
    register_tiny_garnet(home, "garnet")
    path, record = _export("garnet", home)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image", "mask"]
    assert record["tile"] == 64 and record["dynamic_hw"]

    spec, run, eager = _runners("garnet", home, monkeypatch)
    assert run.info.backend == "onnx" and run.info.model == "garnet"
    assert run.needs.pad_multiple == 32 and run.needs.input_range == (-1.0, 1.0)
    # Another size than the export's, a mask of text boxes: the mask reaches the network.
    image = np.random.default_rng(3).random((1, 3, 96, 128), dtype=np.float32)
    mask = np.zeros((1, 1, 96, 128), np.float32)
    mask[:, :, 20:40, 10:90] = 1.0
    got = run(image, mask=mask)
    np.testing.assert_allclose(got, eager(image, mask=mask), atol=1e-4)
    assert not np.allclose(got, run(image, mask=np.zeros_like(mask)), atol=1e-3)

    # The text-removal pipeline now fills from the export (a mask of our own: no detection).
    photo = REPO / "samples" / "scenetext_thai.jpg"
    drawn = np.zeros((800, 600), np.uint8)
    drawn[260:340, 160:495] = 255
    Image.fromarray(drawn, "L").save(tmp_path / "mask.png")
    r = cli("--task", "remove-text", photo, "-o", tmp_path / "out", "--format", "png", "--json",
            "--mask", tmp_path / "mask.png", "--dilate", 0, "--device", "cpu", home=home)  # cpu: ONNX Runtime
    assert r.returncode == 0, r.stderr
    step = json.loads(r.stdout)["files"][0]["steps"][0]
    assert (step["model"], step["runner"]) == ("garnet", "onnx")
    before = np.round(imaging.load(photo).pixels * 255).astype(np.uint8)
    after = np.asarray(Image.open(tmp_path / "out" / "scenetext_thai.png"))
    inside = drawn > 0
    assert np.array_equal(after[~inside], before[~inside]) and (after[inside] != before[inside]).any()


def test_instructir_exports_with_its_embedding_and_runs_from_onnx(tmp_path, monkeypatch):
    import onnx

    home = tmp_path / "h"
    register_tiny_instructir(home)
    path, record = _export("instructir-tiny", home)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image", "embedding"]
    assert record["dynamic_hw"], "InstructIR pads inside its forward: any size must export"

    spec, run, eager = _runners("instructir-tiny", home, monkeypatch)
    assert run.info.backend == "onnx"
    image = np.load(FIXTURES / "instructir" / "instructir_tiny.input.npy")
    embedding = np.load(FIXTURES / "instructir" / "instructir_tiny.text_embd.npy")  # the head's projection
    got = run(image, embedding=embedding)
    np.testing.assert_allclose(got, eager(image, embedding=embedding), atol=1e-4)
    # ... and the official tiny model's output (the golden fixture).
    np.testing.assert_allclose(got, np.load(FIXTURES / "instructir" / "instructir_tiny.output.npy"), atol=1e-4)


MAPPING = {"map_mc": 128, "mapping_n_block": 1, "mapping_net_dilation": 1, "feat_dim": -1}
NON_LOCAL = {**MAPPING, "NL_res": True, "NL_fusion_method": "combine", "correlation_renormalize": True,
             "softmax_temperature": 1.0, "use_self": False, "cosin_similarity": False}


@pytest.mark.parametrize("arch, hparams, names", [
    ("OldPhotoMapping", MAPPING, ["input"]),
    ("OldPhotoMappingNL", NON_LOCAL, ["input", "mask"]),
    ("OldPhotoMappingPA", {**MAPPING, "map_mc": 512, "mapping_exp": 1}, ["input", "mask"]),
])
def test_mapping_example_inputs_fit_each_forward(arch, hparams, names):
    from restorer.archs import build
    from restorer.zoo.catalog import parse
    from restorer.convert.export import example_inputs

    spec = parse(f'[[model]]\nid = "m"\ntitle = "m"\nfamily = "oldphoto"\ntasks = []\narch = "{arch}"\n'
                 f'hparams = {_table(hparams)}\nchannels = 64\n').get("m")
    module = build(arch, hparams)
    inputs = example_inputs(spec, module, tile=70, batch=2)
    assert list(inputs) == names
    latent = inputs["input"]
    assert latent.shape == (2, 64, 16, 16)  # 70 / 4 = 17, down to whole 8-pixel patches
    if "mask" in inputs:
        mask = inputs["mask"]
        assert mask.shape == (2, 1, 64, 64)  # the image resolution: 4x the latent
        assert set(mask.unique().tolist()) == {0.0, 1.0} and 0.1 < mask.mean() < 0.5
    with torch.no_grad():
        assert module.eval()(**inputs).shape == latent.shape
