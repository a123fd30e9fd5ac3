"""The old-photo fallback (no networks installed: classical scratch detection + built-in
inpainting) does no harm: nothing inside a face changes, clean photos are left (almost)
alone, and thin long scratches drawn into a clean photo are found and filled."""

from pathlib import Path

import cv2
import numpy as np
import pytest

import restorer.pipelines.old_photo as op
from restorer.io import imaging
from restorer.pipelines.faces import FacesUnavailable
from restorer.plan.request import Backend, Step
from restorer.run.context import Context, StepReport

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def fallback(image: imaging.Image, **options) -> tuple[imaging.Image, StepReport]:
    """The old-photo step as a restore runs it when no network is installed."""
    report = StepReport("old-photo", "builtin:inpaint", "pipeline")
    out = op.run(Step("old-photo", "builtin:inpaint", Backend.PIPELINE, options=options), image, Context(), report)
    return out, report


def changed(before: imaging.Image, after: imaging.Image) -> np.ndarray:
    """Pixels whose 8-bit value changed (what a saved file would show)."""
    return (imaging.to_integer(before.pixels, 8) != imaging.to_integer(after.pixels, 8)).any(axis=2)


def scratched(name: str, lines) -> tuple[imaging.Image, np.ndarray]:
    """A clean sample with thin lines drawn in: (image, the line pixels that stand out by 0.15
    or more in luma, i.e. the visible scratch)."""
    image = imaging.load(SAMPLES / name)
    drawn = np.zeros((image.height, image.width), np.uint8)
    pixels = image.pixels.copy()
    for points, value, thickness in lines:
        one = np.zeros_like(drawn)
        cv2.polylines(one, [np.array(points, np.int32)], False, 1, thickness)
        pixels[one > 0] = value
        drawn |= one
    visible = (drawn > 0) & (np.abs(op.gray(pixels) - op.gray(image.pixels)) > 0.15)
    return image.with_pixels(pixels), visible


# On the parrots (kodim23): bright and dark, straight and bent, 1 and 2 px wide, over the
# smooth background, the beak and the feathers.
SCRATCHES = [
    ([(10, 30), (80, 60), (160, 70), (250, 110)], 0.95, 1),
    ([(40, 250), (70, 170), (90, 90), (100, 5)], 0.9, 2),
    ([(130, 250), (180, 200), (250, 180)], 0.05, 1),
    ([(5, 200), (60, 215), (120, 240)], 1.0, 1),
]


def test_synthetic_thin_long_scratches_are_found_with_few_false_positives():
    image, visible = scratched("kodim23_crop256.png", SCRATCHES)
    mask = op.classical_scratch_mask(image.pixels)
    near = cv2.dilate(visible.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    recall = (mask & visible).sum() / visible.sum()
    assert visible.sum() > 800 and recall > 0.8  # measured 0.88
    assert (mask & ~near).mean() < 0.002  # measured 0.0001
    # ... and the fallback fills them: most visible scratch pixels change, little else does
    out, _ = fallback(image)
    moved = changed(image, out)
    assert (moved & visible).sum() / visible.sum() > 0.75
    assert (moved & ~near).mean() < 0.002


@pytest.mark.parametrize("name, most", [("kodim05_crop256.png", 0.005), ("kodim23_crop256.png", 0.001)])
def test_clean_photos_are_left_almost_untouched(name, most):
    """The motorbikes' spokes, fenders and lettering are thin lines too: texture and seams
    between regions are no scratches (the old detector changed 18 % of kodim05)."""
    image = imaging.load(SAMPLES / name)
    out, report = fallback(image)
    assert changed(image, out).mean() < most  # measured 0.29 % and 0 %
    assert report.stages[-2]["stage"] == "scratch-detection" and report.stages[-2]["share"] < most


def test_nothing_changes_inside_a_detected_face():
    """The scratched sample is a portrait: dlib finds the face; scratches around it are
    filled, not one pixel of the face (box grown by FACE_MARGIN) changes, alpha is kept."""
    pytest.importorskip("dlib")
    from restorer.pipelines.faces import find_face_boxes

    image = imaging.load(SAMPLES / "oldphoto_scratch_b.png")
    out, report = fallback(image)
    boxes, _ = find_face_boxes(image.pixels)
    assert len(boxes) == 1
    protect, faces, _ = op.protected_faces(image.pixels)
    x0, y0, x1, y1 = boxes[0]
    assert faces == 1 and protect[y0:y1, x0:x1].all()
    moved = changed(image, out)
    assert not moved[protect].any()
    assert np.array_equal(out.pixels[protect], image.pixels[protect])
    assert 0.005 < moved.mean() < 0.1  # scratches elsewhere were filled (measured 3.1 %)
    assert [s["stage"] for s in report.stages] == ["face-detection", "scratch-detection", "inpaint"]
    assert report.stages[0]["faces"] == 1
    assert out.alpha is image.alpha


def test_a_face_box_is_left_alone_even_where_a_scratch_crosses_it(monkeypatch):
    """The rule without dlib: a face box (injected) across a long scratch stays untouched,
    the scratch is filled on both sides of it."""
    monkeypatch.setattr(op, "find_face_boxes", lambda img: ([(100, 90, 160, 150)], "test boxes"))
    image, visible = scratched("kodim23_crop256.png", [([(5, 120), (250, 120)], 0.95, 1)])
    out, report = fallback(image)
    moved = changed(image, out)
    margin = round(60 * op.FACE_MARGIN)
    face = np.zeros_like(moved)
    face[90 - margin:150 + margin, 100 - margin:160 + margin] = True
    assert not moved[face].any()
    assert (moved & visible & ~face).sum() / (visible & ~face).sum() > 0.8
    assert (report.stages[0]["stage"], report.stages[0]["faces"]) == ("face-detection", 1)


def test_without_a_face_detector_only_long_scratches_are_filled(monkeypatch):
    """No detector: faces cannot be avoided, so short lines (an eyelid, lips) are not
    touched, only scratches a quarter of the photo long; the report says why."""
    eyelid = ([(30, 150), (45, 142), (60, 140), (75, 146)], 0.05, 1)  # a short dark arc
    long_one = ([(10, 110), (95, 10)], 0.95, 1)  # half the photo long
    image, visible = scratched("kodim23_crop256.png", [eyelid, long_one])
    arc = np.zeros_like(visible)
    arc[130:160, 20:90] = True

    def unavailable(img):
        raise FacesUnavailable("no face detector installed")

    monkeypatch.setattr(op, "find_face_boxes", unavailable)
    out, report = fallback(image)
    moved = changed(image, out)
    assert not moved[arc].any()
    assert (moved & visible & ~arc).sum() / (visible & ~arc).sum() > 0.8
    assert any("no face detector" in n for n in report.notes)
    assert [s["stage"] for s in report.stages] == ["scratch-detection", "inpaint"]

    # with a detector that finds no face, the short arc is a scratch like any other
    monkeypatch.setattr(op, "find_face_boxes", lambda img: ([], "test boxes"))
    out, _ = fallback(image)
    assert changed(image, out)[arc & visible].mean() > 0.8


def test_scratches_no_changes_nothing(monkeypatch):
    monkeypatch.setattr(op, "find_face_boxes", lambda img: ([], "test boxes"))
    image, _ = scratched("kodim23_crop256.png", SCRATCHES)
    out, report = fallback(image, scratches="no")
    assert not changed(image, out).any()
    assert [s["stage"] for s in report.stages] == ["scratch-detection", "inpaint"]
