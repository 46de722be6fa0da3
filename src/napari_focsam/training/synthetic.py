# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Procedural training images of packed cells in four imaging styles (``synthetic_cells``).

The microscopy sets that may train a shipped model hold no cell profiles in EM, no DIC and
no bacteria; the sets that do (the VNC ssTEM stack) are licensed for research only. These
images teach the decoder the decision those modalities need most, *one cell among touching
cells that look alike*, without any file from outside the package. Every image is drawn from
its own seed (the same id always gives the same pixels) on a ``SIZE`` x ``SIZE`` canvas:

``em``
    Tissue in electron microscopy: a Voronoi tiling with warped, curved walls (cells of 300 to
    6000 pixels), dark membranes 1-4 px wide, grey cytoplasm with fine texture and dark
    organelles (round and elongated), section-to-section contrast and noise. Objects: the
    cells' interiors.
``rods``
    Rod-shaped bacteria in phase contrast: capsules 8-16 px wide and 2-6 widths long, grown
    into colonies by placing each new rod against the colony with a gap of 0-2 px, drawn dark
    with the bright halo of phase contrast, on an uneven background. Objects: the rods.
``dic``
    Adherent cells in differential interference contrast: large irregular cells (about 2,000
    to 20,000 pixels) that touch or leave gaps; each cell's optical path is a dome with a raised
    nucleus and granular texture, and the image is its derivative along one shear direction
    on a grey background (the relief Nomarski DIC shows). Objects: the cells.
``fluo``
    The same cells with a cytoplasm stain: brighter at the rim or in the middle, granular,
    with cell-to-cell brightness differences. Objects: the cells.

A second set, ``synthetic_organelles``, draws the small objects *inside* cells that EM users
segment next to the cells themselves:

``mito``
    Mitochondria in EM: curved, sausage-shaped bodies 7-22 px wide and 1-6 widths long with a
    dark double membrane, a matrix darker (sometimes lighter) than the cytoplasm and cristae
    across the long axis; among them the clutter they are clicked in: the walls of large cells,
    vesicles (small dark rings) and fine granular cytoplasm. Objects: the mitochondria only, so
    a click on one teaches the small dark body, not the cell around it.

A third set, ``synthetic_neuropil``, draws the cell profiles of nervous tissue in EM, where the
``em`` style's cells of one size per image fall short:

``neuropil``
    Large profiles (dendrites, 3,000 to 15,000 pixels) beside bundles of small ones (axons,
    100 to 800 pixels, packed inside what would be one large profile), all bounded by dark
    membranes 1-3 px wide; some small profiles wrapped in a thick dark myelin ring; the large
    ones holding mitochondria (dark elongated bodies) and vesicles (small dark rings) that
    belong to them, the small ones lighter or darker with fine dots. Objects: every profile's
    interior with what it holds, so a click teaches the single profile, small or large.

A fourth set, ``synthetic_mitoses``, draws what the nuclei sets hold too few of:

``mitoses``
    Fluorescent nuclei (a DNA stain): ellipses of 300 to 1,800 pixels with granular chromatin,
    bright spots and dark nucleoli, some touching; a third to a half of them in division:
    condensed chromosomes as short bright rods and blobs with dark gaps between them, in an
    irregular cluster (prophase), an elongated plate (metaphase) or two plates moving apart
    (anaphase). Objects: each interphase nucleus; each mitotic figure as the region around its
    chromosomes (gaps included, as nuclei sets label a dividing cell); the two plates of an
    anaphase as two objects. A click on one chromosome teaches the whole figure.

The images are uint8 RGB (grey in three channels); the cache builder's augmentation (flips,
turns, crops, contrast, inversion, blur, noise) applies to them as to any other source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..evaluation.datasets import EvalDataset, EvalObject
from .entries import SliceEntry

__all__ = ["MITOSIS_STYLES", "NEUROPIL_STYLES", "ORGANELLE_STYLES", "SIZE", "STYLES", "render", "synthetic_cells",
           "synthetic_mitoses", "synthetic_neuropil", "synthetic_organelles"]

