"""Masks as regions: a full-resolution offset and a bool crop around the object.

On a large image an object's mask is kept and handed out as a :class:`MaskRegion`
``(y0, x0, crop)``: ``crop`` is the (h, w) bool array of the object's bounding box and
``(y0, x0)`` its top-left pixel in the full-resolution plane, so no full-size array is made per
click. :func:`region_to_plane` materialises the plane when asked.

:func:`tile_logits_values` and :func:`values_to_region` turn the decoder's 256 x 256 logits of
one tile into such a region: the same post-processing as a plain image (bilinear to the 1024
canvas, crop the tile's input size, bilinear to the tile's size, computed only around the
object: :func:`~napari_focsam.modeling.mask_resize.resize_matrix`), then, for a tile of a
coarser level, a bilinear upsampling by the level's factor to full resolution (in bands of at
most ``UPSAMPLE_BAND_PIXELS`` output pixels), then ``> 0``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...modeling.focsam import FocSAM
from ...modeling.mask_resize import logits_read, outputs_reading, resize_matrix, support_ranges

__all__ = [
    "UPSAMPLE_BAND_PIXELS",
    "MaskRegion",
    "downsample_region",
    "empty_region",
    "region_bbox",
    "region_centroid",
    "region_from_plane",
    "region_iou",
    "region_pixels",
    "region_shape_iou",
    "region_to_plane",
    "shape_iou",
    "tile_logits_values",
    "trimmed",
    "values_bbox",
    "values_to_region",
]

#: Upsampling a coarse level's mask to full resolution holds at most this many float32 pixels.
UPSAMPLE_BAND_PIXELS = 4 * 2**20


class MaskRegion(NamedTuple):
    """A mask as the full-resolution top-left ``(y0, x0)`` of its bounding box and the (h, w)
    bool ``crop`` of that box (h = w = 0 for an empty mask). The functions here also take a
    plain ``(y0, x0, crop)`` tuple."""

    y0: int
    x0: int
    crop: np.ndarray


def empty_region() -> MaskRegion:
    crop = np.zeros((0, 0), dtype=bool)
    crop.flags.writeable = False
    return MaskRegion(0, 0, crop)


def region_bbox(region: MaskRegion) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the region's box (half-open), None when empty."""
    region = MaskRegion(*region)
    h, w = region.crop.shape
    if h == 0 or w == 0:
        return None
    return region.y0, region.y0 + h, region.x0, region.x0 + w


def region_pixels(region: MaskRegion) -> int:
    return int(np.count_nonzero(region[2]))


def trimmed(y0: int, x0: int, crop: np.ndarray) -> MaskRegion:
    """The region of ``crop`` at (y0, x0), trimmed to the bounding box of its True pixels; read-only."""
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return empty_region()
    cols = np.flatnonzero(crop.any(axis=0))
    out = np.ascontiguousarray(crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], dtype=bool)
    out.flags.writeable = False
    return MaskRegion(int(y0 + rows[0]), int(x0 + cols[0]), out)


def region_from_plane(mask: np.ndarray) -> MaskRegion:
    """The region of a (H, W) bool plane."""
    return trimmed(0, 0, np.asarray(mask, dtype=bool))


def region_to_plane(region: MaskRegion, shape: Sequence[int]) -> np.ndarray:
    """The (H, W) bool plane of ``region`` (read-only); parts outside the plane are dropped."""
    H, W = (int(s) for s in shape)
    out = np.zeros((H, W), dtype=bool)
    region = MaskRegion(*region)
    box = region_bbox(region)
    if box is not None:
        y0, y1, x0, x1 = box
        ya, yb, xa, xb = max(0, y0), min(H, y1), max(0, x0), min(W, x1)
        if ya < yb and xa < xb:
            out[ya:yb, xa:xb] = region.crop[ya - y0:yb - y0, xa - x0:xb - x0]
    out.flags.writeable = False
    return out


