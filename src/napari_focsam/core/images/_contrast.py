"""Turning arbitrary microscopy arrays into the 8-bit RGB the SAM encoders expect."""

from __future__ import annotations

import numpy as np

#: Robust percentiles used when the caller gives no contrast limits.
DEFAULT_PERCENTILES = (0.5, 99.5)


def work_dtype(dtype: np.dtype) -> type:
    """The float type for arithmetic on values of ``dtype``: float64 for 8-byte data (float64
    values beyond float32's range, 64-bit integers beyond its precision), else float32."""
    dtype = np.dtype(dtype)
    return np.float64 if dtype.kind in "fiuc" and dtype.itemsize > 4 else np.float32


def robust_limits(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """(low, high) intensity percentiles over the finite pixels; (0, 1) if there are none."""
    values = np.asarray(image)
    values = values.astype(work_dtype(values.dtype), copy=False)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    if finite.size > 4_000_000:  # a strided sample is plenty for percentiles
        finite = finite[:: finite.size // 2_000_000]
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


def to_rgb_uint8(
    image: np.ndarray,
    contrast_limits: tuple[float, float] | None = None,
    *,
    rgb: bool | None = None,
) -> np.ndarray:
    """Map a 2D gray (Y, X) or colour (Y, X, C) image of any dtype to (Y, X, 3) uint8.

    uint8 data is used as is unless ``contrast_limits`` are given. Other dtypes are
    scaled linearly from ``contrast_limits`` (default: robust percentiles) to 0-255;
    NaN and infinities become 0; a constant image becomes black. A single channel is repeated three times, an alpha
    channel is dropped, two channels get a zero third channel.
    """
    arr = np.asarray(image)
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if arr.ndim == 3 and not rgb and arr.shape[-1] in (1, 2):
        rgb = True
    if arr.ndim == 2:
        pass
    elif arr.ndim == 3 and rgb:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        elif arr.shape[-1] == 2:
            arr = np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=-1)
        elif arr.shape[-1] not in (1, 3):
            raise ValueError(f"a colour image needs 1 to 4 channels, got {arr.shape[-1]}")
    else:
        raise ValueError(f"expected a 2D (Y, X) or colour (Y, X, C) image, got shape {arr.shape}")

    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8 and contrast_limits is None:
        out = arr
    else:
        if contrast_limits is not None:
            lo, hi = contrast_limits
        else:
            lo, hi = robust_limits(arr)
            if hi <= lo:  # (nearly) constant image: fall back to the full range
                finite = np.asarray(arr, work_dtype(arr.dtype))[np.isfinite(arr)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        f = (arr.astype(work_dtype(arr.dtype)) - lo) * scale  # float64 data stays float64 (1e300 is no inf)
        f = np.nan_to_num(f, nan=0.0, posinf=255.0, neginf=0.0)
        out = np.clip(f, 0, 255).round().astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    elif out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)
