"""The dock's state in one evented model, and the one guard that pauses background work.

napari-animation's pattern: the widget owns one model and hands it to its parts; each part
connects to the fields it shows (``state.events.<field>``) and derives its enabled state from
them, so no part keeps a copy and no code toggles a button by hand. The fields are typed and
documented as in napari's ``components/dims.py``.
"""

from __future__ import annotations

import threading
from typing import Optional

from napari.utils.events import EventedModel

__all__ = ["Foreground", "SharedClosed", "WidgetState"]


class WidgetState(EventedModel):
    """What the FocSAM dock is doing and showing.

    Attributes
    ----------
    closed : bool
        The dock was closed: no part reports or starts anything any more.
    ready : bool
        A model and an image are loaded: clicks are answered, Commit and Clear are enabled.
    is_3d : bool
        The image is a stack: Segment volume and its IoU stop apply.
    has_refiner : bool or None
        Whether the loaded model has a focus refiner (None before a model is loaded).
    zoom_applies : bool or None
        Whether *Zoom* applies to the loaded image: a 2D image (None before one is loaded).
    volume_running : bool
        A propagation runs: Segment volume is disabled and Cancel shown.
    cancellable : bool
        Other cancellable work runs (the tiles of a large image being embedded): Cancel shown.
    headline : str
        "loading model ..." / "ready: click ...", kept at the front of the status line.
    message : str
        The last message said to the user (notification and status line).
    embedded : int
        Slices embedded so far (of ``embed_total``).
    embed_total : int
        Slices to embed in the background (0 on a 2D or tiled image).
    eta : str
        The time left for the embeddings, as shown.
    latency_ms : float or None
        Click to mask shown, the last click.
    model_ms : float or None
        The model's own time for the last click.
    committed_id : int or None
        The label id of the last commit.
    """

    closed: bool = False
    ready: bool = False
    is_3d: bool = False
    has_refiner: Optional[bool] = None
    zoom_applies: Optional[bool] = None
    volume_running: bool = False
    cancellable: bool = False
    headline: str = ""
    message: str = ""
    embedded: int = 0
    embed_total: int = 0
    eta: str = ""
    latency_ms: Optional[float] = None
    model_ms: Optional[float] = None
    committed_id: Optional[int] = None


class Foreground:
    """Counted guard of the interactive work (a click's prediction, a box, many objects, a
    propagation, Segment all): while any holds it, background embedding pauses.

    ``hold()`` returns a release function, safe to call more than once; workers wait on
    :attr:`event`, set while the count is above zero. One guard replaces hand toggles at every
    site, so overlapping jobs cannot clear each other's pause.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._count = 0
        self._generation = 0  # a reset makes the holds before it void
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """How many holds are open."""
        return self._count

    def hold(self):
        """Pause the background until the returned function is called."""
        with self._lock:
            self._count += 1
            self.event.set()
            generation = self._generation
        released = [False]

        def release() -> None:
            with self._lock:
                if released[0] or generation != self._generation:
                    return
                released[0] = True
                self._count -= 1
                if self._count == 0:
                    self.event.clear()

        return release

    def reset(self) -> None:
        """Drop every hold (the dock closes, or the session is dropped)."""
        with self._lock:
            self._count = 0
            self._generation += 1
            self.event.clear()


class SharedClosed:
    """The ``closed`` of a part of the dock: the one :attr:`WidgetState.closed` of its ``state``.

    A part that finds the dock gone (a deleted Qt object) sets it, and every part sees it.
    """

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.state.closed

    def __set__(self, obj, value: bool) -> None:
        obj.state.closed = bool(value)
