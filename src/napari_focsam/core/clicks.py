"""The click type shared by the engine, the benchmark harness and training (no torch import)."""

from __future__ import annotations

from typing import NamedTuple


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
