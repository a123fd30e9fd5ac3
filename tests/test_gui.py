"""The desktop app, driven through its real widgets (offscreen Qt, pytest-qt)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PIL import Image as PILImage  # noqa: E402
from PySide6.QtCore import QMimeData, QPoint, QPointF, QRectF, QSettings, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent, QGuiApplication, QImage, QWheelEvent  # noqa: E402
from restorer_ui.imageconv import Pyramid, from_qimage  # noqa: E402

from restorer.archs.requirements import Requirements  # noqa: E402
from restorer.batch import restore as restore_module  # noqa: E402
from restorer.io import imaging  # noqa: E402
from restorer.run.runner import RunnerInfo  # noqa: E402
from restorer.zoo.catalog import parse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
BACKGROUND = (48, 48, 48)


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    return home


@pytest.fixture
def settings(tmp_path):
    from restorer_ui.settings import AppSettings

    return AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))


@pytest.fixture
def window(qtbot, settings):
    from restorer_ui.main_window import MainWindow

    w = MainWindow(settings)
    qtbot.addWidget(w)
    w.resize(1000, 700)
    w.show()
    qtbot.waitExposed(w)
    return w


def open_and_wait(qtbot, window, path):
    window.open_path(path)
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=10000)


def restore_and_wait(qtbot, window, task, model, timeout=20000):
    window.request.set_task(task, model)
    assert window.request.ok, window.request.plan.text()
    window.start_restore()
    assert window.is_busy()
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=timeout)
    assert window.result is not None, window.message.text()


def grab(view) -> np.ndarray:
    return from_qimage(view.grab().toImage())


def layer_pixel(pyramid: Pyramid, view, x: float, y: float) -> np.ndarray:
    """The pixel of a layer (stretched to the canvas) at a widget position."""
    p = view.widget_to_canvas(QPointF(x, y))
    cw, _ = view.canvas_size()
    f = pyramid.width / cw
    return pyramid.arrays[0][int(p.y() * f), int(p.x() * f), :3].astype(int)


# ---------------------------------------------------------------- main window


def test_open_restore_and_divider_shows_before_left_after_right(qtbot, window):
    open_and_wait(qtbot, window, SAMPLES / "lol_low_778.png")
    assert window.source.width == 600 and window.file_label.text().startswith("<b>lol_low_778.png")
    restore_and_wait(qtbot, window, "lowlight", "builtin:lowlight")
    assert window.progress.value() == 1000
    assert "lowlight: builtin:lowlight" in window.message.text()
    view = window.view
    view.actual_size()  # 1:1, no resampling: the screen shows the layers' own pixels
    qtbot.wait(10)

    def side_of(x, y):
        shown = grab(view)[y, x].astype(int)
        d_before = np.abs(shown - layer_pixel(view.before, view, x, y)).sum()
        d_after = np.abs(shown - layer_pixel(view.after, view, x, y)).sum()
        assert min(d_before, d_after) <= 6, (shown, d_before, d_after)
        return "before" if d_before < d_after else "after"

    y = view.height() // 3
    x_div = int(view.divider_x())
    assert side_of(x_div - 60, y) == "before"
    assert side_of(x_div + 60, y) == "after"

    # Drag the divider 150 px to the left: the strip it crossed now shows the result.
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(x_div, y))
    for x in range(x_div, x_div - 151, -30):
        qtbot.mouseMove(view, QPoint(x, y))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(x_div - 150, y))
    assert abs(view.divider_x() - (x_div - 150)) <= 1
    assert side_of(x_div - 60, y) == "after"
    assert side_of(x_div - 200, y) == "before"

    # Side by side: both panes show the same canvas point.
    window.set_view_mode("side")
    qtbot.wait(10)
    left, right = view.panes()
    img = grab(view)
    c = view.center
    lp, rp = view.canvas_to_widget(c, left), view.canvas_to_widget(c, right)
    (lx, ly), (rx, ry) = (int(lp.x()), int(lp.y())), (int(rp.x()), int(rp.y()))
    before_px = view.before.arrays[0][int(c.y()), int(c.x()), :3].astype(int)
    after_px = view.after.arrays[0][int(c.y()), int(c.x()), :3].astype(int)
    assert np.abs(img[ly, lx].astype(int) - before_px).sum() <= 12
    assert np.abs(img[ry, rx].astype(int) - after_px).sum() <= 12

    window.set_view_mode("diff")
    qtbot.wait(10)
    diff = view.diff_pyramid().arrays[0]
    expected = np.clip(np.abs(view.after.arrays[0][..., :3].astype(int) - view.before.arrays[0][..., :3]) * 4, 0, 255)
    assert np.array_equal(diff, expected.astype(np.uint8))


def test_zoom_and_pan_keep_the_point_under_the_cursor(qtbot, window):
    open_and_wait(qtbot, window, SAMPLES / "kodim05_crop256.png")
    view = window.view
    view.setFocus()
    view.fit()
    fit_zoom = view.zoom
    anchor = QPointF(view.width() * 0.3, view.height() * 0.4)
    under = view.widget_to_canvas(anchor)
    wheel = QWheelEvent(anchor, view.mapToGlobal(anchor), QPoint(0, 0), QPoint(0, 240), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QGuiApplication.sendEvent(view, wheel)
    assert view.zoom == pytest.approx(fit_zoom * 1.25 ** 2)
    after = view.widget_to_canvas(anchor)
    assert (after.x(), after.y()) == pytest.approx((under.x(), under.y()), abs=1e-6)
    assert window.zoom_label.text() == f"{view.zoom * 100:.0f}%"

    # Pan by dragging away from the divider: the canvas follows the mouse.
    center = QPointF(view.center)
    start = QPoint(int(view.width() * 0.2), int(view.height() * 0.5))
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(view, start + QPoint(40, 30))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=start + QPoint(40, 30))
    moved = view.center
    assert (moved.x(), moved.y()) == pytest.approx((center.x() - 40 / view.zoom, center.y() - 30 / view.zoom))

    qtbot.keyClick(view, Qt.Key.Key_1)
    assert view.zoom == 1.0
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    assert view.zoom == pytest.approx(1.25)
    qtbot.keyClick(view, Qt.Key.Key_0)
    assert view.fitting and view.zoom == pytest.approx(fit_zoom)
    # A fitted 256x256 image fills the view's height: no background at the top-centre.
    assert tuple(grab(view)[2, view.width() // 2]) != BACKGROUND


def test_pyramid_paints_a_level_near_the_zoom():
    big = np.random.default_rng(0).integers(0, 255, (2048, 4096, 3), dtype=np.uint8)
    pyramid = Pyramid.build(big)
    assert [lvl.width() for lvl in pyramid.levels] == [4096, 2048, 1024, 512]
    assert pyramid.level_for(0.1).width() == 512
    assert pyramid.level_for(0.3).width() == 2048
    assert pyramid.level_for(1.0).width() == 4096
    assert pyramid.level_for(3.0).width() == 4096


def test_superres_before_is_stretched_to_the_result(qtbot, window):
    open_and_wait(qtbot, window, SAMPLES / "kodim05_crop256.png")
    window.request.scale.setCurrentIndex(0)  # x2
    restore_and_wait(qtbot, window, "superres", "builtin:upscale")
    view = window.view
    assert (window.result.width, window.result.height) == (512, 512)
    assert view.canvas_size() == (512, 512) and view.before.width == 256
    view.fit()
    qtbot.wait(10)
    # The bottom-left of the canvas, left of the divider, shows the original's bottom-left.
    p = view.canvas_to_widget(QPointF(40, 480))
    shown = grab(view)[int(p.y()), int(p.x())].astype(int)
    assert tuple(shown) != BACKGROUND
    assert np.abs(shown - view.before.arrays[0][240, 20].astype(int)).sum() < 60


def test_task_options_reach_the_steps(qtbot, window):
    """The CLI's --strength, --scratches/--faces/--hr and --mask/--dilate, in the window."""
    panel = window.request
    panel.set_task("denoise")
    assert panel.strength.isEnabled() and not panel.hr.isVisibleTo(panel)
    # Auto: no strength in the plan (the operator's own default), the slider shows that default
    assert panel.strength_auto.isChecked() and "strength" not in panel.resolve_plan().steps[0].options
    assert panel.strength_label.text() == "Strength 50 % (auto)"
    panel.strength.setValue(100)  # moving the slider is a choice: Auto goes off
    assert not panel.strength_auto.isChecked() and panel.strength_label.text() == "Strength 100 %"
    assert panel.resolve_plan().steps[0].options["strength"] == 1.0
    panel.set_task("old-photo")
    assert panel.hr.isVisibleTo(panel) and not panel.strength.isEnabled()
    assert "strength" not in panel.resolve_plan().steps[0].options
    panel.hr.setChecked(True)
    panel.faces.setChecked(False)
    panel.scratches.setCurrentIndex(panel.scratches.findData("yes"))
    options = panel.resolve_plan().steps[0].options
    assert options["hr"] is True and options["faces"] is False and options["scratches"] == "yes"
    panel.set_task("remove-text")
    panel.dilate.setValue(5)
    panel.mask_path.setText("/tmp/mask.png")
    options = panel.resolve_plan().steps[0].options
    assert options["dilate"] == 5 and options["mask"] == "/tmp/mask.png"


