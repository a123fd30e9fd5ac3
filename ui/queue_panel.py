"""The main window's queue: files (or whole folders) added or dropped, restored one after
another with the current plan through the one batch loop (restorer.batch.loop.run_batch, via
restorer_ui.jobs.BatchJob), so outputs are named, journaled, skipped and written exactly as
restorer-cli and the batch window write them.

Where outputs go: into `folder` when start() gets one (a dropped folder's sub-folders are
mirrored there), else beside each input; the name is the input's with `suffix` and the
output format's extension (restorer.batch.files.output_path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from restorer_ui.file_table import file_table, thumbnail
from restorer_ui.jobs import BatchJob, BatchOutcome

from restorer.batch import files
from restorer.batch.loop import Output
from restorer.plan.request import Plan

THUMB = 40
COLUMNS = ("", "File", "State")
# restorer.batch.files.Item.status -> what the queue calls it
STATES = {"pending": "waiting", "running": "running", "done": "done", "failed": "failed", "skipped": "skipped",
          "cancelled": "cancelled"}
OPEN_FILTER = "Images (*.png *.jpg *.jpeg *.jpe *.webp *.tif *.tiff *.bmp);;All files (*)"


@dataclass(eq=False)  # rows are compared by identity: `in` and index() find this very row
class QueueRow:
    path: Path
    base: Path | None  # the folder it was found in when a folder was added; None for a file
    state: str = "waiting"
    detail: str = ""  # running: "42%"; failed: the reason; done, skipped: the output's name
    item: files.Item | None = None  # this row's item in the current or last run


class _QueueJob(BatchJob):
    """BatchJob with a snapshot of each file's state for the rows: BatchJob's itemChanged
    carries an index and the rows would read the shared Item later, when its status may
    already have moved on; here the snapshot is taken in the worker thread as it changes."""

    fileChanged = Signal(int, str, str)  # index, status, error

    def __init__(self, items: list, plan: Plan, output: Output, parent=None):
        super().__init__(items, plan, output, parent)
        self.itemChanged.connect(self._snapshot, Qt.ConnectionType.DirectConnection)

    def _snapshot(self, index: int) -> None:
        item = self.items[index]
        self.fileChanged.emit(index, item.status, item.error)


class QueuePanel(QWidget):
    started = Signal()
    finished = Signal(object)  # BatchOutcome: every file of the run, cancelled or not

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.rows: list[QueueRow] = []
        self.job: _QueueJob | None = None
        self._job_rows: list[QueueRow] = []
        self._run: tuple | None = None  # (plan, output, folder, suffix) of the run in progress
        self._run_items: list[files.Item] = []  # every file of this run, for the outcome
        self._ran: set[int] = set()  # id() of the rows given to a job in this run
        self._cancelling = False
        self._thumbs_done: set[int] = set()

        self.summary = QLabel("Drop photos or folders here")
        self.summary.setWordWrap(True)
        add = QPushButton("Add files...")
        add.clicked.connect(self._add_dialog)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)

        self.table = file_table(COLUMNS, THUMB, name_width=180)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)

        self._thumb_timer = QTimer(self, interval=15)
        self._thumb_timer.timeout.connect(self._load_visible_thumbnails)
        self.table.verticalScrollBar().valueChanged.connect(lambda _: self._thumb_timer.start())

    # ------------------------------------------------------------ the queue

    def add_paths(self, paths, recursive: bool = True) -> int:
        """Queue files, and the images of folders found as a batch finds them (sub-folders
        too unless `recursive` is false). A file already queued is not added twice. Returns
        how many rows were added; rows added while a run goes on are run after it."""
        queued = {row.path.resolve() for row in self.rows}
        added = 0
        for path in map(Path, paths):
            if path.is_dir():
                # discovery's own rules (image extensions, no temporaries); the names it
                # pairs them with are made again at start(), for that run's folder and suffix
                found = [(item.input, path) for item in files.discover([path], path, recursive=recursive,
                                                                        fmt="same", suffix="")]
            else:
                found = [(path, None)]
            for file, base in found:
                if file.resolve() in queued:
                    continue
                queued.add(file.resolve())
                self.rows.append(QueueRow(file, base))
                self._add_table_row(len(self.rows) - 1)
                added += 1
        if added:
            self._show_summary()
            self._thumb_timer.start()
        return added

    def clear(self) -> bool:
        """Empty the queue (not while it runs)."""
        if self.is_running():
            return False
        self.rows = []
        self.table.setRowCount(0)
        self._thumbs_done.clear()
        self._show_summary()
        return True

    def remove_rows(self, indices) -> bool:
        """Take rows out of the queue (not while it runs)."""
        if self.is_running():
            return False
        drop = set(indices)
        self.rows = [row for i, row in enumerate(self.rows) if i not in drop]
        self.table.setRowCount(0)
        self._thumbs_done.clear()
        for i in range(len(self.rows)):
            self._add_table_row(i)
        self._show_summary()
        self._thumb_timer.start()
        return True

    def states(self) -> list[tuple[str, str, str]]:
        """(file name, state, detail) per row: state is waiting, running, done, failed,
        skipped or cancelled; detail the percentage, the reason or the output's name."""
        return [(row.path.name, row.state, row.detail) for row in self.rows]

    def is_running(self) -> bool:
        return self.job is not None

    # ------------------------------------------------------------ running

    def start(self, plan: Plan, output: Output, folder: Path | str | None = None, suffix: str = "_restored") -> bool:
        """Restore every queued file with `plan`; outputs into `folder` (None: beside each
        input) named with `suffix`. What the output folders' journals say was already made
        this way is skipped. Returns False when already running or the queue is empty;
        raises ValueError (one line) for a suffix that would lead out of the folder."""
        if self.is_running() or not self.rows:
            return False
        problem = files.check_suffix(suffix)
        if problem:
            raise ValueError(f"name suffix {suffix!r}: {problem}")
        self._run = (plan, output, Path(folder).expanduser() if folder else None, suffix)
        self._run_items, self._ran = [], set()
        self._cancelling = False
        self.clear_button.setEnabled(False)
        self.started.emit()
        self._start_job(list(self.rows))
        return True

    def cancel(self) -> None:
        """Stop after the tile in flight; the file it belongs to is not written (outputs are
        renamed into place only when complete) and the files after it are marked cancelled."""
        if self.job is not None:
            self._cancelling = True
            self.job.cancel()
            self.summary.setText("Cancelling after the current tile...")

    def _start_job(self, rows: list[QueueRow]) -> None:
        plan, output, folder, suffix = self._run
        items = [self._item_for(row, plan, output, folder, suffix) for row in rows]
        for row, item in zip(rows, items):
            row.item, row.state, row.detail = item, "waiting", ""
            self._update_row(self.rows.index(row))
        self._job_rows = rows
        self._ran.update(id(row) for row in rows)
        self._run_items.extend(items)
        job = _QueueJob(items, plan, output, parent=self)
        job.hook(job.fileChanged, self._file_changed)
        job.hook(job.fileProgress, self._file_progress)
        job.hook(job.failed, self._job_failed)
        job.hook(job.ended, self._job_ended)
        self.job = job
        job.start()

    @staticmethod
    def _item_for(row: QueueRow, plan: Plan, output: Output, folder: Path | None, suffix: str) -> files.Item:
        """The row's input paired with its output by the batch's own naming (files.discover)."""
        if folder is None:
            target = row.path.parent
        elif row.base is not None:
            target = folder / row.path.parent.relative_to(row.base)
        else:
            target = folder
        return files.discover([row.path], target, recursive=False, fmt=output.fmt, suffix=suffix,
                              mask_local=plan.mask_local)[0]

    def _file_changed(self, index: int, status: str, error: str) -> None:
        row = self._job_rows[index]
        row.state = STATES.get(status, status)
        if row.state == "running":
            row.detail = "0%"
        elif row.state == "failed":
            row.detail = error.strip().splitlines()[0] if error.strip() else "failed"
        elif row.state in ("done", "skipped"):
            row.detail = row.item.output.name
        else:
            row.detail = ""
        self._update_row(self.rows.index(row), scroll=row.state == "running")
        self._show_summary()

    def _file_progress(self, index: int, fraction: float) -> None:
        row = self._job_rows[index]
        if row.state == "running":  # a late report must not bring a finished row back
            row.detail = f"{int(fraction * 100)}%"
            self._update_row(self.rows.index(row))

    def _job_failed(self, message: str) -> None:
        """The loop itself stopped (not one file): what it had not finished failed with it."""
        for row in self._job_rows:
            if row.state in ("waiting", "running"):
                row.state, row.detail = "failed", message
                row.item.status, row.item.error = "failed", message
                self._update_row(self.rows.index(row))

    def _job_ended(self) -> None:
        self.job = None
        # Files dropped while the run went on were not in it: they run now, with the same plan.
        later = [row for row in self.rows if id(row) not in self._ran]
        if later and not self._cancelling:
            self._start_job(later)
            return
        counts: dict[str, int] = {}
        for item in self._run_items:
            counts[item.status] = counts.get(item.status, 0) + 1
        outcome = BatchOutcome(list(self._run_items), self._cancelling, counts)
        self._run = None
        self.clear_button.setEnabled(True)
        self._show_summary()
        self.finished.emit(outcome)

    # ------------------------------------------------------------ the table

    def _add_table_row(self, index: int) -> None:
        row = self.rows[index]
        self.table.insertRow(index)
        self.table.setItem(index, 0, QTableWidgetItem())
        name = QTableWidgetItem(row.path.name)
        name.setToolTip(str(row.path))
        self.table.setItem(index, 1, name)
        self.table.setItem(index, 2, QTableWidgetItem())
        self._update_row(index)

    def _update_row(self, index: int, scroll: bool = False) -> None:
        row = self.rows[index]
        cell = self.table.item(index, 2)
        cell.setText(f"{row.state}: {row.detail}" if row.state in ("running", "failed") else row.state)
        tip = [row.detail] if row.detail else []
        if row.item is not None:
            tip += [f"-> {row.item.output}", *row.item.notes]
        cell.setToolTip("\n".join(tip))
        cell.setForeground(Qt.GlobalColor.red if row.state == "failed" else self.palette().text())
        if scroll:
            self.table.scrollToItem(self.table.item(index, 1))

    def _show_summary(self) -> None:
        if not self.rows:
            self.summary.setText("Drop photos or folders here")
            return
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        parts = [f"{counts[s]} {s}" for s in ("running", "waiting", "done", "skipped", "failed", "cancelled")
                 if counts.get(s)]
        self.summary.setText(f"{len(self.rows)} files: " + ", ".join(parts))

    def visible_rows(self) -> range:
        if not self.rows:
            return range(0)
        first = self.table.rowAt(0)
        last = self.table.rowAt(self.table.viewport().height() - 1)
        first = 0 if first < 0 else first
        last = len(self.rows) - 1 if last < 0 else last
        return range(first, last + 1)

    def _load_visible_thumbnails(self) -> None:
        """Two per tick, only rows on screen (a dropped folder of thousands decodes only what
        is looked at)."""
        # Imported here: batch_window imports main_window, which will import this module.
        todo = [r for r in self.visible_rows() if r not in self._thumbs_done][:2]
        if not todo:
            self._thumb_timer.stop()
            return
        for index in todo:
            self._thumbs_done.add(index)
            pixmap = thumbnail(self.rows[index].path, THUMB)
            if pixmap is not None:
                self.table.item(index, 0).setIcon(QIcon(pixmap))

    def has_thumbnail(self, index: int) -> bool:
        return not self.table.item(index, 0).icon().isNull()

    # ------------------------------------------------------------ adding by hand

    def _add_dialog(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Add photos", "", OPEN_FILTER)
        self.add_paths(names)

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event):
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.add_paths(paths)

    def keyPressEvent(self, event):
        if event.key() == Qt.Key.Key_Delete and not self.is_running():
            self.remove_rows({index.row() for index in self.table.selectionModel().selectedRows()})
        else:
            super().keyPressEvent(event)

    def closeEvent(self, event):
        if self.job is not None:
            self.job.cancel()
        super().closeEvent(event)
