"""Microscopy stacks as 2D evaluation images: one image per slice (or per tile of a slice).

The microscopy folders of ``../shared/data/micro`` that are not a folder of 2D files hold one
TIFF stack and one label stack each (EM chloroplasts, phase-contrast yeast, the ssTEM VNC stack).
Interactive segmentation is 2D here, so every z slice is an image and every label present in
it (3D instances cut by the slice included) is a 2D object. Large planes (the chloroplasts'
2341 x 3293) are cut into a fixed grid of tiles, each an image of about 1100 x 1100 pixels: the
product would tile such a plane too, and a tile is what one embedding sees; an object cut by a
tile's edge is left out (it is an artefact of the grid, not an object a user would click).

Filters, the same for every stack: objects under ``min_pixels`` (100) are left out, and so are
objects larger than ``max_area_fraction`` of the image (the VNC neurite labels hold glia and
extracellular space as components too). Image ids are ``z08`` (whole slice) or ``z08-r1c2``
(tile at row 1, column 2), in natural order, so ``range:A:B`` / ``first:N`` / ``last:N``
selections split by slice.

Intensities follow the product: uint8 planes are used as they are, other dtypes are scaled from
the whole stack's 0.5 .. 99.5 percentiles (as a viewer shows a stack) to uint8.

This module is numpy only; :mod:`.datasets` wraps its entries into evaluation samples.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.images import read_image, to_rgb_uint8

__all__ = [
    "STACKS",
    "StackEntry",
    "StackSpec",
    "find_stack_folder",
    "slice_objects",
    "stack_entries",
    "tile_boxes",
]


@dataclass(frozen=True)
class StackSpec:
    """Where a stack lives and how it is cut.

    folder: sub-folder of ``micro/``; image / labels: file names in it; grid: (rows, cols) of
    tiles per slice; min_pixels: smallest object kept; max_area_fraction: largest object kept,
    as a fraction of the image (tile) area; drop_border: leave out objects touching the tile's
    edge (only where the edge is a cut, i.e. inside the slice).
    """

    folder: str
    image: str
    labels: str
    grid: tuple[int, int] = (1, 1)
    min_pixels: int = 100
    max_area_fraction: float = 0.2
    drop_border: bool = True


#: name -> spec (see the module docstring; ``../shared/data/README.md`` for the data)
STACKS: dict[str, StackSpec] = {
    "chloroplasts_em": StackSpec("plant_chloroplasts_em", "chloroplasts_em.tif", "chloroplasts_em_label.tif",
                                 grid=(2, 3)),
    "yeast_phase": StackSpec("yeast_phase", "yeast_phase.tif", "yeast_phase_label.tif"),
    "vnc_neurites": StackSpec("em_vnc_sstem", "vnc_em.tif", "vnc_neurites_label2d.tif"),
    "vnc_mitochondria": StackSpec("em_vnc_sstem", "vnc_em.tif", "vnc_mitochondria_label.tif"),
    # the 2D stardist nuclei, cut into a left (training) and a right (validation) half
    "stardist2d_halves": StackSpec("stardist", "stardist_img2d.tif", "stardist_mask2d.tif", grid=(1, 2)),
}


@dataclass
class StackEntry:
    """One 2D image of a stack.

    image_id: ``zZZ`` or ``zZZ-rRcC``; path: the image stack file; load_objects() -> list of
    ``(label id, (H, W) bool mask)``; load_image() -> (H, W, 3) uint8; digest: a content key
    unique to this slice / tile (the file is shared by all slices).
    """

    image_id: str
    path: Path
    load_objects: Callable[[], list[tuple[int, np.ndarray]]]
    load_image: Callable[[], np.ndarray]
    digest: str


@functools.lru_cache(maxsize=6)
def _volume(path: str) -> np.ndarray:
    arr = np.asarray(read_image(path))
    return arr[None] if arr.ndim == 2 else arr


@functools.lru_cache(maxsize=6)
def _limits(path: str) -> tuple[float, float] | None:
    vol = _volume(path)
    if vol.dtype == np.uint8:
        return None
    lo, hi = np.percentile(vol[:, ::4, ::4], (0.5, 99.5))
    return float(lo), float(hi)


def find_stack_folder(name: str, root) -> Path:
    """The folder holding stack ``name``: ``root`` itself, ``root/<folder>`` or ``root/micro/<folder>``.

    Raises
    ------
    FileNotFoundError
        When none of them holds both files.
    """
    spec = STACKS[name]
    root = Path(root)
    tried = [root, root / spec.folder, root / "micro" / spec.folder]
    for d in tried:
        if (d / spec.image).is_file() and (d / spec.labels).is_file():
            return d
    raise FileNotFoundError(f"dataset {name!r} not found under {str(root)!r}: expected "
                            f"micro/{spec.folder}/{spec.image} with {spec.labels}")


def tile_boxes(shape: tuple[int, int], grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """A (rows, cols) grid of near-equal tiles over an (H, W) plane, row-major.

    Returns
    -------
    list of (y0, y1, x0, x1)
        Half-open pixel boxes covering the plane without overlap.
    """
    H, W = shape
    ys = np.linspace(0, H, grid[0] + 1).round().astype(int)
    xs = np.linspace(0, W, grid[1] + 1).round().astype(int)
    return [(int(ys[r]), int(ys[r + 1]), int(xs[c]), int(xs[c + 1]))
            for r in range(grid[0]) for c in range(grid[1])]


def slice_objects(labels: np.ndarray, min_pixels: int = 100, max_area_fraction: float = 1.0,
                  cut_edges: tuple[bool, bool, bool, bool] = (False, False, False, False)
                  ) -> list[tuple[int, np.ndarray]]:
    """The objects of a 2D label image (tile) that pass the filters.

    Parameters
    ----------
    labels : (H, W) integer array
        0 is background.
    min_pixels, max_area_fraction :
        Size limits (pixels; fraction of H * W).
    cut_edges : (top, bottom, left, right)
        Edges where the tile was cut out of a larger plane; an object touching one is left out.

    Returns
    -------
    list of (label id, (H, W) bool mask)
        In increasing id order.
    """
    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    touching: set[int] = set()
    edges = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    for cut, edge in zip(cut_edges, edges):
        if cut:
            touching |= {int(v) for v in np.unique(edge) if v}
    limit = max_area_fraction * labels.size
    return [(int(i), labels == i) for i, c in zip(ids, counts)
            if min_pixels <= c <= limit and int(i) not in touching]


def stack_entries(name: str, root) -> list[StackEntry]:
    """One :class:`StackEntry` per slice (or tile) of stack ``name`` (see :data:`STACKS`).

    Nothing but the file listing is read here; the stacks are read at the first image or mask
    access and kept (a few of them) in memory.
    """
    spec = STACKS[name]
    folder = find_stack_folder(name, root)
    img_path, lab_path = folder / spec.image, folder / spec.labels
    import tifffile

    with tifffile.TiffFile(img_path) as tf:
        shape = tf.series[0].shape
    shape = (1, *shape) if len(shape) == 2 else tuple(shape)
    boxes = tile_boxes(shape[1:], spec.grid)
    key = f"{spec.folder}/{spec.image}|{spec.labels}|{img_path.stat().st_size}"
    entries = []
    for z in range(shape[0]):
        for k, (y0, y1, x0, x1) in enumerate(boxes):
            r, c = divmod(k, spec.grid[1])
            image_id = f"z{z:02d}" if len(boxes) == 1 else f"z{z:02d}-r{r}c{c}"
            cuts = (y0 > 0, y1 < shape[1], x0 > 0, x1 < shape[2]) if spec.drop_border else (False,) * 4

            def objects(z=z, b=(y0, y1, x0, x1), cuts=cuts):
                lab = _volume(str(lab_path))[z, b[0]:b[1], b[2]:b[3]]
                return slice_objects(lab, spec.min_pixels, spec.max_area_fraction, cuts)

            def image(z=z, b=(y0, y1, x0, x1)):
                plane = _volume(str(img_path))[z, b[0]:b[1], b[2]:b[3]]
                return to_rgb_uint8(plane, _limits(str(img_path)))

            digest = hashlib.sha1(f"{key}|{z}|{y0},{y1},{x0},{x1}".encode()).hexdigest()
            entries.append(StackEntry(image_id, img_path, objects, image, digest))
    return entries
