"""Low-resolution mask logits -> full-resolution boolean mask, computed only where it can be True.

SAM's post-processing upsamples (256, 256) logits bilinearly to the 1024 canvas, crops the
resized image's (h, w) and resizes that bilinearly to the original (H, W), then thresholds at
0. Both resizes are linear and separable, so the whole chain is ``A_y @ logits @ A_x.T`` with
two small matrices (:func:`resize_matrix`); and as bilinear weights are non-negative, an
output pixel can only be positive where its support holds a positive logit. For an object
covering a small part of a large image, only that region is computed (two small matrix
products); in a larger region, an output pixel whose whole support is positive (or not) is set
without computing its value, and only the pixels along the outline, whose support holds logits
of both signs, are resized (:func:`sign_fill`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

#: with more than this fraction of the image's pixels on the outline (logits of noise, not of
#: an object: the background of a nuclei image, say), the mask is computed by two plain resizes
#: of the whole plane instead (measured: about as fast there, and faster beyond)
NOISY_OUTLINE = 0.04
#: Relative costs (ns per pixel, measured on one CPU core) that choose between :func:`sign_fill`
#: (a pixel of its region, a pixel of its outline) and two plain resizes (a pixel of the canvas
#: crop plus one of the image): ``bench_mask_resize.py`` and 4000x4000 images.
COST_FILL, COST_OUTLINE, COST_PLAIN = 1.5, 150.0, 2.0
#: a region up to this fraction of the image is computed by two small matrix products (faster
#: than finding its outline there); a larger one by :func:`sign_fill` (4000x4000 image, a mask
#: of a third of it: 11-18 ms against 70 ms for two plain resizes of the whole plane)
SMALL_REGION = 0.2


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's bilinear resize (align_corners=False, no antialias)."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float64)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


@functools.lru_cache(maxsize=16)
def resize_matrix(n_low: int, n_canvas: int, n_input: int, n_original: int) -> torch.Tensor:
    """(n_original, n_low) float32 matrix of one axis: n_low -> n_canvas, crop n_input, -> n_original."""
    m = _bilinear_matrix(n_canvas, n_low)[:n_input]
    if n_input != n_original:
        m = _bilinear_matrix(n_original, n_input) @ m
    return torch.from_numpy(m.astype(np.float32))


@functools.lru_cache(maxsize=16)
def support_ranges(n_low: int, n_canvas: int, n_input: int, n_original: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last logit (n_original,) each output row of :func:`resize_matrix` reads (a
    contiguous range: bilinear weights), both non-decreasing along the outputs."""
    nz = resize_matrix(n_low, n_canvas, n_input, n_original).numpy() != 0
    return nz.argmax(axis=1), n_low - 1 - nz[:, ::-1].argmax(axis=1)


class SupportTable(NamedTuple):
    """One axis of :func:`resize_matrix`, per output: the logits it reads and their weights.

    index, weight: (n_original, S) the (up to S, repeated at the end) logits each output reads
    and their weights (0 for the repeats); window: (n_original,) the id of each output's support
    (outputs reading the same logits share it; ids rise along the axis, each a contiguous run of
    outputs); starts: (n_windows + 1,) the first output of each window, then n_original;
    first, last: (n_windows,) the first and last logit each window reads.
    """

    index: np.ndarray
    weight: np.ndarray
    window: np.ndarray
    starts: np.ndarray
    first: np.ndarray
    last: np.ndarray


@functools.lru_cache(maxsize=16)
def support_table(n_low: int, n_canvas: int, n_input: int, n_original: int) -> SupportTable:
    """The :class:`SupportTable` of one axis (arguments as :func:`resize_matrix`)."""
    m = resize_matrix(n_low, n_canvas, n_input, n_original).numpy()
    first, last = support_ranges(n_low, n_canvas, n_input, n_original)
    k = np.arange(int((last - first).max()) + 1)
    index = np.minimum(first[:, None] + k, last[:, None])
    weight = np.where(first[:, None] + k <= last[:, None], np.take_along_axis(m, index, 1), 0).astype(np.float32)
    change = np.r_[True, (first[1:] != first[:-1]) | (last[1:] != last[:-1])]
    starts = np.r_[np.flatnonzero(change), n_original]
    window = np.cumsum(change) - 1
    return SupportTable(index, weight, window, starts, first[starts[:-1]], last[starts[:-1]])


