"""What the app remembers between runs (QSettings), and the dialog that edits it."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QApplication,
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
THEMES = ("system", "light", "dark")
VIEW_MODES = ("split", "side", "diff")


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

    def clear_recent(self) -> None:
        self.store.setValue("recent", [])

    @property
    def theme(self) -> str:
        value = self._get("theme", "system", str)
        return value if value in THEMES else "system"

    @theme.setter
    def theme(self, value: str) -> None:
        self.store.setValue("theme", value)

    # What the main window was left showing: restored when it opens again.

    @property
    def view_mode(self) -> str:
        value = self._get("window/view_mode", "split", str)
        return value if value in VIEW_MODES else "split"

    @view_mode.setter
    def view_mode(self, value: str) -> None:
        self.store.setValue("window/view_mode", value)

    @property
    def strength(self) -> int | None:
        """0-100, or None for each operator's own default."""
        value = self._get("request/strength", -1, int)
        return min(100, value) if value >= 0 else None

    @strength.setter
    def strength(self, value: int | None) -> None:
        self.store.setValue("request/strength", -1 if value is None else int(value))

    @property
    def last_request(self) -> dict:
        """{"mode": "task" | "instruction", "task", "model", "instruction"} as last chosen."""
        mode = self._get("request/mode", "task", str)
        return {"mode": mode if mode in ("task", "instruction") else "task",
                "task": self._get("request/task", "denoise", str), "model": self._get("request/model", "", str),
                "instruction": self._get("request/instruction", "", str)}

    def remember_request(self, mode: str, task: str, model: str, instruction: str) -> None:
        for key, value in (("mode", mode), ("task", task), ("model", model), ("instruction", instruction)):
            self.store.setValue(f"request/{key}", value)

    @property
    def geometry(self) -> QByteArray:
        value = self.store.value("window/geometry", QByteArray())
        return value if isinstance(value, QByteArray) else QByteArray()

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self.store.setValue("window/geometry", value)

    def options(self, **overrides) -> request.Options:
        return request.Options(device=self.device, tile=self.tile or None, **overrides)

    def sync(self) -> None:
        self.store.sync()


def dark_palette() -> QPalette:
    """Fusion's roles in dark greys, with a blue accent that reads on them."""
    p = QPalette()
    window, base, text = QColor(45, 45, 48), QColor(30, 30, 32), QColor(230, 230, 230)
    disabled = QColor(130, 130, 130)
    for role, colour in (
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, QColor(40, 40, 43)),
        (QPalette.ColorRole.ToolTipBase, QColor(60, 60, 64)), (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.PlaceholderText, QColor(150, 150, 150)), (QPalette.ColorRole.Text, text),
        (QPalette.ColorRole.Button, QColor(58, 58, 62)), (QPalette.ColorRole.ButtonText, text),
        (QPalette.ColorRole.BrightText, QColor(255, 90, 90)), (QPalette.ColorRole.Light, QColor(75, 75, 80)),
        (QPalette.ColorRole.Midlight, QColor(65, 65, 70)), (QPalette.ColorRole.Mid, QColor(50, 50, 54)),
        (QPalette.ColorRole.Dark, QColor(25, 25, 27)), (QPalette.ColorRole.Shadow, QColor(10, 10, 10)),
        (QPalette.ColorRole.Highlight, QColor(53, 132, 228)), (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
        (QPalette.ColorRole.Link, QColor(110, 170, 255)), (QPalette.ColorRole.LinkVisited, QColor(170, 140, 255)),
    ):
        p.setColor(role, colour)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Highlight, QColor(80, 80, 85))
    return p


def light_palette() -> QPalette:
    p = QApplication.style().standardPalette()
    p.setColor(QPalette.ColorRole.Highlight, QColor(38, 110, 200))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    return p


def system_is_dark() -> bool:
    """Qt 6.5+: the platform's light/dark setting (Unknown, as offscreen, counts as light)."""
    return QApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


_THEME_KEY = "restorerTheme"  # an application property: the theme in force, for the system-change handler


def apply_theme(theme: str) -> bool:
    """Fusion with a dark palette for "dark" (or "system" when the system is dark), a light
    one otherwise, for the whole application; returns whether it is dark. With "system" the
    palette follows later changes of the system's scheme too."""
    app = QApplication.instance()
    if app is None:
        return False
    if app.property(_THEME_KEY) is None:  # connect once per application, whatever the number of windows
        app.styleHints().colorSchemeChanged.connect(lambda _scheme: _follow_system(app))
    app.setProperty(_THEME_KEY, theme)
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")  # the native styles ignore a dark palette in places
    dark = theme == "dark" or (theme == "system" and system_is_dark())
    app.setPalette(dark_palette() if dark else light_palette())
    for window in app.topLevelWidgets():
        if window.styleSheet():  # a style sheet's widgets keep the old palette until it is set again
            window.setStyleSheet(window.styleSheet())
    return dark


def _follow_system(app) -> None:
    if app.property(_THEME_KEY) == "system":
        apply_theme("system")


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
        self.theme = QComboBox()
        self.theme.addItems(["Follow the system", "Light", "Dark"])
        self.theme.setCurrentIndex(THEMES.index(settings.theme))
        form.addRow("Theme", self.theme)
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
        s.theme = THEMES[self.theme.currentIndex()]
        s.sync()
        super().accept()
