"""Work that must not freeze the window: restoring, batches, downloads, exports.

Each job runs in a Python thread and talks to the window through Qt signals. The job object
lives in the GUI thread and every connection is queued, so slots always run in the GUI
thread whatever thread emitted. Cancelling sets a threading.Event that the tiling engine
checks between tiles (restorer.run.tiles.Cancelled ends the run).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from restorer_ui.imageconv import Pyramid, to_display

from restorer.batch.loop import Output, run_batch
from restorer.batch.restore import restore, restore_region
from restorer.io.imaging import Image
from restorer.plan.request import Plan
from restorer.run.context import Context
from restorer.run.loader import RunnerCache
from restorer.run.progress import ProgressClock
from restorer.run.tiles import Cancelled

QUEUED = Qt.ConnectionType.QueuedConnection


class Job(QObject):
    progress = Signal(float, float, str)  # fraction done, seconds left (-1: unknown), what is happening
    note = Signal(str)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    ended = Signal()  # after any of the three above

    def __init__(self, parent=None):
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.started_at = 0.0
        self._last_fraction = 0.0

    def hook(self, signal, slot) -> None:
        """Connect a slot, queued: it runs in the GUI thread."""
        signal.connect(slot, QUEUED)

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        self.cancel_event.set()

    def is_running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def report(self, fraction: float, text: str) -> None:
        """Progress from the worker thread, with a time-left estimate from the rate so far."""
        fraction = min(1.0, max(self._last_fraction, fraction))
        self._last_fraction = fraction
        elapsed = time.perf_counter() - self.started_at
        left = elapsed * (1 - fraction) / fraction if fraction > 0.02 and elapsed > 0.5 else -1.0
        self.progress.emit(fraction, left, text)

    def report_clock(self, clock: ProgressClock, what: str | None = None) -> None:
        """Progress from a ProgressClock: its fraction, its time left (-1 while unknown) and its
        line ("Reduce noise: tile 3 of 12 — 25 % — about 40 s left"; `what` replaces the step part)."""
        left = clock.seconds_left()
        self.progress.emit(clock.fraction, -1.0 if left is None else left, clock.line(what))

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled")

    def work(self):
        raise NotImplementedError

    def _run(self) -> None:
        try:
            result = self.work()
        except Cancelled:
            self.cancelled.emit()
        except Exception as e:  # shown in the window; a job never takes the app down
            self.failed.emit(one_line(e))
        else:
            self.succeeded.emit(result)
        self.ended.emit()


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    known = ("ImageReadError", "ImageWriteError", "RequestError", "StoreError", "InstructionError", "ExportError")
    return first if type(error).__name__ in known and first else f"{type(error).__name__}: {first}".rstrip(": ")


@dataclass
class RestoreResult:
    image: Image
    reports: list
    pyramid: Pyramid
    seconds: float = 0.0


class RestoreJob(Job):
    """restore() over the plan, one step at a time so progress can say which; runners come
    from the window's cache, so restoring again with the same model does not reload it."""

    def __init__(self, image: Image, plan: Plan, cache: RunnerCache, parent=None):
        super().__init__(parent)
        self.image, self.plan, self.cache = image, plan, cache

    def work(self) -> RestoreResult:
        image, reports = self.image, []
        clock = ProgressClock.for_plan(self.plan.steps)

        def progress(done: int, total: int) -> None:
            clock.tiles(done, total)
            self.report_clock(clock)

        ctx = Context(self.plan.device, self.plan.tile, progress=progress, cancel=self.cancel_event,
                      cache=self.cache, on_note=self.note.emit)
        for i, step in enumerate(self.plan.steps):
            self.check_cancel()  # between steps too: a pipeline step has no tiles to stop between
            clock.start_step(i)
            self.report_clock(clock)
            image, step_reports = restore(image, replace(self.plan, steps=[step]), ctx)
            reports.extend(step_reports)
        self.check_cancel()
        clock.finish()
        self.progress.emit(1.0, 0.0, f"{clock.finished_line().capitalize()}; preparing the view")
        pyramid = Pyramid.build(to_display(image.pixels, image.alpha))
        return RestoreResult(image, reports, pyramid, time.perf_counter() - self.started_at)


@dataclass
class PreviewResult:
    image: Image  # the restored pixels of `box`, at the plan's output scale
    pyramid: Pyramid
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in input pixels
    seconds: float = 0.0


