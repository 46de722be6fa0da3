"""The click type shared by the engine, the benchmark harness and training, and its checks (no torch import)."""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Click", "check_positive", "checked_click"]


class Click(NamedTuple):
    """One click in image pixel coordinates (row ``y``, column ``x``)."""

    y: float
    x: float
    is_positive: bool = True

    @property
    def coords(self) -> tuple[float, float]:
        return (self.y, self.x)

    def as_list(self) -> list:
        """``[y, x, is_positive]`` with plain Python types (for JSON); integral coordinates as int."""
        def plain(v):
            return int(v) if float(v).is_integer() else float(v)

        return [plain(self.y), plain(self.x), bool(self.is_positive)]


def check_positive(positive: Any) -> bool:
    """``positive`` as a bool; anything but ``True``/``False`` (or a numpy bool) raises TypeError.

    A string such as ``"false"`` or a number is refused rather than read by truthiness
    (``bool("false")`` is True).
    """
    if isinstance(positive, (bool, np.bool_)):
        return bool(positive)
    raise TypeError(f"positive must be True or False, got {positive!r} ({type(positive).__name__})")


def checked_click(y: Any, x: Any, positive: Any, shape: tuple[int, int]) -> Click:
    """A validated :class:`Click` on an image of ``shape`` (H, W).

    Coordinates must be finite real numbers (not strings or bools) on the image in napari's
    pixel convention: pixel ``i`` covers ``[i - 0.5, i + 0.5)``, so -0.5 <= y < H - 0.5; a click
    on the border half-pixel is clamped onto the border pixel. ValueError for coordinates,
    TypeError for a non-bool ``positive``.
    """
    positive = check_positive(positive)
    for v in (y, x):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"click coordinates must be numbers, got ({y!r}, {x!r})")
    H, W = shape
    yf, xf = float(y), float(x)
    if not (math.isfinite(yf) and math.isfinite(xf)) or not (-0.5 <= yf < H - 0.5 and -0.5 <= xf < W - 0.5):
        raise ValueError(f"click (y={yf:g}, x={xf:g}) is outside the image of {H}x{W} pixels")
    return Click(min(max(yf, 0.0), H - 1.0), min(max(xf, 0.0), W - 1.0), positive)
