"""The app icon, drawn in code (the same design as installer/restorer.svg): a photo split in
two, the left half grainy and grey, the right half clean and coloured."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPainterPath, QPen


def icon_image(size: int = 256) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 256.0
    frame = QRectF(16 * s, 16 * s, 224 * s, 224 * s)
    clip = QPainterPath()
    clip.addRoundedRect(frame, 36 * s, 36 * s)
    p.setClipPath(clip)
    p.fillRect(QRectF(frame.left(), frame.top(), frame.width() / 2, frame.height()), QColor("#8a8a8a"))
    p.fillRect(QRectF(frame.center().x(), frame.top(), frame.width() / 2, frame.height()), QColor("#3f8fd8"))
    # a sun and a mountain across both halves
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#ffd54a"))
    p.drawEllipse(QPointF(170 * s, 82 * s), 26 * s, 26 * s)
    hill = QPainterPath(QPointF(16 * s, 240 * s))
    hill.lineTo(96 * s, 120 * s)
    hill.lineTo(150 * s, 190 * s)
    hill.lineTo(186 * s, 150 * s)
    hill.lineTo(240 * s, 240 * s)
    hill.closeSubpath()
    p.setBrush(QColor("#2e7d32"))
    p.drawPath(hill)
    # grey out and speckle the "before" half
    p.fillRect(QRectF(frame.left(), frame.top(), frame.width() / 2, frame.height()), QColor(120, 120, 120, 150))
    p.setPen(QPen(QColor(30, 30, 30, 160), 2.5 * s))
    for i in range(9):
        x = 26 * s + (i * 37 % 96) * s
        y = 30 * s + (i * 53 % 196) * s
        p.drawPoint(QPointF(x, y))
    p.setClipping(False)
    p.setPen(QPen(QColor("white"), 8 * s))
    p.drawLine(QPointF(128 * s, 16 * s), QPointF(128 * s, 240 * s))
    p.end()
    return image


def app_icon() -> QIcon:
    from PySide6.QtGui import QPixmap

    icon = QIcon()
    for size in (16, 32, 48, 64, 128, 256):
        icon.addPixmap(QPixmap.fromImage(icon_image(size)))
    return icon
