"""What the app remembers between runs (QSettings), and the dialog that edits it."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from restorer.plan import request

DEVICES = ("auto", "cuda", "cpu", "openvino", "openvino:GPU")
OUTPUT_FORMATS = ("same", "png", "jpg", "webp", "tiff")
MAX_RECENT = 10


class AppSettings:
    """Typed access to QSettings; `store` may be any QSettings (tests pass an ini file)."""

    def __init__(self, store: QSettings | None = None):
        self.store = store or QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "restorer", "restorer")

    def _get(self, key: str, default, kind):
        value = self.store.value(key, default)
        try:
            if kind is bool:
                return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            return kind(value)
        except (TypeError, ValueError):
            return default

    @property
    def device(self) -> str:
        value = self._get("device", "auto", str)
        return value if value in DEVICES else "auto"

    @device.setter
    def device(self, value: str) -> None:
        self.store.setValue("device", value)

    @property
    def tile(self) -> int:
        """0 means automatic (from free memory)."""
        return max(0, self._get("tile", 0, int))

    @tile.setter
    def tile(self, value: int) -> None:
        self.store.setValue("tile", int(value))

    @property
    def output_format(self) -> str:
        value = self._get("output/format", "same", str)
        return value if value in OUTPUT_FORMATS else "same"

    @output_format.setter
    def output_format(self, value: str) -> None:
        self.store.setValue("output/format", value)

    @property
    def quality(self) -> int:
        return min(100, max(1, self._get("output/quality", 95, int)))

    @quality.setter
    def quality(self, value: int) -> None:
        self.store.setValue("output/quality", int(value))

    @property
    def suffix(self) -> str:
        return self._get("output/suffix", "_restored", str)

    @suffix.setter
    def suffix(self, value: str) -> None:
        self.store.setValue("output/suffix", value)

    @property
    def skip_existing(self) -> bool:
        return self._get("output/skip_existing", True, bool)

    @skip_existing.setter
    def skip_existing(self, value: bool) -> None:
        self.store.setValue("output/skip_existing", bool(value))

    @property
    def recent(self) -> list[str]:
        value = self.store.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])][:MAX_RECENT]

    def add_recent(self, path: str) -> None:
        items = [path] + [p for p in self.recent if p != path]
        self.store.setValue("recent", items[:MAX_RECENT])

    def options(self, **overrides) -> request.Options:
        return request.Options(device=self.device, tile=self.tile or None, **overrides)

    def sync(self) -> None:
        self.store.sync()


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        form = QFormLayout(self)
        self.device = QComboBox()
        self.device.addItems(["Automatic (CUDA, else OpenVINO on Intel, else CPU)", "CUDA", "CPU (ONNX Runtime)",
                              "OpenVINO CPU", "OpenVINO GPU"])
        self.device.setCurrentIndex(DEVICES.index(settings.device))
        form.addRow("Device", self.device)
        self.tile = QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("Automatic (from free memory)")
        self.tile.setValue(settings.tile)
        form.addRow("Tile size", self.tile)
        self.format = QComboBox()
        self.format.addItems(["Same as input", "PNG", "JPEG", "WebP", "TIFF"])
        self.format.setCurrentIndex(OUTPUT_FORMATS.index(settings.output_format))
        form.addRow("Output format", self.format)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(settings.quality)
        form.addRow("JPEG/WebP quality", self.quality)
        self.suffix = QLineEdit(settings.suffix)
        form.addRow("File name suffix", self.suffix)
        self.skip = QCheckBox("Skip files whose output already exists (batch)")
        self.skip.setChecked(settings.skip_existing)
        form.addRow("", self.skip)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def accept(self) -> None:
        s = self.settings
        s.device = DEVICES[self.device.currentIndex()]
        s.tile = self.tile.value()
        s.output_format = OUTPUT_FORMATS[self.format.currentIndex()]
        s.quality = self.quality.value()
        s.suffix = self.suffix.text()
        s.skip_existing = self.skip.isChecked()
        s.sync()
        super().accept()
