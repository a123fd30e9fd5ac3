"""How long the before/after view takes to repaint a 24-megapixel result, with the
pyramid (the level nearest the zoom is painted) and without it (level 0 scaled every time).

    QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=1 .venv/bin/python bench/gui_paint.py
"""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtWidgets import QApplication

from restorer_ui.compare_view import CompareView
from restorer_ui.imageconv import Pyramid


def image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 64, w // 64, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def repaint_ms(view: CompareView, app, n: int = 5) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        view.repaint()
        app.processEvents()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    app = QApplication([])
    h, w = 4000, 6000
    before, after = image(h, w, 0), image(h, w, 1)
    start = time.perf_counter()
    pb, pa = Pyramid.build(before), Pyramid.build(after)
    print(f"pyramids for two {w}x{h} images: {time.perf_counter() - start:.2f} s, levels {[l.width() for l in pa.levels]}")
    view = CompareView()
    view.resize(1600, 1000)
    view.show()
    for label, (b, a) in (("pyramid", (pb, pa)), ("level 0 only", (Pyramid(pb.arrays[:1]), Pyramid(pa.arrays[:1])))):
        view.set_before(b)
        view.set_after(a)
        view.fit()
        fit_zoom = view.zoom
        fit = repaint_ms(view, app)
        view.set_zoom(0.5)
        half = repaint_ms(view, app)
        view.actual_size()
        full = repaint_ms(view, app)
        print(f"{label:>13}: repaint at fit ({fit_zoom:.2f}) {fit:.1f} ms, at 50% {half:.1f} ms, at 100% {full:.1f} ms")


if __name__ == "__main__":
    main()