#: Side of every synthetic image (pixels).
SIZE = 512
#: Imaging styles, in id order.
STYLES = ("em", "rods", "dic", "fluo")
#: Styles of ``synthetic_organelles``.
ORGANELLE_STYLES = ("mito",)
#: Styles of ``synthetic_neuropil``.
NEUROPIL_STYLES = ("neuropil",)
#: Styles of ``synthetic_mitoses``.
MITOSIS_STYLES = ("mitoses",)
#: Objects smaller than this many pixels are not objects of the image (they stay in the picture).
MIN_AREA = 120


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise of correlation length ``sigma``."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (n - n.mean()) / (n.std() + 1e-9)


def _voronoi(rng: np.random.Generator, n_cells: int, warp: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels 1..n of a warped Voronoi tiling, (n, 2) seeds (y, x))."""
    from scipy.spatial import cKDTree

    seeds = rng.uniform(-0.05 * SIZE, 1.05 * SIZE, size=(n_cells, 2))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if warp > 0:  # smooth displacement: curved walls instead of straight ones
        yy = yy + warp * _smooth_noise(rng, (SIZE, SIZE), 24)
        xx = xx + warp * _smooth_noise(rng, (SIZE, SIZE), 24)
    _, nearest = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    return nearest.reshape(SIZE, SIZE).astype(np.int32) + 1, seeds


def _walls(labels: np.ndarray, width: int) -> np.ndarray:
    """Bool map of the boundaries between labels (and background), ``width`` px wide."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return ndi.binary_dilation(edge, iterations=max(width // 2, 0)) if width > 1 else edge