def test_live_plan_follows_the_instruction(qtbot, window):
    box = window.request.instruction
    qtbot.keyClicks(box, "remove the noise then upscale 2x")
    assert window.request.mode == "instruction"
    qtbot.waitUntil(lambda: "Upscale" in window.request.plan.text(), timeout=3000)
    plan = window.request.plan.text()
    # plain words in the box, the engine's in its tooltip
    assert plan.index("Reduce noise") < plan.index("Upscale 2×") and "built-in filter" in plan
    assert "builtin:denoise" not in plan and "builtin:denoise" in window.request.plan.toolTip()
    box.clear()
    qtbot.keyClicks(box, "zzqx wibble")
    qtbot.waitUntil(lambda: "#c0392b" in window.request.plan.text(), timeout=3000)
    assert not window.request.ok
    assert not window.restore_button.isEnabled()


def test_unreadable_file_is_an_error_in_the_window(qtbot, window, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    open_and_wait(qtbot, window, bad)
    assert "cannot read" in window.message.text() and "broken.jpg" in window.message.text()
    assert window.source is None and window.isVisible()


def test_paste_and_drop_open_images(qtbot, window, tmp_path):
    image = QImage(64, 48, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.red)
    QGuiApplication.clipboard().setImage(image)
    window.paste()
    assert (window.source.width, window.source.height) == (64, 48)
    assert window.source.pixels[10, 10, 0] == pytest.approx(1.0)
    assert window.default_save_path().name == "pasted_restored.png"

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(SAMPLES / "set12_01_gray.png"))])
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    window.dropEvent(drop)
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=5000)
    assert window.source_path.name == "set12_01_gray.png" and window.source.meta.gray
    assert window.settings.recent[0].endswith("set12_01_gray.png")


