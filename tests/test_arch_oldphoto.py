"""Conformance of the "Bringing Old Photos Back to Life" networks (restorer.archs.oldphoto).

- every released checkpoint's manifest loads strictly (names and shapes) into our modules;
- every tiny golden fixture (computed with the official code) is reproduced in PyTorch and,
  after export with restorer.export, in ONNX Runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from restorer.archs import build
from restorer.archs.oldphoto.face import FaceSPADEGenerator, SpectralConv2d
from restorer.archs.oldphoto.mapping import MappingPatchAttention, PatchAttention
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import FIXTURES, assert_loads_strictly, load_manifest, load_safetensors, meta_state_dict

HERE = FIXTURES / "oldphoto"
TOL = 1e-4  # the fixtures' suggested atol = rtol
ORT_TOL = 2e-4  # ORT's InstanceNormalization differs slightly from PyTorch's (fixture README)

VAE = dict(
    input_nc=3, output_nc=3, ngf=64, k_size=4, n_downsample_global=3, mc=64, start_r=1, spatio_size=64, feat_dim=-1
)
MAPPING = dict(map_mc=512, mapping_n_block=6, mapping_net_dilation=1, feat_dim=-1)
NL = dict(
    NL_res=True,
    NL_fusion_method="combine",
    correlation_renormalize=True,
    softmax_temperature=1.0,
    use_self=False,
    cosin_similarity=False,
)
DETECTOR = dict(
    in_channels=1, out_channels=1, depth=4, conv_num=2, wf=6, padding=True, batch_norm=True,
    up_mode="upsample", with_tanh=False, sync_bn=True, antialiasing=True,
)  # fmt: skip
FACE = dict(ngf=64, norm_G="spectralspadesyncbatch3x3", num_upsampling_layers="normal", no_parsing_map=True)

RELEASED = {
    "scratch_detection_FT_Epoch_latest": ("OldPhotoScratchUNet", DETECTOR),
    "global_VAE_A_quality": ("OldPhotoVAE", VAE),
    "global_VAE_B_quality": ("OldPhotoVAE", VAE),
    "global_VAE_B_scratch": ("OldPhotoVAE", VAE),
    "global_mapping_quality": ("OldPhotoMapping", MAPPING),
    "global_mapping_scratch": ("OldPhotoMappingNL", {**MAPPING, **NL}),
    "global_mapping_Patch_Attention": ("OldPhotoMappingPA", {**MAPPING, "mapping_exp": 1}),
    "face_Setting_9_epoch_100": ("OldPhotoFaceSPADE", {**FACE, "load_size": 256}),
    "face_FaceSR_512": ("OldPhotoFaceSPADE", {**FACE, "load_size": 512}),
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def npy(name: str) -> np.ndarray:
    return np.load(HERE / f"{name}.npy")


def weights(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in load_safetensors(HERE / f"{name}.safetensors").items()}


def loaded(arch: str, hparams: dict, name: str) -> torch.nn.Module:
    model = build(arch, hparams)
    model.load_state_dict(weights(name), strict=True)
    return model.eval()


def close(got: np.ndarray, want: np.ndarray, atol: float = TOL) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=atol, rtol=TOL)


# ---- released manifests: strict names and shapes ----


@pytest.mark.parametrize("manifest", sorted(RELEASED))
def test_released_manifest_loads_strictly(manifest):
    arch, hparams = RELEASED[manifest]
    with torch.device("meta"):
        model = build(arch, hparams)
    path = HERE / f"{manifest}.keys.json"
    assert_loads_strictly(model, path)
    # a wrong shape must be refused, or this test proves nothing
    sd = meta_state_dict(load_manifest(path)[1])
    sd[next(iter(sd))] = torch.empty(7, device="meta")
    with pytest.raises(RuntimeError):
        model.load_state_dict(sd, strict=True, assign=True)


# ---- tiny golden fixtures: PyTorch ----


def test_scratch_detector_matches_golden():
    cfg = json.loads((HERE / "scratch_detector_tiny.json").read_text())["config"]
    model = loaded("OldPhotoScratchUNet", cfg, "scratch_detector_tiny")
    with torch.no_grad():
        logits = model(torch.from_numpy(npy("scratch_detector_tiny.input"))).numpy()
    close(logits, npy("scratch_detector_tiny.output"))
    # the official post-processing gives 3239 scratch pixels on this fixture
    probability = 1 / (1 + np.exp(-logits))
    assert int((probability >= 0.4).sum()) == 3239


def chain_models():
    vae_a = loaded("OldPhotoVAE", VAE, "global_vae_a")
    vae_b = loaded("OldPhotoVAE", VAE, "global_vae_b")
    mapping = loaded("OldPhotoMapping", {"map_mc": 128, "mapping_n_block": 1}, "global_mapping_plain_tiny")
    return vae_a, mapping, vae_b


def test_global_chain_matches_golden_with_intermediates():
    vae_a, mapping, vae_b = chain_models()
    with torch.no_grad():
        latent = vae_a.encode(torch.from_numpy(npy("global_chain.input")))
        close(latent.numpy(), npy("global_chain.latent_a"))
        mapped = mapping(latent)
        close(mapped.numpy(), npy("global_chain.latent_mapped"))
        # decode the golden mapped latent, so each stage is checked on its own input
        out = vae_b.decode(torch.from_numpy(npy("global_chain.latent_mapped")))
    close(out.numpy(), npy("global_chain.output"))
    assert latent.shape[2:] == (32 // 4, 48 // 4)


def nl_model():
    cfg = json.loads((HERE / "global_mapping_nl_tiny.json").read_text())["config"]
    hparams = {k: cfg[k] for k in ("map_mc", "mapping_n_block", "mapping_net_dilation")} | NL
    return loaded("OldPhotoMappingNL", hparams, "global_mapping_nl_tiny")


def test_nonlocal_mapping_matches_golden_and_uses_the_mask():
    model = nl_model()
    feat = torch.from_numpy(npy("global_mapping_nl_tiny.input"))
    mask = torch.from_numpy(npy("global_mapping_nl_tiny.mask"))
    before = mask.clone()
    with torch.no_grad():
        out = model(feat, mask).numpy()
        unmasked = model(feat, torch.zeros_like(mask)).numpy()
    close(out, npy("global_mapping_nl_tiny.output"))
    assert torch.equal(mask, before)  # the caller's mask is not written to
    assert np.abs(out - unmasked).max() > 1.0  # the fixture README: 3.19


def test_face_generator_matches_golden():
    cfg = json.loads((HERE / "face_gen_tiny.json").read_text())["config"]
    hparams = {k: cfg[k] for k in ("ngf", "load_size", "norm_G", "num_upsampling_layers", "no_parsing_map")}
    model = loaded("OldPhotoFaceSPADE", hparams, "face_gen_tiny")
    with torch.no_grad():
        out = model(torch.from_numpy(npy("face_gen_tiny.input"))).numpy()
    close(out, npy("face_gen_tiny.output"))


def test_spectral_conv_loads_the_old_layout_with_a_plain_weight():
    new = SpectralConv2d(4, 3, 3, padding=1)
    torch.nn.init.normal_(new.weight_orig)
    new.weight_u.copy_(torch.nn.functional.normalize(torch.randn(3), dim=0))
    new.weight_v.copy_(torch.nn.functional.normalize(torch.randn(36), dim=0))
    normalized = new.normalized_weight().detach()
    old = SpectralConv2d(4, 3, 3, padding=1)
    # PyTorch < 1.1 checkpoints: weight (already normalised), weight_orig, weight_u; no weight_v
    old.load_state_dict(
        {"weight": normalized, "weight_orig": new.weight_orig.detach(), "weight_u": new.weight_u, "bias": new.bias},
        strict=True,
    )
    torch.testing.assert_close(old.normalized_weight(), normalized)


# ---- ONNX (restorer.export, dynamo) vs the golden outputs ----


def test_onnx_detector_and_face(tmp_path):
    cfg = json.loads((HERE / "scratch_detector_tiny.json").read_text())["config"]
    detector = loaded("OldPhotoScratchUNet", cfg, "scratch_detector_tiny")
    x = npy("scratch_detector_tiny.input")
    # fixed size keeps the test fast (the dynamic export works too, ~3x slower to trace)
    path = export_onnx(detector, {"input": torch.from_numpy(x)}, tmp_path / "detector.onnx", dynamic_hw=False)
    close(run_onnx(path, {"input": x}), npy("scratch_detector_tiny.output"))

    face = loaded("OldPhotoFaceSPADE", {"ngf": 2, "load_size": 64}, "face_gen_tiny")
    x = npy("face_gen_tiny.input")
    path = export_onnx(face, {"degraded_image": torch.from_numpy(x)}, tmp_path / "face.onnx", dynamic_hw=False)
    close(run_onnx(path, {"degraded_image": x}), npy("face_gen_tiny.output"))


def test_onnx_vae_encoder_and_decoder_as_separate_graphs(tmp_path):
    # (the plain mapping's ops are a subset of the non-local mapping's, exported below)
    vae_a, _, vae_b = chain_models()
    x = npy("global_chain.input")
    latent = npy("global_chain.latent_a")
    mapped = npy("global_chain.latent_mapped")
    enc = export_onnx(vae_a.encoder, {"input": torch.from_numpy(x)}, tmp_path / "enc.onnx")
    dec = export_onnx(vae_b.decoder, {"input": torch.from_numpy(mapped)}, tmp_path / "dec.onnx")
    close(run_onnx(enc, {"input": x}), latent, ORT_TOL)
    close(run_onnx(dec, {"input": mapped}), npy("global_chain.output"), ORT_TOL)


def test_onnx_nonlocal_mapping_with_mask_input(tmp_path):
    model = nl_model()
    feat = npy("global_mapping_nl_tiny.input")
    mask = npy("global_mapping_nl_tiny.mask")
    # Traced with a batch of two: with two batch-1 inputs torch.export specialises the batch
    # to 1 and refuses the dynamic batch restorer.export asks for.
    inputs = {"input": torch.from_numpy(np.repeat(feat, 2, 0)), "mask": torch.from_numpy(np.repeat(mask, 2, 0))}
    path = export_onnx(model, inputs, tmp_path / "nl.onnx")
    close(run_onnx(path, {"input": feat, "mask": mask}), npy("global_mapping_nl_tiny.output"), ORT_TOL)


# ---- patch attention (HR): no official fixture; checked against a direct loop ----


def patch_attention_by_loops(block: PatchAttention, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The HR patch attention written as plain loops over the patch grid (batch of one)."""
    x = block.res_block(z)
    _, c, h, w = x.shape
    p = block.patch_size
    small = torch.nn.functional.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
    small = (small > 0).float()
    grid = [(i, j) for i in range(h // p) for j in range(w // p)]
    tile = {g: x[0, :, g[0] * p : (g[0] + 1) * p, g[1] * p : (g[1] + 1) * p] for g in grid}
    hole = {g: small[0, 0, g[0] * p : (g[0] + 1) * p, g[1] * p : (g[1] + 1) * p].mean() > 0.6 for g in grid}
    queries = [g for g in grid if hole[g]]
    keys = [g for g in grid if not hole[g]]
    if not queries:
        composed = x
    else:
        composed = torch.zeros_like(x)
        for g in grid:
            source = g
            if hole[g]:
                q = tile[g].flatten() / tile[g].flatten().norm()
                scores = [float(q @ (tile[k].flatten() / tile[k].flatten().norm())) for k in keys]
                source = keys[int(np.argmax(scores))]
            composed[0, :, g[0] * p : (g[0] + 1) * p, g[1] * p : (g[1] + 1) * p] = tile[source]
    return block.F_Combine(torch.cat((z, composed, small), dim=1))


@pytest.mark.parametrize("latent_hw", [(8, 12), (10, 12)])  # the second has a partial patch row
def test_patch_attention_matches_direct_loops(latent_hw):
    torch.manual_seed(0)
    block = PatchAttention(512, 512, 4).eval()
    h, w = latent_hw
    z = torch.randn(1, 512, h, w)
    mask = torch.zeros(1, 1, 4 * h, 4 * w)
    mask[:, :, 2:15, 17:30] = 1  # covers more than 60 % of one 4x4 latent patch
    with torch.no_grad():
        got = block(z, mask)
        want = patch_attention_by_loops(block, z, mask)
        unscratched = block(z, torch.zeros_like(mask))
        want_unscratched = patch_attention_by_loops(block, z, torch.zeros_like(mask))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(unscratched, want_unscratched, atol=1e-4, rtol=1e-4)
    assert (got - unscratched).abs().max() > 1e-3


def test_patch_attention_mapping_is_built_from_the_released_options():
    with torch.device("meta"):
        model = MappingPatchAttention(map_mc=512, mapping_exp=1)
    assert [m.patch_size for m in (model.NL_scale_1, model.NL_scale_2, model.NL_scale_3)] == [8, 4, 2]


def test_face_generator_rejects_unreleased_variants():
    with pytest.raises(ValueError):
        FaceSPADEGenerator(no_parsing_map=False)
