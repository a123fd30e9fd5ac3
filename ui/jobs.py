"""Work that must not freeze the window: restoring, batches, downloads, exports.

Each job runs in a Python thread and talks to the window through Qt signals. The job object
lives in the GUI thread and every connection is queued, so slots always run in the GUI
thread whatever thread emitted. Cancelling sets a threading.Event that the tiling engine
checks between tiles (restorer.tiles.Cancelled ends the run).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal

from restorer import engine
from restorer.imaging import Image
from restorer.tiles import Cancelled
from restorer_ui.imageconv import Pyramid, to_display

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
    """engine.restore over the steps, one step at a time so progress can say which."""

    def __init__(self, image: Image, steps: list[engine.Step], options: engine.Options, parent=None):
        super().__init__(parent)
        self.image, self.steps, self.options = image, steps, options

    def work(self) -> RestoreResult:
        image, reports = self.image, []
        n = len(self.steps)
        for i, step in enumerate(self.steps):
            label = f"step {i + 1}/{n}: {step.task} with {step.model}"
            self.report(i / n, label)

            def progress(done: int, total: int, i=i, label=label) -> None:
                self.report((i + done / max(total, 1)) / n, f"{label}, tile {done}/{total}")

            ctx = engine.Context(self.options, progress=progress, cancel=self.cancel_event,
                                 on_note=self.note.emit)
            image, step_reports = engine.restore(image, [step], ctx)
            reports.extend(step_reports)
            if self.cancel_event.is_set():
                raise Cancelled("cancelled")
        self.report(1.0, "preparing the view")
        pyramid = Pyramid.build(to_display(image.pixels, image.alpha))
        return RestoreResult(image, reports, pyramid, time.perf_counter() - self.started_at)


class LoadJob(Job):
    """Decode a file and build its pyramid off the GUI thread (a 24 MP decode takes a while)."""

    def __init__(self, path, parent=None):
        super().__init__(parent)
        self.path = path

    def work(self):
        from restorer import imaging

        image = imaging.load(self.path)
        return image, Pyramid.build(to_display(image.pixels, image.alpha))


@dataclass
class BatchOutcome:
    items: list
    cancelled: bool = False
    counts: dict = field(default_factory=dict)


class BatchJob(Job):
    """The CLI's folder loop (restorer.batch) with per-file signals for the queue table."""

    itemChanged = Signal(int)  # index into items

    def __init__(self, items: list, steps: list[engine.Step], options: engine.Options, *, fmt: str,
                 quality: int, parent=None):
        super().__init__(parent)
        self.items, self.steps, self.options = items, steps, options
        self.fmt, self.quality = fmt, quality

    def work(self) -> BatchOutcome:
        from restorer import batch

        batch.clean_stale_temporaries(self.items)
        todo = [i for i, item in enumerate(self.items) if item.status == "pending"]
        cancelled = False
        for n, index in enumerate(todo):
            item = self.items[index]
            if self.cancel_event.is_set():
                cancelled = True
                break
            item.status = "running"
            self.itemChanged.emit(index)

            def progress(done: int, total: int, n=n, name=item.input.name) -> None:
                self.report((n + done / max(total, 1)) / len(todo), f"{name}: tile {done}/{total}")

            self.report(n / len(todo), item.input.name)
            ctx = engine.Context(self.options, progress=progress, cancel=self.cancel_event, on_note=self.note.emit)
            try:
                batch.process(item, self.steps, ctx, fmt=self.fmt, quality=self.quality, max_pixels=None)
            except Cancelled:
                item.status = "cancelled"
                self.itemChanged.emit(index)
                cancelled = True
                break
            self.itemChanged.emit(index)
        if cancelled:
            for index, item in enumerate(self.items):
                if item.status == "pending":
                    item.status = "cancelled"
                    self.itemChanged.emit(index)
        else:
            self.report(1.0, "done")
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return BatchOutcome(self.items, cancelled, counts)


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