def test_save_never_replaces_the_original_without_a_yes(qtbot, window, tmp_path):
    original = tmp_path / "photo.png"
    shutil.copy(SAMPLES / "kodim23_crop256.png", original)
    before = original.read_bytes()
    open_and_wait(qtbot, window, original)
    restore_and_wait(qtbot, window, "denoise", "builtin:denoise")
    assert window.default_save_path() == tmp_path / "photo_restored.png"

    questions = []
    window.ask = lambda title, text: questions.append(text) or False
    assert not window.write(original, "png", 95)
    assert original.read_bytes() == before and "original" in questions[0]

    # Save As JPEG next to it: written atomically, reloads at the result's size.
    out = tmp_path / "photo_restored.jpg"
    assert window.write(out, "jpg", 80)
    qtbot.waitUntil(lambda: window.save_job is None, timeout=10000)
    assert imaging.load(out).pixels.shape == window.result.pixels.shape
    assert window.save_path == out

    window.ask = lambda title, text: True
    assert window.write(original, "png", 95)
    qtbot.waitUntil(lambda: window.save_job is None, timeout=10000)
    assert original.read_bytes() != before


class SlowRunner:
    """An identity runner that takes its time on every tile."""

    needs = Requirements(overlap=0, preferred_tile=64)

    def __init__(self):
        self.info = RunnerInfo("builtin:denoise", "builtin", "numpy")
        self.calls = 0

    def __call__(self, batch, **extra):
        self.calls += 1
        time.sleep(0.05)
        return batch.copy()

    def close(self):
        pass


def test_cancel_a_long_run_and_the_window_stays_responsive(qtbot, window, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    PILImage.fromarray(np.random.default_rng(1).integers(0, 255, (640, 640, 3), dtype=np.uint8)).save(path)
    open_and_wait(qtbot, window, path)
    runner = SlowRunner()
    monkeypatch.setattr(restore_module, "step_runner", lambda step, ctx: runner)
    window.request.set_task("denoise", "builtin:denoise")
    ticks = []
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    window.start_restore()
    qtbot.waitUntil(lambda: window.progress.value() > 0, timeout=5000)
    qtbot.wait(300)
    assert window.is_busy() and window.cancel_button.isEnabled()
    assert "tile" in window.progress_label.text()
    qtbot.waitUntil(lambda: window.progress_label.text().endswith("left"), timeout=3000)
    calls_at_cancel = runner.calls
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=3000)
    timer.stop()
    assert "Cancelled" in window.message.text()
    assert window.result is None and window.view.after is None
    assert runner.calls <= calls_at_cancel + 2  # stopped after the tile in flight
    assert runner.calls < 100  # far from the whole image
    # The event loop kept running while tiles were computed: no gap of half a second.
    assert len(ticks) > 20 and max(np.diff(ticks)) < 0.5
    assert window.restore_button.isEnabled()


