"""``ZProfile``: where a 3D object starts and ends, at a glance.

A strip under the actions: one bar per slice, as high as the object's area on that slice (relative
to its largest), the slices with clicks (the propagation's anchors) marked below, and the slice in
view outlined. It is drawn with QPainter from a few numbers (no plotting library): the areas come
from the preview's regions, which the widget already holds, so an update costs nothing per voxel.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["ZProfile"]

BAR = QColor(80, 200, 255)
ANCHOR = QColor(255, 210, 0)
VIEW = QColor(255, 255, 255)


class ZProfile(QWidget):
    """Area per slice of the current 3D object, its anchors and the slice in view (hidden for 2D)."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(34)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.areas: list[int] = []
        self.anchors: set[int] = set()
        self.view_z = 0
        self.hide()

    def show_profile(self, n_slices: int, areas: Mapping[int, int], anchors: Iterable[int], view_z: int) -> None:
        """Show the object: ``areas`` {z: pixels} (missing slices are empty), ``anchors`` (slices with
        clicks), ``view_z`` (the slice in view). Hidden when the object is empty."""
        self.areas = [int(areas.get(z, 0)) for z in range(max(0, int(n_slices)))]
        self.anchors, self.view_z = {int(z) for z in anchors}, int(view_z)
        on = [z for z, a in enumerate(self.areas) if a]
        if not on:
            return self.clear()
        marks = ", ".join(str(z) for z in sorted(self.anchors)) or "none"
        self.setToolTip(f"the object on slices {on[0]}-{on[-1]} ({len(on)} of {len(self.areas)}); "
                        f"clicked slices (anchors): {marks}")
        self.show()
        self.update()

    def set_view(self, z: int) -> None:
        if int(z) != self.view_z:
            self.view_z = int(z)
            self.update()

    def clear(self) -> None:
        self.areas, self.anchors = [], set()
        self.hide()

    def extent(self) -> tuple[int, int] | None:
        """The first and last slice the object is on (None when empty)."""
        on = [z for z, a in enumerate(self.areas) if a]
        return (on[0], on[-1]) if on else None

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        n = len(self.areas)
        if not n:
            return
        p = QPainter(self)
        w, h = self.width(), self.height() - 6  # the bottom 6 px: anchor marks
        step, top = w / n, max(self.areas) or 1
        for z, area in enumerate(self.areas):
            x = z * step
            if area:
                bar = max(1.0, (h - 2) * area / top)
                p.fillRect(QRectF(x, h - bar, max(1.0, step - 1), bar), BAR)
            if z in self.anchors:
                p.fillRect(QRectF(x, h + 1, max(2.0, step - 1), 5), ANCHOR)
        if 0 <= self.view_z < n:
            p.setPen(VIEW)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(self.view_z * step, 0, max(2.0, step - 1), h))
        p.end()
