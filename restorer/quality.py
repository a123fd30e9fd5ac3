"""Full-reference image quality: PSNR and SSIM computed the way restoration papers compute them.

The conventions are BasicSR's (basicsr/metrics/psnr_ssim.py, calculate_psnr / calculate_ssim),
which most published tables follow, and the results equal its to the last digits
(tests/test_quality.py, on fixtures computed with BasicSR's own code):

- images on the 8-bit scale [0, 255] as float64 (a 16-bit file is rounded to 8 bits first:
  published results are 8-bit PNGs);
- `crop_border = N` drops N pixels on every side before measuring (N = the scale is usual
  for super-resolution);
- `y_channel`: only the luma of BT.601 YCbCr, Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
  on [0, 255] (MATLAB's rgb2ycbcr); a gray image is its own luma;
- SSIM: Wang et al.'s original MATLAB SSIM, an 11x11 Gaussian window (sigma 1.5),
  C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, 'valid' filtering (no padded border), per
  channel and averaged over channels.

Files are paired by name stem (restored/photo.png with reference/photo.jpg).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from restorer.io import imaging

Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)  # BT.601 on [0, 1] inputs, giving Y on [16, 235]
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


class QualityError(Exception):
    """A pair that cannot be compared; the message is one line naming the file(s)."""


# ---------------------------------------------------------------- the metrics


def to_y(image: np.ndarray) -> np.ndarray:
    """HxWx3 RGB on [0, 255] -> HxWx1 BT.601 luma on [0, 255] (a gray HxWx1 image is returned
    as it is).

    The arithmetic follows BasicSR's to_y_channel step by step, float32 where it uses float32
    (x / 255, then Y / 255 * 255), so Y-channel numbers equal BasicSR's exactly; plain float64
    differs by up to 5e-7 dB on the test fixtures, and more on cleaner images."""
    x = image.astype(np.float32) / np.float32(255.0)
    if x.shape[2] == 3:
        y = np.dot(x, Y_WEIGHTS_RGB) + 16.0  # float64 sums of float32 inputs, as np.dot does there
        x = (y / 255.0).astype(np.float32)[..., None]
    return (x * np.float32(255.0)).astype(np.float64)


def _prepare(restored: np.ndarray, reference: np.ndarray, crop_border: int, y_channel: bool):
    """Both images as float64 HxWxC on [0, 255], border cropped, luma only if asked."""
    a, b = (np.asarray(i) for i in (restored, reference))
    a, b = (i[..., None] if i.ndim == 2 else i for i in (a, b))
    if a.shape != b.shape:
        raise QualityError(f"the images differ in shape: {_shape(a)} restored, {_shape(b)} reference")
    if crop_border < 0:
        raise QualityError(f"crop border {crop_border} is negative")
    if 2 * crop_border >= min(a.shape[:2]):
        raise QualityError(f"crop border {crop_border} leaves nothing of a {_shape(a)} image")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return to_y(a), to_y(b)
    return a.astype(np.float64), b.astype(np.float64)


def _shape(image: np.ndarray) -> str:
    height, width, channels = image.shape
    return f"{width}x{height} " + {1: "gray", 3: "colour"}.get(channels, f"{channels}-channel")


def psnr(restored: np.ndarray, reference: np.ndarray, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB of two HxW[xC] images on [0, 255] (RGB order when
    y_channel); inf when they are identical."""
    a, b = _prepare(restored, reference, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_window() -> np.ndarray:
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA)
    return np.outer(kernel, kernel.T)


def _ssim_channel(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> float:
    """Mean SSIM of two float64 HxW planes; only positions where the whole window fits
    count (MATLAB's filter2(..., 'valid')), so cv2's padded border is cut off."""
    r = SSIM_WINDOW // 2

    def blur(plane: np.ndarray) -> np.ndarray:
        return cv2.filter2D(plane, -1, window)[r:-r, r:-r]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return float(ssim_map.mean())


def ssim(restored: np.ndarray, reference: np.ndarray, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (Wang et al. 2004, the MATLAB original) of two HxW[xC] images on
    [0, 255], per channel and averaged."""
    a, b = _prepare(restored, reference, crop_border, y_channel)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise QualityError(f"{_shape(a)} after cropping is smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")
    window = _gaussian_window()
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], window) for c in range(a.shape[2])]))


# ---------------------------------------------------------------- files


def read(path: str | os.PathLike) -> np.ndarray:
    """An image file as float64 HxWxC on [0, 255] in RGB order (C = 1 for gray), alpha
    dropped, EXIF orientation applied as restorer applies it; 16-bit files rounded to 8 bits."""
    try:
        image = imaging.load(path)
    except imaging.ImageReadError as e:
        raise QualityError(str(e)) from None
    return np.rint(image.pixels.astype(np.float64) * 255.0)


def _images_in(folder: Path) -> dict[str, Path]:
    """The image files directly in `folder`, by name stem."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and imaging.format_of(path) and not path.name.startswith("."):
            if path.stem in by_stem:
                raise QualityError(f"'{by_stem[path.stem]}' and '{path}' have the same name stem: "
                                   "images are paired by stem, keep one of them")
            by_stem[path.stem] = path
    return by_stem


@dataclass
class Pairs:
    pairs: list[tuple[str, Path, Path]]  # (stem, restored file, reference file), by stem
    no_reference: list[Path] = field(default_factory=list)  # restored files with no reference
    no_restored: list[Path] = field(default_factory=list)  # references nothing was restored for


def pair_files(restored: str | os.PathLike, reference: str | os.PathLike) -> Pairs:
    """Two files, or two folders whose images are paired by name stem."""
    restored, reference = Path(restored), Path(reference)
    for path in (restored, reference):
        if not path.exists():
            raise QualityError(f"cannot read '{path}': no such file or folder")
    if restored.is_file() and reference.is_file():
        return Pairs([(restored.stem, restored, reference)])
    if restored.is_dir() != reference.is_dir():
        folder, other = (restored, reference) if restored.is_dir() else (reference, restored)
        raise QualityError(f"'{folder}' is a folder but '{other}' is a file: give two folders or two files")
    ours, theirs = _images_in(restored), _images_in(reference)
    found = Pairs([(stem, ours[stem], theirs[stem]) for stem in sorted(ours) if stem in theirs],
                  no_reference=[ours[s] for s in sorted(ours) if s not in theirs],
                  no_restored=[theirs[s] for s in sorted(theirs) if s not in ours])
    if not found.pairs:
        raise QualityError(f"no image in '{restored}' has a namesake in '{reference}' "
                           "(images are paired by name without the extension)")
    return found


@dataclass
class Score:
    name: str
    restored: Path
    reference: Path
    psnr: float
    ssim: float


def evaluate_pair(name: str, restored: Path, reference: Path, *, crop_border: int = 0,
                  y_channel: bool = False) -> Score:
    a, b = read(restored), read(reference)
    try:
        return Score(name, restored, reference, psnr(a, b, crop_border=crop_border, y_channel=y_channel),
                     ssim(a, b, crop_border=crop_border, y_channel=y_channel))
    except QualityError as e:
        raise QualityError(f"'{restored}' vs '{reference}': {e}") from None


def mean(scores: list[Score]) -> dict:
    """Mean PSNR and SSIM over images (as papers average a test set); PSNR is inf when any
    pair is identical."""
    return {"psnr": float(np.mean([s.psnr for s in scores])), "ssim": float(np.mean([s.ssim for s in scores])),
            "count": len(scores)}
