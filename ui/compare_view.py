"""The before/after view: one image split by a draggable divider, side by side, or the
difference; zoom and pan are shared by both images.

Coordinates: the canvas is the result's pixel grid (the original's when there is no result
yet). A super-resolution original is smaller than the canvas and is painted stretched to it,
so both sides line up. `zoom` is screen pixels per canvas pixel and `center` the canvas point
shown in the middle of each pane.

The preview region is a rectangle in the original's pixels (the grid a restore reads), drawn
as a dashed outline; a preview's result is painted inside it on the "after" side (over the
full result when there is one, else over the original), so a setting can be judged on a
region before the whole photo is run. The user drags inside the outline to move it and
Shift-drags anywhere to draw a new one; previewRectMoved says where it went.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QWidget
from restorer_ui.imageconv import Pyramid, difference

MODES = ("split", "side", "diff")
MIN_ZOOM, MAX_ZOOM = 0.01, 32.0
DIVIDER_GRAB = 8  # pixels either side of the divider that pick it up
BACKGROUND = QColor(48, 48, 48)
MARK_COLOUR = QColor(80, 200, 255)  # face outlines: apart from the preview's colour
PREVIEW_COLOUR = QColor(255, 200, 40)
MIN_PREVIEW_SIDE = 16  # a drawn region smaller than this (image pixels) is a slip: the old one stays


def _middle(pane: QRectF) -> QPointF:
    """A pane's centre on a whole pixel, so 100% zoom maps pixels one to one."""
    return QPointF(math.floor(pane.left() + pane.width() / 2), math.floor(pane.top() + pane.height() / 2))


