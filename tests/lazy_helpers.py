"""Test helpers for lazy, large images: a spy array that records every read, and a large zarr.

``SpyArray`` wraps any array-like (zarr, dask, numpy) and records each ``__getitem__``
request as one ``(start, stop)`` range per axis, so a test can assert that no request covered
a whole slice (``spy.whole_slice_requests()``) nor the whole array. It forwards ``store``,
``path`` and ``chunks``, so the code under test sees it as the zarr array it wraps (error
messages, chunk-aligned sampling).

``make_large_zarr`` writes a (20, 8192, 8192) uint16 zarr array in well under a second: the
background is the array's fill value (zarr stores no chunk for it), and a few bright discs
are written chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DISCS", "SpyArray", "make_large_zarr"]

#: (z, cy, cx, radius) of the bright discs of :func:`make_large_zarr`.
DISCS = ((3, 1500, 2000, 60), (3, 6100, 7000, 200), (10, 4096, 4096, 90), (17, 700, 7800, 40))


class SpyArray:
    """An array-like that records every read request and otherwise behaves as the array it wraps.

    Parameters
    ----------
    arr : array-like
        The wrapped array (zarr, dask, numpy).
    channel_axis : bool
        Whether the last axis holds channels (then y, x are the axes -3, -2).

    Attributes
    ----------
    requests : list of tuple of (int, int)
        One ``(start, stop)`` range per axis for each read, in order.
    """

    def __init__(self, arr: Any, channel_axis: bool = False) -> None:
        self.arr = arr
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)
        self.channel_axis = channel_axis
        self.requests: list[tuple[tuple[int, int], ...]] = []

    def __getattr__(self, name: str) -> Any:
        if name in ("store", "path", "chunks"):
            return getattr(self.arr, name)
        raise AttributeError(name)

    def _ranges(self, key: Any) -> tuple[tuple[int, int], ...]:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        out = []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                start, stop, _ = k.indices(n)
                out.append((start, max(start, stop)))
            else:
                i = int(k) % n
                out.append((i, i + 1))
        return tuple(out)

    def __getitem__(self, key: Any) -> np.ndarray:
        self.requests.append(self._ranges(key))
        out = self.arr[key]
        if hasattr(out, "compute"):
            out = out.compute()
        return np.asarray(out)

    def whole_slice_requests(self) -> list[tuple[tuple[int, int], ...]]:
        """The requests that covered all rows and all columns of a plane (or the whole array)."""
        iy = -3 if self.channel_axis else -2
        H, W = self.shape[iy], self.shape[iy + 1]
        return [r for r in self.requests if r[iy] == (0, H) and r[iy + 1] == (0, W)]

    def largest_request(self) -> int:
        """The most pixels (all axes multiplied) one request asked for."""
        return max((int(np.prod([b - a for a, b in r])) for r in self.requests), default=0)


def make_large_zarr(path: str | Path, shape: tuple[int, ...] = (20, 8192, 8192),
                    chunks: tuple[int, ...] = (1, 1024, 1024), background: int = 100,
                    discs: tuple[tuple[int, int, int, int], ...] = DISCS):
    """A uint16 zarr array at ``path``: ``background`` everywhere, discs of 4000 at ``discs``.

    Returns
    -------
    zarr.Array
        Opened read-only.
    """
    import zarr

    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", fill_value=background)
    for z, cy, cx, r in discs:
        y0, y1, x0, x1 = cy - r, cy + r + 1, cx - r, cx + r + 1
        yy, xx = np.mgrid[y0:y1, x0:x1]
        block = np.full((y1 - y0, x1 - x0), background, np.uint16)
        block[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 4000
        arr[z, y0:y1, x0:x1] = block
    return zarr.open_array(str(path), mode="r")
