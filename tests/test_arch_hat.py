"""HAT conformance: released checkpoint layouts, golden outputs of the official code, ONNX.

Fixtures (copied from the shared conformance set, produced with the official code at
XPixelGroup/HAT 1638a9a):
- manifests/*.keys.json: names, shapes and dtypes of every released checkpoint;
- tiny/hat_tiny_x{2,3,4}: random-weight models with the official test-time output
  (reflect pad bottom/right to the window multiple, forward, crop; unclamped).
The official tile-mode output (tile 8 / pad 4) is deliberately not a target: our tiling
engine blends overlapping tiles instead, so only the untiled golden output is matched.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restorer.zoo.catalog import parse
from restorer.archs.hat import HAT, overlap_position_index, window_position_index
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import (
    FIXTURES,
    assert_loads_strictly,
    load_manifest,
    load_safetensors,
    manifest_fixture,
    meta_state_dict,
)

HAT_FIXTURES = FIXTURES / "hat"
MANIFESTS = sorted((HAT_FIXTURES / "manifests").glob("*.keys.json"))
TINY = ["hat_tiny_x2", "hat_tiny_x3", "hat_tiny_x4"]


def test_every_released_checkpoint_is_covered():
    assert len(MANIFESTS) == 14


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name.removesuffix(".keys.json"))
def test_released_checkpoint_loads_strictly(path):
    assert_loads_strictly(("HAT", load_manifest(path)[0]["hyperparameters"]), path)


def test_strict_load_rejects_a_wrong_shape():
    manifest, entries = load_manifest(HAT_FIXTURES / "manifests" / "HAT-S_SRx4.keys.json")
    with torch.device("meta"):
        model = HAT(**manifest["hyperparameters"])
    state = meta_state_dict(entries)
    state["conv_last.weight"] = torch.empty(3, 64, 1, 1, device="meta")
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(state, strict=True, assign=True)


def test_catalog_has_one_entry_per_released_checkpoint():
    catalog = parse((FIXTURES.parents[1] / "models" / "catalog.toml").read_text(encoding="utf-8"))
    entries = [spec for spec in catalog if spec.family == "hat"]
    assert sorted(spec.manifest for spec in entries) == sorted(f"hat/{p.name}" for p in MANIFESTS)
    for spec in entries:
        manifest, _ = load_manifest(manifest_fixture(spec.manifest))
        hp = manifest["hyperparameters"]
        assert spec.arch == "HAT" and spec.hparams == hp
        assert spec.scale == hp["upscale"] and spec.pad_multiple == hp["window_size"]
        assert spec.wrapper_key == manifest["wrapper_key"]
        assert [f.name for f in spec.files] == [manifest["checkpoint"]]
        assert spec.tasks == ("superres",) and spec.files[0].browser


def tiny(name: str):
    meta = json.loads((HAT_FIXTURES / "tiny" / f"{name}.json").read_text())
    arrays = load_safetensors(HAT_FIXTURES / "tiny" / f"{name}.safetensors")
    weights = {k: torch.from_numpy(v) for k, v in arrays.items()}
    model = HAT(**meta["hyperparameters"]).eval()
    image = np.load(HAT_FIXTURES / "tiny" / f"{name}.input.npy")
    golden = np.load(HAT_FIXTURES / "tiny" / f"{name}.output.npy")
    return meta, model, weights, image, golden


def reflect_pad(image: np.ndarray, multiple: int) -> torch.Tensor:
    """The official test-time padding: reflect at the bottom and right to a multiple."""
    h, w = image.shape[-2:]
    return F.pad(torch.from_numpy(image), (0, -w % multiple, 0, -h % multiple), mode="reflect")


@pytest.mark.parametrize("name", TINY)
def test_index_buffers_match_the_released_ones(name):
    """Built from the formula, the buffers equal the official ones, negative OCA entries included."""
    meta, model, weights, _, _ = tiny(name)
    assert torch.equal(model.relative_position_index_SA, weights["relative_position_index_SA"])
    assert torch.equal(model.relative_position_index_OCA, weights["relative_position_index_OCA"])
    hp = meta["hyperparameters"]
    ws = hp["window_size"]
    oca = overlap_position_index(ws, ws + int(ws * hp["overlap_ratio"]))
    assert oca.min() < 0  # the wrap-around quirk is present, not normalised away
    assert window_position_index(ws).max() == (2 * ws - 1) ** 2 - 1


@pytest.mark.parametrize("name", TINY)
def test_matches_official_output(name):
    meta, model, weights, image, golden = tiny(name)
    model.load_state_dict(weights, strict=True)
    hp = meta["hyperparameters"]
    padded = reflect_pad(image, hp["window_size"])
    assert list(padded.shape) == meta["padded_input_shape"]
    h, w = image.shape[-2:]
    with torch.no_grad():
        out = model(padded)[..., : h * hp["upscale"], : w * hp["upscale"]].numpy()
    assert out.shape == golden.shape
    assert np.max(np.abs(out - golden)) <= meta["suggested_tolerance"]["max_abs_diff"]


@pytest.mark.slow  # one dynamic-shape export each: ~10-14 s of CPU
@pytest.mark.parametrize("name", TINY)
def test_onnx_matches_official_output_at_two_sizes(name, tmp_path):
    meta, model, weights, image, golden = tiny(name)
    model.load_state_dict(weights, strict=True)
    hp = meta["hyperparameters"]
    ws, scale = hp["window_size"], hp["upscale"]
    tolerance = meta["suggested_tolerance"]["max_abs_diff"]
    # export_onnx's batch axis is dynamic (min 1), which torch.export cannot trace from a
    # batch of one: the example has two.
    example = torch.rand(2, 3, 2 * ws, 3 * ws, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, {"x": example}, tmp_path / f"{name}.onnx")

    padded = reflect_pad(image, ws).numpy()
    h, w = image.shape[-2:]
    out = run_onnx(path, {"x": padded})[..., : h * scale, : w * scale]
    assert np.max(np.abs(out - golden)) <= tolerance

    # Another size (and batch) than the fixture and the export example: the shift mask and
    # the key/value windows follow the runtime shape.
    other = torch.rand(1, 3, 3 * ws, 5 * ws, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(other).numpy()
    got = run_onnx(path, {"x": other.numpy()})
    assert got.shape == (1, 3, 3 * ws * scale, 5 * ws * scale)
    assert np.max(np.abs(got - expected)) <= tolerance
