"""Stage functions of the old-photo pipeline (restorer.pipelines.old_photo): order, sizes,
thresholds and ranges, with the tiny conformance networks where they fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorer.pipelines import old_photo as op
from tests.test_arch_oldphoto import HERE, chain_models, loaded, nl_model, npy


def torch_net(module):
    """NCHW numpy -> NCHW numpy through a torch module (what an ONNX session wrapper does)."""

    def call(*arrays):
        with torch.no_grad():
            return module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()

    return call


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_sizes_follow_run_py_rounding():
    assert op.round_to_multiple(100, 16) == 96 and op.round_to_multiple(150, 16) == 144
    assert op.round_to_multiple(40, 16) == 32  # 2.5 rounds half to even
    assert op.detector_size(96, 144) == (256, 384)
    assert op.detector_size(400, 300) == (336, 256)  # 400/300*256 = 341.3 -> 336
    assert op.detector_size(64, 64) == (256, 256)


def test_detect_scratches_order_sizes_and_threshold():
    seen = {}
    at_threshold = np.log(0.4 / 0.6)

    def fake(x):
        seen["shape"], seen["range"] = x.shape, (float(x.min()), float(x.max()))
        out = np.full(x.shape, at_threshold - 1e-3, np.float32)
        out[..., : x.shape[3] // 2] = at_threshold + 1e-3  # left half just above 0.4
        return out

    img = np.zeros((100, 150, 3), np.float32)
    img[:, :, 0] = 1.0  # pure red: luma 0.299 -> -0.402 in [-1, 1]
    mask = op.detect_scratches(img, fake)
    assert seen["shape"] == (1, 1, 256, 384)
    assert seen["range"][0] == pytest.approx(0.299 * 2 - 1, abs=1e-5)
    assert mask.shape == (96, 144) and mask.dtype == bool
    assert mask[:, :72].all() and not mask[:, 72:].any()


def test_detect_scratches_with_the_tiny_detector():
    import json

    cfg = json.loads((HERE / "scratch_detector_tiny.json").read_text())["config"]
    net = torch_net(loaded("OldPhotoScratchUNet", cfg, "scratch_detector_tiny"))
    img = np.random.default_rng(0).random((64, 80, 3), dtype=np.float32)
    mask = op.detect_scratches(img, net)
    assert mask.shape == (64, 80)
    assert 0 < mask.sum() < mask.size


def test_restore_global_quality_path_reproduces_the_golden_chain():
    vae_a, mapping, vae_b = chain_models()
    x = npy("global_chain.input")  # 1 x 3 x 32 x 48 in [-1, 1]
    img = (x[0].transpose(1, 2, 0) + 1) / 2
    out = op.restore_global(img, None, torch_net(vae_a.encoder), torch_net(mapping), torch_net(vae_b.decoder))
    want = (npy("global_chain.output")[0].transpose(1, 2, 0) + 1) / 2
    want = (want - want.min()) / (want.max() - want.min())  # the official min-max saving
    np.testing.assert_allclose(out, want, atol=2e-4)


def test_restore_global_quality_path_rounds_to_multiples_of_4_and_takes_gray():
    shapes = []

    def enc(x):
        shapes.append(x.shape)
        return np.zeros((1, 64, x.shape[2] // 4, x.shape[3] // 4), np.float32)

    def dec(z):
        return np.linspace(-1, 0, 3 * 16 * z.shape[2] * z.shape[3], dtype=np.float32).reshape(
            1, 3, 4 * z.shape[2], 4 * z.shape[3]
        )

    out = op.restore_global(np.full((30, 45, 1), 0.5, np.float32), None, enc, lambda z: z, dec)
    assert shapes == [(1, 3, 32, 44)]  # 30/4 = 7.5 -> 8 (half to even), 45/4 = 11.25 -> 11
    assert out.shape == (32, 44, 3)
    assert out.min() == 0 and out.max() == pytest.approx(1)  # min-max stretched


def test_restore_global_scratch_path_paints_holes_white_and_passes_the_mask():
    fed = {}

    def enc(x):
        fed["image"] = x
        return np.zeros((1, 64, x.shape[2] // 4, x.shape[3] // 4), np.float32)

    def mapping(z, m):
        fed["mask"] = m
        return z

    def dec(z):
        return np.random.default_rng(1).uniform(-1, 1, (1, 3, 4 * z.shape[2], 4 * z.shape[3])).astype(np.float32)

    img = np.full((32, 48, 3), 0.2, np.float32)
    mask = np.zeros((32, 48), bool)
    mask[10, 5:40] = True
    op.restore_global(img, mask, enc, mapping, dec)
    assert fed["mask"].shape == (1, 1, 32, 48) and fed["mask"].sum() == 35
    assert np.all(fed["image"][0, :, 10, 5:40] == 1.0)  # white in [-1, 1]
    assert np.allclose(fed["image"][0, :, 0, :], 0.2 * 2 - 1)
    op.restore_global(img, mask, enc, mapping, dec, hr=True)
    # 3 dilations of a 1-px line with a 3x3 kernel: 7 rows, 3 px longer at each end
    assert fed["mask"].sum() == 7 * 41
    with pytest.raises(ValueError):
        op.restore_global(img[:30], mask[:30], enc, mapping, dec)


def test_restore_global_scratch_path_with_the_tiny_networks():
    vae_a, _, vae_b = chain_models()
    mapping = nl_model()
    img = np.random.default_rng(0).random((32, 48, 3), dtype=np.float32)
    mask = npy("global_mapping_nl_tiny.mask")[0, 0].astype(bool)
    out = op.restore_global(img, mask, torch_net(vae_a.encoder), torch_net(mapping), torch_net(vae_b.decoder))
    clean = op.restore_global(
        img, np.zeros_like(mask), torch_net(vae_a.encoder), torch_net(mapping), torch_net(vae_b.decoder)
    )
    assert out.shape == (32, 48, 3) and np.isfinite(out).all()
    assert np.abs(out - clean).max() > 0.05


def test_face_template_and_alignment():
    np.testing.assert_allclose(
        op.face_template(256),
        [[89.0, 108.5], [167.0, 108.5], [128.0, 147.5], [104.6, 195.86], [151.4, 195.86]],
        atol=1e-6,
    )
    np.testing.assert_allclose(op.face_template(512), 2 * op.face_template(256))
    # a face whose landmarks are the template shifted by (40, 30) and scaled by 0.5
    landmarks = op.face_template(256) * 0.5 + [40, 30]
    img = np.random.default_rng(0).random((200, 220, 3), dtype=np.float32)
    face, transform = op.align_face(img, landmarks, 256)
    np.testing.assert_allclose(transform[:2], [[0.5, 0, 40], [0, 0.5, 30]], atol=1e-9)
    assert face.shape == (256, 256, 3)
    np.testing.assert_allclose(face[100, 60], img[30 + 50, 40 + 30], atol=1e-5)  # exact grid point


def test_landmarks_from_68_points():
    points = np.arange(136).reshape(68, 2)
    five = op.landmarks_from_68(points)
    np.testing.assert_array_equal(five[0], (points[36] + points[39]) // 2)
    np.testing.assert_array_equal(five[2], points[30])


def test_enhance_and_blend_with_the_tiny_face_generator():
    net = torch_net(loaded("OldPhotoFaceSPADE", {"ngf": 2, "load_size": 64}, "face_gen_tiny"))
    img = np.random.default_rng(0).random((120, 140, 3), dtype=np.float32)
    landmarks = op.face_template(64) * 0.8 + [30, 20]
    face, transform = op.align_face(img, landmarks, 64)
    enhanced = op.enhance_face(face, net)
    assert enhanced.shape == (64, 64, 3) and 0 <= enhanced.min() and enhanced.max() <= 1
    out = op.blend_face(img, enhanced, transform)
    assert out.shape == img.shape
    # far from the face the photo is untouched; at the face centre it changed
    np.testing.assert_array_equal(out[110:, 120:], img[110:, 120:])
    assert np.abs(out[45, 55] - img[45, 55]).max() > 0


def test_classical_scratch_mask_on_the_sample():
    rgba = np.asarray(Image.open(HERE / "old_w_scratch_b.png"), dtype=np.float32) / 255
    mask = op.classical_scratch_mask(rgba)
    assert mask.shape == rgba.shape[:2] and mask.dtype == bool
    fraction = mask.mean()
    assert 0.002 < fraction < 0.15  # some thin structures, not the whole picture
    # synthetic check: a thin bright line on a smooth ramp is found, the ramp is not
    ramp = np.tile(np.linspace(0.2, 0.6, 96, dtype=np.float32), (64, 1))
    synthetic = np.repeat(ramp[:, :, None], 3, axis=2)
    synthetic[30, 10:90] = 0.95
    found = op.classical_scratch_mask(synthetic)
    assert found[30, 20:80].all()
    assert not found[:25].any() and not found[36:].any()