# ---------------------------------------------------------------- first-use download


@pytest.fixture
def download_window(qtbot, settings, tmp_path, monkeypatch):
    """A window whose catalog has one downloadable tiny HAT (nothing installed), served by a
    127.0.0.1 mirror; the photo is open."""
    from restorer_ui.main_window import MainWindow

    from tests.store_helpers import HAT_TINY, FileServer, tiny_hat_entry, use_catalog

    data = (HAT_TINY / "hat_tiny_x2.safetensors").read_bytes()
    catalog = use_catalog(monkeypatch, tiny_hat_entry(
        "tiny-hat", tasks=["derain"], licence="MIT",
        files=[{"name": "tiny-hat.safetensors", "url": "https://example.invalid/tiny-hat.safetensors",
                "size": len(data)}]))
    import restorer.convert.export as export

    # no template ships for the tiny HAT: skip its (slow) export, the eager runner restores
    monkeypatch.setattr(export, "export_model", lambda spec, **kw: (_ for _ in ()).throw(RuntimeError("skipped")))
    server = FileServer({"/m/tiny-hat.safetensors": data}).__enter__()
    monkeypatch.setenv("RESTORER_MIRROR", f"{server.url}/m")
    w = MainWindow(settings, catalog)
    qtbot.addWidget(w)
    w.show()
    photo = tmp_path / "photo.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)).save(photo)
    open_and_wait(qtbot, w, photo)
    yield w
    server.__exit__(None, None, None)


def test_download_and_restore_button(qtbot, download_window, store_home):
    """derain has no built-in operator: the button offers the download with its size and
    licence, one click fetches, installs and restores."""
    w = download_window
    w.request.set_task("derain")
    qtbot.waitUntil(lambda: w.restore_button.text() == "Download and restore", timeout=3000)
    assert w.restore_button.isEnabled()
    assert "derain needs tiny-hat" in w.request.plan.text() and "licence MIT" in w.request.plan.text()
    assert "KB" in w.restore_button.toolTip()
    qtbot.mouseClick(w.restore_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.result is not None, timeout=60000)
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=10000)
    assert (store_home / "models" / "tiny-hat" / "tiny-hat.safetensors").is_file()
    assert (w.result.width, w.result.height) == (48, 40)
    assert "derain: tiny-hat" in w.message.text()
    assert w.restore_button.text() == "Restore"


def test_download_and_restore_can_be_cancelled(qtbot, download_window, store_home, monkeypatch):
    import restorer_ui.main_window as main_window

    def slow_download(spec, progress=None, **kw):
        for done in range(0, 1000):
            progress(done * 1000, 1_000_000)  # raises once Cancel is clicked
            time.sleep(0.01)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(main_window.download, "download", slow_download)
    w = download_window
    w.request.set_task("derain")
    qtbot.waitUntil(lambda: w.restore_button.text() == "Download and restore", timeout=3000)
    qtbot.mouseClick(w.restore_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "MB" in w.progress_label.text(), timeout=5000)
    assert w.cancel_button.isEnabled()
    qtbot.mouseClick(w.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=5000)
    assert "Download cancelled" in w.message.text() and w.result is None
    assert not (store_home / "models" / "tiny-hat").exists()
    assert w.restore_button.text() == "Download and restore" and w.restore_button.isEnabled()


# ---------------------------------------------------------------- batch


