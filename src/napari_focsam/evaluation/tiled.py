"""Large images in the evaluation harness: tiles and object-adaptive scale, as in the Session.

:class:`LargeImageAdapter` wraps the harness' predictor adapter
(:class:`~napari_focsam.evaluation.runner.PredictorAdapter`): images that
:meth:`ImageVolume.is_large` calls large (long side above 1536 pixels) are run through a tiled
:class:`~napari_focsam.core.session._session.Session` (one object per evaluated object, the protocol's
clicks added one by one), every other image goes to the wrapped adapter unchanged. So a large
image is evaluated the way a user segments it, never squeezed onto one canvas.

Timings: ``embedding`` holds the seconds spent encoding tiles (measured between the store's
``"embedding"`` and ``"ready"`` events), ``decoder`` the rest of each click.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import numpy as np

from ..core.images import DEFAULT_HALO, DEFAULT_TILE_SIZE, ImageVolume
from ..core.session import Session

__all__ = ["LargeImageAdapter"]


class LargeImageAdapter:
    """The harness' predictor protocol (``set_image``, ``reset``, ``predict``) with tiles for
    large images.

    Parameters
    ----------
    base : object
        The adapter used for the other images (with ``predictor``, ``timings``, ``set_image``,
        ``reset`` and ``predict``).
    tile_size, halo : int
        The tiling (see :mod:`napari_focsam.core.images._tiles`).
    max_memory_bytes : int
        Bound of the tile embeddings kept in memory per image.
    """

    def __init__(self, base: Any, *, tile_size: int = DEFAULT_TILE_SIZE, halo: int = DEFAULT_HALO,
                 max_memory_bytes: int = 512 * 2**20) -> None:
        self.base = base
        self.predictor = base.predictor
        self.timings = base.timings
        self.tile_size, self.halo = tile_size, halo
        self.max_memory_bytes = max_memory_bytes
        self.session: Session | None = None
        self._object = None
        self._encoding: dict[Any, float] = {}
        self._lock = threading.Lock()
        #: images run through tiles so far, and tiles encoded for them
        self.stats = {"tiled_images": 0, "tiles_embedded": 0}

    def _on_tile(self, z: int, key: Any, state: str) -> None:
        now = time.perf_counter()
        with self._lock:
            if state == "embedding":
                self._encoding[key] = now
            elif key in self._encoding:
                self.timings.add("embedding", now - self._encoding.pop(key))
                self.stats["tiles_embedded"] += 1

    def set_image(self, image: np.ndarray) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        vol = ImageVolume(image)
        if not vol.is_large(self.tile_size):
            self.base.set_image(image)
            return
        self.session = Session(vol, predictor=self.predictor, tiles=True, tile_size=self.tile_size,
                               halo=self.halo, max_memory_bytes=self.max_memory_bytes,
                               zoom=bool(getattr(self.base, "zoom", False)))  # as the plain images
        self.session.on_tile(self._on_tile)
        self.stats["tiled_images"] += 1

    def reset(self) -> None:
        if self.session is None:
            self.base.reset()
            return
        if self._object is not None:
            self.session.remove_object(self._object)
        self._object = self.session.new_object()

    def predict(self, clicks: Sequence) -> np.ndarray:
        if self.session is None:
            return self.base.predict(clicks)
        if self._object is None:
            self.reset()
        if len(clicks) != len(self._object.clicks) + 1:
            raise RuntimeError("the protocol must add exactly one click per prediction")
        c = clicks[-1]
        spent = self.timings.seconds.get("embedding", 0.0)
        t0 = time.perf_counter()
        mask = self._object.add_click(c.y, c.x, bool(c.is_positive))
        encoding = self.timings.seconds.get("embedding", 0.0) - spent
        self.timings.add("decoder", max(0.0, time.perf_counter() - t0 - encoding))
        return mask
