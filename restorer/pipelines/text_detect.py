"""Scene-text detection that runs offline: a DBNet detector whose ONNX weights ship inside a
PyPI package, and the box mask GaRNet expects.

The weights: `rapidocr` (3.x, Apache-2.0) ships PaddleOCR's PP-OCRv6 small text detector as
an ONNX file inside its wheel (rapidocr/models/PP-OCRv6_det_small.onnx, Apache-2.0, see the
package's MODEL_LICENSES.md). Only that file is used: the package is located without being
imported, so none of its runtime dependencies (omegaconf, shapely, pyclipper, requests, ...)
are needed, and the network runs on onnxruntime like every other model here. We need boxes,
not recognition, so the DB post-processing (threshold the probability map, one rotated
rectangle per connected region, score it, grow it by the "unclip" distance) is ours, with
OpenCV only.

Settings follow the package's defaults for this model: the short side is scaled up to 736
(long side capped at 2000), both rounded to multiples of 32; input BGR, (x - 0.5) / 0.5;
probability threshold 0.3, box score threshold 0.5, unclip ratio 1.6, 2x2 dilation.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np

DETECTOR_PACKAGE = "rapidocr"
# File names of the bundled detector, newest first (3.x releases renamed them over time).
DETECTOR_FILES = ("PP-OCRv6_det_small.onnx", "ch_PP-OCRv5_mobile_det.onnx", "ch_PP-OCRv4_det_infer.onnx")
DETECTOR_ENV = "RESTORER_TEXT_DETECTOR"  # path to another DB detector ONNX file

LIMIT_SIDE = 736  # the short side is scaled up to this
MAX_SIDE = 2000  # ... and the long side down to this, before detection
MULTIPLE = 32  # the detector's stride
PROB_THRESHOLD = 0.3
BOX_THRESHOLD = 0.5
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3  # in probability-map pixels
MAX_CANDIDATES = 1000


class DetectorUnavailable(RuntimeError):
    """No detector weights on this machine."""


def detector_path() -> Path:
    """The detector ONNX file: $RESTORER_TEXT_DETECTOR, else the one bundled with rapidocr."""
    override = os.environ.get(DETECTOR_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise DetectorUnavailable(f"{DETECTOR_ENV}={override}: no such file")
        return path
    # find_spec locates the package without running its __init__ (and its imports).
    spec = importlib.util.find_spec(DETECTOR_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for name in DETECTOR_FILES:
                path = Path(folder) / "models" / name
                if path.is_file():
                    return path
    raise DetectorUnavailable(
        "text detection needs the detector that ships in the 'rapidocr' package: "
        "pip install 'restorer[text]' (or pip install --no-deps rapidocr), "
        "or pass text boxes or a mask instead"
    )


@functools.lru_cache(maxsize=2)
def _session(path: str):
    from restorer.run.onnx import create_session

    return create_session(path, "cpu").session


def _to_bgr(img: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 RGB(A) -> HxWx3 BGR float32."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxWxC image with C in 1, 3, 4, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1], dtype=np.float32)


def detection_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) the detector sees: short side up to LIMIT_SIDE, long side at most MAX_SIDE,
    both rounded to multiples of 32."""
    ratio = 1.0
    if min(height, width) < LIMIT_SIDE:
        ratio = LIMIT_SIDE / min(height, width)
    if max(height, width) * ratio > MAX_SIDE:
        ratio = MAX_SIDE / max(height, width)
    h = max(MULTIPLE, int(round(height * ratio / MULTIPLE)) * MULTIPLE)
    w = max(MULTIPLE, int(round(width * ratio / MULTIPLE)) * MULTIPLE)
    return h, w


def probability_map(img: np.ndarray, model_path: str | os.PathLike | None = None) -> np.ndarray:
    """The detector's text probability map at the detection size (h, w)."""
    bgr = _to_bgr(img)
    h, w = detection_size(*bgr.shape[:2])
    resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    batch = ((np.clip(resized, 0.0, 1.0) - 0.5) / 0.5).transpose(2, 0, 1)[None]
    session = _session(str(model_path or detector_path()))
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0][0, 0]


