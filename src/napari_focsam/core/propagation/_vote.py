"""The vote between slices: each propagated slice's mask kept where two of three slices agree.

Each slice of a propagated object is decoded on its own, so its outline wobbles around the
object's surface from slice to slice: a bulge one slice draws and its neighbours do not, a
notch only one slice has. After a propagation each slice that was not clicked keeps the pixels
that at least two of slices z - 1, z and z + 1 have (:func:`vote_three`). Where the object's
outline moves steadily from slice to slice (a smooth surface, sampled finely enough) the vote
keeps the slice as it is; it removes what one slice alone draws and fills what one slice alone
misses. The clicked slices keep their masks (what the user drew), and the vote never extends an
object past its ends: an end slice keeps what it shares with its inner neighbour.

Where a stack samples an object coarsely (thin sections of thick EM, an object running
obliquely through the slices) consecutive sections differ for real, and the vote would trim the
object. So it runs only on objects whose masks overlap in place from slice to slice at least
:data:`VOTE_MIN_OVERLAP` (median over consecutive slices, :func:`sections_overlap`). Applied to
the labels themselves of the four 3D sets of ``../shared/data/micro`` (every object spanning 3
slices or more), the vote cost objects whose consecutive sections overlap at 0.6-0.7 8 % of
their IoU on average, at 0.7-0.9 2-3 %, above 0.9 1 %. Its effect on the 3D correction protocol
is in ``docs/microscopy``.

Both propagations use it: :func:`vote_slices` and :func:`sections_overlap` take slice -> (Y, X)
plane, :func:`vote_regions` and :func:`regions_overlap` slice -> :class:`MaskRegion` (the tiled
propagation's masks, never a whole plane). Not for the frames of a time-lapse: objects move from
one frame to the next.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..prompting import MaskRegion, mask_iou, region_bbox, region_iou, trimmed

__all__ = ["VOTE_MIN_OVERLAP", "regions_overlap", "sections_overlap", "vote_regions", "vote_slices", "vote_three"]

#: An object is voted only when its consecutive masks overlap at least this much (the median
#: IoU in place, :func:`sections_overlap`); see the module docs.
VOTE_MIN_OVERLAP = 0.7


def vote_three(mask: np.ndarray, below: np.ndarray | None, above: np.ndarray | None) -> np.ndarray:
    """The pixels of (H, W) bool ``mask`` that at least two of ``below``, ``mask``, ``above``
    have (all aligned); a missing neighbour (None) counts as empty, so with one neighbour this
    is ``mask & neighbour`` and with none the mask itself."""
    if below is None and above is None:
        return mask
    if below is None or above is None:
        return mask & (above if below is None else below)
    return (mask & (below | above)) | (below & above)


def vote_slices(masks: Mapping[int, np.ndarray], keep: Iterable[int] = ()) -> dict[int, np.ndarray]:
    """Each (Y, X) bool mask of ``masks`` (slice -> mask) not in ``keep``, voted with its
    neighbours (:func:`vote_three`); the masks of ``keep`` (the clicked slices) are returned as
    they are. Slices without a mask get none. Returns a new dict; the arrays of ``masks`` are
    not changed (the vote reads the masks as decoded, not as already voted)."""
    keep = set(keep)
    out = {}
    for z, m in masks.items():
        below, above = masks.get(z - 1), masks.get(z + 1)
        out[z] = m if z in keep else vote_three(m, below, above)
    return out


def sections_overlap(masks: Mapping[int, np.ndarray]) -> float:
    """The median IoU, in place, of the object's (Y, X) bool masks on consecutive slices; 0.0
    with fewer than two consecutive non-empty masks. Near 1 where a section barely changes from
    slice to slice; low where sections shift or change shape between slices."""
    zs = sorted(z for z, m in masks.items() if m.any())
    pairs = [mask_iou(masks[a], masks[b]) for a, b in zip(zs, zs[1:]) if b == a + 1]
    return float(np.median(pairs)) if pairs else 0.0


def _aligned(regions: list[MaskRegion | None]) -> tuple[int, int, list[np.ndarray | None]]:
    """The regions (None stays None) pasted into their common bounding box: (y0, x0, arrays)."""
    boxes = [region_bbox(r) for r in regions if r is not None]
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return 0, 0, [None if r is None else np.zeros((0, 0), bool) for r in regions]
    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    out: list[np.ndarray | None] = []
    for r in regions:
        if r is None:
            out.append(None)
            continue
        a = np.zeros((y1 - y0, x1 - x0), bool)
        b = region_bbox(r)
        if b is not None:
            a[b[0] - y0:b[1] - y0, b[2] - x0:b[3] - x0] = r.crop
        out.append(a)
    return y0, x0, out


def vote_regions(regions: Mapping[int, MaskRegion], keep: Iterable[int] = ()) -> dict[int, MaskRegion]:
    """:func:`vote_slices` on slice -> :class:`MaskRegion` (each vote in the bounding box of the
    three slices' regions: nothing of a plane's size)."""
    keep = set(keep)
    out = {}
    for z, r in regions.items():
        below, above = regions.get(z - 1), regions.get(z + 1)
        if z in keep or (below is None and above is None):
            out[z] = r
            continue
        y0, x0, (m, lo, hi) = _aligned([r, below, above])
        out[z] = trimmed(y0, x0, vote_three(m, lo, hi))
    return out


def regions_overlap(regions: Mapping[int, MaskRegion]) -> float:
    """:func:`sections_overlap` on slice -> :class:`MaskRegion`."""
    zs = sorted(z for z, r in regions.items() if np.any(r.crop))
    pairs = [region_iou(regions[a], regions[b]) for a, b in zip(zs, zs[1:]) if b == a + 1]
    return float(np.median(pairs)) if pairs else 0.0
