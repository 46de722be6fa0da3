"""Prompts beyond single clicks, for the widget: a box with clicks, many objects at once, and
writing several new objects into a labels array (no Qt, no torch import).

* :func:`set_prompts` brings a :class:`~napari_focsam.core.session._session.SegmentedObject` to a box
  (on one slice) plus clicks, redoing only what changed.
* :func:`batch_groups`: in the many-objects mode every positive click is its own object and the
  negative clicks are shared by the objects of their slice.
* :func:`plan_many` and :func:`plan_new_labels`: which pixels of a labels array get which new
  ids, with ids above the current maximum and (without ``overwrite``) background pixels only;
  the caller writes them with one ``Labels.data_setitem`` call (one undo step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..prompting import Prompts, checked_box
from ._paste import PasteError, label_limit, next_label

__all__ = ["ManyPaste", "batch_groups", "plan_many", "plan_new_labels", "set_prompts"]

#: (z, y, x, positive) in image pixels
Click = tuple[int, float, float, bool]


@dataclass(frozen=True)
class ManyPaste:
    """Several objects to write at once.

    Attributes
    ----------
    index : tuple of numpy.ndarray
        Integer index arrays (one per axis) of the pixels to write.
    values : numpy.ndarray
        (n_pixels,) the id of each pixel.
    ids : tuple of int
        The new ids, in order (consecutive, above the array's largest label).
    """

    index: tuple[np.ndarray, ...]
    values: np.ndarray
    ids: tuple[int, ...]

    @property
    def label(self) -> int:
        """The last new id (as :attr:`~napari_focsam.core.editing._paste.Paste.label`)."""
        return self.ids[-1]


def set_prompts(obj: Any, prompts: Prompts | Sequence[Click], box: tuple[int, Sequence[float]] | None = None, *,
                region: bool = False) -> dict[int, Any]:
    """Set ``obj``'s prompts to ``prompts`` (a :class:`~napari_focsam.core.prompting.Prompts`, or
    the clicks with ``box``: (z, (y0, x0, y1, x1)) or None).

    A changed box restarts the object (box first, then the clicks replayed on it); an unchanged
    one keeps the object's state and only the clicks' difference is decoded. Returns
    ``{z: (Y, X) bool}`` of the slices that changed, or with ``region=True``
    ``{z: MaskRegion}`` (no full-size plane is made: what the widget uses on large images).
    ValueError (from the session) for a degenerate box or a click on another slice than the box.
    """
    if not isinstance(prompts, Prompts):
        prompts = Prompts.of(prompts, box)
    clicks, want = prompts.clicks, prompts.box
    have = obj.box
    if want is not None:  # checked before anything changes
        obj.volume.check_z(want[0])
        checked_box(want[1], obj.volume.plane_shape)
        other = sorted({int(c[0]) for c in clicks} - {want[0]})
        if other:
            raise ValueError(f"the box is on slice {want[0]} and click(s) on slice(s) {other}: a box and its "
                             f"clicks belong to one slice; move to slice {want[0]}, or clear (Shift+C)")
    changed: dict[int, np.ndarray] = {}
    if (None if have is None else (have[0], tuple(float(v) for v in have[1]))) != want:
        old = set(obj.slices_with_clicks)
        obj.reset()
        changed.update({z: (obj.mask_region(z) if region else np.zeros(obj.volume.plane_shape, bool))
                        for z in old})
        if want is not None:
            out = obj.set_box(want[1], want[0], region=region)
            changed[want[0]] = out if region else np.asarray(out)
    changed.update(obj.set_clicks(list(clicks), region=region))
    return changed


def batch_groups(clicks: Sequence[Click]) -> list[list[Click]]:
    """One group per positive click: that click plus every negative click of its slice.

    >>> batch_groups([(0, 1, 1, True), (0, 5, 5, False), (0, 9, 9, True), (1, 3, 3, False)])
    [[(0, 1, 1, True), (0, 5, 5, False)], [(0, 9, 9, True), (0, 5, 5, False)]]
    """
    negatives: dict[int, list[Click]] = {}
    for c in clicks:
        if not c[3]:
            negatives.setdefault(int(c[0]), []).append(c)
    return [[c, *negatives.get(int(c[0]), [])] for c in clicks if c[3]]


def _plan(labels: np.ndarray, new: np.ndarray, n: int, overwrite: bool, base: int | None = None) -> ManyPaste:
    """``new`` holds object numbers 1..n (0: nothing) on ``labels``' grid; ids start above ``base``."""
    if not n or not new.any():
        raise PasteError("empty", "no object to write")
    base = next_label(labels) - 1 if base is None else base
    if base + n > label_limit(labels.dtype):
        raise PasteError("full", f"no room for {n} new ids in a {np.dtype(labels.dtype)} labels array")
    write = new > 0
    if not overwrite:
        write &= np.asarray(labels) == 0
    index = np.nonzero(write)
    if not index[0].size:
        raise PasteError("occupied", "the objects lie entirely on existing labels")
    used = np.unique(new[index])  # objects that kept at least one pixel, ids without gaps
    remap = np.zeros(n + 1, np.int64)
    remap[used] = base + 1 + np.arange(used.size)
    values = remap[new[index]].astype(labels.dtype if np.issubdtype(labels.dtype, np.integer) else np.int64)
    return ManyPaste(index, values, tuple(int(base + 1 + k) for k in range(used.size)))


