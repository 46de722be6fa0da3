"""The napari-free interactive segmentation engine: images, embeddings, objects, propagation.

>>> vol = ImageVolume(stack)                       # (Z, Y, X), numpy or dask
>>> session = Session(vol, "vit_t", cache_dir="~/.cache/focsam-embeddings")
>>> obj = session.new_object()
>>> mask = obj.add_click(120, 88, positive=True, z=30)   # (Y, X) bool, slice 30
>>> result = obj.propagate()                       # slice by slice, both directions
>>> labels = obj.volume_mask()                      # (Z, Y, X) bool

A large image (:meth:`ImageVolume.is_large`: long side above 1536 pixels) is tiled
automatically: embeddings per tile and pyramid level (:class:`TiledEmbeddingStore`), each
object at the scale that fits it (:mod:`~napari_focsam.core.prompting._tiled_history`), masks kept as regions
(:meth:`SegmentedObject.mask_region`; :meth:`SegmentedObject.mask` still gives the plane).

Each object keeps, per clicked slice, the history of its clicks (the predictor's
:class:`InteractiveObject`: the decoder's logits and, from the refine click when the model
has a focus refiner, the refined embedding), so that undo restores the exact previous state.
Embeddings come from the session's shared :class:`EmbeddingStore`; objects are independent
of each other. All methods are thread-safe (one lock per object; the store has its own).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from ...modeling.focsam import FocSAM
from ..defaults import DEFAULT_MODEL, DEFAULT_ZOOM
from ..embeddings import EmbeddingStore, open_store
from ..images import DEFAULT_HALO, DEFAULT_TILE_SIZE, ImageVolume, TileKey
from ..models import release_memory, resolve_device
from ..prompting import FocSAMPredictor
from ._objects import SegmentedObject
from ._slices import SLICE_MODES

__all__ = ["Session"]


class Session:
    """An image (or stack), a model and the objects being segmented on it.

    model: a registry name ("vit_t", ...), a checkpoint path or a loaded :class:`FocSAM`
    (left on its device unless ``device`` names one); ``predictor`` overrides both.
    cache_dir: optional folder for the on-disk embedding cache (see :class:`EmbeddingStore`).

    tiles: None (default) tiles large images (:meth:`ImageVolume.is_large`) and keeps the single
    squeezed canvas for the others; True/False force either (False: the behaviour before tiling,
    for comparisons). tile_size, halo: the tiling (:mod:`~napari_focsam.core.images._tiles`). On a tiled image,
    :attr:`store` is a :class:`TiledEmbeddingStore`, and memory is bounded by
    ``max_memory_bytes`` of tile embeddings plus each object's click history and mask regions.

    zoom: on a 2D image, an object small after its first click is decoded on an enlarged crop
    (:class:`~napari_focsam.core.prompting.ZoomedObject`; on a tiled image, a crop of
    full-resolution pixels around the object); applies to objects started after it is set.
    Stacks (propagated on whole planes) never zoom.
    """

    def __init__(self, vol: ImageVolume | Any, model: str | Path | FocSAM = DEFAULT_MODEL, *,
                 device: str = "auto", refine: bool = True, cache_dir: str | Path | None = None,
                 predictor: FocSAMPredictor | None = None, max_memory_bytes: int = 512 * 2**20,
                 tiles: bool | None = None, tile_size: int = DEFAULT_TILE_SIZE, halo: int = DEFAULT_HALO,
                 zoom: bool = DEFAULT_ZOOM) -> None:
        if not isinstance(vol, ImageVolume):
            vol = ImageVolume(vol)
        if predictor is None:
            if isinstance(model, FocSAM):
                net = model if str(device) == "auto" else model.to(resolve_device(device))
            else:
                from ..models import load_model

                net = load_model(model, device)
            predictor = FocSAMPredictor(net, refine=refine)
        self.volume = vol
        self.predictor = predictor
        self.store: EmbeddingStore = open_store(predictor, vol, tiles=tiles, cache_dir=cache_dir,
                                                max_memory_bytes=max_memory_bytes, tile_size=tile_size, halo=halo)
        self.tiled = self.store.tiled
        #: decode small objects of a 2D image on an enlarged crop (objects started from now on)
        self.zoom = bool(zoom)
        #: on a stack, a later click on a slice where an object was started whose mask is far
        #: larger or smaller than the object's sections next to it takes the decoder's candidate
        #: that fits them (:func:`~napari_focsam.core.propagation.neighbour_answer`)
        self.fit_neighbours = True
        #: ``zoom_listener(z, region)``, called on the decoding thread with the whole image's mask
        #: of an object whose crop is about to be encoded (about 1 s): a viewer shows it meanwhile
        self.zoom_listener: Callable[[int, Any], None] | None = None
        #: how the objects' slices are prompted and propagated (whole planes or tiles)
        self.slices = SLICE_MODES[self.tiled](self)
        self._objects: list[SegmentedObject] = []
        self._next_id = 1
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Session({self.volume!r}, model={getattr(self.predictor.model, 'model_type', '?')}, objects={len(self._objects)})"

    # -- tiles (large images)
    def on_tile(self, fn: Callable[[int, TileKey, str], None]) -> None:
        """Call ``fn(z, key, state)`` when a tile starts being encoded (``state="embedding"``) and
        when it is ready (``"ready"``); never called on an image that is not tiled."""
        self.slices.on_tile(fn)

    def off_tile(self, fn: Callable[[int, TileKey, str], None]) -> None:
        """Stop calling ``fn`` (see :meth:`on_tile`)."""
        self.slices.off_tile(fn)

    def tiles_in_memory(self) -> list[tuple[int, TileKey]]:
        """``(z, TileKey)`` of the tile embeddings held in memory (empty when not tiled)."""
        return self.slices.tiles_in_memory()

    def tile_window(self, z: int, key: TileKey) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``key`` in full-resolution pixels (ValueError when not tiled)."""
        return self.slices.tile_window(z, key)

    @property
    def objects(self) -> list[SegmentedObject]:
        with self._lock:
            return list(self._objects)

    def new_object(self) -> SegmentedObject:
        """A new, empty object (ids 1, 2, ... in creation order)."""
        with self._lock:
            obj = SegmentedObject(self, self._next_id)
            self._next_id += 1
            self._objects.append(obj)
            return obj

    def remove_object(self, obj: SegmentedObject) -> None:
        """Remove ``obj`` from the session; it is emptied (clicks and propagation dropped) and
        the freed memory is given back to the system."""
        with self._lock:
            if obj not in self._objects:
                raise ValueError(f"{obj!r} does not belong to this session")
            self._objects.remove(obj)
        obj.reset()  # also calls release_memory()

    def close(self) -> None:
        """Drop every object and the in-memory embeddings, and give the memory back to the system.

        The disk cache stays; the session can still be used afterwards (it starts empty).
        """
        with self._lock:
            objects, self._objects = self._objects, []
        for obj in objects:
            obj.clear()
        self.slices.clear_memory()
        self.store.clear_memory()
        release_memory()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