def region_iou(a: MaskRegion, b: MaskRegion) -> float:
    """IoU of two regions (1.0 when both are empty), computed on their joint box only."""
    a, b = MaskRegion(*a), MaskRegion(*b)
    ba, bb = region_bbox(a), region_bbox(b)
    if ba is None or bb is None:
        return 1.0 if ba is None and bb is None else 0.0
    y0, y1 = min(ba[0], bb[0]), max(ba[1], bb[1])
    x0, x1 = min(ba[2], bb[2]), max(ba[3], bb[3])
    pa = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    pb = np.zeros_like(pa)
    pa[ba[0] - y0:ba[1] - y0, ba[2] - x0:ba[3] - x0] = a.crop
    pb[bb[0] - y0:bb[1] - y0, bb[2] - x0:bb[3] - x0] = b.crop
    union = np.count_nonzero(pa | pb)
    return float(np.count_nonzero(pa & pb) / union) if union else 1.0


def region_centroid(region: MaskRegion) -> tuple[float, float] | None:
    """(y, x) centroid of a region's pixels in the plane, None when empty."""
    region = MaskRegion(*region)
    ys, xs = np.nonzero(region.crop)
    if ys.size == 0:
        return None
    return region.y0 + float(ys.mean()), region.x0 + float(xs.mean())


def region_shape_iou(a: MaskRegion, b: MaskRegion) -> float:
    """How much an object's section changed from ``a`` to ``b``, whatever it moved: the IoU of the
    two regions after ``a`` is moved (by whole pixels) so that its centroid falls on ``b``'s, or
    their plain IoU when that is larger; 0.0 when they do not overlap at all (``b`` is elsewhere,
    not the same object moved), 1.0 when both are empty.

    Between the slices of an anisotropic stack (serial-section EM) or the frames of a
    time-lapse, an object's section shifts by a good part of its size while keeping its shape:
    the plain IoU of consecutive sections of mitochondria in the ssTEM stack has a median of
    0.69 (0.93 for the nuclei of the isotropic cells3d stack), so a stop rule on the plain IoU
    ends such objects at their first slice.
    """
    a, b = MaskRegion(*a), MaskRegion(*b)
    plain = region_iou(a, b)
    if plain == 0.0 or plain == 1.0:
        return plain
    ca, cb = region_centroid(a), region_centroid(b)
    if ca is None or cb is None:
        return plain
    dy, dx = int(round(cb[0] - ca[0])), int(round(cb[1] - ca[1]))
    if dy == 0 and dx == 0:
        return plain
    return max(plain, region_iou(MaskRegion(a.y0 + dy, a.x0 + dx, a.crop), b))