class CompareView(QWidget):
    zoomChanged = Signal(float)
    dividerMoved = Signal(float)
    previewRectMoved = Signal(QRectF)  # the user moved or drew the preview region (image pixels)

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
        self._drag: str | None = None  # "divider", "pan", "move" (the preview region) or "draw" (a new one)
        self._last = QPointF()
        self._press = QPointF()  # where a move or draw started (widget)
        self._rect_at_press: QRectF | None = None
        self._preview_rect: QRectF | None = None  # in the original's pixels
        self._patch: Pyramid | None = None  # a preview's result, painted over _patch_rect
        self._patch_rect: QRectF | None = None
        self._patch_diff: Pyramid | None = None
        self._marks: list[tuple[QRectF, str, bool]] = []  # (rect in the original's pixels, label, done)

    # ------------------------------------------------------------ content

    def set_before(self, pyramid: Pyramid | None) -> None:
        """A new original: any result, preview and region belong to the old one and go."""
        self.before, self.after, self._diff = pyramid, None, None
        self._preview_rect = None
        self._marks = []
        self.set_preview_result(None)
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

    def has_image(self) -> bool:
        return self.before is not None or self.after is not None

    def has_comparison(self) -> bool:
        """Something to compare with the original: a result or a preview."""
        return self.before is not None and (self.after is not None or self._patch is not None)

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

    # ------------------------------------------------------------ preview region

    def set_preview_rect(self, rect: QRectF | None) -> None:
        """Show the preview region (image pixels; clipped to the image, whole pixels), or
        none. Does not emit previewRectMoved: that is for what the user does."""
        self._preview_rect = None if rect is None or self.before is None else self._fit_rect(rect)
        self.update()

    def preview_rect(self) -> QRectF | None:
        return QRectF(self._preview_rect) if self._preview_rect is not None else None

    def set_preview_result(self, pyramid: Pyramid | None, rect: QRectF | None = None) -> None:
        """A preview's result, painted stretched over `rect` (image pixels) on the after
        side; None removes it."""
        self._patch = pyramid if rect is not None else None
        self._patch_rect = QRectF(rect) if pyramid is not None and rect is not None else None
        self._patch_diff = None
        self.update()

    def preview_result(self) -> tuple[Pyramid | None, QRectF | None]:
        return self._patch, self._patch_rect

    def image_scale(self) -> float:
        """Canvas pixels per original pixel (the result's scale; 1 without one)."""
        return self.canvas_size()[0] / self.before.width if self.before is not None else 1.0

    def image_to_widget(self, rect: QRectF, pane: QRectF | None = None) -> QRectF:
        """A rectangle in the original's pixels, on screen in `pane`."""
        f = self.image_scale()
        top_left = self.canvas_to_widget(rect.topLeft() * f, pane)
        return QRectF(top_left.x(), top_left.y(), rect.width() * f * self.zoom, rect.height() * f * self.zoom)

    def widget_to_image(self, pos: QPointF, pane: QRectF | None = None) -> QPointF:
        return self.widget_to_canvas(pos, pane) / self.image_scale()

    def show_region(self, rect: QRectF) -> None:
        """At 100 % (one original pixel per screen pixel), centred on `rect` (image pixels)."""
        f = self.image_scale()
        self.set_zoom(1.0 / f)
        self.center = rect.center() * f
        self._clamp()
        self.update()

    def _fit_rect(self, rect: QRectF) -> QRectF:
        """`rect` as whole pixels inside the original: moved in when it sticks out, cut when
        it is larger than the image."""
        w, h = self.before.width, self.before.height
        rw, rh = min(w, max(1, round(rect.width()))), min(h, max(1, round(rect.height())))
        x = min(max(0, round(rect.left())), w - rw)
        y = min(max(0, round(rect.top())), h - rh)
        return QRectF(x, y, rw, rh)

    def _movable(self) -> bool:
        """A region smaller than the image can move; one that covers it leaves the drag to panning."""
        r = self._preview_rect
        return r is not None and (r.width() < self.before.width or r.height() < self.before.height)

    def _patch_diff_pyramid(self) -> Pyramid | None:
        if self._patch_diff is None and self._patch is not None and self.before is not None:
            r = self._patch_rect
            region = self.before.arrays[0][int(r.top()):int(r.bottom()), int(r.left()):int(r.right())]
            self._patch_diff = Pyramid.build(difference(region, self._patch.arrays[0]))
        return self._patch_diff

    # ------------------------------------------------------------ geometry

    def panes(self) -> list[QRectF]:
        r = QRectF(self.rect())
        if self.mode == "side" and (self.after is not None or self._patch is not None):
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
        # nothing shown: 100 %, not the 3200 % a 1x1 canvas would fit to
        fitted = min(pane.width() / w, pane.height() / h) if self.has_image() else 1.0
        self.zoom = max(MIN_ZOOM, min(fitted, MAX_ZOOM))
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
        self._press, self._rect_at_press = pos, self.preview_rect()
        if self._on_divider(pos):
            self._drag = "divider"
        elif self._preview_rect is not None and event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._drag = "draw"
            self.setCursor(Qt.CursorShape.CrossCursor)
        elif self._on_preview(pos):
            self._drag = "move"
            self.setCursor(Qt.CursorShape.SizeAllCursor)
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
        elif self._drag == "move":
            shift = (pos - self._press) / (self.zoom * self.image_scale())
            self.set_preview_rect(self._rect_at_press.translated(shift))
        elif self._drag == "draw":
            pane = self.pane_at(self._press)
            a, b = self.widget_to_image(self._press, pane), self.widget_to_image(pos, pane)
            self._preview_rect = self._fit_rect(QRectF(a, b).normalized()) if self._big_enough(a, b) else self._rect_at_press
            self.update()
        elif self._on_divider(pos):
            self.setCursor(Qt.CursorShape.SplitHCursor)
        elif self._on_preview(pos):
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        else:
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        self._last = pos

    def mouseReleaseEvent(self, event):
        moved = self._drag in ("move", "draw") and self._preview_rect != self._rect_at_press
        self._drag = None
        self.unsetCursor()
        if moved:
            self.previewRectMoved.emit(self.preview_rect())

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
        return self.mode == "split" and self.has_comparison() and abs(pos.x() - self.divider_x()) <= DIVIDER_GRAB

    def _on_preview(self, pos: QPointF) -> bool:
        return self._movable() and self.image_to_widget(self._preview_rect, self.pane_at(pos)).contains(pos)

    @staticmethod
    def _big_enough(a: QPointF, b: QPointF) -> bool:
        return abs(b.x() - a.x()) >= MIN_PREVIEW_SIDE and abs(b.y() - a.y()) >= MIN_PREVIEW_SIDE

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
        if not self.has_comparison():
            self._paint_layer(painter, self.after or self.before, self.panes()[0], self.panes()[0])
        elif self.mode == "side":
            left, right = self.panes()
            self._paint_layer(painter, self.before, left, left)
            self._paint_after(painter, right, right)
            painter.fillRect(QRectF(left.right(), 0, right.left() - left.right(), self.height()), QColor(20, 20, 20))
            self._label(painter, left, "Before")
            self._label(painter, right, "After" if self.after is not None else "Preview")
        elif self.mode == "diff":
            pane = self.panes()[0]
            if self.after is not None:
                self._paint_layer(painter, self.diff_pyramid(), pane, pane)
            else:  # only a preview: no difference outside it
                painter.fillRect(self.image_to_widget(QRectF(0, 0, self.before.width, self.before.height), pane)
                                 .intersected(pane), QColor(0, 0, 0))
            if self._patch is not None:
                self._paint_in(painter, self._patch_diff_pyramid(), self._patch_rect, pane, pane)
            self._label(painter, pane, "Difference (x4)")
        else:
            pane = self.panes()[0]
            x = self.divider_x()
            self._paint_layer(painter, self.before, pane, QRectF(pane.left(), pane.top(), x - pane.left(), pane.height()))
            self._paint_after(painter, pane, QRectF(x, pane.top(), pane.right() - x, pane.height()))
            self._paint_divider(painter, x)
        for pane in self.panes():
            self._paint_preview_outline(painter, pane)
            self._paint_marks(painter, pane)

    def set_marks(self, marks: list[tuple[QRectF, str, bool]]) -> None:
        """Outlined regions of the original with a label, e.g. the faces a face step found:
        solid when something was done there, dashed when it was left as it was."""
        self._marks = [(QRectF(rect), label, done) for rect, label, done in marks]
        self.update()

    def marks(self) -> list[tuple[QRectF, str, bool]]:
        return list(self._marks)

    def _paint_marks(self, painter: QPainter, pane: QRectF) -> None:
        if not self._marks:
            return
        painter.save()
        painter.setClipRect(pane)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for rect, label, done in self._marks:
            box = self.image_to_widget(rect, pane)
            painter.setPen(QPen(QColor(0, 0, 0, 160), 3))
            painter.drawRect(box)
            painter.setPen(QPen(MARK_COLOUR, 1, Qt.PenStyle.SolidLine if done else Qt.PenStyle.DashLine))
            painter.drawRect(box)
            painter.drawText(box.adjusted(3, 2, 0, 0), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, label)
        painter.restore()

    def _paint_after(self, painter: QPainter, pane: QRectF, clip: QRectF) -> None:
        """The after side: the result (the original when there is none) and over it the preview."""
        self._paint_layer(painter, self.after or self.before, pane, clip)
        if self._patch is not None:
            self._paint_in(painter, self._patch, self._patch_rect, pane, clip)

    def _paint_layer(self, painter: QPainter, pyramid: Pyramid, pane: QRectF, clip: QRectF) -> None:
        """Paint `pyramid` stretched over the canvas, only inside `clip`, from the level
        that matches the zoom and only the part of it that is visible."""
        cw, ch = self.canvas_size()
        self._paint_canvas_rect(painter, pyramid, QRectF(0, 0, cw, ch), pane, clip)

    def _paint_in(self, painter: QPainter, pyramid: Pyramid, rect: QRectF, pane: QRectF, clip: QRectF) -> None:
        """Paint `pyramid` stretched over `rect` (the original's pixels)."""
        f = self.image_scale()
        self._paint_canvas_rect(painter, pyramid, QRectF(rect.topLeft() * f, rect.size() * f), pane, clip)

    def _paint_canvas_rect(self, painter: QPainter, pyramid: Pyramid, area: QRectF, pane: QRectF,
                           clip: QRectF) -> None:
        top_left = self.canvas_to_widget(area.topLeft(), pane)
        target = QRectF(top_left.x(), top_left.y(), area.width() * self.zoom, area.height() * self.zoom)
        visible = target.intersected(clip).intersected(pane)
        if visible.isEmpty():
            return
        image = pyramid.level_for(self.zoom * area.width() / pyramid.width)
        sx, sy = image.width() / target.width(), image.height() / target.height()
        source = QRectF((visible.left() - target.left()) * sx, (visible.top() - target.top()) * sy,
                        visible.width() * sx, visible.height() * sy)
        painter.drawImage(visible, image, source)

    def _paint_preview_outline(self, painter: QPainter, pane: QRectF) -> None:
        """A dashed outline, dark under light, readable on any photo, and a "Preview" tab."""
        if self._preview_rect is None:
            return
        box = self.image_to_widget(self._preview_rect, pane).adjusted(-1, -1, 1, 1)
        painter.save()
        painter.setClipRect(pane)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(QColor(0, 0, 0, 160), 3))
        painter.drawRect(box)
        pen = QPen(PREVIEW_COLOUR, 1, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRect(box)
        metrics = painter.fontMetrics()
        text = "Preview region" if self._patch is None else "Preview"
        tab = QRectF(box.left(), box.top() - metrics.height() - 4, metrics.horizontalAdvance(text) + 10,
                     metrics.height() + 4)
        if tab.top() < pane.top():  # no room above: inside the top edge
            tab.moveTop(box.top() + 2)
        path = QPainterPath()
        path.addRoundedRect(tab, 3, 3)
        painter.fillPath(path, QColor(0, 0, 0, 170))
        painter.setPen(PREVIEW_COLOUR)
        painter.drawText(tab, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

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
