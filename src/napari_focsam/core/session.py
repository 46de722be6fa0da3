"""The napari-free interactive segmentation engine: images, embeddings, objects, propagation.

>>> vol = ImageVolume(stack)                       # (Z, Y, X), numpy or dask
>>> session = Session(vol, "vit_t", cache_dir="~/.cache/focsam-embeddings")
>>> obj = session.new_object()
>>> mask = obj.add_click(120, 88, positive=True, z=30)   # (Y, X) bool, slice 30
>>> result = obj.propagate()                       # slice by slice, both directions
>>> labels = obj.volume_mask()                      # (Z, Y, X) bool

Each object keeps, per clicked slice, the history of its clicks with the decoder's logits and
(from the 2nd click, when the model has a focus refiner) the refined embedding, so that undo
restores the exact previous state. Embeddings come from the session's shared
:class:`EmbeddingStore`; objects are independent of each other. All methods are thread-safe
(one lock per object; the store has its own).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..modeling.focsam import FocSAM
from .embeddings import EmbeddingStore, ImageVolume, SliceEmbedding, model_id
from .predictor import Click, FocSAMPredictor, resolve_device
from .volume import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MULTIMASK,
    DEFAULT_PROMPT,
    DIRECTIONS,
    PropagationResult,
    propagate,
)
from .weights import DEFAULT_MODEL

__all__ = [
    "EmbeddingStore",
    "ImageVolume",
    "PropagationResult",
    "SegmentedObject",
    "Session",
    "SliceEmbedding",
    "model_id",
]

log = logging.getLogger(__name__)


_SERIAL = itertools.count()


@dataclass
class _Step:
    click: Click
    logits: torch.Tensor | None
    refined: torch.Tensor | None
    mask: np.ndarray
    serial: int = field(default_factory=lambda: next(_SERIAL))  # identifies this state


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False
    return mask


class SegmentedObject:
    """One object of a :class:`Session`: its clicks on any slices, and its propagation.

    Coordinates are image pixels; napari's convention is accepted at the border (pixel ``i``
    covers ``[i - 0.5, i + 0.5)``, so a click at -0.4 lands on pixel 0). Returned masks are
    read-only arrays.
    """

    def __init__(self, session: "Session", object_id: int) -> None:
        self.session = session
        self.id = object_id
        self._steps: dict[int, list[_Step]] = {}
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
                c = self._steps[z][i].click
                seen[z] = i + 1
                out.append((z, c.y, c.x, c.is_positive))
            return out

    @property
    def slices_with_clicks(self) -> list[int]:
        with self._lock:
            return sorted(self._steps)

    @property
    def last_propagation(self) -> PropagationResult | None:
        return self._propagation

    def logits(self, z: int = 0) -> torch.Tensor | None:
        """The decoder logits (1, 1, 256, 256) after the last click on slice ``z`` (None if none)."""
        z = self.volume.check_z(z)
        with self._lock:
            steps = self._steps.get(z)
            return steps[-1].logits if steps else None

    def mask(self, z: int = 0) -> np.ndarray:
        """(Y, X) bool mask of slice ``z``: from its clicks, else from the last propagation, else empty."""
        z = self.volume.check_z(z)
        with self._lock:
            steps = self._steps.get(z)
            if steps:
                return steps[-1].mask
            if self._propagation is not None and z in self._propagation.masks:
                return self._propagation.masks[z]
        return _frozen(np.zeros(self.volume.plane_shape, dtype=bool))

    def volume_mask(self) -> np.ndarray:
        """(Z, Y, X) bool: the last propagation, with the clicked slices' own masks on top."""
        with self._lock:
            out = np.zeros((self.volume.n_slices, *self.volume.plane_shape), dtype=bool)
            if self._propagation is not None:
                for z, m in self._propagation.masks.items():
                    out[z] = m
            for z, steps in self._steps.items():
                out[z] = steps[-1].mask
            return out

    # -- clicks
    def _check_point(self, y: Any, x: Any) -> tuple[float, float]:
        H, W = self.volume.plane_shape
        try:
            yf, xf = float(y), float(x)
        except (TypeError, ValueError):
            raise ValueError(f"click coordinates must be numbers, got ({y!r}, {x!r})") from None
        if not (np.isfinite(yf) and np.isfinite(xf)) or not (-0.5 <= yf < H - 0.5 and -0.5 <= xf < W - 0.5):
            raise ValueError(f"click (y={yf:g}, x={xf:g}) is outside the image of {H}x{W} pixels")
        return min(max(yf, 0.0), H - 1.0), min(max(xf, 0.0), W - 1.0)

    def _normalise(self, click: Sequence) -> tuple[int, float, float, bool]:
        if len(click) != 4:
            raise ValueError(f"a click is (z, y, x, positive), got {tuple(click)!r}")
        z, y, x, positive = click
        z = self.volume.check_z(z)
        y, x = self._check_point(y, x)
        return z, y, x, bool(positive)

    def _step(self, z: int, steps: list[_Step], click: Click) -> _Step:
        emb = self.session.store.get(z)  # computed on demand
        if emb.blank:
            if z not in self._warned_blank:
                log.warning("slice %d is blank (constant after contrast mapping): nothing to segment there", z)
                self._warned_blank.add(z)
            return _Step(click, None, None, _frozen(np.zeros(self.volume.plane_shape, dtype=bool)))
        prev = steps[-1] if steps else None
        res = self.session.predictor.step(
            emb, [s.click for s in steps] + [click],
            prev.logits if prev is not None else None, prev.refined if prev is not None else None,
        )
        return _Step(click, res.logits, res.refined, _frozen(res.mask))

    def _changed(self, z: int) -> None:
        """The clicks of slice ``z`` changed: its propagated mask (if any) is stale."""
        prop = self._propagation
        if prop is not None and z in prop.masks:  # a new result: the caller's copy stays as it was
            self._propagation = dataclasses.replace(prop, masks={k: m for k, m in prop.masks.items() if k != z})

    def add_click(self, y: float, x: float, positive: bool = True, z: int = 0) -> np.ndarray:
        """Add a click on slice ``z``; returns that slice's new (Y, X) bool mask."""
        z, y, x, positive = self._normalise((z, y, x, positive))
        self.session.store.get(z)  # a missing embedding is computed before taking the object's lock
        with self._lock:
            steps = self._steps.get(z, [])
            step = self._step(z, steps, Click(y, x, positive))
            self._steps[z] = steps + [step]
            self._order.append(z)
            self._changed(z)
            return step.mask

    def undo(self, z: int | None = None) -> np.ndarray:
        """Remove the last click (of slice ``z``, or the last one made); returns that slice's mask."""
        with self._lock:
            if z is None:
                if not self._order:
                    return self.mask(0)
                z = self._order[-1]
            z = self.volume.check_z(z)
            steps = self._steps.get(z)
            if not steps:
                return self.mask(z)
            steps.pop()
            if not steps:
                del self._steps[z]
            idx = len(self._order) - 1 - self._order[::-1].index(z)
            del self._order[idx]
            self._changed(z)
            return self.mask(z)

    def reset(self) -> None:
        """Forget all clicks and the propagation."""
        with self._lock:
            self._steps.clear()
            self._order.clear()
            self._propagation = None
            self._runs.clear()

    def set_clicks(self, clicks: Iterable[Sequence]) -> dict[int, np.ndarray]:
        """Replace all clicks by ``clicks`` [(z, y, x, positive), ...], in order.

        Per slice, the clicks shared with the current list (same leading clicks) keep their
        state; only the difference is undone/added, so adding or removing the last click costs
        one decoder step. Returns slice -> new mask for the slices whose clicks changed
        (an empty mask for a slice that lost all its clicks). All clicks are validated
        before anything changes.
        """
        new = [self._normalise(c) for c in clicks]
        wanted: dict[int, list[Click]] = {}
        for z, y, x, p in new:
            wanted.setdefault(z, []).append(Click(y, x, p))
        changed: dict[int, np.ndarray] = {}
        with self._lock:
            todo = [z for z in wanted if [s.click for s in self._steps.get(z, [])] != wanted[z]]
        for z in todo:  # missing embeddings are computed before taking the object's lock
            self.session.store.get(z)
        with self._lock:
            try:
                for z in sorted(set(self._steps) | set(wanted)):
                    steps = list(self._steps.get(z, []))
                    want = wanted.get(z, [])
                    k = 0
                    while k < min(len(steps), len(want)) and steps[k].click == want[k]:
                        k += 1
                    if k == len(steps) == len(want):
                        continue
                    del steps[k:]
                    try:
                        for c in want[k:]:
                            steps.append(self._step(z, steps, c))
                    finally:
                        if steps:
                            self._steps[z] = steps
                        else:
                            self._steps.pop(z, None)
                        self._changed(z)
                    changed[z] = self.mask(z)
            finally:
                self._rebuild_order([z for z, *_ in new])
        return changed

    def _rebuild_order(self, preferred: list[int]) -> None:
        """Click order = ``preferred`` as far as the per-slice histories allow (after an error
        part-way through :meth:`set_clicks` the two may differ)."""
        left = {z: len(s) for z, s in self._steps.items()}
        order = []
        for z in preferred:
            if left.get(z, 0) > 0:
                order.append(z)
                left[z] -= 1
        for z, n in left.items():
            order.extend([z] * n)
        self._order = order

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
    ) -> PropagationResult:
        """Propagate slice by slice from the clicked slices (and ``z_start``) through the stack.

        Every clicked slice is a seed and keeps its own mask; runs go outward from the lowest
        and highest clicked slices ("down" = towards slice 0, "up" = towards the last slice)
        and fill the gaps between clicked slices from both ends. ``z_start``: an extra seed, a
        slice without clicks that holds a mask from the previous propagation (to continue from
        there); a clicked ``z_start`` changes nothing. A clicked slice whose mask is empty
        (e.g. only negative clicks) stops the propagation there. Embeddings missing on the way
        are computed. ``cancelled()`` is checked between slices; a cancelled run keeps (and
        returns) what it finished. The result also becomes :meth:`volume_mask`.

        Re-propagation after an edit reuses every run whose seed slice, extent and parameters
        did not change: a click on one slice only re-propagates the runs next to that slice.
        """
        with self._prop_lock:
            with self._lock:
                seeds = {z: (s[-1].mask, s[-1].logits) for z, s in self._steps.items()}
                tokens = {z: s[-1].serial for z, s in self._steps.items()}
                if z_start is not None:
                    z_start = self.volume.check_z(z_start)
                    if z_start not in seeds:
                        prev = self._propagation.masks.get(z_start) if self._propagation is not None else None
                        if prev is None or not prev.any():
                            raise ValueError(f"slice {z_start} has no clicks and no mask to propagate from: "
                                             "click on it first")
                        seeds[z_start] = (prev, None)
                        tokens[z_start] = ("propagated", id(prev))
                if not seeds:
                    raise ValueError("the object has no clicks yet: add a click first")
            # without the object's lock: mask() etc. stay responsive while this runs
            result = propagate(self.session.store, seeds, iou_threshold=iou_threshold, directions=directions,
                               progress=progress, cancelled=cancelled, prompt=prompt, multimask=multimask,
                               tokens=tokens, memo=self._runs)
            for m in result.masks.values():
                _frozen(m)
            with self._lock:
                # slices whose clicks changed while this ran: their propagated masks are stale
                current = {z: s[-1].serial for z, s in self._steps.items()}
                used = {z: t for z, t in tokens.items() if not isinstance(t, tuple)}
                for z in set(used) | set(current):
                    if used.get(z) != current.get(z):
                        result.masks.pop(z, None)
                self._propagation = result
            return result


