"""Scene-text removal: find the text, mask it, fill the mask, touch nothing else.

Stages:
1. text boxes: given, or found by restorer.pipelines.text_detect (a detector bundled in a package);
2. the box mask, drawn as GaRNet is trained with (filled quadrilaterals, 1 = text), grown
   by `dilate` pixels; a caller may pass its own mask instead;
3. the fill: GaRNet (or any network with its calling convention) runs at the image's own
   resolution on windows around each text region, padded to the network's multiple (the
   official script instead squashes the whole photo to 512 x 512, which blurs it and, for
   non-square photos, returns it transposed); without a network the built-in inpainting
   operator fills the mask;
4. the composite: the fill is copied in only where the mask is set, so every pixel outside
   it is bit-identical to the input.

A network here is any callable `net(image, mask=mask) -> output` on NCHW float32 arrays:
image N x 3 x H x W RGB in [0, 1], mask N x 1 x H x W with 1.0 on text, output N x 3 x H x W
in [0, 1]. That is the Runner convention: a TorchRunner or OnnxRunner built from the
catalog entry (input and output range [-1, 1], extra input "mask") is such a callable, and
so is the built-in inpainting operator (restorer.run.builtin.MaskInpainter), which
fills the mask when no network is given. Each window is run as a batch of one, the
setting GaRNet was trained and tested in.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import cv2
import numpy as np

from restorer.pipelines.text_detect import boxes_to_mask, detect_text
from restorer.zoo.catalog import load_catalog

DEFAULT_DILATE = 2  # pixels the box mask is grown by: catches anti-aliased stroke edges
PAD_MULTIPLE = 32  # GaRNet's total stride
MIN_CONTEXT = 32  # pixels of surroundings a window keeps around its text, at least

# net(image NCHW [0, 1], mask=N1HW {0, 1}) -> NCHW [0, 1]; the Runner convention.
Net = Callable[..., np.ndarray]


def default_inpaint() -> Net:
    """The built-in inpainting operator (Telea's fast marching, float32)."""
    from restorer.run.builtin import builtin_runner

    return builtin_runner("inpaint")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _window_for(x0: int, y0: int, x1: int, y1: int, width: int, height: int, multiple: int):
    """Grow [x0, x1) x [y0, y1) to sides that are multiples of `multiple`, kept inside the
    image where it is big enough (more real context instead of padding)."""

    def grow(lo: int, hi: int, size: int) -> tuple[int, int]:
        want = _round_up(hi - lo, multiple)
        if want >= size:
            return 0, size  # the whole axis; padding makes up the rest
        lo = max(0, lo - (want - (hi - lo)) // 2)
        lo = min(lo, size - want)
        return lo, lo + want

    wx0, wx1 = grow(x0, x1, width)
    wy0, wy1 = grow(y0, y1, height)
    return wx0, wy0, wx1, wy1


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def text_windows(mask: np.ndarray, multiple: int = PAD_MULTIPLE, min_context: int = MIN_CONTEXT):
    """Windows (x0, y0, x1, y1) that cover every masked pixel with context around it.

    One window per connected text region, grown by the region's thickness (at least
    `min_context`) on every side, then to multiples of `multiple`; windows that overlap
    are merged so that each masked pixel is filled exactly once.
    """
    height, width = mask.shape
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    windows = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        margin = max(min_context, min(w, h))
        windows.append(
            (max(0, x - margin), max(0, y - margin), min(width, x + w + margin), min(height, y + h + margin))
        )
    windows = [_window_for(*win, width, height, multiple) for win in windows]
    merged = True
    while merged:
        merged = False
        for i in range(len(windows)):
            for j in range(i + 1, len(windows)):
                if _overlap(windows[i], windows[j]):
                    a, b = windows[i], windows[j]
                    union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    windows[i] = _window_for(*union, width, height, multiple)
                    del windows[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(windows, key=lambda w: (w[1], w[0]))


def _pad_to(array: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Pad an NCHW array at the bottom/right to (height, width)."""
    pad_h, pad_w = height - array.shape[2], width - array.shape[3]
    if pad_h == 0 and pad_w == 0:
        return array
    widths = ((0, 0), (0, 0), (0, pad_h), (0, pad_w))
    if mode == "reflect" and (pad_h >= array.shape[2] or pad_w >= array.shape[3]):
        mode = "symmetric" if pad_h <= array.shape[2] and pad_w <= array.shape[3] else "edge"
    return np.pad(array, widths, mode=mode)


def _run_windows(rgb: np.ndarray, mask: np.ndarray, net: Net, windows, multiple: int) -> np.ndarray:
    """The network's fill at full resolution, window by window (input elsewhere)."""
    fill = rgb.copy()
    for x0, y0, x1, y1 in windows:
        crop = rgb[y0:y1, x0:x1].transpose(2, 0, 1)[None]
        crop_mask = mask[y0:y1, x0:x1].astype(np.float32)[None, None]
        h, w = crop.shape[2], crop.shape[3]
        padded_h, padded_w = _round_up(h, multiple), _round_up(w, multiple)
        image_in = np.ascontiguousarray(_pad_to(crop, padded_h, padded_w, "reflect"), dtype=np.float32)
        mask_in = np.ascontiguousarray(_pad_to(crop_mask, padded_h, padded_w, "constant"), dtype=np.float32)
        out = np.asarray(net(image_in, mask=mask_in), dtype=np.float32)
        if out.shape != image_in.shape:
            raise ValueError(f"text-removal network returned shape {out.shape} for input {image_in.shape}")
        fill[y0:y1, x0:x1] = np.clip(out[0, :, :h, :w].transpose(1, 2, 0), 0.0, 1.0)
    return fill


def remove_text(
    img: np.ndarray,
    *,
    net: Net | None = None,
    mask: np.ndarray | None = None,
    boxes=None,
    dilate: int = DEFAULT_DILATE,
    inpaint: Net | None = None,
    detector: Callable[[np.ndarray], list] = detect_text,
    pad_multiple: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Remove the text from an HxWxC float32 image in [0, 1] (C = 1, 3 or 4).

    The mask is `mask` (HxW, nonzero = text) if given, else drawn from `boxes` (4x2 point
    arrays in pixel coordinates), else from the boxes `detector` finds; it is then grown by
    `dilate` pixels. The fill comes from `net` when given, run on windows around the text,
    else from `inpaint` on the whole image (default: the built-in operator); both take and
    return NCHW arrays as described in the module doc.

    Returns (result, mask_used, stages): the result equals `img` bit for bit wherever
    mask_used is False; an alpha channel is carried over untouched. `stages` holds what
    each stage produced: "boxes" (list or None when a mask was given), "mask",
    "windows" ((x0, y0, x1, y1) the network ran on; empty for inpainting) and "fill"
    (the full fill before compositing, RGB).
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxWxC image with C in 1, 3, 4, got shape {img.shape}")
    img = img.astype(np.float32, copy=False)
    height, width, channels = img.shape
    rgb = np.repeat(img, 3, axis=2) if channels == 1 else img[:, :, :3]

    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape[:2] != (height, width):
            raise ValueError(f"mask shape {mask.shape} does not match the image's {(height, width)}")
        if mask.ndim == 3:
            mask = mask[:, :, 0]
        mask_used = mask != 0
        if dilate > 0:
            mask_used = cv2.dilate(mask_used.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(dilate))
            mask_used = mask_used.astype(bool)
        boxes = None
    else:
        if boxes is None:
            boxes = detector(img)
        boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 2) for b in boxes]
        mask_used = boxes_to_mask(boxes, (height, width), dilate=dilate)

    stages: dict[str, Any] = {"boxes": boxes, "mask": mask_used, "windows": [], "fill": rgb}
    result = img.copy()
    if not mask_used.any():
        return result, mask_used, stages

    if net is not None:
        # GaRNet needs multiples of 32 whatever a runner declares; a larger declared
        # multiple is honoured too.
        multiple = pad_multiple or math.lcm(PAD_MULTIPLE, net.needs.pad_multiple if hasattr(net, "needs") else 1)
        windows = text_windows(mask_used, multiple)
        fill = _run_windows(np.ascontiguousarray(rgb), mask_used, net, windows, multiple)
        stages["windows"] = windows
    else:
        inpaint = inpaint or default_inpaint()
        batch = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])
        filled = np.asarray(inpaint(batch, mask=mask_used.astype(np.float32)[None, None]), dtype=np.float32)
        if filled.shape != batch.shape:
            raise ValueError(f"inpainting returned shape {filled.shape} for {batch.shape}")
        fill = np.clip(filled[0].transpose(1, 2, 0), 0.0, 1.0)
    stages["fill"] = fill

    if channels == 1:
        result[mask_used, 0] = fill[mask_used].mean(axis=1)
    else:
        result[mask_used, :3] = fill[mask_used]
    return result, mask_used, stages


def run(step, image, ctx, report):
    """The remove-text step of a restore: detect (or read --mask), fill, composite.

    step.model is the fill network's catalog id ("garnet") or "builtin:inpaint" when no
    network is installed. ctx.stage_images receives the mask actually used, for
    --save-intermediates.
    """
    import time

    from restorer.io import imaging

    opts = step.options
    pixels = image.pixels
    height, width = pixels.shape[:2]
    mask = None
    boxes = None
    t0 = time.perf_counter()
    if opts.get("mask"):
        user = imaging.load(opts["mask"])
        if (user.height, user.width) != (height, width):
            raise ValueError(f"mask '{opts['mask']}' is {user.width}x{user.height}, the image is {width}x{height}")
        mask = user.pixels.mean(axis=2) > 0.5  # white = remove
        report.stages.append({"stage": "mask", "backend": f"user mask {opts['mask']}",
                              "seconds": round(time.perf_counter() - t0, 3)})
    elif opts.get("boxes"):
        boxes = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32) for x0, y0, x1, y1 in opts["boxes"]]
        report.stages.append({"stage": "boxes", "backend": "given with --boxes", "boxes": len(boxes), "seconds": 0.0})
    else:
        boxes = detect_text(pixels)
        report.stages.append({"stage": "detect", "backend": "text-detector-dbnet (bundled, ONNX Runtime)",
                              "boxes": len(boxes), "seconds": round(time.perf_counter() - t0, 3)})
    net = None
    if step.model != "builtin:inpaint":

        net = ctx.cache.network(load_catalog().get(step.model), ctx.device)
        report.ran(net)
    else:
        report.runner, report.provider = "builtin", "numpy"
    t1 = time.perf_counter()
    result, mask_used, _ = remove_text(pixels, net=net, mask=mask, boxes=boxes,
                                       dilate=int(opts.get("dilate", DEFAULT_DILATE)))
    report.stages.append({"stage": "fill", "backend": step.model, "pixels": int(mask_used.sum()),
                          "seconds": round(time.perf_counter() - t1, 3)})
    ctx.stage_images["text-mask"] = mask_used.astype(np.float32)[:, :, None]
    return image.with_pixels(result)
