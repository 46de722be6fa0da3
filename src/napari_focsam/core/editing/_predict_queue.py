"""Which prediction runs next, which result is stale, and when a pending commit fires.

The widget answers every change of the prompts with a prediction in a background thread. Users
click faster than a CPU predicts, so the widget follows four rules, kept here without Qt so that
they can be tested in milliseconds:

* at most one prediction is in flight;
* the newest points win: changes that arrive while one runs are sent, together, when it ends;
* a result that is older than the points (or belongs to an object that was committed or cleared
  meanwhile) is dropped;
* a commit asked for while a prediction runs (or waits) fires when the newest mask has arrived,
  exactly once; a failure or a clear drops it.

>>> q = PredictQueue()
>>> q.points_changed()          # True: nothing runs, start now
True
>>> t = q.start()
>>> q.points_changed()          # False: one runs; these points are sent when it ends
False
>>> q.request_commit()          # False: deferred
False
>>> q.finish(t)                 # stale, newer points wait: start them, keep the commit pending
Outcome(show=False, start_next=True, commit=False)
>>> q.finish(q.start())         # the newest mask: show it, then commit
Outcome(show=True, start_next=False, commit=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Eta", "Outcome", "PredictQueue", "Ticket", "split_objects"]


@dataclass(frozen=True)
class Ticket:
    """Identifies one prediction: the state of the points and of the object when it started.

    Attributes
    ----------
    generation : int
        Counter of prompt changes at the start.
    epoch : int
        Counter of objects (bumped by commit, clear or a new model) at the start.
    """

    generation: int
    epoch: int


@dataclass(frozen=True)
class Outcome:
    """What to do with a finished prediction.

    Attributes
    ----------
    show : bool
        The result is the newest: show it.
    start_next : bool
        Newer points wait: start a prediction with them now.
    commit : bool
        A commit was asked for and this is the newest mask: commit now (reported once).
    """

    show: bool = False
    start_next: bool = False
    commit: bool = False


class PredictQueue:
    """The scheduling state of the interactive predictions (not thread-safe: one GUI thread).

    A worker thread may read :meth:`is_current` to skip a prediction that is already stale.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.epoch = 0
        self._running: Ticket | None = None
        self._dirty = False
        self._commit_pending = False

    def __repr__(self) -> str:
        return (f"PredictQueue(generation={self.generation}, epoch={self.epoch}, running={self.running}, "
                f"dirty={self._dirty}, commit_pending={self._commit_pending})")

    # -- state
    @property
    def running(self) -> bool:
        """True while a prediction is in flight."""
        return self._running is not None

    @property
    def dirty(self) -> bool:
        """True when the points changed since the last prediction started."""
        return self._dirty

    @property
    def busy(self) -> bool:
        """True while a prediction runs or waits to be started."""
        return self._running is not None or self._dirty

    @property
    def commit_pending(self) -> bool:
        """True when a commit waits for the newest mask."""
        return self._commit_pending

    def is_current(self, ticket: Ticket) -> bool:
        """True when no newer points or object exist than those of ``ticket``."""
        return ticket.generation == self.generation and ticket.epoch == self.epoch

    # -- events
    def points_changed(self) -> bool:
        """The prompts changed; returns True when a prediction should be started now."""
        self.generation += 1
        self._dirty = True
        return self._running is None

    def start(self) -> Ticket:
        """A prediction with the current points starts; returns its ticket.

        Raises
        ------
        RuntimeError
            If one is already in flight.
        """
        if self._running is not None:
            raise RuntimeError("a prediction is already in flight: wait for finish()")
        self._running = Ticket(self.generation, self.epoch)
        self._dirty = False
        return self._running

    def nothing_to_predict(self) -> bool:
        """No prediction is needed for the current points (no points, nothing shown).

        Returns True when a pending commit should run now (it is dropped from the queue).
        """
        self._dirty = False
        fire, self._commit_pending = self._commit_pending, False
        return fire and self._running is None

    def finish(self, ticket: Ticket, ok: bool = True) -> Outcome:
        """The prediction of ``ticket`` ended (``ok`` False: it failed); what to do now.

        A ticket that is not the one in flight (already finished) gives an empty outcome.
        """
        if ticket != self._running:
            return Outcome()
        self._running = None
        if not ok:
            self._commit_pending = False
            return Outcome(start_next=self._dirty)
        if self._dirty:
            return Outcome(start_next=True)  # the commit stays pending for the newest mask
        show = self.is_current(ticket)
        commit = show and self._commit_pending
        if commit:
            self._commit_pending = False
        return Outcome(show=show, commit=commit)

    def request_commit(self) -> bool:
        """A commit was asked for; returns True when it can run now, else it is deferred."""
        if self.busy:
            self._commit_pending = True
            return False
        self._commit_pending = False
        return True

    def defer_commit(self) -> None:
        """A commit was asked for before anything can be predicted (the model still loads): it
        fires with the first mask shown after that."""
        self._commit_pending = True

    def cancel_commit(self) -> None:
        """Drop a pending commit."""
        self._commit_pending = False

    def new_object(self) -> None:
        """The current object was committed, cleared or dropped: every result so far is stale."""
        self.epoch += 1
        self.generation += 1
        self._dirty = False
        self._commit_pending = False

    def rerun(self) -> bool:
        """Re-run the current points on a fresh object (a setting changed); True: start now."""
        self.epoch += 1
        return self.points_changed()

    def supersede(self) -> Ticket:
        """A longer job (volume propagation) takes over the current points; returns its ticket.

        A prediction in flight becomes stale; waiting points are taken by the job.
        """
        self.generation += 1
        self._dirty = False
        self._commit_pending = False
        return Ticket(self.generation, self.epoch)


