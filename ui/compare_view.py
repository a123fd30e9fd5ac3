"""The before/after view: one image split by a draggable divider, side by side, or the
difference; zoom and pan are shared by both images.

Coordinates: the canvas is the result's pixel grid (the original's when there is no result
yet). A super-resolution original is smaller than the canvas and is painted stretched to it,
so both sides line up. `zoom` is screen pixels per canvas pixel and `center` the canvas point
shown in the middle of each pane.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QWidget
from restorer_ui.imageconv import Pyramid, difference

MODES = ("split", "side", "diff")
MIN_ZOOM, MAX_ZOOM = 0.01, 32.0
DIVIDER_GRAB = 8  # pixels either side of the divider that pick it up
BACKGROUND = QColor(48, 48, 48)


def _middle(pane: QRectF) -> QPointF:
    """A pane's centre on a whole pixel, so 100% zoom maps pixels one to one."""
    return QPointF(math.floor(pane.left() + pane.width() / 2), math.floor(pane.top() + pane.height() / 2))


class CompareView(QWidget):
    zoomChanged = Signal(float)
    dividerMoved = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setMinimumSize(200, 150)
        self.before: Pyramid | None = None
        self.after: Pyramid | None = None
        self._diff: Pyramid | None = None
        self.mode = "split"
        self.divider = 0.5  # fraction of the view's width
        self.zoom = 1.0
        self.center = QPointF(0, 0)
        self.fitting = True  # refit on resize until the user zooms
        self._drag: str | None = None  # "divider" or "pan"
        self._last = QPointF()

    # ------------------------------------------------------------ content

    def set_before(self, pyramid: Pyramid | None) -> None:
        self.before, self.after, self._diff = pyramid, None, None
        self.fit()

    def set_after(self, pyramid: Pyramid | None) -> None:
        same_canvas = (self.after is not None and pyramid is not None
                       and (self.after.width, self.after.height) == (pyramid.width, pyramid.height))
        self.after, self._diff = pyramid, None
        if not same_canvas:
            self.fit()
        self.update()

    def canvas_size(self) -> tuple[int, int]:
        top = self.after or self.before
        return (top.width, top.height) if top else (1, 1)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown view mode {mode!r}")
        self.mode = mode
        if self.fitting:
            self.fit()
        self.update()

    def set_divider(self, fraction: float) -> None:
        self.divider = min(1.0, max(0.0, fraction))
        self.dividerMoved.emit(self.divider)
        self.update()

    def diff_pyramid(self) -> Pyramid | None:
        if self._diff is None and self.before and self.after:
            self._diff = Pyramid.build(difference(self.before.arrays[0], self.after.arrays[0]))
        return self._diff

    # ------------------------------------------------------------ geometry

    def panes(self) -> list[QRectF]:
        r = QRectF(self.rect())
        if self.mode == "side" and self.after is not None:
            half = r.width() / 2
            return [QRectF(r.left(), r.top(), half - 1, r.height()), QRectF(r.left() + half + 1, r.top(), half - 1, r.height())]
        return [r]

    def pane_at(self, pos: QPointF) -> QRectF:
        panes = self.panes()
        return next((p for p in panes if p.contains(pos)), panes[0])

    def canvas_to_widget(self, point: QPointF, pane: QRectF | None = None) -> QPointF:
        pane = pane or self.panes()[0]
        return _middle(pane) + (point - self.center) * self.zoom

    def widget_to_canvas(self, pos: QPointF, pane: QRectF | None = None) -> QPointF:
        pane = pane or self.pane_at(pos)
        return self.center + (pos - _middle(pane)) / self.zoom

    def divider_x(self) -> float:
        return self.rect().width() * self.divider

    # ------------------------------------------------------------ zoom and pan

    def fit(self) -> None:
        w, h = self.canvas_size()
        pane = self.panes()[0]
        self.zoom = max(MIN_ZOOM, min(pane.width() / w, pane.height() / h, MAX_ZOOM))
        self.center = QPointF(w / 2, h / 2)
        self.fitting = True
        self.zoomChanged.emit(self.zoom)
        self.update()

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the canvas point under `anchor` (a widget position) in place."""
        zoom = max(MIN_ZOOM, min(MAX_ZOOM, zoom))
        if anchor is not None:
            pane = self.pane_at(anchor)
            fixed = self.widget_to_canvas(anchor, pane)
            self.center = fixed - (anchor - _middle(pane)) / zoom
        self.zoom = zoom
        self.fitting = False
        self._clamp()
        self.zoomChanged.emit(self.zoom)
        self.update()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self.set_zoom(self.zoom * factor, anchor)

    def pan_by(self, dx: float, dy: float) -> None:
        """Move the image by (dx, dy) screen pixels."""
        self.center -= QPointF(dx, dy) / self.zoom
        self.fitting = False
        self._clamp()
        self.update()

    def _clamp(self) -> None:
        w, h = self.canvas_size()
        self.center = QPointF(min(max(self.center.x(), 0.0), float(w)), min(max(self.center.y(), 0.0), float(h)))

    # ------------------------------------------------------------ events

    def resizeEvent(self, event):
        if self.fitting:
            self.fit()
        super().resizeEvent(event)

    def wheelEvent(self, event):
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.25 ** steps, event.position())
        event.accept()

    def mousePressEvent(self, event):
        if event.button() != Qt.MouseButton.LeftButton:
            return
        pos = event.position()
        if self._on_divider(pos):
            self._drag = "divider"
        else:
            self._drag = "pan"
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        self._last = pos

    def mouseMoveEvent(self, event):
        pos = event.position()
        if self._drag == "divider":
            self.set_divider(pos.x() / max(1, self.width()))
        elif self._drag == "pan":
            delta = pos - self._last
            self.pan_by(delta.x(), delta.y())
        else:
            shape = Qt.CursorShape.SplitHCursor if self._on_divider(pos) else Qt.CursorShape.OpenHandCursor
            self.setCursor(shape)
        self._last = pos

    def mouseReleaseEvent(self, event):
        self._drag = None
        self.unsetCursor()

    def mouseDoubleClickEvent(self, event):
        if self.fitting:
            self.set_zoom(1.0, event.position())
        else:
            self.fit()

    def keyPressEvent(self, event):
        key = event.key()
        step = 0.1 * min(self.width(), self.height())
        actions = {
            Qt.Key.Key_Plus: lambda: self.zoom_by(1.25), Qt.Key.Key_Equal: lambda: self.zoom_by(1.25),
            Qt.Key.Key_Minus: lambda: self.zoom_by(0.8), Qt.Key.Key_0: self.fit, Qt.Key.Key_F: self.fit,
            Qt.Key.Key_1: self.actual_size,
            Qt.Key.Key_Left: lambda: self.pan_by(step, 0), Qt.Key.Key_Right: lambda: self.pan_by(-step, 0),
            Qt.Key.Key_Up: lambda: self.pan_by(0, step), Qt.Key.Key_Down: lambda: self.pan_by(0, -step),
        }
        if key in actions:
            actions[key]()
        else:
            super().keyPressEvent(event)

    def _on_divider(self, pos: QPointF) -> bool:
        return (self.mode == "split" and self.after is not None and self.before is not None
                and abs(pos.x() - self.divider_x()) <= DIVIDER_GRAB)

    # ------------------------------------------------------------ painting

    def paintEvent(self, event):
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.zoom < 2.0)
        if self.before is None and self.after is None:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                             "Open a photo: File > Open, drag and drop, or paste (Ctrl+V)")
            return
        if self.after is None or self.before is None:
            self._paint_layer(painter, self.after or self.before, self.panes()[0], self.panes()[0])
        elif self.mode == "side":
            left, right = self.panes()
            self._paint_layer(painter, self.before, left, left)
            self._paint_layer(painter, self.after, right, right)
            painter.fillRect(QRectF(left.right(), 0, right.left() - left.right(), self.height()), QColor(20, 20, 20))
            self._label(painter, left, "Before")
            self._label(painter, right, "After")
        elif self.mode == "diff":
            pane = self.panes()[0]
            self._paint_layer(painter, self.diff_pyramid(), pane, pane)
            self._label(painter, pane, "Difference (x4)")
        else:
            pane = self.panes()[0]
            x = self.divider_x()
            self._paint_layer(painter, self.before, pane, QRectF(pane.left(), pane.top(), x - pane.left(), pane.height()))
            self._paint_layer(painter, self.after, pane, QRectF(x, pane.top(), pane.right() - x, pane.height()))
            self._paint_divider(painter, x)

    def _paint_layer(self, painter: QPainter, pyramid: Pyramid, pane: QRectF, clip: QRectF) -> None:
        """Paint `pyramid` stretched over the canvas, only inside `clip`, from the level
        that matches the zoom and only the part of it that is visible."""
        cw, ch = self.canvas_size()
        top_left = self.canvas_to_widget(QPointF(0, 0), pane)
        target = QRectF(top_left.x(), top_left.y(), cw * self.zoom, ch * self.zoom)
        visible = target.intersected(clip).intersected(pane)
        if visible.isEmpty():
            return
        image = pyramid.level_for(self.zoom * cw / pyramid.width)
        sx, sy = image.width() / target.width(), image.height() / target.height()
        source = QRectF((visible.left() - target.left()) * sx, (visible.top() - target.top()) * sy,
                        visible.width() * sx, visible.height() * sy)
        painter.drawImage(visible, image, source)

    def _paint_divider(self, painter: QPainter, x: float) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor(255, 255, 255), 2))
        painter.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        cy = self.height() / 2
        painter.setBrush(QColor(255, 255, 255))
        painter.setPen(QPen(QColor(40, 40, 40), 1))
        painter.drawEllipse(QPointF(x, cy), 10, 10)
        painter.setPen(QPen(QColor(40, 40, 40), 2))
        painter.drawLine(QPointF(x - 4, cy - 4), QPointF(x - 4, cy + 4))
        painter.drawLine(QPointF(x + 4, cy - 4), QPointF(x + 4, cy + 4))
        pane = self.panes()[0]
        self._label(painter, QRectF(pane.left(), pane.top(), x - pane.left(), pane.height()), "Before")
        self._label(painter, QRectF(x, pane.top(), pane.right() - x, pane.height()), "After")

    def _label(self, painter: QPainter, area: QRectF, text: str) -> None:
        if area.width() < 80:
            return
        metrics = painter.fontMetrics()
        box = QRectF(area.left() + 8, area.top() + 8, metrics.horizontalAdvance(text) + 12, metrics.height() + 6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
