"""GFPGAN v1.3 / v1.4 (GFPGANv1Clean) against the official facts: the released tensor layout
(names, shapes, the 'params_ema' wrapper) and tiny random-weight golden outputs computed with
the official code (PyTorch and ONNX Runtime). Provenance: tests/fixtures/gfpgan/README.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from restorer.archs import ARCHS
from restorer.archs.gfpgan import GFPGANv1Clean
from restorer.archs.requirements import Requirements
from restorer.convert.graph import export_onnx, run_onnx
from restorer.zoo.catalog import parse
from tests.manifests import FIXTURES, assert_loads_strictly, load_manifest, load_safetensors

DIR = FIXTURES / "gfpgan"
MANIFEST = DIR / "GFPGANv1Clean-512.keys.json"
RELEASED = {"out_size": 512, "num_style_feat": 512, "channel_multiplier": 2, "fix_decoder": False, "num_mlp": 8,
            "input_is_latent": True, "different_w": True, "narrow": 1, "sft_half": True}
TINY = ["gfpgan_tiny", "gfpgan_tiny_flags"]


def tiny(name: str):
    meta = json.loads((DIR / f"{name}.json").read_text())
    model = GFPGANv1Clean(**meta["hyperparameters"]).eval()
    weights = {k: torch.from_numpy(v) for k, v in load_safetensors(DIR / f"{name}.safetensors").items()}
    model.load_state_dict(weights, strict=True)
    return meta, model, np.load(DIR / f"{name}.input.npy"), np.load(DIR / f"{name}.output.npy")


def test_manifest_is_the_release():
    manifest, entries = load_manifest(MANIFEST)
    assert manifest["arch"] == "GFPGANv1Clean" and manifest["hyperparameters"] == RELEASED
    assert manifest["wrapper_key"] == "params_ema" and manifest["released"]
    assert manifest["checkpoints"] == ["GFPGANv1.3.pth", "GFPGANv1.4.pth"]
    assert len(entries) == manifest["state_dict_entries"] == 285
    noises = [name for name, _, _ in entries if ".noises." in name]
    assert noises == manifest["buffers"] and len(noises) == 15  # one per StyleConv, 4 px to 512 px


def test_manifest_loads_strictly():
    manifest = assert_loads_strictly(None, MANIFEST)  # built through restorer.archs.ARCHS
    assert manifest["params"] == 86_444_252


def test_family_needs():
    needs = Requirements(**ARCHS["GFPGANv1Clean"].needs)
    assert needs.input_range == needs.output_range == (-1.0, 1.0)
    assert needs.fixed_tile == 512 and needs.min_side == 512 and not needs.whole_image


@pytest.mark.parametrize("name", TINY)
def test_torch_matches_official_output(name):
    meta, model, image, golden = tiny(name)
    with torch.no_grad():
        out = model(torch.from_numpy(image)).numpy()
    assert out.shape == golden.shape
    assert np.max(np.abs(out - golden)) <= meta["tolerance"]["max_abs_diff"]


def test_noise_is_the_stored_maps():
    # deterministic: the checkpoint's noise buffers (official randomize_noise=False), so a
    # changed buffer changes the output and a repeated call does not
    _, model, image, golden = tiny("gfpgan_tiny")
    x = torch.from_numpy(image)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.stylegan_decoder.noises.noise8.add_(1.0)  # the last, at 64 px
        assert np.max(np.abs(model(x).numpy() - golden)) > 1e-3


def test_batch_is_per_sample():
    _, model, image, golden = tiny("gfpgan_tiny")
    other = np.random.default_rng(5).uniform(-1, 1, image.shape).astype(np.float32)
    with torch.no_grad():
        both = model(torch.from_numpy(np.concatenate([image, other]))).numpy()
        alone = model(torch.from_numpy(other)).numpy()
    assert np.max(np.abs(both[:1] - golden)) <= 1e-5
    assert np.max(np.abs(both[1:] - alone)) <= 1e-5


def test_only_out_size_is_accepted():
    _, model, image, _ = tiny("gfpgan_tiny")
    with pytest.raises(ValueError, match="64x64"):
        model(torch.zeros(1, 3, 32, 64))


def test_catalog_entries_follow_the_manifest():
    manifest, _ = load_manifest(MANIFEST)
    catalog = parse((FIXTURES.parents[1] / "models" / "catalog.toml").read_text(encoding="utf-8"))
    entries = [spec for spec in catalog if spec.arch == "GFPGANv1Clean"]
    assert entries
    for spec in entries:
        assert spec.manifest == "gfpgan/GFPGANv1Clean-512.keys.json"
        assert spec.hparams == manifest["hyperparameters"] and spec.wrapper_key == manifest["wrapper_key"]
        assert spec.licence == "Apache-2.0" and not spec.non_commercial
        assert spec.requirements.fixed_tile == 512 and spec.requirements.input_range == (-1.0, 1.0)
        for f in spec.files:
            assert f.name in manifest["checkpoints"] and f.url == manifest["download"][f.name]


def test_decoder_load_path_is_refused():
    with pytest.raises(ValueError):
        GFPGANv1Clean(out_size=32, num_style_feat=8, narrow=1 / 64, decoder_load_path="stylegan2.pth")


@pytest.mark.slow
def test_onnx_matches_official_output(tmp_path):
    # as restorer.convert.export falls back to it: a fixed size with a free batch axis (the
    # export's modulated conv has no per-sample weights)
    meta, model, image, golden = tiny("gfpgan_tiny")
    tolerance = meta["tolerance"]["max_abs_diff_onnxruntime_or_gpu"]
    example = torch.rand(1, *image.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = export_onnx(model, {"x": example}, tmp_path / "gfpgan_tiny.onnx", dynamic_hw=False)
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
    assert np.max(np.abs(run_onnx(path, {"x": image}) - golden)) <= tolerance
    other = np.random.default_rng(1).uniform(-1, 1, (2, *image.shape[1:])).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(other)).numpy()
    assert np.max(np.abs(run_onnx(path, {"x": other}) - expected)) <= tolerance


@pytest.mark.slow
def test_onnx_template_path_matches_official_output(tmp_path):
    # as restorer.convert.templates exports: dynamic height and width, batch of one, weights
    # unfolded; the graph keeps symbolic sizes and runs at out_size
    meta, model, image, golden = tiny("gfpgan_tiny_flags")
    path = export_onnx(model, {"x": torch.from_numpy(image)}, tmp_path / "gfpgan_tiny_flags.onnx",
                       fold_constants=False, dynamic_batch=False)
    out = run_onnx(path, {"x": image})
    assert np.max(np.abs(out - golden)) <= meta["tolerance"]["max_abs_diff_onnxruntime_or_gpu"]


@pytest.mark.slow
def test_release_layout_checkpoint_loads_and_runs(tmp_path):
    """A full-size file laid out like GFPGANv1.3.pth / GFPGANv1.4.pth (random values under
    'params_ema', as the release) is read by restorer's own reader and loads strictly."""
    from restorer.zoo.weights import load_state_dict

    _, entries = load_manifest(MANIFEST)
    rng = np.random.default_rng(0)
    tensors = {name: torch.from_numpy((rng.standard_normal(shape, dtype=np.float32) * 0.02))
               for name, shape, _ in entries}
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": tensors}, path)
    del tensors
    arrays = load_state_dict(path)
    with torch.device("meta"):
        model = GFPGANv1Clean(**RELEASED)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=True, assign=True)
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (1, 3, 512, 512) and torch.isfinite(out).all()
