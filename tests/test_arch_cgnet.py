"""CGNet / CascadedGaze against the official facts: every manifest's tensor names and shapes,
and the tiny random-weight golden outputs computed with the official code (PyTorch and ONNX
Runtime)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from restorer.zoo.catalog import parse
from restorer.archs.cgnet import CascadedGaze, GCENetMHLocal, LocalPool
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import FIXTURES, assert_loads_strictly, load_manifest, load_safetensors, manifest_fixture

DIR = FIXTURES / "cgnet"
MANIFESTS = sorted(DIR.glob("*.keys.json"))
TINY = {"cgnet_tiny": CascadedGaze, "cgnet_mh_tiny": GCENetMHLocal}


def tiny(name: str):
    meta = json.loads((DIR / f"{name}.json").read_text())
    model = TINY[name](**meta["hyperparameters"]).eval()
    weights = {k: torch.from_numpy(v) for k, v in load_safetensors(DIR / f"{name}.safetensors").items()}
    model.load_state_dict(weights, strict=True)
    image = np.load(DIR / f"{name}.input.npy")
    golden = np.load(DIR / f"{name}.output.npy")
    return meta, model, image, golden


def test_every_manifest_is_here():
    assert {p.name for p in MANIFESTS} == {
        "CascadedGaze-SIDD.keys.json",
        "UNRELEASED_CascadedGazeMH-GoPro.keys.json",
        "UNRELEASED_CGNet-GaussianColorDenoising.keys.json",
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name.removesuffix(".keys.json"))
def test_manifest_loads_strictly(path):
    assert_loads_strictly(None, path)


def test_catalog_entries_follow_the_manifests():
    catalog = parse((FIXTURES.parents[1] / "models" / "catalog.toml").read_text(encoding="utf-8"))
    entries = [spec for spec in catalog if spec.family == "cgnet"]
    assert {spec.manifest for spec in entries} == {f"cgnet/{p.name}" for p in MANIFESTS}
    for spec in entries:
        manifest, _ = load_manifest(manifest_fixture(spec.manifest))
        assert spec.arch == manifest["arch"] and spec.hparams == manifest["hyperparameters"]
        assert spec.wrapper_key == manifest["wrapper_key"] and spec.released == manifest["released"]
        assert spec.pad_multiple == 1  # the network zero-pads to 16 itself
        assert spec.tile % 16 == 0 or not spec.released
        assert not spec.non_commercial and spec.licence == "MIT"
        if spec.released:
            assert [f.browser for f in spec.files] == [True]  # a Google Drive page
    assert [spec.id for spec in entries if spec.released] == ["cgnet-sidd"]


@pytest.mark.parametrize("name", TINY)
def test_torch_matches_official_output(name):
    meta, model, image, golden = tiny(name)
    with torch.no_grad():
        out = model(torch.from_numpy(image)).numpy()
    assert out.shape == golden.shape
    assert np.max(np.abs(out - golden)) <= meta["tolerance"]["max_abs_diff"]


def test_released_layout_needs_64_pixels():
    # the GCE cascade of levels 0-1 (kernels 3,3,5; strides 2,3,4) needs 31 px at level 1
    model = CascadedGaze(width=4, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1], GCE_CONVS_nums=[3, 3, 2, 2])
    assert model.min_size == 64
    with torch.no_grad():
        assert model(torch.rand(1, 3, 49, 50)).shape == (1, 3, 49, 50)  # padded to 64x64
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 3, 40, 40))  # padded to 48: too small, as upstream


def test_local_pool_is_box_average_padded_back():
    x = torch.rand(1, 2, 9, 11, dtype=torch.float64)
    pool = LocalPool((4, 5))
    out = pool(x)
    assert out.shape == x.shape
    box = torch.nn.functional.avg_pool2d(x, (4, 5), stride=1)  # (6, 7)
    # left/top pads are (k-1)//2, right/bottom k//2, replicated
    assert torch.allclose(out[:, :, 1:7, 2:9], box)
    assert torch.allclose(out[:, :, 0, 2:9], box[:, :, 0])
    assert torch.allclose(out[:, :, 8, 10], box[:, :, 5, 6])
    # a kernel covering the map is the global mean
    assert torch.allclose(LocalPool((9, 11))(x), x.mean(dim=(2, 3), keepdim=True))


def test_multi_head_works_off_the_multiple_of_16():
    # upstream only runs at multiples of 16; here other sizes give the cropped padded result
    _, model, image, golden = tiny("cgnet_mh_tiny")
    with torch.no_grad():
        out = model(torch.from_numpy(image[:, :, :100, :120]))
    assert out.shape == (1, 10, 3, 100, 120)


@pytest.mark.slow
def test_onnx_matches_official_output_at_two_sizes(tmp_path):
    meta, model, image, golden = tiny("cgnet_tiny")
    tolerance = meta["tolerance"]["max_abs_diff_onnxruntime_or_gpu"]
    # the batch axis is dynamic (min 1): torch.export cannot trace it from a batch of one
    example = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, {"x": example}, tmp_path / "cgnet_tiny.onnx")
    assert np.max(np.abs(run_onnx(path, {"x": image}) - golden)) <= tolerance
    other = np.random.default_rng(1).random((1, 3, 70, 130), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(other)).numpy()
    assert np.max(np.abs(run_onnx(path, {"x": other}) - expected)) <= tolerance


@pytest.mark.slow
def test_onnx_multi_head_matches_official_output(tmp_path):
    # static size here: a dynamic export also works (bench/bench_cgnet_mirnet.py --only
    # mh-dynamic checks it at three sizes) but takes minutes to trace
    meta, model, image, golden = tiny("cgnet_mh_tiny")
    example = torch.rand(2, *image.shape[1:], generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, {"x": example}, tmp_path / "cgnet_mh_tiny.onnx", dynamic_hw=False)
    out = run_onnx(path, {"x": image})
    assert np.max(np.abs(out - golden)) <= meta["tolerance"]["max_abs_diff_onnxruntime_or_gpu"]
