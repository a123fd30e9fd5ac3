"""Batch mode: a folder (optionally with its sub-folders) restored into another folder with
the same engine, naming and skip-existing rule as restorer-cli."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from restorer_ui.file_table import file_table, thumbnail
from restorer_ui.jobs import BatchJob, BatchOutcome
from restorer_ui.request_panel import RequestPanel
from restorer_ui.settings import OUTPUT_FORMATS, AppSettings

from restorer.batch import files
from restorer.batch.loop import Output
from restorer.plan import request
from restorer.zoo.catalog import Catalog

THUMB = 48
COLUMNS = ("", "File", "Status", "Time", "Message")
STATUS_TEXT = {"pending": "waiting", "running": "restoring...", "done": "done", "skipped": "skipped (exists)",
               "failed": "FAILED", "cancelled": "cancelled"}


class BatchWindow(QWidget):
    def __init__(self, settings: AppSettings, catalog: Catalog | None = None, parent=None):
        super().__init__(parent, Qt.WindowType.Window)
        self.setWindowTitle("Batch - Restorer")
        self.settings = settings
        self.items: list[files.Item] = []
        self.job: BatchJob | None = None
        self.outcome: BatchOutcome | None = None
        self._thumbs_done: set[int] = set()

        form = QFormLayout()
        self.input_edit, row = self._folder_row("Choose the input folder")
        form.addRow("Input folder", row)
        self.recursive = QCheckBox("Include sub-folders")
        self.recursive.setChecked(True)
        form.addRow("", self.recursive)
        self.output_edit, row = self._folder_row("Choose the output folder")
        form.addRow("Output folder", row)
        self.suffix = QLineEdit(settings.suffix)
        form.addRow("Name suffix", self.suffix)
        self.format = QComboBox()
        self.format.addItems(["Same as input", "PNG", "JPEG", "WebP", "TIFF"])
        self.format.setCurrentIndex(OUTPUT_FORMATS.index(settings.output_format))
        form.addRow("Format", self.format)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(settings.quality)
        form.addRow("Quality", self.quality)
        self.skip_existing = QCheckBox("Skip outputs restorer already made this way "
                                       "(otherwise replace every output; inputs never)")
        self.skip_existing.setChecked(settings.skip_existing)
        form.addRow("", self.skip_existing)

        self.request = RequestPanel(settings.options, catalog)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addLayout(form)
        left_layout.addWidget(self.request)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.cancel_button)
        left_layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        left_layout.addWidget(self.progress)
        self.status = QLabel()
        self.status.setWordWrap(True)
        left_layout.addWidget(self.status)
        left_layout.addStretch(1)

        self.table = file_table(COLUMNS, THUMB, name_width=260)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.summary.setPlaceholderText("The summary appears here when the batch ends.")
        self.summary.setMaximumHeight(140)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.table, 1)
        right_layout.addWidget(self.summary)

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setSizes([380, 700])
        outer = QVBoxLayout(self)
        outer.addWidget(splitter)
        self.resize(1100, 700)

        self._thumb_timer = QTimer(self, interval=15)
        self._thumb_timer.timeout.connect(self._load_visible_thumbnails)
        self.table.verticalScrollBar().valueChanged.connect(lambda _: self._thumb_timer.start())

    def _folder_row(self, title: str):
        edit = QLineEdit()
        browse = QPushButton("Browse...")
        browse.clicked.connect(lambda: self._browse(edit, title))
        row = QHBoxLayout()
        row.addWidget(edit, 1)
        row.addWidget(browse)
        return edit, row

    def _browse(self, edit: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, edit.text())
        if folder:
            edit.setText(folder)

    # ------------------------------------------------------------ running

    def is_running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        if self.is_running():
            return
        source = Path(self.input_edit.text()).expanduser()
        target = Path(self.output_edit.text()).expanduser()
        if not self.input_edit.text() or not source.is_dir():
            return self._error(f"choose an input folder ('{source}' is not a folder)")
        if not self.output_edit.text():
            return self._error("choose an output folder")
        try:
            plan = self.request.resolve_plan()
        except request.RequestError as e:
            return self._error(str(e))
        fmt = OUTPUT_FORMATS[self.format.currentIndex()]
        problem = files.check_suffix(self.suffix.text())
        if problem:
            return self._error(f"name suffix {self.suffix.text()!r}: {problem}")
        items = files.discover([source], target, recursive=self.recursive.isChecked(), fmt=fmt,
                               suffix=self.suffix.text(), mask_local=plan.mask_local)
        if not items:
            return self._error(f"no images in '{source}'")
        clashes = files.collisions(items)
        if clashes:  # before any image is restored, as restorer-cli does
            return self._error(clashes[0][0])
        problem = files.check_writable(target)
        if problem:
            return self._error(problem)
        self.items = items
        self.outcome = None
        self._fill_table()
        self.summary.clear()
        # run_batch decides from the output folders' journals what is skipped, redone or refused.
        output = Output(fmt, self.quality.value(), overwrite=not self.skip_existing.isChecked())
        job = BatchJob(items, plan, output, parent=self)
        job.hook(job.itemChanged, self._update_row)
        job.hook(job.progress, self._progress)
        job.hook(job.succeeded, self._finished)
        job.hook(job.failed, lambda m: self._error(f"the batch stopped: {m}"))
        job.hook(job.ended, self._ended)
        self.job = job
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(f"{len(items)} files")
        job.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling after the current tile...")

    def _progress(self, fraction: float, left: float, text: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.status.setText(text)  # the job's line: file, step, tile, percentage, time left

    def _finished(self, outcome: BatchOutcome) -> None:
        self.outcome = outcome
        self.summary.setPlainText(summary_text(outcome))
        self.status.setText("Cancelled." if outcome.cancelled else "Finished.")

    def _ended(self) -> None:
        self.job = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _error(self, text: str) -> None:
        self.status.setText(f'<span style="color:#c0392b">{html.escape(text)}</span>')

    # ------------------------------------------------------------ the queue table

    def _fill_table(self) -> None:
        self._thumbs_done.clear()
        self.table.setRowCount(len(self.items))
        for row, item in enumerate(self.items):
            self.table.setItem(row, 0, QTableWidgetItem())
            name = QTableWidgetItem(str(item.input.name))
            name.setToolTip(f"{item.input}\n-> {item.output}")
            self.table.setItem(row, 1, name)
            for col in (2, 3, 4):
                self.table.setItem(row, col, QTableWidgetItem())
            self._update_row(row)
        self._thumb_timer.start()

    def _update_row(self, row: int) -> None:
        item = self.items[row]
        self.table.item(row, 2).setText(STATUS_TEXT.get(item.status, item.status))
        self.table.item(row, 3).setText(f"{item.seconds:.1f} s" if item.seconds else "")
        message = item.error or "; ".join(item.notes)
        self.table.item(row, 4).setText(message)
        self.table.item(row, 4).setToolTip(message)
        if item.status == "failed":
            self.table.item(row, 2).setForeground(Qt.GlobalColor.red)
        if item.status == "running":
            self.table.scrollToItem(self.table.item(row, 1))

    def visible_rows(self) -> range:
        if not self.items:
            return range(0)
        first = self.table.rowAt(0)
        last = self.table.rowAt(self.table.viewport().height() - 1)
        first = 0 if first < 0 else first
        last = len(self.items) - 1 if last < 0 else last
        return range(first, last + 1)

    def _load_visible_thumbnails(self) -> None:
        """Two thumbnails per tick, only for rows on screen: a folder of 10,000 photos
        never decodes more than what the user looks at."""
        todo = [r for r in self.visible_rows() if r not in self._thumbs_done][:2]
        if not todo:
            self._thumb_timer.stop()
            return
        for row in todo:
            self._thumbs_done.add(row)
            pixmap = thumbnail(self.items[row].input, THUMB)
            if pixmap is not None:
                self.table.item(row, 0).setIcon(QIcon(pixmap))

    def closeEvent(self, event):
        if self.job is not None:
            self.job.cancel()
        super().closeEvent(event)


def summary_text(outcome: BatchOutcome) -> str:
    counts = outcome.counts
    lines = [f"{counts.get('done', 0)} restored, {counts.get('skipped', 0)} skipped (already there), "
             f"{counts.get('failed', 0)} failed" + (f", {counts.get('cancelled', 0)} cancelled" if outcome.cancelled else "")]
    failed = [i for i in outcome.items if i.status == "failed"]
    if failed:
        lines.append("Failed:")
        lines.extend(f"  {i.input}: {i.error}" for i in failed)
    return "\n".join(lines)
