"""Progress that means something: restorer.run.progress.ProgressClock (fraction of the whole
plan, time left from the measured cost of the tiles done), the app's jobs that report it and
restorer-cli's tiles bar. The clock is driven by an injected clock function, never by sleeps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from restorer.plan.request import Backend, Plan, Step
from restorer.run.progress import ProgressClock, format_duration, format_seconds

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "kodim05_crop256.png"


class FakeTime:
    """A clock function the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_tiles(clock: ProgressClock, time: FakeTime, total: int, seconds_per_tile: float) -> list[float | None]:
    """Report `total` tiles of equal cost; the time left after each."""
    lefts = []
    for done in range(1, total + 1):
        time.now += seconds_per_tile
        clock.tiles(done, total)
        lefts.append(clock.seconds_left())
    return lefts


def test_time_left_is_unknown_before_the_first_tile():
    time = FakeTime()
    clock = ProgressClock(["Reduce noise"], clock=time)
    time.now += 5  # loading a model is not a measured tile
    assert clock.seconds_left() is None
    assert clock.fraction == 0.0
    assert clock.line() == "Reduce noise — 0 %"
    clock.tiles(0, 12)  # the engine's total is known, nothing is done yet
    assert clock.seconds_left() is None
    assert "left" not in clock.line()


def test_equal_tiles_count_down_to_the_end():
    time = FakeTime()
    clock = ProgressClock(["Reduce noise"], clock=time)
    lefts = run_tiles(clock, time, 12, 2.0)
    assert lefts[0] == pytest.approx(22.0)  # the first tile's 2 s, times the 11 left
    assert all(a > b for a, b in zip(lefts, lefts[1:])), lefts
    assert lefts == pytest.approx([2.0 * (12 - k) for k in range(1, 13)])
    assert clock.fraction == 1.0
    assert clock.percent == 99  # 100 only once the work is finished (the view is still built)
    clock.finish()
    assert clock.percent == 100 and clock.seconds_left() == 0.0


def test_line_says_step_tile_percentage_and_time_left():
    time = FakeTime()
    clock = ProgressClock(["Reduce noise"], clock=time)
    run_tiles(clock, time, 3, 4.0)
    clock.tiles(3, 12)
    assert clock.line() == "Reduce noise: tile 3 of 12 — 25 % — about 36 s left"
    assert clock.line("photo.png (1 of 2)") == "photo.png (1 of 2) — 25 % — about 36 s left"


def test_steps_weigh_by_tiles_and_later_steps_cost_what_was_measured():
    time = FakeTime()
    clock = ProgressClock(["Reduce noise", "Upscale"], weights=[30, 10], clock=time)
    run_tiles(clock, time, 30, 1.0)  # step one: 30 tiles of 1 s
    assert clock.fraction == pytest.approx(0.75)
    assert clock.seconds_left() == pytest.approx(10.0)  # step two's 10 tiles at the measured 1 s each
    clock.start_step(1)
    time.now += 4  # no tile of step two yet: its expected cost runs down
    assert clock.seconds_left() == pytest.approx(6.0)
    lefts = run_tiles(clock, time, 5, 3.0)  # step two's own tiles cost 3 s (after a 4 s start)
    assert clock.fraction == pytest.approx(1.0)
    assert lefts[-1] == pytest.approx(0.0)
    # Equal weights when the tile counts are not known: each step is half.
    equal = ProgressClock(["a", "b"], clock=time)
    equal.tiles(4, 4)
    assert equal.fraction == pytest.approx(0.5)


def test_fraction_never_goes_back_on_an_out_of_memory_retry():
    time = FakeTime()
    clock = ProgressClock(["Upscale"], clock=time)
    run_tiles(clock, time, 6, 1.0)
    clock.tiles(6, 20)  # the engine halved the tile: more tiles, from the same row
    before = clock.fraction
    time.now += 1
    clock.tiles(4, 24)
    assert clock.fraction == before


def test_follow_tiles_finds_the_step_from_the_engine_reports_alone():
    """run_batch's on_tiles does not say the step: tile counts start again at each tiled
    step; a pipeline step reports nothing and a resize has no weight."""
    time = FakeTime()
    steps = [Step("denoise", "builtin:denoise", Backend.BUILTIN),
             Step("old-photo", "old-photo", Backend.PIPELINE),
             Step("superres", "builtin:upscale", Backend.BUILTIN, {"scale": 2})]
    clock = ProgressClock.for_plan(steps, clock=time)
    assert clock.labels == ["Reduce noise (step 1 of 3)", "Repair old photo (step 2 of 3)",
                            "Upscale (step 3 of 3)"]
    for done in (1, 2):
        time.now += 1
        clock.follow_tiles(done, 2)
    assert clock.current == 0 and clock.fraction == pytest.approx(1 / 3)
    time.now += 1
    clock.follow_tiles(1, 4)
    assert clock.current == 2  # the pipeline ran in between
    assert clock.step_text() == "Upscale (step 3 of 3): tile 1 of 4"
    assert clock.fraction == pytest.approx(2 / 3 + 1 / 12)
    resize = ProgressClock.for_plan([Step("denoise", "builtin:denoise", Backend.BUILTIN),
                                     Step("superres", "resize", Backend.RESIZE)], clock=time)
    resize.follow_tiles(1, 1)
    assert resize.fraction == 1.0  # the resize has nothing to run
    assert ProgressClock.for_plan([], clock=time).labels == ["Restore"]


