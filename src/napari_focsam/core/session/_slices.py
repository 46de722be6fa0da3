"""How an object's slices are prompted and propagated: on whole planes or in tiles.

A :class:`~napari_focsam.core.session.Session` picks one of these once, from its embedding
store (:data:`SLICE_MODES`, keyed by the store's ``tiled``); its objects then ask it for a new
click history, for the embedding a prompt needs, and for a propagation, without knowing which
kind of image they are on. Both kinds of history offer the same interface (``clicks``, ``box``,
``mask``, ``region``, ``tile``, ``logits``, ``token``, ``add``, ``undo``, ``truncate``,
``set_box``): :class:`~napari_focsam.core.prompting.InteractiveObject` on a plane,
:class:`~napari_focsam.core.prompting.TiledHistory` in the tiles of a large image.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ..images import TileKey
from ..prompting import Box, Click, CropEmbeddings, InteractiveObject, TiledHistory, ZoomedObject
from ..propagation import AnchorHistory, PropagationResult, inside, neighbour_answer, propagate, propagate_tiled

if TYPE_CHECKING:
    from ._objects import SegmentedObject

__all__ = ["PlaneSlices", "SLICE_MODES", "TiledSlices"]

log = logging.getLogger("napari_focsam.core.session")


class PlaneSlices:
    """Slices of an image whose planes are encoded whole (one embedding per slice).

    A click on a slice the last propagation reached corrects the propagated mask there
    (:class:`~napari_focsam.core.propagation.AnchorHistory`); other slices start afresh.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self._crops: dict[int, CropEmbeddings] = {}  # per slice: zoomed crops shared by its objects

    def _zoom_preview(self, z: int) -> Callable:
        """A zoomed object's ``on_crop``: the session's ``zoom_listener(z, region)``, if any."""
        def notify(region) -> None:
            listener = self.session.zoom_listener
            if listener is not None:
                listener(z, region)

        return notify

    def _zoomed(self, obj: SegmentedObject, z: int, **kwargs: Any) -> ZoomedObject | None:
        """A :class:`ZoomedObject` for slice ``z`` of ``obj`` (its crops read from the volume and
        shared by the slice's objects), None when the session does not zoom or the image is a
        stack. ``kwargs``: the whole image's embedding and size, or its ``whole`` history."""
        vol = obj.volume
        if not self.session.zoom or vol.is_3d:
            return None

        def read(y0: int, y1: int, x0: int, x1: int):
            return vol.rgb_region(z, y0, y1, x0, x1)

        crops = self._crops.setdefault(z, CropEmbeddings())
        return ZoomedObject(self.session.predictor, read=read, crops=crops, on_crop=self._zoom_preview(z), **kwargs)

    def clear_memory(self) -> None:
        """Drop the embeddings of the zoomed crops (see :class:`ZoomedObject`)."""
        for crops in self._crops.values():
            crops.clear()
        self._crops.clear()

    # -- the session's tile interface: a plane image has no tiles
    def on_tile(self, fn: Callable[[int, TileKey, str], None]) -> None:
        """Nothing to report: this image is not tiled."""

    def off_tile(self, fn: Callable[[int, TileKey, str], None]) -> None:
        """Nothing to stop: this image is not tiled."""

    def tiles_in_memory(self) -> list[tuple[int, TileKey]]:
        return []

    def tile_window(self, z: int, key: TileKey) -> tuple[int, int, int, int]:
        raise ValueError("this session does not tile its image (it is not large): there are no tiles")

    # -- an object's slices
    def new_history(self, obj: SegmentedObject, z: int, first: Click | None = None):
        """A click history for slice ``z`` of ``obj``, whose first click will be ``first``.

        A correction on a slice the last propagation reached starts from its propagated mask
        (:class:`AnchorHistory`): a positive click, or a negative one inside the mask. A first
        negative click outside the mask leaves the slice empty (a stop slice). A positive click
        just beyond where the object stopped takes the neighbouring mask as context. On a 2D image
        with the session's ``zoom`` on, a small object is decoded on an enlarged crop
        (:class:`ZoomedObject`).
        """
        store, predictor, shape = self.session.store, self.session.predictor, obj.volume.plane_shape
        prop = obj.last_propagation
        corrects = first is not None and obj.anchor_corrections and prop is not None
        prior = prop.masks.get(z) if corrects else None
        if prior is not None and prior.any() and (first.is_positive or inside(prior, first)):
            return AnchorHistory(predictor, lambda: store.get(z), shape, prior)
        if corrects and first.is_positive:
            near = [m for m in (obj.slice_mask(z - 1), obj.slice_mask(z + 1)) if m is not None and m.any()]
            if near:  # beyond where the object stopped: the neighbouring mask as context
                near.sort(key=lambda m: (inside(m, first), int(m.sum())), reverse=True)
                return AnchorHistory(predictor, lambda: store.get(z), shape, near[0], context=True)
        zoomed = self._zoomed(obj, z, embedding=lambda: store.get(z), original_size=shape)
        if zoomed is not None:  # (not ``or``: an object without clicks has length 0)
            return zoomed
        return InteractiveObject(predictor, lambda: store.get(z), original_size=shape)

    def fit_to_neighbours(self, obj: SegmentedObject, z: int, hist) -> None:
        """After a later click on slice ``z`` of a stack where the object was started (an
        :class:`InteractiveObject`; corrections of propagated slices have their own prompt,
        :class:`AnchorHistory`): when the click loop's mask is far larger or smaller than the
        object's sections on slices ``z - 1`` and ``z + 1`` where the user clicked too, the
        decoder's candidate that fits them replaces it (:func:`neighbour_answer`). Propagated
        neighbours do not count: those from this slice only repeat its previous answer (a part
        of a large object, which the user's click is now growing)."""
        if not (self.session.fit_neighbours and obj.volume.is_3d and isinstance(hist, InteractiveObject)):
            return
        if len(hist) < 2 or hist.blank or hist.box is not None:
            return
        # only slices the user clicked: a section propagated from this slice echoes its old answer
        near = [k for k in (z - 1, z + 1) if 0 <= k < obj.volume.n_slices]
        neighbours = [h.mask for h in map(obj.history, near) if h is not None]
        if not neighbours:
            return
        mask = hist.mask  # the click loop's answer (kept for the log line)
        # the slice's embedding is fetched only when the answer needs the candidates
        logits = neighbour_answer(self.session.predictor, lambda: hist.embedding, hist.clicks, mask, neighbours)
        if logits is not None:
            after = int(hist.replace_last(logits).sum())
            log.info("object %d, slice %d: the click's mask (%d px) is outside the size of the clicked slices "
                     "next to it (%s px); the decoder's candidate that fits them is kept (%d px)", obj.id, z,
                     int(mask.sum()), "/".join(str(int(m.sum())) for m in neighbours), after)

    def prefetch(self, obj: SegmentedObject, z: int, click: Click | None = None, box: Box | None = None) -> None:
        """Compute slice ``z``'s embedding (before the object's lock is taken)."""
        self.session.store.get(z)

    def seed(self, hist) -> tuple:
        """What a propagation starts from on a clicked slice: ``(mask, logits)``."""
        return hist.mask, hist.logits

    def starts(self, histories: dict) -> list[int]:
        """Slices where the object was started: clicked before any propagation reached them (not
        corrections of propagated slices, :class:`AnchorHistory`)."""
        return [z for z, h in histories.items() if not isinstance(h, AnchorHistory)]

    def restyled(self, histories: dict) -> list[int]:
        """Slices where the object was started and then corrected (not anchors)."""
        return [z for z, h in histories.items() if isinstance(h, (InteractiveObject, ZoomedObject)) and len(h) > 1]

    def propagate(self, seeds: dict, tokens: dict, memo: dict, restyled: list[int], **kwargs: Any) -> PropagationResult:
        """Propagate from ``seeds`` (slice -> :meth:`seed`); the masks are read-only planes.
        ``offsets``: the logit level of each corrected seed's runs (see ``propagate``)."""
        result = propagate(self.session.store, seeds, tokens=tokens, memo=memo, restyled=restyled, **kwargs)
        for m in result.masks.values():
            m.flags.writeable = False
        return result

    def previous_seed(self, obj: SegmentedObject, z: int):
        """Slice ``z``'s propagated mask as a seed ``(mask, None)``, None when it has none."""
        prop = obj.last_propagation
        prev = prop.masks.get(z) if prop is not None else None
        return ((prev, None), ("propagated", id(prev))) if prev is not None and prev.any() else None


