"""Pixels for the screen: float images to 8-bit QImages, and the pyramids the view paints.

A 24-megapixel result painted at 10% zoom would make Qt downscale 24 million pixels on
every repaint; a pyramid of halvings built once lets each repaint scale the level nearest
the zoom instead, so panning and zooming stay smooth. QImage (not QPixmap) is used so
pyramids can be built in worker threads.
"""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtGui import QImage

MIN_LEVEL_SIDE = 256  # stop halving below this


def to_display(pixels: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """float HxWxC in [0, 1] (C = 1 or 3) -> uint8 HxWx3, or HxWx4 with alpha."""
    rgb = pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)
    out = np.empty(rgb.shape[:2] + (3 if alpha is None else 4,), np.uint8)
    out[..., :3] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if alpha is not None:
        out[..., 3] = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def to_qimage(arr: np.ndarray) -> QImage:
    """uint8 HxWx3 or HxWx4 -> a QImage that owns its memory."""
    arr = np.ascontiguousarray(arr)
    h, w, c = arr.shape
    fmt = QImage.Format.Format_RGB888 if c == 3 else QImage.Format.Format_RGBA8888
    return QImage(arr.data, w, h, arr.strides[0], fmt).copy()


def from_qimage(image: QImage) -> np.ndarray:
    """A QImage -> uint8 HxWx3 (for tests and screenshots)."""
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h, stride = image.width(), image.height(), image.bytesPerLine()
    buf = np.frombuffer(image.constBits(), np.uint8, count=stride * h).reshape(h, stride)
    return buf[:, : w * 3].reshape(h, w, 3).copy()


class Pyramid:
    """Level 0 is the full image; each further level halves both sides."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays  # kept: the difference view is computed from them
        self.levels = [to_qimage(a) for a in arrays]

    @classmethod
    def build(cls, arr: np.ndarray) -> "Pyramid":
        arrays = [np.ascontiguousarray(arr)]
        while min(arrays[-1].shape[:2]) >= 2 * MIN_LEVEL_SIDE:
            prev = arrays[-1]
            h, w = prev.shape[:2]
            arrays.append(cv2.resize(prev, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        return cls(arrays)

    @property
    def width(self) -> int:
        return self.arrays[0].shape[1]

    @property
    def height(self) -> int:
        return self.arrays[0].shape[0]

    def level_for(self, screen_per_pixel: float) -> QImage:
        """The smallest level that still has at least one pixel per screen pixel."""
        chosen = self.levels[0]
        for level in self.levels:
            if level.width() >= self.width * screen_per_pixel:
                chosen = level
            else:
                break
        return chosen


def difference(before: np.ndarray, after: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|after - before| amplified, before resized to after's size (super-resolution)."""
    h, w = after.shape[:2]
    if before.shape[:2] != (h, w):
        before = cv2.resize(before, (w, h), interpolation=cv2.INTER_CUBIC)
    b, a = before[..., :3], after[..., :3]
    diff = cv2.absdiff(a, b)
    return np.clip(diff.astype(np.float32) * gain, 0, 255).astype(np.uint8)
