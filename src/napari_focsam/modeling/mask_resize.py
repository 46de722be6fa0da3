"""Low-resolution mask logits -> full-resolution boolean mask, computed only where it can be True.

SAM's post-processing upsamples (256, 256) logits bilinearly to the 1024 canvas, crops the
resized image's (h, w) and resizes that bilinearly to the original (H, W), then thresholds at
0. Both resizes are linear and separable, so the whole chain is ``A_y @ logits @ A_x.T`` with
two small matrices (:func:`resize_matrix`); and as bilinear weights are non-negative, an
output pixel can only be positive where its support holds a positive logit. For an object
covering a small part of a large image, only that region is computed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

#: above this fraction of the image, the region is computed by two plain resizes instead
LARGE_REGION = 0.2


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
    if (y1 - y0) * (x1 - x0) > LARGE_REGION * H * W:  # large objects: plain resizing is cheaper
        x = _resize_crop(low, canvas, input_size)
        if tuple(input_size) != (H, W):
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        return (x[0, 0] > 0).numpy()
    # the rows / columns of logits those outputs read
    (a0, a1), (b0, b1) = logits_read(sy, y0, y1), logits_read(sx, x0, x1)
    my = resize_matrix(low.shape[0], canvas, input_size[0], H)
    mx = resize_matrix(low.shape[1], canvas, input_size[1], W)
    values = my[y0:y1, a0:a1] @ low[a0:a1, b0:b1] @ mx[x0:x1, b0:b1].T
    out[y0:y1, x0:x1] = (values > 0).numpy()
    return out


def logit_at(logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], y: int, x: int,
             canvas: int = 1024) -> float:
    """The value of (1, 1, h_low, w_low) ``logits`` at pixel (y, x) of the ``original_size`` plane,
    resized as :func:`logits_to_mask_roi` resizes them (its mask is this value > 0)."""
    low = logits[0, 0].detach().to("cpu", torch.float32)
    my = resize_matrix(low.shape[0], canvas, input_size[0], original_size[0])
    mx = resize_matrix(low.shape[1], canvas, input_size[1], original_size[1])
    return float(my[int(y)] @ low @ mx[int(x)])
