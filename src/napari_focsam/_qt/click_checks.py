"""``ClickChecks``: the points a prediction must not use, each reported to the user once."""

from __future__ import annotations

from typing import Any, Callable

from ..core.prompting import clicks_on_nothing

__all__ = ["ClickChecks"]


class ClickChecks:
    """Drops points outside the image and positive points where the image has no values (NaN).

    Parameters
    ----------
    notify : callable
        ``notify(level, message)``: the widget's one way to tell the user something.
    """

    def __init__(self, notify: Callable[[str, str], None]) -> None:
        self.notify = notify
        self._outside = 0
        self._empty: set[int] = set()
        #: click -> whether it lands on no value, for ``self._volume``: each window is read once,
        #: not at every prediction (a lazy image would read a chunk on the GUI thread each time)
        self._known: dict[tuple, bool] = {}
        self._volume: Any = None

    def __call__(self, clicks: list, outside: int, volume: Any, is_3d: bool) -> list:
        """The usable ``clicks`` ((z, y, x, positive) tuples); ``outside``: points already dropped."""
        if outside > self._outside:
            self.notify("warning", f"{outside} point(s) outside the image ignored")
        self._outside = outside
        if volume is not self._volume or len(self._known) > 10_000:
            self._volume, self._known = volume, {}
        new = [c for c in clicks if tuple(c) not in self._known]
        if new:
            hits = set(clicks_on_nothing(volume, new))
            self._known.update((tuple(c), i in hits) for i, c in enumerate(new))
        empty = {i for i, c in enumerate(clicks) if self._known[tuple(c)]}
        for i in sorted(empty - self._empty):
            z, y, x, _ = clicks[i]
            where = (f"slice {z}, " if is_3d else "") + f"y={y:.0f}, x={x:.0f}"
            self.notify("warning", f"nothing to segment at {where}: the image has no values there (NaN); "
                                   "that point is ignored")
        self._empty = empty
        return [c for i, c in enumerate(clicks) if i not in empty]
