"""Candidates side by side: the original region and 2 to 4 restorations of it (other models,
other strengths) in a grid, zoomed and panned together, each with a "Use this" button.

Each pane is a CompareView showing one layer, so wheel, keys, drag, double-click and the
level-of-detail painting are CompareView's own. The panes share one canvas (the largest image
shown, the others stretched to it, as CompareView stretches a super-resolution original) and
one zoom and centre: whatever one pane does to them is copied to the others at once, so every
pane shows the same canvas region.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget
from restorer_ui.compare_view import BACKGROUND, MAX_ZOOM, MIN_ZOOM, CompareView
from restorer_ui.imageconv import Pyramid

MAX_CANDIDATES = 4
WORKING = "working…"
HEADER = 28  # pixels a pane's title row takes, for choosing the grid


def grid_shape(count: int, width: float, height: float, canvas: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) for `count` panes in a width x height area that show the canvas
    largest; on a tie, the grid with fewer empty cells."""
    cw, ch = max(1, canvas[0]), max(1, canvas[1])
    best, best_key = (1, max(1, count)), None
    for cols in range(1, max(1, count) + 1):
        rows = math.ceil(count / cols)
        scale = min(width / cols / cw, max(1.0, height / rows - HEADER) / ch)
        key = (round(scale, 6), -(rows * cols - count))
        if best_key is None or key > best_key:
            best, best_key = (rows, cols), key
    return best


class _Pane(CompareView):
    """One image of the grid: CompareView with the shared canvas, a placeholder while its
    candidate runs, and every zoom or pan passed on to the other panes."""

    def __init__(self, owner: "CandidatesView"):
        super().__init__()
        self.owner = owner
        self.pyramid: Pyramid | None = None
        self.message = WORKING  # painted while there is no pyramid
        self.setMinimumSize(40, 30)  # CompareView's 200x150 would not fit five panes in a small window

    def canvas_size(self) -> tuple[int, int]:
        return self.owner.canvas_size()

    def fit(self) -> None:
        self.owner.fit()  # from the smallest pane: the grid's panes can differ by a pixel

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        super().set_zoom(zoom, anchor)
        self.owner._follow(self)

    def pan_by(self, dx: float, dy: float) -> None:
        super().pan_by(dx, dy)
        self.owner._follow(self)

    def paintEvent(self, event):
        painter = QPainter(self)
        pane = QRectF(self.rect())
        painter.fillRect(pane, BACKGROUND)
        if self.pyramid is None:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(pane, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.message)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.zoom < 2.0)
        self._paint_layer(painter, self.pyramid, pane, pane)


class _Cell(QFrame):
    """A pane under its title and, for a candidate, its "Use this" button."""

    def __init__(self, owner: "CandidatesView", index: int):
        super().__init__()
        self.index = index  # -1: the original
        self.title = QLabel()
        # Ignored: a long label must not widen the grid; the tooltip keeps it whole.
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.use_button = QPushButton("Use this")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(lambda: owner.chosen.emit(self.index))
        # The original has no button, but keeps its room: every pane then has the same size.
        policy = self.use_button.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.use_button.setSizePolicy(policy)
        self.use_button.setVisible(index >= 0)
        self.pane = _Pane(owner)
        header = QHBoxLayout()
        header.setContentsMargins(4, 2, 2, 0)
        header.addWidget(self.title, 1)
        header.addWidget(self.use_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.pane, 1)

    def set_label(self, text: str) -> None:
        self.title.setText(text)
        self.title.setToolTip(text)

    def set_pyramid(self, pyramid: Pyramid | None, message: str = WORKING) -> None:
        self.pane.pyramid = pyramid
        self.pane.message = message
        self.use_button.setEnabled(pyramid is not None)
        self.pane.update()


