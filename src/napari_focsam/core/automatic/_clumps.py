"""Telling a clump of touching objects from one object, by the shape of its mask (no torch).

SAM-style decoders often return one mask for two or three touching nuclei. Such a mask has
several maxima of its distance transform (the objects' centres) with a narrow neck between
them; one elongated or irregular object has a ridge without a marked neck. :func:`clump_centres`
returns the centres when there is such a neck, so that :mod:`~napari_focsam.core.automatic._segment_all` can prompt each centre
on its own (the other centres as negative points) and let the decoder draw the parts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["NECK_RATIO", "clump_centres"]

#: Two centres are separate objects when the distance transform along the segment joining them
#: falls below this fraction of the lower of their two maxima.
NECK_RATIO = 0.6
#: At most this many parts per clump.
MAX_PARTS = 6


def _segment_min(dist: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    n = int(np.ceil(np.hypot(*(b - a)))) + 1
    ys = np.rint(np.linspace(a[0], b[0], n)).astype(int)
    xs = np.rint(np.linspace(a[1], b[1], n)).astype(int)
    return float(dist[ys, xs].min())


def clump_centres(mask: np.ndarray, neck_ratio: float = NECK_RATIO, min_radius: float = 2.0) -> np.ndarray:
    """(K, 2) (y, x) centres of the objects of a clump mask, or (0, 2) when it looks like one object.

    The centres are local maxima of the mask's distance transform (at least ``min_radius``
    pixels deep, taken deepest first and at least their own depth apart); a centre is kept when
    every kept centre is separated from it by a neck (see :data:`NECK_RATIO`).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 8:
        return np.zeros((0, 2), dtype=int)
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    peaks = (dist == ndi.maximum_filter(dist, size=3)) & (dist >= min_radius)
    ys, xs = np.nonzero(peaks)
    if len(ys) < 2:
        return np.zeros((0, 2), dtype=int)
    order = np.argsort(-dist[ys, xs], kind="stable")
    kept: list[np.ndarray] = []
    for k in order:
        p = np.array([ys[k], xs[k]])
        depth = dist[ys[k], xs[k]]
        ok = True
        for q in kept:
            if np.hypot(*(p - q)) < max(depth, dist[q[0], q[1]]):
                ok = False  # on the same plateau or ridge
                break
            if _segment_min(dist, p, q) >= neck_ratio * min(depth, dist[q[0], q[1]]):
                ok = False  # no neck between them: one object
                break
        if ok:
            kept.append(p)
            if len(kept) == MAX_PARTS:
                break
    return np.array(kept, dtype=int).reshape(-1, 2) if len(kept) >= 2 else np.zeros((0, 2), dtype=int)
