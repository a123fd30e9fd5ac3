"""The tiling engine: tiled output equals whole-image output for a network whose receptive
field fits in the overlap; OOM halves the tile and still finishes; cancellation; progress."""

import threading

import numpy as np
import pytest

from restorer.archs.requirements import Requirements
from restorer.run.runner import OutOfMemory, Runner, RunnerInfo
from restorer.run.tiles import Cancelled, axis_starts, fit_tile, plan_rows, run_runner, run_tiled


class SmallNet:
    """Three 3x3 convs (zero padding, as torch's padding=1) with fixed random weights and a
    tanh-GELU between them, then a pixel-shuffle upscale: receptive radius 3 input pixels.
    Plain numpy, so the tiling engine is tested without torch."""

    def __init__(self, scale: int):
        rng = np.random.default_rng(0)
        self.scale = scale
        self.layers = [(rng.normal(0, 0.3, (o, i, 3, 3)).astype(np.float32), rng.normal(0, 0.1, o).astype(np.float32))
                       for i, o in ((3, 8), (8, 8), (8, 3 * scale * scale))]

    @staticmethod
    def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        n, _, h, wd = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.broadcast_to(b[None, :, None, None], (n, w.shape[0], h, wd)).copy()
        for dy in range(3):
            for dx in range(3):
                out += np.einsum("nchw,oc->nohw", xp[:, :, dy:dy + h, dx:dx + wd], w[:, :, dy, dx], optimize=True)
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for k, (w, b) in enumerate(self.layers):
            x = self.conv3x3(x, w, b)
            if k < len(self.layers) - 1:
                x = 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))
        n, c, h, w = x.shape
        s = self.scale
        return x.reshape(n, c // (s * s), s, s, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (s * s), h * s, w * s)


class SmallRunner:
    """A Runner (restorer.run.runner.Runner) around SmallNet."""

    def __init__(self, scale: int, pad_multiple: int = 1):
        self.net = SmallNet(scale)
        self.info = RunnerInfo(model="test:small", backend="numpy", provider="numpy")
        self.needs = Requirements(scale=scale, pad_multiple=pad_multiple, overlap=4)

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        return self.net(batch).astype(np.float32)

    def close(self) -> None:
        pass


def small_runner(scale: int, pad_multiple: int = 1) -> SmallRunner:
    return SmallRunner(scale, pad_multiple)


def test_small_runner_is_a_runner():
    assert isinstance(small_runner(2), Runner)


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("size", [(45, 71), (97, 50)])
def test_tiled_equals_whole(scale, size):
    rng = np.random.default_rng(scale)
    img = rng.random((*size, 3), dtype=np.float32)
    runner = small_runner(scale)
    whole = run_runner(runner, img)
    tiled = run_tiled(img, runner, tile=24)
    assert tiled.shape == (size[0] * scale, size[1] * scale, 3)
    assert np.abs(tiled - whole).max() <= 1e-5


def test_pad_multiple_reflect_and_crop():
    img = np.random.default_rng(0).random((37, 29, 3), dtype=np.float32)
    runner = small_runner(2, pad_multiple=8)
    out = run_tiled(img, runner, tile=16)
    assert out.shape == (74, 58, 3)
    assert np.abs(out - run_runner(runner, img)).max() <= 1e-5


def test_image_smaller_than_tile():
    img = np.random.default_rng(1).random((5, 7, 3), dtype=np.float32)
    runner = small_runner(4)
    out = run_tiled(img, runner, tile=64)
    assert out.shape == (20, 28, 3)


def test_plan_covers_image_with_overlap():
    rows = plan_rows(100, 130, tile=40, overlap=4, ramp=4)
    covered = np.zeros((100, 130), bool)
    for row in rows:
        for t in row:
            assert t.y1 - t.y0 <= 40 and t.x1 - t.x0 <= 40
            covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered.all()


@pytest.mark.parametrize("length", [257, 700, 1000, 3000, 4000])
@pytest.mark.parametrize("tile,overlap,multiple", [(512, 8, 1), (256, 16, 16), (96, 4, 4)])
def test_a_fitted_tile_covers_the_axis_with_as_many_tiles_and_is_the_smallest(length, tile, overlap, multiple):
    fitted = fit_tile(length, tile, overlap, overlap, multiple)
    starts = axis_starts(length, fitted, overlap, overlap)
    assert fitted <= tile and fitted % multiple == 0
    assert len(starts) <= len(axis_starts(length, tile, overlap, overlap))
    assert starts[-1] + min(fitted, length) == length  # the last tile ends at the edge, none overhangs it
    if length > tile and fitted - multiple > 4 * overlap:  # one multiple less needs another tile
        assert len(axis_starts(length, fitted - multiple, overlap, overlap)) > len(starts)


class Shapes:
    """Wraps a runner; remembers each tile's shape."""

    def __init__(self, runner):
        self.inner, self.shapes = runner, []
        self.info, self.needs = runner.info, runner.needs

    def __call__(self, batch, **extra):
        self.shapes.append(batch.shape[2:])
        return self.inner(batch, **extra)

    def close(self):
        pass


def test_tiles_are_fitted_to_the_image_unless_the_network_sees_the_whole_tile():
    img = np.random.default_rng(5).random((300, 400, 3), dtype=np.float32)
    local = Shapes(small_runner(2))
    whole = run_runner(local.inner, img)
    out = run_tiled(img, local, tile=128)
    assert np.abs(out - whole).max() < 1e-5
    fitted_area = sum(h * w for h, w in local.shapes)
    (th, tw), = set(local.shapes)  # one shape for every tile (fixed-size sessions need that)
    assert th < 128 and tw < 128 and fitted_area < 0.85 * len(local.shapes) * 128 * 128

    pooled = Shapes(small_runner(2))
    pooled.needs = pooled.needs.with_(whole_tile_statistics=True)
    run_tiled(img, pooled, tile=128)
    assert set(pooled.shapes) == {(128, 128)}


class OomOnce:
    """Wraps a runner; raises OutOfMemory for any tile larger than `limit` pixels a side."""

    def __init__(self, runner, limit):
        self.inner, self.limit, self.failures = runner, limit, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, batch, **extra):
        if max(batch.shape[2:]) > self.limit:
            self.failures += 1
            raise OutOfMemory("injected: CUDA out of memory")
        return self.inner(batch, **extra)