def split_objects(clicks: Sequence[tuple[int, float, float, bool]],
                  masks: Mapping[int, np.ndarray]) -> list[int]:
    """Slices where positive clicks landed on separate pieces of the mask (several objects).

    One object is one cell: users sometimes click several cells, expecting one label each.
    A slice is reported when its mask has several connected pieces and at least two of them
    hold a positive click.

    Parameters
    ----------
    clicks : sequence of (z, y, x, positive)
        The clicks in pixel coordinates.
    masks : mapping of int to numpy.ndarray
        ``{z: (Y, X) bool}`` masks of the object.

    Returns
    -------
    list of int
        The slices, sorted.
    """
    from scipy import ndimage as ndi

    found = []
    for z, mask in masks.items():
        pos = [(y, x) for cz, y, x, p in clicks if p and cz == z]
        if len(pos) < 2 or not np.any(mask):
            continue
        pieces, n = ndi.label(np.asarray(mask, bool))
        if n < 2:
            continue
        h, w = pieces.shape
        hit = {int(pieces[min(max(int(round(y)), 0), h - 1), min(max(int(round(x)), 0), w - 1)])
               for y, x in pos} - {0}
        if len(hit) >= 2:
            found.append(int(z))
    return sorted(found)


class Eta:
    """Time left of a job done in steps (embedding slices), from the mean time per step so far.

    >>> eta = Eta(10, now=0.0)
    >>> eta.update(2, now=4.0)
    16.0
    """

    def __init__(self, total: int, now: float) -> None:
        self.total = int(total)
        self.t0 = float(now)
        self.done = 0

    def update(self, done: int, now: float) -> float | None:
        """Seconds left after ``done`` steps at time ``now`` (None before the first step)."""
        self.done = int(done)
        if self.done <= 0:
            return None
        return max(0.0, (now - self.t0) / self.done * (self.total - self.done))

    @staticmethod
    def text(seconds: float | None) -> str:
        """``"about 40 s left"`` / ``"about 3 min left"`` ("" when unknown)."""
        if seconds is None:
            return ""
        if seconds < 90:
            return f"about {max(1, round(seconds))} s left"
        return f"about {round(seconds / 60)} min left"
