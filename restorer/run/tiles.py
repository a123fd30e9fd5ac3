"""The tiling engine: any image size through a network that sees one tile at a time.

Each tile is cut with `overlap` pixels of context on every side that touches another tile.
Its output is weighted by a window that is zero over that context and then rises smoothly
(a raised cosine over `ramp` pixels) to one; the weighted outputs are summed into one
accumulator and divided by the summed weights. So:
- a network whose receptive field fits in the overlap gives exactly the whole-image result
  (only pixels that saw their full context carry weight);
- a network that sees further (attention windows, long scans, global pooling) has its
  tile-to-tile differences feathered over the ramp instead of cut at a seam.

Memory grows with the output (accumulator + weights), not with the number of tiles. Tiles
are processed row by row into a strip buffer; an out-of-memory error drops the strip, halves
the tile size and resumes from that row.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Protocol

import numpy as np

from restorer.run.runner import OutOfMemory, Runner

MIN_TILE = 32
MAX_AUTO_TILE = 1024
DEFAULT_OVERLAP = 16


class Cancelled(Exception):
    """The user cancelled; nothing was written."""


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


ProgressFn = Callable[[int, int], None]  # (tiles done, tiles total)


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def axis_starts(length: int, tile: int, overlap: int, ramp: int) -> list[int]:
    """Start positions along one axis: neighbours share 2*overlap + ramp pixels."""
    if length <= tile:
        return [0]
    step = max(1, tile - 2 * overlap - ramp)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def plan_rows(height: int, width: int, tile: int, overlap: int, ramp: int, y_from: int = 0) -> list[list[Tile]]:
    """Rows of tiles covering rows [y_from, height) and the full width."""
    ys = [y_from + s for s in axis_starts(height - y_from, tile, overlap, ramp)]
    xs = axis_starts(width, tile, overlap, ramp)
    return [[Tile(y, min(y + tile, height), x, min(x + tile, width)) for x in xs] for y in ys]


def edge_window(length: int, lo_inner: bool, hi_inner: bool, margin: int, ramp: int) -> np.ndarray:
    """1-D weights: zero over `margin` at inner edges, raised-cosine ramp, then one."""
    w = np.ones(length, dtype=np.float64)
    pos = np.arange(length, dtype=np.float64)
    rise = np.clip((pos - margin + 0.5) / max(ramp, 1), 0.0, 1.0)
    rise = 0.5 - 0.5 * np.cos(np.pi * rise)
    if lo_inner:
        w *= rise
    if hi_inner:
        w *= rise[::-1]
    return w


@lru_cache(maxsize=32)
def tile_window(height: int, width: int, inner: tuple[bool, bool, bool, bool], margin: int, ramp: int) -> np.ndarray:
    """The 2-D blend weights of a tile; `inner` says which of its top, bottom, left, right
    edges touch another tile. Most tiles of an image share a handful of these: cached."""
    wy = edge_window(height, inner[0], inner[1], margin, ramp)
    wx = edge_window(width, inner[2], inner[3], margin, ramp)
    win = (wy[:, None] * wx[None, :]).astype(np.float32)
    win.flags.writeable = False
    return win


def padding_for(length: int, multiple: int, min_side: int = 1) -> int:
    """How much to add to a side so it is a multiple of `multiple` and at least `min_side`."""
    multiple = max(1, multiple)
    target = max(length, min_side)
    return -(-target // multiple) * multiple - length


def _pad_mode(h: int, w: int) -> str:
    return "reflect" if min(h, w) > 1 else "edge"  # a 1-pixel side has nothing to reflect


def reflect_pad_to(batch: np.ndarray, multiple: int, min_side: int = 1) -> tuple[np.ndarray, int, int]:
    """Reflect-pad an NCHW batch at the bottom/right so H and W are multiples of `multiple`
    and at least `min_side` (a crop smaller than what the network accepts is padded up)."""
    h, w = batch.shape[2:]
    ph, pw = padding_for(h, multiple, min_side), padding_for(w, multiple, min_side)
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=_pad_mode(h, w))
    return batch, h, w


def run_runner(runner: Runner, patch: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """One HxWxC patch through a runner: pad to its multiple, run, crop back."""
    needs = runner.needs
    batch = np.ascontiguousarray(patch.transpose(2, 0, 1)[None], dtype=np.float32)
    padded, h, w = reflect_pad_to(batch, needs.pad_multiple, needs.min_side)
    extra_padded = {}
    for name, value in (extra or {}).items():
        if value.ndim == 3 and value.shape[:2] == patch.shape[:2]:  # a per-pixel input (mask)
            value = reflect_pad_to(np.ascontiguousarray(value.transpose(2, 0, 1)[None], dtype=np.float32),
                                   needs.pad_multiple, needs.min_side)[0]
        extra_padded[name] = value
    out = runner(padded, **extra_padded)
    s = needs.scale
    expected = (padded.shape[2] * s, padded.shape[3] * s)
    if out.shape[2:] != expected:
        raise RuntimeError(
            f"{runner.info.model} returned {out.shape[2]}x{out.shape[3]} for a "
            f"{padded.shape[2]}x{padded.shape[3]} input (expected x{s})"
        )
    return out[0, :, : h * s, : w * s].transpose(1, 2, 0)


def free_memory_bytes(provider: str) -> int:
    """Free memory where the runner computes: VRAM under CUDA, RAM otherwise."""
    if provider.startswith("CUDA") or provider == "torch:cuda":
        free = _free_vram()
        if free:
            return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _free_vram() -> int | None:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5,
        ).stdout.split()
        return int(out[0]) * (1 << 20) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def auto_tile(runner: Runner, free_bytes: int | None = None) -> int:
    """The largest tile (a multiple of the runner's pad multiple) that fits in half the free memory."""
    needs = runner.needs
    if needs.fixed_tile or needs.preferred_tile:
        return needs.fixed_tile or needs.preferred_tile
    free = free_bytes if free_bytes is not None else free_memory_bytes(runner.info.provider)
    side = int(math.sqrt(max(free // 2, 1) / needs.bytes_per_pixel))
    multiple = max(1, needs.pad_multiple)
    side = max(MIN_TILE, min(MAX_AUTO_TILE, side))
    return max(multiple, side - side % multiple)


def run_tiled(
    pixels: np.ndarray,
    runner: Runner,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    min_tile: int = MIN_TILE,
    on_retry: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Run `runner` over an HxWxC float32 image, tile by tile, seamlessly.

    `extra` holds extra network inputs: arrays shaped like the image (HxWxK, e.g. a mask)
    are cut into tiles with it; anything else (a text embedding) is passed whole.
    """
    needs = runner.needs
    if needs.whole_image:
        _check_cancel(cancel)
        out = run_runner(runner, pixels, extra)
        if progress:
            progress(1, 1)
        return out
    # Pad the whole image to the runner's multiple (and up to its smallest input) first, as
    # the official test procedures do, so border tiles see the same reflected border as a
    # whole-image run; crop at the end.
    multiple = max(1, needs.fixed_tile or needs.pad_multiple)
    orig_h, orig_w, _ = pixels.shape
    pixels = _pad_image(pixels, multiple, needs.min_side)
    extra = {k: _pad_image(v, multiple, needs.min_side) if _is_per_pixel(v, (orig_h, orig_w)) else v
             for k, v in (extra or {}).items()}
    h, w, _ = pixels.shape
    s = needs.scale
    overlap = needs.overlap if overlap is None else overlap
    # The sizes tiles must have (e.g. CGNet: multiples of 16, else its own zero padding lands
    # inside the image; at least 64 px), from the runner's declared needs.
    tile_multiple = math.lcm(multiple, max(1, needs.tile_multiple))
    min_tile = max(min_tile, needs.min_side)
    tile = needs.fixed_tile or tile or auto_tile(runner)
    tile = max(tile, min_tile, 4 * overlap + 1) if max(h, w) > tile else tile
    tile = max(multiple, tile - tile % multiple)
    if tile_multiple > multiple:
        tile = -(-tile // tile_multiple) * tile_multiple  # up: never below the minimums
    ramp = max(overlap, 1)

    out_c = None
    acc = weights = None
    y_from = 0
    done = 0
    while True:
        rows = plan_rows(h, w, tile, overlap, ramp, y_from)
        total = done + sum(len(r) for r in rows)
        try:
            for row in rows:
                done_before_row = done
                strip, strip_w, strip_y0 = None, None, row[0].y0
                for t in row:
                    _check_cancel(cancel)
                    patch_extra = _cut_extra(extra, t, pixels.shape[:2])
                    out = run_runner(runner, pixels[t.y0 : t.y1, t.x0 : t.x1], patch_extra)
                    if out_c is None:
                        out_c = out.shape[2]
                        acc = np.zeros((h * s, w * s, out_c), np.float32)
                        weights = np.zeros((h * s, w * s), np.float32)
                    if strip is None:
                        strip_h = (row[0].y1 - strip_y0) * s
                        strip = np.zeros((strip_h, w * s, out_c), np.float32)
                        strip_w = np.zeros((strip_h, w * s), np.float32)
                    win = tile_window((t.y1 - t.y0) * s, (t.x1 - t.x0) * s,
                                      (t.y0 > 0, t.y1 < h, t.x0 > 0, t.x1 < w), overlap * s, ramp * s)
                    ys = slice((t.y0 - strip_y0) * s, (t.y1 - strip_y0) * s)
                    xs = slice(t.x0 * s, t.x1 * s)
                    out = np.ascontiguousarray(out)  # the runner's CHW result, as HWC, for fast in-place math
                    out *= win[..., None]
                    strip[ys, xs] += out
                    strip_w[ys, xs] += win
                    done += 1
                    if progress:
                        progress(done, total)
                acc[strip_y0 * s : strip_y0 * s + strip.shape[0]] += strip
                weights[strip_y0 * s : strip_y0 * s + strip.shape[0]] += strip_w
            break
        except OutOfMemory as e:
            # Drop the unfinished strip, halve the tile and redo from this row on.
            y_from, done = row[0].y0, done_before_row
            half = tile // 2 - (tile // 2) % tile_multiple
            if half < max(min_tile, 4 * overlap + 1, tile_multiple):
                raise OutOfMemory(
                    f"out of memory even at a {tile}px tile ({e}); try --device cpu or a smaller --tile"
                ) from e
            tile = half
            if on_retry:
                on_retry(f"out of memory; retrying from row {y_from} with {tile}px tiles")
    np.maximum(weights, 1e-12, out=weights)
    np.divide(acc, weights[..., None], out=acc)  # in place: the output is the largest array here
    return acc[: orig_h * s, : orig_w * s]


def _is_per_pixel(value: np.ndarray, shape: tuple[int, int]) -> bool:
    return value.ndim == 3 and value.shape[:2] == shape


def _pad_image(img: np.ndarray, multiple: int, min_side: int = 1) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = padding_for(h, multiple, min_side), padding_for(w, multiple, min_side)
    if not (ph or pw):
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=_pad_mode(h, w))


def _cut_extra(extra: dict[str, np.ndarray] | None, t: Tile, shape: tuple[int, int]) -> dict[str, np.ndarray] | None:
    if not extra:
        return extra
    out = {}
    for name, value in extra.items():
        if _is_per_pixel(value, shape):
            out[name] = value[t.y0 : t.y1, t.x0 : t.x1]
        else:
            out[name] = value
    return out


def _check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")
