"""Synthetic scenes of the segment-all tests: bright discs, tiles with seams, an ideal segmenter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_focsam.core.automatic import SegmentAllResult


def discs(shape=(160, 200), centres=((40, 50), (40, 140), (110, 60), (115, 150)), r=14, seed=0):
    """uint16 image of bright discs on a dark noisy background, and their labels (ids 1..n)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    img = 100 + 900 * (labels > 0) + rng.normal(0, 15, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), labels


TILE, HALO = 256, 64  # level 0: tiles start at 0, 192, 384, 544 on an 800-pixel side


def oracle(predictor, rgb, params, *, embedding=None, **kw):
    """The ideal segmenter of one tile: one object per bright component the tile shows."""
    labels, n = ndi.label(np.asarray(rgb)[..., 0] > 128)
    return SegmentAllResult(labels.astype(np.int32), np.linspace(0.99, 0.9, n).astype(np.float32))


def scene() -> tuple[np.ndarray, np.ndarray]:
    """(image, truth): discs across tile seams (the overlaps 192-256, 384-448, 544-640), one at
    the image border, a large disc (level 1) and a bar longer than the halo across a seam."""
    yy, xx = np.mgrid[:800, :800]
    truth = np.zeros((800, 800), np.int32)
    shapes = [((yy - 224) ** 2 + (xx - 224) ** 2) <= 15 ** 2,  # on the corner of four tiles
              ((yy - 100) ** 2 + (xx - 416) ** 2) <= 14 ** 2,  # across a vertical seam
              ((yy - 600) ** 2 + (xx - 90) ** 2) <= 16 ** 2,  # across a horizontal seam
              ((yy - 790) ** 2 + (xx - 700) ** 2) <= 12 ** 2,  # cut by the image border only
              ((yy - 420) ** 2 + (xx - 600) ** 2) <= 40 ** 2,  # larger than the halo: level 1
              (abs(yy - 60) <= 8) & (xx >= 60) & (xx < 360)]  # a bar 300 px long across a seam
    for k, m in enumerate(shapes, start=1):
        truth[m] = k
    image = np.where(truth > 0, 200, 20).astype(np.uint8)
    return image, truth
