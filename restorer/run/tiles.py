"""The tiling engine: any image size through a network that sees one tile at a time.

Each tile is cut with `overlap` pixels of context on every side that touches another tile.
Its output is weighted by a window that is zero over that context and then rises smoothly
(a raised cosine over `ramp` pixels) to one; the weighted outputs are summed into one
accumulator and divided by the summed weights. So:
- a network whose receptive field fits in the overlap gives exactly the whole-image result
  (only pixels that saw their full context carry weight);
- a network that sees further (attention windows, long scans, global pooling) has its
  tile-to-tile differences feathered over the ramp instead of cut at a seam.

Memory grows with the output (the result plus one row of tiles), not with the number of
tiles. Tiles are processed row by row into a strip buffer; an out-of-memory error drops the
strip, halves the tile size and resumes from that row.

The network runs on the calling thread, one tile at a time; one worker thread cuts the next
tile and blends the previous one meanwhile (see `run_tiled`), into buffers allocated once
per call. The result is bit for bit that of the plain sequential loop
(tests/test_tiles_overlap.py keeps that loop as its reference).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Protocol

import numpy as np

from restorer.run.runner import NetworkRunner, OutOfMemory, Runner

try:
    import cv2 as _cv2  # a dependency of restorer; only its fast channel interleaving is used here
except ImportError:  # pragma: no cover
    _cv2 = None

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


def fit_tile(length: int, tile: int, overlap: int, ramp: int, multiple: int = 1) -> int:
    """The smallest tile side (a multiple of `multiple`, at most `tile`) that covers `length`
    with as many tiles as `tile` does. Tiles of one size cover an axis n * tile pixels, so
    the last one overhangs and recomputes what its neighbour did: 4000 px at 512-px tiles
    is 9 tiles, and 9 of 466 px cover it as well as 9 of 512."""
    if length <= tile:
        return tile
    n = len(axis_starts(length, tile, overlap, ramp))
    fitted = -(-(length + (n - 1) * (2 * overlap + ramp)) // n)
    return min(tile, -(-fitted // multiple) * multiple)


def tile_sides(height: int, width: int, tile: int, overlap: int, ramp: int, multiple: int, floor: int,
               fit: bool) -> tuple[int, int]:
    """The tiles' height and width: each fitted to its axis (never below `floor`), unless
    `fit` is false (a network whose output depends on the whole tile is most faithful with
    the largest tile; a fixed-size export takes one size)."""
    if not fit:
        return tile, tile
    return tuple(max(min(floor, tile), fit_tile(n, tile, overlap, ramp, multiple)) for n in (height, width))


def plan_rows(height: int, width: int, tile: int | tuple[int, int], overlap: int, ramp: int,
              y_from: int = 0) -> list[list[Tile]]:
    """Rows of tiles covering rows [y_from, height) and the full width; `tile` is a side, or
    (tile height, tile width)."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    ys = [y_from + s for s in axis_starts(height - y_from, th, overlap, ramp)]
    xs = axis_starts(width, tw, overlap, ramp)
    return [[Tile(y, min(y + th, height), x, min(x + tw, width)) for x in xs] for y in ys]


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


@lru_cache(maxsize=64)
def _unit_span(length: int, lo_inner: bool, hi_inner: bool, margin: int, ramp: int) -> tuple[int, int]:
    """The span [a, b) where `edge_window` is exactly 1 (a == b if it never is). Where both of a
    tile's spans are 1, so is its `tile_window` (1.0 * 1.0, exactly)."""
    ones = np.flatnonzero(edge_window(length, lo_inner, hi_inner, margin, ramp) == 1)
    return (int(ones[0]), int(ones[-1]) + 1) if len(ones) else (0, 0)


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
    batch, extra_padded = _network_input(runner.needs, patch, extra)
    out = runner(batch, **extra_padded)
    _check_output(runner, out, batch)
    s = runner.needs.scale
    h, w = patch.shape[:2]
    return out[0, :, : h * s, : w * s].transpose(1, 2, 0)


