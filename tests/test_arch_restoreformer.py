"""RestoreFormer (CVPR 2022) and RestoreFormer++ (TPAMI 2023) against the official facts: the
released tensor layouts (names with the checkpoint's 'vqvae.' prefix under 'state_dict',
shapes) and tiny random-weight golden outputs computed with the official code (PyTorch and
ONNX Runtime). Provenance: tests/fixtures/restoreformer/README.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from restorer.archs import ARCHS, build
from restorer.archs.requirements import Requirements
from restorer.archs.restoreformer import RestoreFormer, RestoreFormerPlusPlus
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import FIXTURES, assert_loads_strictly, load_manifest, load_safetensors

DIR = FIXTURES / "restoreformer"
PREFIX = "vqvae."
COMMON = {"n_embed": 1024, "embed_dim": 256, "ch": 64, "out_ch": 3, "ch_mult": [1, 2, 2, 4, 4, 8],
          "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0, "in_channels": 3, "resolution": 512,
          "z_channels": 256, "double_z": False, "enable_mid": True}
RELEASES = {  # arch: (checkpoint, hyperparameters, state_dict entries, parameters)
    "RestoreFormer": ("RestoreFormer.ckpt", {**COMMON, "head_size": 8, "ex_multi_scale_num": 0}, 405, 72_680_003),
    "RestoreFormerPlusPlus": ("RestoreFormer++.ckpt", {**COMMON, "head_size": 4, "ex_multi_scale_num": 1}, 441,
                              73_472_579),
}
TINY = {"restoreformer_tiny": RestoreFormer, "restoreformerpp_tiny": RestoreFormerPlusPlus}


def released(arch: str) -> tuple[dict, list]:
    """A release's manifest and its entries with the checkpoint's 'vqvae.' prefix removed, as
    the official loader (RestoreFormer/RestoreFormer.py) removes it."""
    manifest, entries = load_manifest(DIR / f"{arch}.keys.json")
    assert all(name.startswith(PREFIX) for name, _, _ in entries)
    return manifest, [[name[len(PREFIX):], shape, dtype] for name, shape, dtype in entries]


def tiny_weights() -> dict[str, torch.Tensor]:
    # float16 on disk; the goldens were computed from exactly these values in float32
    return {k: torch.from_numpy(v).float() for k, v in load_safetensors(DIR / "restoreformer_tiny.safetensors").items()}


def tiny(name: str):
    meta = json.loads((DIR / f"{name}.json").read_text())
    model = TINY[name](**meta["hyperparameters"]).eval()
    weights = tiny_weights()
    # one file for both: RestoreFormer's tensors are RestoreFormer++'s minus the 32-px attention
    model.load_state_dict({k: weights[k] for k in model.state_dict()}, strict=True)
    return meta, model, np.load(DIR / meta["input"]["file"]), np.load(DIR / meta["output"]["file"])


def test_every_manifest_is_here():
    assert {p.name for p in DIR.glob("*.keys.json")} == {f"{arch}.keys.json" for arch in RELEASES}


@pytest.mark.parametrize("arch", RELEASES)
def test_manifest_is_the_release(arch):
    checkpoint, hparams, count, params = RELEASES[arch]
    manifest, entries = released(arch)
    assert manifest["arch"] == arch and manifest["hyperparameters"] == hparams
    assert manifest["checkpoint"] == checkpoint and manifest["released"]
    assert manifest["download"] == f"https://github.com/wzhouxiff/RestoreFormerPlusPlus/releases/download/v1.0.0/{checkpoint}"
    assert manifest["wrapper_key"] == "state_dict" and manifest["key_prefix"] == PREFIX
    assert len(entries) == manifest["state_dict_entries"] == count and manifest["params"] == params
    assert manifest["input"]["range"] == manifest["output"]["range"] == [-1.0, 1.0]


@pytest.mark.parametrize("arch", RELEASES)
def test_manifest_loads_strictly(arch):
    manifest, entries = released(arch)
    assert_loads_strictly((arch, manifest["hyperparameters"]), entries)  # built through ARCHS
    with torch.device("meta"):
        model = build(arch, manifest["hyperparameters"])
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]


def test_plus_plus_adds_only_the_32px_cross_attention():
    (_, plain), (_, plus) = released("RestoreFormer"), released("RestoreFormerPlusPlus")
    shapes = {name: shape for name, shape, _ in plain}
    extra = [name for name, _, _ in plus if name not in shapes]
    assert all(name.startswith("decoder.up.4.attn.") for name in extra) and len(extra) == 3 * 12
    assert all(shapes[name] == shape for name, shape, _ in plus if name in shapes)
    # configs/RestoreFormer.yaml omits ex_multi_scale_num (default 1): that builds the ++ layout
    with torch.device("meta"):
        assert set(RestoreFormer(**{**COMMON, "ex_multi_scale_num": 1}).state_dict()) == {n for n, _, _ in plus}
        assert set(RestoreFormerPlusPlus().state_dict()) == {n for n, _, _ in plus}  # defaults = release


def test_family_needs():
    for arch in RELEASES:
        needs = Requirements(**ARCHS[arch].needs)
        assert needs.input_range == needs.output_range == (-1.0, 1.0)
        assert needs.fixed_tile == 512 and needs.min_side == 512 and not needs.whole_image


@pytest.mark.parametrize("name", TINY)
def test_torch_matches_official_output(name):
    meta, model, image, golden = tiny(name)
    with torch.no_grad():
        out = model(torch.from_numpy(image)).numpy()
    assert out.shape == golden.shape == tuple(meta["output"]["shape"])
    assert np.max(np.abs(out - golden)) <= meta["tolerance"]["max_abs_diff"]


def test_the_two_goldens_differ():
    # head_size and the 32-px cross-attention both change the output
    assert np.max(np.abs(tiny("restoreformer_tiny")[3] - tiny("restoreformerpp_tiny")[3])) > 1e-2


def test_deterministic_and_per_sample():
    _, model, image, golden = tiny("restoreformerpp_tiny")
    other = np.random.default_rng(5).uniform(-1, 1, image.shape).astype(np.float32)
    with torch.no_grad():
        both = model(torch.from_numpy(np.concatenate([image, other]))).numpy()
        alone = model(torch.from_numpy(other)).numpy()
        again = model(torch.from_numpy(other)).numpy()
    assert np.array_equal(alone, again)
    assert np.max(np.abs(both[:1] - golden)) <= 1e-5
    assert np.max(np.abs(both[1:] - alone)) <= 1e-5


def test_release_layout_is_read_by_restorers_reader(tmp_path):
    """A file laid out like the releases (pytorch-lightning: the network under 'state_dict'
    with a 'vqvae.' prefix, beside training-loss tensors the official loader ignores) read by
    restorer's own torch-free reader; with the prefix removed and the rest dropped it loads
    strictly and gives the golden output."""
    from restorer.zoo.weights import load_state_dict

    meta, model, image, golden = tiny("restoreformerpp_tiny")
    tensors = {PREFIX + k: v.clone() for k, v in model.state_dict().items()}
    tensors["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "RestoreFormer++.ckpt"
    torch.save({"epoch": 1, "global_step": 2, "state_dict": tensors}, path)
    arrays = load_state_dict(path)
    assert set(arrays) == set(tensors)
    fresh = RestoreFormerPlusPlus(**meta["hyperparameters"]).eval()
    fresh.load_state_dict({k[len(PREFIX):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                           if k.startswith(PREFIX)}, strict=True)
    with torch.no_grad():
        assert np.max(np.abs(fresh(torch.from_numpy(image)).numpy() - golden)) <= 1e-5


def test_refused_configurations():
    with pytest.raises(ValueError, match="double_z"):
        RestoreFormer(ch=32, ch_mult=[1, 1], num_res_blocks=1, resolution=32, z_channels=32, double_z=True)
    with pytest.raises(ValueError, match="enable_mid"):
        RestoreFormer(ch=32, ch_mult=[1, 1], num_res_blocks=1, resolution=32, z_channels=32, enable_mid=False)
    with pytest.raises(ValueError, match="heads"):
        RestoreFormer(ch=32, ch_mult=[1, 1], num_res_blocks=1, resolution=32, z_channels=32, head_size=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_onnx_matches_official_output(name, tmp_path):
    meta, model, image, golden = tiny(name)
    tolerance = meta["tolerance"]["max_abs_diff_onnxruntime_or_gpu"]
    # the batch axis is dynamic (min 1): torch.export cannot trace it from a batch of one
    example = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = export_onnx(model, {"x": example}, tmp_path / f"{name}.onnx")
    assert np.max(np.abs(run_onnx(path, {"x": image}) - golden)) <= tolerance
    other = np.random.default_rng(1).uniform(-1, 1, (1, 3, 48, 24)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(other)).numpy()
    assert np.max(np.abs(run_onnx(path, {"x": other}) - expected)) <= tolerance


@pytest.mark.slow
@pytest.mark.parametrize("arch", RELEASES)
def test_release_size_checkpoint_loads_and_runs(arch, tmp_path):
    """Random values with a release's names and shapes, saved as the release is laid out,
    read by restorer's reader, loaded strictly and run on a 512x512 face crop."""
    from restorer.zoo.weights import load_state_dict

    checkpoint, hparams, _, _ = RELEASES[arch]
    _, entries = load_manifest(DIR / f"{arch}.keys.json")
    rng = np.random.default_rng(0)
    tensors = {name: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) * 0.02)
               for name, shape, _ in entries}
    path = tmp_path / checkpoint
    torch.save({"state_dict": tensors}, path)
    del tensors
    arrays = load_state_dict(path)
    with torch.device("meta"):
        model = build(arch, hparams)
    model.load_state_dict({k[len(PREFIX):]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()},
                          strict=True, assign=True)
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (1, 3, 512, 512) and torch.isfinite(out).all()