class CandidatesView(QWidget):
    chosen = Signal(int)  # the index of the candidate whose "Use this" was clicked
    zoomChanged = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._original = _Cell(self, -1)
        self._original.set_label("Original")
        self._candidates: list[_Cell] = []
        # The shared view state: every pane holds a copy (CompareView paints from its own).
        self._zoom, self._center, self._fitting = 1.0, QPointF(0, 0), True
        self._canvas = (1, 1)
        self._shape: tuple[int, int] | None = None
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(4)
        self._relayout()

    # ------------------------------------------------------------ content

    def set_original(self, pyramid: Pyramid | None, label: str = "Original") -> None:
        """A new region: shown fitted, whatever the zoom was."""
        self._original.set_label(label)
        self._original.set_pyramid(pyramid)
        self._fitting = True
        self._canvas_changed()

    def set_candidates(self, candidates: list[tuple[str, Pyramid | None]]) -> None:
        """The candidates' labels and pyramids; None: still running (a placeholder is shown)."""
        if len(candidates) > MAX_CANDIDATES:
            raise ValueError(f"at most {MAX_CANDIDATES} candidates, not {len(candidates)}")
        for cell in self._candidates:
            self._grid.removeWidget(cell)
            cell.hide()
            cell.deleteLater()
        self._candidates = []
        for i, (label, pyramid) in enumerate(candidates):
            cell = _Cell(self, i)
            cell.set_label(label)
            cell.set_pyramid(pyramid)
            self._copy_state_to(cell.pane)
            self._candidates.append(cell)
        self._shape = None  # lay out again even when the grid shape is the same
        self._relayout()
        self._canvas_changed()

    def set_candidate(self, index: int, pyramid: Pyramid | None, label: str | None = None) -> None:
        """A candidate finished (or, with None, runs again)."""
        cell = self._candidates[index]
        if label is not None:
            cell.set_label(label)
        cell.set_pyramid(pyramid)
        self._canvas_changed()

    def set_candidate_error(self, index: int, message: str) -> None:
        """A candidate that could not be made: its pane says why and cannot be chosen."""
        self._candidates[index].set_pyramid(None, message)
        self._canvas_changed()

    def clear(self) -> None:
        self.set_candidates([])
        self.set_original(None)

    def candidate_count(self) -> int:
        return len(self._candidates)

    def candidate(self, index: int) -> Pyramid | None:
        return self._candidates[index].pane.pyramid

    def label(self, index: int) -> str:
        """Pane `index`'s title; 0 is the original, i + 1 candidate i (the order of panes())."""
        return self._cells()[index].title.text()

    def panes(self) -> list[CompareView]:
        """The image panes, the original first: for tests and for the window's shortcuts."""
        return [cell.pane for cell in self._cells()]

    def use_button(self, index: int) -> QPushButton:
        return self._candidates[index].use_button

    def _cells(self) -> list[_Cell]:
        return [self._original, *self._candidates]

    # ------------------------------------------------------------ the shared view

    @property
    def zoom(self) -> float:
        """Screen pixels per canvas pixel, the same in every pane."""
        return self._zoom

    @property
    def center(self) -> QPointF:
        """The canvas point at the middle of every pane."""
        return QPointF(self._center)

    @property
    def fitting(self) -> bool:
        return self._fitting

    def canvas_size(self) -> tuple[int, int]:
        return self._canvas

    def set_zoom(self, zoom: float) -> None:
        """Zoom about the middle of the panes."""
        self._original.pane.set_zoom(zoom)

    def zoom_by(self, factor: float) -> None:
        self._original.pane.zoom_by(factor)

    def fit(self) -> None:
        """The whole canvas in every pane, centred."""
        w, h = self._canvas
        fits = [min(c.pane.width() / w, c.pane.height() / h) for c in self._cells()]
        zoom = max(MIN_ZOOM, min(min(fits), MAX_ZOOM))
        changed = zoom != self._zoom
        self._zoom, self._center, self._fitting = zoom, QPointF(w / 2, h / 2), True
        for cell in self._cells():
            self._copy_state_to(cell.pane)
        if changed:
            self.zoomChanged.emit(zoom)

    def actual_size(self) -> None:
        self._original.pane.actual_size()

    def pan_by(self, dx: float, dy: float) -> None:
        """Move every image by (dx, dy) screen pixels."""
        self._original.pane.pan_by(dx, dy)

    def _follow(self, source: _Pane) -> None:
        """`source` zoomed or panned: the others show the same from now on."""
        changed = source.zoom != self._zoom
        self._zoom, self._center, self._fitting = source.zoom, QPointF(source.center), source.fitting
        for cell in self._cells():
            if cell.pane is not source:
                self._copy_state_to(cell.pane)
        if changed:
            self.zoomChanged.emit(self._zoom)

    def _copy_state_to(self, pane: _Pane) -> None:
        pane.zoom, pane.center, pane.fitting = self._zoom, QPointF(self._center), self._fitting
        pane.update()

    def _canvas_changed(self) -> None:
        """The largest image shown sets the canvas. When it changes (a 2x candidate arrives
        after the original), the zoom and centre are rescaled so the same region stays in view."""
        shown = [c.pane.pyramid for c in self._cells() if c.pane.pyramid is not None]
        biggest = max(shown, key=lambda p: p.width * p.height, default=None)
        canvas = (biggest.width, biggest.height) if biggest else (1, 1)
        old, self._canvas = self._canvas, canvas
        if canvas != old and old != (1, 1) and canvas != (1, 1) and not self._fitting:
            sx, sy = canvas[0] / old[0], canvas[1] / old[1]
            self._center = QPointF(self._center.x() * sx, self._center.y() * sy)
            self._zoom /= sx
        first = self._original.pane
        if self._fitting:
            self.fit()
        else:
            self._copy_state_to(first)
            first.set_zoom(self._zoom)  # keeps the centre inside the new canvas, then _follow
        self._relayout()

    # ------------------------------------------------------------ layout

    def _relayout(self) -> None:
        """Place the cells in the grid that shows the canvas largest in this widget's size."""
        cells = self._cells()
        shape = grid_shape(len(cells), self.width(), self.height(), self._canvas)
        if shape == self._shape:
            return
        self._shape = shape
        for cell in cells:
            self._grid.removeWidget(cell)
        rows, cols = shape
        for i, cell in enumerate(cells):
            self._grid.addWidget(cell, i // cols, i % cols)
        # Equal stretch on the used rows and columns (none on rows and columns of an earlier,
        # larger grid) gives every pane the same size, so the panes show the same region.
        for r in range(MAX_CANDIDATES + 1):
            self._grid.setRowStretch(r, 1 if r < rows else 0)
            self._grid.setColumnStretch(r, 1 if r < cols else 0)

    def resizeEvent(self, event):
        self._relayout()
        super().resizeEvent(event)
