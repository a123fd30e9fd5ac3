"""`restorer`: the desktop app. `restorer --selftest` opens the window offscreen, restores
the bundled sample with a built-in operator, saves it, and exits 0 when all went right
(what installer/smoke.sh runs on a built bundle)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="restorer", description="Restore photos (the desktop app).")
    p.add_argument("photo", nargs="?", help="a photo to open")
    p.add_argument("--selftest", action="store_true",
                   help="open the window offscreen, restore a bundled sample, exit 0 on success")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, qt_args = build_parser().parse_known_args(argv)
    if args.selftest:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setApplicationName("Restorer")
    app.setOrganizationName("restorer")
    if args.selftest:
        return selftest(app)
    from restorer_ui.main_window import MainWindow

    window = MainWindow()
    window.show()
    if args.photo:
        window.open_path(args.photo)
    return app.exec()


def wait_until(app, condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    app.processEvents()
    return condition()


def _say(text: str, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    if stream is not None:  # a windowed build on Windows has no console
        print(text, file=stream, flush=True)


def selftest(app, timeout: float = 120.0) -> int:
    """Open, restore with builtin:denoise, save, reload: every stage checked."""
    from importlib import resources

    import numpy as np
    from PySide6.QtCore import QSettings
    from restorer_ui.main_window import MainWindow
    from restorer_ui.settings import AppSettings

    from restorer.io import imaging

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="restorer-selftest-") as tmp:
        settings = AppSettings(QSettings(str(Path(tmp) / "selftest.ini"), QSettings.Format.IniFormat))
        window = MainWindow(settings)
        window.show()
        sample = resources.files("restorer.data").joinpath("selftest_noisy.png")
        with resources.as_file(sample) as sample_path:
            window.open_path(sample_path)
            if not wait_until(app, lambda: not window.is_busy(), timeout) or window.source is None:
                _say(f"selftest: could not open the sample: {window.message.text()}", error=True)
                return 1
        window.request.set_task("denoise", "builtin:denoise")
        window.start_restore()
        if not wait_until(app, lambda: not window.is_busy(), timeout) or window.result is None:
            _say(f"selftest: the restore did not finish: {window.message.text()}", error=True)
            return 1
        before, after = window.source.pixels, window.result.pixels
        change = float(np.abs(after - before).mean())
        if after.shape != before.shape or not 0.001 < change < 0.2:
            _say(f"selftest: unexpected result (shape {after.shape}, mean change {change:.4f})", error=True)
            return 1
        out = Path(tmp) / "restored.png"
        window.write(out, "png", 95)
        if not wait_until(app, lambda: window.save_job is None, timeout) or not out.is_file():
            _say(f"selftest: saving failed: {window.message.text()}", error=True)
            return 1
        if imaging.load(out).pixels.shape != after.shape:
            _say("selftest: the saved file differs in size", error=True)
            return 1
        window.close()
    heavy = [m for m in ("torch",) if m in sys.modules]
    if heavy:
        _say(f"selftest: the app imported {', '.join(heavy)}, which it must not need", error=True)
        return 1
    _say(f"restorer selftest: ok ({before.shape[1]}x{before.shape[0]} restored with builtin:denoise, "
         f"mean change {change:.4f}, saved and reloaded, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
