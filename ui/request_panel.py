"""What to do to a photo: a task and a model, or an instruction in words, with the plan that
will run shown live underneath (the same resolve_* calls the CLI makes)."""

from __future__ import annotations

import html
from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from restorer.plan import request
from restorer.tasks import TASKS
from restorer.zoo.catalog import Catalog, human_size, load_catalog

TASK_LABELS = {
    "denoise": "Remove noise", "deblur": "Remove blur", "derain": "Remove rain", "dehaze": "Remove haze",
    "lowlight": "Brighten a dark photo", "enhance": "Enhance colour and tone", "superres": "Upscale (super-resolution)",
    "jpeg": "Remove JPEG artefacts", "old-photo": "Repair an old photo", "remove-text": "Remove text",
}
AUTO = ""  # the model combo's "best installed" entry
STRENGTHS = (("Automatic", None), ("Gentle", 0.3), ("Medium", 0.6), ("Strong", 1.0))
STRENGTH_TASKS = ("denoise", "dehaze", "lowlight", "superres")  # the built-in operators take a strength


class RequestPanel(QWidget):
    planChanged = Signal(bool)  # True when the current request resolves to steps

    def __init__(self, options: Callable[..., request.Options], catalog: Catalog | None = None, parent=None):
        super().__init__(parent)
        self.options = options  # settings -> Options, called with scale=
        self.catalog = catalog or load_catalog()
        self.ok = False
        self.missing: request.ModelMissing | None = None  # the plan needs a download first
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        self.by_task = QRadioButton("By task")
        self.by_instruction = QRadioButton("By instruction")
        self.by_task.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.by_task)
        group.addButton(self.by_instruction)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.task = QComboBox()
        for task in TASKS:
            self.task.addItem(TASK_LABELS.get(task, task), task)
        self.model = QComboBox()
        self.model.setMinimumContentsLength(18)
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.scale = QComboBox()
        for s in (2, 3, 4):
            self.scale.addItem(f"x{s}", s)
        self.scale_label = QLabel("Scale")
        form.addRow("Task", self.task)
        form.addRow("Model", self.model)
        form.addRow(self.scale_label, self.scale)
        self._add_task_options(form)

        self.instruction = QLineEdit()
        self.instruction.setPlaceholderText('e.g. "remove the noise, then upscale 2x"')
        self.instruction.setClearButtonEnabled(True)

        self.plan = QLabel()
        self.plan.setWordWrap(True)
        self.plan.setTextFormat(Qt.TextFormat.RichText)
        self.plan.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plan.setMinimumHeight(40)

        layout.addWidget(self.by_task)
        layout.addLayout(form)
        layout.addWidget(self.by_instruction)
        layout.addWidget(self.instruction)
        layout.addWidget(self.plan)

        self._timer = QTimer(self, singleShot=True, interval=200)
        self._timer.timeout.connect(self.update_plan)
        self.task.currentIndexChanged.connect(self._task_changed)
        self.model.currentIndexChanged.connect(self.schedule)
        self.scale.currentIndexChanged.connect(self.schedule)
        self.by_task.toggled.connect(self._mode_changed)
        self.instruction.textEdited.connect(self._instruction_edited)
        self._task_changed()
        self._mode_changed()

    def _add_task_options(self, form: QFormLayout) -> None:
        """The options only some tasks have (the CLI's --strength, --scratches, --faces,
        --hr, --mask, --dilate), each row shown only for its task."""
        self.strength = QComboBox()
        for label, value in STRENGTHS:
            self.strength.addItem(label, value)
        self.scratches = QComboBox()
        for label, value in (("Detect automatically", "auto"), ("Yes, repair them", "yes"), ("No scratches", "no")):
            self.scratches.addItem(label, value)
        self.faces = QCheckBox("Enhance faces")
        self.faces.setChecked(True)
        self.hr = QCheckBox("High-resolution mode")
        self.dilate = QSpinBox()
        self.dilate.setRange(0, 50)
        self.dilate.setValue(2)
        self.dilate.setSuffix(" px")
        self.mask_path = QLineEdit()
        self.mask_path.setPlaceholderText("detect the text automatically")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._choose_mask)
        mask_row = QWidget()
        row = QHBoxLayout(mask_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.mask_path)
        row.addWidget(browse)
        self._task_rows = {}  # task -> [(label, field)]
        for tasks, label, field in (
            (STRENGTH_TASKS, "Strength", self.strength),
            (("old-photo",), "Scratches", self.scratches),
            (("old-photo",), "", self.faces),
            (("old-photo",), "", self.hr),
            (("remove-text",), "Mask (white = remove)", mask_row),
            (("remove-text",), "Grow mask by", self.dilate),
        ):
            caption = QLabel(label)
            form.addRow(caption, field)
            for task in tasks:
                self._task_rows.setdefault(task, []).append((caption, field))
        for w in (self.strength, self.scratches):
            w.currentIndexChanged.connect(self.schedule)
        for w in (self.faces, self.hr):
            w.toggled.connect(self.schedule)
        self.dilate.valueChanged.connect(self.schedule)
        self.mask_path.textChanged.connect(self.schedule)

    def _choose_mask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Text mask", "", "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp)")
        if path:
            self.mask_path.setText(path)

    def task_options(self, task: str) -> tuple[float | None, dict]:
        """(strength, pipeline options) set in the panel for `task`, as the CLI passes them."""
        strength = self.strength.currentData() if task in STRENGTH_TASKS else None
        extra: dict = {}
        if task == "old-photo":
            extra = {"scratches": self.scratches.currentData(), "faces": self.faces.isChecked(),
                     "hr": self.hr.isChecked()}
        elif task == "remove-text":
            extra = {"dilate": self.dilate.value()}
            if self.mask_path.text().strip():
                extra["mask"] = self.mask_path.text().strip()
        return strength, extra

    # ------------------------------------------------------------ state

    @property
    def mode(self) -> str:
        return "task" if self.by_task.isChecked() else "instruction"

    def set_task(self, task: str, model: str = AUTO) -> None:
        self.by_task.setChecked(True)
        self.task.setCurrentIndex(TASKS.index(task))
        index = self.model.findData(model)
        if index >= 0:
            self.model.setCurrentIndex(index)
        self.update_plan()

    def set_instruction(self, text: str) -> None:
        self.instruction.setText(text)
        self.by_instruction.setChecked(True)
        self.update_plan()

    def refresh_models(self) -> None:
        """Rebuild the model list (after an install or removal)."""
        self._task_changed()

    def _task_changed(self) -> None:
        task = self.task.currentData()
        keep = self.model.currentData()
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItem("Best installed (automatic)", AUTO)
        items: QStandardItemModel = self.model.model()
        for spec in self.catalog.for_task(task):
            ready = request.installed(spec)
            label = f"Built-in: {spec.title}" if spec.builtin else f"{spec.title} [{spec.id}]"
            if spec.non_commercial:
                label += " (non-commercial)"
            fetchable = not ready and bool(request.to_download(spec, self.catalog))
            if fetchable:
                size = human_size(spec.size)
                label += " (download" + (f", {size})" if size != "-" else ")")
            elif not ready:
                label += " (not installed)"
            self.model.addItem(label, spec.id)
            if not ready and not fetchable:
                items.item(self.model.count() - 1).setEnabled(False)
        index = self.model.findData(keep)
        self.model.setCurrentIndex(index if index >= 0 and items.item(index).isEnabled() else 0)
        self.model.blockSignals(False)
        superres = task == "superres"
        self.scale.setVisible(superres)
        self.scale_label.setVisible(superres)
        shown = {id(w) for pair in self._task_rows.get(task, []) for w in pair}
        for pairs in self._task_rows.values():
            for caption, field in pairs:
                caption.setVisible(id(caption) in shown)
                field.setVisible(id(field) in shown)
        self.schedule()

    def _mode_changed(self) -> None:
        by_task = self.by_task.isChecked()
        for w in (self.task, self.model, self.scale, self.strength, self.scratches, self.faces, self.hr,
                  self.dilate, self.mask_path):
            w.setEnabled(by_task)
        self.schedule()

    def _instruction_edited(self, text: str) -> None:
        if text.strip() and not self.by_instruction.isChecked():
            self.by_instruction.setChecked(True)
        self.schedule()

    def schedule(self) -> None:
        self._timer.start()

    # ------------------------------------------------------------ resolving

    def resolve_plan(self) -> request.Plan:
        """The plan the current request resolves to (the CLI's dispatch); raises request.RequestError."""
        if self.mode == "instruction":
            text = self.instruction.text().strip()
            if not text:
                raise request.RequestError("type what is wrong with the photo, e.g. \"it is noisy and blurry\"")
            return request.plan_request(self.options(), instruction=text, catalog=self.catalog)
        task = self.task.currentData()
        scale = self.scale.currentData() if task == "superres" else None
        options = self.options(scale=scale)
        options.strength, extra = self.task_options(task)
        options.extra.update(extra)
        model = self.model.currentData()
        if model:
            return request.plan_request(options, model=model, catalog=self.catalog)
        return request.plan_request(options, task=task, catalog=self.catalog)

    def update_plan(self) -> None:
        self._timer.stop()
        self.missing = None
        try:
            steps = self.resolve_plan().steps
        except request.ModelMissing as e:
            # restorable after a download: the window's button offers it (size, licence)
            self.ok, self.missing = False, e
            self.plan.setText(f"Needs a download: {html.escape(e.offer())}")
        except request.RequestError as e:
            self.ok = False
            self.plan.setText(f'<span style="color:#c0392b">{html.escape(str(e))}</span>')
        except Exception as e:  # a planner bug must not take the window down
            self.ok = False
            self.plan.setText(f'<span style="color:#c0392b">{html.escape(type(e).__name__ + ": " + str(e))}</span>')
        else:
            self.ok = True
            lines = []
            for n, step in enumerate(steps, 1):
                opts = ", ".join(f"{k}={v}" for k, v in step.options.items() if k in ("scale", "strength"))
                line = f"{n}. <b>{html.escape(step.task)}</b> with {html.escape(step.model)}"
                if opts:
                    line += f" ({html.escape(opts)})"
                if step.why:
                    line += f' <span style="color:gray">- {html.escape(step.why)}</span>'
                lines.append(line)
            self.plan.setText("Plan:<br>" + "<br>".join(lines))
        self.planChanged.emit(self.ok)
