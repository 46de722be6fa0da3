"""``VolumeFlow``: Segment volume and the corrections after it.

Segment volume propagates the current object through the stack and leaves it *open* in the
preview: a click on any slice (positive where the object is missed, negative where it leaks, on a
propagated slice or beyond its ends) first updates that slice, then the object is propagated again
by itself, with the clicked slices as anchors (the engine redoes the runs between and beyond them,
:mod:`napari_focsam.core.propagation._anchors`). Ctrl+Z takes the last click back the same way. Commit [C]
writes the whole object into the output labels; Clear [Shift+C/Esc] drops it. A small z-profile
(:class:`~.z_profile.ZProfile`) shows the object's area per slice and its anchors.

The flow holds no widget: it receives the parts it drives (jobs, the predict queue, the managed
layers, the panels) and a few callbacks of the widget's (status, buttons, the clicks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..core.editing import PredictQueue, Ticket
from ..core.errors import Failure
from ..core.prompting import Prompts
from .jobs import SessionJobs
from .panels import ActionPanel
from .prompt_layers import PromptLayers
from .z_profile import ZProfile

__all__ = ["VolumeFlow", "WidgetHooks"]


@dataclass
class WidgetHooks:
    """What the flow asks of the widget."""

    notify: Callable[[str, str], None]       # (level, message)
    set_status: Callable[..., None]           # (text=None)
    update_buttons: Callable[[], None]
    clicks: Callable[[], list]                # [(z, y, x, positive)] in pixels
    start_predict: Callable[[], None]
    failed: Callable[[Failure], None]         # a job failed: say why (out of GPU memory: the CPU)
    stops: Callable[[], dict]                 # the propagation's stops: iou_threshold, edge_fade
    embedded: Callable[[], tuple[int, int]]   # (slices embedded, slices to embed)


class VolumeFlow:
    """Segment volume, its progress, and the automatic re-propagation after a correction."""

    def __init__(self, jobs: SessionJobs, queue: PredictQueue, managed: PromptLayers, actions: ActionPanel,
                 modes: Any, tiles: Any, profile: ZProfile, hooks: WidgetHooks) -> None:
        self.jobs, self.queue, self.managed, self.actions = jobs, queue, managed, actions
        self.modes, self.tiles, self.profile, self.hooks = modes, tiles, profile, hooks
        #: the epoch of the propagated object that is open for corrections (None: none is)
        self.open_epoch: int | None = None
        self._sent: list = []  # the clicks of the last propagation
        self.repropagations = 0
        jobs.volume_done.connect(self.done)

    # ------------------------------------------------------------------ Segment volume
    def segment(self, correcting: bool = False, clicks: list | None = None) -> None:
        """Propagate the current object through the stack (shown in the preview, not committed);
        ``clicks``: the current clicks, when the caller has them."""
        ctx, h = self.jobs.context, self.hooks
        if ctx is None:
            return h.notify("warning", "no model loaded yet")
        if not ctx.is_3d:
            return h.notify("info", "Segment volume needs a 3D stack (this image is 2D)")
        if self.jobs.volume_running or self.modes.busy():
            return
        clicks, box = (h.clicks() if clicks is None else clicks), self.modes.box()
        if self.modes.batch:
            return self.modes.segment_volume(clicks, h.stops())
        if not clicks and box is None:
            return h.notify("info", "click on the object in a slice first, then Segment volume")
        ticket = self.queue.supersede()  # a newer state than any running prediction
        self._sent = list(clicks)
        self.actions.start_volume_progress()
        self.jobs.segment_volume(ticket, Prompts.of(clicks, box), h.stops())
        h.update_buttons()
        done, _ = h.embedded()
        left = ctx.n_slices - done
        what = "correcting: propagating the object again" if correcting else "segmenting the volume"
        h.set_status(f"{what} ..." if left <= 0 or self.tiles.tiled else
                     f"{what}: {done}/{ctx.n_slices} slices embedded, the other {left} are embedded on the way ...")

    def cancel(self) -> None:
        """Stop a running propagation (the finished slices stay in the preview)."""
        self.jobs.cancel_volume()
        self.modes.cancel()
        self.tiles.cancel()

    def done(self, ticket: Ticket, res: Any, vol: Any) -> None:
        """A propagation ended: show it and keep the object open for corrections."""
        h = self.hooks
        self.actions.end_volume_progress()
        h.update_buttons()
        done, total = h.embedded()
        ctx = self.jobs.context
        if self.jobs.embedding and ctx is not None and ctx.is_3d:
            self.actions.show_progress(done, total, "embeddings %v/%m")
        else:
            self.actions.hide_progress()
        if isinstance(res, Failure):
            h.failed(res)
        elif ticket.epoch == self.queue.epoch and vol is not None and ctx is not None:
            z0, z1 = res.z_range
            self.managed.show_masks(vol, True, volume=True)
            self.open_epoch = ticket.epoch
            self.show_profile()
            if res.cancelled:
                h.notify("info", f"propagation cancelled: slices {z0}-{z1} are in the preview; "
                                 "press C to commit them, or Shift+C to clear")
            else:
                why = ", ".join(f"{d}: {r}" for d, r in res.stopped_reason.items())
                h.notify("info", f"volume segmented on slices {z0}-{z1} ({why}): click on any slice to "
                                 "correct it (it is propagated again), C commits, Shift+C clears")
        if self.queue.dirty and not self.queue.running:
            h.start_predict()

    # ------------------------------------------------------------------ corrections
    def is_open(self) -> bool:
        return self.open_epoch is not None and self.open_epoch == self.queue.epoch

    def show_predicted(self, masks: dict, is_3d: bool) -> bool:
        """A prediction of the clicked slices arrived. For an open volume: shown over the propagated
        slices (the others keep theirs) and the object propagated again; True when handled so."""
        if not self.is_open():
            return False
        self.managed.show_masks(masks, is_3d, merge=True)
        clicks = self.hooks.clicks()
        self.show_profile(clicks)
        if clicks and clicks != self._sent and not self.jobs.volume_running:
            self.repropagations += 1
            self.segment(correcting=True, clicks=clicks)
        return True

    def show_profile(self, clicks: list | None = None) -> None:
        """Show the object's z-profile (``clicks``: the current clicks, when the caller has them)."""
        ctx = self.jobs.context
        if ctx is None or not ctx.is_3d or not self.managed.regions:
            return self.profile.clear()
        areas = {z: int(r.crop.sum()) for z, r in self.managed.regions.items()}
        clicks = self.hooks.clicks() if clicks is None else clicks
        self.profile.show_profile(ctx.n_slices, areas, {int(c[0]) for c in clicks}, self.profile.view_z)

    def reset(self) -> None:
        """The object was committed or cleared."""
        self.open_epoch, self._sent = None, []
        self.profile.clear()
