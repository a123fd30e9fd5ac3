"""`restorer`: the desktop app. `restorer --selftest` opens the window offscreen, previews a
region of the bundled sample and restores it with a built-in operator, saves it, and exits 0
when all went right (what installer/smoke.sh runs on a built bundle)."""

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
                   help="open the window offscreen, restore a bundled sample, fill a shipped network template "
                        "and run it (no PyTorch), exit 0 on success")
    p.add_argument("--selftest-download", metavar="MODEL",
                   help="with --selftest: also press 'Download and restore' for MODEL (from RESTORER_MIRROR "
                        "or the model's own host) and check the restored photo")
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
    from restorer_ui.gc_guard import MainThreadCollector

    app.collector = MainThreadCollector(app)  # garbage holding Qt objects is freed on this thread only
    if args.selftest:
        return selftest(app, download=args.selftest_download)
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


TEMPLATE_CHECK = "mirnetv2-sr-x2"  # a small network whose template ships with restorer


def template_check(model_id: str = TEMPLATE_CHECK) -> str:
    """Fill a shipped ONNX template with random weights and run it on ONNX Runtime: the
    torch-free path every downloaded checkpoint takes (onnx, the templates, lzma and ONNX
    Runtime all present). Returns what was run; raises on any failure."""
    import json

    import numpy as np

    from restorer.run.onnx import create_session
    from restorer.zoo.catalog import load_catalog
    from restorer.zoo.templates import METADATA_KEY, fill, read_template, template_for

    spec = load_catalog().get(model_id)
    template = template_for(spec)
    if template is None:
        raise RuntimeError(f"the {model_id} template is missing from the app")
    entries = json.loads(next(p.value for p in read_template(template).metadata_props if p.key == METADATA_KEY))
    rng = np.random.default_rng(0)
    # a checkpoint's tensors as the template expects them (a transposed one in its stored layout)
    weights = {e["key"]: (rng.standard_normal(e["shape"][::-1] if e["transpose"] else e["shape"]) * 0.02)
               .astype(np.float32) for e in entries}
    with tempfile.TemporaryDirectory(prefix="restorer-template-") as tmp:
        model = fill(template, weights, Path(tmp) / "filled.onnx")
        session = create_session(model, "cpu").session
        out = session.run(None, {session.get_inputs()[0].name: rng.random((1, 3, 32, 32), dtype=np.float32)})[0]
        del session
    if out.shape != (1, 3, 32, 32) or not np.isfinite(out).all():
        raise RuntimeError(f"the filled {model_id} template gave {out.shape}")
    return f"{model_id} template filled ({len(entries)} tensors) and run"


def selftest(app, timeout: float = 120.0, download: str | None = None) -> int:
    """Open, preview a region and restore with builtin:denoise, save, reload; fill and run a
    network template; with `download`, fetch a model through the window's Download-and-restore
    button and restore with it: every stage checked."""
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
        window.preview_action.trigger()  # the region preview first: restore_region through PreviewJob
        if not wait_until(app, lambda: window.preview_result is not None and window.preview_job is None, timeout):
            _say(f"selftest: the region preview did not finish: {window.message.text()}", error=True)
            return 1
        x0, y0, x1, y1 = window.preview_result.box
        if window.preview_result.image.pixels.shape[:2] != (y1 - y0, x1 - x0):
            _say(f"selftest: the preview of {window.preview_result.box} has the wrong size", error=True)
            return 1
        window.preview_action.trigger()
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
        try:
            networks = template_check()
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            _say(f"selftest: the network template check failed: {e}", error=True)
            return 1
        if download:
            problem = _download_and_restore(app, window, download, timeout)
            if problem:
                _say(f"selftest: {problem}", error=True)
                return 1
            networks += f"; {download} downloaded, made runnable and restored"
        window.close()
    heavy = [m for m in ("torch",) if m in sys.modules]
    if heavy:
        _say(f"selftest: the app imported {', '.join(heavy)}, which it must not need", error=True)
        return 1
    _say(f"restorer selftest: ok ({before.shape[1]}x{before.shape[0]} restored with builtin:denoise, "
         f"mean change {change:.4f}, saved and reloaded; {networks}; {time.perf_counter() - start:.1f} s)")
    return 0


def _download_and_restore(app, window, model_id: str, timeout: float) -> str | None:
    """Press the window's Download-and-restore for `model_id`; None when the photo came back
    restored at the model's scale, else what went wrong."""
    from restorer.zoo import layout
    from restorer.zoo.catalog import load_catalog

    spec = load_catalog().get(model_id)
    window.result = None
    window.request.set_task(spec.tasks[0], model_id)
    if window.request.missing is None or window.restore_button.text() != "Download and restore":
        return f"the window does not offer to download {model_id}: {window.request.plan.text()}"
    window.restore_button.click()
    if not wait_until(app, lambda: window.result is not None or (not window.is_busy() and window.message.text()),
                      timeout * 5) or window.result is None:
        return f"download and restore of {model_id} failed: {window.message.text()}"
    wait_until(app, lambda: not window.is_busy(), timeout)
    if not layout.onnx_path(spec).is_file():
        return f"{model_id} was not made into an ONNX model"
    scale = spec.output_scale
    got, source = (window.result.width, window.result.height), (window.source.width, window.source.height)
    if got != (source[0] * scale, source[1] * scale):
        return f"{model_id} gave {got[0]}x{got[1]} from {source[0]}x{source[1]} (scale {scale})"
    return None


if __name__ == "__main__":
    sys.exit(main())
