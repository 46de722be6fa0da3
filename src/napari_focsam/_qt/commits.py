"""``Commits``: the object into the output labels layer, clear, and undo/redo of the labels.

A part of the dock (see :mod:`.widget`): it receives the dock's state and the parts it uses,
never the widget itself. The commit arithmetic is the core's
(:func:`~napari_focsam.core.editing.plan_paste` and the region planners); this part asks the
prompt modes for the plan (one object, or many), writes it as one undo step of the labels
layer, and says what happened, with a warning when the layer holds another image's objects.
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.editing import PasteError
from .layer_utils import owner_of
from .state import WidgetState

__all__ = ["Commits"]


class Commits:
    """Commit, clear, undo and redo for the dock.

    Parameters
    ----------
    state : WidgetState
        The dock's state (``committed_id`` is written here).
    jobs, queue, layers, modes, sync, output, volume, viewer
        The dock's jobs, prediction queue, managed layers, prompt modes, viewer sync, output
        panel, volume flow and napari viewer.
    notify, set_status : callable
        ``notify(level, message)`` and ``set_status(text)`` of the dock.
    """

    def __init__(self, state: WidgetState, *, jobs: Any, queue: Any, layers: Any, modes: Any, sync: Any,
                 output: Any, volume: Any, viewer: Any, notify: Callable[[str, str], None],
                 set_status: Callable[..., None]) -> None:
        self.state = state
        self.jobs, self.queue, self.layers, self.modes = jobs, queue, layers, modes
        self.sync, self.output, self.volume, self.viewer = sync, output, volume, viewer
        self.notify, self.set_status = notify, set_status

    def commit(self) -> int | None:
        """Write the current object into the output labels layer; returns its id (None if nothing).

        While the object's mask is being computed, the commit waits and happens (once) when the
        newest mask arrives.
        """
        if self.jobs.context is None:
            if self.jobs.loading and (self.layers.n_points() or self.modes.boxes.has_box()):
                self.queue.defer_commit()
                self.set_status("committing once the model is loaded and the mask is ready ...")
            else:
                self.notify("warning", "nothing to commit: no image/model loaded yet")
            return None
        if self.jobs.volume_running or self.modes.volume_running:
            self.notify("warning", "wait for the volume propagation to finish (or cancel it)")
            return None
        if not self.queue.request_commit():
            self.set_status("committing when the current mask is ready ...")
            return None
        regions = self.layers.regions  # the object's box on each slice: only those are read and written
        if self.layers.preview is None or not any(r.crop.any() for r in regions.values()):
            self.notify("info", "nothing to commit: click on an object first")
            return None
        out = self.sync.output_layer(create=True)
        if out is None:
            return None
        image, owner = self.sync.image, owner_of(out)
        foreign = owner is not None and image is not None and owner != image.name
        shape = tuple(self.layers.preview.data.shape)
        try:
            paste = self.modes.plan_commit(out, regions, self.output.overwrite(), shape)  # one or many objects
        except PasteError as err:
            self.notify(*self.output.refusal(err, out, shape))
            return None
        out.data_setitem(paste.index, getattr(paste, "values", paste.label))  # one undo step (Ctrl+Z)
        self.modes.next_label.wrote(out, paste.label)
        self.state.committed_id = paste.label
        self.reset_object()
        done = f"committed {self.modes.describe(paste)} to '{out.name}' (Ctrl+Z undoes it)"
        if foreign:  # chosen by hand under Output: written, but never silently
            self.notify("warning", f"{done}: that layer holds the objects of image '{owner}', "
                                   f"not of '{image.name}'")
        else:
            self.set_status(done)
        return paste.label

    def clear(self) -> None:
        """Drop the current object and its points (Esc); a running Segment volume is cancelled."""
        if self.jobs.volume_running or self.modes.volume_running:
            self.volume.cancel()
            self.reset_object()
            return self.notify("info", "Segment volume cancelled (Esc): the object was cleared, nothing committed")
        self.reset_object()
        self.set_status("cleared")

    def reset_object(self) -> None:
        """A new, empty object: no points, no preview, no box."""
        self.volume.reset()
        self.queue.new_object()
        self.layers.clear_points()
        self.layers.clear_preview()
        self.modes.reset()
        self.layers.select_prompts()

    def undo(self) -> None:
        """Ctrl+Z: remove the newest point, or (with no points) undo the last change of the output labels."""
        if self.layers.n_points():
            self.layers.remove_last_point()
            return
        if self.modes.undo_box():
            return
        self.history("undo")

    def history(self, which: str) -> None:
        """``"undo"`` or ``"redo"`` in the output labels layer."""
        out = self.sync.output_layer(create=False)
        if out is None:
            self.notify("info", f"nothing to {which}: no output labels layer yet")
            return
        getattr(out, which)()
        active = self.viewer.layers.selection.active
        if active is not out or out.mode == "pan_zoom":  # keep clicking working (not while painting)
            self.layers.select_prompts()
        self.set_status(f"{which} in '{out.name}'")
