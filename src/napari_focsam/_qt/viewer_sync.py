"""``ViewerSync``: follows the viewer's layer list and dims for the widget.

It keeps the image and labels combos of the panels in step with the layers (added, removed,
moved, renamed), holds the chosen image layer (and watches its pixels), tracks the slice in view,
and reports what the widget must decide on through signals: ``image_inserted(layer)``,
``image_removed``, ``image_data_changed`` ``managed_removed`` (a prompts or preview layer was
deleted; reported after napari finished removing it) and ``view_z_changed(z)``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, QTimer, Signal

from .layer_utils import owner_of, spatial_shape
from .panels import OutputPanel, SetupPanel
from .prompt_layers import PromptLayers
from .state import SharedClosed, WidgetState

__all__ = ["ViewerSync"]

#: the pause between two steps of :meth:`ViewerSync.staged` (ms): room for napari's draw of a new layer
STAGE_MS = 10


class ViewerSync(QObject):
    """The widget's view of the viewer's layers (see the module docs)."""

    image_inserted = Signal(object)
    image_removed = Signal()
    image_data_changed = Signal()
    managed_removed = Signal()
    view_z_changed = Signal(int)

    closed = SharedClosed()

    def __init__(self, viewer: Any, setup: SetupPanel, output: OutputPanel, managed: PromptLayers,
                 state: WidgetState) -> None:
        super().__init__()
        self.viewer, self.setup, self.output, self.managed = viewer, setup, output, managed
        self.state = state
        self.image: Image | None = None
        self.view_z = 0
        #: deferred passes of :meth:`settle` still to run (they make the prompts layer active)
        self.settling = 0
        #: the boxes layer (owned by the prompt modes), kept above the image with the others
        self.boxes_layer: Callable[[], Any] = lambda: None
        self._watched: set[int] = set()
        #: each image's output labels layer (made for it, or chosen by the user while it was chosen)
        self._outputs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        output.output_combo.activated.connect(self._on_output_chosen)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self._on_layers_changed)
        viewer.dims.events.current_step.connect(self.update_view_z)

    def close(self) -> None:
        self.closed = True
        try:
            events = self.viewer.layers.events
            for ev in (events.inserted, events.removed, events.moved):
                ev.disconnect(self._on_layers_changed)
            self.viewer.dims.events.current_step.disconnect(self.update_view_z)
        except Exception:
            pass

    # ------------------------------------------------------------------ events
    def _on_layers_changed(self, event=None) -> None:
        if self.closed:
            return
        kind, value = getattr(event, "type", ""), getattr(event, "value", None)
        if kind == "removed" and self.managed.forget(value):
            QTimer.singleShot(0, self._report_managed_removed)
        self.refresh()
        if kind == "inserted" and isinstance(value, Image):
            self.image_inserted.emit(value)
        elif kind == "removed" and value is not None and value is self.image:
            self.set_image(None)
            self.image_removed.emit()

    def _report_managed_removed(self) -> None:
        try:
            if not self.closed:
                self.managed_removed.emit()
        except RuntimeError:  # the dock was deleted with its viewer meanwhile
            self.closed = True

    def _on_renamed(self, event=None) -> None:
        if not self.closed:
            self.refresh()

    def _on_image_data(self, event=None) -> None:
        self.image_data_changed.emit()

    def update_view_z(self, event=None) -> None:
        """Remember the slice in view of a 3D image (embeddings start there)."""
        image = self.image
        if image is None or image.ndim != 3 or self.closed:
            return
        try:
            z = image.world_to_data(self.viewer.dims.point)[0]
        except Exception:
            return
        z = int(np.clip(round(float(z)), 0, spatial_shape(image)[0] - 1))
        if z != self.view_z:
            self.view_z = z
            self.view_z_changed.emit(z)

    # ------------------------------------------------------------------ state
    def set_image(self, layer: Image | None) -> None:
        """Make ``layer`` the chosen image (its pixel changes are reported)."""
        if layer is self.image:
            return
        if self.image is not None:
            try:
                self.image.events.data.disconnect(self._on_image_data)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.image = layer
        if layer is not None:
            layer.events.data.connect(self._on_image_data)

    def refresh(self) -> None:
        """List the image and labels layers in the panels, keeping the choices where possible."""
        layers = self.viewer.layers
        for la in layers:
            if isinstance(la, (Image, Labels)) and id(la) not in self._watched:
                la.events.name.connect(self._on_renamed)
                self._watched.add(id(la))
        images = [la for la in layers if isinstance(la, Image)]
        self.setup.show_images(images, self.image, layers.selection.active)
        labels = [la for la in layers if isinstance(la, Labels) and la is not self.managed.preview]
        prev = self.output.current()
        self.output.show_labels(labels, prev if prev in labels else self._output_of(self.image, labels))

    def _on_output_chosen(self, *_: Any) -> None:
        """The user chose an output layer (or "New labels layer") for the chosen image."""
        if self.image is None:
            return
        layer = self.output.current()
        if layer is None:
            self._outputs.pop(self.image, None)
        else:
            self._outputs[self.image] = layer

    def _output_of(self, image: Image | None, labels: list) -> Labels | None:
        """The output layer of ``image`` among ``labels``: the one made or chosen for it in this
        session, else one made for an image of its name; never another image's."""
        if image is None:
            return None
        shape = tuple(spatial_shape(image))

        def fits(la: Any) -> bool:
            return la is not None and la in labels and tuple(la.data.shape) == shape

        chosen = self._outputs.get(image)
        if fits(chosen):
            return chosen
        return next((la for la in labels if owner_of(la) == image.name and fits(la)), None)

    def pick_output(self) -> None:
        """A new image is chosen: choose its own output layer, else "New labels layer"."""
        self.output.choose(self._output_of(self.image, self.output.layers()))

    # ------------------------------------------------------------------ managed layers
    def output_layer(self, *, create: bool) -> Labels | None:
        """The chosen output labels layer; with ``create``, a new one when "New labels layer" is chosen."""
        layer = self.output.current()
        if layer is not None and layer in self.viewer.layers:
            self.managed.bind_output_keys(layer)
            return layer
        if not create or self.image is None:
            return None
        out = self.managed.create_output(self.image)
        self._outputs[self.image] = out
        self.refresh()
        self.output.choose(out)
        self.managed.bind_output_keys(out)
        self.managed.select_prompts()
        return out

    def settle(self) -> None:
        """Prompts active in add mode, our layers above the image: now and after napari's own
        handling of the current event (it makes a layer it just inserted the active one)."""
        def run(last: bool = False):
            if last:
                self.settling -= 1
            if self.closed:
                return
            try:
                self.managed.arrange(self.image, self.output.current(), self.boxes_layer())
                self.managed.select_prompts()
            except RuntimeError:  # the dock was deleted with its viewer meanwhile
                self.closed = True
        run()
        self.settling += 1  # the widget counts as busy until the second pass ran
        QTimer.singleShot(0, lambda: run(last=True))

    def staged(self, steps: list[Callable[[], Any]], still: Callable[[], bool]) -> None:
        """Run ``steps`` one per event-loop turn (napari draws each new layer in between, so the
        window never waits for all of them at once), while ``still()`` holds; counted in
        :attr:`settling` (the widget is busy) until the last one ran or the rest was dropped."""
        self.settling += 1

        def run(i: int) -> None:
            if self.closed or not still():
                self.settling -= 1
                return
            try:
                steps[i]()
            except RuntimeError:  # the dock was deleted with its viewer meanwhile
                self.closed = True
            if i + 1 < len(steps):
                QTimer.singleShot(STAGE_MS, lambda: run(i + 1))
            else:
                self.settling -= 1
        run(0)

    def restore_layers(self) -> bool:
        """Recreate a deleted prompts or preview layer of the chosen image; True if one was."""
        image = self.image
        if self.closed or image is None or image not in self.viewer.layers:
            return False
        if self.managed.prompts is not None and self.managed.preview is not None:
            return False
        self.managed.ensure(image)
        self.settle()
        return True
