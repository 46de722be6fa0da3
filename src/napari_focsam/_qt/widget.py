"""``FocSAMWidget``: the dock widget, composed of panels, managed layers and background jobs.

Layout (top to bottom): **Setup** (image, model, device, focus refiner, cache folder), **Output**
(labels layer, overwrite), **Prompts** (polarity of the next click, ``T``), **More prompts** (boxes,
one object per positive point, Segment all: :class:`~.prompt_modes.PromptModes`), **Actions** (Commit
[C/Enter], Clear [Shift+C/Esc], Segment volume [Shift+S], its IoU and outline stops, progress,
Cancel), **Status**.

The widget only wires the parts: :class:`~.panels.SetupPanel` & co. show state and emit signals,
:class:`~.prompt_layers.PromptLayers` owns the napari layers and keys, :class:`~.jobs.SessionJobs`
runs the workers, and the Qt-free :class:`~napari_focsam.core.editing._predict_queue.PredictQueue` decides
which prediction runs, which result is stale and when a pending commit fires. The commit
arithmetic is :func:`~napari_focsam.core.editing._paste.plan_paste`. A click adds a positive point,
Ctrl+click (or right click) a negative one; every change of the points re-segments the object.
Ctrl+Z removes the newest point, or (with no points) undoes the last commit; Ctrl+Shift+Z redoes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ..core.editing import PredictQueue, Ticket, next_label
from ..core.errors import Failure
from .box_prompts import BoxPrompts
from .click_checks import ClickChecks
from .closing import CloseGuard
from .commits import Commits
from .embedding_progress import EmbeddingProgress
from .jobs import LoadResult, SessionJobs
from .layer_utils import for_layer, volume_data
from .panels import ActionPanel, OutputPanel, PromptPanel, SetupPanel, StatusLine
from .prompt_layers import PromptLayers
from .prompt_modes import PromptModes
from .region_layers import split_hint
from .save_labels import ask_ome_zarr_path, save_labels_as_ome_zarr
from .state import WidgetState
from .tile_view import TileView
from .viewer_sync import ViewerSync
from .volume_flow import VolumeFlow, WidgetHooks
from .z_profile import ZProfile

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FocSAMWidget"]

READY = "ready: click on an object (Ctrl+click: negative point)"
#: the device probe (the torch import, ~0.2 s with the interpreter held) starts this long after the
#: dock is built: after napari's layout and first paint of it, not in the middle of them
PROBE_DELAY_MS = 40


def scrolling_panels(parts: Iterable[QWidget]) -> QScrollArea:
    """The dock's panels, top to bottom, in a vertical scroll area.

    napari's dock area does not scroll (napari/napari#5247 on GitHub): on a laptop screen,
    once Segment volume adds the z-profile, Qt squeezed the panels below their size and their
    rows were drawn over each other. Here the panels keep their height and a scroll bar
    appears instead; the area is at least as wide as the panels, so nothing is cut sideways.
    """
    inner = QWidget()
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(6, 6, 6, 6)
    for part in parts:
        layout.addWidget(part)
    layout.addStretch(1)
    scroll = PanelScroll()
    scroll.setObjectName("focsam_dock_scroll")
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    return scroll


class PanelScroll(QScrollArea):
    """A vertical scroll area as wide as its panel needs (with room for the scroll bar), at
    any height: the dock sizes itself from these hints, which follow the panels as they change."""

    def _width(self, hint: QSize) -> int:
        return hint.width() + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:
        inner = self.widget()
        base = super().minimumSizeHint()
        return base if inner is None else QSize(self._width(inner.minimumSizeHint()), base.height())

    def sizeHint(self) -> QSize:
        inner = self.widget()
        base = super().sizeHint()
        return base if inner is None else QSize(self._width(inner.sizeHint()), inner.sizeHint().height())

    def eventFilter(self, obj: Any, event: Any) -> bool:
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the panels' needs changed: the dock reads the hints again
        return super().eventFilter(obj, event)


class FocSAMWidget(QWidget):
    """Dock widget for click-based FocSAM segmentation (see the module docs)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # napari hands plugins a PublicOnlyProxy of the viewer; layers reached through it are new
        # proxy objects, so identity checks would never match (napari/napari#5767 on GitHub): use the real one.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        #: the dock's state: the parts derive what they show and enable from it
        self.state = WidgetState()
        self.queue = PredictQueue()
        self.jobs = SessionJobs(self.state)
        self.managed = PromptLayers(self.viewer)
        self.setup, self.output = SetupPanel(), OutputPanel()
        self.prompt_panel, self.actions = PromptPanel(), ActionPanel()
        self.status_label, self.z_profile = StatusLine(), ZProfile()
        self.sync = ViewerSync(self.viewer, self.setup, self.output, self.managed, self.state)
        self.modes = PromptModes(self.state, viewer=self.viewer, jobs=self.jobs, queue=self.queue, layers=self.managed,
                                 sync=self.sync, notify=self._notify, commit=lambda: self.commit())
        self.scroll = scrolling_panels((self.setup, self.output, self.prompt_panel, self.modes.panel, self.actions,
                                        self.z_profile, self.status_label))
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.scroll)

        self._config: tuple | None = None
        self._t_change = 0.0
        self.click_checks = ClickChecks(self._notify)  # points outside the image or on NaN: dropped
        self._sent_clicks: list = []
        self._hinted_epoch = -1
        self.actions.bind(self.state)
        self.setup.bind(self.state)

        self.sync.boxes_layer = lambda: self.modes.boxes.layer
        self.tiles = TileView(self.state, viewer=self.viewer, jobs=self.jobs, sync=self.sync, actions=self.actions,
                              status=self._set_status)  # large images: tiles embedded, their outlines
        self.volume = VolumeFlow(self.jobs, self.queue, self.managed, self.actions, self.modes, self.tiles,
                                 self.z_profile, WidgetHooks(
                                     notify=self._notify, set_status=self._set_status,
                                     update_buttons=self._update_buttons, clicks=self._clicks,
                                     start_predict=self._start_predict, failed=self._failed,
                                     stops=lambda: for_layer(self.actions.stops(), self.sync.image),
                                     embedded=lambda: (self.state.embedded, self.state.embed_total)))
        self.embeddings = EmbeddingProgress(self.state, jobs=self.jobs, actions=self.actions, tiles=self.tiles,
                                            sync=self.sync, notify=self._notify, set_status=self._set_status,
                                            failed=self._failed)
        self.commits = Commits(self.state, jobs=self.jobs, queue=self.queue, layers=self.managed, modes=self.modes,
                               sync=self.sync, output=self.output, volume=self.volume, viewer=self.viewer,
                               notify=self._notify, set_status=self._set_status)
        self.sync.view_z_changed.connect(self.z_profile.set_view)
        self.closing = CloseGuard(self, (self.jobs, self.tiles, self.modes, self.managed, self.sync))
        self._wire()
        # after napari docked and drew us: a torch import in a worker competes for the interpreter
        self.jobs.probe_devices(delay_ms=PROBE_DELAY_MS)
        self.sync.refresh()
        if self.setup.image() is not None:
            # after the dock is on screen: napari's first labels/points layers take seconds to build
            QTimer.singleShot(100, self._deferred_image_check)
        else:
            self.state.message = "no image layer yet: open an image (File > Open Sample > FocSAM, or drop a file)"
            self._set_status(self.state.message)

    def _wire(self) -> None:
        s, a, j, la = self.setup, self.actions, self.jobs, self.managed
        s.image_changed.connect(self._on_image_selected)
        s.config_changed.connect(self._on_setup_changed)
        s.refine_toggled.connect(self._on_option_toggled)
        s.zoom_toggled.connect(self._on_option_toggled)
        s.threads_changed.connect(j.set_threads)
        self.prompt_panel.toggle_clicked.connect(lambda: self.toggle_polarity())
        self.output.save_clicked.connect(lambda: self.save_labels())
        a.commit_clicked.connect(lambda: self.commit())
        a.clear_clicked.connect(lambda: self.clear())
        a.volume_clicked.connect(lambda: self.segment_volume())
        a.cancel_clicked.connect(self.cancel_volume)
        la.points_changed.connect(self._schedule_predict)
        self.modes.boxes.changed.connect(self._schedule_predict)
        la.action.connect(self._on_action)
        j.devices_found.connect(s.mark_devices)
        j.loaded.connect(self._on_loaded)
        j.embedded.connect(self.embeddings.on_embedded)
        j.embedding_done.connect(self.embeddings.on_done)
        j.tiles_embedded.connect(self.tiles.on_progress)
        j.predicted.connect(self._on_predicted)
        j.zoom_preview.connect(lambda t, masks: self.queue.is_current(t) and self.managed.show_masks(masks, False))
        j.volume_progress.connect(self.actions.volume_progress)
        la.bind_viewer_keys()
        self.sync.image_inserted.connect(self._on_image_inserted)
        self.sync.image_removed.connect(self._on_image_removed)
        self.sync.image_data_changed.connect(self._on_image_data)
        self.sync.managed_removed.connect(self._restore_layers)

    def _set_status(self, text: str | None = None) -> None:
        ctx, out, st = self.jobs.context, self.sync.output_layer(create=False), self.state
        self.status_label.show_state(
            text=text, headline=st.headline if (ctx is not None or self.jobs.loading) else "",
            model=None if ctx is None else f"{ctx.model_name} on {ctx.session.predictor.device}",
            embedded=st.embedded, n_slices=None if ctx is None else ctx.n_slices,
            is_3d=bool(ctx and ctx.is_3d), eta=st.eta, latency_ms=st.latency_ms,
            next_id=next_label(out.data) if out is not None and out.data.size <= 2**25 else None,
            tiles=self.tiles.summary())

    def _notify(self, level: str, message: str) -> None:
        """All user messages go through here (one line, napari notification, status line)."""
        self.state.message = message
        {"error": show_error, "warning": show_warning}.get(level, show_info)(f"FocSAM: {message}")
        try:
            self._set_status(message)
        except RuntimeError:  # widget already deleted
            pass

    def _update_buttons(self) -> None:
        """The state the panels derive their buttons from (they follow ``state.events``)."""
        ctx = self.jobs.context
        self.state.update(dict(ready=ctx is not None, is_3d=bool(ctx and ctx.is_3d),
                               volume_running=self.jobs.volume_running, cancellable=self.tiles.running,
                               has_refiner=None if ctx is None else ctx.has_refiner,
                               zoom_applies=None if ctx is None else not ctx.is_3d))
        self.modes.show_state()

    # ------------------------------------------------------------------ layers in the viewer
    def _on_image_inserted(self, layer: Image) -> None:
        if self.jobs.context is None and not self.jobs.loading:
            # nothing usable is selected (no image, an unsupported one, a failed load): take the new one
            self.setup.choose_image(layer)
            self._on_image_selected()
        elif self.sync.image is None and self.image_combo.count():
            self._on_image_selected()

    def _on_image_removed(self) -> None:
        # the viewer may be closing (it removes layers one by one): decide later
        self._config = None
        self._drop_context()
        QTimer.singleShot(0, self._deferred_image_check)

    def _deferred_image_check(self) -> None:
        try:
            if not self.closing.closed and self.sync.image is None:
                self._on_image_selected()
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _restore_layers(self) -> None:
        if self.sync.restore_layers():
            self._notify("info", "the FocSAM prompts/preview layer was deleted: a new one was added")

    def set_model(self, name_or_path: str) -> None:
        """Select a registry model by name or a checkpoint file by path (adds it to the list)."""
        self.setup.set_model(name_or_path)

    def set_image_layer(self, layer: Any) -> None:
        """Select the layer to segment (validated: an Image layer with 2 or 3 spatial axes)."""
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            self._notify("error", f"'{getattr(layer, 'name', layer)}' is a {kind} layer: FocSAM segments "
                                  "image layers (2D, RGB or 3D stacks)")
            return
        if not self.setup.choose_image(layer):
            self._notify("error", f"'{layer.name}' is not in this viewer")
            return
        self._on_image_selected()

    def _on_image_selected(self, *_: Any) -> None:
        self.sync.set_image(self.setup.image())
        self._on_setup_changed()

    def _on_image_data(self, event=None) -> None:
        self._config = None  # the pixels changed: a new session is needed
        self._on_setup_changed()

    def _on_setup_changed(self, *_: Any) -> None:
        """(Re)build the session when the image, model, device or cache folder changed."""
        if self.closing.closed:
            return
        layer = self.sync.image
        if layer is None:
            self._drop_context()
            self._set_status("no image layer: open an image (File > Open Sample > FocSAM)")
            return
        if layer.ndim not in (2, 3):
            self._drop_context()
            self._notify("error", f"'{layer.name}' has {layer.ndim} dimensions: FocSAM supports 2D images, "
                                  "RGB images and 3D stacks (Z, Y, X)")
            return
        model, device, cache = self.setup.model_spec(), self.setup.device(), self.setup.cache_dir()
        config = (id(layer), model, device, cache)
        if config == self._config and (self.jobs.context is not None or self.jobs.loading):
            return
        lay = self.managed
        same_image = self._config is not None and self._config[0] == config[0] \
            and lay.prompts in self.viewer.layers and lay.preview in self.viewer.layers
        self._config = config
        self._drop_context(keep_layers=True)
        name = model.replace("\\", "/").rsplit("/", 1)[-1]
        self.state.headline = f"loading model {name} ..."
        self.actions.show_progress(None, 0, f"loading {name} ...")
        self.jobs.load(layer, volume_data(layer), bool(layer.rgb), model, device, cache, self.setup.refine_wanted,
                       self.setup.threads())  # first: it runs while napari builds our layers
        if not same_image:  # a new image: its output now; fresh prompts and preview (built off the GUI thread)
            self.sync.pick_output()
            self.jobs.build_layer(lambda: (PromptLayers.new_preview(layer), PromptLayers.new_prompts(layer),
                                           BoxPrompts.new_layer(layer)), lambda built: self._add_layers(layer, built))
        self._set_status()

    def _add_layers(self, layer: Image, built: Any) -> None:
        """The layer models are built: the widget's layers for ``layer`` (while it is the chosen
        image), one per event-loop turn, so napari draws each before the next comes."""
        preview, prompts, boxes = built if isinstance(built, tuple) else (None, None, None)
        self.sync.staged([lambda: self.managed.ensure_preview(layer, preview),
                          lambda: self.managed.ensure_prompts(layer, prompts),
                          lambda: self.modes.ensure(layer, boxes), lambda: (self.sync.settle(), self._set_status())],
                         still=lambda: not self.closing.closed and layer is self.sync.image and layer in self.viewer.layers)

    def _on_option_toggled(self, _on: bool = True) -> None:
        ctx = self.jobs.context
        if ctx is None:
            return
        ctx.session.predictor.refine = self.setup.refine_wanted and ctx.has_refiner
        ctx.session.zoom = self.setup.zoom_check.isChecked()
        if self.queue.rerun():  # the clicks again, with the new setting
            self._start_predict()

    def _drop_context(self, keep_layers: bool = False) -> None:
        self.volume.reset()
        self.jobs.drop()
        self.tiles.drop()
        self.queue.new_object()
        self.state.update(dict(embedded=0, eta=""))
        if not keep_layers:
            self.managed.regions = {}
        self.actions.hide_progress()
        self._update_buttons()

    def _on_loaded(self, result: LoadResult) -> None:
        self.actions.hide_progress()
        if result.failure is not None:
            self._config = None
            self.queue.cancel_commit()
            self._notify("error", result.failure.message)
            return
        if self.sync.image is None:
            return
        if result.note:
            self._notify("warning", result.note)
        self._update_buttons()
        self.state.headline = READY
        result.context.session.zoom = self.setup.zoom_check.isChecked()
        self.sync.update_view_z()
        self.embeddings.start(result.context)
        self._set_status(f"{READY} (model loaded in {result.seconds:.1f} s)")
        if self.managed.n_points() and self.queue.points_changed():
            self._start_predict()

    def _schedule_predict(self) -> None:
        self._t_change = time.perf_counter()
        if self.queue.points_changed():
            self._start_predict()

    def _clicks(self) -> list[tuple[int, float, float, bool]]:
        """The prompts as (z, y, x, positive) in the image's pixel coordinates."""
        ctx, image = self.jobs.context, self.sync.image
        if ctx is None or image is None:
            return []
        clicks, dropped = self.managed.clicks(image, ctx.plane_shape, ctx.n_slices, ctx.is_3d)
        return self.click_checks(clicks, dropped, ctx.session.volume, ctx.is_3d)

    def _start_predict(self) -> None:
        if self.jobs.context is None or self.closing.closed or self.queue.running:
            return
        clicks = self._clicks()
        if not clicks and not self.managed.regions and not self.modes.has_prompt():
            if self.queue.nothing_to_predict():
                self.commit()
            return
        self._sent_clicks = [] if self.modes.batch else clicks
        self.modes.predict(self.queue.start(), clicks, set(self.managed.regions), self.queue.is_current)

    def _on_predicted(self, ticket: Ticket, masks: Any, dt: float) -> None:
        failed = isinstance(masks, Failure)
        current = self.queue.is_current(ticket)
        outcome = self.queue.finish(ticket, ok=not failed)
        if failed:
            self._failed(masks, quiet=not current)
        ctx = self.jobs.context
        if outcome.show and isinstance(masks, dict) and ctx is not None:
            if not self.volume.show_predicted(masks, ctx.is_3d):  # an open volume: corrected, propagated again
                self.managed.show_masks(masks, ctx.is_3d)
            self.state.update(dict(latency_ms=(time.perf_counter() - self._t_change) * 1000, model_ms=dt * 1000))
            self._set_status()
            if self._hinted_epoch != ticket.epoch and split_hint(self._sent_clicks, masks):
                self._hinted_epoch = ticket.epoch
                self._notify("info", "positive clicks on separate objects: one object is one cell; "
                                     "commit it (C) and click the next cell, or use a negative click")
        if outcome.start_next:
            self._start_predict()
        if outcome.commit:
            self.commit()

    def is_busy(self) -> bool:
        """True while a model load, a prediction or a propagation is running or queued."""
        j = self.jobs
        return j.loading or j.predicting or j.volume_running or (self.queue.dirty and j.context is not None) \
            or self.modes.running() or j.building_layer or self.sync.settling > 0

    def has_running_workers(self) -> bool:
        """True while any background job (load, embeddings, prediction, volume) is running."""
        return self.jobs.any_running() or self.modes.running()

    @property
    def prompts_layer(self) -> Points | None:
        """The points layer holding the prompts (feature ``positive``)."""
        return self.managed.prompts

    @property
    def preview_layer(self) -> Labels | None:
        """The labels layer showing the current object."""
        return self.managed.preview

    @property
    def output_layer(self) -> Labels | None:
        """The chosen output labels layer (None while "New labels layer" is chosen)."""
        return self.sync.output_layer(create=False)

    @property
    def is_ready(self) -> bool:
        """True when a model and image are loaded (clicks are answered)."""
        return self.jobs.context is not None

    @property
    def session(self) -> Any:
        """The engine's :class:`~napari_focsam.core.session._session.Session` (None before a model is loaded)."""
        ctx = self.jobs.context
        return None if ctx is None else ctx.session

    @property
    def current_mask(self) -> np.ndarray | None:
        """The current object's mask as shown in the preview ((Y, X) or (Z, Y, X) bool)."""
        return self.managed.current_mask()

    def _on_action(self, action: str) -> None:
        getattr(self, {"volume": "segment_volume", "toggle": "toggle_polarity"}.get(action, action))()

    def toggle_polarity(self, positive: bool | None = None) -> None:
        """Switch the polarity of the next click (or set it)."""
        self.managed.set_polarity((not self.managed.positive) if positive is None else bool(positive))
        self.prompt_panel.show_polarity(self.managed.positive)

    # ------------------------------------------------------------------ commit / clear / undo
    def commit(self) -> int | None:
        """Write the current object into the output labels layer; returns its id (None if nothing)
        (:meth:`.commits.Commits.commit`: a commit asked for while the mask is computed waits for it)."""
        return self.commits.commit()

    def save_labels(self, path: str | None = None) -> Any:
        """Save the chosen output labels layer as an OME-Zarr label image (asks where when ``path``
        is None), in a worker; returns the worker (None when nothing was saved)."""
        out = self.sync.output_layer(create=False)
        if out is None:
            self._notify("info", "nothing to save: commit an object first (or choose a labels layer under Output)")
            return None
        path = path or ask_ome_zarr_path(self, f"{out.name}.ome.zarr")
        return None if not path else save_labels_as_ome_zarr(self.viewer, out, path)

    def clear(self) -> None:
        """Drop the current object and its points (Esc); a running Segment volume is cancelled."""
        self.commits.clear()

    def undo(self) -> None:
        """Ctrl+Z: remove the newest point, or (with no points) undo the last change of the output labels."""
        self.commits.undo()

    def redo(self) -> None:
        """Ctrl+Shift+Z: redo the last undone change of the output labels."""
        self.commits.history("redo")

    # ------------------------------------------------------------------ volume
    def segment_volume(self) -> None:
        """Propagate the current object through the stack; it stays open for corrections (C commits)."""
        self.volume.segment()

    def cancel_volume(self) -> None:
        """Stop a running volume propagation (the finished slices stay in the preview)."""
        self.volume.cancel()

    def _failed(self, failure: Failure, quiet: bool = False) -> None:
        """A job failed: out of GPU memory falls back to the CPU; otherwise say why (unless ``quiet``)."""
        if failure.oom:
            if not self.closing.closed:
                self.setup.fall_back_to_cpu(self.jobs.release_gpu_memory, self._notify)
        elif not quiet:
            self._notify("error", failure.message)

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.close_session()
        super().closeEvent(event)

    def close_session(self) -> None:
        """Stop all work and release key bindings (called when the widget closes)."""
        self.closing.close()