def test_out_of_memory_halves_tile_and_finishes_with_same_output():
    img = np.random.default_rng(2).random((90, 120, 3), dtype=np.float32)
    runner = small_runner(2)
    expected = run_tiled(img, runner, tile=64)
    flaky = OomOnce(runner, limit=40)
    messages = []
    got = run_tiled(img, flaky, tile=64, on_retry=messages.append)
    assert flaky.failures >= 1 and messages
    assert np.abs(got - expected).max() <= 1e-5


def test_out_of_memory_at_the_floor_fails_clearly():
    img = np.random.default_rng(3).random((90, 90, 3), dtype=np.float32)
    with pytest.raises(OutOfMemory, match="out of memory even at"):
        run_tiled(img, OomOnce(small_runner(1), limit=1), tile=64, min_tile=32)


def test_progress_and_cancel():
    img = np.random.default_rng(4).random((80, 80, 3), dtype=np.float32)
    calls = []
    run_tiled(img, small_runner(1), tile=32, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1] > 1
    token = threading.Event()

    def stop_after_two(done, total):
        if done == 2:
            token.set()

    with pytest.raises(Cancelled):
        run_tiled(img, small_runner(1), tile=32, progress=stop_after_two, cancel=token)


def test_a_tile_error_is_not_swallowed():
    class Broken:
        def __getattr__(self, name):
            return getattr(small_runner(1), name)

        def __call__(self, batch, **extra):
            raise ValueError("boom in tile")

    with pytest.raises(ValueError, match="boom in tile"):
        run_tiled(np.zeros((70, 70, 3), np.float32), Broken(), tile=32)