def test_batch_of_five_with_a_bad_file(qtbot, settings, tmp_path):
    from restorer_ui.batch_window import BatchWindow

    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    crop = np.asarray(PILImage.open(SAMPLES / "kodim05_crop256.png"))[:64, :64]
    for i, folder in enumerate([source, source, source / "sub", source / "sub"]):
        PILImage.fromarray(np.roll(crop, 7 * i, axis=1)).save(folder / f"photo{i}.png")
    (source / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    target = tmp_path / "out"

    w = BatchWindow(settings)
    qtbot.addWidget(w)
    w.show()
    w.input_edit.setText(str(source))
    w.output_edit.setText(str(target))
    w.suffix.setText("_r")
    w.request.set_task("denoise", "builtin:denoise")
    qtbot.mouseClick(w.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.is_running(), timeout=20000)
    assert w.table.rowCount() == 5
    summary = w.summary.toPlainText()
    assert summary.startswith("4 restored, 0 skipped (already there), 1 failed"), summary
    assert "bad.png" in summary
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == [
        "photo0_r.png", "photo1_r.png", "sub/photo2_r.png", "sub/photo3_r.png"]
    statuses = [w.table.item(r, 2).text() for r in range(5)]
    assert statuses.count("done") == 4 and statuses.count("FAILED") == 1
    assert w.progress.value() == 1000
    # Thumbnails for the rows on screen; none for the file that is not an image.
    qtbot.waitUntil(lambda: not w._thumb_timer.isActive(), timeout=5000)
    icons = {w.items[r].input.name: not w.table.item(r, 0).icon().isNull() for r in range(5)}
    assert icons["bad.png"] is False and sum(icons.values()) == 4

    # Again: what exists is skipped, as restorer-cli does.
    qtbot.mouseClick(w.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.is_running(), timeout=20000)
    assert w.summary.toPlainText().startswith("0 restored, 4 skipped (already there), 1 failed")


# ---------------------------------------------------------------- model manager

PAYLOAD = b"restorer test weights " * 500


def test_catalog_entry(url: str) -> str:
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    return f'''
[[model]]
id = "tiny-test"
title = "Tiny test network"
family = "test"
tasks = ["denoise"]
arch = "test"
licence = "CC-BY-NC-4.0"
non_commercial = true
[[model.files]]
name = "tiny.safetensors"
url = "{url}"
sha256 = "{sha}"
size = {len(PAYLOAD)}
'''


test_catalog_entry.__test__ = False  # a helper, not a test


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "tiny.safetensors").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_model_manager_downloads_verifies_and_removes(qtbot, settings, served, store_home, monkeypatch):
    from restorer_ui.model_manager import ModelManager

    monkeypatch.setenv("RESTORER_MIRROR", served)
    catalog = parse(test_catalog_entry("https://models.example.invalid/v1/tiny.safetensors"))
    m = ModelManager(settings, catalog)
    qtbot.addWidget(m)
    m.show()
    assert "Device in use: " in m.device_label.text()
    assert ("CPU" in m.device_label.text()) or ("CUDA" in m.device_label.text())
    m.select("tiny-test")
    row = m.rows("tiny-test")[0]
    assert m.state_of("tiny-test") == "not installed"
    assert "NON-COMMERCIAL" in row.text(3) and row.text(2) == "11.0 KB"
    assert m.buttons["download"].isEnabled() and not m.buttons["verify"].isEnabled()

    changed = []
    m.changed.connect(lambda: changed.append(1))
    qtbot.mouseClick(m.buttons["download"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: m.job is None, timeout=10000)
    assert m.state_of("tiny-test") == "installed", m.status.text()
    assert (store_home / "models" / "tiny-test" / "tiny.safetensors").read_bytes() == PAYLOAD
    assert "installed: tiny-test" in m.status.text() and m.progress.value() == 1000 and changed

    m.select("tiny-test")
    qtbot.mouseClick(m.buttons["verify"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: m.job is None, timeout=10000)
    assert "every file is sound" in m.status.text()

    m.select("tiny-test")
    m.ask = lambda title, text: True
    qtbot.mouseClick(m.buttons["remove"], Qt.MouseButton.LeftButton)
    assert m.state_of("tiny-test") == "not installed"
    assert not (store_home / "models" / "tiny-test").exists()


def test_model_manager_reports_a_failed_download(qtbot, settings, served, monkeypatch):
    from restorer_ui.model_manager import ModelManager

    monkeypatch.setenv("RESTORER_MIRROR", served)
    catalog = parse(test_catalog_entry("https://models.example.invalid/v1/missing.safetensors"))
    m = ModelManager(settings, catalog)
    qtbot.addWidget(m)
    m.select("tiny-test")
    m.download_selected()
    qtbot.waitUntil(lambda: m.job is None, timeout=10000)
    assert "HTTP 404" in m.status.text() and m.state_of("tiny-test") == "not installed"


def test_model_manager_adds_a_file_recognised_by_its_tensors(qtbot, settings, tmp_path, store_home):
    pytest.importorskip("torch")
    from restorer_ui.model_manager import ModelManager
    from safetensors.numpy import save_file

    from restorer.zoo import recognise as recognise_mod

    catalog = parse('''
[[model]]
id = "tiny-lm"
title = "Tiny language head"
family = "test"
tasks = []
arch = "InstructIRLMHead"
hparams = { embedding_dim = 8, hidden_dim = 4, num_classes = 3 }
licence = "MIT"
[[model.files]]
name = "lm_tiny.safetensors"
url = "https://models.example.invalid/lm_tiny.safetensors"
''')
    shapes = recognise_mod.signature(catalog.get("tiny-lm"))
    path = tmp_path / "downloaded by hand.safetensors"
    save_file({k: np.zeros(v, np.float32) for k, v in shapes.items()}, str(path))
    m = ModelManager(settings, catalog)
    qtbot.addWidget(m)
    assert m.state_of("tiny-lm") == "not installed"
    m.add_file(str(path))
    qtbot.waitUntil(lambda: m.job is None, timeout=20000)
    assert m.state_of("tiny-lm") == "installed", m.status.text()
    assert (store_home / "models" / "tiny-lm" / "lm_tiny.safetensors").is_file()

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    m.add_file(str(tmp_path / "junk.safetensors"))
    qtbot.waitUntil(lambda: m.job is None, timeout=20000)
    assert "failed" in m.status.text() and "junk.safetensors" in m.status.text()


# ---------------------------------------------------------------- start-up


def test_settings_round_trip(settings):
    settings.device, settings.tile, settings.output_format = "cpu", 512, "jpg"
    for i in range(12):
        settings.add_recent(f"/photos/{i}.jpg")
    settings.sync()
    from restorer_ui.settings import AppSettings

    again = AppSettings(QSettings(settings.store.fileName(), QSettings.Format.IniFormat))
    assert (again.device, again.tile, again.output_format) == ("cpu", 512, "jpg")
    assert again.recent[0] == "/photos/11.jpg" and len(again.recent) == 10
    assert again.options().tile == 512 and again.options().device == "cpu"


def _env():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    return env


def test_main_window_import_does_not_import_torch():
    code = ("import sys, restorer_ui.main_window, restorer_ui.batch_window, restorer_ui.model_manager, "
            "restorer_ui.app; bad = [m for m in ('torch', 'onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_selftest_exits_zero(tmp_path):
    script = Path(sys.executable).with_name("restorer")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "restorer_ui.app"]
    env = _env()
    env["HOME"] = str(tmp_path)  # the self-test must not need (or touch) the user's settings
    done = subprocess.run([*command, "--selftest"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "selftest: ok" in done.stdout


# ---------------------------------------------------------------- region preview


def preview_and_wait(qtbot, window, runs=None, timeout=20000):
    """Wait for the preview run number `runs` (default: one more than now) to be shown."""
    runs = window.preview_runs + 1 if runs is None else runs
    qtbot.waitUntil(lambda: window.preview_runs >= runs and window.preview_job is None
                    and window.preview_result is not None, timeout=timeout)
    return window.preview_result


def test_region_preview_equals_the_whole_run_there(qtbot, window):
    """Preview on a region through PreviewJob; the rest of the photo stays the original; the
    whole run then gives the same pixels there (restore_region's context: within a fraction
    of an 8-bit step for built-in denoising)."""
    open_and_wait(qtbot, window, SAMPLES / "lol_low_778.png")
    window.request.set_task("denoise", "builtin:denoise")
    view = window.view
    view.set_preview_rect(QRectF(300, 120, 200, 150))
    window.preview_button.click()
    assert window.preview_action.isChecked()
    result = preview_and_wait(qtbot, window, runs=1)
    assert result.box == (300, 120, 500, 270) and result.image.pixels.shape == (150, 200, 3)
    assert view.after is None and view.has_comparison()

    # On screen at 100 %: inside the region the after side shows the preview, outside the original.
    view.actual_size()
    view.set_divider(0.0)  # all of the view is the after side
    qtbot.wait(10)
    shown = grab(view)
    patch = view.preview_result()[0].arrays[0]
    inside = view.image_to_widget(QRectF(400, 200, 1, 1)).topLeft()
    outside = view.image_to_widget(QRectF(150, 200, 1, 1)).topLeft()
    assert np.abs(shown[int(inside.y()), int(inside.x())].astype(int) - patch[80, 100, :3]).sum() <= 6
    assert np.abs(shown[int(outside.y()), int(outside.x())].astype(int)
                  - view.before.arrays[0][200, 150, :3]).sum() <= 6
    assert np.abs(patch[80, 100, :3].astype(int) - view.before.arrays[0][200, 400, :3]).sum() > 0

    restore_and_wait(qtbot, window, "denoise", "builtin:denoise")
    whole = window.result.pixels[120:270, 300:500]
    diff = np.abs(whole - result.image.pixels)
    assert diff.max() < 0.5 / 255 and diff.mean() < 0.05 / 255, (diff.max() * 255, diff.mean() * 255)
    # the whole result shows what the preview did: no patch over it, and no re-run for the same plan
    assert view.preview_result()[0] is None and view.preview_rect() == QRectF(300, 120, 200, 150)
    qtbot.wait(400)
    assert window.preview_runs == 1


def test_changing_strength_reruns_the_preview(qtbot, window):
    open_and_wait(qtbot, window, SAMPLES / "kodim05_crop256.png")
    window.request.set_task("denoise", "builtin:denoise")
    window.preview_action.trigger()
    first = preview_and_wait(qtbot, window, runs=1)
    assert first.box == (0, 0, 256, 256)  # the default region, cut to a small photo
    window.request.strength.setValue(100)
    second = preview_and_wait(qtbot, window, runs=2)
    assert window.preview_job is None and not np.array_equal(first.image.pixels, second.image.pixels)
    # stronger denoising moves further from the original
    original = window.source.pixels
    assert np.abs(second.image.pixels - original).mean() > np.abs(first.image.pixels - original).mean()
    # a slider drag re-runs once, when it rests (debounced), not per step
    for value in (90, 80, 70, 60):
        window.request.strength.setValue(value)
    preview_and_wait(qtbot, window, runs=3)
    qtbot.wait(600)
    assert window.preview_runs == 3
    # turned off: outline and preview go, changes run nothing
    window.preview_action.trigger()
    assert window.view.preview_rect() is None and window.view.preview_result()[0] is None
    window.request.strength.setValue(20)
    qtbot.wait(600)
    assert window.preview_runs == 3


def test_drag_moves_the_preview_region_and_shift_drag_draws_one(qtbot, window):
    open_and_wait(qtbot, window, SAMPLES / "lol_low_778.png")
    window.request.set_task("denoise", "builtin:denoise")
    view = window.view
    view.set_preview_rect(QRectF(100, 80, 160, 120))
    window.preview_action.trigger()
    preview_and_wait(qtbot, window, runs=1)
    view.actual_size()
    view.set_divider(0.0)
    moved = []
    view.previewRectMoved.connect(moved.append)

    start = view.image_to_widget(QRectF(180, 140, 1, 1)).topLeft().toPoint()
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=start)
    for step in range(1, 5):
        qtbot.mouseMove(view, start + QPoint(10 * step, 8 * step))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=start + QPoint(40, 32))
    assert view.preview_rect() == QRectF(140, 112, 160, 120) and moved == [QRectF(140, 112, 160, 120)]
    assert view.center == QPointF(300, 200)  # a drag inside the region moves it, not the photo
    result = preview_and_wait(qtbot, window, runs=2)
    assert result.box == (140, 112, 300, 232)

    # Shift-drag draws a new region; dragging outside it pans as before
    a = view.image_to_widget(QRectF(20, 30, 1, 1)).topLeft().toPoint()
    b = view.image_to_widget(QRectF(120, 90, 1, 1)).topLeft().toPoint()
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, pos=a)
    qtbot.mouseMove(view, b)
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, pos=b)
    assert view.preview_rect() == QRectF(20, 30, 100, 60)
    assert preview_and_wait(qtbot, window, runs=3).box == (20, 30, 120, 90)
    # dragged past the photo's edge: the region stays inside it
    inside = view.image_to_widget(QRectF(50, 50, 1, 1)).topLeft().toPoint()
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=inside)
    qtbot.mouseMove(view, inside + QPoint(-300, -300))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=inside + QPoint(-300, -300))
    assert view.preview_rect() == QRectF(0, 0, 100, 60)


