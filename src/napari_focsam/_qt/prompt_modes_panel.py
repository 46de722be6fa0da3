"""The dock's "More prompts" section: boxes (a hint), many objects at once, and Segment all.

It shows state and emits Qt signals (``batch_toggled(bool)``, ``segment_all_clicked``,
``cancel_clicked``); it never calls the widget.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..core.automatic import SegmentAllParams
from .panels import progress_row, show_bar

__all__ = ["PromptModesPanel"]


class PromptModesPanel(QGroupBox):
    """Boxes hint, the many-objects checkbox, and Segment all (points per side, tiles, progress, cancel)."""

    batch_toggled = Signal(bool)
    segment_all_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self) -> None:
        super().__init__("More prompts")
        box = QVBoxLayout(self)
        hint = QLabel("Box: draw a rectangle in 'FocSAM boxes' (select it, press R); clicks then refine it.")
        hint.setWordWrap(True)
        box.addWidget(hint)
        self.batch_check = QCheckBox("Each positive point is its own object")
        self.batch_check.setToolTip("Many objects at once: every positive point segments one object, negative "
                                    "points are shared; Commit writes them all with their own ids")
        box.addWidget(self.batch_check)
        defaults = SegmentAllParams()
        form = QFormLayout()
        self.points_spin = QSpinBox()
        self.points_spin.setRange(4, 128)
        self.points_spin.setValue(defaults.points_per_side)
        self.points_spin.setToolTip("Grid of point prompts per image side: more finds smaller objects, "
                                    "and takes longer")
        form.addRow("Points per side", self.points_spin)
        self.tiles_spin = QSpinBox()
        self.tiles_spin.setRange(1, 4)
        self.tiles_spin.setValue(defaults.tiles)
        self.tiles_spin.setToolTip("Tiles per side: >1 magnifies small objects for the model (each tile is "
                                   "encoded again: slower)")
        form.addRow("Tiles per side", self.tiles_spin)
        box.addLayout(form)
        self.segment_all_button = QPushButton("Segment all (this slice)")
        self.segment_all_button.setToolTip("Find every object of the image (or slice in view) automatically; "
                                           "writes new labels on background pixels only (Ctrl+Z undoes it)")
        box.addWidget(self.segment_all_button)
        row, self.progress_bar, self.cancel_button = progress_row()
        box.addLayout(row)
        self.batch_check.toggled.connect(lambda on: self.batch_toggled.emit(bool(on)))
        self.segment_all_button.clicked.connect(lambda *_: self.segment_all_clicked.emit())
        self.cancel_button.clicked.connect(lambda *_: self.cancel_clicked.emit())

    def params(self) -> SegmentAllParams:
        return SegmentAllParams(points_per_side=int(self.points_spin.value()), tiles=int(self.tiles_spin.value()))

    def show_state(self, *, ready: bool, running: bool) -> None:
        self.segment_all_button.setEnabled(ready and not running)
        self.cancel_button.setVisible(running)
        if not running:
            self.progress_bar.setVisible(False)

    def show_progress(self, done: int, total: int, fmt: str) -> None:
        show_bar(self.progress_bar, done, total, fmt)
