"""MambaIRv2 / MambaIRv2Light against the official facts: every released checkpoint's tensor
names, shapes and dtypes, and the tiny random-weight golden outputs computed with the
official code (csguoh/MambaIR 33d7b34), in PyTorch and in ONNX Runtime.

Fixtures in tests/fixtures/mambair/ (copied from the shared conformance set):
- mambairv2_*.keys.json: one manifest per released v2 checkpoint;
- mambairv2_tiny_dn, mambairv2_tiny_sr_x2, mambairv2light_tiny_x3: weights, input, output.
The official test-time procedure for these inputs (< 200 px) is one forward, which pads
symmetrically to the window multiple inside and crops back. The official ASSM routes with
Gumbel noise and sorts unstably; the goldens use the deterministic convention (argmax
route, stable sort) that our implementation follows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from restorer.zoo.catalog import parse
from restorer.archs.mambairv2 import MambaIRv2, MambaIRv2Light, stable_argsort, symmetric_pad_to
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import (
    FIXTURES,
    assert_loads_strictly,
    load_manifest,
    load_safetensors,
    manifest_fixture,
    meta_state_dict,
)

DIR = FIXTURES / "mambair"
MANIFESTS = sorted(DIR.glob("mambairv2_*.keys.json"))
TINY = {"mambairv2_tiny_dn": MambaIRv2, "mambairv2_tiny_sr_x2": MambaIRv2, "mambairv2light_tiny_x3": MambaIRv2Light}


def tiny(name: str):
    meta = json.loads((DIR / f"{name}.json").read_text())
    model = TINY[name](**meta["hyperparameters"]).eval()
    weights = {k: torch.from_numpy(v) for k, v in load_safetensors(DIR / f"{name}.safetensors").items()}
    model.load_state_dict(weights, strict=True)
    image = np.load(DIR / f"{name}.input.npy")
    golden = np.load(DIR / f"{name}.output.npy")
    return meta, model, weights, image, golden


def test_every_released_v2_checkpoint_is_covered():
    sizes = {f"mambairv2_classicSR_{size}_x{s}" for size in ("Small", "Base", "Large") for s in (2, 3, 4)}
    light = {f"mambairv2_lightSR_x{s}" for s in (2, 3, 4)}
    other = {"mambairv2_ColorDN_15", "mambairv2_jpeg_q10", "mambairv2_jpeg_q30", "mambairv2_jpeg_q40"}
    assert {p.name.removesuffix(".keys.json") for p in MANIFESTS} == sizes | light | other


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name.removesuffix(".keys.json"))
def test_released_checkpoint_loads_strictly(path):
    assert_loads_strictly(None, path)


def test_strict_load_rejects_a_wrong_shape():
    manifest, entries = load_manifest(DIR / "mambairv2_lightSR_x2.keys.json")
    with torch.device("meta"):
        model = MambaIRv2Light(**manifest["hyperparameters"])
    state = meta_state_dict(entries)
    state["layers.0.residual_group.layers.0.assm.embeddingB.weight"] = torch.empty(32, 32, device="meta")
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(state, strict=True, assign=True)


def test_catalog_has_one_entry_per_released_checkpoint():
    catalog = parse((FIXTURES.parents[1] / "models" / "catalog.toml").read_text(encoding="utf-8"))
    entries = [spec for spec in catalog if spec.arch in ("MambaIRv2", "MambaIRv2Light")]
    assert sorted(spec.manifest for spec in entries) == sorted(f"mambair/{p.name}" for p in MANIFESTS)
    for spec in entries:
        manifest, _ = load_manifest(manifest_fixture(spec.manifest))
        hp = manifest["hyperparameters"]
        assert spec.arch == manifest["arch"] and spec.hparams == hp
        assert spec.scale == (hp["upscale"] if hp.get("upsampler") else 1)
        assert spec.channels == hp["in_chans"] and spec.pad_multiple == hp["window_size"]
        assert spec.wrapper_key == manifest["wrapper_key"]
        assert [f.name for f in spec.files] == [manifest["checkpoint"]]
        assert spec.files[0].url.endswith("/releases/download/v1.0/" + manifest["checkpoint"])
        assert spec.tasks == {1: ("jpeg",), 3: ("denoise",) if spec.scale == 1 else ("superres",)}[spec.channels]


@pytest.mark.parametrize("name", TINY)
def test_torch_matches_official_output(name):
    meta, model, _, image, golden = tiny(name)
    with torch.no_grad():
        out = model(torch.from_numpy(image)).numpy()  # pads symmetrically inside, as upstream
    assert out.shape == golden.shape
    assert np.max(np.abs(out - golden)) <= meta["suggested_tolerance"]["max_abs_diff"]


@pytest.mark.parametrize("name", TINY)
def test_position_index_matches_the_released_buffer(name):
    _, model, weights, _, _ = tiny(name)
    built = TINY[name](**json.loads((DIR / f"{name}.json").read_text())["hyperparameters"])
    assert torch.equal(built.relative_position_index_SA, weights["relative_position_index_SA"])


def test_symmetric_pad_repeats_the_edge_like_flip_and_concatenate():
    x = torch.arange(2 * 1 * 5 * 7, dtype=torch.float32).reshape(2, 1, 5, 7)
    padded = symmetric_pad_to(x, 4)
    # the official way: append the flipped image, then crop to the multiple
    official = torch.cat([x, x.flip(2)], 2)[:, :, :8]
    official = torch.cat([official, official.flip(3)], 3)[:, :, :, :8]
    assert torch.equal(padded, official)
    assert torch.equal(symmetric_pad_to(x[:, :, :4, :4], 4), x[:, :, :4, :4])
    assert symmetric_pad_to(x[:, :, :1, :2], 4).shape == (2, 1, 4, 4)  # shorter than its padding


def test_stable_argsort_keeps_raster_order_within_a_route():
    keys = torch.tensor([[3, 1, 3, 0, 1, 3, 0, 2], [0, 0, 0, 0, 0, 0, 0, 0]])
    expected = np.argsort(keys.numpy(), axis=-1, kind="stable")
    assert np.array_equal(stable_argsort(keys).numpy(), expected)


def test_any_size_and_batch_in_eager():
    meta, model, _, image, _ = tiny("mambairv2light_tiny_x3")
    batch = torch.from_numpy(np.concatenate([image, image[:, :, ::-1, ::-1].copy()]))
    with torch.no_grad():
        both = model(batch)
        first = model(batch[:1])
    assert both.shape == (2, 3, 21, 30)
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_unreleased_nearest_conv_head_upscales_by_four():
    hp = json.loads((DIR / "mambairv2_tiny_sr_x2.json").read_text())["hyperparameters"]
    model = MambaIRv2(**{**hp, "upscale": 4, "upsampler": "nearest+conv"}).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)
    with pytest.raises(ValueError, match="x4 only"):
        MambaIRv2(**{**hp, "upsampler": "nearest+conv"})


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_onnx_matches_official_output(name, tmp_path):
    """Exported with dynamic H and W; fed as the tiling engine feeds it (padded to whole
    windows outside the graph, here symmetrically as upstream, then cropped back)."""
    meta, model, _, image, golden = tiny(name)
    hp = meta["hyperparameters"]
    ws, scale = hp["window_size"], hp["upscale"] if hp.get("upsampler") else 1
    example = torch.rand(2, image.shape[1], 3 * ws, 4 * ws, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, {"x": example}, tmp_path / f"{name}.onnx")

    def run(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[-2:]
        padded = symmetric_pad_to(torch.from_numpy(img), ws).numpy()
        return run_onnx(path, {"x": padded})[..., : h * scale, : w * scale]

    tolerance = meta["suggested_tolerance"]["max_abs_diff"]
    assert np.max(np.abs(run(image) - golden)) <= tolerance
    # another size and more scan chunks than the export traced
    other = np.random.default_rng(1).random((1, image.shape[1], 37, 70), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(other)).numpy()
    assert np.max(np.abs(run(other) - expected)) <= tolerance
