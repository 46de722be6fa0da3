"""Where an object fades out of focus: the strength of its outline on a slice.

In a fluorescence stack (widefield, confocal) the light of an object spreads past its ends
along z: the slices beyond a nucleus still show a dimmer, blurred disc. The decoder finds a
plausible object in that blur, of about the size of the last sections, so a propagated object
goes on for slices past its end with masks that no longer shrink (cells3d, one click per
nucleus, default model: nucleus 7 ran two slices past each end with masks of 600-1,200 px where
the labels have 0-400). Neither the IoU stop nor the end rule sees it: the blur is round and
about as large as the last section.

What does change is the outline: blur flattens it. The mean gradient magnitude of the image on
the band around the mask's outline (:func:`outline_strength`) falls steadily past an object's
end; on cells3d (one click per nucleus, relative to the clicked slice) it is at 0.06-0.31
(5-95 %) on the slices where the label has less than half the mask's area, against 0.24-1.05
(median 0.82) on the others. An outer run stops at the first slice whose outline is weaker
than a fraction (:data:`~napari_focsam.core.defaults.DEFAULT_EDGE_FADE`) of the object's
strongest seed outline. A ratio of one object's own slices, it needs no intensity scale and
holds for any dtype or contrast. In serial-section EM and in time-lapses an object's outline
keeps its contrast from slice to slice, and noise keeps the gradient up, so the rule stays
quiet there: on the EM chloroplasts, the VNC mitochondria and the noisy stardist 3D volume not
one mask of the 3D correction protocol changed, while cells3d rose at every click (one click:
0.801 -> 0.824; ``benchmarks/bench_volume_interactive.py --edge-fade``, tables in
``docs/microscopy``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from scipy import ndimage as ndi

from ..defaults import DEFAULT_EDGE_FADE
from ..prompting import MaskRegion, region_bbox, region_from_plane

__all__ = ["DEFAULT_EDGE_FADE", "EDGE_BAND", "EDGE_SIGMA", "OUTLINE_BLOCK", "fade_stop", "faded_reason", "object_outline",
           "outline_strength"]

#: Scale (pixels) of the Gaussian derivatives of the gradient magnitude.
EDGE_SIGMA = 1.0
#: Half-width (pixels) of the band around the outline: that many pixels inside and outside.
EDGE_BAND = 2
#: The image is read and filtered in blocks of at most this many pixels a side (plus the
#: filter's margin), only where the band is.
OUTLINE_BLOCK = 512


def outline_strength(volume: Any, z: int, region: MaskRegion) -> float:
    """Mean gradient magnitude of slice ``z`` on the band around a mask's outline.

    Parameters
    ----------
    volume : ImageVolume
        The stack. Only blocks of at most :data:`OUTLINE_BLOCK` pixels a side around the band,
        plus the filter's margin, are read (:meth:`read_region`, full resolution, channels
        averaged), one at a time: memory is bounded by a block, not by the mask, and a mask that
        covers a whole large plane reads only the blocks its outline crosses.
    z : int
        The slice.
    region : MaskRegion
        The mask, as ``(y0, x0, crop)`` in full-resolution pixels.

    Returns
    -------
    float
        The mean of the Gaussian gradient magnitude (scale :data:`EDGE_SIGMA`) over the pixels
        within :data:`EDGE_BAND` pixels of the outline, inside and outside. The image border is
        no outline, and band pixels within the filter's reach of a missing value (NaN, inf:
        masked-out parts of a stitched or registered stack) are left out. 0.0 for an empty
        mask, one that fills its whole plane, or one whose whole band is next to missing values.
    """
    box = region_bbox(region)
    if box is None:
        return 0.0
    y0, y1, x0, x1 = box
    H, W = volume.plane_shape
    # the band, from the mask alone, in its box grown by the band's width (clipped to the plane)
    ya, yb, xa, xb = max(0, y0 - EDGE_BAND), min(H, y1 + EDGE_BAND), max(0, x0 - EDGE_BAND), min(W, x1 + EDGE_BAND)
    mask = np.zeros((yb - ya, xb - xa), dtype=bool)
    mask[y0 - ya:y1 - ya, x0 - xa:x1 - xa] = region[2]
    band = ndi.binary_dilation(mask, iterations=EDGE_BAND)
    band &= ~ndi.binary_erosion(mask, iterations=EDGE_BAND, border_value=1)  # the plane's border is no outline
    margin = math.ceil(4 * EDGE_SIGMA)  # the Gaussian's reach (scipy truncates at 4 sigma)
    total, count = 0.0, 0
    for by in range(0, band.shape[0], OUTLINE_BLOCK):
        for bx in range(0, band.shape[1], OUTLINE_BLOCK):
            part = band[by:by + OUTLINE_BLOCK, bx:bx + OUTLINE_BLOCK]
            if not part.any():
                continue
            ry, rx = ya + by, xa + bx  # the block in the plane, then with the filter's margin
            ra, rb = max(0, ry - margin), min(H, ry + part.shape[0] + margin)
            ca, cb = max(0, rx - margin), min(W, rx + part.shape[1] + margin)
            image = np.asarray(volume.read_region(z, ra, rb, ca, cb), dtype=np.float32)
            if image.ndim == 3:
                image = image.mean(axis=-1)
            core = (slice(ry - ra, ry - ra + part.shape[0]), slice(rx - ca, rx - ca + part.shape[1]))
            missing = ~np.isfinite(image)
            if missing.any():  # filled for the filter, and the band pixels they reach left out
                if missing.all():
                    continue
                image = np.where(missing, image[~missing].mean(), image)
                part = part & ~ndi.binary_dilation(missing, iterations=margin)[core]
            grad = ndi.gaussian_gradient_magnitude(image, EDGE_SIGMA)[core]
            total += float(grad[part].sum(dtype=np.float64))
            count += int(np.count_nonzero(part))
    return total / count if count else 0.0


def object_outline(volume: Any, masks: Mapping[int, Any], start_slices: Iterable[int] | None = None) -> float:
    """The object's reference outline: the strongest :func:`outline_strength` of its seed
    ``masks`` (slice -> (H, W) bool plane or :class:`MaskRegion`) on ``start_slices`` (default
    all; all when none of them has a mask). 0.0 without a mask."""
    chosen = [z for z in (start_slices if start_slices is not None else masks) if z in masks]
    return max((outline_strength(volume, z, _as_region(masks[z])) for z in chosen or masks), default=0.0)


def fade_stop(volume: Any, masks: Mapping[int, Any], start_slices: Iterable[int] | None,
              fade: float | None) -> tuple[float, Callable[[int, Any], str | None] | None]:
    """The out-of-focus stop of one propagation: the object's reference outline
    (:func:`object_outline` of its seed ``masks`` on ``start_slices``; 0.0 when ``fade`` is off)
    and the ``faded(z, mask)`` callback of :func:`~._runs.walk_run` (a plane or a region), None
    when ``fade`` is off or the object has no outline to compare with."""
    if not fade:
        return 0.0, None
    reference = object_outline(volume, masks, start_slices)
    if not reference > 0.0:
        return reference, None

    def faded(z: int, mask: Any) -> str | None:
        return faded_reason(outline_strength(volume, z, _as_region(mask)), reference, fade, z)
    return reference, faded


def _as_region(mask: Any) -> MaskRegion:
    return region_from_plane(mask) if isinstance(mask, np.ndarray) else MaskRegion(*mask)


def faded_reason(strength: float, reference: float, fade: float, z: int) -> str | None:
    """The stop reason when an outline of ``strength`` at slice ``z`` has faded below ``fade``
    times the object's ``reference`` outline; None while it has not (or without a reference)."""
    if not fade or not reference > 0.0 or not strength < fade * reference:  # NaN: never a stop
        return None
    return f"faded at z={z}: its outline is {strength / reference:.2f} of the object's strongest (< {fade:g})"
