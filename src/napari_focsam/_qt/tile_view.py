"""Tiles of a large image in the widget: what is embedded in the background, and what the user sees.

A session on a large image (``session.tiled``: long side above 1536 pixels) embeds tiles, not
slices (:class:`~napari_focsam.core.embeddings._tiled.TiledEmbeddingStore`). :class:`TileView`

* shows the tile being embedded as an orange outline in the "FocSAM tiles" shapes layer (in the
  image's full-resolution data coordinates, so with its transform), removed when the tile is
  ready, and says so in the status line: ``embedding tile 3 of 9 (slice 0, level 0, tile 1,2) ...``;
* plans the background embedding (:func:`tiles_in_view`): the tiles under the clicks are embedded
  first, on demand, by the prediction itself (the background pauses while a click is answered);
  then the full-resolution tiles in view, nearest to the centre of the view first, then the
  coarsest level's tile; the plan follows the camera and the slice in view;
* shows the progress (``tiles %v/%m``) with Cancel, which stops the background embedding (tiles
  are still embedded when a click needs them).

The store reports from worker threads (``on_tile``); the events reach the GUI thread through a
queued Qt signal.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
from napari.layers import Shapes
from qtpy.QtCore import QObject, Qt, QTimer, Signal

from .layer_utils import same_transform, transform_kwargs
from .state import SharedClosed

__all__ = ["EMBEDDING_COLOR", "MAX_VIEW_TILES", "OUTLINE_SCREEN_PX", "TILES_NAME", "TileView", "tiles_in_view",
           "view_box"]

#: Width of the tile outlines on screen, whatever the zoom.
OUTLINE_SCREEN_PX = 3.0
TILES_NAME = "FocSAM tiles"
#: Outline of a tile being embedded.
EMBEDDING_COLOR = "#ff9900"
#: At most this many full-resolution tiles in view are embedded in the background.
MAX_VIEW_TILES = 64
STOPPED = "tile embedding stopped: the tiles you click on are still embedded when needed"


def view_box(layer: Any) -> tuple[int, int, int, int] | None:
    """The part of ``layer`` in view as (y0, y1, x0, x1) full-resolution data pixels (None: unknown,
    e.g. before the canvas was drawn)."""
    try:
        c = np.asarray(layer.corner_pixels, float)[:, -2:]
        if getattr(layer, "multiscale", False):
            c = c * np.asarray(layer.downsample_factors[layer.data_level], float)[-2:]
    except (AttributeError, IndexError, TypeError):
        return None
    if not np.all(np.isfinite(c)) or (c[1] - c[0] <= 0).any():
        return None
    return int(c[0, 0]), int(np.ceil(c[1, 0])) + 1, int(c[0, 1]), int(np.ceil(c[1, 1])) + 1


def tiles_in_view(store: Any, z: int, box: tuple[int, int, int, int] | None,
                  limit: int = MAX_VIEW_TILES) -> list[tuple[int, Any]]:
    """The tiles to embed in the background for slice ``z`` with ``box`` (full-resolution pixels,
    None: the whole plane) in view: full-resolution tiles overlapping it, nearest to its centre
    first (at most ``limit``), then the coarsest level's single tile; as ``(z, TileKey)``."""
    from ..core.images import TileKey

    H, W = store.volume.plane_shape
    y0, y1, x0, x1 = box if box is not None else (0, H, 0, W)
    y0, y1, x0, x1 = max(0, y0), min(H, y1), max(0, x0), min(W, x1)
    if y1 <= y0 or x1 <= x0:
        y0, y1, x0, x1 = 0, H, 0, W
    grid = store.grid(0)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2

    def dist(key):
        ty0, ty1, tx0, tx1 = grid.window(key)
        return ((ty0 + ty1) / 2 - cy) ** 2 + ((tx0 + tx1) / 2 - cx) ** 2

    keys = sorted(grid.overlapping((y0, y1, x0, x1)), key=dist)[:limit]
    out = [(int(z), k) for k in keys]
    if store.top_level > 0:
        out.append((int(z), TileKey(store.top_level, 0, 0)))
    return out