def _ordered(points: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def _box_score(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the quadrilateral (DB's "fast" score)."""
    h, w = prob.shape
    x0 = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    inside = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = (box - np.array([x0, y0], dtype=np.float32)).astype(np.int32)
    cv2.fillPoly(inside, [shifted], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], inside)[0])


def boxes_from_probability(
    prob: np.ndarray,
    image_shape: tuple[int, int],
    *,
    prob_threshold: float = PROB_THRESHOLD,
    box_threshold: float = BOX_THRESHOLD,
    unclip_ratio: float = UNCLIP_RATIO,
) -> list[np.ndarray]:
    """DB post-processing: rotated boxes (4x2 float32, image pixels) from a probability map."""
    map_h, map_w = prob.shape
    height, width = image_shape
    bitmap = cv2.dilate((prob > prob_threshold).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours[:MAX_CANDIDATES]:
        (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
        if min(rw, rh) < MIN_BOX_SIDE:
            continue
        box = cv2.boxPoints(((cx, cy), (rw, rh), angle))
        if _box_score(prob, box) < box_threshold:
            continue
        # "Unclip": DB grows the shrunk text kernel by area * ratio / perimeter. The rounded
        # offset of a rectangle has, as its minimum-area rectangle, the rectangle grown by
        # that distance on every side, so no polygon-clipping library is needed.
        grow = rw * rh * unclip_ratio / (2.0 * (rw + rh))
        rw, rh = rw + 2 * grow, rh + 2 * grow
        if min(rw, rh) < MIN_BOX_SIDE + 2:
            continue
        box = cv2.boxPoints(((cx, cy), (rw, rh), angle)).astype(np.float32)
        box[:, 0] = np.clip(box[:, 0] * (width / map_w), 0, width - 1)
        box[:, 1] = np.clip(box[:, 1] * (height / map_h), 0, height - 1)
        box = _ordered(box)
        if np.linalg.norm(box[0] - box[1]) <= 3 or np.linalg.norm(box[0] - box[3]) <= 3:
            continue
        boxes.append(box)
    # Reading order: top to bottom, then left to right.
    boxes.sort(key=lambda b: (round(float(b[0, 1]) / 10), float(b[0, 0])))
    return boxes


def detect_text(
    img: np.ndarray,
    *,
    model_path: str | os.PathLike | None = None,
    prob_threshold: float = PROB_THRESHOLD,
    box_threshold: float = BOX_THRESHOLD,
    unclip_ratio: float = UNCLIP_RATIO,
) -> list[np.ndarray]:
    """Text regions of an HxWxC float32 image in [0, 1] (RGB, gray or RGBA).

    Returns one 4x2 float32 array per text line: (x, y) pixel coordinates of its
    top-left, top-right, bottom-right and bottom-left corners (a rotated rectangle).
    """
    prob = probability_map(img, model_path)
    return boxes_from_probability(
        prob,
        img.shape[:2],
        prob_threshold=prob_threshold,
        box_threshold=box_threshold,
        unclip_ratio=unclip_ratio,
    )


def boxes_to_mask(boxes, shape, dilate: int = 0) -> np.ndarray:
    """The box mask GaRNet is trained with: every polygon filled (edges included), True = text.

    `boxes` are Nx2 arrays (or flat x1, y1, x2, y2, ... sequences) in pixel coordinates;
    `shape` is the image's (H, W[, C]). Points are rounded to whole pixels and filled with
    8-connected edges, as the official code does with its integer box files; `dilate` grows
    the mask by that many pixels (3x3 kernel, `dilate` iterations; the official default 0).
    """
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), dtype=np.uint8)
    polygons = []
    for box in boxes:
        points = np.asarray(box, dtype=np.float64).reshape(-1, 2)
        if len(points) < 3:
            raise ValueError(f"a text box needs at least 3 points, got {len(points)}")
        polygons.append(np.round(points).astype(np.int32))
    for polygon in polygons:
        cv2.fillPoly(mask, [polygon], 1)
    if dilate > 0:
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=int(dilate))
    return mask.astype(bool)