def _network_input(needs, patch: np.ndarray, extra: dict[str, np.ndarray] | None,
                   buffer: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The NCHW float32 batch of one HxWxC patch, reflect-padded to the runner's multiple, and
    its extra inputs (per-pixel ones cut, transposed and padded alike). With `buffer` (a flat
    float32 array at least C*H*W long) the batch is written there instead of a new array."""
    h, w, c = patch.shape
    if buffer is None:
        batch = np.ascontiguousarray(patch.transpose(2, 0, 1)[None], dtype=np.float32)
    else:
        batch = buffer[: c * h * w].reshape(1, c, h, w)
        np.copyto(batch[0], patch.transpose(2, 0, 1), casting="unsafe")
    padded = reflect_pad_to(batch, needs.pad_multiple, needs.min_side)[0]
    extra_padded = {}
    for name, value in (extra or {}).items():
        if value.ndim == 3 and value.shape[:2] == patch.shape[:2]:  # a per-pixel input (mask)
            value = reflect_pad_to(np.ascontiguousarray(value.transpose(2, 0, 1)[None], dtype=np.float32),
                                   needs.pad_multiple, needs.min_side)[0]
        extra_padded[name] = value
    return padded, extra_padded


def _check_output(runner: Runner, out: np.ndarray, padded: np.ndarray) -> None:
    s = runner.needs.scale
    expected = (padded.shape[2] * s, padded.shape[3] * s)
    if out.shape[2:] != expected:
        raise RuntimeError(
            f"{runner.info.model} returned {out.shape[2]}x{out.shape[3]} for a "
            f"{padded.shape[2]}x{padded.shape[3]} input (expected x{s})"
        )


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
    on_plan: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run `runner` over an HxWxC float32 image, tile by tile, seamlessly.

    `extra` holds extra network inputs: arrays shaped like the image (HxWxK, e.g. a mask)
    are cut into tiles with it; anything else (a text embedding) is passed whole.
    `on_plan(total)` is told how many tiles there will be before the first one runs (a
    runner that reports progress within a tile needs it), and again after a retry.
    """
    needs = runner.needs
    if needs.whole_image:
        _check_cancel(cancel)
        if on_plan:
            on_plan(1)
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
    floor = max(min_tile, 4 * overlap + 1, tile_multiple)
    fit = not (needs.fixed_tile or needs.whole_tile_statistics)

    def sides(tile: int) -> tuple[int, int]:
        return tile_sides(h, w, tile, overlap, ramp, tile_multiple, floor, fit)

    th, tw = sides(tile)
    blend = _Blend(h, w, s, orig_h * s, orig_w * s, min(th, h) * s, overlap * s, ramp * s)
    channels = pixels.shape[2]
    # Two input buffers, used in turn: the worker cuts tile k+1 into one while the network
    # reads tile k from the other. Tiles only shrink (on an out-of-memory retry), so the
    # first tile's size bounds them all.
    buffers = [np.empty(channels * min(th, h) * min(tw, w), np.float32) for _ in range(2)]

    def prepare(t: Tile, slot: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return _network_input(needs, pixels[t.y0 : t.y1, t.x0 : t.x1], _cut_extra(extra, t, (h, w)), buffers[slot])

    # One worker thread: it prepares the next tile's input and blends the previous tile's
    # output while the network runs the current tile on this thread (ONNX Runtime, torch and
    # numpy release the GIL). Only this thread calls the runner: runners need not be
    # thread-safe. The worker runs its jobs in the order they are submitted, which is what
    # makes reusing the buffers safe: a tile's blend job runs before the job that cuts the
    # tile after next into the buffer its input (and maybe its output) came from.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restorer-tiles")
    blending: list[Future] = []  # submitted blend jobs not yet known to have finished

    def settle() -> None:
        """Wait for the blend jobs submitted so far; an error in one is raised here."""
        while blending:
            blending.pop(0).result()

    y_from = 0
    done = 0
    try:
        while True:
            rows = plan_rows(h, w, sides(tile), overlap, ramp, y_from)
            total = done + sum(len(r) for r in rows)
            if on_plan:
                on_plan(total)
            order = [(t, row) for row in rows for t in row]
            next_y0 = {id(row): (rows[i + 1][0].y0 if i + 1 < len(rows) else h) for i, row in enumerate(rows)}
            ahead = worker.submit(prepare, order[0][0], 0)
            try:
                for k, (t, row) in enumerate(order):
                    if t is row[0]:
                        done_before_row = done
                        blending.append(worker.submit(blend.start_row, row, next_y0[id(row)]))
                    _check_cancel(cancel)
                    batch, patch_extra = ahead.result()
                    if k == 0 and len(order) > 1 and isinstance(runner, NetworkRunner):
                        runner.expect_repeats(batch.shape)  # every tile of a plan has one shape
                    ahead = worker.submit(prepare, order[k + 1][0], (k + 1) % 2) if k + 1 < len(order) else None
                    out = runner(batch, **patch_extra)
                    _check_output(runner, out, batch)
                    settle()  # the previous tile's blend, done while the network ran this one
                    blending.append(worker.submit(blend.add, out, t))
                    if t is row[-1]:
                        blending.append(worker.submit(blend.finish_row))
                    done += 1
                    if progress:
                        progress(done, total)
                settle()
                break
            except OutOfMemory as e:
                # Let the worker finish what it has (the rows before this one are kept; this
                # row's strip is dropped), halve the tile and redo from this row on.
                if ahead is not None:
                    ahead.exception()  # the next tile's input is not needed any more
                settle()
                y_from, done = row[0].y0, done_before_row
                half = tile // 2 - (tile // 2) % tile_multiple
                if half < floor:
                    raise OutOfMemory(
                        f"out of memory even at a {tile}px tile ({e}); try --device cpu or a smaller --tile"
                    ) from e
                tile = half
                if on_retry:
                    on_retry(f"out of memory; retrying from row {y_from} with {tile}px tiles")
    finally:
        worker.shutdown(wait=True, cancel_futures=True)  # never leave a job writing after we return
    return blend.result


class _Blend:
    """The weighted sum of the tile outputs, one row of tiles (a strip) at a time.

    Numerically the same as summing every tile's window-weighted output into one image-sized
    accumulator and dividing by the summed windows, in the same order: within a strip the
    tiles are summed left to right (starting from zero), and each strip is added onto the
    sum of the strips before it. But:
    - only the rows a later strip still reaches are kept (`carry`); the rows above the next
      strip are final and divided straight into the result, so the memory is the result
      plus one strip;
    - the pixels that only one tile covers, where its window is 1 (most of a tile), come out
      as (0 + value * 1) / (0 + 1) = value + 0: they are written to the result directly,
      without the sums and the divide;
    - the work is done in the network's CHW layout, with no temporary bigger than a chunk;
      the transposition to HWC happens in the final write.
    """

    CHUNK = 1 << 16  # elements per step of the per-tile math: the temporaries stay in cache

    def __init__(self, h: int, w: int, s: int, out_h: int, out_w: int, strip_rows: int, margin: int, ramp: int):
        self.h, self.w, self.s = h, w, s  # the (padded) input size and the scale
        self.out_h, self.out_w = out_h, out_w  # the cropped output
        self.strip_rows, self.margin, self.ramp = strip_rows, margin, ramp
        self.result: np.ndarray | None = None
        self.strip = self.strip_w = self.carry = self.carry_w = None
        self.carry_n = 0  # rows of `carry`, from the current strip's first row down
        self.tmp: np.ndarray | None = None  # output x window, in the output's dtype
        self.out_tmp: np.ndarray | None = None  # finished values before their interleaving
        # The current strip: its first row, height, rows to finish (all output scale), the
        # columns its tiles have written so far, and where its tiles are alone at weight 1.
        self.y0 = self.n = self.final = self.filled = 0
        self.solo_rows = (0, 0)
        self.solo_cols: dict[int, tuple[int, int]] = {}  # tile x0 -> output columns [a, b)

    def _allocate(self, channels: int) -> None:
        rows, width = self.strip_rows, self.w * self.s
        self.result = _empty((self.out_h, self.out_w, channels))
        # Pages never touched are never really allocated: the strip's solo parts and most
        # of `carry` (usually only the rows two strips share are carried).
        self.strip = _empty((channels, rows, width))
        self.strip_w = _empty((rows, width))
        self.carry = _empty((channels, rows, width))
        self.carry_w = _empty((rows, width))

    def start_row(self, row: list[Tile], next_y0: int) -> None:
        """A new strip; `next_y0` is where the next one starts (the image height if none)."""
        s, first = self.s, row[0]
        self.y0, self.n, self.filled = first.y0, (first.y1 - first.y0) * s, 0
        self.final = (next_y0 - first.y0) * s
        # Alone: below the rows carried from earlier strips, above the next strip, between
        # the neighbouring tiles of the row; and within the result's crop.
        a, b = _unit_span(self.n, first.y0 > 0, first.y1 < self.h, self.margin, self.ramp)
        a, b = max(a, self.carry_n), min(b, self.final, self.out_h - first.y0 * s)
        self.solo_rows = (a, b) if a < b else (0, 0)
        self.solo_cols = {}
        for j, t in enumerate(row):
            x0, tw = t.x0 * s, (t.x1 - t.x0) * s
            a, b = _unit_span(tw, t.x0 > 0, t.x1 < self.w, self.margin, self.ramp)
            a = max(x0 + a, row[j - 1].x1 * s if j else 0)
            b = min(x0 + b, row[j + 1].x0 * s if j + 1 < len(row) else self.w * s, self.out_w)
            if a < b:
                self.solo_cols[t.x0] = (a, b)

    def add(self, out: np.ndarray, t: Tile) -> None:
        """Add one tile's NCHW output (maybe padded), weighted by its window."""
        s = self.s
        th, tw = (t.y1 - t.y0) * s, (t.x1 - t.x0) * s
        o = out[0, :, :th, :tw]
        if self.result is None:
            self._allocate(o.shape[0])
        win = tile_window(th, tw, (t.y0 > 0, t.y1 < self.h, t.x0 > 0, t.x1 < self.w), self.margin, self.ramp)
        x0 = t.x0 * s
        # Columns left of `filled` already hold earlier tiles of this row: add to them. The
        # rest are new: write 0 + value there (as adding to a zeroed strip would: -0 -> +0).
        split = min(max(self.filled - x0, 0), tw)
        (r0, r1), (c0, c1) = self.solo_rows, self.solo_cols.get(t.x0, (x0, x0))
        c0, c1 = c0 - x0, c1 - x0
        if r0 < r1 and c0 < c1:
            self._to_result(np.add, o[:, r0:r1, c0:c1], 0.0, self.y0 * s + r0, x0 + c0)
            boxes = (((0, r0), (0, tw)), ((r1, th), (0, tw)), ((r0, r1), (0, c0)), ((r0, r1), (c1, tw)))
        else:
            boxes = (((0, th), (0, tw)),)
        for rows, cols in boxes:
            for a, b, fresh in ((cols[0], min(cols[1], split), False), (max(cols[0], split), cols[1], True)):
                if rows[0] < rows[1] and a < b:
                    self._add_box(o, win, rows, x0, a, b, fresh)
        self.filled = max(self.filled, x0 + tw)

    def _add_box(self, o: np.ndarray, win: np.ndarray, rows: tuple[int, int], x0: int, a: int, b: int,
                 fresh: bool) -> None:
        """strip (+)= output * window over the tile's rows x columns [a, b); `fresh`: the
        strip holds nothing there yet."""
        y, z = rows
        w, dst_w = win[y:z, a:b], self.strip_w[y:z, x0 + a : x0 + b]
        if fresh:
            np.add(w, 0.0, out=dst_w)
        else:
            np.add(dst_w, w, out=dst_w)
        c = o.shape[0]
        step = max(1, self.CHUNK // (c * (b - a)))
        if self.tmp is None or self.tmp.dtype != o.dtype or self.tmp.size < c * step * (b - a):
            self.tmp = np.empty(max(self.CHUNK, c * (b - a)), o.dtype)  # reused by every tile
        for r in range(y, z, step):
            e = min(r + step, z)
            dst = self.strip[:, r:e, x0 + a : x0 + b]
            prod = self.tmp[: c * (e - r) * (b - a)].reshape(c, e - r, b - a)
            np.multiply(o[:, r:e, a:b], win[r:e, a:b], out=prod)  # in the output's dtype, as `out *= win` was
            if fresh:
                np.add(prod, 0.0, out=dst)
            else:
                np.add(dst, prod, out=dst)

    def _to_result(self, ufunc, x: np.ndarray, y, top: int, left: int) -> None:
        """result[top:, left:] (HWC) = ufunc(x, y) for a CxHxW `x` (`y`: a scalar or HxW), a few
        rows at a time: computed in the CHW layout into a small buffer, then interleaved."""
        c, h, w = x.shape
        step = max(1, self.CHUNK // (c * w))
        if self.out_tmp is None or self.out_tmp.size < c * step * w:
            self.out_tmp = np.empty(max(self.CHUNK, c * w), np.float32)
        for r in range(0, h, step):
            e = min(r + step, h)
            tmp = self.out_tmp[: c * (e - r) * w].reshape(c, e - r, w)
            ufunc(x[:, r:e], y if np.isscalar(y) else y[r:e], out=tmp)
            _interleave(tmp, self.result[top + r : top + e, left : left + w])

    def finish_row(self) -> None:
        """Add the rows carried from earlier strips; write out the rows above the next strip."""
        n, s, final = self.n, self.s, self.final
        strip, strip_w = self.strip[:, :n], self.strip_w[:n]
        k = min(self.carry_n, n)
        if k:  # the earlier strips' sum + this strip, as an image-sized accumulator would do
            np.add(self.carry[:, :k], strip[:, :k], out=strip[:, :k])
            np.add(self.carry_w[:k], strip_w[:k], out=strip_w[:k])
        # Divide what the tiles share (the rest is written already): the rows above and below
        # the solo rows in full, and between the solo columns in those.
        top = self.y0 * s
        m = max(0, min(final, self.out_h - top))
        (r0, r1) = self.solo_rows
        parts = [((0, r0), 0, self.out_w), ((r1, m), 0, self.out_w)]
        x = 0
        for a, b in sorted(self.solo_cols.values()):
            parts.append(((r0, r1), x, a))
            x = b
        parts.append(((r0, r1), x, self.out_w))
        for (y, z), a, b in parts:
            if y < z and a < b:
                weights = strip_w[y:z, a:b]
                np.maximum(weights, 1e-12, out=weights)
                self._to_result(np.divide, strip[:, y:z, a:b], weights, top + y, a)
        # What a later strip still reaches: this strip's rows below the next strip's start,
        # then any rows that earlier strips (of larger tiles, before an out-of-memory retry)
        # reached below this one.
        if self.carry_n > n:
            self.carry[:, n - final : self.carry_n - final] = self.carry[:, n : self.carry_n]
            self.carry_w[n - final : self.carry_n - final] = self.carry_w[n : self.carry_n]
        if n > final:
            self.carry[:, : n - final] = strip[:, final:]
            self.carry_w[: n - final] = strip_w[final:]
        self.carry_n = max(n, self.carry_n) - final


def _libc_madvise():
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return fn


_madvise = _libc_madvise()


def _empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """np.empty for the engine's big buffers (the result, the strip), each written once, front
    to back: on Linux without the transparent huge pages numpy asks for (arrays of 4 MiB and
    up). With memory fragmented, the kernel compacts memory to find each huge page on the
    first write: measured on a 2-core VM, 1.2-2 s to first write a 576 MB result (the bench's
    4000x3000 x2 image), more than all the rest of the tiling, against a steady 0.2 s with
    small pages. (With huge pages at hand it would be 0.06 s; the stall is the worse risk.)"""
    arr = np.empty(shape, dtype)
    if _madvise is not None and arr.nbytes >= 4 << 20:
        page = mmap.PAGESIZE
        start = -(-arr.ctypes.data // page) * page
        end = (arr.ctypes.data + arr.nbytes) // page * page
        if end > start:
            _madvise(start, end - start, mmap.MADV_NOHUGEPAGE)  # best effort: an error changes nothing
    return arr


def _interleave(planes: np.ndarray, dst: np.ndarray) -> None:
    """dst (HxWxC, rows maybe strided) = planes (CxHxW): OpenCV's merge where it can, several
    times faster than numpy's transposing copy; a bit-exact copy either way."""
    if _cv2 is not None and planes.dtype == dst.dtype == np.float32 and 1 < planes.shape[0] <= 4:
        if _cv2.merge(list(planes), dst=dst) is dst:
            return
    np.copyto(dst, planes.transpose(1, 2, 0))


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
