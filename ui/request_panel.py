"""What to do to a photo: a task and a model, or an instruction in words, with the plan that
will run shown live underneath in plain words (restorer.plan.describe; the engine's words are
in its tooltip), resolved by the same calls the CLI makes.

The strength slider is a row of its own (`strength_row`): the main window keeps it in its
fixed bottom bar, where it never moves; other windows leave it in the panel's form."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Sequence

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from restorer.plan import request
from restorer.plan.describe import DASH, describe_step
from restorer.run.builtin import BUILTIN_TASKS, DEFAULT_STRENGTH
from restorer.tasks import TASKS
from restorer.zoo.catalog import Catalog, human_size, load_catalog

TASK_LABELS = {
    "denoise": "Remove noise", "deblur": "Remove blur", "derain": "Remove rain", "dehaze": "Remove haze",
    "lowlight": "Brighten a dark photo", "enhance": "Enhance colour and tone", "superres": "Upscale (super-resolution)",
    "jpeg": "Remove JPEG artefacts", "old-photo": "Repair an old photo", "remove-text": "Remove text",
    "faces": "Restore faces",
}
AUTO = ""  # the model combo's "best installed" entry
STRENGTH_TASKS = ("denoise", "dehaze", "lowlight", "superres")  # the built-in operators take a strength
STRENGTH_CANDIDATES = (30, 60, 100)  # percent: a light, a middle and a full hand
MAX_CANDIDATES = 4  # beside the original, what a screen can show side by side
PLAN_LINES = 6  # the plan box shows this many lines, then scrolls: its height never changes
ERROR_COLOUR = "#c0392b"


@dataclass
class Candidate:
    """One variant of the request, for the compare view: its label, its plan, and how to set
    the panel to it when the user picks it."""

    label: str
    plan: request.Plan
    choose: Callable[[], None]


class RequestPanel(QWidget):
    planChanged = Signal(bool)  # True when the current request resolves to steps

    def __init__(self, options: Callable[..., request.Options], catalog: Catalog | None = None, parent=None,
                 strength_in_form: bool = True):
        super().__init__(parent)
        self.options = options  # settings -> Options, called with scale=
        self.catalog = catalog or load_catalog()
        self.ok = False
        self.missing: request.ModelMissing | None = None  # the plan needs a download first
        self._timer = QTimer(self, singleShot=True, interval=200)  # re-plan once typing or a slider rests
        self._timer.timeout.connect(self.update_plan)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        self.by_task = QRadioButton("Pick a task")
        self.by_instruction = QRadioButton("Say it in words")
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
        self._add_strength_row()
        if strength_in_form:
            form.addRow(self.strength_row)
        self._add_task_options(form)

        self.instruction = QLineEdit()
        self.instruction.setPlaceholderText('e.g. "remove the noise, then upscale 2x"')
        self.instruction.setClearButtonEnabled(True)

        heading = QLabel("Plan")
        heading.setObjectName("heading")
        self.plan = QLabel()
        self.plan.setWordWrap(True)
        self.plan.setTextFormat(Qt.TextFormat.RichText)
        self.plan.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plan.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        # A fixed-height box: a six-step plan scrolls inside it instead of pushing what is below.
        self.plan_area = QScrollArea()
        self.plan_area.setObjectName("planArea")
        self.plan_area.setWidget(self.plan)
        self.plan_area.setWidgetResizable(True)
        self.plan_area.setFrameShape(QFrame.Shape.StyledPanel)
        self.plan_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.plan_area.setFixedHeight(self.fontMetrics().lineSpacing() * PLAN_LINES + 12)

        layout.addWidget(self.by_task)
        layout.addLayout(form)
        layout.addSpacing(4)
        layout.addWidget(self.by_instruction)
        layout.addWidget(self.instruction)
        layout.addSpacing(6)
        layout.addWidget(heading)
        layout.addWidget(self.plan_area)
        layout.addStretch(1)  # packed at the top when there is room to spare

        self.task.currentIndexChanged.connect(self._task_changed)
        self.model.currentIndexChanged.connect(self.schedule)
        self.scale.currentIndexChanged.connect(self.schedule)
        self.by_task.toggled.connect(self._mode_changed)
        self.instruction.textEdited.connect(self._instruction_edited)
        self._task_changed()
        self._mode_changed()

    def _add_strength_row(self) -> None:
        """The CLI's --strength as a 0-100 % slider with its value beside it, and "Auto" for
        each built-in operator's own default (what leaving --strength out does)."""
        self.strength_row = QWidget()
        self.strength_row.setObjectName("strengthRow")
        row = QHBoxLayout(self.strength_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.strength_label = QLabel()
        # as wide as its longest text: the slider beside it must not shift as the value changes
        self.strength_label.setFixedWidth(self.fontMetrics().horizontalAdvance("Strength 100 % (auto)") + 6)
        self.strength = QSlider(Qt.Orientation.Horizontal)
        self.strength.setRange(0, 100)
        self.strength.setSingleStep(5)
        self.strength.setPageStep(10)
        self.strength.setAccessibleName("Strength")
        self.strength_auto = QCheckBox("Auto")
        self.strength_auto.setChecked(True)
        self.strength_auto.setToolTip("each built-in filter's own default strength")
        row.addWidget(self.strength_label)
        row.addWidget(self.strength, 1)
        row.addWidget(self.strength_auto)
        self._quiet = False  # set while the slider shows the automatic value: that is not a user's choice
        self.strength.valueChanged.connect(self._strength_moved)
        self.strength_auto.toggled.connect(self._strength_auto_toggled)
        self._show_strength()

    def strength_value(self) -> float | None:
        """The strength the plan gets: 0-1, or None for the operators' defaults."""
        return None if self.strength_auto.isChecked() else self.strength.value() / 100

    def set_strength(self, percent: int | None) -> None:
        """0-100, or None for automatic."""
        if percent is None:
            self.strength_auto.setChecked(True)
        else:
            self.strength.setValue(int(percent))
            self.strength_auto.setChecked(False)
        self._show_strength()

    def _strength_moved(self, value: int) -> None:
        if not self._quiet:
            self.strength_auto.setChecked(False)  # the user chose a value
        self._show_strength()
        self.schedule()

    def _strength_auto_toggled(self, auto: bool) -> None:
        self._show_strength()
        self.schedule()

    def _show_strength(self) -> None:
        auto = self.strength_auto.isChecked()
        if auto:  # show where the operator's own default lies
            default = DEFAULT_STRENGTH.get(BUILTIN_TASKS.get(self.task.currentData(), ""), 0.5)
            self._quiet = True
            self.strength.setValue(round(default * 100))
            self._quiet = False
        self.strength_label.setText(f"Strength {self.strength.value()} %" + (" (auto)" if auto else ""))
        applies = self.by_task.isChecked() and self.task.currentData() in STRENGTH_TASKS
        for w in (self.strength_label, self.strength, self.strength_auto):
            w.setEnabled(applies)
        self.strength_row.setToolTip("" if applies else "strength applies to the built-in filters for noise, haze, "
                                                        "dark photos and upscaling, when picked by task")

    def _add_task_options(self, form: QFormLayout) -> None:
        """The options only some tasks have (the CLI's --scratches, --faces, --hr, --mask,
        --dilate), each row shown only for its task."""
        self.scratches = QComboBox()
        for label, value in (("Detect automatically", "auto"), ("Yes, repair them", "yes"), ("No scratches", "no")):
            self.scratches.addItem(label, value)
        self.faces = QCheckBox("Enhance faces")
        self.faces.setChecked(True)
        self.hr = QCheckBox("High-resolution mode")
        # restorer-cli --faces: the faces restored after the task, with the best face model
        self.then_faces = QCheckBox("Then restore the faces")
        self.then_faces.setToolTip("Find the faces and restore them with a face model after this task "
                                   "(GFPGAN, RestoreFormer); only the faces change")
        # restorer-cli --generative --seed --steps: a diffusion upscale that invents detail
        self.generative = QCheckBox("Generative: invents detail")
        self.generative.setToolTip("Upscale 4x with a diffusion model (ldm-sr-x4, sd-x4-upscaler): it invents "
                                   "plausible detail that was not in the photo, different for each seed. "
                                   "Not for forensic, medical or scientific images.")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("The same seed gives the same result; another seed, other invented detail")
        self.steps = QSpinBox()
        self.steps.setRange(0, 1000)
        self.steps.setSpecialValueText("model default")
        self.steps.setToolTip("Denoising steps: more is slower and finer")
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
            (("old-photo",), "Scratches", self.scratches),
            (("old-photo",), "", self.faces),
            (("old-photo",), "", self.hr),
            (("remove-text",), "Mask (white = remove)", mask_row),
            (("remove-text",), "Grow mask by", self.dilate),
            (("superres",), "", self.generative),
            (("superres",), "Seed", self.seed),
            (("superres",), "Denoising steps", self.steps),
            (tuple(t for t in TASKS if t not in ("faces", "old-photo")), "", self.then_faces),
        ):
            caption = QLabel(label)
            form.addRow(caption, field)
            for task in tasks:
                self._task_rows.setdefault(task, []).append((caption, field))
        self.scratches.currentIndexChanged.connect(self.schedule)
        for w in (self.faces, self.hr, self.then_faces, self.generative):
            w.toggled.connect(self.schedule)
        self.generative.toggled.connect(lambda on: on and self.scale.setCurrentIndex(self.scale.findData(4)))
        self.seed.valueChanged.connect(self.schedule)
        self.steps.valueChanged.connect(self.schedule)
        self.dilate.valueChanged.connect(self.schedule)
        self.mask_path.textChanged.connect(self.schedule)

    def _choose_mask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Text mask", "", "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp)")
        if path:
            self.mask_path.setText(path)

    def task_options(self, task: str) -> tuple[float | None, dict]:
        """(strength, pipeline options) set in the panel for `task`, as the CLI passes them."""
        strength = self.strength_value() if task in STRENGTH_TASKS else None
        extra: dict = {}
        if task == "old-photo":
            extra = {"scratches": self.scratches.currentData(), "faces": self.faces.isChecked(),
                     "hr": self.hr.isChecked()}
        elif task == "remove-text":
            extra = {"dilate": self.dilate.value()}
            if self.mask_path.text().strip():
                extra["mask"] = self.mask_path.text().strip()
        return strength, extra

    def generation(self) -> dict:
        """The generative settings in the panel (restorer-cli --seed, --steps)."""
        return {"seed": self.seed.value(), **({"steps": self.steps.value()} if self.steps.value() else {})}

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
            if spec.generative:
                label = f"Invents detail: {label}"
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
        self._show_strength()
        self.schedule()

    def _mode_changed(self) -> None:
        by_task = self.by_task.isChecked()
        for w in (self.task, self.model, self.scale, self.scratches, self.faces, self.hr, self.dilate, self.mask_path,
                  self.generative):
            w.setEnabled(by_task)
        self._show_strength()
        self.schedule()

    def _instruction_edited(self, text: str) -> None:
        if text.strip() and not self.by_instruction.isChecked():
            self.by_instruction.setChecked(True)
        self.schedule()

    def schedule(self) -> None:
        self._timer.start()

    # ------------------------------------------------------------ resolving

    def resolve_plan(self, keep_missing: bool = False) -> request.Plan:
        """The plan the current request resolves to (the CLI's dispatch); raises
        request.RequestError. With `keep_missing`, what is not installed is a step (a dry run)."""
        if self.mode == "instruction":
            return self._instruction_plan(self.instruction.text(), keep_missing)
        return self._task_plan(self.model.currentData(), self.strength_value(), keep_missing)

    def _instruction_plan(self, text: str, keep_missing: bool = False) -> request.Plan:
        if not text.strip():
            raise request.RequestError("type what is wrong with the photo, e.g. \"it is noisy and blurry\"")
        options = self.options()
        options.generation = self.generation()
        return request.plan_request(options, instruction=text.strip(), catalog=self.catalog,
                                    keep_missing=keep_missing)

    def _task_plan(self, model: str, strength: float | None, keep_missing: bool = False) -> request.Plan:
        task = self.task.currentData()
        scale = self.scale.currentData() if task == "superres" else None
        options = self.options(scale=scale)
        extra = self.task_options(task)[1]
        options.strength = strength if task in STRENGTH_TASKS else None
        options.extra.update(extra)
        options.faces = self.then_faces.isChecked() and task not in ("faces", "old-photo")
        options.generative = task == "superres" and self.generative.isChecked() and not model
        options.generation = self.generation()
        if model:
            return request.plan_request(options, model=model, catalog=self.catalog, keep_missing=keep_missing)
        return request.plan_request(options, task=task, catalog=self.catalog, keep_missing=keep_missing)

    def candidates(self, kind: str, texts: Sequence[str] = ()) -> list[Candidate]:
        """Variants of the current request to compare on a region (2 to MAX_CANDIDATES):
        "strength": the task at STRENGTH_CANDIDATES; "model": each installed or built-in model
        for the task; "instruction": each of `texts`. Raises request.RequestError (one line)
        when there is nothing to compare."""
        task = self.task.currentData()
        found: list[Candidate] = []
        if kind == "strength":
            if self.mode != "task" or task not in STRENGTH_TASKS:
                raise request.RequestError("strengths can be compared for a task that has one: "
                                           + ", ".join(TASK_LABELS[t].lower() for t in STRENGTH_TASKS))
            model = self.model.currentData()
            for percent in STRENGTH_CANDIDATES:
                found.append(Candidate(f"Strength {percent} %", self._task_plan(model, percent / 100),
                                       lambda p=percent: self.set_strength(p)))
        elif kind == "model":
            if self.mode != "task":
                raise request.RequestError("models are compared for a task: choose one under \"By task\"")
            strength = self.strength_value()
            for spec in self.catalog.for_task(task):
                if request.installed(spec) and len(found) < MAX_CANDIDATES:
                    found.append(Candidate(spec.title, self._task_plan(spec.id, strength),
                                           lambda m=spec.id: self.set_task(task, m)))
            if len(found) < 2:
                raise request.RequestError(f"only {len(found)} model for \"{TASK_LABELS[task].lower()}\" is "
                                           "installed: add more in the model manager to compare them")
        elif kind == "instruction":
            lines = [t.strip() for t in texts if t.strip()]
            if not 2 <= len(lines) <= MAX_CANDIDATES:
                raise request.RequestError(f"compare 2 to {MAX_CANDIDATES} instructions, one per line")
            found = [Candidate(text, self._instruction_plan(text), lambda t=text: self.set_instruction(t))
                     for text in lines]
        else:
            raise ValueError(f"unknown kind of candidates {kind!r}")
        return found

    def update_plan(self) -> None:
        self._timer.stop()
        self.missing = None
        try:
            plan = self.resolve_plan()
        except request.ModelMissing as e:
            # restorable after a download: the window's button offers it (size, licence)
            self.ok, self.missing = False, e
            self._show_plan(self._dry_run(), f"Needs a download: {e.offer()}")
        except request.RequestError as e:
            self.ok = False
            self._show_plan(None, str(e), error=True)
        except Exception as e:  # a planner bug must not take the window down
            self.ok = False
            self._show_plan(None, f"{type(e).__name__}: {e}", error=True)
        else:
            self.ok = True
            self._show_plan(plan)
        self.planChanged.emit(self.ok)

    def _dry_run(self) -> request.Plan | None:
        """The whole plan with what is missing as steps, to show beside the download offer."""
        try:
            return self.resolve_plan(keep_missing=True)
        except Exception:  # noqa: BLE001 - the offer alone is shown then
            return None

    def _show_plan(self, plan: request.Plan | None, note: str = "", error: bool = False) -> None:
        """Numbered plain-language lines ("1. Reduce noise — built-in filter"), then `note`;
        the engine's own words (restorer-cli --dry-run) in the tooltip."""
        lines = []
        for n, step in enumerate(plan.steps if plan else [], 1):
            what, _, how = describe_step(step, self.catalog).partition(DASH)
            lines.append(f"{n}. <b>{html.escape(what)}</b>" + (f' <span style="color:gray">— {html.escape(how)}</span>'
                                                                 if how else ""))
        if note:
            colour = ERROR_COLOUR if error else "#d68910"
            lines.append(f'<span style="color:{colour}">{html.escape(note)}</span>')
        self.plan.setText("<br>".join(lines))
        self.plan.setToolTip("\n".join(step.plan_line() for step in plan.steps) if plan else "")
