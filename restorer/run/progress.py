"""Progress a person can read: which step, how far along the whole plan, how long is left.

The tiling engine reports tiles per run (`run_tiled(progress=(done, total))`); a plan runs
several steps, a batch several files. `ProgressClock` turns those reports into one fraction
of the whole and a time left measured from the work done so far: the seconds the current
step's finished tiles took, extrapolated to its remaining tiles, plus the steps still to come
at the cost per unit of weight measured so far. Nothing is guessed before the first tile (or
step) is measured. The same clock serves the app (ui/jobs.py) and restorer-cli's bar.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from restorer.tasks import TASK_WORDS

# Backends whose step runs the tiling engine exactly once (restorer.batch.restore.apply_runner),
# so its tile reports start at 1 again when the step starts. Pipelines and resizes report none.
TILED_BACKENDS = ("network", "builtin", "instructir", "generative")


def format_duration(seconds: float) -> str:
    """12.3 -> "12 s", 65 -> "1 min 05 s", 3725 -> "1 h 02 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_seconds(seconds: float | None) -> str:
    """Time left for people: "about 40 s left"; "" when unknown (None or negative, as the
    app's progress signal sends -1)."""
    if seconds is None or seconds < 0:
        return ""
    return f"about {format_duration(max(1.0, seconds))} left"