class TiledSlices(PlaneSlices):
    """Slices of a large image encoded in tiles, per pyramid level: each object is decoded in the
    tile (and level) that fits it, and its masks stay regions."""

    def on_tile(self, fn: Callable[[int, TileKey, str], None]) -> None:
        """Call ``fn(z, key, state)`` when a tile starts being encoded and when it is ready."""
        self.session.store.add_listener(fn)

    def off_tile(self, fn: Callable[[int, TileKey, str], None]) -> None:
        self.session.store.remove_listener(fn)

    def tiles_in_memory(self) -> list[tuple[int, TileKey]]:
        return self.session.store.tiles_in_memory()

    def tile_window(self, z: int, key: TileKey) -> tuple[int, int, int, int]:
        self.session.volume.check_z(z)
        return self.session.store.tile_window(key)

    def new_history(self, obj: SegmentedObject, z: int, first: Click | None = None):
        """A click history for slice ``z`` in the tiles; on a 2D image with the session's ``zoom``
        on, a small object is decoded on an enlarged crop of full-resolution pixels
        (:class:`ZoomedObject` around the :class:`TiledHistory`)."""
        hist = TiledHistory(self.session.store, self.session.predictor, z)
        zoomed = self._zoomed(obj, z, embedding=None, whole=hist)
        return hist if zoomed is None else zoomed

    def prefetch(self, obj: SegmentedObject, z: int, click: Click | None = None, box: Box | None = None) -> None:
        """Compute the tile the next prompt on slice ``z`` is decoded in first."""
        with obj.lock:
            hist = obj.history(z)
            if hist is None:
                hist = self.new_history(obj, z)
            if click is not None:
                key = hist.next_tile(click)
            elif box is not None:
                key = hist.first_tile(box)
            else:
                return
        self.session.store.get_tile(z, key)

    def seed(self, hist) -> tuple:
        """What a propagation starts from on a clicked slice: ``(region, tile, logits)``."""
        return hist.region, hist.tile, hist.logits

    def restyled(self, histories: dict) -> list[int]:
        return []

    def fit_to_neighbours(self, obj: SegmentedObject, z: int, hist) -> None:
        """Nothing: a tiled object's masks are regions decoded at the level that fits them."""

    def propagate(self, seeds: dict, tokens: dict, memo: dict, restyled: list[int], **kwargs: Any) -> PropagationResult:
        """Each slice is decoded in the tile (and level) that holds the previous slice's mask, with
        the same adaptive rule as clicks; masks stay regions (tiled histories move no level)."""
        kwargs.pop("offsets", None)
        return propagate_tiled(self.session.store, seeds, tokens=tokens, memo=memo, **kwargs)

    def previous_seed(self, obj: SegmentedObject, z: int):
        prev = obj.mask_region(z)
        return ((prev, None, None), ("propagated", id(prev.crop))) if prev.crop.any() else None


#: The slice mode of a session, by its store's ``tiled``.
SLICE_MODES = {False: PlaneSlices, True: TiledSlices}
