"""Stages of the old-photo pipeline of "Bringing Old Photos Back to Life" (Microsoft), in
the order and at the resolutions of the official run.py (see the conformance PIPELINE.md):

1. `detect_scratches` (only for photos with scratches): gray, short side 256, UNet,
   sigmoid >= 0.4, mask back at the image size rounded to multiples of 16.
   `classical_scratch_mask` is a weight-free stand-in with the same output form; without
   the networks it and the built-in inpainting are the whole pipeline, kept out of faces.
2. `restore_global`: VAE_A encoder -> mapping (with the mask for scratches) -> VAE_B
   decoder, output min-max stretched as the official saving does.
3-5. faces: `face_template` / `align_face` (similarity transform from 5 landmarks),
   `enhance_face` (SPADE generator), `blend_face` (colour match, warp back, feathered paste).
   Finding faces and their landmarks is not part of the release (the official code uses
   dlib's HOG detector and 68-point predictor); callers supply the 5 points.

Images are numpy float32 H x W x C in [0, 1]. Networks are plain callables on NCHW float32
numpy arrays in the official ranges ([-1, 1] images, 64-channel latents), so an ONNX
Runtime session wrapper or a torch module wrapper fits. No torch import here.

Known small differences from the official code, all from resampling on floats instead of
PIL/skimage on uint8: bicubic resizes use OpenCV's kernel (PIL's differs slightly), the
gray conversion is not rounded to 8 bits, and the warp back uses OpenCV's bicubic where
skimage uses an order-3 spline.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from restorer.pipelines.faces import (  # noqa: F401  (landmarks: used by tests)
    FacesUnavailable,
    find_face_boxes,
    find_faces,
    landmarks_from_68,
    rgb,
)
from restorer.zoo.catalog import load_catalog

Net = Callable[..., np.ndarray]

SCRATCH_THRESHOLD = 0.4  # detection.py: sigmoid(logit) >= 0.4 is a scratch
DETECTOR_SHORT_SIDE = 256
HR_MASK_DILATION = 3  # test.py --HR: cv2.dilate, 3x3 ones, 3 iterations
FACE_TEMPLATE_512 = np.array(  # eye centres, nose tip, mouth corners on a 512 frame
    [[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]]
)
FACE_SCALE = 1.3  # target_face_scale of the official alignment


# ---- sizes and resampling ----


MIN_SIDE = 32  # the smallest side the pipeline's networks take; see run()


def round_to_multiple(value: float, multiple: int) -> int:
    """int(round(value / multiple) * multiple), with Python's half-to-even round, as run.py."""
    return int(round(value / multiple) * multiple)