def _to_uint8(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (0.5, 99.5))
    out = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((out * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _relabel(cells: np.ndarray) -> np.ndarray:
    """Split every label into connected parts, drop parts under ``MIN_AREA``; ids 1..n."""
    out = np.zeros(cells.shape, dtype=np.int32)
    n = 0
    for i, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        parts, k = ndi.label(cells[sl] == i)
        for j in range(1, k + 1):
            part = parts == j
            if part.sum() >= MIN_AREA:
                n += 1
                out[sl][part] = n
    return out


def _em(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    area = rng.uniform(300, 6000)
    labels, _ = _voronoi(rng, int(SIZE * SIZE / area), warp=rng.uniform(0.0, 0.35) * np.sqrt(area))
    walls = _walls(labels, int(rng.integers(1, 5)))
    cells = np.where(walls, 0, labels)
    n = labels.max()
    base = rng.uniform(0.45, 0.8) + rng.normal(0, rng.uniform(0.02, 0.1), n + 1)
    img = base[cells] + rng.uniform(0.02, 0.08) * _smooth_noise(rng, cells.shape, rng.uniform(0.7, 2.5))
    yy, xx = np.ogrid[0:SIZE, 0:SIZE]
    for _ in range(int(rng.integers(0, 4 * n // 3 + 1))):  # organelles: dark round or elongated spots
        y, x = rng.uniform(0, SIZE, 2)
        a, b = rng.uniform(3, 12), rng.uniform(3, 6)
        t = rng.uniform(0, np.pi)
        u = ((yy - y) * np.cos(t) + (xx - x) * np.sin(t)) / a
        v = (-(yy - y) * np.sin(t) + (xx - x) * np.cos(t)) / b
        img = np.where((u * u + v * v <= 1) & (cells > 0), img - rng.uniform(0.15, 0.35), img)
    img = np.where(walls, rng.uniform(0.05, 0.3), img)
    img = ndi.gaussian_filter(img, rng.uniform(0.4, 1.4)) + rng.uniform(0.01, 0.06) * rng.standard_normal(img.shape)
    return img, _relabel(cells)


def _capsule(shape, p0, p1, r) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The points within ``r`` of the segment p0-p1 (a rod): (window, bool mask in it), or None
    when the rod leaves the image."""
    lo = np.floor(np.minimum(p0, p1) - r).astype(int)
    hi = np.ceil(np.maximum(p0, p1) + r).astype(int) + 1
    if (lo < 0).any() or hi[0] > shape[0] or hi[1] > shape[1]:
        return None
    yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float32)
    d = p1 - p0
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    inside = (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2 <= r * r
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1])), inside


def _rods(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    width = rng.uniform(8, 16)
    labels = np.zeros((SIZE, SIZE), dtype=np.int32)
    taken = np.zeros((SIZE, SIZE), dtype=bool)
    order = rng.uniform(0, 1)  # how aligned a colony's rods are
    n = 0
    for _ in range(int(rng.integers(1, 3))):
        centre = rng.uniform(0.3 * SIZE, 0.7 * SIZE, 2)
        angle0 = rng.uniform(0, np.pi)
        ends: list[np.ndarray] = []
        for _ in range(int(rng.integers(20, 110))):
            length = width * rng.uniform(1.5, 5.0)
            for _ in range(25):  # a free place against the colony
                c = (ends[int(rng.integers(len(ends)))] if ends else centre) + rng.normal(0, 0.8 * width, 2)
                angle = angle0 + (1 - order) * rng.uniform(-np.pi / 2, np.pi / 2) + rng.normal(0, 0.2)
                half = 0.5 * (length - width) * np.array([np.sin(angle), np.cos(angle)])
                rod = _capsule(labels.shape, c - half, c + half, width / 2)
                if rod is None:
                    continue
                win, inside = rod
                if inside.sum() < MIN_AREA or (taken[win] & inside).any():
                    continue
                n += 1
                labels[win][inside] = n
                gap = int(rng.integers(0, 3))
                taken[win] |= ndi.binary_dilation(inside, iterations=gap) if gap else inside
                ends += [c - half * 1.6, c + half * 1.6, c + width * np.array([np.cos(angle), -np.sin(angle)]),
                         c - width * np.array([np.cos(angle), -np.sin(angle)])]
                break
    cell = ndi.gaussian_filter(labels.astype(bool).astype(float), rng.uniform(0.8, 1.6))
    halo = np.clip(ndi.gaussian_filter(labels.astype(bool).astype(float), rng.uniform(3, 8)) - cell, 0, None)
    inside = rng.uniform(0.25, 0.6) + 0.05 * _smooth_noise(rng, labels.shape, 2)
    bg = 0.55 + rng.uniform(0.0, 0.03) * _smooth_noise(rng, labels.shape, 80)
    img = bg * (1 - cell) + inside * cell + rng.uniform(0.5, 1.5) * halo
    img = img + rng.uniform(0.01, 0.05) * rng.standard_normal(img.shape)
    return img, _relabel(labels)


def _spread_cells(rng: np.random.Generator) -> np.ndarray:
    """Labels of large irregular cells: Voronoi regions cut by a noisy disc around each seed."""
    area = rng.uniform(2000, 20000)
    labels, seeds = _voronoi(rng, max(int(SIZE * SIZE / area), 3), warp=0.2 * np.sqrt(area))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    radius = np.sqrt(area / np.pi) * rng.uniform(0.8, 1.5, len(seeds))
    wobble = 1 + 0.3 * _smooth_noise(rng, labels.shape, 20)
    seed_of = seeds[labels - 1]
    reach = np.hypot(yy - seed_of[..., 0], xx - seed_of[..., 1]) / (radius[labels - 1] * wobble)
    cells = np.where(reach < 1, labels, 0)
    return np.where(_walls(cells, int(rng.integers(1, 4))), 0, cells)


def _dome(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optical path of spread cells: a dome per cell, a raised nucleus, granular texture."""
    depth = np.zeros(cells.shape)
    for i, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        m = cells[sl] == i
        d = ndi.distance_transform_edt(m)
        top = d.max()
        if top <= 0:
            continue
        h = np.sqrt(np.clip(d / top, 0, 1)) * rng.uniform(0.6, 1.4)
        h += rng.uniform(0.3, 0.8) * (d > rng.uniform(0.45, 0.75) * top)  # nucleus
        depth[sl][m] = h[m]
    return ndi.gaussian_filter(depth, 1.0) + 0.15 * _smooth_noise(rng, cells.shape, 1.5) * (cells > 0)


def _dic(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cells = _spread_cells(rng)
    depth = _dome(cells, rng)
    angle = rng.uniform(0, 2 * np.pi)
    sigma = rng.uniform(1.0, 2.5)
    gy, gx = ndi.gaussian_filter(depth, sigma, order=(1, 0)), ndi.gaussian_filter(depth, sigma, order=(0, 1))
    img = 0.5 + rng.uniform(2, 6) * (np.cos(angle) * gy + np.sin(angle) * gx)
    img = img + rng.uniform(0.005, 0.03) * rng.standard_normal(img.shape) + 0.03 * _smooth_noise(rng, img.shape, 100)
    return img, _relabel(cells)


def _fluo(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cells = _spread_cells(rng)
    n = cells.max()
    level = rng.uniform(0.3, 1.0, n + 1)
    level[0] = rng.uniform(0.0, 0.08)
    dist = np.zeros(cells.shape)
    for i, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is not None:
            m = cells[sl] == i
            d = ndi.distance_transform_edt(m)
            dist[sl][m] = (d / max(d.max(), 1))[m]
    rim = rng.uniform(-0.6, 0.6)  # > 0: brighter at the rim; < 0: in the middle
    img = level[cells] * (1 + rim * (1 - dist) * (cells > 0) - rim / 2 * (cells > 0))
    img = img * (1 + 0.25 * _smooth_noise(rng, cells.shape, 1.2))
    img = ndi.gaussian_filter(img, rng.uniform(0.7, 2.0)) + rng.uniform(0.005, 0.04) * rng.standard_normal(img.shape)
    return img, _relabel(cells)


def _bent_tube(p0: np.ndarray, p1: np.ndarray, bend: float, r: float):
    """A curved tube of radius ``r`` along the quadratic curve p0 -> p1 bowed by ``bend`` (in
    lengths): (window, bool mask in it, coordinate along the chord in px), or None when it leaves
    the image."""
    from scipy.spatial import cKDTree

    chord = p1 - p0
    length = float(np.hypot(*chord))
    normal = np.array([-chord[1], chord[0]]) / max(length, 1e-6)
    ctrl = (p0 + p1) / 2 + bend * length * normal
    t = np.linspace(0, 1, max(int(length), 2))[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p1
    lo = np.floor(curve.min(0) - r).astype(int)
    hi = np.ceil(curve.max(0) + r).astype(int) + 1
    if (lo < 0).any() or hi[0] > SIZE or hi[1] > SIZE:
        return None
    yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float32)
    dist, _ = cKDTree(curve).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    inside = dist.reshape(yy.shape) <= r
    along = ((yy - p0[0]) * chord[0] + (xx - p0[1]) * chord[1]) / max(length, 1e-6)
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1])), inside, along


def _dark_rings(rng: np.random.Generator, img: np.ndarray, where: np.ndarray, n: int) -> np.ndarray:
    """``img`` with ``n`` vesicles (small dark rings, radius 2-6 px) drawn where ``where`` is set."""
    yy, xx = np.ogrid[0:SIZE, 0:SIZE]
    for _ in range(n):
        y, x = rng.uniform(0, SIZE, 2)
        ring = np.abs(np.hypot(yy - y, xx - x) - rng.uniform(2, 6)) < 1.0
        img = np.where(ring & where, img - rng.uniform(0.1, 0.3), img)
    return img


def _mito(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cyto = rng.uniform(0.5, 0.75)
    img = cyto + rng.uniform(0.02, 0.07) * _smooth_noise(rng, (SIZE, SIZE), rng.uniform(0.7, 2.0))
    img = img + rng.uniform(0.0, 0.06) * _smooth_noise(rng, (SIZE, SIZE), 40)
    area = rng.uniform(15000, 90000)  # large cells: their walls run through the field
    cells, _ = _voronoi(rng, max(int(SIZE * SIZE / area), 2), warp=0.25 * np.sqrt(area))
    img = np.where(_walls(cells, int(rng.integers(1, 4))), rng.uniform(0.1, 0.35), img)
    labels = np.zeros((SIZE, SIZE), dtype=np.int32)
    taken = np.zeros((SIZE, SIZE), dtype=bool)
    width = rng.uniform(7, 22)
    darker = rng.uniform(0, 1) < 0.8
    n = 0
    for _ in range(int(rng.integers(8, 40))):
        for _ in range(20):  # a free place
            r = width / 2 * rng.uniform(0.75, 1.3)
            length = 2 * r * rng.uniform(0.5, 6.0)
            c = rng.uniform(0, SIZE, 2)
            a = rng.uniform(0, np.pi)
            half = 0.5 * length * np.array([np.sin(a), np.cos(a)])
            tube = _bent_tube(c - half, c + half, rng.uniform(-0.3, 0.3), r)
            if tube is None:
                continue
            win, inside, along = tube
            if inside.sum() < MIN_AREA or (taken[win] & inside).any():
                continue
            n += 1
            labels[win][inside] = n
            taken[win] |= ndi.binary_dilation(inside, iterations=int(rng.integers(1, 5)))
            membrane = inside & ~ndi.binary_erosion(inside, iterations=int(rng.integers(1, 3)))
            period = rng.uniform(3.5, 7.0)
            cristae = ndi.binary_erosion(inside, iterations=2) & (np.cos(2 * np.pi * along / period) > 0.5)
            shift = rng.uniform(0.1, 0.35) * (-1 if darker else 1)
            patch = img[win]
            patch[inside] = cyto + shift + 0.03 * rng.standard_normal(int(inside.sum()))
            patch[cristae] += (rng.uniform(0.1, 0.25) if darker else -rng.uniform(0.15, 0.3))
            patch[membrane] = rng.uniform(0.05, 0.25)
            break
    img = _dark_rings(rng, img, ~taken, int(rng.integers(0, 60)))  # vesicles: not objects
    img = ndi.gaussian_filter(img, rng.uniform(0.4, 1.2)) + rng.uniform(0.01, 0.06) * rng.standard_normal(img.shape)
    return img, _relabel(labels)


def _neuropil(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    big_area = rng.uniform(3000, 15000)
    big, _ = _voronoi(rng, max(int(SIZE * SIZE / big_area), 4), warp=rng.uniform(0.15, 0.4) * np.sqrt(big_area))
    small_area = rng.uniform(100, 800)
    small, _ = _voronoi(rng, int(SIZE * SIZE / small_area), warp=rng.uniform(0.1, 0.35) * np.sqrt(small_area))
    n_big = int(big.max())
    bundle = rng.uniform(0, 1, n_big + 1) < rng.uniform(0.25, 0.6)  # big regions holding small axons
    bundle[0] = False
    labels = np.where(bundle[big], n_big + small, big)
    walls = _walls(labels, int(rng.integers(1, 4)))
    cells = np.where(walls, 0, labels)
    n = int(labels.max())
    base = rng.uniform(0.5, 0.8) + rng.normal(0, rng.uniform(0.02, 0.08), n + 1)
    axon = np.arange(n + 1) > n_big
    base[axon] += rng.uniform(-0.15, 0.15)  # axons: lighter or darker than dendrites
    img = base[cells] + rng.uniform(0.02, 0.07) * _smooth_noise(rng, cells.shape, rng.uniform(0.7, 2.0))
    dots = (rng.uniform(0, 1, cells.shape) < 0.02) & axon[cells]  # microtubules seen end-on
    img = np.where(ndi.binary_dilation(dots), img - rng.uniform(0.05, 0.15), img)
    yy, xx = np.ogrid[0:SIZE, 0:SIZE]
    dendrite = (cells > 0) & ~axon[cells]
    for _ in range(int(rng.integers(0, 3 * n_big))):  # mitochondria inside the dendrites: theirs
        y, x = rng.uniform(0, SIZE, 2)
        if not dendrite[int(y), int(x)]:
            continue
        a, b, t = rng.uniform(4, 14), rng.uniform(3, 6), rng.uniform(0, np.pi)
        u = ((yy - y) * np.cos(t) + (xx - x) * np.sin(t)) / a
        v = (-(yy - y) * np.sin(t) + (xx - x) * np.cos(t)) / b
        body = (u * u + v * v <= 1) & (cells == cells[int(y), int(x)])
        img = np.where(body, img - rng.uniform(0.15, 0.35), img)
    img = _dark_rings(rng, img, dendrite, int(rng.integers(0, 80)))
    img = np.where(walls, rng.uniform(0.05, 0.3), img)
    myelin = np.zeros(cells.shape, dtype=bool)
    for i in np.flatnonzero(rng.uniform(0, 1, n + 1) < rng.uniform(0.0, 0.15)):  # myelinated axons
        if axon[i]:
            inside = cells == i
            ring = inside & ~ndi.binary_erosion(inside, iterations=int(rng.integers(3, 7)))
            myelin |= ring
    img = np.where(myelin, rng.uniform(0.02, 0.15), img)
    cells = np.where(myelin, 0, cells)
    img = ndi.gaussian_filter(img, rng.uniform(0.4, 1.3)) + rng.uniform(0.01, 0.06) * rng.standard_normal(img.shape)
    return img, _relabel(cells)


def _chromosomes(rng: np.random.Generator, canvas: np.ndarray, centre: np.ndarray, spread: tuple[float, float],
                 angle: float, n: int) -> np.ndarray:
    """Draw ``n`` condensed chromosomes (short bright rods) scattered over an ellipse of
    half-axes ``spread`` turned by ``angle`` around ``centre`` into ``canvas``; returns their mask."""
    mask = np.zeros(canvas.shape, dtype=bool)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for _ in range(n):
        t = rng.uniform(0, 2 * np.pi)
        u = np.array([np.cos(t), np.sin(t)]) * np.sqrt(rng.uniform(0, 1))
        p = centre + rot @ (u * np.asarray(spread))
        d = rng.normal(size=2)
        d *= rng.uniform(2, 6) / (np.linalg.norm(d) + 1e-9)
        piece = _capsule(canvas.shape, p - d, p + d, rng.uniform(1.5, 3.0))
        if piece is not None:
            sl, m = piece
            canvas[sl][m] = np.maximum(canvas[sl][m], rng.uniform(0.7, 1.0))
            mask[sl] |= m
    return mask


def _figure(chromosomes: np.ndarray) -> np.ndarray:
    """The region a nuclei set labels around a mitotic figure: its chromosomes, the gaps between
    them closed, the holes filled."""
    region = ndi.binary_closing(np.pad(ndi.binary_dilation(chromosomes, iterations=3), 8), iterations=6)[8:-8, 8:-8]
    return ndi.binary_fill_holes(region)


def _mitoses(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = np.zeros((SIZE, SIZE))
    labels = np.zeros((SIZE, SIZE), dtype=np.int32)
    n = 0
    dividing = rng.uniform(0.3, 0.5)
    for _ in range(int(rng.integers(14, 30))):
        cy, cx = rng.uniform(20, SIZE - 20, 2)
        a = np.sqrt(rng.uniform(300, 1800) / np.pi)
        b, c = a * rng.uniform(0.75, 1.3), a * rng.uniform(0.75, 1.0)
        th = rng.uniform(0, np.pi)
        if labels[int(cy), int(cx)]:
            continue
        if rng.uniform() >= dividing:  # an interphase nucleus
            u = ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)) / b
            v = (-(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)) / c
            region = (u * u + v * v < 1) & (labels == 0)
            tex = 1 + 0.35 * _smooth_noise(rng, (SIZE, SIZE), rng.uniform(1.0, 2.5))
            img[region] = (rng.uniform(0.25, 0.65) * tex)[region]
            regions = [region]
        else:
            canvas = np.zeros((SIZE, SIZE))
            stage = rng.integers(3)
            centre = np.array([cy, cx])
            if stage == 0:  # prophase: an irregular cluster
                chrom = [_chromosomes(rng, canvas, centre, (b, c), th, int(rng.integers(10, 22)))]
            elif stage == 1:  # metaphase: a plate
                chrom = [_chromosomes(rng, canvas, centre, (0.35 * c, 1.1 * b), th, int(rng.integers(10, 20)))]
            else:  # two plates: close together one dividing cell (two lobes), apart two daughters
                off = rng.uniform(0.5, 1.4) * c * np.array([np.cos(th), np.sin(th)])
                chrom = [_chromosomes(rng, canvas, centre + k * off, (0.3 * c, 0.9 * b), th, int(rng.integers(6, 12)))
                         for k in (-1, 1)]
                if np.linalg.norm(off) < 0.9 * c:
                    chrom = [chrom[0] | chrom[1]]
            regions = [_figure(m) & (labels == 0) for m in chrom]
            if len(regions) == 2 and (regions[0] & regions[1]).any():
                regions = [regions[0] | regions[1]]
            gaps = np.zeros((SIZE, SIZE), dtype=bool)
            for r in regions:
                gaps |= r
            img = np.where(gaps, np.maximum(canvas, rng.uniform(0.05, 0.25)) * rng.uniform(0.6, 1.2), img)
        for r in regions:
            if r.sum() >= MIN_AREA:
                n += 1
                labels[r] = n
    spots = (rng.uniform(size=(SIZE, SIZE)) < 0.004) & (labels > 0)
    img = img + 0.4 * ndi.gaussian_filter(spots.astype(float), 1.0) * 6
    img = ndi.gaussian_filter(img, rng.uniform(0.6, 1.8))
    img = img + rng.uniform(0.01, 0.05) + rng.uniform(0.005, 0.03) * rng.standard_normal(img.shape)
    return img, _relabel(labels)


_RENDER = {"em": _em, "rods": _rods, "dic": _dic, "fluo": _fluo, "mito": _mito, "neuropil": _neuropil,
           "mitoses": _mitoses}


def render(style: str, index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its instance labels.

    Parameters
    ----------
    style : str
        One of :data:`STYLES`, :data:`ORGANELLE_STYLES`, :data:`NEUROPIL_STYLES` or
        :data:`MITOSIS_STYLES`.
    index, seed : int
        The image's number and the set's seed; the same three arguments give the same pixels.

    Returns
    -------
    image : np.ndarray
        (SIZE, SIZE, 3) uint8.
    labels : np.ndarray
        (SIZE, SIZE) int32, 0 = background or walls, objects 1..n of at least ``MIN_AREA`` px.
    """
    if style not in _RENDER:
        raise ValueError(f"unknown synthetic style {style!r}; expected one of {', '.join(_RENDER)}")
    key = hashlib.sha256(f"{style}/{index}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    img, labels = _RENDER[style](rng)
    return _to_uint8(img), labels


def _drawn_dataset(name: str, styles: tuple[str, ...], n_per_style: int, seed: int) -> EvalDataset:
    entries = []
    for style in styles:
        for i in range(n_per_style):
            cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}

            def get(style=style, i=i, cached=cached):
                if "v" not in cached:
                    cached["v"] = render(style, i, seed)
                return cached["v"]

            def objects(get=get, image_id=f"{style}-{i:02d}") -> list[EvalObject]:
                labels = get()[1]
                return [EvalObject(labels == k, None, f"{image_id}#{k}") for k in range(1, int(labels.max()) + 1)]

            digest = hashlib.sha1(f"{name}/{style}/{i}/{seed}".encode()).hexdigest()
            entries.append(SliceEntry(f"{style}-{i:02d}", Path(name), objects, lambda get=get: get()[0], digest))
    return EvalDataset(name, Path(name), entries)


def synthetic_cells(n_per_style: int = 12, seed: int = 0) -> EvalDataset:
    """The ``synthetic_cells`` training dataset: ``n_per_style`` images of each of :data:`STYLES`.

    Image ids are ``"{style}-{index:02d}"``; each entry renders on demand and carries the
    SHA-1 of its name, style, index and seed as its content key.
    """
    return _drawn_dataset("synthetic_cells", STYLES, n_per_style, seed)


def synthetic_organelles(n_per_style: int = 16, seed: int = 0) -> EvalDataset:
    """The ``synthetic_organelles`` training dataset: ``n_per_style`` images of each of
    :data:`ORGANELLE_STYLES`, ids and content keys as in :func:`synthetic_cells`."""
    return _drawn_dataset("synthetic_organelles", ORGANELLE_STYLES, n_per_style, seed)


def synthetic_mitoses(n_per_style: int = 16, seed: int = 0) -> EvalDataset:
    """The ``synthetic_mitoses`` training dataset: ``n_per_style`` images of each of
    :data:`MITOSIS_STYLES`, ids and content keys as in :func:`synthetic_cells`."""
    return _drawn_dataset("synthetic_mitoses", MITOSIS_STYLES, n_per_style, seed)


def synthetic_neuropil(n_per_style: int = 16, seed: int = 0) -> EvalDataset:
    """The ``synthetic_neuropil`` training dataset: ``n_per_style`` images of each of
    :data:`NEUROPIL_STYLES`, ids and content keys as in :func:`synthetic_cells`."""
    return _drawn_dataset("synthetic_neuropil", NEUROPIL_STYLES, n_per_style, seed)
