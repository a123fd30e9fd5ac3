"""The main window: open a photo, choose what to do, restore it in the background, compare,
save. Importing this module must not import torch (the window has to appear fast)."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np
from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QFont, QFontMetrics, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from restorer_ui.batch_window import summary_text
from restorer_ui.candidates_view import CandidatesView
from restorer_ui.compare_view import CompareView
from restorer_ui.imageconv import Pyramid, from_qimage, to_display
from restorer_ui.jobs import CallJob, Job, LoadJob, PreviewJob, PreviewResult, RestoreJob, RestoreResult
from restorer_ui.queue_panel import QueuePanel
from restorer_ui.request_panel import Candidate, RequestPanel
from restorer_ui.settings import VIEW_MODES, AppSettings, SettingsDialog, apply_theme

from restorer.batch.loop import Output
from restorer.io import imaging
from restorer.plan import request
from restorer.run.loader import RunnerCache, make_runnable
from restorer.tasks import TASKS
from restorer.zoo import download
from restorer.zoo.catalog import Catalog, load_catalog

OPEN_FILTER = "Images (*.png *.jpg *.jpeg *.jpe *.webp *.tif *.tiff *.bmp);;All files (*)"
SAVE_FORMATS = ("png", "jpg", "webp", "tiff", "bmp")
PREVIEW_SIDE = 512  # the default preview region: a square this many image pixels wide, at the centre
PREVIEW_DELAY_MS = 250  # a change re-runs the preview once it has rested this long
SIDE_WIDTH = 360
MESSAGE_LINES = 4  # the message box's height, in lines; longer messages scroll inside it
NO_ZOOM = "—"
MODE_LABELS = {"split": "Slider", "side": "Side by side", "diff": "Difference"}
MODE_KEYS = {"split": "Ctrl+2", "side": "Ctrl+3", "diff": "Ctrl+4"}
# A little on top of Fusion: the Restore button stands out, the bars are set apart.
STYLE = """
QPushButton#primary { font-weight: bold; padding: 5px 14px; border-radius: 4px;
    background: palette(highlight); color: palette(highlighted-text); border: 1px solid palette(dark); }
QPushButton#primary:disabled { background: palette(button); color: #8a8a8a; border: 1px solid palette(mid); }
QPushButton#primary:pressed { background: palette(dark); }
QToolButton:checked { background: palette(highlight); color: palette(highlighted-text);
    border: 1px solid palette(dark); border-radius: 3px; padding: 3px 8px; }
QPushButton#preview:checked { background: palette(base); border: 2px solid palette(highlight); border-radius: 4px;
    padding: 4px 12px; font-weight: bold; }
