"""An object of a :class:`~napari_focsam.core.session.Session`: its clicks on any slices, and its propagation.

What differs between a plane and a tiled image is asked of the session's slice mode
(:mod:`~napari_focsam.core.session._slices`); the object never asks which it has.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD, DEFAULT_SLICE_VOTE
from ..images import ImageVolume, TileKey
from ..models import release_memory
from ..prompting import (
    Box, Click, MaskRegion, Prompts, SliceHistory, checked_box, checked_click, empty_region)
from ..propagation import (
    DEFAULT_MULTIMASK, DEFAULT_PROMPT, DIRECTIONS, PropagationResult)

__all__ = ["RELEASE_AFTER_DROPPED_CLICKS", "SegmentedObject"]

log = logging.getLogger("napari_focsam.core.session")


def _continued_from(slices: Any, obj: "SegmentedObject", z: int) -> tuple:
    """The seed and token of slice ``z``'s propagated mask, to propagate from there (ValueError
    when the slice has none)."""
    previous = slices.previous_seed(obj, z)
    if previous is None:
        raise ValueError(f"slice {z} has no clicks and no mask to propagate from: click on it first")
    return previous


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False
    return mask


#: ``set_clicks`` hands freed memory back to the system (see :func:`.allocator.release_memory`)
#: when it drops at least this many clicks at once.
RELEASE_AFTER_DROPPED_CLICKS = 16


def checked_z(vol: ImageVolume, z: Any) -> int:
    """Slice index ``z`` of ``vol`` checked; on a 2D image None means slice 0, on a stack it is an error."""
    if z is None:
        if vol.n_slices > 1:
            raise ValueError(f"the stack has {vol.n_slices} slices (0..{vol.n_slices - 1}): "
                             "pass the slice z explicitly")
        return 0
    if isinstance(z, (bool, np.bool_, str, bytes)):
        raise TypeError(f"slice index z must be an integer, got {z!r}")
    return vol.check_z(z)


def checked_slice_click(vol: ImageVolume, click: Sequence) -> tuple[int, float, float, bool]:
    """A click ``(z, y, x, positive)`` on ``vol`` checked and normalised."""
    try:
        if isinstance(click, (str, bytes)):
            raise TypeError
        z, y, x, positive = click
    except (TypeError, ValueError):
        raise ValueError(f"a click is (z, y, x, positive), got {click!r}") from None
    c = checked_click(y, x, positive, vol.plane_shape)
    return checked_z(vol, z), c.y, c.x, c.is_positive


def check_box_slice(box: tuple[int, Box] | None, zs: Iterable[int]) -> None:
    """ValueError when an object has a box (``(slice, box)``) and a click would go to another slice."""
    if box is not None:
        for z in zs:
            if z != box[0]:
                raise ValueError(f"this object's box is on slice {box[0]}; a click on slice {z} cannot "
                                 f"refine it: click on slice {box[0]}, or start a new object")


def click_order(preferred: list[int], counts: dict[int, int]) -> list[int]:
    """The slice of each click in order: ``preferred`` as far as the per-slice click ``counts``
    allow (after an error part-way through :meth:`SegmentedObject.set_clicks` the two may differ)."""
    left = dict(counts)
    order = []
    for z in preferred:
        if left.get(z, 0) > 0:
            order.append(z)
            left[z] -= 1
    for z, n in left.items():
        order.extend([z] * n)
    return order


class SegmentedObject:
    """One object of a :class:`Session`: its clicks on any slices, and its propagation.

    Each clicked slice has its own click history, an :class:`InteractiveObject` of the
    predictor (the one click loop and undo of the project). Coordinates are image pixels;
    napari's convention is accepted at the border (pixel ``i`` covers ``[i - 0.5, i + 0.5)``,
    so a click at -0.4 lands on pixel 0). ``positive`` must be a bool. On a stack, the slice
    ``z`` must be given (it never defaults to slice 0); on a 2D image it may be left out.
    Returned masks are read-only arrays.
    """

    #: A click on a slice the last propagation reached (and without clicks of its own) corrects
    #: the propagated mask there (:class:`~napari_focsam.core.propagation.AnchorHistory`); False: it starts the slice
    #: afresh, as the first version did (kept for comparisons).
    anchor_corrections = True

    def __init__(self, session: Any, object_id: int) -> None:  # a Session (core/session.py)
        self.session = session
        self.id = object_id
        self._slices: dict[int, SliceHistory] = {}  # only slices with at least one click
        self._order: list[int] = []  # slice of each click, in the order the clicks were made
        self._propagation: PropagationResult | None = None
        self._runs: dict = {}  # finished propagation runs, reused when their seed is unchanged
        self._lock = threading.RLock()  # object state; held briefly (decoder steps, never an encoder pass)
        self._prop_lock = threading.Lock()  # one propagation of this object at a time
        self._warned_blank: set[int] = set()

    def __repr__(self) -> str:
        return f"SegmentedObject(id={self.id}, clicks={len(self._order)}, slices={self.slices_with_clicks})"

    # -- read access
    @property
    def volume(self) -> ImageVolume:
        return self.session.volume

    @property
    def clicks(self) -> list[tuple[int, float, float, bool]]:
        """All clicks as (z, y, x, positive), in the order they were made."""
        with self._lock:
            seen: dict[int, int] = {}
            out = []
            for z in self._order:
                i = seen.get(z, 0)
                c = self._slices[z].clicks[i]
                seen[z] = i + 1
                out.append((z, c.y, c.x, c.is_positive))
            return out

    @property
    def slices_with_clicks(self) -> list[int]:
        with self._lock:
            return sorted(self._slices)

    @property
    def last_propagation(self) -> PropagationResult | None:
        return self._propagation

    @property
    def box(self) -> tuple[int, Box] | None:
        """(slice, box) of the object's box prompt, or None (see :meth:`set_box`)."""
        with self._lock:
            for z, hist in self._slices.items():
                if hist.box is not None:
                    return z, hist.box
        return None

    @property
    def prompts(self) -> Prompts:
        """The clicks in order and the box, as one value (``set_prompts(obj, obj.prompts)`` changes nothing)."""
        with self._lock:  # one state: clicks and box read together
            box, clicks = self.box, tuple(self.clicks)
        return Prompts(clicks, None if box is None else (box[0], tuple(float(v) for v in box[1])))

    def history(self, z: int | None = None) -> SliceHistory | None:
        """The click history of slice ``z`` (None when it has no clicks); read it, do not edit it.
        On a tiled image it is a :class:`TiledHistory` (its logits are in its tile's frame)."""
        z = self._check_z(z)
        with self._lock:
            return self._slices.get(z)

    def nbytes(self) -> int:
        """Bytes of the arrays held by the click histories (logits, refined embeddings, the
        current masks), independent of the propagation result."""
        with self._lock:
            return sum(h.nbytes() for h in self._slices.values())

    def logits(self, z: int | None = None) -> torch.Tensor | None:
        """The decoder logits (1, 1, 256, 256) after the last click on slice ``z`` (None if none)."""
        z = self._check_z(z)
        with self._lock:
            hist = self._slices.get(z)
            return hist.logits if hist is not None else None

    def mask(self, z: int | None = None) -> np.ndarray:
        """(Y, X) bool mask of slice ``z``: from its clicks, else from the last propagation, else empty.

        On a tiled image the plane is materialised from :meth:`mask_region` at each call.
        """
        z = self._check_z(z)
        with self._lock:
            hist = self._slices.get(z)
            if hist is not None:
                return hist.mask
            if self._propagation is not None and z in self._propagation.masks:
                return self._propagation.masks[z]
        return _frozen(np.zeros(self.volume.plane_shape, dtype=bool))

    def mask_region(self, z: int | None = None) -> MaskRegion:
        """The mask of slice ``z`` as ``(y0, x0, crop)``: full-resolution offset and the (h, w) bool
        crop of the object's bounding box (h = w = 0 when empty). No full-size array is made on a
        tiled image."""
        z = self._check_z(z)
        with self._lock:
            hist = self._slices.get(z)
            if hist is not None:
                return hist.region
            prop = self._propagation
        if prop is not None and z in prop.masks:
            return prop.masks.region(z)
        return empty_region()

    def volume_regions(self) -> dict[int, MaskRegion]:
        """slice -> :meth:`mask_region` for every slice with a mask (propagated or clicked): the
        region-wise :meth:`volume_mask`, bounded by the object's extent instead of the volume's."""
        with self._lock:
            zs = set(self._slices)
            prop = self._propagation
        if prop is not None:
            zs |= set(prop.masks)
        out = {z: self.mask_region(z) for z in sorted(zs)}
        return {z: r for z, r in out.items() if r.crop.size}

    def tile(self, z: int | None = None) -> TileKey | None:
        """The tile (and level) slice ``z``'s clicks are decoded in on a tiled image, else None."""
        z = self._check_z(z)
        with self._lock:
            hist = self._slices.get(z)
            return hist.tile if hist is not None else None

    def volume_mask(self) -> np.ndarray:
        """(Z, Y, X) bool: the last propagation, with the clicked slices' own masks on top.

        This is Z full planes: on a huge stack prefer :meth:`volume_regions`.
        """
        out = np.zeros((self.volume.n_slices, *self.volume.plane_shape), dtype=bool)
        with self._lock:
            for z, (y0, x0, crop) in self.volume_regions().items():
                out[z, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return out

    # -- argument checks
    def _check_z(self, z: Any) -> int:
        return checked_z(self.volume, z)

    def _normalise(self, click: Sequence) -> tuple[int, float, float, bool]:
        return checked_slice_click(self.volume, click)

    @property
    def lock(self) -> threading.RLock:
        """The object's lock (held briefly: decoder steps, never an encoder pass)."""
        return self._lock

    def slice_mask(self, z: int) -> np.ndarray | None:
        """Slice ``z``'s current mask (clicked or propagated), None off the stack or without one."""
        if not 0 <= z < self.volume.n_slices:
            return None
        hist = self._slices.get(z)
        if hist is not None:
            return hist.mask
        prop = self._propagation
        return prop.masks.get(z) if prop is not None else None

    def _new_history(self, z: int, first: Click | None = None):
        """A click history for slice ``z`` (see :meth:`~napari_focsam.core.session.PlaneSlices.new_history`)."""
        return self.session.slices.new_history(self, z, first)

    def _prefetch(self, z: int, click: Click | None = None, box: Box | None = None) -> None:
        """Compute the embedding the next prompt on slice ``z`` needs before taking the object's
        lock (on a tiled image: the tile it will be decoded in first)."""
        self.session.slices.prefetch(self, z, click, box)

    def _out(self, z: int, hist, region: bool) -> np.ndarray | MaskRegion:
        if not region:
            return hist.mask if hist is not None else self.mask(z)
        return self.mask_region(z)

    def set_box(self, box: Sequence[float] | None, z: int | None = None, *,
                region: bool = False) -> np.ndarray | MaskRegion:
        """Start the object on slice ``z`` from a box (y0, x0, y1, x1) in image pixels; returns
        that slice's (Y, X) mask. None removes the box.

        The box stays a prompt for every later click on its slice (which refine it, the
        refiner's focus region coming from the box step); the slice's earlier clicks are
        replayed on top of it. An object has one box, and then clicks on that slice only:
        ValueError when it has clicks (or its box) on another slice, for a box of zero area or
        off the image, and for a missing or invalid ``z`` on a stack. ``region=True`` returns
        :meth:`mask_region` instead of the plane.
        """
        z = self._check_z(z)
        if box is not None:
            box = checked_box(box, self.volume.plane_shape)
            with self._lock:
                other = sorted(k for k in self._slices if k != z)
            if other:
                raise ValueError(f"this object already has prompts on slice(s) {other}: a box starts an object "
                                 f"on one slice; start a new object for a box on slice {z}")
        self._prefetch(z, box=box)  # a missing embedding is computed before taking the object's lock
        with self._lock:
            hist = self._slices.get(z)
            if hist is None:
                if box is None:
                    return self._out(z, None, region)
                hist = self._new_history(z)
            hist.set_box(box)
            if len(hist) or hist.box is not None:
                self._slices[z] = hist
            else:
                self._slices.pop(z, None)
            self._changed(z)
            return self._out(z, None, region)

    def _add(self, z: int, hist: SliceHistory, click: Click) -> None:
        hist.add(click)
        self.session.slices.fit_to_neighbours(self, z, hist)
        if hist.blank and z not in self._warned_blank:
            log.warning("slice %d is blank (constant after contrast mapping): nothing to segment there", z)
            self._warned_blank.add(z)

    def _changed(self, z: int) -> None:
        """The clicks of slice ``z`` changed: its propagated mask (if any) is stale."""
        prop = self._propagation
        if prop is not None and z in prop.masks:  # a new result: the caller's copy stays as it was
            self._propagation = dataclasses.replace(prop, masks=prop.masks.without(z))

    def add_click(self, y: float, x: float, positive: bool = True, z: int | None = None, *,
                  region: bool = False) -> np.ndarray | MaskRegion:
        """Add a click on slice ``z``; returns that slice's new (Y, X) bool mask.

        Without a positive click on the slice its mask stays empty (negative clicks only
        remove). ValueError for coordinates off the image or a missing/invalid ``z`` on a
        stack, TypeError for a non-bool ``positive``. ``region=True`` returns
        :meth:`mask_region` instead of the plane (no full-size array on a tiled image).
        """
        z, y, x, positive = self._normalise((z, y, x, positive))
        check_box_slice(self.box, [z])
        click = Click(y, x, positive)
        self._prefetch(z, click)  # a missing embedding is computed before taking the object's lock
        with self._lock:
            hist = self._slices.get(z)
            if hist is None:
                hist = self._new_history(z, click)
            self._add(z, hist, click)
            self._slices[z] = hist
            self._order.append(z)
            self._changed(z)
            return self._out(z, hist, region)

    def undo(self, z: int | None = None, *, region: bool = False) -> np.ndarray | MaskRegion:
        """Remove the last click (of slice ``z``, or the last one made); returns that slice's mask
        (:meth:`mask_region` with ``region=True``)."""
        with self._lock:
            if z is None:
                if not self._order:
                    return empty_region() if region else _frozen(np.zeros(self.volume.plane_shape, dtype=bool))
                z = self._order[-1]
            z = self._check_z(z)
            hist = self._slices.get(z)
            if hist is None:
                return self._out(z, None, region)
            hist.undo()
            if not len(hist) and hist.box is None:
                del self._slices[z]
            idx = len(self._order) - 1 - self._order[::-1].index(z)
            del self._order[idx]
            self._changed(z)
            return self._out(z, None, region)

    def reset(self) -> None:
        """Forget all clicks and the propagation (and give the freed memory back to the system)."""
        self.clear()
        release_memory()

    def clear(self) -> None:
        """Forget all clicks and the propagation (as :meth:`reset`, without handing memory back)."""
        with self._lock:
            self._slices.clear()
            self._order.clear()
            self._propagation = None
            self._runs.clear()

    def set_clicks(self, clicks: Iterable[Sequence], *,
                   region: bool = False) -> dict[int, np.ndarray | MaskRegion]:
        """Replace all clicks by ``clicks`` [(z, y, x, positive), ...], in order.

        Per slice, the clicks shared with the current list (same leading clicks) keep their
        state; only the difference is undone/added, so adding or removing the last click costs
        one decoder step. Returns slice -> new mask for the slices whose clicks changed
        (an empty mask for a slice that lost all its clicks; :meth:`mask_region` s with
        ``region=True``). All clicks are validated before anything changes.
        """
        new = [self._normalise(c) for c in clicks]
        check_box_slice(self.box, (z for z, *_ in new))
        wanted: dict[int, list[Click]] = {}
        for z, y, x, p in new:
            wanted.setdefault(z, []).append(Click(y, x, p))
        changed: dict[int, np.ndarray] = {}
        with self._lock:
            todo = [z for z in wanted if (self._slices[z].clicks if z in self._slices else []) != wanted[z]]
        for z in todo:  # missing embeddings are computed before taking the object's lock
            self._prefetch(z, wanted[z][0] if wanted.get(z) else None)
        dropped = 0
        with self._lock:
            try:
                for z in sorted(set(self._slices) | set(wanted)):
                    hist = self._slices.get(z)
                    if hist is None:
                        hist = self._new_history(z, wanted[z][0] if wanted.get(z) else None)
                    have, want = hist.clicks, wanted.get(z, [])
                    k = 0
                    while k < min(len(have), len(want)) and have[k] == want[k]:
                        k += 1
                    if k == len(have) == len(want):
                        continue
                    dropped += len(have) - k
                    hist.truncate(k)
                    try:
                        for c in want[k:]:
                            self._add(z, hist, c)
                    finally:
                        if len(hist) or hist.box is not None:
                            self._slices[z] = hist
                        else:
                            self._slices.pop(z, None)
                        self._changed(z)
                    changed[z] = self.mask_region(z) if region else self.mask(z)
            finally:
                self._order = click_order([z for z, *_ in new], {z: len(h) for z, h in self._slices.items()})
        if dropped >= RELEASE_AFTER_DROPPED_CLICKS:
            release_memory()
        return changed

    # -- volumes
    def propagate(
        self,
        z_start: int | None = None,
        *,
        iou_threshold: float = DEFAULT_IOU_THRESHOLD,
        directions: Iterable[str] = DIRECTIONS,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        prompt: str = DEFAULT_PROMPT,
        multimask: bool = DEFAULT_MULTIMASK,
        edge_fade: float | None = DEFAULT_EDGE_FADE,
        vote: bool = DEFAULT_SLICE_VOTE,
    ) -> PropagationResult:
        """Propagate slice by slice from the clicked slices (and ``z_start``) through the stack.

        Every clicked slice is a seed and keeps its own mask; runs go outward from the lowest
        and highest clicked slices ("down" = towards slice 0, "up" = towards the last slice)
        and fill the gaps between clicked slices from both ends. ``z_start``: an extra seed, a
        slice without clicks that holds a mask from the previous propagation (to continue from
        there); a clicked ``z_start`` changes nothing. A clicked slice whose mask is empty
        (e.g. only negative clicks) stops the propagation there. Embeddings missing on the way
        are computed. ``cancelled()`` is checked between slices; a cancelled run keeps (and
        returns) what it finished. The result becomes :meth:`volume_mask`. Stop rules and ``vote``
        (False: the slices are frames in time, not voted with their neighbours): ``propagate``.

        Re-propagation after an edit reuses every run whose seed slice, extent and parameters
        did not change: a click on one slice only re-propagates the runs next to that slice.
        """
        slices = self.session.slices
        with self._prop_lock:
            with self._lock:
                seeds = {z: slices.seed(h) for z, h in self._slices.items()}
                offsets = {z: h.offset for z, h in self._slices.items() if h.offset}
                tokens = {z: h.token for z, h in self._slices.items()}
                restyled, starts = slices.restyled(self._slices), slices.starts(self._slices)
                if z_start is not None:
                    z_start = self._check_z(z_start)
                    if z_start not in seeds:
                        seeds[z_start], tokens[z_start] = _continued_from(slices, self, z_start)
                if not seeds:
                    raise ValueError("the object has no clicks yet: add a click first")
            # without the object's lock: mask() etc. stay responsive while this runs
            result = slices.propagate(seeds, tokens, self._runs, restyled, offsets=offsets, outline_from=starts,
                                      iou_threshold=iou_threshold, edge_fade=edge_fade, directions=directions,
                                      progress=progress, cancelled=cancelled, prompt=prompt, multimask=multimask,
                                      vote=vote)
            self._finish(result, tokens)
            return result

    def _finish(self, result: PropagationResult, tokens: dict) -> None:
        with self._lock:
            # slices whose clicks changed while this ran: their propagated masks are stale
            current = {z: h.token for z, h in self._slices.items()}
            used = {z: t for z, t in tokens.items() if not isinstance(t, tuple)}
            for z in set(used) | set(current):
                if used.get(z) != current.get(z):
                    result.masks.pop(z, None)
            self._propagation = result