def test_superres_preview_fills_its_region(qtbot, window):
    """An x2 preview has twice the region's pixels and is painted over the region itself."""
    open_and_wait(qtbot, window, SAMPLES / "kodim05_crop256.png")
    window.request.scale.setCurrentIndex(0)  # x2
    window.request.set_task("superres", "builtin:upscale")
    window.view.set_preview_rect(QRectF(64, 64, 96, 80))
    window.preview_action.trigger()
    result = preview_and_wait(qtbot, window, runs=1)
    assert result.image.pixels.shape == (160, 192, 3)
    pyramid, rect = window.view.preview_result()
    assert rect == QRectF(64, 64, 96, 80) and pyramid.width == 192


# ---------------------------------------------------------------- compare and queue in the window


def test_compare_strengths_on_the_region_then_use_one_for_the_whole_photo(qtbot, window, tmp_path):
    from restorer.batch.restore import restore_region
    from restorer.run.context import Context
    from restorer.run.loader import RunnerCache

    photo = tmp_path / "photo.png"
    shutil.copy(SAMPLES / "kodim23_crop256.png", photo)
    open_and_wait(qtbot, window, photo)
    window.request.set_task("denoise", "builtin:denoise")
    window.compare("strength")
    assert window.shown_view() is window.candidates and window.back_button.isVisible()
    assert len(window.candidates.panes()) == 4  # the original and 3 strengths
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=30000)
    assert all(window.candidates.candidate(i) is not None for i in range(3))
    # each candidate is what its plan gives on the region (the region of the whole run, by restore_region)
    box = window._compare_box
    for i, candidate in enumerate(window.compare_list):
        want = restore_region(window.source, candidate.plan, Context("cpu", None, cache=RunnerCache()), box)
        got = window.candidates.candidate(i).arrays[0].astype(int)
        assert got.shape[:2] == (want.height, want.width)
        assert np.abs(got - (np.clip(want.pixels, 0, 1) * 255).round()).max() <= 1  # display rounding
    bases = [window.candidates.candidate(i).arrays[0].astype(int) for i in range(3)]
    assert np.abs(bases[0] - bases[2]).mean() > 0.5  # 30 % and 100 % differ visibly
    # zoom is one for all panes
    window.candidates.panes()[2].zoom_by(2.0)
    assert len({round(p.zoom, 6) for p in window.candidates.panes()}) == 1
    # "Use this" on the 100 % one: back to the photo, strength set, whole photo restored
    qtbot.mouseClick(window.candidates.use_button(2), Qt.MouseButton.LeftButton)
    assert window.shown_view() is window.view and window.request.strength_value() == pytest.approx(1.0)
    qtbot.waitUntil(lambda: window.result is not None and not window.is_busy(), timeout=30000)
    assert (window.result.width, window.result.height) == (window.source.width, window.source.height)