def test_finished_line_and_durations():
    time = FakeTime()
    clock = ProgressClock(["Reduce noise"], clock=time)
    run_tiles(clock, time, 13, 5.0)
    clock.finish()
    time.now += 100  # after the end, the duration stays
    assert clock.finished_line() == "finished in 1 min 05 s"
    assert [format_duration(s) for s in (0.4, 12.3, 65, 3725)] == ["0 s", "12 s", "1 min 05 s", "1 h 02 min"]
    assert format_seconds(None) == format_seconds(-1) == ""
    assert format_seconds(0.2) == "about 1 s left"
    assert format_seconds(40) == "about 40 s left"


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="one weight"):
        ProgressClock(["a", "b"], weights=[1])
    with pytest.raises(ValueError, match="no step 2"):
        ProgressClock(["a", "b"]).start_step(2)


# ---------------------------------------------------------------- the app's jobs


class _CountingRunner:
    """A built-in-like runner that copies its input and counts tiles."""

    def __init__(self):
        from restorer.archs.requirements import Requirements
        from restorer.run.runner import RunnerInfo

        self.needs = Requirements(overlap=0)
        self.info = RunnerInfo("builtin:denoise", "builtin", "numpy")
        self.calls = 0

    def __call__(self, batch, **extra):
        self.calls += 1
        return batch.copy()

    def close(self):
        pass


def test_restore_job_reports_the_plan_in_words(monkeypatch):
    pytest.importorskip("PySide6")
    from restorer_ui.jobs import RestoreJob

    from restorer.batch import restore as restore_module
    from restorer.io.imaging import Image
    from restorer.run.loader import RunnerCache

    runner = _CountingRunner()
    monkeypatch.setattr(restore_module, "step_runner", lambda step, ctx: runner)
    plan = Plan([Step("denoise", "builtin:denoise", Backend.BUILTIN),
                 Step("dehaze", "builtin:dehaze", Backend.BUILTIN)], tile=32)
    image = Image(np.random.default_rng(0).random((64, 96, 3), dtype=np.float32))
    job = RestoreJob(image, plan, RunnerCache())
    seen = []
    job.progress.connect(lambda fraction, left, text: seen.append((fraction, left, text)))
    job.started_at = 0.0
    result = job.work()
    assert result.image.pixels.shape == (64, 96, 3)
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[0][1] == -1.0  # nothing measured yet
    tiles = [(f, left, t) for f, left, t in seen if "tile" in t]
    assert tiles and all(left >= 0 for _, left, _ in tiles)
    assert tiles[0][2].startswith("Reduce noise (step 1 of 2): tile 1 of ")
    assert " % — about " in tiles[0][2] and tiles[0][2].endswith(" left")
    assert any(t.startswith("Remove haze (step 2 of 2): tile") for _, _, t in tiles)
    assert seen[-1][2].startswith("Finished in ")
    # Cancelled before it starts: no tile runs, the Cancelled the window shows is raised.
    from restorer.run.tiles import Cancelled

    runner.calls = 0
    job = RestoreJob(image, plan, RunnerCache())
    job.cancel()
    with pytest.raises(Cancelled):
        job.work()
    assert runner.calls == 0


# ---------------------------------------------------------------- restorer-cli


class _Terminal(io.StringIO):
    """stderr as a terminal: restorer-cli draws its bars only there."""

    def isatty(self) -> bool:
        return True


def _cli_stderr(monkeypatch, tmp_path, *extra) -> str:
    from PIL import Image as PILImage

    from restorer import cli

    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    rgb = np.asarray(PILImage.open(SAMPLE).convert("RGB"))[:96, :128]
    PILImage.fromarray(rgb).save(folder / "photo.png")
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))  # nothing installed: the built-in denoiser
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    code = cli.main([str(folder), "-o", str(tmp_path / f"out{len(extra)}"), "--task", "denoise", "--tile", "32",
                     *extra])
    assert code == 0, err.getvalue()
    return err.getvalue()


def test_cli_tiles_bar_shows_percentage_and_time_left(monkeypatch, tmp_path):
    text = _cli_stderr(monkeypatch, tmp_path)
    assert "photo.png: Reduce noise: tile 1 of " in text
    assert " % — about " in text and " s left" in text
    assert "100 %" not in text  # 100 % only once the file is written, and the bar is gone by then
    assert "restorer-cli: finished in " in text
    quiet = _cli_stderr(monkeypatch, tmp_path, "--quiet")
    assert "tile" not in quiet and " % " not in quiet and "finished in" not in quiet
