"""The main window's layout and look: controls that stay under the pointer, the zoom readout,
the theme, the keyboard shortcuts and what is remembered between runs (offscreen Qt)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QKeySequence, QPalette  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
ONE_STEP = "denoise"
FIVE_STEPS = "it's too dark and grainy and hazy, then upscale 16x"
NEEDS_DOWNLOAD = "remove rain, denoise, sharpen and upscale 2x"  # steps, missing ones, and the offer


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    return home


def make_settings(path):
    from restorer_ui.settings import AppSettings

    return AppSettings(QSettings(str(path), QSettings.Format.IniFormat))


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "settings.ini")


def make_window(qtbot, settings):
    from restorer_ui.main_window import MainWindow

    w = MainWindow(settings)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


@pytest.fixture
def window(qtbot, settings):
    w = make_window(qtbot, settings)
    w.resize(1000, 700)
    yield w
    w.set_theme("system")  # the palette is the application's: leave it as the next test expects


def open_and_wait(qtbot, window, path):
    window.open_path(path)
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=10000)


# ---------------------------------------------------------------- layout


def test_buttons_and_strength_stay_put_when_the_plan_grows(qtbot, window):
    """A click aimed at Restore must not miss because the plan above it grew."""
    open_and_wait(qtbot, window, SAMPLES / "kodim05_crop256.png")
    fixed = [window.restore_button, window.request.strength, window.preview_button, window.cancel_button,
             window.save_button, window.progress]

    def places():
        QApplication.processEvents()
        return [(w.mapTo(window, QPoint(0, 0)), w.size()) for w in fixed]

    window.request.set_task(ONE_STEP)
    assert window.request.plan.text().count("<br>") == 0  # one line
    start = places()
    for instruction in (FIVE_STEPS, NEEDS_DOWNLOAD):
        window.request.set_instruction(instruction)
        assert window.request.plan.text().count("<br>") >= 4, window.request.plan.text()
        assert places() == start, instruction
    assert window.restore_button.text() == "Download and restore"
    window.request.set_task("old-photo")  # its own option rows appear above
    assert places() == start
    window.show_info("a long message\n" * 20)
    assert places() == start
    window.request.set_task(ONE_STEP)
    window.preview_action.setChecked(True)  # the Preview button, checked, is drawn bold
    assert window.preview_button.isChecked() and places() == start
    window.preview_action.setChecked(False)
    assert places() == start


def test_zoom_reads_nothing_without_a_photo_and_fits_on_open(qtbot, window):
    assert window.zoom_label.text() == "—"
    assert not window.zoom_in_action.isEnabled() and not window.fit_action.isEnabled()
    window.view.fit()
    assert window.zoom_label.text() == "—" and window.view.zoom == 1.0
    open_and_wait(qtbot, window, SAMPLES / "lol_low_778.png")  # 600 x 400
    view = window.view
    expected = min(view.width() / 600, view.height() / 400)
    assert view.fitting and view.zoom == pytest.approx(expected)
    assert window.zoom_label.text() == f"{expected * 100:.0f}%"
    assert window.zoom_in_action.isEnabled()


# ---------------------------------------------------------------- theme


def lightness(widget) -> int:
    QApplication.processEvents()  # the palette reaches widgets by events
    return widget.palette().color(QPalette.ColorRole.Window).lightness()


def test_dark_and_light_themes(qtbot, window, settings, monkeypatch):
    import restorer_ui.settings as settings_module

    window.set_theme("dark")
    assert QApplication.style().name().lower() == "fusion"
    assert lightness(window) < 80 and lightness(window.request) < 80 and lightness(window.restore_button) < 80
    assert window.theme_actions["dark"].isChecked() and settings.theme == "dark"
    text = window.palette().color(QPalette.ColorRole.WindowText).lightness()
    assert text > 180  # still readable
    window.set_theme("light")
    assert lightness(window) > 180
    # "system" follows the platform's colour scheme (offscreen has none: light)
    window.set_theme("system")
    assert lightness(window) > 180
    monkeypatch.setattr(settings_module, "system_is_dark", lambda: True)
    settings_module.apply_theme("system")
    assert lightness(window) < 80
    monkeypatch.undo()
    window.set_theme("system")
    assert lightness(window) > 180


def test_theme_setting_is_offered_and_remembered(qtbot, window, settings, tmp_path):
    from restorer_ui.settings import SettingsDialog

    dialog = SettingsDialog(settings, window)
    dialog.theme.setCurrentIndex(2)  # Dark
    dialog.accept()
    assert make_settings(tmp_path / "settings.ini").theme == "dark"


# ---------------------------------------------------------------- shortcuts


def test_shortcuts_are_set_and_trigger_their_actions(qtbot, window, tmp_path, monkeypatch):
    import restorer_ui.main_window as main_window

    w = window
    expected = {
        w.open_action: "Ctrl+O", w.save_action: "Ctrl+S", w.save_as_action: "Ctrl+Shift+S",
        w.cycle_view_action: "C", w.zoom_in_action: "Ctrl++", w.zoom_out_action: "Ctrl+-",
        w.fit_action: "Ctrl+0", w.actual_size_action: "Ctrl+1", w.preview_action: "P",
        w.restore_action: "Ctrl+Return", w.cancel_action: "Esc",
    }
    for action, keys in expected.items():
        assert action.shortcut() == QKeySequence(keys), (action.text(), action.shortcut().toString())

    photo = SAMPLES / "kodim23_crop256.png"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(photo), ""))
    w.open_action.trigger()
    qtbot.waitUntil(lambda: w.source_path == photo and not w.is_busy(), timeout=10000)

    w.view.actual_size()
    w.zoom_in_action.trigger()
    assert w.view.zoom == pytest.approx(1.25)
    w.zoom_out_action.trigger()
    assert w.view.zoom == pytest.approx(1.0)
    w.fit_action.trigger()
    assert w.view.fitting
    w.actual_size_action.trigger()
    assert w.view.zoom == 1.0

    modes = []
    for _ in range(3):
        w.cycle_view_action.trigger()
        modes.append(w.view.mode)
    assert modes == ["side", "diff", "split"]
    assert w.mode_buttons["split"].isChecked()

    w.request.set_task("denoise", "builtin:denoise")
    w.preview_action.trigger()
    assert w.preview_action.isChecked() and w.preview_button.isChecked() and w.view.preview_rect() is not None
    qtbot.waitUntil(lambda: w.preview_result is not None and w.preview_job is None, timeout=20000)
    w.preview_action.trigger()
    assert not w.preview_button.isChecked() and w.view.preview_rect() is None

    w.restore_action.trigger()
    assert w.is_busy()
    w.cancel_action.trigger()
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=20000)
    w.restore_action.trigger()
    qtbot.waitUntil(lambda: not w.is_busy() and w.result is not None, timeout=20000)

    class Accept:  # the Save dialog, answered "save as PNG here"
        def __init__(self, path, fmt, quality, parent):
            self.path = tmp_path / ("saved.png" if not saved else "saved_as.png")

        def exec(self):
            return QDialog.DialogCode.Accepted

        def chosen(self):
            return self.path, "png", 95

    saved: list = []
    monkeypatch.setattr(main_window, "SaveDialog", Accept)
    w.save_action.trigger()  # never saved: Save asks where
    qtbot.waitUntil(lambda: w.save_job is None and (tmp_path / "saved.png").is_file(), timeout=10000)
    saved.append(1)
    w.save_as_action.trigger()
    qtbot.waitUntil(lambda: w.save_job is None and (tmp_path / "saved_as.png").is_file(), timeout=10000)
    assert w.save_path == tmp_path / "saved_as.png"


def test_keys_reach_the_actions(qtbot, window):
    """Real key presses, not just trigger(): C cycles the comparison, P starts a preview,
    and a letter typed into the instruction box stays text."""
    w = window
    open_and_wait(qtbot, w, SAMPLES / "kodim05_crop256.png")
    w.activateWindow()
    qtbot.waitActive(w)
    w.view.setFocus()
    qtbot.keyClick(w.view, Qt.Key.Key_C)
    assert w.view.mode == "side"
    qtbot.keyClick(w.view, Qt.Key.Key_P)
    assert w.preview_action.isChecked()
    qtbot.keyClick(w.view, Qt.Key.Key_Equal, Qt.KeyboardModifier.ControlModifier)  # Ctrl+= zooms in too
    qtbot.keyClicks(w.request.instruction, "cp")
    assert w.request.instruction.text() == "cp" and w.view.mode == "side" and w.preview_action.isChecked()
    # Ctrl+Enter from the instruction box restores
    w.preview_action.setChecked(False)
    qtbot.waitUntil(lambda: w.preview_job is None, timeout=20000)
    w.request.set_instruction("reduce the noise")
    qtbot.keyClick(w.request.instruction, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert w.is_busy()
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=20000)
    assert w.result is not None


# ---------------------------------------------------------------- remembered


def test_settings_persist_across_windows(qtbot, tmp_path):
    path = tmp_path / "remembered.ini"
    first = make_window(qtbot, make_settings(path))
    open_and_wait(qtbot, first, SAMPLES / "kodim05_crop256.png")
    first.request.set_task("dehaze", "builtin:dehaze")
    first.request.strength.setValue(70)
    first.request.update_plan()
    first.set_view_mode("side")
    first.resize(790, 560)  # within the offscreen screen's 800 x 600
    qtbot.wait(20)
    assert (first.width(), first.height()) == (790, 560)
    first.close()

    second = make_window(qtbot, make_settings(path))
    assert second.request.mode == "task" and second.request.task.currentData() == "dehaze"
    assert second.request.model.currentData() == "builtin:dehaze"
    assert second.request.strength_value() == pytest.approx(0.7)
    assert second.request.strength_label.text() == "Strength 70 %"
    assert second.view.mode == "side" and second.mode_actions["side"].isChecked()
    assert (second.width(), second.height()) == (790, 560)
    second.recent_menu.aboutToShow.emit()
    recent = [a for a in second.recent_menu.actions() if a.toolTip().endswith("kodim05_crop256.png")]
    assert recent and recent[0].isEnabled()
    recent[0].trigger()
    qtbot.waitUntil(lambda: second.source is not None and not second.is_busy(), timeout=10000)
    assert second.source_path.name == "kodim05_crop256.png"
    second.request.set_instruction("make it brighter")
    second.request.strength_auto.setChecked(True)
    second.close()

    third = make_window(qtbot, make_settings(path))
    assert third.request.mode == "instruction" and third.request.instruction.text() == "make it brighter"
    assert third.request.strength_value() is None
    third.recent_menu.aboutToShow.emit()
    clear = next(a for a in third.recent_menu.actions() if a.text() == "Clear the list")
    clear.trigger()
    third.recent_menu.aboutToShow.emit()
    assert [a.text() for a in third.recent_menu.actions()] == ["(none)"]
    third.close()