QFrame#actionBar { border-top: 1px solid palette(mid); }
QWidget#viewBar { border-bottom: 1px solid palette(mid); }
QLabel#heading { font-weight: bold; }
"""


def _box(rect: QRectF) -> tuple[int, int, int, int]:
    """A region in image pixels as restore_region takes it: (x0, y0, x1, y1)."""
    return int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom())


def face_marks(reports, scale: float) -> list[tuple[QRectF, str, bool]]:
    """The faces a face step found, as outlines on the original (`scale`: original size over
    the size the step ran at): "Face 2" where restored, the reason where left alone."""
    marks = []
    for report in reports:
        faces = [stage for stage in report.stages if "box" in stage and stage.get("stage", "").startswith("face-")]
        for k, face in enumerate(faces, 1):
            x0, y0, x1, y1 = (v * scale for v in face["box"])
            label = f"Face {k}" if face.get("restored") else f"Face {k}: {face.get('reason', 'left as it was')}"
            marks.append((QRectF(x0, y0, x1 - x0, y1 - y0), label, bool(face.get("restored"))))
    return marks


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
    """Layout: the side panel (`side`) holds the photo's name, the request in a scroll area
    (`controls_area`) and a fixed bar at the bottom (`action_bar`: strength, Preview /
    Restore / Cancel in `actions_layout`, progress, messages, Save), so what grows above never
    moves a button under the pointer. The right side is a vertical splitter (`view_splitter`)
    whose first pane is the view bar over a stack of views (`view_stack`: the photo's
    CompareView, and the CandidatesView of a comparison), the second the queue (`queue_area`,
    shown once files are queued)."""

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
        # Region preview: one job at a time; a change while it runs asks for one more run.
        self.preview_job: PreviewJob | None = None
        self.preview_result: PreviewResult | None = None
        self.preview_runs = 0  # preview jobs started
        self._preview_key: tuple | None = None  # (plan, box) of the preview shown
        self._preview_again = False
        self._restore_after_preview = False
        self._restoring_key: str | None = None  # the plan of the restore running, then of self.result
        self._result_key: str | None = None
        # Comparison: the candidates, the region they run on, the next one to run.
        self.compare_list: list[Candidate] = []
        self._compare_box: tuple[int, int, int, int] | None = None
        self._compare_next = 0
        self._compare_after_preview: tuple | None = None  # (kind, texts) waiting for a preview to stop
        self._use_after_candidate: int | None = None  # picked while another candidate still ran
        self._preview_timer = QTimer(self, singleShot=True, interval=PREVIEW_DELAY_MS)
        self._preview_timer.timeout.connect(self.run_preview)
        self.setWindowTitle("Restorer")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        apply_theme(self.settings.theme)
        self._build()
        self._build_menus()
        self._restore_settings()
        self._set_busy(False)

    # ------------------------------------------------------------ layout

    def _build(self) -> None:
        self.setStyleSheet(STYLE)
        self.side = QWidget()
        self.side.setObjectName("sidePanel")
        self.side.setMinimumWidth(SIDE_WIDTH - 40)
        self.side_layout = QVBoxLayout(self.side)
        self.side_layout.setContentsMargins(10, 10, 10, 8)
        self.side_layout.setSpacing(8)

        header = QHBoxLayout()
        self.open_button = QPushButton("Open photo…")
        self.open_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_DialogOpenButton))
        self.open_button.setToolTip("Open a photo (Ctrl+O); or drop one on the window, or paste it (Ctrl+V); "
                                    "several photos or a folder go to the queue")
        self.open_button.clicked.connect(self.open_dialog)
        header.addWidget(self.open_button)
        header.addStretch(1)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Run 2-4 variants on the preview region and see them side by side")
        self.compare_menu = QMenu(self.compare_button)
        self.compare_menu.addAction("Strengths (30, 60, 100 %)", lambda: self.compare("strength"))
        self.compare_menu.addAction("Installed models for this task", lambda: self.compare("model"))
        self.compare_menu.addAction("Instructions…", self.compare_instructions)
        self.compare_button.setMenu(self.compare_menu)
        header.addWidget(self.compare_button)
        self.side_layout.addLayout(header)
        self.file_label = QLabel("No photo open")
        self.file_label.setTextFormat(Qt.TextFormat.RichText)
        # Ignored: a long file name must not widen the panel (the tooltip keeps it whole)
        self.file_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.side_layout.addWidget(self.file_label)

        self.request = RequestPanel(self._options, self.catalog, strength_in_form=False)
        self.request.planChanged.connect(self._plan_changed)
        self.controls_area = QScrollArea()
        self.controls_area.setWidget(self.request)
        self.controls_area.setWidgetResizable(True)
        self.controls_area.setFrameShape(QFrame.Shape.NoFrame)
        self.controls_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.side_layout.addWidget(self.controls_area, 1)
        # One switch per face a face step found: turning one off restores again without it.
        self.faces_row = QWidget()
        self.faces_layout = QHBoxLayout(self.faces_row)
        self.faces_layout.setContentsMargins(0, 0, 0, 0)
        self.faces_row.setVisible(False)
        self.face_switches: list[QCheckBox] = []
        self.kept_faces: set[int] = set()  # indices (from 0) of faces left as they were
        self.side_layout.addWidget(self.faces_row)
        self.side_layout.addWidget(self._build_action_bar())

        self.view_bar = self._build_view_bar()
        self.view = CompareView()
        self.view.zoomChanged.connect(self._zoom_changed)
        self.view.previewRectMoved.connect(self._preview_rect_moved)
        self.candidates = CandidatesView()
        self.candidates.zoomChanged.connect(self._zoom_changed)
        self.candidates.chosen.connect(self.use_candidate)
        self.view_stack = QStackedWidget()
        self.view_stack.addWidget(self.view)
        self.view_stack.addWidget(self.candidates)
        view_area = QWidget()
        view_layout = QVBoxLayout(view_area)
        view_layout.setContentsMargins(0, 0, 0, 0)
        view_layout.setSpacing(0)
        view_layout.addWidget(self.view_bar)
        view_layout.addWidget(self.view_stack, 1)
        self.view_splitter = QSplitter(Qt.Orientation.Vertical)
        self.view_splitter.setChildrenCollapsible(False)
        self.view_splitter.addWidget(view_area)
        self.view_splitter.addWidget(self._build_queue_area())
        self.view_splitter.setStretchFactor(0, 3)
        self.view_splitter.setStretchFactor(1, 1)

        self.splitter = QSplitter()
        self.splitter.addWidget(self.side)
        self.splitter.addWidget(self.view_splitter)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setCollapsible(0, False)
        self.splitter.setSizes([SIDE_WIDTH, 1280 - SIDE_WIDTH])
        self.setCentralWidget(self.splitter)
        self.device_label = QLabel()
        self.statusBar().addPermanentWidget(self.device_label)
        self._show_device()
        self._zoom_changed(self.view.zoom)

    def _build_action_bar(self) -> QFrame:
        """The bottom of the side panel, of fixed height: nothing above it moves what is in it."""
        self.action_bar = QFrame()
        self.action_bar.setObjectName("actionBar")
        self.action_bar.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.action_layout = QVBoxLayout(self.action_bar)
        self.action_layout.setContentsMargins(0, 8, 0, 0)
        self.action_layout.setSpacing(6)
        self.action_layout.addWidget(self.request.strength_row)

        self.actions_layout = QHBoxLayout()
        self.preview_button = QPushButton("Preview")
        self.preview_button.setObjectName("preview")
        self.preview_button.setCheckable(True)
        bold = QFont(self.preview_button.font())
        bold.setBold(True)
        # room for its bold checked text, in a width that never changes: Restore beside it stays put
        self.preview_button.setFixedWidth(QFontMetrics(bold).horizontalAdvance("Preview") + 40)
        self.preview_button.setToolTip("Try the plan on the region in the dashed outline only (P); drag the outline "
                                       "to move it, Shift-drag to draw another")
        self.restore_button = QPushButton("Restore")
        self.restore_button.setObjectName("primary")
        self.restore_button.setDefault(True)
        self.restore_button.clicked.connect(self.start_restore)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.actions_layout.addWidget(self.preview_button)
        self.actions_layout.addWidget(self.restore_button, 1)
        self.actions_layout.addWidget(self.cancel_button)
        self.action_layout.addLayout(self.actions_layout)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(8)
        self.action_layout.addWidget(self.progress)
        # What runs, in words: step, tile, percentage and time left (the job's one line, as the
        # CLI prints it). Two lines of fixed height: a long text wraps, the buttons stay put.
        self.progress_label = QLabel()
        self.progress_label.setWordWrap(True)
        self.progress_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.progress_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.progress_label.setFixedHeight(self.fontMetrics().lineSpacing() * 2 + 2)
        self.action_layout.addWidget(self.progress_label)

        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.RichText)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.message_area = QScrollArea()
        self.message_area.setWidget(self.message)
        self.message_area.setWidgetResizable(True)
        self.message_area.setFrameShape(QFrame.Shape.NoFrame)
        self.message_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.message_area.setFixedHeight(self.fontMetrics().lineSpacing() * MESSAGE_LINES + 4)
        self.action_layout.addWidget(self.message_area)

        save_row = QHBoxLayout()
        self.save_button = QPushButton("Save")
        self.save_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_DialogSaveButton))
        self.save_button.clicked.connect(self.save)
        self.save_as_button = QPushButton("Save as…")
        self.save_as_button.clicked.connect(self.save_as)
        save_row.addWidget(self.save_button, 1)
        save_row.addWidget(self.save_as_button, 1)
        self.action_layout.addLayout(save_row)
        return self.action_bar

    def _build_queue_area(self) -> QWidget:
        """The queue under the view: several photos restored with the current plan."""
        self.queue = QueuePanel()
        self.queue.started.connect(lambda: self._queue_running(True))
        self.queue.finished.connect(self._queue_finished)
        self.queue_area = QWidget()
        layout = QVBoxLayout(self.queue_area)
        layout.setContentsMargins(8, 6, 8, 6)
        head = QHBoxLayout()
        title = QLabel("Queue")
        title.setObjectName("heading")
        self.queue_start_button = QPushButton("Restore all")
        self.queue_start_button.setToolTip("Restore every queued photo with the current plan; each is saved "
                                           "beside its original, as the batch names it")
        self.queue_start_button.clicked.connect(self.start_queue)
        self.queue_cancel_button = QPushButton("Cancel")
        self.queue_cancel_button.clicked.connect(self.queue.cancel)
        self.queue_cancel_button.setEnabled(False)
        hide = QToolButton()
        hide.setText("Hide")
        hide.clicked.connect(lambda: self.queue_area.setVisible(False))
        for widget in (title, self.queue_start_button, self.queue_cancel_button):
            head.addWidget(widget)
        head.addStretch(1)
        head.addWidget(hide)
        layout.addLayout(head)
        layout.addWidget(self.queue, 1)
        self.queue_area.setVisible(False)
        return self.queue_area

    def _build_view_bar(self) -> QWidget:
        bar = QWidget()
        bar.setObjectName("viewBar")
        row = QHBoxLayout(bar)
        row.setContentsMargins(8, 4, 8, 4)
        row.setSpacing(2)
        self.mode_buttons = {}
        for mode in VIEW_MODES:
            b = QToolButton()
            b.setText(MODE_LABELS[mode])
            b.setCheckable(True)
            b.setAutoExclusive(True)
            b.setToolTip(f"{MODE_LABELS[mode]} ({MODE_KEYS[mode]}; C cycles)")
            b.clicked.connect(lambda _=False, m=mode: self.set_view_mode(m))
            row.addWidget(b)
            self.mode_buttons[mode] = b
        self.mode_buttons["split"].setChecked(True)
        # while candidates are compared the photo's view modes do not apply: this takes their place
        self.back_button = QToolButton()
        self.back_button.setText("← Back to the photo")
        self.back_button.clicked.connect(self.show_photo)
        self.back_button.setVisible(False)
        row.addWidget(self.back_button)
        row.addStretch(1)
        self.zoom_buttons = []
        for label, tip, slot in (("Fit", "Fit the photo (Ctrl+0)", lambda: self.shown_view().fit()),
                                 ("100%", "One image pixel per screen pixel (Ctrl+1)",
                                  lambda: self.shown_view().actual_size()),
                                 ("−", "Zoom out (Ctrl+-)", lambda: self.shown_view().zoom_by(0.8)),
                                 ("+", "Zoom in (Ctrl++)", lambda: self.shown_view().zoom_by(1.25))):
            b = QToolButton()
            b.setText(label)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            row.addWidget(b)
            self.zoom_buttons.append(b)
        self.zoom_label = QLabel(NO_ZOOM)
        self.zoom_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.zoom_label.setFixedWidth(self.fontMetrics().horizontalAdvance("3200%") + 12)
        row.addWidget(self.zoom_label)
        return bar

    def _build_menus(self) -> None:
        menu = self.menuBar().addMenu("&File")
        self.open_action = self._action(menu, "&Open…", self.open_dialog, "Ctrl+O")
        self.recent_menu = menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self._action(menu, "&Paste image", self.paste, QKeySequence.StandardKey.Paste)
        menu.addSeparator()
        self.save_action = self._action(menu, "&Save", self.save, "Ctrl+S")
        self.save_as_action = self._action(menu, "Save &as…", self.save_as, "Ctrl+Shift+S")
        menu.addSeparator()
        self._action(menu, "Add to the &queue…", self.add_to_queue_dialog, "Ctrl+Shift+O")
        self._action(menu, "&Batch (folders)…", self.open_batch, "Ctrl+B")
        menu.addSeparator()
        self._action(menu, "&Quit", self.close, "Ctrl+Q")

        menu = self.menuBar().addMenu("&Restore")
        self.preview_action = self._action(menu, "&Preview region", None, "P")
        self.preview_action.setCheckable(True)
        self.preview_action.toggled.connect(self.set_preview)
        # the button and the action are one switch
        self.preview_button.toggled.connect(self.preview_action.setChecked)
        self.preview_action.toggled.connect(self.preview_button.setChecked)
        self.restore_action = self._action(menu, "&Restore the whole photo", self.start_restore, "Ctrl+Return")
        self.restore_action.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
        self.cancel_action = self._action(menu, "&Cancel", self.cancel, "Esc")

        menu = self.menuBar().addMenu("&View")
        self.fit_action = self._action(menu, "&Fit", lambda: self.shown_view().fit(), "Ctrl+0")
        self.actual_size_action = self._action(menu, "&100%", lambda: self.shown_view().actual_size(), "Ctrl+1")
        self.zoom_in_action = self._action(menu, "Zoom &in", lambda: self.shown_view().zoom_by(1.25), "Ctrl++")
        self.zoom_in_action.setShortcuts([QKeySequence("Ctrl++"), QKeySequence("Ctrl+=")])
        self.zoom_out_action = self._action(menu, "Zoom &out", lambda: self.shown_view().zoom_by(0.8), "Ctrl+-")
        menu.addSeparator()
        group = QActionGroup(self)
        self.mode_actions = {}
        for mode in VIEW_MODES:
            action = self._action(menu, MODE_LABELS[mode], lambda _=False, m=mode: self.set_view_mode(m),
                                  MODE_KEYS[mode])
            action.setCheckable(True)
            action.setChecked(mode == "split")
            group.addAction(action)
            self.mode_actions[mode] = action
        self.cycle_view_action = self._action(menu, "&Next comparison", self.cycle_view_mode, "C")
        menu.addSeparator()
        themes = menu.addMenu("&Theme")
        group = QActionGroup(self)
        self.theme_actions = {}
        for theme, label in (("system", "Follow the &system"), ("light", "&Light"), ("dark", "&Dark")):
            action = themes.addAction(label)
            action.setCheckable(True)
            action.triggered.connect(lambda _=False, t=theme: self.set_theme(t))
            group.addAction(action)
            self.theme_actions[theme] = action
        self.theme_actions[self.settings.theme].setChecked(True)

        menu = self.menuBar().addMenu("&Tools")
        self._action(menu, "&Models…", self.open_models, "Ctrl+M")
        self._action(menu, "&Settings…", self.open_settings, "Ctrl+,")

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if slot is not None:
            action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _options(self, **overrides) -> request.Options:
        return self.settings.options(**overrides)

    def _show_device(self) -> None:
        self.device_label.setText(f"Device: {self.settings.device}; tile: {self.settings.tile or 'auto'}")

    # ------------------------------------------------------------ what is remembered

    def _restore_settings(self) -> None:
        """The window as it was left: size and place, the request, the strength, the view."""
        if not self.restoreGeometry(self.settings.geometry):
            self.resize(1280, 800)
        self.set_view_mode(self.settings.view_mode)
        self.request.set_strength(self.settings.strength)
        last = self.settings.last_request
        if last["mode"] == "instruction" and last["instruction"].strip():
            self.request.set_instruction(last["instruction"])
        elif last["task"] in TASKS:
            self.request.set_task(last["task"], last["model"])

    def _remember_request(self) -> None:
        r = self.request
        r_model = r.model.currentData() or ""
        self.settings.remember_request(r.mode, r.task.currentData(), r_model, r.instruction.text())
        value = r.strength_value()
        self.settings.strength = None if value is None else round(value * 100)

    def set_theme(self, theme: str) -> None:
        self.settings.theme = theme
        apply_theme(theme)
        self.theme_actions[theme].setChecked(True)

    # ------------------------------------------------------------ state

    def is_busy(self) -> bool:
        return self.job is not None

    def _set_busy(self, busy: bool) -> None:
        missing = self.request.missing
        can_restore = not busy and self.source is not None and (self.request.ok or missing is not None)
        self.restore_button.setEnabled(can_restore)
        self.restore_button.setText("Download and restore" if missing is not None else "Restore")
        self.restore_button.setToolTip(f"{missing.offer()}: downloaded once, then used at once" if missing
                                       else "Run the plan on the whole photo (Ctrl+Enter)")
        can_cancel = busy or self.preview_job is not None
        self.cancel_button.setEnabled(can_cancel)
        self.open_button.setEnabled(not busy)
        self.preview_button.setEnabled(self.source is not None)
        self.faces_row.setEnabled(not busy)
        self.compare_button.setEnabled(self.source is not None and not busy)
        can_save = self.result is not None and self.save_job is None
        for w in (self.save_button, self.save_as_button):
            w.setEnabled(can_save)
        if hasattr(self, "save_action"):
            self.save_action.setEnabled(can_save)
            self.save_as_action.setEnabled(can_save)
            self.restore_action.setEnabled(can_restore)
            self.cancel_action.setEnabled(can_cancel)
            self.preview_action.setEnabled(self.source is not None)
            for action in (self.fit_action, self.actual_size_action, self.zoom_in_action, self.zoom_out_action):
                action.setEnabled(self.view.has_image())
        for b in self.zoom_buttons:
            b.setEnabled(self.view.has_image())

    def show_error(self, text: str) -> None:
        self.message.setText(f'<span style="color:#c0392b">{html.escape(text)}</span>')

    def show_info(self, text: str) -> None:
        self.message.setText(html.escape(text))

    def set_view_mode(self, mode: str) -> None:
        self.view.set_mode(mode)
        self.mode_buttons[mode].setChecked(True)
        if hasattr(self, "mode_actions"):
            self.mode_actions[mode].setChecked(True)
        self.settings.view_mode = mode

    def cycle_view_mode(self) -> None:
        """Slider -> side by side -> difference -> slider (C)."""
        self.set_view_mode(VIEW_MODES[(VIEW_MODES.index(self.view.mode) + 1) % len(VIEW_MODES)])

    def _zoom_changed(self, zoom: float) -> None:
        # no photo: no zoom to speak of (a 1x1 canvas would read 3200%)
        self.zoom_label.setText(f"{zoom * 100:.0f}%" if self.view.has_image() else NO_ZOOM)

    def _plan_changed(self, ok: bool) -> None:
        self._set_busy(self.is_busy())
        self._remember_request()
        if self.preview_action.isChecked():
            self._preview_timer.start()  # debounced: a slider drag re-runs once it rests

    # ------------------------------------------------------------ region preview

    def default_preview_rect(self) -> QRectF:
        """A PREVIEW_SIDE square at the centre of the photo, cut to the photo."""
        w, h = min(PREVIEW_SIDE, self.source.width), min(PREVIEW_SIDE, self.source.height)
        return QRectF((self.source.width - w) // 2, (self.source.height - h) // 2, w, h)

    def preview_box(self) -> tuple[int, int, int, int] | None:
        """The preview region as restore_region takes it: (x0, y0, x1, y1), x1 and y1 exclusive."""
        r = self.view.preview_rect()
        return None if r is None else _box(r)

    def set_preview(self, on: bool) -> None:
        """Preview on: the region's outline on the photo and the plan run on it alone, again
        whenever the plan or the region changes. Off: the outline and the preview go."""
        if on and self.source is None:
            self.preview_action.setChecked(False)
            self.show_error("open a photo first")
            return
        if not on:
            self._stop_preview()
            return
        if self.view.preview_rect() is None:
            rect = self.default_preview_rect()
            self.view.set_preview_rect(rect)
            if self.view.zoom * self.view.image_scale() < 1.0:  # the photo is shown reduced: see the region as it is
                self.view.show_region(rect)
        self.run_preview()

    def _stop_preview(self) -> None:
        self._preview_timer.stop()
        self._preview_again = False
        if self.preview_job is not None:
            self.preview_job.cancel()
        self.preview_result, self._preview_key = None, None
        self.view.set_preview_result(None)
        self.view.set_preview_rect(None)
        self._set_busy(self.is_busy())

    def _preview_rect_moved(self, rect: QRectF) -> None:
        if self.preview_action.isChecked():
            self._preview_timer.start()

    def run_preview(self) -> None:
        """Run the current plan on the preview region (PreviewJob), unless that is what is shown."""
        self._preview_timer.stop()
        box = self.preview_box()
        if not self.preview_action.isChecked() or self.source is None or box is None or self.is_busy():
            return  # a load or restore ending schedules the preview again
        if self.preview_job is not None:  # one at a time: the newest request runs when this one ends
            self._preview_again = True
            self.preview_job.cancel()
            return
        try:
            plan = self.request.resolve_plan()
        except request.ModelMissing as e:
            self.show_info(f"The preview needs a download first ({e.offer()}): press Download and restore.")
            return
        except request.RequestError:
            return  # the plan box says what is wrong
        plan_key = repr(plan.entries())
        if self.result is not None and plan_key == self._result_key:
            # the whole photo was restored with this plan: the after side already shows it
            self.preview_result, self._preview_key = None, None
            self.view.set_preview_result(None)
            return
        key = (plan_key, box)
        if key == self._preview_key and self.preview_result is not None:
            return
        self.runners.keep_only({step.model for step in plan.steps})
        job = PreviewJob(self.source, plan, self.runners, box, self)
        source = self.source
        job.hook(job.progress, lambda fraction, left, text: self.progress_label.setText(text))
        job.hook(job.succeeded, lambda result, key=key, source=source: self._previewed(result, key, source))
        job.hook(job.failed, lambda m: self.show_error(f"preview failed: {m}"))
        job.hook(job.ended, self._preview_ended)
        self.preview_job = job
        self.preview_runs += 1
        self._set_busy(self.is_busy())
        job.start()

    def _previewed(self, result: PreviewResult, key: tuple, source) -> None:
        if source is not self.source or not self.preview_action.isChecked():
            return  # another photo was opened, or the preview turned off, meanwhile
        self.preview_result, self._preview_key = result, key
        x0, y0, x1, y1 = result.box
        self.view.set_preview_result(result.pyramid, QRectF(x0, y0, x1 - x0, y1 - y0))
        self.progress_label.setText(f"Preview: {x1 - x0} x {y1 - y0} in {result.seconds:.1f} s")
        self.show_info("The outlined region shows the plan's result (drag the divider across it to compare). "
                       "Restore runs it on the whole photo.")

    def _preview_ended(self) -> None:
        self.preview_job = None
        if self._compare_after_preview is not None:
            kind, texts = self._compare_after_preview
            self._compare_after_preview = None
            self.compare(kind, texts)
        elif self._restore_after_preview:
            self._restore_after_preview = False
            self.start_restore()
        elif self._preview_again:
            self._preview_again = False
            self.run_preview()
        self._set_busy(self.is_busy())

    # ------------------------------------------------------------ comparing candidates

    def shown_view(self):
        """The view on screen: the photo's, or the comparison's (both zoom alike)."""
        return self.view_stack.currentWidget()

    def compare_instructions(self) -> None:
        current = self.request.instruction.text().strip()
        text, ok = QInputDialog.getMultiLineText(self, "Compare instructions",
                                                 "Two to four instructions, one per line:", current)
        if ok:
            self.compare("instruction", text.splitlines())

    def compare(self, kind: str, texts=()) -> None:
        """Run 2-4 variants of the request (`kind`: strength, model or instruction; see
        RequestPanel.candidates) on the preview region, one after the other, and show them
        beside the original; "Use this" restores the whole photo with that one."""
        if self.source is None:
            self.show_error("open a photo first")
            return
        if self.is_busy():
            return
        try:
            found = self.request.candidates(kind, texts)
        except request.ModelMissing as e:
            self.show_error(f"a candidate needs a download first ({e.offer()})")
            return
        except request.RequestError as e:
            self.show_error(str(e))
            return
        if self.preview_job is not None:  # they share the runners: start once the preview stopped
            self._compare_after_preview, self._preview_again = (kind, list(texts)), False
            self.preview_job.cancel()
            return
        box = self.preview_box() or _box(self.default_preview_rect())
        x0, y0, x1, y1 = box
        alpha = None if self.source.alpha is None else self.source.alpha[y0:y1, x0:x1]
        self.candidates.set_original(Pyramid.build(to_display(self.source.pixels[y0:y1, x0:x1], alpha)),
                                     f"Original ({x1 - x0} x {y1 - y0})")
        self.candidates.set_candidates([(c.label, None) for c in found])
        self.compare_list, self._compare_box, self._compare_next = found, box, 0
        self.runners.keep_only({step.model for c in found for step in c.plan.steps})
        self._show_comparison(True)
        self.show_info(f"Comparing {len(found)} candidates on the region; \"Use this\" restores the whole "
                       "photo with one.")
        self._run_next_candidate()

    def _run_next_candidate(self) -> None:
        i, n = self._compare_next, len(self.compare_list)
        if i >= n or self.view_stack.currentWidget() is not self.candidates:
            return
        self._compare_next += 1
        candidate = self.compare_list[i]
        job = PreviewJob(self.source, candidate.plan, self.runners, self._compare_box, self)

        def progress(fraction: float, left: float, text: str, i=i) -> None:
            self._progress((i + fraction) / n, -1.0, f"Candidate {i + 1} of {n}, {candidate.label}: {text}")

        job.hook(job.progress, progress)
        job.hook(job.succeeded, lambda result, i=i: self.candidates.set_candidate(i, result.pyramid))
        job.hook(job.failed, lambda m, i=i: self.candidates.set_candidate_error(i, m))
        job.hook(job.cancelled, lambda: self.show_info("Comparison stopped."))
        job.hook(job.ended, lambda job=job: self._candidate_ended(job))
        self.job = job
        self._set_busy(True)
        job.start()

    def _candidate_ended(self, job) -> None:
        self._job_ended()
        if self._use_after_candidate is not None:
            index, self._use_after_candidate = self._use_after_candidate, None
            self.use_candidate(index)
        elif not job.cancel_event.is_set():
            if self._compare_next >= len(self.compare_list):
                self.progress_label.setText(f"Compared {len(self.compare_list)} candidates.")
            self._run_next_candidate()

    def show_photo(self) -> None:
        """Leave the comparison (what still runs of it stops)."""
        if self.job is not None and isinstance(self.job, PreviewJob):
            self.job.cancel()
        self._show_comparison(False)

    def _show_comparison(self, on: bool) -> None:
        self.view_stack.setCurrentWidget(self.candidates if on else self.view)
        self.back_button.setVisible(on)
        for button in self.mode_buttons.values():
            button.setVisible(not on)
        self._zoom_changed(self.shown_view().zoom)

    def use_candidate(self, index: int) -> None:
        """The user's pick: the request becomes that variant, and the whole photo is restored."""
        if not 0 <= index < len(self.compare_list):
            return
        if isinstance(self.job, PreviewJob):  # the candidates still running are not needed now
            self._use_after_candidate = index
            self.job.cancel()
            return
        if self.is_busy():
            return
        self.compare_list[index].choose()
        self.show_photo()
        self.start_restore()

    def _show_face_switches(self, marks: list) -> None:
        for box in self.face_switches:
            box.deleteLater()
        self.face_switches = []
        for k, (_, label, done) in enumerate(marks):
            box = QCheckBox(f"Face {k + 1}")
            box.setChecked(done)
            box.setEnabled(done or k in self.kept_faces)  # a face too small or outside stays off
            box.setToolTip(label)
            box.toggled.connect(lambda on, k=k: self.switch_face(k, on))
            self.faces_layout.addWidget(box)
            self.face_switches.append(box)
        self.faces_row.setVisible(bool(marks))

    def switch_face(self, index: int, on: bool) -> None:
        """Restore face `index` (from 0) or leave it as it was, and restore the photo again."""
        (self.kept_faces.discard if on else self.kept_faces.add)(index)
        self.start_restore()

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
        if self.preview_job is not None:
            self.preview_job.cancel()  # it was for the photo being replaced
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
        self.kept_faces.clear()
        self._show_face_switches([])
        self._result_key, self.preview_result, self._preview_key = None, None, None
        self.view.set_before(pyramid)  # fitted; any region and preview of the last photo go
        if self.preview_action.isChecked():
            self.view.set_preview_rect(self.default_preview_rect())
            self._preview_timer.start()
        name = path.name if path else "pasted image"
        depth = f"{image.meta.bit_depth}-bit" + (" gray" if image.meta.gray else "")
        shown = self.fontMetrics().elidedText(name, Qt.TextElideMode.ElideMiddle, SIDE_WIDTH - 40)
        self.file_label.setText(f"<b>{html.escape(shown)}</b><br>{image.width} x {image.height}, {depth}")
        self.file_label.setToolTip(str(path) if path else "")
        self.setWindowTitle(f"{name} - Restorer")
        self.show_info(" ".join(image.meta.notes))
        self.progress.setValue(0)
        self.progress_label.clear()
        if path:
            self.settings.add_recent(str(path))

    def _load_failed(self, message: str) -> None:
        self.show_error(message)

    def _fill_recent(self) -> None:
        """The photos opened last, newest first; one that is gone is shown, greyed."""
        self.recent_menu.clear()
        for path in self.settings.recent:
            p = Path(path)
            action = self.recent_menu.addAction(f"{p.name}  —  {p.parent}")
            action.setToolTip(path)
            action.setEnabled(p.is_file())
            action.triggered.connect(lambda _=False, p=path: self.open_path(p))
        if self.recent_menu.isEmpty():
            self.recent_menu.addAction("(none)").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear the list", self.settings.clear_recent)

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
        if len(paths) == 1 and not paths[0].is_dir():
            self.open_path(paths[0])
        else:  # several photos, or a folder: into the queue
            self.add_to_queue(paths)

    # ------------------------------------------------------------ the queue

    def add_to_queue(self, paths) -> int:
        added = self.queue.add_paths(paths)
        self.queue_area.setVisible(True)
        if not added:
            self.show_info("Nothing new to queue: no image there, or already queued.")
        return added

    def add_to_queue_dialog(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Add photos to the queue", "", OPEN_FILTER)
        if names:
            self.add_to_queue(names)

    def start_queue(self) -> None:
        """Every queued photo with the current plan, written as the batch writes (names,
        journal, atomic files) beside each original."""
        try:
            plan = self.request.resolve_plan()
        except request.ModelMissing as e:
            self.show_error(f"the plan needs a download first ({e.offer()}): restore one photo to get it")
            return
        except request.RequestError as e:
            self.show_error(str(e))
            return
        output = Output(self.settings.output_format, self.settings.quality)
        if not self.queue.start(plan, output, folder=None, suffix=self.settings.suffix):
            self.show_info("The queue is empty: drop photos or a folder on the window.")

    def _queue_running(self, running: bool) -> None:
        self.queue_start_button.setEnabled(not running)
        self.queue_cancel_button.setEnabled(running)

    def _queue_finished(self, outcome) -> None:
        self._queue_running(False)
        self.show_info(summary_text(outcome))

    # ------------------------------------------------------------ restoring

    def start_restore(self) -> None:
        if self.is_busy():
            return
        if self.source is None:
            self.show_error("open a photo first")
            return
        if self.preview_job is not None:
            # the two share the runners: the restore starts once the preview has stopped
            self._restore_after_preview, self._preview_again = True, False
            self.preview_job.cancel()
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
        for step in plan.steps:
            if step.task == "faces" and self.kept_faces:
                step.options["keep_faces"] = sorted(self.kept_faces)
        self._restoring_key = repr(plan.entries())
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
        elif self.preview_job is not None:
            self._preview_again = self._restore_after_preview = False
            self.preview_job.cancel()

    def _progress(self, fraction: float, left: float, text: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress_label.setText(text)

    def _restored(self, result: RestoreResult) -> None:
        self.result = result.image
        self.save_path = None
        self._result_key = self._restoring_key
        self.preview_result, self._preview_key = None, None
        self.view.set_preview_result(None)  # the whole result now shows what the preview did
        self.view.set_after(result.pyramid)
        marks = face_marks(result.reports, self.source.width / max(1, result.image.width))
        self.view.set_marks(marks)
        self._show_face_switches(marks)
        self.progress_label.setText("Done.")
        lines = [f"Restored in {result.seconds:.1f} s: {result.image.width} x {result.image.height}"]
        for r in result.reports:
            where = f" on {r.provider}" if r.provider else ""
            lines.append(f"{r.task}: {r.model} ({r.backend}{where}, {r.seconds:.1f} s)")
            lines.extend(r.notes)
        self.message.setText("<br>".join(html.escape(line) for line in lines))

    def _job_ended(self) -> None:
        self.job = None
        self._set_busy(False)
        if self.preview_action.isChecked():
            self._preview_timer.start()  # what changed while it ran

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
            self.set_theme(self.settings.theme)
            self.request.schedule()

    def closeEvent(self, event):
        self._preview_timer.stop()
        self.queue.cancel()
        for job in (self.job, self.save_job, self.preview_job):
            if job is not None:
                job.cancel()
        if self.preview_job is not None and self.preview_job.thread is not None:
            self.preview_job.thread.join(timeout=10)  # it uses the runners cleared below
        self.settings.geometry = self.saveGeometry()
        self._remember_request()
        if self.save_job is not None and self.save_job.thread is not None:
            self.save_job.thread.join(timeout=30)  # never leave a half-written file behind
        if self.job is None:
            self.runners.clear()
        self.settings.sync()
        super().closeEvent(event)
