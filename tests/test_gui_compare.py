"""The candidates view: the original and 2 to 4 restorations in a grid, zoomed and panned
together (offscreen Qt, pytest-qt)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QWheelEvent  # noqa: E402
from restorer_ui.candidates_view import WORKING, CandidatesView, grid_shape  # noqa: E402
from restorer_ui.imageconv import Pyramid, from_qimage  # noqa: E402

BACKGROUND = (48, 48, 48)


def noise(seed: int, h: int = 96, w: int = 128) -> Pyramid:
    """A textured image (no two neighbouring pixels alike), so a pixel says where it came from."""
    return Pyramid.build(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def solid(rgb, h: int = 96, w: int = 128) -> Pyramid:
    return Pyramid.build(np.full((h, w, 3), rgb, np.uint8))


@pytest.fixture
def view(qtbot):
    v = CandidatesView()
    qtbot.addWidget(v)
    v.resize(900, 600)
    v.show()
    qtbot.waitExposed(v)
    return v


def fill(view, n: int) -> list[Pyramid]:
    original = noise(0)
    candidates = [noise(i + 1) for i in range(n)]
    view.set_original(original, "Original")
    view.set_candidates([(f"MIRNet v2 · strength 0.{i + 4}", p) for i, p in enumerate(candidates)])
    return [original, *candidates]


def settle(qtbot) -> None:
    qtbot.wait(20)  # layouts and the panes' resize events


def centre_canvas_points(view) -> list[tuple[float, float]]:
    """The canvas point under each pane's own middle pixel (a pane of odd width has its
    middle on the pixel left of centre, as in CompareView)."""
    out = []
    for pane in view.panes():
        p = pane.widget_to_canvas(QPointF(pane.width() // 2, pane.height() // 2))
        out.append((round(p.x(), 6), round(p.y(), 6)))
    return out


def pixel_at_middle(pane) -> np.ndarray:
    image = from_qimage(pane.grab().toImage())
    return image[pane.height() // 2, pane.width() // 2].astype(int)


def wheel(widget, pos: QPointF, clicks: int) -> None:
    event = QWheelEvent(pos, widget.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120 * clicks), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QGuiApplication.sendEvent(widget, event)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_n_candidates_show_n_plus_one_equal_panes(qtbot, view, n):
    fill(view, n)
    settle(qtbot)
    panes = view.panes()
    assert len(panes) == n + 1 and view.candidate_count() == n
    assert view.label(0) == "Original" and view.label(n) == f"MIRNet v2 · strength 0.{n + 3}"
    sizes = {(p.width(), p.height()) for p in panes}
    widths, heights = [s[0] for s in sizes], [s[1] for s in sizes]
    assert max(widths) - min(widths) <= 1 and max(heights) - min(heights) <= 1, sizes
    area = view.rect()
    for pane in panes:
        assert pane.isVisible() and pane.width() > 40 and pane.height() > 30
        assert area.contains(pane.mapTo(view, pane.rect().bottomRight()))
    # Fitted: the whole 128x96 canvas shows in each pane, the same zoom everywhere.
    assert view.fitting and all(p.zoom == view.zoom for p in panes)
    assert view.zoom == pytest.approx(min(panes[0].width() / 128, panes[0].height() / 96))
    assert len(set(centre_canvas_points(view))) == 1


def test_grid_shape_follows_the_window():
    assert grid_shape(5, 1500, 300, (128, 96)) == (1, 5)
    assert grid_shape(5, 900, 700, (128, 96)) == (2, 3)
    assert grid_shape(3, 1200, 400, (128, 96)) == (1, 3)
    assert grid_shape(3, 400, 1200, (128, 96)) == (3, 1)
    assert grid_shape(4, 800, 640, (128, 96)) == (2, 2)


def test_zoom_in_one_pane_zooms_every_pane(qtbot, view):
    fill(view, 3)
    settle(qtbot)
    zooms = []
    view.zoomChanged.connect(zooms.append)
    fit_zoom = view.zoom
    third = view.panes()[2]
    anchor = QPointF(third.width() * 0.3, third.height() * 0.4)
    under = third.widget_to_canvas(anchor)
    wheel(third, anchor, 2)
    assert view.zoom == pytest.approx(fit_zoom * 1.25 ** 2) and not view.fitting
    assert zooms and zooms[-1] == view.zoom
    for pane in view.panes():
        assert pane.zoom == view.zoom
        # The canvas point under the cursor stays there, and is under the same spot of every pane.
        p = pane.widget_to_canvas(anchor)
        assert (p.x(), p.y()) == pytest.approx((under.x(), under.y()), abs=1e-6)

    # Keys in another pane, and the view's own calls, reach all panes too.
    first = view.panes()[1]
    first.setFocus()
    qtbot.keyClick(first, Qt.Key.Key_1)
    assert [p.zoom for p in view.panes()] == [1.0] * 4
    qtbot.keyClick(first, Qt.Key.Key_Plus)
    assert [p.zoom for p in view.panes()] == [pytest.approx(1.25)] * 4
    view.set_zoom(3.0)
    assert {p.zoom for p in view.panes()} == {3.0} and view.zoom == 3.0
    view.fit()
    assert view.fitting and view.zoom == pytest.approx(fit_zoom)
    assert all(p.fitting for p in view.panes())


def test_drag_in_one_pane_pans_every_pane(qtbot, view):
    pyramids = fill(view, 4)
    settle(qtbot)
    view.actual_size()  # 1:1: each pane shows its image's own pixels
    last = view.panes()[4]
    center = view.center
    start = QPoint(last.width() // 2, last.height() // 2)
    qtbot.mousePress(last, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(last, start + QPoint(-25, -15))
    qtbot.mouseMove(last, start + QPoint(-40, -30))
    qtbot.mouseRelease(last, Qt.MouseButton.LeftButton, pos=start + QPoint(-40, -30))
    moved = view.center
    assert (moved.x(), moved.y()) == pytest.approx((center.x() + 40, center.y() + 30))
    points = centre_canvas_points(view)
    assert len(set(points)) == 1 and points[0] == pytest.approx((moved.x(), moved.y()), abs=1)
    # What is painted at each pane's middle is its own image at that canvas point.
    cx, cy = int(moved.x()), int(moved.y())
    for pane, pyramid in zip(view.panes(), pyramids):
        expected = pyramid.arrays[0][cy, cx].astype(int)
        assert np.abs(pixel_at_middle(pane) - expected).sum() <= 12

    # The view's pan_by (e.g. from the window's arrow shortcuts) moves every pane as well.
    view.pan_by(10, 0)
    assert view.center.x() == pytest.approx(moved.x() - 10)
    assert len(set(centre_canvas_points(view))) == 1


def test_placeholder_until_the_candidate_arrives_then_choose_it(qtbot, view):
    view.set_original(solid((200, 0, 0)))
    view.set_candidates([("builtin denoise · strength 0.5", solid((0, 200, 0))),
                         ("MIRNet v2 · strength 0.6", None), ("CGNet", None)])
    settle(qtbot)
    waiting = view.panes()[2]
    assert view.candidate(1) is None and not view.use_button(1).isEnabled()
    assert view.use_button(0).isEnabled()
    shown = from_qimage(waiting.grab().toImage()).reshape(-1, 3)
    colour = shown.max(axis=1).astype(int) - shown.min(axis=1)
    assert colour.max() <= 10 and tuple(shown[0]) == BACKGROUND  # grey only: no image painted
    assert (np.abs(shown.astype(int) - BACKGROUND).sum(axis=1) > 60).any()  # and the "working…" text
    assert waiting.message == WORKING

    view.set_candidate(1, solid((0, 0, 220)))
    settle(qtbot)
    assert tuple(pixel_at_middle(waiting)) == (0, 0, 220)
    assert view.use_button(1).isEnabled()
    assert tuple(pixel_at_middle(view.panes()[0])) == (200, 0, 0)

    view.set_candidate_error(2, "CGNet: out of memory")
    assert view.panes()[3].message == "CGNet: out of memory" and not view.use_button(2).isEnabled()

    with qtbot.waitSignal(view.chosen, timeout=1000) as chosen:
        qtbot.mouseClick(view.use_button(1), Qt.MouseButton.LeftButton)
    assert chosen.args == [1]
    with qtbot.waitSignal(view.chosen, timeout=1000) as chosen:
        qtbot.mouseClick(view.use_button(0), Qt.MouseButton.LeftButton)
    assert chosen.args == [0]

    view.clear()
    assert view.candidate_count() == 0 and len(view.panes()) == 1 and view.panes()[0].pyramid is None


def test_a_larger_candidate_keeps_the_region_in_view(qtbot, view):
    """A 2x candidate arriving after the user zoomed: the canvas becomes the 2x grid and the
    same part of the photo stays in view; the original is stretched to it."""
    small = noise(5, 48, 64)
    view.set_original(small)
    view.set_candidates([("x2", None), ("x2 other", None)])
    settle(qtbot)
    view.set_zoom(4.0)
    view.pan_by(-20, 12)
    before = view.center
    view.set_candidate(0, Pyramid.build(np.kron(small.arrays[0], np.ones((2, 2, 1), np.uint8))))
    assert view.canvas_size() == (128, 96)
    assert view.zoom == pytest.approx(2.0)
    assert (view.center.x(), view.center.y()) == pytest.approx((before.x() * 2, before.y() * 2))
    assert all(p.canvas_size() == (128, 96) and p.zoom == view.zoom for p in view.panes())
    settle(qtbot)
    # Original (stretched) and candidate show the same photo pixel at every pane's middle.
    first, second = (pixel_at_middle(p) for p in view.panes()[:2])
    assert np.abs(first - second).sum() <= 12


def test_small_window(qtbot, view):
    fill(view, 4)
    view.resize(320, 220)
    settle(qtbot)
    panes = view.panes()
    area = view.rect()
    for pane in panes:
        top_left, bottom_right = pane.mapTo(view, QPoint(0, 0)), pane.mapTo(view, pane.rect().bottomRight())
        assert area.contains(top_left) and area.contains(bottom_right), (pane.geometry(), area)
        assert pane.width() >= 40 and pane.height() >= 30
    assert view.fitting and all(p.zoom == view.zoom for p in panes)
    wheel(panes[3], QPointF(10, 10), 1)
    assert {p.zoom for p in panes} == {view.zoom}
    assert len(set(centre_canvas_points(view))) == 1
    for pane in panes:
        assert tuple(pixel_at_middle(pane)) != BACKGROUND  # each pane paints its image
