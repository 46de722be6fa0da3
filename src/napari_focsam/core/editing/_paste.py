"""Committing an object into a labels array: which id, which pixels, or why not.

The arithmetic of the widget's Commit, kept Qt-free: the new id is one more than the largest
label (1 for an empty array), it must fit the array's dtype, and without ``overwrite`` only
background (0) pixels are written. ``z_range`` limits a 3D commit to the slices a propagation
reached. The caller writes the pixels (napari's ``Labels.data_setitem`` makes it one undo step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Paste", "PasteError", "label_limit", "next_label", "plan_paste"]


@dataclass(frozen=True)
class Paste:
    """Where to write an object and with which id.

    Attributes
    ----------
    index : tuple of numpy.ndarray
        Integer index arrays (one per axis, as from ``numpy.nonzero``) of the pixels to write.
    label : int
        The new object's id.
    """

    index: tuple[np.ndarray, ...]
    label: int

    @property
    def size(self) -> int:
        """Number of pixels written."""
        return int(self.index[0].size) if self.index else 0


class PasteError(ValueError):
    """Why an object cannot be committed; ``reason`` is one of
    ``"empty"``, ``"shape"``, ``"full"``, ``"occupied"``, ``"covered"``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def next_label(labels: np.ndarray) -> int:
    """The next free id: the largest label plus one (1 for an empty or all-zero array)."""
    return int(np.max(labels)) + 1 if labels.size else 1


def label_limit(dtype: np.dtype) -> int:
    """The largest id an array of ``dtype`` can hold (2**31 for non-integer arrays)."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 2**31


def plan_paste(labels: np.ndarray, mask: np.ndarray, *, overwrite: bool = False,
               z_range: tuple[int, int] | None = None) -> Paste:
    """Which pixels of ``labels`` a commit of ``mask`` writes, and with which id.

    Parameters
    ----------
    labels : numpy.ndarray
        The labels array, (Y, X) or (Z, Y, X) integers; not modified.
    mask : numpy.ndarray
        The object, bool, same shape as ``labels``.
    overwrite : bool
        False: only background (0) pixels of ``labels`` are written.
    z_range : tuple of int, optional
        First and last slice (inclusive) of a 3D commit; the mask outside is ignored.

    Returns
    -------
    Paste
        The pixels and the new id (:func:`next_label`).

    Raises
    ------
    PasteError
        ``empty`` (no pixels), ``shape`` (shapes differ), ``full`` (no free id in the dtype),
        ``occupied`` (every pixel is labelled already and ``overwrite`` is off).
    """
    mask = np.asarray(mask, bool)
    if tuple(labels.shape) != tuple(mask.shape):
        raise PasteError("shape", f"labels shape {tuple(labels.shape)} differs from the object's "
                                  f"{tuple(mask.shape)}")
    if z_range is not None:
        if mask.ndim != 3:
            raise PasteError("shape", f"z_range needs a 3D object, not {mask.ndim}D")
        z0, z1 = (int(z) for z in z_range)
        limited = np.zeros_like(mask)
        limited[max(z0, 0): z1 + 1] = mask[max(z0, 0): z1 + 1]
        mask = limited
    if not mask.any():
        raise PasteError("empty", "the object is empty")
    new_id = next_label(labels)
    if new_id > label_limit(labels.dtype):
        raise PasteError("full", f"no free id left in a {np.dtype(labels.dtype)} labels array")
    index = np.nonzero(mask)
    if not overwrite:
        free = np.asarray(labels[index]) == 0
        index = tuple(a[free] for a in index)
        if not index[0].size:
            raise PasteError("occupied", "the object lies entirely on existing labels")
    return Paste(index, new_id)