#: The panels' controls, by the names scripts and tests use (``widget.image_combo`` ...).
CONTROLS = {**dict.fromkeys(("image_combo", "model_combo", "device_combo", "refine_check", "zoom_check",
                             "cache_edit", "cache_button", "threads_spin"), "setup"),
            **dict.fromkeys(("output_combo", "overwrite_check"), "output"),
            "polarity_button": "prompt_panel",
            **dict.fromkeys(("commit_button", "clear_button", "volume_button", "iou_spin", "edge_spin", "vote_check",
                             "progress_bar", "cancel_button"), "actions")}
#: Fields of the dock's :class:`~.state.WidgetState`, by the names scripts and tests read.
STATE_NAMES = {"last_message": "message", "last_latency_ms": "latency_ms", "last_model_ms": "model_ms",
               "last_committed_id": "committed_id", "embedded_slices": "embedded"}


def _control(panel: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, panel), name), doc=f"The {panel} panel's ``{name}``.")


def _state_field(field: str) -> property:
    return property(lambda self: getattr(self.state, field), lambda self, value: setattr(self.state, field, value),
                    doc=f"``state.{field}`` (:class:`~.state.WidgetState`).")


for _name, _panel in CONTROLS.items():
    setattr(FocSAMWidget, _name, _control(_panel, _name))
for _name, _field in STATE_NAMES.items():
    setattr(FocSAMWidget, _name, _state_field(_field))