class Session:
    """An image (or stack), a model and the objects being segmented on it.

    model: a registry name ("vit_t", ...), a checkpoint path or a loaded :class:`FocSAM`
    (left on its device unless ``device`` names one); ``predictor`` overrides both.
    cache_dir: optional folder for the on-disk embedding cache (see :class:`EmbeddingStore`).
    """

    def __init__(self, vol: ImageVolume | Any, model: str | Path | FocSAM = DEFAULT_MODEL, *,
                 device: str = "auto", refine: bool = True, cache_dir: str | Path | None = None,
                 predictor: FocSAMPredictor | None = None, max_memory_bytes: int = 512 * 2**20) -> None:
        if not isinstance(vol, ImageVolume):
            vol = ImageVolume(vol)
        if predictor is None:
            if isinstance(model, FocSAM):
                net = model if str(device) == "auto" else model.to(resolve_device(device))
            else:
                from .models import load_model

                net = load_model(model, device)
            predictor = FocSAMPredictor(net, refine=refine)
        self.volume = vol
        self.predictor = predictor
        self.store = EmbeddingStore(predictor, vol, cache_dir=cache_dir, max_memory_bytes=max_memory_bytes)
        self._objects: list[SegmentedObject] = []
        self._next_id = 1
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Session({self.volume!r}, model={getattr(self.predictor.model, 'model_type', '?')}, objects={len(self._objects)})"

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
        with self._lock:
            if obj not in self._objects:
                raise ValueError(f"{obj!r} does not belong to this session")
            self._objects.remove(obj)