class ProgressClock:
    """One estimate of progress and time left over a sequence of steps.

    `labels` name the steps; `weights` say how much work each is (the number of tiles when the
    caller knows it, else equal). The caller says when a step starts (`start_step`) and how far
    it is (`tiles(done, total)`, or `update(fraction)` for work that is not tiles, such as a
    file of a batch), or lets `follow_tiles` find the step from the engine's reports alone.
    `clock` is injectable so tests need no sleeps.
    """

    def __init__(self, labels: Sequence[str], weights: Sequence[float] | None = None, *,
                 tiled: Sequence[bool] | None = None, clock: Callable[[], float] = time.perf_counter):
        if not labels:
            raise ValueError("a progress clock needs at least one step")
        weights = [1.0] * len(labels) if weights is None else [float(w) for w in weights]
        if len(weights) != len(labels) or any(w < 0 for w in weights):
            raise ValueError(f"need one weight >= 0 per step: {len(labels)} steps, weights {weights}")
        if sum(weights) == 0:  # nothing is known about the steps' sizes: count them equally
            weights = [1.0] * len(labels)
        self.labels = list(labels)
        self.steps_per_tile = [1] * len(labels)  # >1: the step's progress counts denoising steps
        self.weights = weights
        self.tiled = [True] * len(labels) if tiled is None else list(tiled)
        self._clock = clock
        self.started = clock()
        self.ended: float | None = None
        self.current = 0
        self._begin(0, self.started)
        self._finished_seconds = 0.0  # measured time of the steps before the current one
        self._last_fraction = 0.0  # the overall fraction never goes back (an out-of-memory retry does)

    @classmethod
    def for_plan(cls, steps: Sequence, *, clock: Callable[[], float] = time.perf_counter) -> "ProgressClock":
        """A clock over a plan's steps (restorer.plan.request.Step): labelled in words, equal
        weights, except a resize that has nothing to run (weight 0)."""
        if not steps:  # nothing to run: one empty step, so fraction and text still make sense
            return cls(["Restore"], clock=clock)
        n = len(steps)
        labels = []
        for i, step in enumerate(steps):
            words = TASK_WORDS.get(step.task, step.task)
            labels.append(f"{words} (step {i + 1} of {n})" if n > 1 else words)
        weights = [0.0 if str(step.backend) == "resize" else 1.0 for step in steps]
        tiled = [str(step.backend) in TILED_BACKENDS for step in steps]
        clock_ = cls(labels, weights, tiled=tiled, clock=clock)
        # a generative step reports denoising steps (restorer.run.diffusion.DenoiseProgress)
        clock_.steps_per_tile = [int(step.options.get("steps", 1)) if str(step.backend) == "generative" else 1
                                 for step in steps]
        return clock_

    # ------------------------------------------------------------------ reports

    def _begin(self, index: int, now: float) -> None:
        self.current = index
        self.step_started = now
        self.step_fraction = 0.0
        self.reported_at: float | None = None  # when step_fraction was last reported
        self.done = self.total = 0  # the current step's tiles, when it reports tiles

    def start_step(self, index: int) -> None:
        """Step `index` starts now; the steps before it are finished (what they took is
        measured together, so a step that reported nothing still counts)."""
        if not 0 <= index < len(self.labels):
            raise ValueError(f"no step {index} (there are {len(self.labels)})")
        if index == self.current:
            return
        now = self._clock()
        self._finished_seconds += now - self.step_started
        self._begin(index, now)

    def tiles(self, done: int, total: int) -> None:
        """The current step has finished `done` of its `total` tiles."""
        self.done, self.total = done, total
        self.update(done / total if total > 0 else 0.0)

    def update(self, fraction: float) -> None:
        """The current step is this far along (0..1)."""
        self.step_fraction = min(1.0, max(0.0, fraction))
        self.reported_at = self._clock()

    def follow_tiles(self, done: int, total: int) -> None:
        """A report from a run that does not say its step (restorer.batch.loop.run_batch's
        on_tiles): tile counts start again at each tiled step, so a report after the current
        step's last tile is the next tiled step's first."""
        if self.total and self.done >= self.total:
            later = [i for i in range(self.current + 1, len(self.labels)) if self.tiled[i]]
            if later:
                self.start_step(later[0])
        self.tiles(done, total)

    def finish(self) -> None:
        """All the work is done."""
        now = self._clock()
        self._finished_seconds += now - self.step_started
        self._begin(len(self.labels) - 1, now)
        self.step_fraction, self.reported_at = 1.0, now
        self.ended = now
        self._last_fraction = 1.0

    # ------------------------------------------------------------------ estimates

    @property
    def fraction(self) -> float:
        """How much of all the steps is done, 0..1."""
        if self.ended is not None:
            return 1.0
        done = sum(self.weights[: self.current]) + self.weights[self.current] * self.step_fraction
        self._last_fraction = max(self._last_fraction, min(1.0, done / sum(self.weights)))
        return self._last_fraction

    @property
    def percent(self) -> int:
        """The fraction as a whole percentage; 100 only when everything is done."""
        value = int(self.fraction * 100)
        return 100 if self.ended is not None else min(value, 99)

    def seconds_left(self) -> float | None:
        """Seconds until the end, from the measured cost of the work done so far; None until
        some work (a tile, or a whole step) has been measured."""
        if self.ended is not None:
            return 0.0
        w = self.weights
        now_w = w[self.current]
        later_w = sum(w[self.current + 1 :])
        earlier_w = sum(w[: self.current])
        if self.step_fraction > 0 and self.reported_at is not None:
            # The current step's tiles so far, extrapolated to the rest of the step.
            spent = self.reported_at - self.step_started
            step_total = spent / self.step_fraction
            left_here = step_total - spent
            seconds, weight = self._finished_seconds + step_total, earlier_w + now_w
        elif earlier_w > 0:
            # Nothing measured in this step yet: it costs what the earlier steps did per weight.
            rate = self._finished_seconds / earlier_w
            left_here = max(0.0, rate * now_w - (self._clock() - self.step_started))
            seconds, weight = self._finished_seconds, earlier_w
        else:
            return None
        rate = seconds / weight if weight > 0 else 0.0
        return max(0.0, left_here + rate * later_w)

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else self._clock()) - self.started

    # ------------------------------------------------------------------ words

    def step_text(self) -> str:
        """The current step in words: "Reduce noise: tile 3 of 12"."""
        label = self.labels[self.current]
        per_tile = self.steps_per_tile[self.current]
        if self.total and per_tile > 1:
            tiles = max(1, self.total // per_tile)
            tile, step = divmod(self.done, per_tile)
            if tile >= tiles:
                tile, step = tiles - 1, per_tile
            return f"{label}: tile {tile + 1} of {tiles}, denoising step {step} of {per_tile}"
        return f"{label}: tile {self.done} of {self.total}" if self.total else label

    def line(self, what: str | None = None) -> str:
        """"Reduce noise: tile 3 of 12 — 25 % — about 40 s left" (`what` replaces the step
        part); the time is left out while unknown."""
        parts = [self.step_text() if what is None else what, f"{self.percent} %"]
        left = format_seconds(self.seconds_left())
        if left:
            parts.append(left)
        return " — ".join(parts)

    def finished_line(self) -> str:
        """"finished in 12 s" (the time from the clock's start to `finish`, or to now)."""
        return f"finished in {format_duration(self.elapsed)}"
