"""``CloseGuard``: stops the widget's parts once, however the widget goes away.

A dock widget can go three ways: napari removes the dock (the widget is un-parented), the main
window closes (Qt then deletes every widget in it, while workers may still be running), or Qt
deletes the widget without either. In each case every job is cancelled, nothing is reported to a
deleted Qt object any more, and keys and events are given back to napari.
"""

from __future__ import annotations

from typing import Any, Sequence

from qtpy.QtCore import QEvent, QObject

from .state import SharedClosed

__all__ = ["CloseGuard"]


class CloseGuard(QObject):
    """Closes ``parts`` (each has ``close()`` or ``release()``) once.

    Parameters
    ----------
    widget : QWidget
        The dock widget (its ``state``: one ``closed`` for every part); its deletion by Qt
        closes the parts.
    parts : sequence
        The widget's parts, closed in this order.
    """

    closed = SharedClosed()

    def __init__(self, widget: Any, parts: Sequence[Any]) -> None:
        super().__init__()  # no parent: it outlives the widget it guards
        self.parts = tuple(parts)
        self.state = widget.state
        self._done = False  # the parts were closed (``closed`` may be set first by a part that saw Qt go)
        self._window: Any = None
        self._widget, self._docked = widget, False
        widget.destroyed.connect(self.close)
        widget.installEventFilter(self)  # docked / un-docked (napari removes a closed dock)

    def watch(self, window: Any) -> None:
        """Close when ``window`` (the widget's main window) closes."""
        if window is self._window or self.closed:
            return
        self._unwatch()
        window.installEventFilter(self)
        self._window = window

    def eventFilter(self, obj: Any, ev: Any) -> bool:  # noqa: N802 (Qt API)
        if obj is self._window and ev.type() == QEvent.Type.Close:
            self.close()
        elif obj is self._widget and ev.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:  # docked: also watch the main window, which may close
                self._docked = True
                if obj.window() is not obj:
                    self.watch(obj.window())
            elif self._docked:  # napari removed the dock by un-parenting the widget
                self.close()
        return False

    def close(self, *_: Any) -> None:
        """Stop every part; each is closed even when an earlier one fails on a deleted Qt object."""
        if self._done:
            return
        self._done = self.closed = True
        self._unwatch()
        try:
            self._widget.removeEventFilter(self)
        except RuntimeError:  # the widget is already deleted
            pass
        for part in self.parts:
            try:
                (getattr(part, "close", None) or part.release)()
            except RuntimeError:  # a Qt object of the part is already deleted
                pass

    def _unwatch(self) -> None:
        if self._window is not None:
            try:
                self._window.removeEventFilter(self)
            except RuntimeError:  # the window is already deleted
                pass
            self._window = None