class TileView(QObject):
    """The tiles of the widget's session (see the module docs).

    Parameters
    ----------
    state : WidgetState
        The dock's state (its ``closed``).
    viewer, jobs, sync, actions
        The napari viewer and the dock's jobs, viewer sync and action panel (its progress bar).
    status : callable
        ``status(text)``: shows a line in the status.
    """

    tile_event = Signal(int, object, str)  # z, TileKey, state: from any thread (queued)
    closed = SharedClosed()

    def __init__(self, state: Any, *, viewer: Any, jobs: Any, sync: Any, actions: Any,
                 status: Callable[[str], None]) -> None:
        super().__init__()
        self.state, self.viewer, self.jobs, self.sync, self.actions = state, viewer, jobs, sync, actions
        self._status = status
        self.last_text = ""  # the last line this part showed
        self.texts: list[str] = []  # the recent lines (at most 50)
        self.layer: Shapes | None = None
        self.session: Any = None
        self.embedding: dict[tuple[int, Any], tuple[int, int, int, int]] = {}  # tile -> window
        #: every tile outline shown, as (z, TileKey, (y0, y1, x0, x1)): what the user saw
        self.outlines_shown: list[tuple[int, Any, tuple[int, int, int, int]]] = []
        self.started = 0  # tiles whose embedding started in this session
        self.done = 0
        self.cancelled = False  # Cancel pressed: no background embedding until the next session
        self._wanted: list = []
        self._planned: set = set()
        self._lock = threading.Lock()
        self.tile_event.connect(self._on_tile, Qt.ConnectionType.QueuedConnection)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.replan)
        viewer = self.viewer
        viewer.camera.events.center.connect(self._schedule)
        viewer.camera.events.zoom.connect(self._schedule)
        viewer.camera.events.zoom.connect(self._restyle)
        viewer.dims.events.current_step.connect(self._schedule)

    def status(self, text: str) -> None:
        self.last_text = text
        self.texts = [*self.texts[-49:], text]
        self._status(text)

    # ------------------------------------------------------------------ state
    @property
    def tiled(self) -> bool:
        return self.session is not None

    @property
    def running(self) -> bool:
        """True while the background embeds tiles."""
        return self.tiled and self.jobs.embedding

    def summary(self) -> str | None:
        """The tiles in words for the status line (None: the image is not tiled)."""
        if not self.tiled:
            return None
        store = self.session.store
        n = len(self.session.tiles_in_memory())
        return (f"large image: {store.tile_size} px tiles on {store.top_level + 1} levels, {n} in memory"
                + (f", embedding {len(self.embedding)}" if self.embedding else ""))

    def wanted(self) -> list:
        """The current plan, most wanted first (read by the embedding worker)."""
        with self._lock:
            return list(self._wanted)

    # ------------------------------------------------------------------ session
    def start(self, ctx: Any) -> bool:
        """A new session: on a tiled one, listen to its tiles and start the background; False when
        the session does not tile its image (nothing to do here)."""
        self.drop()
        session = getattr(ctx, "session", None)
        if session is None or not getattr(session, "tiled", False):
            return False
        self.session = session
        session.on_tile(self._report)
        self._ensure_layer()
        self.replan()
        return True

    def drop(self) -> None:
        """The session is gone: stop listening, remove the outlines."""
        session, self.session = self.session, None
        if session is not None:
            remove = getattr(session.store, "remove_listener", None)
            if remove is not None:
                remove(self._report)
        self.embedding = {}
        self.started = self.done = 0
        self.cancelled = False
        with self._lock:
            self._wanted, self._planned = [], set()
        self._draw()

    def close(self) -> None:
        self.closed = True
        self._timer.stop()
        self.drop()
        viewer = self.viewer
        for ev, func in ((viewer.camera.events.center, self._schedule), (viewer.camera.events.zoom, self._schedule),
                         (viewer.camera.events.zoom, self._restyle), (viewer.dims.events.current_step, self._schedule)):
            try:
                ev.disconnect(func)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _report(self, z: int, key: Any, state: str) -> None:  # any thread
        if not self.closed:
            try:
                self.tile_event.emit(int(z), key, str(state))
            except RuntimeError:  # the widget was deleted meanwhile
                self.closed = True

    # ------------------------------------------------------------------ background plan
    def _schedule(self, event=None) -> None:
        if self.tiled and not self.closed:
            self._timer.start()

    def replan(self) -> None:
        """Recompute the tiles in view and (re)start the background embedding when some are missing."""
        if not self.tiled or self.closed:
            return
        image = self.sync.image
        store = self.session.store
        box = view_box(image) if image is not None else None
        plan = tiles_in_view(store, self.sync.view_z if store.volume.is_3d else 0, box)
        with self._lock:
            self._wanted = plan
            self._planned |= set(plan)
        jobs = self.jobs
        if self.cancelled or not jobs.background_embedding:
            return
        missing = sum(not store.has_tile(*t) for t in plan)
        if not jobs.embedding and missing:
            jobs.start_tile_embedding(self.wanted)
            self.on_progress(0, missing)

    def on_progress(self, done: int, total: int, tile: tuple | None = None) -> None:
        """The background embedded ``done`` tiles, the last one ``tile`` ((z, TileKey); it is ready
        also when it went to the disk cache only); ``total`` with those still wanted."""
        if tile is not None:
            self._on_tile(int(tile[0]), tile[1], "ready")
        if self.cancelled:
            return
        a = self.actions
        a.show_progress(done, max(total, 1), "tiles %v/%m")
        a.cancel_button.setVisible(True)

    def finished(self) -> None:
        """The background embedding ended (all wanted tiles embedded, cancelled or failed)."""
        a = self.actions
        if not self.jobs.volume_running:
            a.hide_progress()
            a.cancel_button.setVisible(False)

    def cancel(self) -> bool:
        """Stop the background embedding; True when it was running."""
        if not self.running:
            return False
        self.cancelled = True  # said again when the tile in flight is done
        self.jobs.stop_embedding()
        self.finished()
        self.status(STOPPED)
        return True

    # ------------------------------------------------------------------ outlines
    def _ensure_layer(self) -> Shapes | None:
        image = self.sync.image
        viewer = self.viewer
        if image is None:
            return None
        if self.layer is not None and self.layer in viewer.layers:
            if self.layer.ndim == image.ndim and same_transform(self.layer, image):
                return self.layer
            viewer.layers.remove(self.layer)  # it belonged to another image
        active = viewer.layers.selection.active
        self.layer = viewer.add_shapes(ndim=image.ndim, name=TILES_NAME, face_color="transparent",
                                       edge_color=EMBEDDING_COLOR, edge_width=self._edge_width(),
                                       **transform_kwargs(image))
        if active is not None and active in viewer.layers:  # clicks keep going to the prompts
            viewer.layers.selection.active = active
        self.sync.settle()
        return self.layer

    def _draw(self) -> None:
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return
        rects = []
        for (z, _key), (y0, y1, x0, x1) in self.embedding.items():
            corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
            rects.append(np.array([(z, y, x) if layer.ndim == 3 else (y, x) for y, x in corners], float))
        layer.data = []
        if rects:  # (the data setter would draw them 1 pixel wide)
            layer.add_rectangles(rects, edge_color=EMBEDDING_COLOR, edge_width=self._edge_width(),
                                 face_color="transparent")

    def _edge_width(self) -> float:
        """Outline width in image pixels: :data:`OUTLINE_SCREEN_PX` screen pixels at the current zoom."""
        image = self.sync.image
        scale = float(abs(image.scale[-1])) if image is not None else 1.0
        return OUTLINE_SCREEN_PX / max(float(self.viewer.camera.zoom) * scale, 1e-6)

    def _restyle(self, event=None) -> None:
        """The zoom changed: the outlines keep their width on screen."""
        layer = self.layer
        if self.closed or layer is None or layer not in self.viewer.layers or not len(layer.data):
            return
        layer.edge_width = [self._edge_width()] * len(layer.data)

    def _on_tile(self, z: int, key: Any, state: str) -> None:
        if self.session is None or self.closed:
            return
        tile = (z, key)
        if state == "embedding":
            window = self.session.tile_window(z, key)
            self.embedding[tile] = window
            self.outlines_shown.append((z, key, window))
            self.started += 1
            with self._lock:
                self._planned.add(tile)
                total = max(len(self._planned), self.started)
            self._ensure_layer()
            self._draw()
            where = f"slice {z}, " if self.session.volume.is_3d else ""
            self.status(f"embedding tile {self.started} of {total} ({where}level {key.level}, tile "
                        f"{key.iy},{key.ix}) ...")
        elif state == "ready" and tile in self.embedding:
            self.done += 1
            self.embedding.pop(tile)
            self._draw()
            if not self.embedding:
                self.status(STOPPED if self.cancelled else f"tile ready ({self.done} embedded)")