def _window_extreme(a: np.ndarray, first: np.ndarray, last: np.ndarray, fn) -> np.ndarray:
    """``fn`` (np.minimum / np.maximum) over rows first..last of (n, m) ``a``, for each window:
    (len(first), m). Windows are a few rows wide: the running extremes over 1, 2, ... rows are
    made once, and each window takes its row from the one of its width."""
    stack = [a]
    for k in range(1, int((last - first).max()) + 1):
        more = stack[-1].copy()
        more[:-k] = fn(stack[-1][:-k], a[k:])
        stack.append(more)
    return np.take(np.concatenate(stack), (last - first) * a.shape[0] + first, axis=0)


def sign_fill(low: np.ndarray, ty: SupportTable, tx: SupportTable, y0: int, y1: int, x0: int,
              x1: int, max_outline: int | None = None) -> np.ndarray | None:
    """Outputs [y0, y1) x [x0, x1) of the resized (h, w) float32 ``low`` logits, ``> 0``, as an
    (y1 - y0, x1 - x0) bool array; None when more than ``max_outline`` of them are on the
    outline (logits of noise: two plain resizes of the whole plane are then faster).

    Bilinear weights are non-negative: an output whose support (its window of logits) is all
    positive is positive, one with no positive logit is not. The minimum and maximum of each
    window decide those; only outputs of the windows holding both signs are computed, from
    their few logits and weights (``ty``, ``tx``: :func:`support_table` of each axis).
    """
    wy0, wy1 = int(ty.window[y0]), int(ty.window[y1 - 1]) + 1
    wx0, wx1 = int(tx.window[x0]), int(tx.window[x1 - 1]) + 1
    # the minimum and maximum of each window's logits, (nwy, nwx)
    row_first, row_last = ty.first[wy0:wy1], ty.last[wy0:wy1]
    b0 = int(tx.first[wx0])
    col_first, col_last = tx.first[wx0:wx1] - b0, tx.last[wx0:wx1] - b0
    band = low[:, b0:b0 + int(col_last[-1]) + 1]  # (h, nb): the columns the windows read

    def extreme(fn) -> np.ndarray:
        rows = np.ascontiguousarray(_window_extreme(band, row_first, row_last, fn).T)  # (nb, nwy)
        return _window_extreme(rows, col_first, col_last, fn).T

    lo, hi = extreme(np.minimum), extreme(np.maximum)
    ly, lx = ty.window[y0:y1] - wy0, tx.window[x0:x1] - wx0
    # each window row's outputs are the same: columns first (on nwy rows), then whole rows copied
    out = np.repeat(np.take(lo > 0, lx, axis=1), np.bincount(ly, minlength=lo.shape[0]), axis=0)
    uy, ux = np.nonzero((lo <= 0) & (hi > 0))  # windows on the outline
    if uy.size == 0:
        return out
    # their outputs, clipped to the region
    oy0 = np.maximum(ty.starts[wy0 + uy], y0)
    ny = np.minimum(ty.starts[wy0 + uy + 1], y1) - oy0
    ox0 = np.maximum(tx.starts[wx0 + ux], x0)
    nx = np.minimum(tx.starts[wx0 + ux + 1], x1) - ox0
    n = ny * nx
    total = int(n.sum())
    if max_outline is not None and total > max_outline:
        return None
    owner = np.repeat(np.arange(uy.size), n)
    k = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    ys = oy0[owner] + k // nx[owner]
    xs = ox0[owner] + k % nx[owner]
    # the logits resized along y for the region's rows (band's columns), then along x per pixel
    by = functools.reduce(np.add, (ty.weight[y0:y1, a:a + 1] * np.take(band, ty.index[y0:y1, a], axis=0)
                                   for a in range(ty.index.shape[1])))  # (y1 - y0, nb)
    flat, width = by.ravel(), by.shape[1]
    start = (ys - y0) * width - b0
    values = functools.reduce(np.add, (tx.weight[xs, b] * np.take(flat, start + tx.index[xs, b])
                                       for b in range(tx.index.shape[1])))
    out[ys - y0, xs - x0] = values > 0
    return out