def resize(img: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    out = cv2.resize(img, (width, height), interpolation=interpolation)
    return out[:, :, None] if out.ndim == 2 and img.ndim == 3 else out


def resize_nearest(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """PyTorch's 'nearest': source index floor(dst * in / out)."""
    rows = np.minimum(np.floor(np.arange(height) * (plane.shape[0] / height)).astype(int), plane.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(width) * (plane.shape[1] / width)).astype(int), plane.shape[1] - 1)
    return plane[rows][:, cols]


def to_multiple_of_16(img: np.ndarray) -> np.ndarray:
    """The scratch path's working image: RGB, each side rounded to a multiple of 16 (bicubic)."""
    img = rgb(img)
    h, w = img.shape[:2]
    return np.clip(resize(img, round_to_multiple(h, 16), round_to_multiple(w, 16), cv2.INTER_CUBIC), 0, 1)


def detector_size(height: int, width: int, short_side: int = DETECTOR_SHORT_SIDE) -> tuple[int, int]:
    """Short side to 256, long side scaled and rounded to a multiple of 16 (detection.py)."""
    if height < width:
        return round_to_multiple(short_side, 16), round_to_multiple(width / height * short_side, 16)
    return round_to_multiple(height / width * short_side, 16), round_to_multiple(short_side, 16)


def nchw(img: np.ndarray) -> np.ndarray:
    """H x W x C [0, 1] -> 1 x C x H x W in [-1, 1]."""
    return np.ascontiguousarray((img.transpose(2, 0, 1)[None] * 2 - 1).astype(np.float32))


def gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as PIL convert('L')."""
    img = rgb(img)
    return (img[:, :, 0] * 0.299 + img[:, :, 1] * 0.587 + img[:, :, 2] * 0.114).astype(np.float32)


# ---- step 1: scratches ----


def detect_scratches(
    img: np.ndarray, net: Net, threshold: float = SCRATCH_THRESHOLD, short_side: int = DETECTOR_SHORT_SIDE
) -> np.ndarray:
    """Scratch mask (bool H16 x W16, True = scratch) of `img` resized to multiples of 16.

    Order as detection.py: RGB -> sides rounded to multiples of 16 (bicubic) -> gray ->
    [-1, 1] -> bilinear to a 256 short side -> net (1 x 1 x h x w logits) -> sigmoid ->
    nearest back to the 16-multiple size -> >= threshold. No dilation here.
    Use `to_multiple_of_16(img)` for the matching image.
    """
    work = to_multiple_of_16(img)
    h16, w16 = work.shape[:2]
    luma = gray(work) * 2 - 1
    dh, dw = detector_size(h16, w16, short_side)
    small = cv2.resize(luma, (dw, dh), interpolation=cv2.INTER_LINEAR)  # half-pixel, no antialias
    logits = np.asarray(net(np.ascontiguousarray(small[None, None], dtype=np.float32)), dtype=np.float32)
    probability = 1 / (1 + np.exp(-logits[0, 0].astype(np.float64)))
    return resize_nearest(probability, h16, w16) >= threshold


# The weight-free stand-in. Its rule is to do no harm: a line is filled only when it is
# thin, long, stands out from both of its sides, and crosses a calm region; faces are never
# touched (see run()). It leaves some scratches rather than erase eyelids, lips or fabric.
SCRATCH_LOW = 0.06  # luma contrast (on [0, 1]) a scratch pixel has against both sides, at least
SCRATCH_HIGH = 0.12  # ... and a scratch's strongest pixels
SCRATCH_MIN_LENGTH = 0.1  # a scratch spans this share of the short side, at least (and 20 px)
CONSERVATIVE_MIN_LENGTH = 0.25  # without a face detector: long scratches only (eyelids, lips are shorter)
SCRATCH_WORK_SIDE = 1024  # larger photos are searched at this short side, then refined at full size
SCRATCH_CLUTTER = 0.1  # a line with more than this share of busy pixels around it is texture
FACE_MARGIN = 0.2  # a face box is grown by this share of its size on every side, then left alone


def _line_kernels(length: int, angles: int = 12) -> list[tuple[float, np.ndarray]]:
    """(angle, kernel): the mean along a centred segment of `length` px at each angle."""
    kernels = []
    c = length // 2
    for i in range(angles):
        angle = np.pi * i / angles
        kernel = np.zeros((length, length), np.float32)
        dx, dy = np.cos(angle) * c * 16, np.sin(angle) * c * 16  # 4 fractional bits
        cv2.line(kernel, (round(c * 16 - dx), round(c * 16 - dy)), (round(c * 16 + dx), round(c * 16 + dy)),
                 1.0, 1, cv2.LINE_AA, shift=4)
        kernels.append((angle, kernel / kernel.sum()))
    return kernels


def _shifted(plane: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """plane moved by (dx, dy) px (bilinear; edges repeated)."""
    move = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(plane, move, plane.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _odd(value: float) -> int:
    """The odd size of a kernel about `value` px wide (7 -> 7, 8 -> 9)."""
    return 2 * int(value // 2) + 1


def classical_scratch_mask(img: np.ndarray, min_length: float = SCRATCH_MIN_LENGTH) -> np.ndarray:
    """Weight-free scratch mask (bool, same size as img; True = scratch).

    On the gray image (photos with a short side over SCRATCH_WORK_SIDE are searched at that
    size and the mask refined at full size), for bright and dark lines separately:
    1. thin: the top-hat (black-hat) with a 7 px disc, i.e. contrast against the brighter
       (darker) side; kept only where the two sides differ by less than half of it, so the
       dark seam between two regions of different brightness is no scratch;
    2. line-like: the response averaged along a 15 px segment at 12 angles; the best angle
       counts, unless the same response runs parallel 4 px to either side (hatching, fabric);
    3. connected pieces, seeded by pixels of SCRATCH_HIGH contrast, are kept when they span
       `min_length` of the short side (20 px at least), are at most 4 px wide on average, and
       the band around them is calm: at most SCRATCH_CLUTTER of it stands out by half the
       piece's contrast (other long lines not counted: cracks branch).
    The mask is grown by one pixel to cover the scratch edges. Sizes are for a short side of
    up to 512 px and grow with it.
    """
    full = gray(img)
    height, width = full.shape
    scale = min(1.0, SCRATCH_WORK_SIDE / min(height, width))
    luma = full
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        luma = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
    h, w = luma.shape
    unit = max(1.0, min(h, w) / 512)

    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(7 * unit),) * 2)
    wider = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(7 * unit) + 2,) * 2)
    opened = cv2.morphologyEx(luma, cv2.MORPH_OPEN, disc)
    closed = cv2.morphologyEx(luma, cv2.MORPH_CLOSE, disc)
    bright, dark = luma - opened, closed - luma
    busy = np.maximum(bright, dark)  # any thin structure, for the texture test
    # the two sides of a bright line: opened ~ the brighter one, the erosion ~ the darker one
    bright = np.where(opened - cv2.erode(luma, wider) < 0.5 * bright, bright, 0)
    dark = np.where(cv2.dilate(luma, wider) - closed < 0.5 * dark, dark, 0)

    kernels = _line_kernels(_odd(15 * unit))
    offset = 4 * unit
    length = max(20.0, min_length * min(h, w))
    pieces = []  # per polarity: (response, labels, stats, labels of long seeded pieces)
    for response in (bright, dark):
        soft = cv2.blur(response, (3, 3))  # a 1 px line scores about a third of its contrast
        score = np.zeros_like(response)
        for angle, kernel in kernels:
            along = cv2.filter2D(soft, -1, kernel, borderType=cv2.BORDER_REFLECT)
            nx, ny = -np.sin(angle) * offset, np.cos(angle) * offset
            beside = np.maximum(_shifted(along, nx, ny), _shifted(along, -nx, -ny))
            score = np.maximum(score, np.where(beside < 0.5 * along, along, 0))
        score = np.where(response > SCRATCH_LOW / 2, score, 0)  # the line's own pixels only
        count, labels, stats, _ = cv2.connectedComponentsWithStats((score > SCRATCH_LOW / 3).astype(np.uint8),
                                                                   connectivity=8)
        seeded = np.zeros(count, bool)
        seeded[np.unique(labels[score > SCRATCH_HIGH / 3])] = True
        seeded[0] = False
        span = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
        pieces.append((response, labels, stats, np.nonzero(seeded & (span >= length))[0]))

    long_lines = np.zeros((h, w), np.uint8)
    for _, labels, _, keep in pieces:
        long_lines |= np.isin(labels, keep).astype(np.uint8)
    near = _odd(5 * unit)
    long_lines = cv2.dilate(long_lines, np.ones((near, near), np.uint8)).astype(bool)
    fragments = np.where(long_lines, 0, busy)
    band = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(15 * unit),) * 2)
    pad = band.shape[0]
    found = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    for polarity, (response, labels, stats, keep) in enumerate(pieces):
        for label in keep:
            x, y, bw, bh, area = stats[label]
            piece = (labels[y:y + bh, x:x + bw] == label).astype(np.uint8)
            contours, _ = cv2.findContours(piece, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            if 2 * area / max(sum(cv2.arcLength(c, True) for c in contours), 1) > 4 * unit:
                continue  # mean width = area / half the perimeter
            y0, y1, x0, x1 = max(0, y - pad), min(h, y + bh + pad), max(0, x - pad), min(w, x + bw + pad)
            piece = labels[y0:y1, x0:x1] == label
            around = (cv2.dilate(piece.astype(np.uint8), band) > 0) & ~(
                cv2.dilate(piece.astype(np.uint8), np.ones((near, near), np.uint8)) > 0)
            contrast = np.median(response[y0:y1, x0:x1][piece])
            if around.any() and (fragments[y0:y1, x0:x1][around] > contrast / 2).mean() > SCRATCH_CLUTTER:
                continue
            found[polarity][y0:y1, x0:x1] |= piece

    if scale == 1.0:
        return cv2.dilate((found[0] | found[1]).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    # Full size: the coarse mask, grown by a pixel, keeps the pixels that stand out from the
    # (smooth, upsampled) background in the same direction.
    def up(plane):
        return cv2.resize(plane.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)

    grown = [up(cv2.dilate(f.astype(np.uint8), np.ones((3, 3), np.uint8))) > 0 for f in found]
    mask = (grown[0] & (full - up(opened) > SCRATCH_LOW / 2)) | (grown[1] & (up(closed) - full > SCRATCH_LOW / 2))
    edge = 2 * max(1, round(1 / scale)) + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((edge, edge), np.uint8)).astype(bool)


def protected_faces(img: np.ndarray) -> tuple[np.ndarray | None, int, str]:
    """(mask of the pixels to leave alone, number of faces, how they were found): each face
    the detector finds, its box grown by FACE_MARGIN. The mask is None when no face
    detector is installed."""
    height, width = img.shape[:2]
    try:
        boxes, how = find_face_boxes(img)
    except FacesUnavailable:
        return None, 0, ""
    protect = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        mx, my = round((x1 - x0) * FACE_MARGIN), round((y1 - y0) * FACE_MARGIN)
        protect[max(0, y0 - my):y1 + my, max(0, x0 - mx):x1 + mx] = True
    return protect, len(boxes), how


# ---- step 2: global restoration ----


def restore_global(
    img: np.ndarray,
    mask: np.ndarray | None,
    vae_a_encode: Net,
    mapping: Net,
    vae_b_decode: Net,
    hr: bool = False,
) -> np.ndarray:
    """Global restoration (Global/test.py). Returns RGB H x W x 3 in [0, 1].

    Without a mask (quality path): sides rounded to multiples of 4 (bilinear), then
    encode -> mapping(latent) -> decode. With a mask (scratch path; img and mask at the
    same multiple-of-16 size, see `detect_scratches`): with `hr` the mask is dilated
    (3x3, 3 iterations) first; scratch pixels are painted white ("hole synthesis"), then
    encode -> mapping(latent, mask 1 x 1 x H x W in {0, 1}) -> decode.
    The decoder's tanh output is mapped to [0, 1] and min-max stretched over the whole image
    (torchvision save_image(normalize=True), as the official saving does).
    """
    img = rgb(img)
    if mask is None:
        h, w = img.shape[:2]
        img = np.clip(resize(img, round_to_multiple(h, 4), round_to_multiple(w, 4), cv2.INTER_LINEAR), 0, 1)
        latent = vae_a_encode(nchw(img))
        mapped = mapping(latent)
    else:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != img.shape[:2] or img.shape[0] % 16 or img.shape[1] % 16:
            raise ValueError(
                f"image {img.shape[:2]} and mask {mask.shape} must share one size, a multiple of 16 "
                "(use to_multiple_of_16 and detect_scratches)"
            )
        scratch = mask.astype(np.uint8)
        if hr:
            scratch = cv2.dilate(scratch, np.ones((3, 3), np.uint8), iterations=HR_MASK_DILATION)
        holes = scratch.astype(np.float32)[:, :, None]
        img = img * (1 - holes) + holes  # scratches become white
        latent = vae_a_encode(nchw(img))
        mapped = mapping(latent, np.ascontiguousarray(holes.transpose(2, 0, 1)[None]))
    out = (np.asarray(vae_b_decode(mapped), dtype=np.float32)[0].transpose(1, 2, 0) + 1) / 2
    lo, hi = float(out.min()), float(out.max())
    return ((out - lo) / max(hi - lo, 1e-5)).astype(np.float32)


# ---- steps 3-5: faces ----


def face_template(size: int) -> np.ndarray:
    """The 5 target points (x, y) of an aligned face of `size` px (run.py: 256, or 512 with --HR)."""
    unit = (FACE_TEMPLATE_512 / 256 - 1) * FACE_SCALE
    return (unit + 1) / 2 * size




def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, as skimage's SimilarityTransform.estimate): 3x3 matrix
    mapping src points onto dst points."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sv) @ sign) / s.var(0).sum()
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rotation
    matrix[:2, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def align_face(img: np.ndarray, landmarks5: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Crop one face to size x size. Returns (face, T) where T maps face pixels to image pixels.

    T = similarity(template -> landmarks); the face is sampled bilinearly through T with
    black outside the image (skimage warp(image, T, order=1)).
    """
    img = rgb(img)
    transform = similarity_transform(face_template(size), landmarks5)
    face = cv2.warpAffine(
        img,
        transform[:2],
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return face, transform


def enhance_face(face: np.ndarray, net: Net) -> np.ndarray:
    """Aligned face S x S x 3 in [0, 1] -> enhanced face, clamped to [0, 1] (test_face.py)."""
    out = np.asarray(net(nchw(rgb(face))), dtype=np.float32)[0].transpose(1, 2, 0)
    return np.clip((out + 1) / 2, 0, 1)


def match_colours(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel histogram matching on 8-bit values (256-bin CDF lookup), float in and out."""
    src = np.clip(source * 255 + 0.5, 0, 255).astype(np.uint8)
    ref = np.clip(reference * 255 + 0.5, 0, 255).astype(np.uint8)
    out = np.empty_like(src)
    for c in range(src.shape[2]):
        src_cdf = np.cumsum(np.bincount(src[:, :, c].ravel(), minlength=256)) / src[:, :, c].size
        ref_cdf = np.cumsum(np.bincount(ref[:, :, c].ravel(), minlength=256)) / ref[:, :, c].size
        lookup = np.searchsorted(ref_cdf, src_cdf, side="left").clip(0, 255).astype(np.uint8)
        out[:, :, c] = lookup[src[:, :, c]]
    return out.astype(np.float32) / 255


def blend_face(img: np.ndarray, enhanced: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Paste one enhanced face back (align_warp_back_multiple_dlib.py).

    The face's colours are matched to the plain aligned crop, it is warped back (bicubic),
    and blended with an alpha made from the warped face square: x255, eroded (9x9, 3
    iterations), Gaussian-blurred (25x25, sigma from OpenCV's default), /255.
    """
    img = rgb(img)
    size = enhanced.shape[0]
    h, w = img.shape[:2]
    aligned = cv2.warpAffine(img, transform[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    face = match_colours(enhanced, aligned)
    back = cv2.warpAffine(face, transform[:2], (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    square = np.ones((size, size), np.float32)
    region = cv2.warpAffine(square, transform[:2], (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.erode(region * 255, np.ones((9, 9), np.uint8), iterations=3)
    alpha = cv2.GaussianBlur(alpha, (25, 25), 0) / 255
    out = back * alpha[:, :, None] + img * (1 - alpha[:, :, None])
    return np.clip(out, 0, 1).astype(np.float32)


# ---- the whole pipeline, as a restore step ----

# With --scratches auto, the scratch path is taken when the detector marks at least this
# share of the photo (a clean photo gives a few isolated false positives, far below it).
AUTO_SCRATCH_FRACTION = 0.002
PARTS = {
    "detector": "oldphoto-scratch-detector",
    "vae_a": "oldphoto-vae-a-quality",
    "vae_b_quality": "oldphoto-vae-b-quality",
    "vae_b_scratch": "oldphoto-vae-b-scratch",
    "mapping_quality": "oldphoto-mapping-quality",
    "mapping_scratch": "oldphoto-mapping-scratch",
    "mapping_hr": "oldphoto-mapping-hr",
    "face_256": "oldphoto-face-256",
    "face_512": "oldphoto-face-512",
}


class _Parts:
    """The pipeline's networks as NCHW numpy callables, from the batch's runner cache: a
    part's (or its sub-graph's) ONNX export when `restorer-cli models export oldphoto` made
    one, else eager PyTorch on its weights. The stages feed [-1, 1] images and latents
    themselves, so the runners are raw (no value-range mapping)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.ran: dict[str, str] = {}  # backend -> provider, of every network that ran
        self.notes: list[str] = []

    def net(self, key: str, part: str | None = None) -> Net:
        spec = load_catalog().get(PARTS[key])
        runner = self.ctx.cache.network(spec, self.ctx.device, part=part, raw=True)
        self.ran[runner.info.backend] = runner.info.provider
        self.notes += [n for n in runner.info.notes if n not in self.notes]

        def call(x, mask=None):
            return runner(x) if mask is None else runner(x, mask=mask)

        call.provider = runner.info.provider
        return call

    def describe(self, report) -> None:
        """What ran, for the report: 'onnx', 'torch' or 'onnx+torch', and their providers."""
        report.runner = "+".join(sorted(self.ran))
        report.provider = "+".join(self.ran[b] for b in sorted(self.ran))
        report.notes += [n for n in self.notes if n not in report.notes]


def run(step, image, ctx, report):
    """The old-photo step of a restore.

    With the released networks installed (step.model == "oldphoto"): scratch detection ->
    global restoration (quality or scratch path, HR mode) -> faces found, aligned, enhanced
    and blended back. Without them ("builtin:inpaint"): the classical scratch detector and
    the built-in inpainting, saying so. The result has the input's size (the networks work
    on sides rounded to multiples of 16 or 4; the result is resized back).
    """
    import time

    opts = step.options
    scratches = opts.get("scratches", "auto")
    hr = bool(opts.get("hr", False))
    src = image.pixels
    height, width = src.shape[:2]
    img = rgb(src)

    def stage(name, backend, start, **more):
        report.stages.append({"stage": name, "backend": backend, "seconds": round(time.perf_counter() - start, 3), **more})

    if step.model != "oldphoto":
        filled, mask = _fallback(img, scratches, ctx, report, stage)
        # only the mask changes: every other pixel is the input's, bit for bit (gray ones too)
        return image.with_pixels(np.where(mask[:, :, None], _like_input(filled, src), src))

    # The networks need sides of at least MIN_SIDE (the scratch detector's, restorer.archs.ARCHS):
    # a smaller photo is padded up (edge pixels repeated) and the result cropped back.
    img = np.pad(img, ((0, max(0, MIN_SIDE - height)), (0, max(0, MIN_SIDE - width)), (0, 0)), mode="edge")
    padded_h, padded_w = img.shape[:2]
    parts = _Parts(ctx)
    mask = None
    work = img
    if scratches != "no":
        t = time.perf_counter()
        detector = parts.net("detector")
        found = detect_scratches(img, detector)
        stage("scratch-detection", PARTS["detector"], t, share=round(float(found.mean()), 5))
        ctx.stage_images["scratch-mask"] = found.astype(np.float32)[:, :, None]
        if scratches == "yes" or found.mean() >= AUTO_SCRATCH_FRACTION:
            mask, work = found, to_multiple_of_16(img)
    t = time.perf_counter()
    if mask is None:
        restored = restore_global(work, None, parts.net("vae_a", "encoder"), parts.net("mapping_quality"),
                                  parts.net("vae_b_quality", "decoder"))
        stage("global-restoration", "quality path: " + ", ".join(PARTS[k] for k in ("vae_a", "mapping_quality", "vae_b_quality")), t)
    else:
        mapping = "mapping_hr" if hr else "mapping_scratch"
        restored = restore_global(work, mask, parts.net("vae_a", "encoder"), parts.net(mapping),
                                  parts.net("vae_b_scratch", "decoder"), hr=hr)
        stage("global-restoration", "scratch path: " + ", ".join(PARTS[k] for k in ("vae_a", mapping, "vae_b_scratch")), t)
    ctx.stage_images["global"] = restored
    if opts.get("faces", True):
        original = resize(img, restored.shape[0], restored.shape[1], cv2.INTER_CUBIC)
        restored = _faces(restored, original, parts, hr, ctx, report, stage)
    parts.describe(report)
    restored = resize(restored, padded_h, padded_w, cv2.INTER_CUBIC)[:height, :width]
    return image.with_pixels(_like_input(restored, src))


def _fallback(img: np.ndarray, scratches: str, ctx, report, stage) -> tuple[np.ndarray, np.ndarray]:
    """Without the networks: the classical scratch detector and the built-in inpainting,
    never inside a face; without a face detector, long scratches only. Returns (the filled
    RGB image, the mask that was filled)."""
    import time

    report.runner, report.provider = "builtin", "numpy"
    report.notes.append("old-photo networks not installed: classical scratch detection and inpainting only "
                        "(restorer-cli models info oldphoto)")
    height, width = img.shape[:2]
    protect, min_length = None, SCRATCH_MIN_LENGTH
    if scratches != "no":
        t = time.perf_counter()
        protect, faces, how = protected_faces(img)
        if protect is None:
            min_length = CONSERVATIVE_MIN_LENGTH
            report.notes.append("no face detector installed: only long scratches are filled, to keep clear of "
                                "eyes and mouths (pip install 'restorer[faces]')")
        else:
            stage("face-detection", how + ": faces are left untouched", t, faces=faces)
    t = time.perf_counter()
    mask = classical_scratch_mask(img, min_length) if scratches != "no" else np.zeros((height, width), bool)
    if protect is not None:
        mask &= ~protect
    stage("scratch-detection", "classical (thin, long, high-contrast lines in calm regions)", t,
          share=round(float(mask.mean()), 5))
    ctx.stage_images["scratch-mask"] = mask.astype(np.float32)[:, :, None]
    t = time.perf_counter()
    out = img
    if mask.any():
        batch = np.ascontiguousarray(img.transpose(2, 0, 1)[None])
        filled = ctx.cache.builtin("builtin:inpaint")(batch, mask=mask.astype(np.float32)[None, None])
        out = np.clip(filled[0].transpose(1, 2, 0), 0, 1)
    stage("inpaint", "builtin:inpaint", t)
    return out, mask


def _faces(img: np.ndarray, original: np.ndarray, parts: _Parts, hr: bool, ctx, report, stage) -> np.ndarray:
    """Faces are found on the restored image, as the official code does; when none is found
    there, on the original at the same size (restoration can leave a face too soft for the
    HOG detector)."""
    import time


    t = time.perf_counter()
    try:
        faces, detector = find_faces(img)
        if not faces:
            faces, detector = find_faces(original)
            detector += " (on the original: none found on the restored image)"
    except FacesUnavailable as e:
        report.notes.append(f"face enhancement skipped: {e}")
        return img
    stage("face-detection", detector, t, faces=len(faces))
    size, key = (512, "face_512") if hr else (256, "face_256")
    for k, landmarks in enumerate(faces, 1):
        t = time.perf_counter()
        face, transform = align_face(img, landmarks, size)
        enhanced = enhance_face(face, parts.net(key))
        ctx.stage_images[f"face-{k:02d}"] = enhanced
        img = blend_face(img, enhanced, transform)
        stage(f"face-{k:02d}", PARTS[key], t)
    return img


def _like_input(out: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Back to the input's channel count (a gray photo stays gray)."""
    out = np.clip(out, 0, 1).astype(np.float32)
    if src.shape[2] == 1:
        return gray(out)[:, :, None]
    return out
