"""``EmbeddingProgress``: the background embedding of a loaded image, its progress and ETA.

A part of the dock (see :mod:`.widget`): once a model and an image are loaded it starts the
embeddings (the tiles in view on a large image, else every slice nearest the one in view
first), keeps ``embedded``, ``embed_total`` and ``eta`` of the dock's
:class:`~.state.WidgetState`, shows the progress bar of a stack and says how the work ended.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..core.editing import Eta
from ..core.errors import Failure
from .state import WidgetState

__all__ = ["EmbeddingProgress"]


class EmbeddingProgress:
    """The embeddings of the dock's session.

    Parameters
    ----------
    state : WidgetState
        Where ``embedded``, ``embed_total`` and ``eta`` are kept.
    jobs, actions, tiles, sync
        The dock's jobs, action panel (its progress bar), tile view and viewer sync.
    notify, set_status, failed : callable
        The dock's ``notify(level, message)``, ``set_status(text=None)`` and ``failed(Failure)``.
    """

    def __init__(self, state: WidgetState, *, jobs: Any, actions: Any, tiles: Any, sync: Any,
                 notify: Callable[[str, str], None], set_status: Callable[..., None],
                 failed: Callable[[Failure], None]) -> None:
        self.state, self.jobs, self.actions, self.tiles, self.sync = state, jobs, actions, tiles, sync
        self.notify, self.set_status, self.failed = notify, set_status, failed
        self._eta: Eta | None = None

    def start(self, context: Any) -> None:
        """A session is loaded: embed its tiles in view (a large image) or its slices."""
        tiled = self.tiles.start(context)  # a large image: tiles in view, not whole slices
        total = 0 if tiled else self.jobs.start_embedding(lambda: self.sync.view_z)
        self._eta = Eta(total, time.perf_counter())
        self.state.update(dict(embed_total=total, eta="", embedded=0))
        if context.is_3d and not tiled and not self.jobs.volume_running:
            self.actions.show_progress(0, total, "embeddings %v/%m")

    def on_embedded(self, done: int, total: int) -> None:
        """``done`` of ``total`` slices are embedded."""
        left = self._eta.update(done, time.perf_counter()) if self._eta is not None else None
        eta = Eta.text(left) if done < total else ""
        self.state.update(dict(embedded=done, eta=eta))
        ctx = self.jobs.context
        if ctx is not None and ctx.is_3d and not self.jobs.volume_running:
            self.actions.show_progress(done, total, "embeddings %v/%m" + (f" · {eta}" if eta else ""))
        self.set_status()

    def on_done(self, result: Any) -> None:
        """The embedding worker ended: a Failure, a cache warning (str) or None."""
        self.state.eta = ""
        self.tiles.finished()
        if not self.jobs.volume_running:
            self.actions.hide_progress()
        if isinstance(result, Failure):
            self.failed(result)
        elif isinstance(result, str) and result:
            self.notify("warning", f"embedding cache: {result}")
        else:
            self.set_status()