def plan_many(labels: np.ndarray, masks: Sequence[np.ndarray], *, overwrite: bool = False) -> ManyPaste:
    """New ids for several objects (``masks``: bool arrays of ``labels``' shape, in order).

    Where objects overlap, the earlier one keeps the pixel; an object left with no pixel gets
    no id. PasteError as :func:`~napari_focsam.core.editing._paste.plan_paste` (``empty``, ``shape``, ``full``, ``occupied``).
    """
    new = np.zeros(labels.shape, np.int64)
    for k, m in enumerate(masks, start=1):
        m = np.asarray(m, bool)
        if m.shape != tuple(labels.shape):
            raise PasteError("shape", f"labels shape {tuple(labels.shape)} differs from the object's {m.shape}")
        new[m & (new == 0)] = k
    return _plan(labels, new, len(masks), overwrite)


def plan_new_labels(labels: np.ndarray, new: np.ndarray, *, z: int | None = None,
                    overwrite: bool = False) -> ManyPaste:
    """Write a labels image ``new`` (0 = background, any ids) into ``labels`` on new ids.

    Parameters
    ----------
    labels : numpy.ndarray
        (Y, X) or (Z, Y, X) integer labels; not modified.
    new : numpy.ndarray
        (Y, X) labels to add: ``labels``' shape, or one plane of a stack with ``z`` given.
    z : int, optional
        The slice of a (Z, Y, X) ``labels`` that ``new`` is written to.
    overwrite : bool
        False: only background (0) pixels are written.

    Returns
    -------
    ManyPaste
        Ids renumbered consecutively above ``labels``' largest label (over the whole stack).
    """
    new = np.asarray(new)
    target = labels if z is None else labels[int(z)]
    if new.shape != tuple(target.shape):
        raise PasteError("shape", f"labels shape {tuple(target.shape)} differs from the result's {new.shape}")
    ids, inverse = np.unique(new, return_inverse=True)
    inverse = inverse.reshape(new.shape)
    n = int(ids.size - (1 if ids[0] == 0 else 0))
    numbered = inverse if ids[0] == 0 else inverse + 1
    paste = _plan(np.asarray(target), numbered, n, overwrite, base=next_label(labels) - 1)
    if z is None:
        return paste
    index = (np.full(paste.index[0].shape, int(z), np.intp), *paste.index)
    return ManyPaste(index, paste.values, paste.ids)
