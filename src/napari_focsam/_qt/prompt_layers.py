"""The layers the widget manages: prompts (points), preview (labels) and a new output (labels).

``PromptLayers`` creates or adopts them by name, keeps them above the image they belong to,
binds the widget's keys on the viewer, the prompts layer and the output layer, and turns the
points into clicks. It reports through two signals and never calls the widget:
``points_changed`` (a point was added, removed, moved or changed polarity) and ``action(str)``
(a key was pressed: ``commit``, ``clear``, ``volume``, ``toggle``, ``undo`` or ``redo``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QObject, QTimer, Signal


from .constants import KEYS, NEGATIVE_COLOR, OUTPUT_KEYS, POSITIVE_COLOR, PREVIEW_NAME, PREVIEW_RGBA, PROMPTS_NAME
from .layer_utils import OWNER_KEY, output_name, same_transform, spatial_shape, transform_kwargs
from .region_layers import full_mask, new_labels_array, output_dtype, write_regions

if TYPE_CHECKING:  # pragma: no cover - core.regions imports torch (kept off the GUI thread's imports)
    from ..core.prompting import MaskRegion

__all__ = ["PromptLayers"]

#: (z, y, x, positive) in the image's pixel coordinates
Click = tuple[int, float, float, bool]


class PromptLayers(QObject):
    """Owner of the prompts, preview and new output layers of one viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The real viewer (not a proxy: layer identities must match).
    """

    points_changed = Signal()
    action = Signal(str)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.prompts: Points | None = None
        self.preview: Labels | None = None
        self.positive = True
        self._next_positive: bool | None = None  # one-shot polarity of a Ctrl+click
        self._ignore = False
        self._sig: tuple = ()
        self._key_owners: list[tuple[Any, str, Any]] = []
        self._keyed_output: Labels | None = None
        self._arranging = False
        #: the slices shown in the preview, {z: MaskRegion} (the object's box on each slice)
        self.regions: dict[int, "MaskRegion"] = {}
        self.has_volume = False  # the preview shows a propagated volume

    # ------------------------------------------------------------------ keys
    def _key_handler(self, action: str):
        def on_key(_layer_or_viewer):
            self.action.emit(action)
        on_key.__doc__ = f"FocSAM: {action}"
        return on_key

    def _bind(self, owner: Any, keys) -> None:
        for action, key in keys:
            prev = owner.bind_key(key, self._key_handler(action), overwrite=True)
            self._key_owners.append((owner, key, prev))

    def _unbind(self, owner: Any) -> None:
        keep = []
        for o, key, prev in self._key_owners:
            if o is owner:
                try:
                    o.bind_key(key, prev, overwrite=True)
                except Exception:  # the layer may be half torn down while napari closes
                    pass
            else:
                keep.append((o, key, prev))
        self._key_owners = keep

    def bind_viewer_keys(self) -> None:
        self._bind(self.viewer, KEYS)

    def bind_output_keys(self, layer: Labels | None) -> None:
        """Ctrl+Z / Ctrl+Shift+Z on the output layer go through the widget too."""
        if layer is self._keyed_output:
            return
        if self._keyed_output is not None:
            self._unbind(self._keyed_output)
        self._keyed_output = layer
        if layer is not None:
            self._bind(layer, OUTPUT_KEYS)

    def release(self) -> None:
        """Give every key back to napari and stop listening to the prompts layer."""
        self.detach()
        for owner, key, prev in self._key_owners:
            try:
                owner.bind_key(key, prev, overwrite=True)
            except Exception:
                pass
        self._key_owners = []
        self._keyed_output = None

    # ------------------------------------------------------------------ layers
    @staticmethod
    def new_preview(image: Image) -> Labels:
        """A preview labels layer for ``image``, not yet in a viewer (any thread may build it)."""
        # napari computes its default label colours first and warns about clipped LAB values
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        cmap = DirectLabelColormap(color_dict={None: "transparent", 1: PREVIEW_RGBA})
        shape = spatial_shape(image)
        return Labels(new_labels_array(shape, np.uint8), name=PREVIEW_NAME, opacity=0.5, colormap=cmap,
                      **transform_kwargs(image))

    def ensure(self, image: Image, preview: Labels | None = None) -> None:
        """Create or adopt the prompts and preview layers for ``image`` (fresh points and mask);
        ``preview``: a layer from :meth:`new_preview`, used when no preview layer is there."""
        self.ensure_preview(image, preview)
        self.ensure_prompts(image)

    def ensure_preview(self, image: Image, preview: Labels | None = None) -> None:
        """Create or adopt the preview layer for ``image`` (an empty mask); ``preview``: a layer
        from :meth:`new_preview`, used when no preview layer is there."""
        layers = self.viewer.layers
        shape = spatial_shape(image)
        if self.preview is not None and (self.preview not in layers or self.preview.data.shape != shape):
            if self.preview in layers:
                layers.remove(self.preview)
            self.preview = None
        if self.preview is None:
            found = next((la for la in layers if isinstance(la, Labels) and la.name == PREVIEW_NAME
                          and la.data.shape == shape), None)
            if found is not None:
                found.data = new_labels_array(shape, np.uint8)
            else:
                fits = preview is not None and tuple(preview.data.shape) == tuple(shape) and same_transform(preview, image)
                found = self.viewer.add_layer(preview if fits else self.new_preview(image))
            self.preview = found
        elif isinstance(self.preview.data, np.ndarray):
            self.preview.data[...] = 0
            self.preview.refresh()
        else:  # a zarr-backed preview: a fresh (empty) array costs nothing
            self.preview.data = new_labels_array(shape, np.uint8)
        self.regions, self.has_volume = {}, False

    @staticmethod
    def new_prompts(image: Image) -> Points:
        """An empty prompts (points) layer for ``image``, not yet in a viewer (any thread may build
        it: the first points layer of a process costs ~0.5 s, its colour manager and feature table)."""
        ndim, shape = image.ndim, spatial_shape(image)
        size = float(np.clip(max(shape[-2:]) / 40, 3, 25))
        return Points(np.zeros((0, ndim)), ndim=ndim, name=PROMPTS_NAME,
                      features={"positive": np.zeros(0, bool)}, feature_defaults={"positive": True},
                      face_color="positive", face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                      border_color="white", border_width=0.1, size=size,
                      canvas_size_limits=(8, 10000), **transform_kwargs(image))  # visible on a large image seen whole

    def ensure_prompts(self, image: Image, prompts: Points | None = None) -> None:
        """Create or adopt the prompts (points) layer for ``image``: fresh points, or the points of
        an existing prompts layer it adopts; ``prompts``: a layer from :meth:`new_prompts`, used
        when no prompts layer is there."""
        layers = self.viewer.layers
        ndim = image.ndim
        if self.prompts is not None and (self.prompts not in layers or self.prompts.ndim != ndim):
            old = self.prompts
            self.detach()
            if old in layers:
                layers.remove(old)
        adopted = False
        if self.prompts is None:
            found = next((la for la in layers if isinstance(la, Points) and la.name == PROMPTS_NAME
                          and la.ndim == ndim), None)
            adopted = found is not None  # an existing prompts layer keeps its points
            if found is None:
                fits = prompts is not None and prompts.ndim == ndim and same_transform(prompts, image)
                found = self.viewer.add_layer(prompts if fits else self.new_prompts(image))
            self.attach(found)
        if adopted:
            self._apply_symbols()
        else:
            self.clear_points()
        self._sig = self._signature()

    def attach(self, layer: Points) -> None:
        self.prompts = layer
        if "positive" not in layer.features.columns:
            import pandas as pd

            layer.features = pd.DataFrame({"positive": np.ones(len(layer.data), bool)})
            layer.face_color_cycle = {True: POSITIVE_COLOR, False: NEGATIVE_COLOR}
            layer.face_color = "positive"
        layer.feature_defaults = {"positive": self.positive}
        layer.events.data.connect(self._on_points_event)
        layer.events.features.connect(self._on_points_event)  # a point's polarity changed
        layer.events.feature_defaults.connect(self._enforce_defaults)
        layer.mouse_drag_callbacks.insert(0, self._on_press)
        self._bind(layer, KEYS)

    def detach(self) -> None:
        layer, self.prompts = self.prompts, None
        if layer is None:
            return
        for emitter, cb in ((layer.events.data, self._on_points_event),
                            (layer.events.features, self._on_points_event),
                            (layer.events.feature_defaults, self._enforce_defaults)):
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._on_press in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_press)
        self._unbind(layer)

    def forget(self, layer: Any) -> bool:
        """``layer`` left the viewer; True when it was one of ours (prompts or preview)."""
        ours = False
        if layer is self.prompts:
            self.detach()
            ours = True
        if layer is self.preview:
            self.preview, self.regions, self.has_volume = None, {}, False
            ours = True
        if layer is self._keyed_output:
            self._unbind(layer)
            self._keyed_output = None
        return ours

    def create_output(self, image: Image) -> Labels:
        """A new output labels layer for ``image``, inserted just below the preview."""
        # numpy up to one 8192x8192 plane, else zarr chunks stored only where labelled; uint16 planes
        # above 4096x4096 (napari's display buffers of a uint32 plane are 4x larger)
        shape = spatial_shape(image)
        out = Labels(new_labels_array(shape, output_dtype(shape)), name=output_name(image),
                     metadata={OWNER_KEY: image.name}, **transform_kwargs(image))
        layers = self.viewer.layers
        index = layers.index(self.preview) if self.preview in layers else len(layers)
        layers.insert(index, out)
        return out

    def select_prompts(self) -> None:
        """Make the prompts layer the active layer, in add mode (clicks add points)."""
        if self.prompts is not None and self.prompts in self.viewer.layers:
            self.viewer.layers.selection.active = self.prompts
            self.prompts.mode = "add"

    def arrange(self, image: Image | None, output: Labels | None, boxes: Any = None) -> None:
        """Keep output < preview < boxes < prompts, all above ``image`` (napari draws the last layer
        on top)."""
        layers = self.viewer.layers
        if self._arranging or image is None or image not in layers:
            return
        ours = [la for la in (output, self.preview, boxes, self.prompts) if la is not None and la in layers]
        idx = [layers.index(la) for la in ours]
        if not ours or (min(idx) > layers.index(image) and idx == sorted(idx)):
            return
        self._arranging = True
        try:
            for la in ours:  # each to the top, in order: output, preview, prompts
                layers.move(layers.index(la), len(layers))
        finally:
            self._arranging = False

    # ------------------------------------------------------------------ points
    def _on_press(self, layer: Points, event):
        """Ctrl+click (Cmd on macOS) or right click adds a point of the opposite polarity."""
        if layer.mode != "add":
            return
        mods = getattr(event, "modifiers", ())
        opposite = any(k in mods for k in ("Control", "Meta")) or getattr(event, "button", 1) == 2
        if not opposite:
            self._restore_defaults()
            return
        self._next_positive = not self.positive
        layer.feature_defaults = {"positive": self._next_positive}
        try:
            yield
            while event.type == "mouse_move":
                yield
        finally:
            # the add-mode callback runs after this one on release: restore once it is done
            QTimer.singleShot(0, self._restore_defaults)

    def _restore_defaults(self) -> None:
        self._next_positive = None
        self._enforce_defaults()

    def _enforce_defaults(self, event=None) -> None:
        """The polarity of the next point follows the toggle (or a Ctrl+click), never the selection.

        (napari copies the features of selected points into ``feature_defaults``.)
        """
        layer = self.prompts
        if layer is None:
            return
        want = self.positive if self._next_positive is None else self._next_positive
        try:
            have = bool(np.asarray(layer.feature_defaults["positive"])[0])
        except (KeyError, IndexError):
            have = None
        if have is not want:
            layer.feature_defaults = {"positive": want}

    def set_polarity(self, positive: bool) -> None:
        self.positive = bool(positive)
        self._restore_defaults()

    def _on_points_event(self, event=None) -> None:
        if self._ignore:
            return
        if str(getattr(event, "action", "changed")) in ("adding", "removing", "changing"):
            return
        sig = self._signature()
        if sig == self._sig:
            return  # napari emits data and features events for one edit: answer once
        self._sig = sig
        self._apply_symbols()
        self.points_changed.emit()

    def _signature(self) -> tuple:
        layer = self.prompts
        if layer is None:
            return ()
        pos = np.asarray(layer.features["positive"], bool) if "positive" in layer.features \
            else np.zeros(0, bool)
        return (np.asarray(layer.data).tobytes(), pos.tobytes())

    def _apply_symbols(self) -> None:
        layer = self.prompts
        if layer is None or not len(layer.data):
            return
        pos = np.asarray(layer.features["positive"], bool)
        want = np.where(pos, "disc", "cross")
        have = np.array([str(getattr(s, "value", s)) for s in layer.symbol])
        if have.shape != want.shape or (have != want).any():
            layer.symbol = want

    def n_points(self) -> int:
        return 0 if self.prompts is None else len(self.prompts.data)

    def clear_points(self) -> None:
        """Remove every point without reporting a change."""
        if self.prompts is None:
            return
        self._ignore = True
        try:
            self.prompts.data = np.zeros((0, self.prompts.ndim))
        finally:
            self._ignore = False
        self._sig = self._signature()

    def remove_last_point(self) -> None:
        """Remove the newest point (reported as a change)."""
        if self.n_points():
            self.prompts.data = np.asarray(self.prompts.data)[:-1]

    def clicks(self, image: Image, plane_shape: tuple[int, int], n_slices: int,
               is_3d: bool) -> tuple[list[Click], int]:
        """The points as clicks in ``image``'s pixel coordinates, and how many lie outside it."""
        layer = self.prompts
        if layer is None or not len(layer.data) or layer.ndim != image.ndim:
            return [], 0  # no points, or the previous image's (its new prompts layer is on the way)
        pos = np.asarray(layer.features["positive"], bool) if "positive" in layer.features else \
            np.ones(len(layer.data), bool)
        pts = np.asarray(layer.data, float)
        if not same_transform(layer, image):
            pts = np.array([image.world_to_data(layer.data_to_world(p)) for p in pts])
        H, W = plane_shape
        out, dropped = [], 0
        for p, positive in zip(pts, pos):
            y, x = p[-2], p[-1]
            z = int(round(p[0])) if is_3d else 0
            if not (-0.5 <= y < H - 0.5 and -0.5 <= x < W - 0.5 and 0 <= z < n_slices):
                dropped += 1
                continue
            out.append((z, float(y), float(x), bool(positive)))
        return out, dropped

    # ------------------------------------------------------------------ preview
    def show_masks(self, regions: dict[int, "MaskRegion"], is_3d: bool, volume: bool = False,
                   merge: bool = False) -> None:
        """Show ``{z: MaskRegion}`` in the preview, writing only the boxes of the old and new masks
        (``volume``: replace everything shown; ``merge``: only the given slices change, a shown
        volume stays one)."""
        preview = self.preview
        if preview is None:
            return
        replace = not merge and (volume or self.has_volume)
        self.regions = write_regions(preview.data, self.regions, regions, is_3d, replace=replace)
        if replace:
            self.has_volume = volume
        preview.refresh()

    def clear_preview(self) -> None:
        if self.preview is not None and self.regions:
            write_regions(self.preview.data, self.regions, {}, self.preview.ndim == 3, replace=True)
            self.preview.refresh()
        self.regions, self.has_volume = {}, False

    def current_mask(self) -> np.ndarray | None:
        """The shown object as a full bool array (allocated: for scripts and tests)."""
        if self.preview is None:
            return None
        return full_mask(self.regions, self.preview.data.shape, self.preview.ndim == 3)
