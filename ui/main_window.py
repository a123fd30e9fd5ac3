"""The main window: open a photo, choose what to do, restore it in the background, compare,
save. Importing this module must not import torch (the window has to appear fast)."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from restorer_ui.compare_view import CompareView
from restorer_ui.imageconv import Pyramid, from_qimage, to_display
from restorer_ui.jobs import CallJob, Job, LoadJob, RestoreJob, RestoreResult
from restorer_ui.request_panel import RequestPanel
from restorer_ui.settings import AppSettings, SettingsDialog

from restorer.io import imaging
from restorer.plan import request
from restorer.run.loader import RunnerCache, make_runnable
from restorer.zoo import download
from restorer.zoo.catalog import Catalog, load_catalog

OPEN_FILTER = "Images (*.png *.jpg *.jpeg *.jpe *.webp *.tif *.tiff *.bmp);;All files (*)"
SAVE_FORMATS = ("png", "jpg", "webp", "tiff", "bmp")


def format_seconds(seconds: float) -> str:
    if seconds < 0:
        return ""
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    return f"about {int(seconds // 60)} min {int(seconds % 60):02d} s left"


class SaveDialog(QDialog):
    """Where to save, in which format, at which quality."""

    def __init__(self, path: Path, fmt: str, quality: int, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Save restored image")
        form = QFormLayout(self)
        row = QHBoxLayout()
        self.path = QLineEdit(str(path))
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        form.addRow("File", row)
        self.format = QComboBox()
        for f in SAVE_FORMATS:
            self.format.addItem(f.upper() if f != "jpg" else "JPEG", f)
        self.format.setCurrentIndex(max(0, self.format.findData(fmt)))
        self.format.currentIndexChanged.connect(self._format_changed)
        form.addRow("Format", self.format)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(quality)
        form.addRow("Quality (JPEG, WebP)", self.quality)
        form.addRow(QLabel("Colour profile and EXIF of the original are kept."))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self._format_changed()

    def chosen(self) -> tuple[Path, str, int]:
        return Path(self.path.text()).expanduser(), self.format.currentData(), self.quality.value()

    def _format_changed(self) -> None:
        fmt = self.format.currentData()
        self.quality.setEnabled(fmt in ("jpg", "webp"))
        path = Path(self.path.text())
        if path.suffix.lower() and imaging.format_of(path) != fmt:
            self.path.setText(str(path.with_suffix(imaging.FORMATS[fmt][1])))

    def _browse(self) -> None:
        name, _ = QFileDialog.getSaveFileName(self, "Save as", self.path.text(), OPEN_FILTER,
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if name:
            self.path.setText(name)
            fmt = imaging.format_of(name)
            if fmt:
                self.format.setCurrentIndex(self.format.findData(fmt))


class MainWindow(QMainWindow):
    def __init__(self, settings: AppSettings | None = None, catalog: Catalog | None = None):
        super().__init__()
        from restorer_ui.icon import app_icon

        self.settings = settings or AppSettings()
        self.catalog = catalog or load_catalog()
        self.runners = RunnerCache()  # this session's loaded networks (see start_restore)
        self.source: imaging.Image | None = None
        self.source_path: Path | None = None
        self.result: imaging.Image | None = None
        self.save_path: Path | None = None
        self.save_format, self.save_quality = "png", 95
        self.job: Job | None = None  # the restore or load in progress
        self.save_job: Job | None = None
        self.batch_window = None
        self.models_window = None
        self.setWindowTitle("Restorer")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._build()
        self._build_menus()
        self._set_busy(False)
        self.resize(1280, 800)

    # ------------------------------------------------------------ layout

    def _build(self) -> None:
        side = QWidget()
        side_layout = QVBoxLayout(side)
        self.open_button = QPushButton("Open photo...")
        self.open_button.clicked.connect(self.open_dialog)
        side_layout.addWidget(self.open_button)
        self.file_label = QLabel("No photo open")
        self.file_label.setWordWrap(True)
        side_layout.addWidget(self.file_label)

        self.request = RequestPanel(self._options, self.catalog)
        self.request.planChanged.connect(lambda ok: self._set_busy(self.is_busy()))
        side_layout.addWidget(self.request)

        buttons = QHBoxLayout()
        self.restore_button = QPushButton("Restore")
        self.restore_button.setDefault(True)
        self.restore_button.clicked.connect(self.start_restore)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.restore_button, 1)
        buttons.addWidget(self.cancel_button)
        side_layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        side_layout.addWidget(self.progress)
        self.progress_label = QLabel()
        self.progress_label.setWordWrap(True)
        side_layout.addWidget(self.progress_label)
        self.eta_label = QLabel()
        side_layout.addWidget(self.eta_label)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.RichText)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        side_layout.addWidget(self.message)
        save_row = QHBoxLayout()
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save)
        self.save_as_button = QPushButton("Save as...")
        self.save_as_button.clicked.connect(self.save_as)
        save_row.addWidget(self.save_button)
        save_row.addWidget(self.save_as_button)
        side_layout.addLayout(save_row)
        side_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(300)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(2)
        bar = QHBoxLayout()
        bar.setContentsMargins(6, 4, 6, 0)
        self.mode_buttons = {}
        for mode, label in (("split", "Split"), ("side", "Side by side"), ("diff", "Difference")):
            b = QToolButton()
            b.setText(label)
            b.setCheckable(True)
            b.setAutoExclusive(True)
            b.clicked.connect(lambda _=False, m=mode: self.set_view_mode(m))
            bar.addWidget(b)
            self.mode_buttons[mode] = b
        self.mode_buttons["split"].setChecked(True)
        bar.addStretch(1)
        for label, slot in (("Fit", lambda: self.view.fit()), ("100%", lambda: self.view.actual_size()),
                            ("-", lambda: self.view.zoom_by(0.8)), ("+", lambda: self.view.zoom_by(1.25))):
            b = QToolButton()
            b.setText(label)
            b.clicked.connect(slot)
            bar.addWidget(b)
        self.zoom_label = QLabel("100%")
        self.zoom_label.setMinimumWidth(50)
        bar.addWidget(self.zoom_label)
        right_layout.addLayout(bar)
        self.view = CompareView()
        self.view.zoomChanged.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f}%"))
        right_layout.addWidget(self.view, 1)

        splitter = QSplitter()
        splitter.addWidget(scroll)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([340, 940])
        self.setCentralWidget(splitter)
        self.device_label = QLabel()
        self.statusBar().addPermanentWidget(self.device_label)
        self._show_device()

    def _build_menus(self) -> None:
        menu = self.menuBar().addMenu("&File")
        self._action(menu, "&Open...", self.open_dialog, QKeySequence.StandardKey.Open)
        self.recent_menu = menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self._action(menu, "&Paste image", self.paste, QKeySequence.StandardKey.Paste)
        menu.addSeparator()
        self.save_action = self._action(menu, "&Save", self.save, QKeySequence.StandardKey.Save)
        self.save_as_action = self._action(menu, "Save &as...", self.save_as, QKeySequence.StandardKey.SaveAs)
        menu.addSeparator()
        self._action(menu, "&Batch (folders)...", self.open_batch, "Ctrl+B")
        menu.addSeparator()
        self._action(menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        menu = self.menuBar().addMenu("&View")
        self._action(menu, "&Fit", self.view.fit, "Ctrl+0")
        self._action(menu, "&100%", self.view.actual_size, "Ctrl+1")
        self._action(menu, "Zoom &in", lambda: self.view.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        self._action(menu, "Zoom &out", lambda: self.view.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut)
        menu.addSeparator()
        group = QActionGroup(self)
        for key, (mode, label) in enumerate((("split", "&Split"), ("side", "Side &by side"), ("diff", "&Difference")), 2):
            action = self._action(menu, label, lambda _=False, m=mode: self.set_view_mode(m), f"Ctrl+{key}")
            action.setCheckable(True)
            action.setChecked(mode == "split")
            group.addAction(action)

        menu = self.menuBar().addMenu("&Tools")
        self._action(menu, "&Models...", self.open_models, "Ctrl+M")
        self._action(menu, "&Settings...", self.open_settings, QKeySequence.StandardKey.Preferences)

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _options(self, **overrides) -> request.Options:
        return self.settings.options(**overrides)

    def _show_device(self) -> None:
        self.device_label.setText(f"Device: {self.settings.device}; tile: {self.settings.tile or 'auto'}")

    # ------------------------------------------------------------ state

    def is_busy(self) -> bool:
        return self.job is not None

    def _set_busy(self, busy: bool) -> None:
        missing = self.request.missing
        self.restore_button.setEnabled(not busy and self.source is not None and (self.request.ok or missing is not None))
        self.restore_button.setText("Download and restore" if missing is not None else "Restore")
        self.restore_button.setToolTip(f"{missing.offer()}: downloaded once, then used at once" if missing else "")
        self.cancel_button.setEnabled(busy)
        self.open_button.setEnabled(not busy)
        can_save = self.result is not None and self.save_job is None
        for w in (self.save_button, self.save_as_button):
            w.setEnabled(can_save)
        if hasattr(self, "save_action"):
            self.save_action.setEnabled(can_save)
            self.save_as_action.setEnabled(can_save)

    def show_error(self, text: str) -> None:
        self.message.setText(f'<span style="color:#c0392b">{html.escape(text)}</span>')

    def show_info(self, text: str) -> None:
        self.message.setText(html.escape(text))

    def set_view_mode(self, mode: str) -> None:
        self.view.set_mode(mode)
        self.mode_buttons[mode].setChecked(True)

    # ------------------------------------------------------------ opening

    def open_dialog(self) -> None:
        start = str(self.source_path.parent) if self.source_path else ""
        name, _ = QFileDialog.getOpenFileName(self, "Open photo", start, OPEN_FILTER)
        if name:
            self.open_path(name)

    def open_path(self, path) -> None:
        if self.is_busy():
            self.show_error("wait for the current run to finish, or cancel it")
            return
        path = Path(path)
        self.show_info(f"Opening {path.name}...")
        job = LoadJob(path, self)
        job.hook(job.succeeded, lambda loaded, p=path: self._loaded(p, *loaded))
        job.hook(job.failed, self._load_failed)
        job.hook(job.ended, self._job_ended)
        self.job = job
        self._set_busy(True)
        job.start()

    def _loaded(self, path: Path | None, image: imaging.Image, pyramid: Pyramid) -> None:
        self.source, self.source_path, self.result, self.save_path = image, path, None, None
        self.view.set_before(pyramid)
        name = path.name if path else "pasted image"
        depth = f"{image.meta.bit_depth}-bit" + (" gray" if image.meta.gray else "")
        self.file_label.setText(f"<b>{html.escape(name)}</b><br>{image.width} x {image.height}, {depth}")
        self.setWindowTitle(f"{name} - Restorer")
        self.show_info(" ".join(image.meta.notes))
        self.progress.setValue(0)
        self.progress_label.clear()
        self.eta_label.clear()
        if path:
            self.settings.add_recent(str(path))

    def _load_failed(self, message: str) -> None:
        self.show_error(message)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self.open_path(p))
        if self.recent_menu.isEmpty():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def paste(self) -> None:
        data = QGuiApplication.clipboard().mimeData()
        if data is None:
            return
        if data.hasUrls() and data.urls()[0].isLocalFile():
            self.open_path(data.urls()[0].toLocalFile())
        elif data.hasImage():
            self.open_qimage(QImage(data.imageData()))
        else:
            self.show_error("the clipboard holds no image")

    def open_qimage(self, qimage: QImage) -> None:
        """An image from the clipboard: 8-bit RGB, no file, saved as PNG by default."""
        if qimage.isNull() or self.is_busy():
            return
        pixels = from_qimage(qimage).astype(np.float32) / 255.0
        image = imaging.Image(pixels, None, imaging.ImageMeta(format="png"))
        self._loaded(None, image, Pyramid.build(to_display(pixels)))
        self._set_busy(False)

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event):
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        event.acceptProposedAction()
        if paths[0].is_dir():
            self.open_batch(paths[0])
        else:
            self.open_path(paths[0])

    # ------------------------------------------------------------ restoring

    def start_restore(self) -> None:
        if self.is_busy():
            return
        if self.source is None:
            self.show_error("open a photo first")
            return
        try:
            plan = self.request.resolve_plan()
        except request.ModelMissing as e:
            # the button said "Download and restore" with the size and licence: the click is the consent
            self.download_and_restore(e.specs)
            return
        except request.RequestError as e:
            self.show_error(str(e))
            return
        # The window owns the runners: kept while the plan's models stay, released when they change.
        self.runners.keep_only({step.model for step in plan.steps})
        job = RestoreJob(self.source, plan, self.runners, self)
        job.hook(job.progress, self._progress)
        job.hook(job.note, lambda text: self.statusBar().showMessage(text, 10000))
        job.hook(job.succeeded, self._restored)
        job.hook(job.failed, lambda m: self.show_error(f"restore failed: {m}"))
        job.hook(job.cancelled, lambda: self.show_info("Cancelled; the photo is unchanged."))
        job.hook(job.ended, self._job_ended)
        self.job = job
        self.progress.setValue(0)
        self.show_info("")
        self._set_busy(True)
        job.start()

    def download_and_restore(self, specs: list) -> None:
        """Fetch what the plan lacks (with progress and cancel), make it runnable (ONNX, from
        restorer's templates), then restore."""
        if self.is_busy():
            return

        def fetch(progress):
            for spec in specs:
                download.download(spec, progress=progress)
                try:
                    make_runnable(spec)
                except Exception as e:  # noqa: BLE001 - the eager runner (with torch) may still run it
                    logging.getLogger("restorer").info("conversion of %s skipped: %s", spec.id, e)
            return [s.id for s in specs]

        job = CallJob(fetch, f"downloading {', '.join(s.id for s in specs)}", self)
        installed: list[str] = []
        job.hook(job.progress, self._progress)
        job.hook(job.succeeded, installed.extend)
        job.hook(job.failed, lambda m: self.show_error(f"download failed: {m}"))
        job.hook(job.cancelled, lambda: self.show_info("Download cancelled; the partial file is kept and "
                                                       "resumed next time."))
        job.hook(job.ended, lambda: self._download_ended(installed))
        self.job = job
        self.progress.setValue(0)
        self.show_info("")
        self._set_busy(True)
        job.start()

    def _download_ended(self, installed: list[str]) -> None:
        self._job_ended()
        if installed:
            self._models_changed()
            self.request.update_plan()  # now, not on the panel's timer: the button must say Restore
            self.statusBar().showMessage("Installed " + ", ".join(installed), 10000)
            self.start_restore()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.progress_label.setText("Cancelling after the current tile...")

    def _progress(self, fraction: float, left: float, text: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress_label.setText(text)
        self.eta_label.setText(format_seconds(left))

    def _restored(self, result: RestoreResult) -> None:
        self.result = result.image
        self.save_path = None
        self.view.set_after(result.pyramid)
        self.progress_label.setText("Done.")
        lines = [f"Restored in {result.seconds:.1f} s: {result.image.width} x {result.image.height}"]
        for r in result.reports:
            where = f" on {r.provider}" if r.provider else ""
            lines.append(f"{r.task}: {r.model} ({r.backend}{where}, {r.seconds:.1f} s)")
            lines.extend(r.notes)
        self.message.setText("<br>".join(html.escape(line) for line in lines))

    def _job_ended(self) -> None:
        self.job = None
        self.eta_label.clear()
        self._set_busy(False)

    # ------------------------------------------------------------ saving

    def default_save_path(self) -> Path:
        fmt = self.settings.output_format
        if self.source_path is not None:
            fmt = (self.source.meta.format if fmt == "same" else fmt) if self.source else "png"
            return self.source_path.with_name(self.source_path.stem + self.settings.suffix + imaging.FORMATS[fmt][1])
        fmt = "png" if fmt == "same" else fmt
        return Path.home() / f"pasted{self.settings.suffix}{imaging.FORMATS[fmt][1]}"

    def save(self) -> None:
        if self.save_path is None:
            self.save_as()
        else:
            self.write(self.save_path, self.save_format, self.save_quality)

    def save_as(self) -> None:
        if self.result is None:
            return
        path = self.save_path or self.default_save_path()
        fmt = imaging.format_of(path) or "png"
        dialog = SaveDialog(path, fmt, self.settings.quality, self)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        path, fmt, quality = dialog.chosen()
        self.write(path, fmt, quality)

    def ask(self, title: str, question: str) -> bool:
        """A yes/no question; tests replace it."""
        answer = QMessageBox.question(self, title, question, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def write(self, path: Path, fmt: str, quality: int) -> bool:
        """Save the result; the original, or any existing file, only after a yes. Returns
        whether a write was started."""
        if self.result is None:
            return False
        path = Path(path)
        if self.source_path is not None and path.exists() and path.resolve() == self.source_path.resolve():
            if not self.ask("Overwrite the original?",
                            f"{path.name} is the original photo. Replace it with the restored image? "
                            "The original cannot be recovered afterwards."):
                self.show_info("Not saved: the original was kept.")
                return False
        elif path.exists() and path != self.save_path:
            if not self.ask("Replace file?", f"{path} exists. Replace it?"):
                self.show_info("Not saved.")
                return False
        result = self.result

        def encode(progress, result=result, path=path, fmt=fmt, quality=quality):
            return imaging.save(result, path, format=fmt, quality=quality)

        job = CallJob(encode, f"saving {path.name}", self)
        job.hook(job.succeeded, lambda p: self._saved(Path(p), fmt, quality))
        job.hook(job.failed, lambda m: self.show_error(f"not saved: {m}"))
        job.hook(job.ended, self._save_ended)
        self.save_job = job
        self._set_busy(self.is_busy())
        self.statusBar().showMessage(f"Saving {path}...")
        job.start()
        return True

    def _saved(self, path: Path, fmt: str, quality: int) -> None:
        self.save_path, self.save_format, self.save_quality = path, fmt, quality
        self.statusBar().showMessage(f"Saved {path}", 10000)
        self.show_info(f"Saved {path}")

    def _save_ended(self) -> None:
        self.save_job = None
        self._set_busy(self.is_busy())

    # ------------------------------------------------------------ other windows

    def open_batch(self, folder=None) -> None:
        from restorer_ui.batch_window import BatchWindow

        if self.batch_window is None:
            self.batch_window = BatchWindow(self.settings, self.catalog, self)
        if folder:
            self.batch_window.input_edit.setText(str(folder))
        self.batch_window.show()
        self.batch_window.raise_()

    def open_models(self) -> None:
        from restorer_ui.model_manager import ModelManager

        if self.models_window is None:
            self.models_window = ModelManager(self.settings, self.catalog, self)
            self.models_window.changed.connect(self._models_changed)
        self.models_window.show()
        self.models_window.raise_()

    def _models_changed(self) -> None:
        self.request.refresh_models()
        if self.batch_window is not None:
            self.batch_window.request.refresh_models()

    def open_settings(self) -> None:
        if SettingsDialog(self.settings, self).exec() == QDialog.DialogCode.Accepted:
            self._show_device()
            self.request.schedule()

    def closeEvent(self, event):
        for job in (self.job, self.save_job):
            if job is not None:
                job.cancel()
        if self.save_job is not None and self.save_job.thread is not None:
            self.save_job.thread.join(timeout=30)  # never leave a half-written file behind
        if self.job is None:
            self.runners.clear()
        self.settings.sync()
        super().closeEvent(event)
