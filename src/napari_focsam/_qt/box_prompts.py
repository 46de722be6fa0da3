"""The widget's box prompts: a shapes layer ("FocSAM boxes") whose rectangle starts the object.

One rectangle is one object's box: drawing a new one replaces the previous one (the points are
kept and refine the new box). On a stack the box belongs to the slice it was drawn on. After a
rectangle is drawn, the prompts layer becomes the active layer again, so the next clicks refine
the box at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Shapes
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.prompting import Box, checked_box
from .layer_utils import same_transform, spatial_shape, transform_kwargs

__all__ = ["BOXES_NAME", "BoxPrompts"]

BOXES_NAME = "FocSAM boxes"
BOX_COLOR = "#00c8ff"


class BoxPrompts(QObject):
    """Owner of the boxes layer of one viewer.

    Signals: ``changed`` (the box was drawn, moved, resized or removed), ``drawn`` (a new
    rectangle was added: the caller may hand the clicks back to the prompts layer), ``removed``
    (the layer was deleted).
    """

    changed = Signal()
    drawn = Signal()
    removed = Signal()  # the boxes layer was deleted (reported after napari finished removing it)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer: Shapes | None = None
        self._ignore = False
        self._sig: bytes = b""
        viewer.layers.events.removed.connect(self._on_removed)

    # ------------------------------------------------------------------ layer
    @staticmethod
    def new_layer(image: Image) -> Shapes:
        """An empty boxes layer for ``image``, not yet in a viewer (any thread may build it)."""
        return Shapes(ndim=image.ndim, name=BOXES_NAME, edge_color=BOX_COLOR, face_color="transparent",
                      edge_width=max(1.0, max(spatial_shape(image)[-2:]) / 300), **transform_kwargs(image))

    def ensure(self, image: Image, built: Shapes | None = None) -> Shapes:
        """Create (or adopt) the boxes layer for ``image``, empty, just above it; ``built``: a
        layer from :meth:`new_layer`, used when no boxes layer is there."""
        layers = self.viewer.layers
        ndim = image.ndim
        if self.layer is not None and (self.layer not in layers or self.layer.ndim != ndim):
            old = self.layer
            self.detach()
            if old in layers:
                layers.remove(old)
        if self.layer is None:
            found = next((la for la in layers if isinstance(la, Shapes) and la.name == BOXES_NAME
                          and la.ndim == ndim), None)
            if found is None:
                fits = built is not None and built.ndim == ndim and same_transform(built, image)
                found = built if fits else self.new_layer(image)
                layers.insert(layers.index(image) + 1 if image in layers else len(layers), found)
            self.attach(found)
        self.clear()
        return self.layer

    def attach(self, layer: Shapes) -> None:
        self.layer = layer
        layer.events.data.connect(self._on_data)
        layer.current_edge_color = BOX_COLOR
        layer.current_face_color = "transparent"

    def detach(self) -> None:
        layer, self.layer = self.layer, None
        if layer is not None:
            try:
                layer.events.data.disconnect(self._on_data)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _on_removed(self, event=None) -> None:
        if getattr(event, "value", None) is self.layer and self.layer is not None:
            self.detach()
            self.changed.emit()
            QTimer.singleShot(0, self.removed.emit)

    def release(self) -> None:
        """Stop listening to the viewer and the layer (the widget closes)."""
        self.detach()
        try:
            self.viewer.layers.events.removed.disconnect(self._on_removed)
        except (TypeError, ValueError, RuntimeError):
            pass

    def forget(self, layer: Any) -> bool:
        """``layer`` left the viewer; True when it was the boxes layer."""
        if layer is self.layer and layer is not None:
            self.detach()
            return True
        return False

    # ------------------------------------------------------------------ events
    def _signature(self) -> bytes:
        if self.layer is None:
            return b""
        return b"|".join(np.asarray(d, float).tobytes() for d in self.layer.data)

    def _on_data(self, event=None) -> None:
        if self._ignore or str(getattr(event, "action", "changed")) in ("adding", "removing", "changing"):
            return
        sig = self._signature()
        if sig == self._sig:
            return
        added = str(getattr(event, "action", "")) == "added"
        if added and self.layer is not None and len(self.layer.data) > 1:
            QTimer.singleShot(0, self._keep_newest)  # not while napari is still handling the drawing
            return
        self._sig = sig
        self.changed.emit()
        if added:
            QTimer.singleShot(0, self.drawn.emit)

    def _keep_newest(self) -> None:
        layer = self.layer
        if layer is None:
            return
        if len(layer.data) > 1:
            self._ignore = True
            try:
                layer.selected_data = set(range(len(layer.data) - 1))
                layer.remove_selected()
            finally:
                self._ignore = False
        self._sig = self._signature()
        self.changed.emit()
        self.drawn.emit()

    # ------------------------------------------------------------------ state
    def has_box(self) -> bool:
        return self.layer is not None and len(self.layer.data) > 0

    def clear(self) -> None:
        """Remove the box without reporting a change."""
        if self.layer is None or not len(self.layer.data):
            self._sig = self._signature()
            return
        self._ignore = True
        try:
            self.layer.data = []
        finally:
            self._ignore = False
        self._sig = self._signature()

    def remove(self) -> bool:
        """Remove the box (reported as a change); False when there was none."""
        if not self.has_box():
            return False
        self.clear()
        self.changed.emit()
        return True

    def box(self, image: Image, plane_shape: tuple[int, int], n_slices: int,
            is_3d: bool) -> tuple[int, Box] | None:
        """The box as (z, Box) in ``image``'s pixels (None without one).

        Raises
        ------
        ValueError
            The shape spans several slices, lies on no slice of the stack, has zero area or lies
            outside the image.
        """
        layer = self.layer
        if layer is None or not len(layer.data):
            return None
        pts = np.asarray(layer.data[-1], float)
        if not same_transform(layer, image):
            pts = np.array([image.world_to_data(layer.data_to_world(p)) for p in pts])
        z = 0
        if is_3d:
            zs = np.unique(np.round(pts[:, 0]).astype(int))
            if zs.size != 1:
                raise ValueError(f"the box spans slices {zs.min()}-{zs.max()}: draw it on one slice "
                                 "(in the 2D view)")
            z = int(zs[0])
            if not 0 <= z < n_slices:
                raise ValueError(f"the box is on slice {z}, outside the stack of {n_slices} slices")
        ys, xs = pts[:, -2], pts[:, -1]
        return z, checked_box((ys.min(), xs.min(), ys.max(), xs.max()), plane_shape)