def shape_iou(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`region_shape_iou` of two (H, W) bool masks."""
    return region_shape_iou(region_from_plane(a), region_from_plane(b))


def downsample_region(region: MaskRegion, window: Sequence[int], factor: float) -> np.ndarray:
    """The part of a full-resolution ``region`` inside a level tile ``window`` (y0, y1, x0, x1 in
    level pixels) as that tile's (h, w) bool mask at the level's resolution (each level pixel
    takes the full-resolution pixel at its centre)."""
    ty0, ty1, tx0, tx1 = (int(v) for v in window)
    out = np.zeros((ty1 - ty0, tx1 - tx0), dtype=bool)
    region = MaskRegion(*region)
    box = region_bbox(region)
    if box is None:
        return out
    f = float(factor)
    ys = np.floor((np.arange(ty0, ty1) + 0.5) * f).astype(np.int64) - region.y0
    xs = np.floor((np.arange(tx0, tx1) + 0.5) * f).astype(np.int64) - region.x0
    iy = np.flatnonzero((ys >= 0) & (ys < region.crop.shape[0]))
    ix = np.flatnonzero((xs >= 0) & (xs < region.crop.shape[1]))
    if iy.size and ix.size:
        out[np.ix_(iy, ix)] = region.crop[np.ix_(ys[iy], xs[ix])]
    return out


# --------------------------------------------------------------------------- logits -> region


def tile_logits_values(logits: torch.Tensor, input_size: Sequence[int],
                       tile_size: Sequence[int]) -> tuple[int, int, torch.Tensor] | None:
    """The decoder's (1, 1, 256, 256) logits of a tile as float values at the tile's resolution,
    only around the object: ``(y0, x0, values)`` with ``values`` (h, w) float32 at tile pixel
    (y0, x0), one pixel of context around every pixel that may be positive; None when no logit
    is positive. Equal to SAM's post-processing of the tile up to float rounding."""
    low = logits[0, 0].detach().to("cpu", torch.float32)
    pos = low > 0
    if not bool(pos.any()):
        return None
    H, W = (int(s) for s in tile_size)
    rows = torch.nonzero(pos.any(dim=1)).flatten()
    cols = torch.nonzero(pos.any(dim=0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    canvas = FocSAM.image_size
    sy = support_ranges(low.shape[0], canvas, int(input_size[0]), H)
    sx = support_ranges(low.shape[1], canvas, int(input_size[1]), W)
    (y0, y1), (x0, x1) = outputs_reading(sy, r0, r1), outputs_reading(sx, c0, c1)
    if y1 <= y0 or x1 <= x0:
        return None
    y0, y1, x0, x1 = max(0, y0 - 1), min(H, y1 + 1), max(0, x0 - 1), min(W, x1 + 1)
    (a0, a1), (b0, b1) = logits_read(sy, y0, y1), logits_read(sx, x0, x1)
    my = resize_matrix(low.shape[0], canvas, int(input_size[0]), H)
    mx = resize_matrix(low.shape[1], canvas, int(input_size[1]), W)
    values = my[y0:y1, a0:a1] @ low[a0:a1, b0:b1] @ mx[x0:x1, b0:b1].T
    return y0, x0, values


def values_bbox(y0: int, x0: int, values: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the positive pixels of ``values`` placed at (y0, x0), None if none."""
    pos = values > 0
    rows = torch.nonzero(pos.any(dim=1)).flatten()
    if len(rows) == 0:
        return None
    cols = torch.nonzero(pos.any(dim=0)).flatten()
    return y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1


def upsample_positive(values: torch.Tensor, f: int) -> np.ndarray:
    """``bilinear_resize(values, f x) > 0`` (align_corners=False), in bands of rows: (h f, w f) bool."""
    h, w = values.shape
    out = np.empty((h * f, w * f), dtype=bool)
    band = max(1, UPSAMPLE_BAND_PIXELS // max(1, w * f * f))
    for i0 in range(0, h, band):
        i1 = min(h, i0 + band)
        a0, a1 = max(0, i0 - 1), min(h, i1 + 1)  # one row of context: the band equals the whole
        up = F.interpolate(values[a0:a1][None, None], size=((a1 - a0) * f, w * f), mode="bilinear",
                           align_corners=False)[0, 0]
        s = (i0 - a0) * f
        out[i0 * f:i1 * f] = (up[s:s + (i1 - i0) * f] > 0).numpy()
    return out


def values_to_region(y0: int, x0: int, values: torch.Tensor, origin: Sequence[int], factor: float,
                     plane_shape: Sequence[int]) -> MaskRegion:
    """The full-resolution :class:`MaskRegion` of tile ``values`` (from :func:`tile_logits_values`)
    of a tile whose top-left is ``origin`` (level pixels) on a level ``factor`` times coarser than
    full resolution, clipped to ``plane_shape``."""
    oy, ox = int(origin[0]) + y0, int(origin[1]) + x0
    f = int(round(float(factor)))
    if f <= 1:
        crop = (values > 0).numpy()
        fy, fx = oy, ox
    else:
        crop = upsample_positive(values, f)
        fy, fx = oy * f, ox * f
    H, W = (int(s) for s in plane_shape)
    crop = crop[:max(0, H - fy), :max(0, W - fx)]
    return trimmed(fy, fx, crop)


class OnPlane:
    """The slice-history interface of a history decoded on whole planes (its ``mask`` a plane):
    the mask as a region, no tile (a tiled history has both of its own), and its clicks and box
    as one value."""

    @property
    def prompts(self):
        """The clicks and the box as one :class:`~napari_focsam.core.prompting.PlanePrompts`."""
        from ._prompts import PlanePrompts

        return PlanePrompts(tuple(self.clicks), self.box)

    @property
    def region(self) -> MaskRegion:
        """The mask as a region: the full-resolution offset and the crop around the object."""
        return region_from_plane(self.mask)

    @property
    def tile(self) -> None:
        """The tile the clicks are decoded in: none, they are decoded on the whole plane."""
        return None