class PreviewJob(Job):
    """restore_region() of one box: what the whole restore would give there, in a second or
    so for the built-in operators (restorer.batch.restore.restore_region says how)."""

    def __init__(self, image: Image, plan: Plan, cache: RunnerCache, box: tuple[int, int, int, int], parent=None):
        super().__init__(parent)
        self.image, self.plan, self.cache, self.box = image, plan, cache, tuple(box)

    def work(self) -> PreviewResult:
        clock = ProgressClock.for_plan(self.plan.steps)

        def progress(done: int, total: int) -> None:
            clock.follow_tiles(done, total)  # the region runs each tiled step once, in order
            self.report_clock(clock)

        ctx = Context(self.plan.device, self.plan.tile, progress=progress, cancel=self.cancel_event,
                      cache=self.cache, on_note=self.note.emit)
        region = restore_region(self.image, self.plan, ctx, self.box)
        self.check_cancel()
        clock.finish()
        self.progress.emit(1.0, 0.0, f"Preview {clock.finished_line()}")
        pyramid = Pyramid.build(to_display(region.pixels, region.alpha))
        return PreviewResult(region, pyramid, self.box, time.perf_counter() - self.started_at)


class LoadJob(Job):
    """Decode a file and build its pyramid off the GUI thread (a 24 MP decode takes a while)."""

    def __init__(self, path, parent=None):
        super().__init__(parent)
        self.path = path

    def work(self):
        from restorer.io import imaging

        image = imaging.load(self.path)
        return image, Pyramid.build(to_display(image.pixels, image.alpha))


@dataclass
class BatchOutcome:
    items: list
    cancelled: bool = False
    counts: dict = field(default_factory=dict)


class BatchJob(Job):
    """The batch loop (restorer.batch.loop.run_batch) with per-file signals for the queue table."""

    itemChanged = Signal(int)  # index into items
    fileProgress = Signal(int, float)  # index into items, the fraction of that file's plan done

    def __init__(self, items: list, plan: Plan, output: Output, parent=None):
        super().__init__(parent)
        self.items, self.plan, self.output = items, plan, output

    def work(self) -> BatchOutcome:
        # One clock over the files (equal shares: their sizes are not read ahead), fed by a
        # clock over the plan's steps for the file that is running.
        pending = [i for i, item in enumerate(self.items) if item.status == "pending"]
        files = ProgressClock([self.items[i].input.name for i in pending] or ["nothing to restore"])
        position = {index: k for k, index in enumerate(pending)}
        steps = ProgressClock.for_plan(self.plan.steps)

        def what(index: int) -> str:
            where = f" ({position[index] + 1} of {len(pending)})" if index in position else ""
            return f"{self.items[index].input.name}{where}: {steps.step_text()}"

        def on_item(index: int, item) -> None:
            nonlocal steps
            if item.status == "running":
                if index in position:
                    files.start_step(position[index])
                steps = ProgressClock.for_plan(self.plan.steps)
                self.report_clock(files, what(index))
            self.itemChanged.emit(index)

        def on_tiles(index: int, done: int, total_tiles: int) -> None:
            steps.follow_tiles(done, total_tiles)
            files.update(steps.fraction)
            self.fileProgress.emit(index, steps.fraction)
            self.report_clock(files, what(index))

        finished = run_batch(self.items, self.plan, self.output, cancel=self.cancel_event, on_item=on_item,
                             on_tiles=on_tiles, on_note=self.note.emit)
        if finished:
            files.finish()
            self.progress.emit(1.0, 0.0, f"Done, {files.finished_line()}")
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return BatchOutcome(self.items, not finished, counts)


class DownloadCancelled(Exception):
    pass


class CallJob(Job):
    """Any function in a thread; it gets a progress(done, total) callback that raises
    DownloadCancelled once cancel() was called (the store keeps the partial file)."""

    def __init__(self, fn: Callable, label: str, parent=None):
        super().__init__(parent)
        self.fn, self.label = fn, label

    def _progress(self, done: int, total: int) -> None:
        if self.cancel_event.is_set():
            raise DownloadCancelled("cancelled")
        mb = done / 1e6
        text = f"{self.label}: {mb:.1f} of {total / 1e6:.1f} MB" if total else f"{self.label}: {mb:.1f} MB"
        self.report(done / total if total else 0.0, text)

    def work(self):
        try:
            return self.fn(self._progress)
        except DownloadCancelled:
            raise Cancelled("cancelled") from None