def outputs_reading(ranges: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[int, int]:
    """[start, stop) of the outputs whose support (``ranges``, from :func:`support_ranges`)
    meets logits [lo, hi); empty (stop <= start) when none does."""
    first, last = ranges
    return int(np.searchsorted(last, lo, "left")), int(np.searchsorted(first, hi, "left"))


def logits_read(ranges: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> tuple[int, int]:
    """[lo, hi) of the logits that outputs [start, stop) read (``ranges`` from :func:`support_ranges`)."""
    return int(ranges[0][start]), int(ranges[1][stop - 1]) + 1


def _resize_crop(low: torch.Tensor, canvas: int, input_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (h, w) logits to the (canvas, canvas) square, cropped to ``input_size``:
    only the logits the crop reads are resized (the same scale, so the same values)."""
    scale = canvas / low.shape[0]
    rows = min(low.shape[0], -(-input_size[0] * low.shape[0] // canvas) + 1)
    cols = min(low.shape[1], -(-input_size[1] * low.shape[1] // canvas) + 1)
    x = F.interpolate(low[None, None, :rows, :cols], scale_factor=scale, mode="bilinear", align_corners=False)
    return x[..., : input_size[0], : input_size[1]]


def logits_to_mask_roi(logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                       canvas: int = 1024) -> np.ndarray:
    """(1, 1, h_low, w_low) raw logits -> (H, W) bool mask, as bilinear resizing to the
    ``canvas``, cropping ``input_size`` and bilinear resizing to ``original_size`` then
    ``> 0`` (equal up to float rounding at values within ~1e-6 of 0)."""
    low = logits[0, 0].detach().to("cpu", torch.float32)
    H, W = original_size
    out = np.zeros((H, W), dtype=bool)
    pos = low > 0
    if not bool(pos.any()):
        return out
    rows = torch.nonzero(pos.any(dim=1)).flatten()
    cols = torch.nonzero(pos.any(dim=0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    sy = support_ranges(low.shape[0], canvas, input_size[0], H)
    sx = support_ranges(low.shape[1], canvas, input_size[1], W)
    # output rows / columns whose bilinear support touches the positive box
    y0, y1 = outputs_reading(sy, r0, r1)
    x0, x1 = outputs_reading(sx, c0, c1)
    if y1 <= y0 or x1 <= x0:
        return out
    area = (y1 - y0) * (x1 - x0)
    if area <= SMALL_REGION * H * W:  # a small region: two small matrix products
        (a0, a1), (b0, b1) = logits_read(sy, y0, y1), logits_read(sx, x0, x1)
        my = resize_matrix(low.shape[0], canvas, input_size[0], H)
        mx = resize_matrix(low.shape[1], canvas, input_size[1], W)
        out[y0:y1, x0:x1] = (my[y0:y1, a0:a1] @ low[a0:a1, b0:b1] @ mx[x0:x1, b0:b1].T > 0).numpy()
        return out
    # a guess of the outline's pixels: each sign change of the logits is a piece of outline one
    # logit long (H / h_low outputs) and about two outputs wide; the outline is found only where
    # that costs less than two plain resizes (logits of noise, like a nuclei image's background,
    # have a long one)
    box = pos[r0:r1, c0:c1]
    edges = int((box[:, 1:] != box[:, :-1]).sum()) + int((box[1:] != box[:-1]).sum())
    guess = edges * 2 * max(H / low.shape[0], W / low.shape[1])
    plain = COST_PLAIN * (input_size[0] * input_size[1] + H * W)
    if COST_FILL * area + COST_OUTLINE * guess < plain:
        ty = support_table(low.shape[0], canvas, input_size[0], H)
        tx = support_table(low.shape[1], canvas, input_size[1], W)
        region = sign_fill(low.numpy(), ty, tx, y0, y1, x0, x1, int(NOISY_OUTLINE * H * W))
        if region is not None:
            out[y0:y1, x0:x1] = region
            return out
    x = _resize_crop(low, canvas, input_size)  # noise: plain resizing is cheaper
    if tuple(input_size) != (H, W):
        x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    return (x[0, 0] > 0).numpy()


def logit_at(logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], y: int, x: int,
             canvas: int = 1024) -> float:
    """The value of (1, 1, h_low, w_low) ``logits`` at pixel (y, x) of the ``original_size`` plane,
    resized as :func:`logits_to_mask_roi` resizes them (its mask is this value > 0)."""
    low = logits[0, 0].detach().to("cpu", torch.float32)
    my = resize_matrix(low.shape[0], canvas, input_size[0], original_size[0])
    mx = resize_matrix(low.shape[1], canvas, input_size[1], original_size[1])
    return float(my[int(y)] @ low @ mx[int(x)])
