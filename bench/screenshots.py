"""Screenshots of the desktop app under a real X server (Xvfb), for the docs and for
checking the layout at common screen sizes. Run through bench/screenshots.sh.

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python bench/screenshots.py --size 1280x800

Each file is named after what it shows: main (a restored photo on the before/after slider),
preview (the preview region on a noisy photo), compare (three strengths beside the original),
queue (photos queued: done, skipped, failed and waiting); with --all also side-by-side,
batch and models.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1280x800")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    p.add_argument("--all", action="store_true", help="also the batch and model windows")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtCore import QRectF, QSettings
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    from restorer_ui.app import wait_until
    from restorer_ui.main_window import MainWindow
    from restorer_ui.settings import AppSettings

    tmp = tempfile.mkdtemp(prefix="restorer-shots-")
    settings = AppSettings(QSettings(f"{tmp}/settings.ini", QSettings.Format.IniFormat))
    window = MainWindow(settings)
    window.setGeometry(0, 0, width, height)
    window.show()
    window.open_path(REPO / "samples" / "lol_low_778.png")
    wait_until(app, lambda: not window.is_busy(), 30)
    window.request.set_instruction("it is far too dark, brighten it")
    window.start_restore()
    wait_until(app, lambda: not window.is_busy(), 60)
    if window.result is None:
        print("screenshots: the restore failed:", window.message.text(), file=sys.stderr)
        return 1
    window.view.set_divider(0.45)
    wait_until(app, lambda: False, 0.3)  # let the window settle and paint

    def shot(name: str) -> None:
        path = args.out / f"{name}-{width}x{height}.png"
        app.primaryScreen().grabWindow(0, 0, 0, width, height).save(str(path))
        print("wrote", path)

    shot("main")

    # the preview region on a dark photo, brightened there only
    window.open_path(REPO / "samples" / "lol_low_778.png")
    wait_until(app, lambda: not window.is_busy(), 30)
    window.request.set_task("lowlight", "builtin:lowlight")
    window.request.set_strength(80)
    window.view.set_preview_rect(QRectF(170, 90, 280, 220))
    window.preview_action.setChecked(True)
    wait_until(app, lambda: window.preview_result is not None, 60)
    window.view.fit()
    window.view.set_divider(0.2)
    wait_until(app, lambda: False, 0.3)
    shot("preview")

    # three strengths on that region beside the original
    window.compare("strength")
    wait_until(app, lambda: not window.is_busy() and window.candidates.candidate(2) is not None, 120)
    wait_until(app, lambda: False, 0.3)
    shot("compare")
    window.show_photo()
    window.preview_action.setChecked(False)

    # a queue with every state: two photos restored before (skipped now), new ones done, a
    # broken file failed, and one added after the run (waiting)
    queued = Path(tmp) / "queue"
    queued.mkdir()
    names = ("kodim05_crop256.png", "kodim23_crop256.png", "rain100l_rainy_1.png", "sots_hazy_0002.jpg")
    for name in names:
        shutil.copy(REPO / "samples" / name, queued / name)
    (queued / "scan_0042.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated in the copy")
    window.add_to_queue([queued / names[0], queued / names[1]])
    window.start_queue()
    wait_until(app, lambda: not window.queue.is_running(), 300)
    window.queue.clear()
    window.add_to_queue([queued])
    window.start_queue()
    wait_until(app, lambda: not window.queue.is_running(), 300)
    window.add_to_queue([REPO / "samples" / "lol_low_778.png"])
    window.view_splitter.setSizes([height // 2, height // 2])
    wait_until(app, lambda: False, 0.5)
    shot("queue")
    window.queue.clear()
    window.queue_area.setVisible(False)

    if args.all:
        window.set_view_mode("side")
        wait_until(app, lambda: False, 0.2)
        shot("side-by-side")
        window.set_view_mode("split")
        window.open_batch(REPO / "samples")
        batch = window.batch_window
        batch.setGeometry(0, 0, width, height)
        batch.output_edit.setText(f"{tmp}/out")
        batch.request.set_task("denoise", "builtin:denoise")
        batch.start()
        wait_until(app, lambda: not batch.is_running(), 300)
        wait_until(app, lambda: not batch._thumb_timer.isActive(), 10)
        wait_until(app, lambda: False, 0.3)
        shot("batch")
        batch.close()
        window.open_models()
        models = window.models_window
        models.setGeometry(0, 0, width, height)
        wait_until(app, lambda: False, 0.3)
        shot("models")
        models.close()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
