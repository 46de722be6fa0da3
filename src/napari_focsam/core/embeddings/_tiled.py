"""Tiled embeddings of a large image: one embedding per (slice, level, tile), on demand and cached.

:class:`TiledEmbeddingStore` is an :class:`~napari_focsam.core.embeddings.EmbeddingStore` whose unit of work is
one tile (:mod:`~napari_focsam.core.images._tiles`) of one pyramid level of one slice instead of one slice: the same memory
LRU bounded in bytes, the same signed zarr disk cache (one chunk per slice, level and tile, each
with the signature of its own pixels, :meth:`ImageVolume.region_signature`), the same claims
between processes and the same resumable :meth:`precompute` (of chosen tiles).

Levels: 0 is full resolution; level ``L`` is the image's own pyramid level ``L`` when it has one,
else a virtual level computed on demand (2x coarser than the one before,
:meth:`ImageVolume.read_region`). The store uses the levels up to the first one that one tile
covers (:attr:`top_level`). A tile is read with :meth:`ImageVolume.rgb_region` (only that
region of that level, through the image's one contrast mapping) and encoded 1:1 (a tile of
1024 x 1024 pixels is not resized; only the top level's single tile, when smaller, is scaled up
to the encoder's canvas as a small image is).

Memory: at most ``max_memory_bytes`` of float16 tile embeddings (2 MiB per tile) plus one
float32 copy of the tile in use (4 MiB); reading a tile holds that tile's pixels (for a virtual
level, one band of source pixels, see :meth:`ImageVolume.read_region`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..images import DEFAULT_HALO, DEFAULT_TILE_SIZE, ImageVolume, TileGrid, TileKey, check_tiling
from ._encode import Encoder, input_size_for
from ._store import EmbeddingStore, SliceEmbedding

__all__ = ["TILE_STATES", "TileEmbedding", "TiledEmbeddingStore"]

log = logging.getLogger(__name__)

#: States reported to :meth:`TiledEmbeddingStore.add_listener` callbacks.
TILE_STATES = ("embedding", "ready")


@dataclass
class TileEmbedding(SliceEmbedding):
    """The embedding of one tile: ``original_size`` is the tile's (h, w) in its level's pixels,
    ``key`` the :class:`TileKey` and ``window`` its (y0, y1, x0, x1) in level pixels."""

    key: TileKey = TileKey(0, 0, 0)
    window: tuple[int, int, int, int] = (0, 0, 0, 0)


class TiledEmbeddingStore(EmbeddingStore):
    """Embeddings of the tiles of every level of a large image (see the module docs).

    Parameters
    ----------
    predictor, vol, cache_dir, max_memory_bytes, feature_dtype
        As for :class:`EmbeddingStore`.
    tile_size, halo : int
        The tiling (see :mod:`~napari_focsam.core.images._tiles`; ValueError for values that make no sense).

    Notes
    -----
    :meth:`get` (slice ``z``) still returns a whole-plane embedding -- the top level's single
    tile, in full-resolution coordinates -- for whole-image tools; interactive segmentation uses
    :meth:`get_tile`. Units (as in :meth:`in_memory`, :meth:`missing`, :meth:`precompute`) are
    ints; :meth:`unit` and :meth:`tile_of` convert between them and ``(z, TileKey)``.
    """

    tiled = True
    unit_name = "tiles"

    def __init__(self, predictor: Encoder, vol: ImageVolume, *, cache_dir: str | Path | None = None,
                 max_memory_bytes: int = 512 * 2**20, feature_dtype: str = "float16",
                 tile_size: int = DEFAULT_TILE_SIZE, halo: int = DEFAULT_HALO) -> None:
        self.tile_size, self.halo = check_tiling(tile_size, halo)
        grids = []
        for level in range(vol.max_level + 1):
            grids.append(TileGrid(vol.level_shape(level), self.tile_size, self.halo, level))
            if grids[-1].single:
                break
        self.grids: list[TileGrid] = grids
        self._offsets = [0]
        for g in grids:
            self._offsets.append(self._offsets[-1] + g.n_tiles)
        self.tiles_per_slice = self._offsets[-1]
        self._listeners: list[Callable[[int, TileKey, str], None]] = []
        self._listener_lock = threading.Lock()
        super().__init__(predictor, vol, cache_dir=cache_dir, max_memory_bytes=max_memory_bytes,
                         feature_dtype=feature_dtype)
        self.input_size = (self.tile_size, self.tile_size)
        self.original_size = (self.tile_size, self.tile_size)

    def __repr__(self) -> str:
        return (f"TiledEmbeddingStore({self.volume!r}, tile={self.tile_size}, halo={self.halo}, "
                f"levels={[g.shape for g in self.grids]})")

    # -- geometry
    @property
    def top_level(self) -> int:
        """The coarsest level used: the first one a single tile covers (or the image's last)."""
        return len(self.grids) - 1

    def grid(self, level: int) -> TileGrid:
        if not 0 <= int(level) <= self.top_level:
            raise ValueError(f"level {level} is out of range: the tiled levels are 0..{self.top_level}")
        return self.grids[int(level)]

    def factor(self, level: int) -> float:
        """Full-resolution pixels per pixel of ``level``."""
        return self.volume.level_factor(self.grid(level).level)

    def tile_window(self, key: TileKey) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``key`` in full-resolution pixels (clipped to the plane)."""
        y0, y1, x0, x1 = self.grid(key.level).window(key)
        f = self.factor(key.level)
        H, W = self.volume.plane_shape
        return (int(round(y0 * f)), min(H, int(round(y1 * f))), int(round(x0 * f)), min(W, int(round(x1 * f))))

    def unit(self, z: int, key: TileKey) -> int:
        """The unit number of tile ``key`` of slice ``z``."""
        z = self.volume.check_z(z)
        key = TileKey(*key)
        return z * self.tiles_per_slice + self._offsets[self.grid(key.level).level] + self.grids[key.level].index(key)

    def tile_of(self, u: int) -> tuple[int, TileKey]:
        """``(z, TileKey)`` of unit ``u``."""
        z, rest = divmod(int(u), self.tiles_per_slice)
        level = max(i for i, off in enumerate(self._offsets[:-1]) if off <= rest)
        iy, ix = divmod(rest - self._offsets[level], self.grids[level].n_cols)
        return z, TileKey(level, iy, ix)

    def units(self, slices: Iterable[int] | None = None, levels: Iterable[int] | None = None) -> list[int]:
        """The units of the given slices (default all) and levels (default all), in order."""
        zs = range(self.volume.n_slices) if slices is None else [self.volume.check_z(z) for z in slices]
        lvs = range(len(self.grids)) if levels is None else [self.grid(lv).level for lv in levels]
        return [self.unit(z, k) for z in zs for lv in lvs for k in self.grids[lv].keys()]

    # -- unit hooks of EmbeddingStore
    def _extra_meta(self) -> dict[str, Any]:
        return {"tiling": {"tile_size": self.tile_size, "halo": self.halo,
                           "levels": [list(g.shape) for g in self.grids],
                           "factors": [self.volume.level_factor(i) for i in range(len(self.grids))]}}

    def _unit_count(self) -> int:
        return self.volume.n_slices * self.tiles_per_slice

    def _check_unit(self, u: Any) -> int:
        if isinstance(u, tuple):  # (z, TileKey)
            return self.unit(*u)
        if isinstance(u, bool) or not 0 <= int(u) < self._unit_count():
            raise ValueError(f"tile unit {u!r} is out of range 0..{self._unit_count() - 1}")
        return int(u)

    def _all_units(self) -> list[int]:
        return list(range(self._unit_count()))

    def _unit_region(self, u: int) -> tuple[int, int, int, int, int, int]:
        z, key = self.tile_of(u)
        return (z, *self.grids[key.level].window(key), key.level)

    def _unit_signature(self, u: int) -> str:
        return self.volume.region_signature(*self._unit_region(u))

    def _unit_name(self, u: int) -> str:
        z, key = self.tile_of(u)
        return f"slice {z}, level {key.level}, tile ({key.iy}, {key.ix})"

    def _encoder_input(self, u: int):
        rgb = self.volume.rgb_region(*self._unit_region(u))
        return rgb, bool(rgb.min() == rgb.max())

    def _announce(self, u: int, state: str) -> None:
        with self._listener_lock:
            listeners = list(self._listeners)
        if listeners:
            z, key = self.tile_of(u)
            for fn in listeners:
                try:
                    fn(z, key, state)
                except Exception:  # a listener's bug must not break segmentation
                    log.exception("tile listener %r failed", fn)

    # -- events
    def add_listener(self, fn: Callable[[int, TileKey, str], None]) -> None:
        """Call ``fn(z, key, state)`` when a tile starts being encoded (``"embedding"``) and when
        it is available (``"ready"``: in memory, also after a disk read, or written to the disk
        cache by :meth:`precompute`). Called from the thread that asked for the tile; keep it
        short (an exception in ``fn`` is logged, never raised into the encoder's caller)."""
        with self._listener_lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[int, TileKey, str], None]) -> None:
        with self._listener_lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    # -- lookup
    def tiles_in_memory(self) -> list[tuple[int, TileKey]]:
        """``(z, TileKey)`` of the tiles held in memory, least recently used first."""
        return [self.tile_of(u) for u in self.in_memory()]

    def has_tile(self, z: int, key: TileKey) -> bool:
        """Whether the tile is available without running the encoder."""
        return self.has(self.unit(z, key))

    def get_tile(self, z: int, key: TileKey) -> TileEmbedding:
        """The embedding of tile ``key`` of slice ``z`` (computed on demand): features
        (1, 256, 64, 64) float32, ``original_size`` the tile's (h, w) in level pixels."""
        u = self.unit(z, key)
        with self._lock:
            if self._hot is not None and self._hot[0] == u and u in self._mem:
                self._mem.move_to_end(u)
                self.stats["memory_hits"] += 1
                return self._hot[1]
        entry, _ = self._obtain(u, memorize=True)
        window = self.grids[key.level].window(key)
        hw = (window[1] - window[0], window[3] - window[2])
        emb = TileEmbedding(entry.features.float()[None], input_size_for(hw), hw, z, entry.blank, TileKey(*key),
                            window)
        if self._torch_dtype != torch.float32:
            with self._lock:
                if u in self._mem:
                    self._hot = (u, emb)
                    self._evict()
        return emb

    def get(self, z: int = 0) -> SliceEmbedding:
        """A whole-plane embedding of slice ``z``: the top level's single tile, with
        ``original_size`` the full-resolution plane (as a plain store's squeezed canvas)."""
        z = self.volume.check_z(z)
        emb = self.get_tile(z, TileKey(self.top_level, 0, 0))
        return SliceEmbedding(emb.features, emb.input_size, self.volume.plane_shape, z, emb.blank)

    def has(self, z: Any = 0) -> bool:
        """Whether unit ``z`` (an int unit or a ``(z, TileKey)`` pair) is available without the encoder."""
        return super().has(z)

    def precompute(self, slices: Iterable[int] | None = None, progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None, *, poll_s: float = 0.2,
                   levels: Iterable[int] | None = None,
                   tiles: Sequence[tuple[int, TileKey]] | None = None) -> int:
        """Make sure tiles are cached (see :meth:`EmbeddingStore.precompute`): ``tiles`` as
        ``(z, TileKey)`` pairs, else every tile of ``slices`` (default all) at ``levels``
        (default all). Resumable: tiles already on disk are reused."""
        if tiles is not None:
            units = [self.unit(z, k) for z, k in tiles]
        else:
            units = self.units(slices, levels)
        return super().precompute(units, progress, cancelled, poll_s=poll_s)

    def missing(self, slices: Iterable[int] | None = None, levels: Iterable[int] | None = None) -> list[int]:
        """The units of ``slices`` x ``levels`` (default all) that :meth:`precompute` would encode."""
        return super().missing(self.units(slices, levels))
