"""The face stage (restorer.pipelines.face_restore) with a fake face network, on the real
photos with faces that ship in samples/: faces found, aligned at 512 px, restored and pasted
back; every pixel outside the feathered masks' support bit-identical to the input; no seam
at the mask's border; strength 0, no face and tiny faces leave the photo unchanged, with a
note."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from restorer.archs.requirements import Requirements
from restorer.io.imaging import Image, load, save
from restorer.pipelines import face_restore
from restorer.pipelines.face_restore import (
    FACE_SIZE,
    FFHQ_TEMPLATE_512,
    alignment,
    feather_mask,
    restore_faces,
)
from restorer.pipelines.faces import Face
from restorer.run.runner import RunnerInfo

pytest.importorskip("dlib")

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FACE_PHOTOS = ["oldphoto_scratch_b.png", "fbcnn_real_2_face.jpg"]


class FakeFaceRunner:
    """A face 'network' that takes the fixed 512-px aligned crop, as GFPGAN does: brightens
    it by `offset` and, with `blur`, blurs it too (a change everywhere in the crop, so the
    paste-back mask alone decides what changes in the photo)."""

    def __init__(self, offset: float = 0.2, blur: float = 0.0):
        self.info = RunnerInfo("fake-face", "test", "numpy")
        self.needs = Requirements(fixed_tile=512, input_range=(-1.0, 1.0), output_range=(-1.0, 1.0))
        self.offset, self.blur, self.calls = offset, blur, 0

    def __call__(self, batch: np.ndarray, **extra) -> np.ndarray:
        assert batch.shape == (1, 3, 512, 512) and batch.dtype == np.float32
        assert 0 <= batch.min() and batch.max() <= 1
        self.calls += 1
        out = batch
        if self.blur:
            out = np.stack([cv2.GaussianBlur(c, (0, 0), self.blur) for c in batch[0]])[None]
        return np.clip(out + self.offset, 0, 1)

    def close(self):
        pass


def photo(name: str) -> np.ndarray:
    return load(SAMPLES / name).pixels


@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_faces_are_found_aligned_and_restored(name):
    pixels = photo(name)
    runner = FakeFaceRunner()
    result = restore_faces(pixels, runner, keep_mask=True)
    assert result.restored == len(result.faces) == 1 == runner.calls, result.notes
    face = result.faces[0]
    assert face.restored and not face.reason and len(face.landmarks) == 5
    x0, y0, x1, y1 = face.box
    assert x1 - x0 >= 40 and y1 - y0 >= 40
    # the changed region covers the face box and its support is where the mask is above 0
    rx0, ry0, rx1, ry1 = face.region
    assert rx0 <= x0 and ry0 <= y0 and rx1 >= x1 and ry1 >= y1
    support = np.argwhere(result.mask > 0)
    assert support.min(0).tolist() == [ry0, rx0] and (support.max(0) + 1).tolist() == [ry1, rx1]
    # the face itself got the network's change: brighter by about the offset at its centre
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    centre = (slice(cy - 5, cy + 5), slice(cx - 5, cx + 5))
    expected = (np.clip(pixels[centre] + 0.2, 0, 1) - pixels[centre]).mean()  # bright skin clips at 1
    assert expected > 0.05 and abs((result.pixels[centre] - pixels[centre]).mean() - expected) < 0.03
    assert result.pixels.dtype == pixels.dtype and result.pixels.shape == pixels.shape
    assert set(result.crops) == {0} and result.crops[0].shape == (512, 512, 3)
    assert result.faces[0].as_dict()["restored"] is True


@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_pixels_outside_the_masks_are_bit_identical_after_a_lossless_save(name, tmp_path):
    pixels = photo(name)
    result = restore_faces(pixels, FakeFaceRunner(blur=2.0), keep_mask=True)
    outside = result.mask == 0
    assert outside.mean() > 0.4  # most of the photo is away from the face
    assert np.array_equal(result.pixels[outside], pixels[outside])  # float, bit for bit
    assert not np.array_equal(result.pixels[~outside], pixels[~outside])
    # and as files: the PNG written from the result equals the input's 8-bit pixels there
    save(Image(pixels), tmp_path / "in.png")
    save(Image(result.pixels), tmp_path / "out.png")
    before = cv2.imread(str(tmp_path / "in.png"), cv2.IMREAD_UNCHANGED)
    after = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(before[outside], after[outside])


def _step(plane: np.ndarray) -> np.ndarray:
    """Per pixel, the largest absolute difference to its right and lower neighbours."""
    g = np.zeros_like(plane)
    dx, dy = np.abs(np.diff(plane, axis=1)), np.abs(np.diff(plane, axis=0))
    g[:, :-1] = np.maximum(g[:, :-1], dx)
    g[:, 1:] = np.maximum(g[:, 1:], dx)
    g[:-1] = np.maximum(g[:-1], dy)
    g[1:] = np.maximum(g[1:], dy)
    return g


@pytest.mark.parametrize("name", FACE_PHOTOS)
@pytest.mark.parametrize("offset, blur", [(0.2, 0.0), (0.0, 2.0)])
def test_no_seam_at_the_mask_border(name, offset, blur):
    """The difference image (output - input) steps no more across the blend ramp than inside
    the restored face (where resampling and the network's own change make it vary), and at
    the support's edge it rises from zero smoothly: a hard paste would step by the whole
    change (0.2 for the brightening runner) there."""
    pixels = photo(name)
    result = restore_faces(pixels, FakeFaceRunner(offset=offset, blur=blur), keep_mask=True)
    diff = (result.pixels.astype(np.float64) - pixels).mean(axis=2)
    step = _step(diff)
    mask = result.mask
    interior = mask >= 0.999
    ramp = (mask > 0) & (mask < 0.999)
    edge = (cv2.dilate((mask > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & (mask < 0.05)
    assert interior.sum() > 400 and ramp.sum() > 400 and edge.sum() > 100
    assert step[ramp].max() <= step[interior].max()
    assert np.percentile(step[ramp], 99) <= np.percentile(step[interior], 99)
    assert step[edge].max() < 0.03, step[edge].max()  # about 5 levels of 8 bits, at most
    # the blend weight itself has no jump: a ramp over many pixels
    assert _step(mask.astype(np.float64)).max() < 0.15


def test_strength_zero_leaves_the_photo_unchanged_and_skips_the_network():
    pixels = photo("oldphoto_scratch_b.png")
    runner = FakeFaceRunner()
    result = restore_faces(pixels, runner, strength=0.0)
    assert np.array_equal(result.pixels, pixels) and runner.calls == 0
    assert result.faces and not result.faces[0].restored and "strength 0" in result.faces[0].reason
    assert any("unchanged" in n for n in result.notes)


def test_a_face_switched_off_is_left_as_it_was():
    pixels = photo("oldphoto_scratch_b.png")
    runner = FakeFaceRunner()
    result = restore_faces(pixels, runner, keep=frozenset({0}))
    assert np.array_equal(result.pixels, pixels) and runner.calls == 0
    assert not result.faces[0].restored and "turned off" in result.faces[0].reason


def test_strength_blends_between_the_original_and_the_restored_face():
    pixels = photo("oldphoto_scratch_b.png")
    full = restore_faces(pixels, FakeFaceRunner(blur=1.5), strength=1.0, keep_mask=True)
    half = restore_faces(pixels, FakeFaceRunner(blur=1.5), strength=0.5, keep_mask=True)
    assert np.array_equal(full.mask > 0, half.mask > 0)
    np.testing.assert_allclose(half.pixels - pixels, 0.5 * (full.pixels - pixels), atol=1e-5)
    with pytest.raises(ValueError):
        restore_faces(pixels, FakeFaceRunner(), strength=1.5)


@pytest.mark.parametrize("name", ["sots_hazy_0002.jpg", "flat"])
def test_a_photo_without_a_face_passes_unchanged_with_a_note(name):
    pixels = np.full((200, 300, 3), 0.4, np.float32) if name == "flat" else photo(name)
    runner = FakeFaceRunner()
    result = restore_faces(pixels, runner)
    assert result.faces == [] and runner.calls == 0
    assert np.array_equal(result.pixels, pixels)
    assert result.notes == ["no face found; the photo is unchanged"]


def test_a_tiny_face_is_skipped_with_a_note():
    pixels = photo("oldphoto_scratch_b.png")
    tiny = cv2.resize(pixels, (64, 64), interpolation=cv2.INTER_AREA)  # the face: about 23 px
    runner = FakeFaceRunner()
    result = restore_faces(tiny, runner)
    assert len(result.faces) == 1, "dlib should still find the face at 64 px (searched upsampled)"
    assert not result.faces[0].restored and "too small" in result.faces[0].reason
    assert runner.calls == 0 and np.array_equal(result.pixels, tiny)
    assert any("too small" in n for n in result.notes) and any("unchanged" in n for n in result.notes)
    # the same face at half the size (about 45 px) is restored
    half = cv2.resize(pixels, (128, 128), interpolation=cv2.INTER_AREA)
    assert restore_faces(half, FakeFaceRunner()).restored == 1


def test_a_gray_photo_stays_gray_and_identical_outside_the_mask():
    pixels = photo("oldphoto_scratch_b.png")
    gray = (pixels @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    result = restore_faces(gray, FakeFaceRunner(), keep_mask=True)
    assert result.restored == 1 and result.pixels.shape == gray.shape
    outside = result.mask == 0
    assert np.array_equal(result.pixels[outside], gray[outside])


def test_given_faces_are_used_instead_of_detecting():
    """The app passes its own selection (a per-face toggle): no face -> unchanged, no search."""
    pixels = photo("oldphoto_scratch_b.png")
    runner = FakeFaceRunner()
    assert np.array_equal(restore_faces(pixels, runner, faces=[]).pixels, pixels) and runner.calls == 0
    found = restore_faces(pixels, FakeFaceRunner()).faces[0]
    face = Face(found.box, np.array(found.landmarks))
    again = restore_faces(pixels, runner, faces=[face])
    assert again.detector == "given" and again.restored == 1 and runner.calls == 1


def test_alignment_maps_the_landmarks_onto_the_ffhq_template():
    # a face whose points are the template scaled by 1/4, rotated by 10 degrees and moved
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (FFHQ_TEMPLATE_512 / 4) @ rot.T + [40, 30]
    matrix = alignment(points, FACE_SIZE)
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, FFHQ_TEMPLATE_512, atol=1e-2)
    assert alignment(np.zeros((5, 2)), FACE_SIZE) is None


def test_the_feather_mask_is_zero_at_the_crop_border_and_one_inside():
    mask = feather_mask(512)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    assert mask[:8].max() == 0 and mask[:, -8:].max() == 0
    assert mask[100:412, 100:412].min() == 1
    assert np.abs(np.diff(mask, axis=0)).max() < 0.03  # a ramp of 64 px, no step


def test_the_pipeline_step_reports_each_face(monkeypatch):
    """run(step, image, ctx, report): the faces step as restore() calls it."""
    from restorer.plan.request import Backend, Step
    from restorer.run.context import Context, StepReport

    runner = FakeFaceRunner()

    class Cache:
        def network(self, spec, device="auto", **kw):
            return runner

    class Catalog:
        def get(self, model_id):
            return model_id

    monkeypatch.setattr("restorer.zoo.catalog.load_catalog", lambda: Catalog())
    image = load(SAMPLES / "oldphoto_scratch_b.png")
    ctx = Context(cache=Cache())
    report = StepReport("faces", "fake-face", "pipeline")
    out = face_restore.run(Step("faces", "fake-face", Backend.PIPELINE, {"strength": 0.8}), image, ctx, report)
    assert out.alpha is image.alpha and out.pixels.shape == image.pixels.shape
    stages = {s["stage"]: s for s in report.stages}
    assert stages["face-detection"]["faces"] == 1
    assert stages["face-restoration"]["restored"] == 1 and stages["face-restoration"]["strength"] == 0.8
    assert stages["face-01"]["restored"] is True and len(stages["face-01"]["landmarks"]) == 5
    assert report.provider == "numpy" and "face-01" in ctx.stage_images


def test_the_stage_runs_a_real_face_network_through_the_torch_runner():
    """Any face runner fits: GFPGAN's own architecture (the conformance fixture's tiny
    configuration, 64-px aligned faces) through restorer's TorchRunner, value ranges mapped by
    the runner."""
    torch = pytest.importorskip("torch")
    gfpgan = pytest.importorskip("restorer.archs.gfpgan")
    import json

    from restorer.run.torch import TorchRunner
    from tests.manifests import FIXTURES, load_safetensors

    tiny = FIXTURES / "gfpgan" / "gfpgan_tiny"
    config = json.loads(tiny.with_suffix(".json").read_text())
    module = gfpgan.GFPGANv1Clean(**config["hyperparameters"])
    module.load_state_dict({k: torch.from_numpy(v) for k, v in load_safetensors(tiny.with_suffix(".safetensors")).items()})
    size = config["hyperparameters"]["out_size"]
    runner = TorchRunner(module, RunnerInfo("gfpgan-tiny", "", ""),
                         Requirements(fixed_tile=size, input_range=(-1.0, 1.0), output_range=(-1.0, 1.0)), device="cpu")
    pixels = photo("oldphoto_scratch_b.png")
    result = restore_faces(pixels, runner, keep_mask=True)
    assert result.restored == 1 and result.crops[0].shape == (size, size, 3)
    outside = result.mask == 0
    assert np.array_equal(result.pixels[outside], pixels[outside])
    assert not np.array_equal(result.pixels[~outside], pixels[~outside])
