"""Prompts beyond single clicks in the widget: boxes, many objects at once, and Segment all.

``PromptModes`` is composed into the dock widget. It owns the boxes layer
(:class:`~.box_prompts.BoxPrompts`), the "More prompts" panel and three kinds of background work:

* **box + clicks**: the box (checked on the GUI thread: a bad one gives a notification) goes to
  the widget's prediction job with the clicks (:func:`~napari_focsam.core.editing._paste_many.set_prompts`);
* **many objects**: each positive point is its own session object, negatives are shared per slice;
  the preview shows their union; Commit writes them all with consecutive ids as one undo step;
  Segment volume propagates them one after the other (progress over all, Cancel keeps what is done);
* **Segment all**: :class:`~.segment_all_job.SegmentAllJob` (every object of the image or the
  slice in view, written on background pixels with new ids).

Engine modules are imported inside the workers (torch stays off the GUI thread).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtCore import QObject, Qt, Signal

from ..core.editing import MAX_COVERED, ManyPaste, PasteError, batch_groups, plan_many_regions, plan_paste_regions
from ..core.errors import Failure, describe_error
from ..core.prompting import Prompts
from .box_prompts import BoxPrompts
from .jobs import start_job
from .prompt_modes_panel import PromptModesPanel
from .region_layers import NextLabel, merge_by_slice
from .segment_all_job import SegmentAllJob
from .state import SharedClosed

if TYPE_CHECKING:  # pragma: no cover - core.regions imports torch (kept off the GUI thread's imports)
    from ..core.prompting import MaskRegion

__all__ = ["PromptModes"]


class PromptModes(QObject):
    """Boxes, the many-objects mode and Segment all for one :class:`~.widget.FocSAMWidget`.

    Parameters
    ----------
    state : WidgetState
        The dock's state (its ``closed``).
    viewer, jobs, queue, layers, sync
        The napari viewer and the dock's jobs, prediction queue, managed layers and viewer sync.
    commit : callable
        The dock's commit (the many-objects mode commits what it propagated).
    notify : callable
        ``notify(level, message)``: the widget's one way to tell the user something.
    """

    progress = Signal(int, int, str)  # from worker threads (queued): done, total, format
    closed = SharedClosed()

    def __init__(self, state: Any, *, viewer: Any, jobs: Any, queue: Any, layers: Any, sync: Any,
                 notify: Callable[[str, str], None], commit: Callable[[], Any]) -> None:
        super().__init__()
        self.state, self.viewer, self.jobs, self.queue = state, viewer, jobs, queue
        self.managed, self.sync, self.notify, self.commit = layers, sync, notify, commit
        self.boxes = BoxPrompts(viewer)
        self.panel = PromptModesPanel()
        self.batch = False
        self._objects: dict = {}   # positive click -> session object (many-objects mode)
        self._stale: list = []     # objects to remove from the session (by the next worker)
        self._session = None
        self._masks: list[dict[int, "MaskRegion"]] = []  # per object: {z: MaskRegion}
        self.next_label = NextLabel()  # the output layer's largest id, kept for zarr-backed layers
        self._workers: set = set()
        self._cancel = threading.Event()
        self.all = SegmentAllJob(jobs=jobs, sync=sync, params=self.panel.params,
                                 next_label=self.next_label, report=self.progress.emit, notify=notify,
                                 show_state=self.show_state, start_worker=self._start, busy=self.busy)
        self.volume_running = False
        self._box_error = ""
        self.panel.batch_toggled.connect(self.set_batch)
        self.panel.segment_all_clicked.connect(self.segment_all)
        self.panel.cancel_clicked.connect(self.cancel)
        self.progress.connect(self.panel.show_progress, Qt.ConnectionType.QueuedConnection)
        self.boxes.drawn.connect(layers.select_prompts)
        self.boxes.removed.connect(self._restore_boxes)

    # ------------------------------------------------------------------ state
    def running(self) -> bool:
        return bool(self._workers)

    @property
    def n_objects(self) -> int:
        """Objects of the last answer in the many-objects mode (0 otherwise)."""
        return len(self._masks) if self.batch else 0

    def busy(self) -> bool:
        return self.all_running or self.volume_running

    def show_state(self) -> None:
        self.panel.show_state(ready=self.jobs.context is not None, running=self.busy())

    def ensure(self, image: Any, built: Any = None) -> None:
        """A new image: a fresh boxes layer for it (``built``: one from ``BoxPrompts.new_layer``)."""
        self.boxes.ensure(image, built)

    def _restore_boxes(self) -> None:
        """The boxes layer was deleted: a new one for the chosen image (not while closing)."""
        image = self.sync.image
        if self.closed or image is None or image not in self.viewer.layers:
            return
        self.boxes.ensure(image)
        self.notify("info", "the FocSAM boxes layer was deleted: a new one was added")

    def reset(self) -> None:
        """The object was committed or cleared: no box, no batch objects."""
        self.boxes.clear()
        self._drop_objects()
        self._box_error = ""

    def _drop_objects(self) -> None:
        self._stale.extend(self._objects.values())
        self._objects = {}
        self._masks = []

    def set_batch(self, on: bool) -> None:
        """Switch the many-objects mode; the current points are segmented again in the new mode."""
        if bool(on) == self.batch:
            return
        self.batch = bool(on)
        if self.panel.batch_check.isChecked() != self.batch:
            self.panel.batch_check.setChecked(self.batch)
        self._drop_objects()
        if self.batch and self.boxes.has_box():
            self.notify("info", "many-objects mode: the box is not used (one object per positive point)")
        self.managed.points_changed.emit()  # the same points, segmented again

    def undo_box(self) -> bool:
        """Ctrl+Z with no points left: remove the box (True when there was one)."""
        return self.boxes.remove()

    # ------------------------------------------------------------------ boxes
    def box(self) -> tuple[int, Any] | None:
        """The current box as (z, Box) (None: no box, the many-objects mode, or a bad box, which is
        reported once and removed)."""
        ctx, image = self.jobs.context, self.sync.image
        if self.batch or ctx is None or image is None or not self.boxes.has_box():
            return None
        try:
            return self.boxes.box(image, ctx.plane_shape, ctx.n_slices, ctx.is_3d)
        except ValueError as err:
            self.notify("warning", f"{err} (box removed)")
            self.boxes.clear()
            return None

    def has_prompt(self) -> bool:
        return self.box() is not None

    # ------------------------------------------------------------------ prediction
    def predict(self, ticket: Any, clicks: list, shown: set[int], is_current: Callable[[Any], bool]) -> None:
        """Answer the prompts: the widget's job (box + clicks), or one object per positive point."""
        jobs = self.jobs
        if not self.batch:
            jobs.predict(ticket, Prompts.of(clicks, self.box()), shown, is_current)
            return
        ctx = jobs.context
        groups = batch_groups(clicks)
        keys = [tuple(g[0]) for g in groups]
        objects = self._objects_for(ctx)
        release = jobs.foreground.hold()

        def run():
            if ctx is None or not is_current(ticket):
                return None, 0.0
            t0 = time.perf_counter()
            try:
                with ctx.lock:
                    self._remove_stale(ctx)
                    for key in [k for k in objects if k not in keys]:
                        ctx.session.remove_object(objects.pop(key))
                    per = []
                    for key, group in zip(keys, groups):
                        obj = objects.get(key)
                        if obj is None:
                            obj = objects[key] = ctx.session.new_object()
                        obj.set_clicks(group, region=True)
                        per.append({key[0]: obj.mask_region(key[0])})
            except Exception as exc:
                return describe_error(exc), 0.0
            return per, time.perf_counter() - t0

        def done(result):
            self._retire(objects)
            release()
            per, dt = result if isinstance(result, tuple) else (result, 0.0)
            masks = per
            if isinstance(per, list):  # the union of the objects, by region; shown slices left empty
                from ..core.prompting import empty_region  # torch is loaded by now (a model answered)

                masks = {z: empty_region() for z in shown}
                masks.update(merge_by_slice(per))
                if is_current(ticket):
                    self._masks = per
            jobs.predicted.emit(ticket, masks, dt)

        self._start(run, done)

    def _objects_for(self, ctx: Any) -> dict:
        session = None if ctx is None else ctx.session
        if session is not self._session:
            self._session, self._objects, self._stale = session, {}, []
        return self._objects

    def _retire(self, objects: dict) -> None:
        """A worker used ``objects``; if they were dropped meanwhile, the next worker removes them."""
        if objects is not self._objects:
            self._stale.extend(objects.values())

    def _remove_stale(self, ctx: Any) -> None:
        """Under ``ctx.lock``: forget the objects of earlier batches."""
        stale, self._stale = self._stale, []
        for obj in stale:
            try:
                ctx.session.remove_object(obj)
            except ValueError:
                pass

    # ------------------------------------------------------------------ commit
    def plan_commit(self, out: Any, regions: dict[int, "MaskRegion"], overwrite: bool,
                    shape: tuple[int, ...]) -> Any:
        """The pixels and ids of a commit into the labels layer ``out`` (of the image's ``shape``):
        one object (a ``Paste``), or every batch object (a ``ManyPaste``); reads only the objects' boxes.

        Raises PasteError (see :func:`~napari_focsam.core.editing._paste_regions.plan_paste_regions`).
        """
        if tuple(out.data.shape) != tuple(shape):
            raise PasteError("shape", f"labels shape {tuple(out.data.shape)} differs from the image's {shape}")
        top = self.next_label.max_label(out)
        if not (self.batch and self._masks):
            return plan_paste_regions(out.data, regions, overwrite=overwrite, max_label=top,
                                      max_covered=MAX_COVERED)
        return plan_many_regions(out.data, self._masks, overwrite=overwrite, max_label=top)

    @staticmethod
    def describe(paste: Any) -> str:
        if isinstance(paste, ManyPaste):
            ids = paste.ids
            return f"{len(ids)} objects ({ids[0]}-{ids[-1]})" if len(ids) > 1 else f"object {ids[0]}"
        return f"object {paste.label}"

    # ------------------------------------------------------------------ volume (many objects)
    def segment_volume(self, clicks: list, stops: dict) -> None:
        """Propagate every batch object through the stack, one after the other, then commit them all
        (``stops``: the stop rules' settings, as for one object)."""
        ctx, jobs = self.jobs.context, self.jobs
        groups = batch_groups(clicks)
        if not groups:
            self.notify("info", "click on the objects (positive points) first, then Segment volume")
            return
        keys = [tuple(g[0]) for g in groups]
        objects = self._objects_for(ctx)
        cancel = self._cancel = threading.Event()
        n = len(groups)
        report = self.progress.emit
        self.queue.supersede()
        self.volume_running = True
        release = jobs.foreground.hold()
        self.show_state()
        report(0, 100 * n, f"propagating {n} objects: %p%")

        def run():
            vols = []
            try:
                with ctx.lock:
                    self._remove_stale(ctx)
                    for i, (key, group) in enumerate(zip(keys, groups)):
                        if cancel.is_set():
                            break
                        obj = objects.get(key)
                        if obj is None:
                            obj = objects[key] = ctx.session.new_object()
                        obj.set_clicks(group, region=True)

                        def step(done, total, i=i):
                            report(100 * i + int(100 * done / max(total, 1)), 100 * n,
                                   f"propagating object {i + 1}/{n}: %p%")
                        obj.propagate(**stops, progress=step, cancelled=cancel.is_set)
                        vols.append(obj.volume_regions())
                if not cancel.is_set():
                    report(100 * n, 100 * n, f"propagated {n} objects")
            except Exception as exc:
                return describe_error(exc, "Segment volume")
            return vols

        def done(vols):
            self._retire(objects)
            self.volume_running = False
            release()
            self.show_state()
            if isinstance(vols, Failure):
                self.notify("error", vols.message)
                return
            if not vols:
                self.notify("info", "propagation cancelled before the first object: nothing to commit")
                return
            self._masks = list(vols)
            self.managed.show_masks(merge_by_slice(vols), True, volume=True)
            if cancel.is_set():
                self.notify("info", f"propagation cancelled: {len(vols)} of {n} objects are in the preview; "
                                    "press C to commit them, or Shift+C to clear")
                return
            self.commit()

        self._start(run, done)

    # ------------------------------------------------------------------ segment all
    def segment_all(self) -> None:
        """Segment every object of the image (or the slice in view) in a worker (:class:`SegmentAllJob`)."""
        self.all.start()

    @property
    def all_running(self) -> bool:
        """Segment all runs."""
        return self.all.running

    def cancel(self) -> None:
        """Stop Segment all or a many-objects propagation (the widget's Cancel calls this too)."""
        self._cancel.set()
        self.all.cancel()

    # ------------------------------------------------------------------ workers
    def _start(self, func: Callable, on_done: Callable[[Any], None]) -> Any:
        """Run ``func`` (model work: on the compute thread, see :func:`on_compute`) in a worker;
        ``on_done(result)`` after it ended."""
        worker = start_job(func, on_done, self._workers, lambda: self.closed, compute=True)
        worker.start()
        return worker

    def close(self) -> None:
        """Stop reporting; running work is cancelled."""
        self.closed = True
        self._cancel.set()
        self.boxes.release()
