"""A table of files with a thumbnail column, as the queue and the batch window show them."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget
from restorer_ui.imageconv import to_qimage


def thumbnail(path: Path, size: int) -> QPixmap | None:
    """A small preview, decoded at reduced size where the format allows (JPEG draft)."""
    import numpy as np
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pil:
            pil.draft("RGB", (size * 2, size * 2))
            pil = pil.convert("RGB")
            pil.thumbnail((size, size))
            return QPixmap.fromImage(to_qimage(np.asarray(pil)))
    except Exception:
        return None


def file_table(columns: tuple[str, ...], thumb: int, name_width: int) -> QTableWidget:
    """Rows of files, read-only, selected whole: the thumbnail first (fixed), then the name
    (resizable), the last column stretched."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setIconSize(QSize(thumb, thumb))
    table.verticalHeader().setDefaultSectionSize(thumb + 4)
    table.verticalHeader().hide()
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    header = table.horizontalHeader()
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
    table.setColumnWidth(0, thumb + 8)
    header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
    table.setColumnWidth(1, name_width)
    header.setStretchLastSection(True)
    return table
