"""The one place that picks an embedding store for an image: whole planes or tiles."""

from __future__ import annotations

from pathlib import Path

from ..images import DEFAULT_HALO, DEFAULT_TILE_SIZE, ImageVolume
from ._encode import Encoder
from ._store import EmbeddingStore
from ._tiled import TiledEmbeddingStore

__all__ = ["open_store"]


def open_store(predictor: Encoder, vol: ImageVolume, *, tiles: bool | None = None,
               cache_dir: str | Path | None = None, max_memory_bytes: int = 512 * 2**20,
               tile_size: int = DEFAULT_TILE_SIZE, halo: int = DEFAULT_HALO) -> EmbeddingStore:
    """The embedding store of ``vol``: a :class:`TiledEmbeddingStore` for a large image, else
    an :class:`EmbeddingStore` (one embedding per slice).

    Parameters
    ----------
    predictor : Encoder
        The predictor whose model encodes the images.
    vol : ImageVolume
        The image.
    tiles : bool or None
        None tiles the image when it is large (:meth:`ImageVolume.is_large` for ``tile_size``);
        True or False force either.
    cache_dir, max_memory_bytes
        As for :class:`EmbeddingStore`.
    tile_size, halo : int
        The tiling of a tiled store.

    Returns
    -------
    EmbeddingStore
        Its ``tiled`` says which kind it is; ``unit_name`` and :meth:`~EmbeddingStore.missing`
        name and count its units of work (slices or tiles).
    """
    tiled = bool(vol.is_large(tile_size)) if tiles is None else bool(tiles)
    if tiled:
        return TiledEmbeddingStore(predictor, vol, cache_dir=cache_dir, max_memory_bytes=max_memory_bytes,
                                   tile_size=tile_size, halo=halo)
    return EmbeddingStore(predictor, vol, cache_dir=cache_dir, max_memory_bytes=max_memory_bytes)
