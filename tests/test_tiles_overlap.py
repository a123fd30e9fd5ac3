"""The pipelined tiling engine (a worker thread cuts the next tile and blends the previous one
while the network runs) gives bit-for-bit the output of the plain sequential engine it
replaced, kept below as `reference_run_tiled`; and it keeps that engine's contract: progress
in order, prompt cancellation, the out-of-memory retry, errors with their own type, and the
runner called from one thread only, never twice at once."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from restorer.archs.requirements import Requirements
from restorer.run import tiles
from restorer.run.runner import OutOfMemory, RunnerInfo
from restorer.run.tiles import (
    Cancelled,
    _check_cancel,
    _cut_extra,
    _is_per_pixel,
    _pad_image,
    auto_tile,
    plan_rows,
    reflect_pad_to,
    run_tiled,
    tile_sides,
    tile_window,
)
from tests.test_tiles import SmallNet

# ---------------------------------------------------------------------------------------
# The engine as it was before the pipelining (one image-sized accumulator, HWC math per
# tile, everything on the calling thread), verbatim but for names and the tiles' sides
# (fitted to the image since, by the engine's own tile_sides).


def reference_run_runner(runner, patch, extra=None):
    needs = runner.needs
    batch = np.ascontiguousarray(patch.transpose(2, 0, 1)[None], dtype=np.float32)
    padded, h, w = reflect_pad_to(batch, needs.pad_multiple, needs.min_side)
    extra_padded = {}
    for name, value in (extra or {}).items():
        if value.ndim == 3 and value.shape[:2] == patch.shape[:2]:
            value = reflect_pad_to(np.ascontiguousarray(value.transpose(2, 0, 1)[None], dtype=np.float32),
                                   needs.pad_multiple, needs.min_side)[0]
        extra_padded[name] = value
    out = runner(padded, **extra_padded)
    s = needs.scale
    return out[0, :, : h * s, : w * s].transpose(1, 2, 0)


def reference_run_tiled(pixels, runner, *, tile=None, overlap=None, extra=None, progress=None, cancel=None,
                        min_tile=tiles.MIN_TILE, on_retry=None):
    needs = runner.needs
    multiple = max(1, needs.fixed_tile or needs.pad_multiple)
    orig_h, orig_w, _ = pixels.shape
    pixels = _pad_image(pixels, multiple, needs.min_side)
    extra = {k: _pad_image(v, multiple, needs.min_side) if _is_per_pixel(v, (orig_h, orig_w)) else v
             for k, v in (extra or {}).items()}
    h, w, _ = pixels.shape
    s = needs.scale
    overlap = needs.overlap if overlap is None else overlap
    tile_multiple = math.lcm(multiple, max(1, needs.tile_multiple))
    min_tile = max(min_tile, needs.min_side)
    tile = needs.fixed_tile or tile or auto_tile(runner)
    tile = max(tile, min_tile, 4 * overlap + 1) if max(h, w) > tile else tile
    tile = max(multiple, tile - tile % multiple)
    if tile_multiple > multiple:
        tile = -(-tile // tile_multiple) * tile_multiple
    ramp = max(overlap, 1)
    floor = max(min_tile, 4 * overlap + 1, tile_multiple)
    fit = not (needs.fixed_tile or needs.whole_tile_statistics)
    out_c = None
    acc = weights = None
    y_from = 0
    done = 0
    while True:
        rows = plan_rows(h, w, tile_sides(h, w, tile, overlap, ramp, tile_multiple, floor, fit), overlap, ramp, y_from)
        total = done + sum(len(r) for r in rows)
        try:
            for row in rows:
                done_before_row = done
                strip, strip_w, strip_y0 = None, None, row[0].y0
                for t in row:
                    _check_cancel(cancel)
                    patch_extra = _cut_extra(extra, t, pixels.shape[:2])
                    out = reference_run_runner(runner, pixels[t.y0 : t.y1, t.x0 : t.x1], patch_extra)
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
                    out = np.ascontiguousarray(out)
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
            y_from, done = row[0].y0, done_before_row
            half = tile // 2 - (tile // 2) % tile_multiple
            if half < floor:
                raise OutOfMemory(f"out of memory even at a {tile}px tile ({e})") from e
            tile = half
            if on_retry:
                on_retry(f"out of memory; retrying from row {y_from} with {tile}px tiles")
    np.maximum(weights, 1e-12, out=weights)
    np.divide(acc, weights[..., None], out=acc)
    return acc[: orig_h * s, : orig_w * s]


# ---------------------------------------------------------------------------------------
# Runners


class Runner:
    """A numpy network: `kind` picks what it computes.

    local  - SmallNet (3x3 convs, receptive radius 3): tiled == whole within float error;
    global - nearest upscale plus the tile's mean and a slope across the tile: every tile
             disagrees with its neighbours, so the result depends on every blend weight;
    same   - returns its input batch itself (scale 1): the output aliases the input buffer.
    """

    def __init__(self, kind="global", scale=2, out_channels=None, dtype=np.float32, **needs):
        self.kind, self.dtype, self.out_channels = kind, dtype, out_channels
        self.net = SmallNet(scale) if kind == "local" else None
        self.info = RunnerInfo(model=f"test:{kind}", backend="numpy", provider="numpy")
        self.needs = Requirements(scale=scale, **{"overlap": 4, **needs})
        self.calls = 0
        self.threads: set[int] = set()
        self.busy = threading.Lock()
        self.concurrent = 0

    def __call__(self, batch, **extra):
        if not self.busy.acquire(blocking=False):
            self.concurrent += 1
            self.busy.acquire()
        try:
            self.calls += 1
            self.threads.add(threading.get_ident())
            return self.compute(batch, **extra)
        finally:
            self.busy.release()

    def compute(self, batch, **extra):
        if self.kind == "same":
            return batch
        if self.kind == "local":
            return self.net(batch).astype(self.dtype)
        s = self.needs.scale
        x = batch
        if "mask" in extra:
            x = x * (1 + extra["mask"][:, :1])
        if self.out_channels:
            x = x.mean(axis=1, keepdims=True).repeat(self.out_channels, axis=1)
        up = x.repeat(s, axis=2).repeat(s, axis=3)
        slope = np.linspace(-0.3, 0.7, up.shape[3], dtype=np.float32)
        out = up + x.mean(axis=(2, 3), keepdims=True) * 0.5 + slope * (x.std() + 0.1) - 0.4
        return out.astype(self.dtype)

    def close(self):
        pass


class Flaky:
    """Raises `error` on the runner calls numbered in `at` (1-based), else runs `inner`."""

    def __init__(self, inner, at, error=lambda: OutOfMemory("injected: out of memory")):
        self.inner, self.at, self.error, self.calls = inner, set(at), error, 0
        self.info, self.needs = inner.info, inner.needs

    def __call__(self, batch, **extra):
        self.calls += 1
        if self.calls in self.at:
            raise self.error()
        return self.inner(batch, **extra)

    def close(self):
        pass


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    assert np.array_equal(bits(got), bits(want)), f"max diff {np.abs(got - want).max()}"


def both(img, make_runner, **kw):
    """(new engine's output, reference output, progress calls of each, retry notes of each)."""
    results = []
    for engine in (run_tiled, reference_run_tiled):
        calls, notes = [], []
        out = engine(img, make_runner(), progress=lambda d, t: calls.append((d, t)), on_retry=notes.append, **kw)
        results.append((out, calls, notes))
    (new, new_calls, new_notes), (ref, ref_calls, ref_notes) = results
    assert new_calls == ref_calls
    assert new_notes == ref_notes
    return new, ref


def no_worker_left() -> bool:
    return not any(t.name.startswith("restorer-tiles") for t in threading.enumerate())


# ---------------------------------------------------------------------------------------
# Identical output


@pytest.mark.parametrize("kind", ["global", "local"])
@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("size,tile", [((45, 71), 24), ((97, 50), 32), ((117, 130), 64), ((30, 20), 64)])
def test_identical_to_reference(kind, scale, size, tile):
    img = np.random.default_rng(scale + size[0]).random((*size, 3), dtype=np.float32)
    new, ref = both(img, lambda: Runner(kind, scale), tile=tile)
    assert_identical(new, ref)
    assert no_worker_left()


@pytest.mark.parametrize("needs", [
    {"pad_multiple": 8},
    {"pad_multiple": 4, "tile_multiple": 16, "min_size": 40},
    {"fixed_tile": 32},
    {"min_size": 64},  # an image smaller than what the network accepts
    {"overlap": 0},
    {"overlap": 9},
])
def test_identical_with_requirements(needs):
    img = np.random.default_rng(7).random((61, 83, 3), dtype=np.float32)
    new, ref = both(img, lambda: Runner("global", 2, **needs), tile=32)
    assert_identical(new, ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_identical_for_other_output_dtypes(dtype):
    img = np.random.default_rng(8).random((50, 70, 3), dtype=np.float32)
    new, ref = both(img, lambda: Runner("global", 2, dtype=dtype), tile=24)
    assert_identical(new, ref)


def test_identical_gray_in_and_out_channels():
    gray = np.random.default_rng(9).random((40, 66, 1), dtype=np.float32)
    new, ref = both(gray, lambda: Runner("global", 3), tile=24)
    assert_identical(new, ref)
    rgb = np.random.default_rng(10).random((40, 66, 3), dtype=np.float32)
    new, ref = both(rgb, lambda: Runner("global", 2, out_channels=1), tile=24)
    assert new.shape == (80, 132, 1)
    assert_identical(new, ref)


def test_identical_with_a_per_pixel_extra_input():
    rng = np.random.default_rng(11)
    img = rng.random((57, 45, 3), dtype=np.float32)
    mask = (rng.random((57, 45, 1)) > 0.5).astype(np.float32)
    embedding = rng.random((1, 8), dtype=np.float32)
    new, ref = both(img, lambda: Runner("global", 2, pad_multiple=4), tile=24,
                    extra={"mask": mask, "embedding": embedding})
    assert_identical(new, ref)


def test_a_runner_returning_its_input_buffer():
    """The output may alias the engine's reused input buffer: it is blended before reuse."""
    img = np.random.default_rng(12).random((70, 90, 3), dtype=np.float32)
    new, ref = both(img, lambda: Runner("same", 1), tile=24)
    assert_identical(new, ref)
    assert np.abs(new - img).max() <= 1e-6


def test_float64_input_image():
    img = np.random.default_rng(13).random((33, 47, 3))
    new, ref = both(img, lambda: Runner("global", 2), tile=24)
    assert_identical(new, ref)


def test_whole_image_result_for_a_local_network():
    """As tests/test_tiles.py, on a size with several rows and columns of tiles."""
    img = np.random.default_rng(14).random((120, 150, 3), dtype=np.float32)
    runner = Runner("local", 2)
    whole = tiles.run_runner(runner, img)
    assert np.abs(run_tiled(img, runner, tile=40) - whole).max() <= 1e-5


# ---------------------------------------------------------------------------------------
# Out-of-memory retry


@pytest.mark.parametrize("size,tile", [((117, 64), 64), ((150, 120), 64), ((100, 100), 80)])
def test_out_of_memory_at_every_call_matches_the_reference(size, tile):
    """An out-of-memory error injected at each runner call in turn: the same retries, the
    same progress reports and bit-for-bit the same output as the reference engine. (117 rows
    at 64-px tiles: the last row starts one pixel below the one before, so rows carried from
    the large tiles reach past the first strip of the halved ones.)"""
    img = np.random.default_rng(size[0]).random((*size, 3), dtype=np.float32)
    n = sum(len(r) for r in plan_rows(*size, tile, 4, 4))
    for at in range(1, n + 1):
        new, ref = both(img, lambda: Flaky(Runner("global", 2), [at]), tile=tile)
        assert_identical(new, ref)
    # Two retries in one run (the tile halved twice: 64 -> 32 -> 16, the overlap made small
    # enough for 16-px tiles)
    new, ref = both(img, lambda: Flaky(Runner("global", 2, overlap=3), [2, 4]), tile=tile, min_tile=16)
    assert_identical(new, ref)
    assert no_worker_left()


def test_out_of_memory_at_the_floor_still_fails_clearly():
    runner = Flaky(Runner("global", 1), range(1, 100))
    with pytest.raises(OutOfMemory, match="out of memory even at"):
        run_tiled(np.zeros((90, 90, 3), np.float32), runner, tile=64, min_tile=32)
    assert no_worker_left()


# ---------------------------------------------------------------------------------------
# Progress, cancel, errors, threads


def test_progress_in_order_and_complete():
    img = np.random.default_rng(15).random((100, 130, 3), dtype=np.float32)
    calls = []
    run_tiled(img, Runner("global", 2), tile=32, progress=lambda d, t: calls.append((d, t)))
    total = calls[0][1]
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_cancel_from_progress_stops_before_the_next_tile():
    img = np.random.default_rng(16).random((100, 130, 3), dtype=np.float32)
    for engine in (run_tiled, reference_run_tiled):
        token = threading.Event()
        runner = Runner("global", 2)
        with pytest.raises(Cancelled):
            engine(img, runner, tile=32, cancel=token, progress=lambda d, t: d == 3 and token.set())
        assert runner.calls == 3
    assert no_worker_left()


def test_cancel_while_the_network_runs_stops_before_the_next_tile():
    token = threading.Event()

    class CancelInCall(Runner):
        def compute(self, batch, **extra):
            if self.calls == 4:
                token.set()  # as a user pressing cancel while tile 4 computes
            return super().compute(batch, **extra)

    runner = CancelInCall("global", 2)
    with pytest.raises(Cancelled):
        run_tiled(np.zeros((100, 130, 3), np.float32), runner, tile=32, cancel=token)
    assert runner.calls == 4
    assert no_worker_left()


class Boom(Exception):
    pass


@pytest.mark.parametrize("at", [1, 2, 7])
def test_a_runner_error_keeps_its_type(at):
    runner = Flaky(Runner("global", 2), [at], error=lambda: Boom("boom in tile"))
    with pytest.raises(Boom, match="boom in tile"):
        run_tiled(np.zeros((100, 130, 3), np.float32), runner, tile=32)
    assert runner.calls == at
    assert no_worker_left()


def test_an_error_in_the_worker_keeps_its_type(monkeypatch):
    """The blending runs on the worker thread: its errors reach the caller, typed."""
    calls = []

    def failing_window(*args):
        calls.append(args)
        if len(calls) == 3:
            raise MemoryError("no room for the window")
        return tile_window(*args)

    monkeypatch.setattr(tiles, "tile_window", failing_window)
    with pytest.raises(MemoryError, match="no room"):
        run_tiled(np.zeros((100, 130, 3), np.float32), Runner("global", 2), tile=32)
    assert no_worker_left()


def test_the_runner_runs_on_the_calling_thread_one_call_at_a_time():
    img = np.random.default_rng(17).random((150, 170, 3), dtype=np.float32)
    runner = Runner("local", 2)
    result = {}

    def job():
        result["out"] = run_tiled(img, runner, tile=40)
        result["thread"] = threading.get_ident()

    thread = threading.Thread(target=job)  # as the GUI runs it: off the main thread
    thread.start()
    thread.join()
    assert runner.calls > 10
    assert runner.threads == {result["thread"]}
    assert runner.concurrent == 0
    assert no_worker_left()


def test_cutting_and_blending_run_on_the_worker(monkeypatch):
    """The overlap itself: the next tile is cut and the previous one blended off the calling
    thread (which only runs the network), by one worker."""
    threads = {"add": set(), "prepare": set()}
    add, prepare = tiles._Blend.add, tiles._network_input

    def recording_add(self, *args):
        threads["add"].add(threading.get_ident())
        return add(self, *args)

    def recording_prepare(*args):
        threads["prepare"].add(threading.get_ident())
        return prepare(*args)

    monkeypatch.setattr(tiles._Blend, "add", recording_add)
    monkeypatch.setattr(tiles, "_network_input", recording_prepare)
    runner = Runner("global", 2)
    run_tiled(np.zeros((100, 130, 3), np.float32), runner, tile=32)
    caller = threading.get_ident()
    assert runner.threads == {caller}
    assert len(threads["add"]) == 1 and threads["add"] == threads["prepare"]
    assert caller not in threads["add"]