def test_compare_refuses_in_one_line_when_there_is_nothing_to_compare(qtbot, window, tmp_path):
    open_and_wait(qtbot, window, SAMPLES / "kodim23_crop256.png")
    window.request.set_task("denoise", "builtin:denoise")
    window.compare("model")  # nothing installed: the built-in alone
    assert window.shown_view() is window.view and "model manager" in window.message.text()
    window.compare("instruction", ["remove noise"])
    assert "2 to 4 instructions" in window.message.text()


def test_dropped_photos_are_queued_and_restored_beside_their_originals(qtbot, window, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        shutil.copy(SAMPLES / "kodim23_crop256.png", folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    window.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                Qt.KeyboardModifier.NoModifier))
    assert window.queue_area.isVisible() and len(window.queue.states()) == 4
    window.request.set_task("denoise", "builtin:denoise")
    window.start_queue()
    qtbot.waitUntil(lambda: not window.queue.is_running(), timeout=60000)
    states = {name: state for name, state, _ in window.queue.states()}
    assert states == {"broken.png": "failed", "p0.png": "done", "p1.png": "done", "p2.png": "done"}
    assert all((folder / f"p{i}_restored.png").is_file() for i in range(3))
    assert "broken.png" in window.message.text() or "failed" in window.message.text().lower()


