"""Stacks in time: (T, Y, X) and (T, Z, Y, X) images segmented frame by frame.

An object is followed through time with the same slice-by-slice propagation as through z,
so a (T, Y, X) movie is one :class:`~napari_focsam.core.session.Session` whose "slices" are the frames: every
object keeps its id in every frame, corrections on any frame are anchors
(:mod:`~napari_focsam.core.propagation._anchors`), and a negative click at an object's centre ends its track there.

A (T, Z, Y, X) movie is one session per frame (each frame a z-stack). An object is a 3D
object in each frame; it is carried from frame t to t + 1 through its largest section: that
plane of frame t + 1 is decoded from frame t's mask there (:func:`~napari_focsam.core.propagation.next_slice`, the
same step and stop rule as along z: the object vanished, or its IoU with frame t fell below
``iou_threshold``), and frame t + 1's object is then propagated through z from a click at the
interior point of that mask.

A division (one object becoming two) is one click: :meth:`TimeLapse.split` on one daughter
in the first frame where the two are apart ends the parent's track in the frame before, and
starts two new objects there, the clicked daughter and the rest of the parent's mask in that
frame; both are followed forwards only. Their ``parent`` is recorded for the tracks table.

Labels are painted in object id order and never overlap: a pixel already taken by an object
painted earlier stays with it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from scipy import ndimage as ndi

from ..defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD
from ..prompting import mask_iou
from ..propagation import MIN_MASK_PIXELS, interior_point, next_slice, prior_prompt

__all__ = ["AXES", "TimeLapse", "Track", "check_axes", "tracks_table", "write_tracks_csv"]

#: The axis orders a time-lapse may have (``--axes``; napari's axis labels give the same).
AXES = ("tyx", "tzyx")
#: Columns of the tracks table (:func:`tracks_table`); ``z`` only for (T, Z, Y, X).
TRACK_COLUMNS = ("object_id", "t", "z", "y", "x", "area", "parent_id")


def check_axes(axes: str, shape: tuple[int, ...]) -> str:
    """``axes`` in lower case, checked against the image ``shape``.

    Raises
    ------
    ValueError
        When ``axes`` is not one of :data:`AXES` or does not match the number of dimensions.
    """
    ax = str(axes).lower()
    if ax not in AXES:
        raise ValueError(f"axes {axes!r} is not a time-lapse order: use one of {', '.join(AXES)}")
    if len(shape) != len(ax):
        raise ValueError(f"axes {ax!r} needs a {len(ax)}D image, got shape {tuple(shape)}")
    return ax


@dataclass
class Track:
    """One object through time.

    id: its label id; parent: the id of the object it divided from (None for a root);
    first: the frame it was started on; forward_only: it is followed forwards only (a
    daughter of a division).
    """

    id: int
    parent: int | None
    first: int
    forward_only: bool = False


class TimeLapse:
    """Objects followed through the frames of a (T, Y, X) or (T, Z, Y, X) image.

    Parameters
    ----------
    image : array, (T, Y, X) or (T, Z, Y, X)
        The movie (gray; any dtype :class:`~napari_focsam.core.images.ImageVolume` takes).
    model : str, Path or FocSAM
        As for :class:`~napari_focsam.core.session.Session`; a loaded model is shared by every frame.
    axes : str
        ``"tyx"`` or ``"tzyx"`` (:data:`AXES`).
    session_factory : callable, optional
        ``session_factory(array) -> Session``; by default ``Session(array, model, cache_dir=cache_dir)``.
    cache_dir : str or Path, optional
        The embedding cache folder.
    """

    def __init__(self, image: Any, model: Any = None, *, axes: str = "tyx",
                 session_factory: Callable[[Any], Any] | None = None, cache_dir: str | Path | None = None) -> None:
        self.axes = check_axes(axes, tuple(np.shape(image)))
        if session_factory is None:
            from ._session import Session

            def session_factory(arr):
                return Session(arr, model, cache_dir=cache_dir) if model is not None else Session(arr, cache_dir=cache_dir)
        self.image = image
        self.n_frames = int(np.shape(image)[0])
        if self.axes == "tyx":
            self._session = session_factory(image)
            self._frames: list[Any] = []
        else:
            self._session = None
            self._frames = [session_factory(image[t]) for t in range(self.n_frames)]
        self.tracks: dict[int, Track] = {}
        self._objects: dict[int, Any] = {}  # tyx: id -> SegmentedObject; tzyx: id -> {t: SegmentedObject}
        self._next_id = 1

    # -- objects
    @property
    def is_4d(self) -> bool:
        return self.axes == "tzyx"

    def frame_session(self, t: int):
        """The session of frame ``t`` (tzyx) or the movie's one session (tyx)."""
        return self._frames[self._check_t(t)] if self.is_4d else self._session

    def _check_t(self, t: Any) -> int:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"frame t must be an integer, got {t!r}")
        if not 0 <= int(t) < self.n_frames:
            raise ValueError(f"frame {t} is outside the movie (0..{self.n_frames - 1})")
        return int(t)

    def _check_id(self, object_id: int) -> int:
        if object_id not in self.tracks:
            raise KeyError(f"no object {object_id}: the objects are {sorted(self.tracks)}")
        return object_id

    def _frame_object(self, object_id: int, t: int):
        """tzyx: the object's SegmentedObject of frame ``t``, made on first use."""
        per = self._objects[object_id]
        if t not in per:
            per[t] = self._frames[t].new_object()
        return per[t]

    def add_object(self, t: int, y: float, x: float, z: int | None = None, *, parent: int | None = None,
                   forward_only: bool = False) -> int:
        """Start a new object with a positive click on frame ``t`` (slice ``z`` of a 4D movie);
        returns its id. New objects can be added on any frame, at any time."""
        t = self._check_t(t)
        if self.is_4d and z is None:
            raise ValueError("a (T, Z, Y, X) movie needs the slice z of the click")
        session = self.frame_session(t)
        obj = session.new_object()
        try:
            obj.add_click(y, x, True, z=z if self.is_4d else t)
        except Exception:
            session.remove_object(obj)
            raise
        oid = self._next_id
        self._next_id += 1
        self.tracks[oid] = Track(oid, parent, t, forward_only)
        self._objects[oid] = {t: obj} if self.is_4d else obj
        return oid

    def add_click(self, object_id: int, t: int, y: float, x: float, positive: bool = True,
                  z: int | None = None) -> np.ndarray:
        """A correction of object ``object_id`` on frame ``t`` (any frame; see :mod:`~napari_focsam.core.propagation._anchors`).
        Returns that frame's (Y, X) mask (of slice ``z`` for a 4D movie)."""
        self._check_id(object_id)
        t = self._check_t(t)
        if self.is_4d:
            if z is None:
                raise ValueError("a (T, Z, Y, X) movie needs the slice z of the click")
            return self._frame_object(object_id, t).add_click(y, x, positive, z=z)
        return self._objects[object_id].add_click(y, x, positive, z=t)

    def mask(self, object_id: int, t: int) -> np.ndarray:
        """(Y, X) or (Z, Y, X) bool mask of the object in frame ``t`` (empty where it is absent)."""
        self._check_id(object_id)
        t = self._check_t(t)
        if self.is_4d:
            obj = self._objects[object_id].get(t)
            vol = self._frames[t].volume
            if obj is None:
                return np.zeros((vol.n_slices, *vol.plane_shape), dtype=bool)
            return obj.volume_mask()
        return np.asarray(self._objects[object_id].mask(t), dtype=bool)

    # -- propagation through time
    def propagate(self, object_ids: Iterable[int] | None = None, *, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                  edge_fade: float | None = DEFAULT_EDGE_FADE, progress: Callable[[int, int], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> dict[int, tuple[int, int]]:
        """Follow objects (all by default) through the frames; returns id -> (first, last) frame.

        On a (T, Y, X) movie this is each object's :meth:`~napari_focsam.core.session.SegmentedObject.propagate`
        along t (a re-propagation reuses every run an edit did not touch). ``progress(done,
        total)`` counts objects; ``cancelled()`` is checked between objects and frames. The stop
        rules (``iou_threshold``, ``edge_fade``) are those of ``SegmentedObject.propagate``, along t
        and, in a (T, Z, Y, X) movie, along z in each frame.
        """
        stops = {"iou_threshold": iou_threshold, "edge_fade": edge_fade}
        ids = sorted(self.tracks) if object_ids is None else [self._check_id(i) for i in object_ids]
        out = {}
        for k, oid in enumerate(ids):
            if cancelled is not None and cancelled():
                break
            directions = ("up",) if self.tracks[oid].forward_only else ("down", "up")
            if self.is_4d:
                out[oid] = self._propagate_4d(oid, directions, stops, cancelled)
            else:
                res = self._objects[oid].propagate(**stops, directions=directions, cancelled=cancelled, vote=False)
                out[oid] = tuple(res.z_range)
            if progress is not None:
                progress(k + 1, len(ids))
        return out

    def _propagate_4d(self, oid: int, directions: tuple[str, ...], stops: dict,
                      cancelled: Callable[[], bool] | None) -> tuple[int, int]:
        per = self._objects[oid]
        clicked = sorted(t for t, o in per.items() if o.clicks)
        for t in clicked:
            per[t].propagate(**stops, cancelled=cancelled)
        for t in list(per):  # frames reached by an earlier propagation and not clicked: redone
            if t not in clicked:
                self._frames[t].remove_object(per.pop(t))
        first, last = clicked[0], clicked[-1]
        walks = [(-1, clicked[0])] if "down" in directions else []
        walks += [(+1, c) for c in clicked] if "up" in directions else []
        for step, start in walks:
            t = start
            while 0 <= t + step < self.n_frames and (t + step) not in per:
                if cancelled is not None and cancelled():
                    break
                nxt = self._carry(per[t], t, t + step, stops)
                if nxt is None:
                    break
                t += step
                per[t] = nxt
                first, last = min(first, t), max(last, t)
        return first, last

    def _carry(self, obj, t: int, t_next: int, stops: dict):
        """Frame ``t_next``'s object from ``obj`` of frame ``t`` (see the module docs), or None
        where the object ends. ``stops``: the stop rules' settings of ``propagate``."""
        vol = obj.volume_mask()
        areas = vol.sum(axis=(1, 2))
        if not areas.any():
            return None
        z = int(np.argmax(areas))
        session = self._frames[t_next]
        emb = session.store.get(z)
        if getattr(emb, "blank", False):
            return None
        mask, _ = next_slice(session.predictor, emb, vol[z], None)
        if mask.sum() < MIN_MASK_PIXELS or mask_iou(vol[z], mask) < stops["iou_threshold"]:
            return None
        y, x = interior_point(mask)
        new = session.new_object()
        new.add_click(y, x, True, z=z)
        new.propagate(**stops)
        return new

    # -- divisions
    def split(self, object_id: int, t: int, y: float, x: float, z: int | None = None) -> tuple[int, int]:
        """A division in one click: object ``object_id`` became two in frame ``t``; ``(y, x)``
        (slice ``z`` of a 4D movie) is on one daughter. Ends the parent's track at ``t - 1`` and
        starts two objects on frame ``t`` (the clicked daughter, and the parent's mask there
        without it), followed forwards only. Call :meth:`propagate` afterwards. Returns the
        daughters' ids.

        Raises
        ------
        ValueError
            When the object has no mask on frame ``t`` (propagate it first), the click is not
            on it, or nothing of it is left beside the clicked daughter.
        """
        self._check_id(object_id)
        t = self._check_t(t)
        if self.tracks[object_id].first >= t:
            raise ValueError(f"object {object_id} starts on frame {self.tracks[object_id].first}: "
                             f"a division splits it on a later frame")
        if self.is_4d and z is None:
            raise ValueError("a (T, Z, Y, X) movie needs the slice z of the click")
        plane = self._plane(object_id, t, z)
        if not plane.any():  # the track stopped at the division: what it would have been there
            before = self._plane(object_id, t - 1, z)
            if before.any():
                session = self.frame_session(t)
                emb = session.store.get(z if self.is_4d else t)
                plane, _ = next_slice(session.predictor, emb, before, None)
        if not plane.any():
            raise ValueError(f"object {object_id} has no mask on frame {t} or {t - 1}: propagate it first, or "
                             "click its daughters as new objects")
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < plane.shape[0] and 0 <= ix < plane.shape[1]) or not plane[iy, ix]:
            raise ValueError(f"the click ({y}, {x}) on frame {t} is not on object {object_id}: click one daughter "
                             "inside the dividing object")
        # the parent ends at t - 1: a negative click at the centre of its mask on frame t
        if self.is_4d:
            per = self._objects[object_id]
            for k in [k for k in per if k >= t]:
                self._frames[k].remove_object(per.pop(k))
        else:
            centre = prior_prompt(plane)[0]
            self._objects[object_id].add_click(centre.y, centre.x, False, z=t)
        a = self.add_object(t, y, x, z, parent=object_id, forward_only=True)
        first = self.mask(a, t)
        first = first[z] if self.is_4d else first
        rest = plane & ~ndi.binary_dilation(first, iterations=1)
        lab, n = ndi.label(rest)
        if n == 0:
            raise ValueError(f"the clicked daughter covers all of object {object_id} on frame {t}: click "
                             "nearer the middle of one daughter")
        sizes = np.bincount(lab.ravel())[1:]
        ry, rx = interior_point(lab == 1 + int(np.argmax(sizes)))
        b = self.add_object(t, ry, rx, z, parent=object_id, forward_only=True)
        return a, b

    def _plane(self, object_id: int, t: int, z: int | None) -> np.ndarray:
        whole = self.mask(object_id, t)
        return np.asarray(whole[z] if self.is_4d else whole, dtype=bool)

    # -- outputs
    def labels(self, dtype: Any = np.uint32) -> np.ndarray:
        """The labels stack, (T, Y, X) or (T, Z, Y, X): each object with its id in every frame,
        painted in id order without overlaps (an earlier object keeps a contested pixel)."""
        shape = np.shape(self.image)
        out = np.zeros(shape, dtype=dtype)
        for oid in sorted(self.tracks):
            for t in range(self.n_frames):
                m = self.mask(oid, t)
                if m.any():
                    out[t][m & (out[t] == 0)] = oid
        return out

    def close(self) -> None:
        """Release every frame's session (embeddings, objects)."""
        for s in ([self._session] if self._session is not None else self._frames):
            s.close()


def tracks_table(labels: np.ndarray, parents: dict[int, int | None] | None = None) -> list[dict]:
    """One row per object and frame of a (T, Y, X) or (T, Z, Y, X) labels stack.

    Returns dicts with :data:`TRACK_COLUMNS`: ``object_id``, ``t``, the centroid (``z`` None
    for a (T, Y, X) stack; pixel coordinates), ``area`` (pixels or voxels) and ``parent_id``
    (from ``parents``, None for a root).
    """
    parents = parents or {}
    rows = []
    for t in range(labels.shape[0]):
        frame = labels[t]
        ids = np.unique(frame)
        ids = ids[ids > 0]
        if not ids.size:
            continue
        centres = ndi.center_of_mass(np.ones(frame.shape), frame, ids)
        areas = ndi.sum_labels(np.ones(frame.shape), frame, ids)
        for i, c, a in zip(ids.tolist(), centres, areas):
            z = float(c[0]) if frame.ndim == 3 else None
            rows.append({"object_id": int(i), "t": t, "z": z, "y": float(c[-2]), "x": float(c[-1]),
                         "area": int(a), "parent_id": parents.get(int(i))})
    return rows


def write_tracks_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write :func:`tracks_table` rows as CSV (``z`` left out when every row has None); returns the path."""
    path = Path(path)
    cols = [c for c in TRACK_COLUMNS if c != "z" or any(r["z"] is not None for r in rows)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r[c] is None else (f"{r[c]:.2f}" if isinstance(r[c], float) else r[c]) for c in cols])
    return path
