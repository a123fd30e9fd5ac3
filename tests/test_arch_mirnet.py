"""MIRNet (v1) and MIRNet-v2 against the official facts: every released checkpoint's tensor
names and shapes, and the tiny random-weight golden outputs computed with the official code
(PyTorch and ONNX Runtime)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restorer.archs import build
from restorer.zoo.catalog import parse
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import FIXTURES, assert_loads_strictly, load_manifest, load_safetensors, manifest_fixture

DIR = FIXTURES / "mirnet"
MANIFESTS = sorted(DIR.glob("*.keys.json")) + sorted((DIR / "v2").glob("*.keys.json"))
# fixture -> (arch, multiple the official test reflect-pads to, or 0 for no padding)
TINY = {
    "mirnet_v1_tiny": ("MIRNet", 0),
    "v2/mirnetv2_tiny": ("MIRNet_v2", 4),
    "v2/mirnetv2_defocus_tiny": ("MIRNet_v2", 0),
}


def tiny(name: str):
    meta = json.loads((DIR / f"{name}.json").read_text())
    model = build(TINY[name][0], meta["hyperparameters"]).eval()
    weights = {k: torch.from_numpy(v) for k, v in load_safetensors(DIR / f"{name}.safetensors").items()}
    model.load_state_dict(weights, strict=True)
    image = np.load(DIR / f"{name}.input.npy")
    golden = np.load(DIR / f"{name}.output.npy")
    return meta, model, image, golden


def reflect_pad(image: np.ndarray, multiple: int) -> np.ndarray:
    """What the official v2 tests (and our tiling engine) do: right/bottom, reflect."""
    if not multiple:
        return image
    h, w = image.shape[-2:]
    return F.pad(torch.from_numpy(image), (0, (-w) % multiple, 0, (-h) % multiple), mode="reflect").numpy()


def test_every_released_checkpoint_has_a_manifest():
    names = {p.name.removesuffix(".keys.json") for p in MANIFESTS}
    assert names == {
        "model_denoising", "model_SR_x2", "model_SR_x3", "model_SR_x4", "model_lol", "model_fivek",
        "real_denoising", "sr_x2", "sr_x3", "sr_x4", "enhancement_lol", "enhancement_fivek",
        "dual_pixel_defocus_deblurring",
    }  # fmt: skip


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name.removesuffix(".keys.json"))
def test_manifest_loads_strictly(path):
    # the parameters counted are the unique ones: v1 reuses one DAU per stream and one PReLU
    # for all DAUs, as upstream
    assert_loads_strictly(None, path)


def test_v1_shares_what_upstream_shares():
    manifest, _ = load_manifest(DIR / "model_denoising.keys.json")
    with torch.device("meta"):
        model = build("MIRNet", manifest["hyperparameters"])
    params = dict(model.named_parameters(remove_duplicate=False))
    for group in manifest["shared_parameter_groups"]:
        assert len({id(params[name]) for name in group}) == 1, group


def test_catalog_has_one_entry_per_released_checkpoint():
    catalog = parse((FIXTURES.parents[1] / "models" / "catalog.toml").read_text(encoding="utf-8"))
    entries = [spec for spec in catalog if spec.family == "mirnet"]
    assert sorted(spec.manifest for spec in entries) == sorted(
        str(p.relative_to(FIXTURES)) for p in MANIFESTS
    )
    for spec in entries:
        manifest, _ = load_manifest(manifest_fixture(spec.manifest))
        official = {k: v for k, v in manifest["hyperparameters"].items() if v is not None}  # TOML has no null
        assert spec.arch == manifest["arch"] and spec.hparams == official
        assert spec.wrapper_key == manifest["wrapper_key"]
        assert [f.name for f in spec.files] == [manifest["checkpoint"]]
        assert spec.non_commercial and "non-commercial" in spec.licence
        assert spec.released and spec.pad_multiple == 4 and spec.scale == 1
        # the SR checkpoints keep the size: the input is upscaled by the factor first
        assert spec.pre_upscale == manifest.get("scale", 1)
        assert spec.channels == manifest["hyperparameters"].get("inp_channels", 3)
        github = spec.arch == "MIRNet_v2"
        assert all(f.browser != github for f in spec.files)  # v1: Google Drive, v2: release assets


@pytest.mark.parametrize("name", TINY)
def test_torch_matches_official_output(name):
    meta, model, image, golden = tiny(name)
    h, w = image.shape[-2:]
    with torch.no_grad():
        out = model(torch.from_numpy(reflect_pad(image, TINY[name][1])))[..., :h, :w].numpy()
    assert out.shape == golden.shape
    assert np.max(np.abs(out - golden)) <= meta["tolerance"]["max_abs_diff"]


def test_v1_needs_multiples_of_4():
    _, model, image, _ = tiny("mirnet_v1_tiny")
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(torch.from_numpy(image[:, :, :34, :44]))


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_onnx_matches_official_output_at_two_sizes(name, tmp_path):
    meta, model, image, golden = tiny(name)
    tolerance = meta["tolerance"]["max_abs_diff_onnxruntime_or_gpu"]
    channels = image.shape[1]
    # the batch axis is dynamic (min 1): torch.export cannot trace it from a batch of one
    example = torch.rand(2, channels, 24, 28, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, {"x": example}, tmp_path / "model.onnx")
    h, w = image.shape[-2:]
    out = run_onnx(path, {"x": reflect_pad(image, TINY[name][1])})[..., :h, :w]
    assert np.max(np.abs(out - golden)) <= tolerance
    other = np.random.default_rng(1).random((1, channels, 20, 52), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(other)).numpy()
    assert np.max(np.abs(run_onnx(path, {"x": other}) - expected)) <= tolerance
