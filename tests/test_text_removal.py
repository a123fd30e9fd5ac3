"""Text detection (bundled DBNet), the GaRNet box mask, and the text-removal pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from restorer.pipelines.text_removal import remove_text, text_windows
from restorer.run.builtin import builtin_runner
from restorer.pipelines.text_detect import DetectorUnavailable, boxes_to_mask, detect_text, detector_path
from tests.manifests import FIXTURES

HERE = FIXTURES / "garnet"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(HERE / "scenetext_thai.jpg").convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def hand_mask(photo) -> np.ndarray:
    polygons = json.loads((HERE / "scenetext_thai.textmask.json").read_text())["polygons"]
    return boxes_to_mask(polygons, photo.shape)


@pytest.fixture(scope="module")
def detected(photo):
    try:
        detector_path()
    except DetectorUnavailable as e:
        pytest.skip(str(e))
    return detect_text(photo)


@pytest.fixture(scope="module")
def tiny_garnet():
    torch = pytest.importorskip("torch")
    from restorer.archs.garnet import GaRNet
    from restorer.archs.requirements import Requirements
    from restorer.run.runner import RunnerInfo
    from restorer.run.torch import TorchRunner
    from tests.manifests import load_safetensors

    model = GaRNet(in_channels=3, ndf=8)
    weights = load_safetensors(HERE / "garnet_tiny.safetensors")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    info = RunnerInfo(model="garnet-tiny", backend="torch", provider="torch:cpu")
    runner = TorchRunner(model, info, Requirements(pad_multiple=32, input_range=(-1.0, 1.0),
                                                   output_range=(-1.0, 1.0)), device="cpu")
    calls = []

    def net(image, mask):
        calls.append((image.copy(), mask.copy()))
        return runner(image, mask=mask)

    net.needs = runner.needs
    net.calls = calls
    net.runner = runner
    return net


# --- the box mask ---------------------------------------------------------------------


def test_box_mask_fills_polygons_with_edges_and_dilates():
    square = np.array([[2, 3], [6, 3], [6, 7], [2, 7]], dtype=np.float32)
    mask = boxes_to_mask([square], (12, 10))
    assert mask.dtype == bool and mask.shape == (12, 10)
    expected = np.zeros((12, 10), bool)
    expected[3:8, 2:7] = True  # edge pixels included, as cv2.fillPoly on int points does
    np.testing.assert_array_equal(mask, expected)
    # A flat x1, y1, x2, y2, ... list (the official box-file layout) means the same.
    np.testing.assert_array_equal(boxes_to_mask([[2, 3, 6, 3, 6, 7, 2, 7]], (12, 10)), expected)
    grown = boxes_to_mask([square], (12, 10), dilate=2)
    grown_expected = np.zeros((12, 10), bool)
    grown_expected[1:10, 0:9] = True
    np.testing.assert_array_equal(grown, grown_expected)
    assert not boxes_to_mask([], (4, 4)).any()


# --- detection ------------------------------------------------------------------------


def test_detected_boxes_cover_hand_marked_text(photo, hand_mask, detected):
    assert detected, "no text found on a street sign"
    for box in detected:
        assert box.shape == (4, 2) and box.dtype == np.float32
        assert (box[:, 0] >= 0).all() and (box[:, 0] <= photo.shape[1] - 1).all()
        assert (box[:, 1] >= 0).all() and (box[:, 1] <= photo.shape[0] - 1).all()
    found = boxes_to_mask(detected, photo.shape)
    recall = (found & hand_mask).sum() / hand_mask.sum()
    precision = (found & hand_mask).sum() / found.sum()
    assert recall >= 0.8, recall
    # ... and not by covering everything: most of what is found is marked text.
    assert precision >= 0.6, precision


def test_detector_accepts_gray_and_rgba(photo, detected):
    gray = photo.mean(axis=2, keepdims=True)
    rgba = np.concatenate([photo, np.ones_like(photo[:, :, :1])], axis=2)
    assert len(detect_text(rgba)) == len(detected)
    assert len(detect_text(gray)) >= 1


# --- windows --------------------------------------------------------------------------


def test_windows_cover_the_mask_in_multiples_without_overlap():
    mask = np.zeros((300, 500), bool)
    mask[20:40, 30:200] = True
    mask[250:270, 400:480] = True
    mask[60:70, 60:100] = True  # close to the first: merged with it
    windows = text_windows(mask, 32)
    covered = np.zeros_like(mask)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0) % 32 == 0 and (y1 - y0) % 32 == 0
        assert 0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 300
        assert not covered[y0:y1, x0:x1].any(), "windows overlap"
        covered[y0:y1, x0:x1] = True
    assert covered[mask].all()
    assert len(windows) == 2
    # Smaller than the multiple: the whole axis, padded by the pipeline.
    assert text_windows(np.ones((20, 40), bool), 32) == [(0, 0, 40, 20)]


# --- removal --------------------------------------------------------------------------


def test_inpainting_removes_text_and_keeps_everything_else(photo, hand_mask, detected):
    result, mask_used, stages = remove_text(photo, inpaint=builtin_runner("inpaint"), dilate=3)
    assert stages["boxes"] is not None and len(stages["boxes"]) == len(detected)
    np.testing.assert_array_equal(mask_used, boxes_to_mask(detected, photo.shape, dilate=3))
    assert result.dtype == np.float32 and result.shape == photo.shape
    outside = ~mask_used
    assert np.array_equal(result[outside], photo[outside])  # bit-identical
    # The white letters are gone: inside the hand-marked text the bright pixels vanish.
    letters = hand_mask & (photo.min(axis=2) > 0.55)  # background green has min < 0.4
    assert letters.sum() > 1000
    assert result[letters].min(axis=1).mean() < photo[letters].min(axis=1).mean() - 0.2


def test_given_mask_is_dilated_and_alpha_kept(photo):
    rgba = np.concatenate([photo, np.linspace(0, 1, photo.shape[0], dtype=np.float32)[:, None, None]
                           * np.ones_like(photo[:, :, :1])], axis=2)
    mask = np.zeros(photo.shape[:2], bool)
    mask[300:320, 200:260] = True
    result, mask_used, stages = remove_text(rgba, mask=mask, dilate=1, inpaint=builtin_runner("inpaint"))
    assert stages["boxes"] is None
    assert mask_used.sum() == 22 * 62
    np.testing.assert_array_equal(result[:, :, 3], rgba[:, :, 3])
    assert np.array_equal(result[~mask_used], rgba[~mask_used])
    assert not np.array_equal(result[mask_used, :3], rgba[mask_used, :3])


def test_no_text_returns_the_input():
    img = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    result, mask_used, _ = remove_text(img, boxes=[], inpaint=lambda *a, **k: 1 / 0)
    assert not mask_used.any() and np.array_equal(result, img)


def test_tiny_garnet_end_to_end_at_full_resolution(photo, hand_mask, tiny_garnet):
    polygons = json.loads((HERE / "scenetext_thai.textmask.json").read_text())["polygons"]
    tiny_garnet.calls.clear()
    result, mask_used, stages = remove_text(photo, net=tiny_garnet, boxes=polygons, dilate=2)
    assert np.array_equal(result[~mask_used], photo[~mask_used])
    assert np.array_equal(mask_used, boxes_to_mask(polygons, photo.shape, dilate=2))
    assert stages["windows"] and len(tiny_garnet.calls) == len(stages["windows"])
    for (image, mask), (x0, y0, x1, y1) in zip(tiny_garnet.calls, stages["windows"]):
        # Batch of one, multiples of 32, pixels taken from the photo at its own resolution.
        assert image.shape[0] == 1 and image.shape[2] % 32 == 0 and image.shape[3] % 32 == 0
        np.testing.assert_array_equal(image[0, :, : y1 - y0, : x1 - x0], photo[y0:y1, x0:x1].transpose(2, 0, 1))
        np.testing.assert_array_equal(mask[0, 0, : y1 - y0, : x1 - x0], mask_used[y0:y1, x0:x1])
        # Inside the mask the result is the network's output for that window.
        expected = np.clip(tiny_garnet.runner(image, mask=mask)[0, :, : y1 - y0, : x1 - x0], 0, 1)
        inside = mask_used[y0:y1, x0:x1]
        np.testing.assert_allclose(result[y0:y1, x0:x1][inside], expected.transpose(1, 2, 0)[inside], atol=1e-6)
    assert np.abs(result[mask_used] - photo[mask_used]).mean() > 0.01


def test_tiny_garnet_on_an_image_smaller_than_its_multiple(tiny_garnet):
    img = np.random.default_rng(1).random((21, 45, 3), dtype=np.float32)
    boxes = [np.array([[5, 4], [30, 4], [30, 12], [5, 12]], np.float32)]
    tiny_garnet.calls.clear()
    result, mask_used, stages = remove_text(img, net=tiny_garnet, boxes=boxes, dilate=0)
    assert stages["windows"] == [(0, 0, 45, 21)]
    assert tiny_garnet.calls[0][0].shape == (1, 3, 32, 64)
    assert np.array_equal(result[~mask_used], img[~mask_used])
    assert not np.array_equal(result[mask_used], img[mask_used])


def test_bundled_detector_is_the_catalogued_file(detected):
    import hashlib

    from restorer.zoo.catalog import load_catalog

    spec = load_catalog().get("text-detector-dbnet")
    path = detector_path()
    if not str(path).replace("\\", "/").endswith(spec.extra["package_file"]):
        pytest.skip(f"another detector file is in use: {path}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.extra["package_sha256"]
