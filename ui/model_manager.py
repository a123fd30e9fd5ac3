"""The model manager: the catalog by task with what is installed, and the store's
operations (download, add a local file, verify, remove, export to ONNX), plus which device
ONNX Runtime will actually use and why."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)
from restorer_ui.jobs import CallJob
from restorer_ui.request_panel import TASK_LABELS
from restorer_ui.settings import AppSettings

from restorer.run.loader import make_runnable
from restorer.tasks import TASKS
from restorer.zoo import download as download_mod
from restorer.zoo import home as store_home
from restorer.zoo import install
from restorer.zoo import layout as store_layout
from restorer.zoo.catalog import Catalog, ModelSpec, can_download, human_size, load_catalog

COLUMNS = ("Model", "State", "Size", "Licence", "Notes")
ID_ROLE = Qt.ItemDataRole.UserRole


# store_layout.state -> what the list shows
STATE_LABELS = {"built-in": "built-in", "bundled": "bundled in a package", "unreleased": "never released",
                "ready": "ready", "installed": "installed", "missing": "not installed"}


def model_state(spec: ModelSpec) -> str:
    state = store_layout.state(spec)
    if state == "onnx":
        return "installed, ONNX " + "/".join(store_layout.exported_precisions(spec))
    if state == "missing" and spec.is_pipeline:
        return "needs " + ", ".join(spec.needs)
    if state == "missing" and not all(can_download(f) for f in spec.files):
        return "not installed (manual download)"
    return STATE_LABELS[state]


def device_summary(device: str) -> tuple[str, str]:
    """(the device runs will use, why) for a device setting: read from the onnxruntime
    that is installed, as restorer.run.onnx will choose it."""
    from restorer.run.onnx import (
        CUDA,
        RuntimeMissing,
        import_onnxruntime,
        provider_list,
    )

    try:
        ort = import_onnxruntime()
    except RuntimeMissing as e:
        return "CPU (built-in operators only)", str(e)
    available = ort.get_available_providers()
    providers, reason = provider_list(device, available)
    offered = ", ".join(available)
    if providers[0] == CUDA:
        return "CUDA", (f"onnxruntime {ort.__version__} offers {offered}; device setting '{device}'. "
                        "If the CUDA libraries or the GPU are missing, runs fall back to CPU with a warning.")
    if device == "cpu":
        why = "the device setting is CPU"
    else:
        why = reason or "this onnxruntime build has no CUDA provider (install restorer[gpu] for CUDA)"
    return "CPU", f"{why}; onnxruntime {ort.__version__} offers {offered}."


class ModelManager(QWidget):
    changed = Signal()  # something was installed, removed or exported

    def __init__(self, settings: AppSettings, catalog: Catalog | None = None, parent=None):
        super().__init__(parent, Qt.WindowType.Window)
        self.setWindowTitle("Models - Restorer")
        self.settings = settings
        self.catalog = catalog or load_catalog()
        self.job: CallJob | None = None
        layout = QVBoxLayout(self)

        self.device_label = QLabel()
        self.device_label.setWordWrap(True)
        self.device_label.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.device_label)

        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setAlternatingRowColors(True)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.tree.setColumnWidth(0, 440)
        self.tree.setColumnWidth(1, 170)
        self.tree.setColumnWidth(2, 80)
        self.tree.setColumnWidth(3, 190)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        layout.addWidget(self.tree, 1)

        row = QHBoxLayout()
        self.buttons = {}
        for key, label, slot in (("download", "Download", self.download_selected),
                                 ("add", "Add a file...", self.add_file),
                                 ("add_folder", "Add a folder...", self.add_folder),
                                 ("verify", "Verify", self.verify_selected),
                                 ("remove", "Remove", self.remove_selected),
                                 ("export", "Export to ONNX", self.export_selected),
                                 ("cancel", "Cancel", self.cancel)):
            b = QPushButton(label)
            b.clicked.connect(slot)
            row.addWidget(b)
            self.buttons[key] = b
        row.addStretch(1)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        layout.addWidget(self.progress)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.resize(1000, 640)
        self.refresh()
        self.update_device()

    # ------------------------------------------------------------ listing

    def refresh(self) -> None:
        selected = self.selected_id()
        self.tree.clear()
        groups = [(task, TASK_LABELS.get(task, task)) for task in TASKS] + [("", "Parts of pipelines and encoders")]
        for task, label in groups:
            specs = [s for s in self.catalog if (task in s.tasks if task else not s.tasks)]
            if not specs:
                continue
            parent = QTreeWidgetItem([f"{label} ({len(specs)})"])
            font = parent.font(0)
            font.setBold(True)
            parent.setFont(0, font)
            parent.setFlags(parent.flags() & ~Qt.ItemFlag.ItemIsSelectable)
            self.tree.addTopLevelItem(parent)
            for spec in sorted(specs, key=lambda s: (s.builtin, -s.rank, s.id)):
                parent.addChild(self._row(spec))
            parent.setExpanded(True)
        if selected:
            self.select(selected)
        self._selection_changed()

    def _row(self, spec: ModelSpec) -> QTreeWidgetItem:
        licence = spec.licence or "unknown"
        if spec.non_commercial:
            licence += " - NON-COMMERCIAL"
        notes = spec.notes if spec.released else "announced, weights never published"
        item = QTreeWidgetItem([f"{spec.id}  -  {spec.title}", model_state(spec),
                                "" if spec.builtin else (human_size(spec.size) if spec.size else "unknown"), licence, notes])
        item.setData(0, ID_ROLE, spec.id)
        for column in range(1, len(COLUMNS)):
            item.setToolTip(column, item.text(column))
        item.setToolTip(0, f"{spec.title} [{spec.id}]" + (f"\n{spec.paper}" if spec.paper else ""))
        if spec.non_commercial:
            item.setForeground(3, QColor("#c0392b"))
            bold = QFont(item.font(3))
            bold.setBold(True)
            item.setFont(3, bold)
        if item.text(1).startswith("installed") or item.text(1) in ("ready", "built-in"):
            item.setForeground(1, QColor("#1e8449"))
        return item

    def rows(self, model_id: str) -> list[QTreeWidgetItem]:
        out = []
        for i in range(self.tree.topLevelItemCount()):
            parent = self.tree.topLevelItem(i)
            out += [parent.child(j) for j in range(parent.childCount()) if parent.child(j).data(0, ID_ROLE) == model_id]
        return out

    def state_of(self, model_id: str) -> str:
        rows = self.rows(model_id)
        return rows[0].text(1) if rows else ""

    def select(self, model_id: str) -> None:
        rows = self.rows(model_id)
        if rows:
            self.tree.setCurrentItem(rows[0])

    def selected_id(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(0, ID_ROLE) if item is not None else None

    def selected(self) -> ModelSpec | None:
        model_id = self.selected_id()
        return self.catalog.get(model_id) if model_id else None

    def _selection_changed(self) -> None:
        spec = self.selected()
        busy = self.job is not None
        real = spec is not None and not spec.builtin and not spec.is_pipeline
        installed = real and store_layout.is_installed(spec)
        self.buttons["download"].setEnabled(not busy and real and spec.released and not installed)
        self.buttons["verify"].setEnabled(not busy and installed)
        self.buttons["remove"].setEnabled(not busy and real and (installed or bool(store_layout.exported_precisions(spec))))
        self.buttons["export"].setEnabled(not busy and installed)
        self.buttons["add"].setEnabled(not busy)
        self.buttons["cancel"].setEnabled(busy)

    def update_device(self) -> None:
        device, why = device_summary(self.settings.device)
        self.device_label.setText(f"<b>Device in use: {html.escape(device)}</b> - {html.escape(why)}<br>"
                                  f"Models are stored in {html.escape(str(store_home.home()))}")

    # ------------------------------------------------------------ operations

    def _run(self, fn, label: str, done) -> None:
        job = CallJob(fn, label, self)
        job.hook(job.progress, self._progress)
        job.hook(job.note, lambda text: self.status.setText(text))
        job.hook(job.succeeded, done)
        job.hook(job.failed, lambda m: self._message(f"{label} failed: {m}", error=True))
        job.hook(job.cancelled, lambda: self._message(f"{label}: cancelled (a partial download is kept and resumed next time)"))
        job.hook(job.ended, self._ended)
        self.job = job
        self.progress.setValue(0)
        self._message(f"{label}...")
        self._selection_changed()
        job.start()
        return job

    def _progress(self, fraction: float, left: float, text: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.status.setText(text)

    def _ended(self) -> None:
        self.job = None
        self.refresh()
        self.changed.emit()

    def _message(self, text: str, error: bool = False) -> None:
        self.status.setText(f'<span style="color:#c0392b">{html.escape(text)}</span>' if error else html.escape(text))

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def download_selected(self) -> None:
        spec = self.selected()
        if spec is None or self.job is not None:
            return
        catalog = self.catalog
        def fetch(progress):
            installed = download_mod.download(spec, progress=progress, catalog=catalog)
            for model_id, _ in installed:
                make_runnable(catalog.get(model_id), export=False)  # the template: seconds, no torch
            return installed

        self._run(fetch,
                  f"downloading {spec.id}",
                  lambda installed: self._message("installed: " + ", ".join(i for i, _ in installed)))

    def add_file(self, path: str | None = None) -> None:
        if self.job is not None:
            return
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Add a model file", "",
                                                  "Checkpoints (*.safetensors *.pth *.pt *.ckpt *.bin *.zip);;All files (*)")
        if not path:
            return
        spec = self.selected()
        catalog = self.catalog
        # A chosen model that is not installed is a hint; otherwise the file's tensors decide.
        hint = spec.id if spec is not None and not spec.builtin and not store_layout.is_installed(spec) else None

        def add(progress):
            try:
                return install.add(path, hint, catalog=catalog)
            except store_layout.StoreError:
                if hint is None:
                    raise
                return install.add(path, None, catalog=catalog)

        def done(result):
            text = "installed: " + ", ".join(f"{i} ({p.name})" for i, p in result.installed)
            if result.unmatched:
                text += "; not recognised: " + "; ".join(result.unmatched)
            self._message(text)

        self._run(add, f"adding {Path(path).name}", done)

    def add_folder(self, path: str | None = None) -> None:
        """A diffusers model folder (model_index.json and its parts), e.g. a generative upscaler
        fetched with git or huggingface-cli."""
        if self.job is not None:
            return
        if not path:
            path = QFileDialog.getExistingDirectory(self, "Add a diffusers model folder (with model_index.json)")
        if path:
            self.add_file(path)

    def verify_selected(self) -> None:
        spec = self.selected()
        if spec is None or self.job is not None:
            return

        def done(problems):
            if problems:
                self._message(f"{spec.id}: " + "; ".join(problems), error=True)
            else:
                self._message(f"{spec.id}: every file is sound")

        self._run(lambda progress: install.verify(spec), f"verifying {spec.id}", done)

    def ask(self, title: str, question: str) -> bool:
        answer = QMessageBox.question(self, title, question)
        return answer == QMessageBox.StandardButton.Yes

    def remove_selected(self) -> None:
        spec = self.selected()
        if spec is None or self.job is not None:
            return
        if not self.ask("Remove model?", f"Delete the files and exports of {spec.id}?"):
            return
        try:
            removed = install.remove(spec)
        except OSError as e:
            self._message(f"could not remove {spec.id}: {e}", error=True)
            return
        self._message(f"removed {spec.id} ({len(removed)} items)")
        self.refresh()
        self.changed.emit()

    def export_selected(self) -> None:
        spec = self.selected()
        if spec is None or self.job is not None:
            return
        holder = {}

        def export(progress):
            if make_runnable(spec, export=False):  # restorer's template: seconds, no torch
                return store_layout.onnx_path(spec), None
            try:
                from restorer.convert.export import export_model
            except ImportError:
                raise store_layout.StoreError(f"restorer has no template for {spec.id}, and exporting it needs "
                                              f"PyTorch, which this install lacks: pip install 'restorer[torch]' "
                                              f"then run: restorer-cli models export {spec.id}") from None
            return export_model(spec, progress=lambda message: holder["job"].note.emit(message))

        def done(result):
            path, parity = result
            how = ("made from restorer's template" if parity is None
                   else f"max difference from PyTorch {parity.max_abs_diff:.2e}")
            self._message(f"exported {spec.id} to {path} ({how})")

        holder["job"] = self._run(export, f"exporting {spec.id}", done)