def test_faces_found_by_a_face_step_are_outlined_on_the_photo(qtbot, settings, store_home):
    from restorer_ui.main_window import MainWindow

    from tests.test_face_cli import install_fake_face_model

    install_fake_face_model(store_home)  # before the window reads the catalog
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    open_and_wait(qtbot, window, SAMPLES / "fbcnn_real_2_face.jpg")
    window.request.set_task("faces", "test-face")
    assert window.request.ok, window.request.plan.text()
    window.start_restore()
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=60000)
    assert window.result is not None, window.message.text()
    marks = window.view.marks()
    assert marks and marks[0][1] == "Face 1" and marks[0][2]
    rect = marks[0][0]
    assert 0 <= rect.left() < rect.right() <= window.source.width and 0 <= rect.top() < rect.bottom() <= window.source.height
    assert not np.array_equal(window.result.pixels, window.source.pixels)
    # the face's switch: off restores the photo again without that face (here: nothing changes)
    assert window.faces_row.isVisible() and [b.isChecked() for b in window.face_switches] == [True]
    window.face_switches[0].setChecked(False)
    qtbot.waitUntil(lambda: not window.is_busy() and window.view.marks() and not window.view.marks()[0][2],
                    timeout=60000)
    assert window.kept_faces == {0} and "turned off" in window.view.marks()[0][1]
    assert np.array_equal(window.result.pixels, window.source.pixels)
    window.close()


def test_garbage_is_collected_on_the_gui_thread_only(qtbot):
    import gc

    from restorer_ui.gc_guard import MainThreadCollector

    collector = MainThreadCollector()
    try:
        assert not gc.isenabled()  # a worker thread crossing a threshold collects nothing
        cycles = [[] for _ in range(gc.get_threshold()[0] + 10)]
        for c in cycles:
            c.append(c)
        del cycles
        assert gc.get_count()[0] > gc.get_threshold()[0]
        collector.collect()  # what the timer does on the GUI thread
        assert gc.get_count()[0] < gc.get_threshold()[0]
    finally:
        collector.timer.stop()
        gc.enable()
