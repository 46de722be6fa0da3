"""Box prompts: the type, its checks and its text form (no torch import).

A box is given in image pixels as ``(y0, x0, y1, x1)``: the corners of a rectangle, in napari's
pixel convention (pixel ``i`` covers ``[i - 0.5, i + 0.5)``). Corners may come in any order; a
box that sticks out of the image is clipped to it; a box with zero area, or entirely outside the
image, is refused. The decoder sees it as SAM's two corner tokens (labels 2 and 3).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Sequence

__all__ = ["Box", "checked_box", "parse_box"]


class Box(NamedTuple):
    """A rectangle in image pixels: top-left (y0, x0) and bottom-right (y1, x1), y0 < y1, x0 < x1."""

    y0: float
    x0: float
    y1: float
    x1: float

    def to_json(self) -> list[float]:
        return [round(float(v), 3) for v in self]


def checked_box(box: Sequence[Any], shape: tuple[int, int]) -> Box:
    """A validated :class:`Box` on an image of ``shape`` (H, W), clipped to the image.

    ValueError: not four finite numbers, zero area (after sorting the corners), or no overlap
    with the image (which spans -0.5 .. H - 0.5 and -0.5 .. W - 0.5).
    """
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4:
        raise ValueError(f"a box is (y0, x0, y1, x1), got {box!r}")
    for v in box:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"box corners must be finite numbers, got {tuple(box)!r}")
    y0, x0, y1, x1 = (float(v) for v in box)
    y0, y1 = sorted((y0, y1))
    x0, x1 = sorted((x0, x1))
    if y1 - y0 <= 0 or x1 - x0 <= 0:
        raise ValueError(f"the box ({y0:g}, {x0:g}, {y1:g}, {x1:g}) has zero area: "
                         "draw a rectangle around the object")
    H, W = shape
    if y1 <= -0.5 or x1 <= -0.5 or y0 >= H - 0.5 or x0 >= W - 0.5:
        raise ValueError(f"the box ({y0:g}, {x0:g}, {y1:g}, {x1:g}) is outside the image of {H}x{W} pixels")
    return Box(max(y0, -0.5), max(x0, -0.5), min(y1, H - 0.5), min(x1, W - 0.5))


def parse_box(text: str) -> Box:
    """``"Y0,X0,Y1,X1"`` -> :class:`Box` (unchecked against an image); ValueError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"box {text!r} must be four numbers Y0,X0,Y1,X1") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"box {text!r} must be four finite numbers Y0,X0,Y1,X1")
    return Box(*values)
