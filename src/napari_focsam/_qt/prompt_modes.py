"""Prompts beyond single clicks in the widget: boxes, many objects at once, and Segment all.

``PromptModes`` is composed into the dock widget. It owns the boxes layer
(:class:`~.box_prompts.BoxPrompts`), the "More prompts" panel and three kinds of background work:

* **box + clicks**: the box (checked on the GUI thread: a bad one gives a notification) goes to
  the widget's prediction job with the clicks (:func:`~napari_focsam.core.multi_prompts.set_prompts`);
* **many objects**: each positive point is its own session object, negatives are shared per slice;
  the preview shows their union; Commit writes them all with consecutive ids as one undo step;
  Segment volume propagates them one after the other (progress over all, Cancel keeps what is done);
* **Segment all**: :func:`~napari_focsam.core.automatic.segment_all` on the image (or the slice in
  view) in a worker; the objects go to the output layer on background pixels only, with ids above
  the current maximum, as one undo step. On a tiled (large) image it is
  :func:`~napari_focsam.core.tiled_automatic.segment_all_tiled` on the session's tile store, and
  the objects are written box by box (never a plane-sized array per object): as one undo step up
  to :data:`SEGMENT_ALL_UNDO_PIXELS` pixels (napari's history keeps every written pixel's index
  and old value), without undo above.

Engine modules are imported inside the workers (torch stays off the GUI thread).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Qt, Signal

from ..core.errors import Failure, describe_error
from ..core.labels import PasteError, label_limit
from ..core.region_paste import MAX_COVERED, plan_many_regions, plan_paste_regions, region_key
from ..core.multi_prompts import ManyPaste, batch_groups, plan_new_labels
from .box_prompts import BoxPrompts
from .prompt_modes_panel import PromptModesPanel
from .region_layers import NextLabel, merge_by_slice

if TYPE_CHECKING:  # pragma: no cover - core.regions imports torch (kept off the GUI thread's imports)
    from ..core.regions import MaskRegion

__all__ = ["SEGMENT_ALL_MAX_SIDE", "SEGMENT_ALL_MAX_PIXELS", "SEGMENT_ALL_UNDO_PIXELS", "PromptModes"]

#: Segment all on one canvas holds the whole slice (and its 8-bit RGB copy): an image that is not
#: tiled is refused above this many pixels (a tiled one is scanned tile by tile).
SEGMENT_ALL_MAX_SIDE = 4096
SEGMENT_ALL_MAX_PIXELS = SEGMENT_ALL_MAX_SIDE * SEGMENT_ALL_MAX_SIDE
#: A tiled Segment all writes up to this many object pixels as one undo step (about 20 bytes of
#: napari history per pixel, as the single-canvas path at its largest); more go box by box, no undo.
SEGMENT_ALL_UNDO_PIXELS = SEGMENT_ALL_MAX_PIXELS


class PromptModes(QObject):
    """Boxes, the many-objects mode and Segment all for one :class:`~.widget.FocSAMWidget`.

    Parameters
    ----------
    widget : FocSAMWidget
        The dock widget (its ``jobs``, ``managed``, ``sync``, ``output`` and ``commit``).
    notify : callable
        ``notify(level, message)``: the widget's one way to tell the user something.
    """

    progress = Signal(int, int, str)  # from worker threads (queued): done, total, format

    def __init__(self, widget: Any, notify: Callable[[str, str], None]) -> None:
        super().__init__()
        self.widget = widget
        self.notify = notify
        self.boxes = BoxPrompts(widget.viewer)
        self.panel = PromptModesPanel()
        self.batch = False
        self._objects: dict = {}   # positive click -> session object (many-objects mode)
        self._stale: list = []     # objects to remove from the session (by the next worker)
        self._session = None
        self._masks: list[dict[int, "MaskRegion"]] = []  # per object: {z: MaskRegion}
        self.next_label = NextLabel()  # the output layer's largest id, kept for zarr-backed layers
        self._workers: set = set()
        self._cancel = threading.Event()
        self.all_running = False
        self.volume_running = False
        self._box_error = ""
        self.closed = False
        self.panel.batch_toggled.connect(self.set_batch)
        self.panel.segment_all_clicked.connect(self.segment_all)
        self.panel.cancel_clicked.connect(self.cancel)
        self.progress.connect(self.panel.show_progress, Qt.ConnectionType.QueuedConnection)
        self.boxes.drawn.connect(widget.managed.select_prompts)
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
        self.panel.show_state(ready=self.widget.jobs.context is not None, running=self.busy())

    def ensure(self, image: Any, built: Any = None) -> None:
        """A new image: a fresh boxes layer for it (``built``: one from ``BoxPrompts.new_layer``)."""
        self.boxes.ensure(image, built)

    def _restore_boxes(self) -> None:
        """The boxes layer was deleted: a new one for the chosen image (not while closing)."""
        image = self.widget.sync.image
        if self.closed or image is None or image not in self.widget.viewer.layers:
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
        self.widget.managed.points_changed.emit()  # the same points, segmented again

    def undo_box(self) -> bool:
        """Ctrl+Z with no points left: remove the box (True when there was one)."""
        return self.boxes.remove()

    # ------------------------------------------------------------------ boxes
    def box(self) -> tuple[int, Any] | None:
        """The current box as (z, Box) (None: no box, the many-objects mode, or a bad box, which is
        reported once and removed)."""
        ctx, image = self.widget.jobs.context, self.widget.sync.image
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
        jobs = self.widget.jobs
        if not self.batch:
            jobs.predict(ticket, clicks, shown, is_current, box=self.box())
            return
        ctx = jobs.context
        groups = batch_groups(clicks)
        keys = [tuple(g[0]) for g in groups]
        objects = self._objects_for(ctx)
        jobs.interactive.set()

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
            if not jobs.volume_running and not self.volume_running:
                jobs.interactive.clear()
            per, dt = result if isinstance(result, tuple) else (result, 0.0)
            masks = per
            if isinstance(per, list):  # the union of the objects, by region; shown slices left empty
                from ..core.regions import empty_region  # torch is loaded by now (a model answered)

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

        Raises PasteError (see :func:`~napari_focsam.core.region_paste.plan_paste_regions`).
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
    def segment_volume(self, clicks: list, iou: float) -> None:
        """Propagate every batch object through the stack, one after the other, then commit them all."""
        w = self.widget
        ctx, jobs = w.jobs.context, w.jobs
        groups = batch_groups(clicks)
        if not groups:
            self.notify("info", "click on the objects (positive points) first, then Segment volume")
            return
        keys = [tuple(g[0]) for g in groups]
        objects = self._objects_for(ctx)
        cancel = self._cancel = threading.Event()
        n = len(groups)
        report = self.progress.emit
        w.queue.supersede()
        self.volume_running = True
        jobs.interactive.set()
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
                        obj.propagate(iou_threshold=iou, progress=step, cancelled=cancel.is_set)
                        vols.append(obj.volume_regions())
                if not cancel.is_set():
                    report(100 * n, 100 * n, f"propagated {n} objects")
            except Exception as exc:
                return describe_error(exc, "Segment volume")
            return vols

        def done(vols):
            self._retire(objects)
            self.volume_running = False
            if not jobs.predicting:
                jobs.interactive.clear()
            self.show_state()
            if isinstance(vols, Failure):
                self.notify("error", vols.message)
                return
            if not vols:
                self.notify("info", "propagation cancelled before the first object: nothing to commit")
                return
            self._masks = list(vols)
            w.managed.show_masks(merge_by_slice(vols), True, volume=True)
            if cancel.is_set():
                self.notify("info", f"propagation cancelled: {len(vols)} of {n} objects are in the preview; "
                                    "press C to commit them, or Shift+C to clear")
                return
            w.commit()

        self._start(run, done)

    # ------------------------------------------------------------------ segment all
    def segment_all(self) -> None:
        """Segment every object of the image (or the slice in view) in a worker."""
        w = self.widget
        ctx, image = w.jobs.context, w.sync.image
        if ctx is None or image is None:
            self.notify("warning", "no model loaded yet: wait for 'ready', then Segment all")
            return
        if self.busy():
            return
        try:
            params = self.panel.params()
        except ValueError as err:
            self.notify("error", str(err))
            return
        h, wd = ctx.plane_shape
        tiled = bool(ctx.session.tiled)
        if not tiled and h * wd > SEGMENT_ALL_MAX_PIXELS:
            self.notify("warning", f"Segment all reads and encodes the whole slice: this one is {h}x{wd} pixels, "
                                   f"above {SEGMENT_ALL_MAX_SIDE}x{SEGMENT_ALL_MAX_SIDE}; open a crop of it "
                                   "(e.g. a region of the layer's data) or click on the objects")
            return
        z = int(w.sync.view_z) if ctx.is_3d else None
        vol = ctx.session.volume
        cancel = self._cancel = threading.Event()
        report = self.progress.emit
        self.all_running = True
        w.jobs.interactive.set()
        self.show_state()
        report(0, 0, "segment all: encoding ...")

        def run():
            from ..core.automatic import segment_all

            try:
                if tiled:
                    return self._scan_tiles(ctx.session, z or 0, params, report, cancel.is_set)
                plane = vol.plane(z or 0)  # read here, not on the GUI thread (a lazy layer)
                emb = ctx.session.store.get(z or 0) if params.tiles == 1 else None
                return segment_all(ctx.session.predictor, plane, params, embedding=emb,
                                   progress=lambda d, t: report(d, t, "segment all: %v/%m"),
                                   cancelled=cancel.is_set)
            except Exception as exc:
                return describe_error(exc, "Segment all")

        def done(res):
            if cancel is not self._cancel:  # cancelled and already answered (see cancel)
                return
            self._end_segment_all()
            if tiled and not isinstance(res, Failure):
                self._write_scan(res, z)
            else:
                self._write_all(res, z)

        self._start(run, done)

    @staticmethod
    def _scan_tiles(session: Any, z: int, params: Any, report: Callable[[int, int, str], None],
                   cancelled: Callable[[], bool]) -> tuple | None:
        """In a worker: :func:`~napari_focsam.core.tiled_automatic.segment_all_tiled` on slice ``z``
        of a tiled ``session``; returns ``(ScanResult, [{z: MaskRegion}] per object, levels)``,
        None when cancelled."""
        from ..core.regions import MaskRegion
        from ..core.tiled_automatic import segment_all_tiled

        store = session.store
        res = segment_all_tiled(session.predictor, store, z, params, cancelled=cancelled,
                                progress=lambda d, t: report(d, t, "segment all: tile %v of %m"))
        if res is None:
            return None
        return res, [{z: MaskRegion(o.y0, o.x0, o.mask)} for o in res.objects], store.top_level + 1

    def _write_scan(self, got: tuple | None, z: int | None) -> None:
        """Write the objects of a tiled Segment all on background pixels with new ids, reading and
        writing only their boxes: one undo step up to :data:`SEGMENT_ALL_UNDO_PIXELS` pixels."""
        if got is None:
            self.notify("info", "Segment all cancelled: nothing was written")
            return
        res, regions, levels = got
        info = res.info
        tiles = f"{info['units']} tiles on {levels} level{'s' if levels > 1 else ''}"
        if not res.n_objects:
            self.notify("info", f"Segment all found no object on the {tiles}: try more points per side")
            return
        out = self.widget.sync.output_layer(create=True)
        if out is None:
            return
        pixels = sum(int(r[z or 0].crop.sum()) for r in regions)
        undo = pixels <= SEGMENT_ALL_UNDO_PIXELS
        try:
            if tuple(out.data.shape[-2:]) != tuple(res.shape):
                raise PasteError("shape", f"labels shape {tuple(out.data.shape)} differs from the image's plane "
                                          f"{tuple(res.shape)}")
            top = self.next_label.max_label(out)
            if undo:
                paste = plan_many_regions(out.data, regions, max_label=top)
                out.data_setitem(paste.index, paste.values)  # one undo step
                ids = paste.ids
            else:
                ids = self._paint_boxes(out, regions, top)
        except PasteError as err:
            self.notify("warning", f"Segment all: {err}")
            return
        self.next_label.wrote(out, ids[-1])
        where = "" if z is None else f" on slice {z}"
        how = ("Ctrl+Z undoes it" if undo else f"{pixels} pixels are too many for one undo step "
               f"(above {SEGMENT_ALL_UNDO_PIXELS}): Ctrl+Z cannot undo it")
        self.notify("info", f"Segment all: {len(ids)} objects{where} written to '{out.name}' as ids {ids[0]}-{ids[-1]} "
                            f"in {info['seconds']:.0f} s from {tiles} ({info['computed']} tiles encoded, "
                            f"{info['reused']} reused); existing labels kept; {how}")

    @staticmethod
    def _paint_boxes(out: Any, regions: list, top: int) -> tuple[int, ...]:
        """Write each object (``{z: MaskRegion}``) into its box of ``out.data`` on background pixels,
        with ids from ``top + 1`` (no undo history); returns the ids given."""
        data, ids = out.data, []
        if top + len(regions) > label_limit(data.dtype):  # checked first: nothing is written then
            raise PasteError("full", f"no room for {len(regions)} new ids in a {data.dtype} labels array")
        for obj in regions:
            ((z, r),) = obj.items()
            h, w = r.crop.shape
            key = region_key((r.y0, r.y0 + h, r.x0, r.x0 + w), len(data.shape), z)
            block = np.array(data[key])
            write = r.crop & (block == 0)
            if not write.any():
                continue
            ids.append(top + len(ids) + 1)
            block[write] = ids[-1]
            data[key] = block
        if not ids:
            raise PasteError("occupied", "the objects lie entirely on existing labels")
        out.refresh()
        return tuple(ids)

    def _write_all(self, res: Any, z: int | None) -> None:
        if isinstance(res, Failure) or res is None:
            self.notify("error", res.message if res is not None else "Segment all stopped")
            return
        if res.cancelled:
            self.notify("info", "Segment all cancelled: nothing was written")
            return
        if not res.n_objects:
            self.notify("info", f"Segment all found no object: {res.message or 'try more points per side'}")
            return
        out = self.widget.sync.output_layer(create=True)
        if out is None:
            return
        try:
            paste = plan_new_labels(out.data, res.labels, z=z, overwrite=False)
        except PasteError as err:
            self.notify("warning", f"Segment all: {err}")
            return
        out.data_setitem(paste.index, paste.values)  # one undo step
        where = "" if z is None else f" on slice {z}"
        self.notify("info", f"Segment all: {len(paste.ids)} objects{where} written to '{out.name}' as ids "
                            f"{paste.ids[0]}-{paste.ids[-1]} in {res.seconds:.0f} s (existing labels kept; "
                            "Ctrl+Z undoes it)")

    def cancel(self) -> None:
        """Stop Segment all or a many-objects propagation (the widget's Cancel calls this too).

        Segment all is answered at once: nothing of it is written, the buttons come back, and its
        worker ends at its next check (within one batch of points) without reporting.
        """
        self._cancel.set()
        if self.all_running:
            self._cancel = threading.Event()  # the running worker's result is ignored
            self._end_segment_all()
            self.notify("info", "Segment all cancelled: nothing was written")

    def _end_segment_all(self) -> None:
        """Segment all is over (done or cancelled): clicks may pause the background again."""
        self.all_running = False
        jobs = self.widget.jobs
        if not jobs.predicting and not jobs.volume_running:
            jobs.interactive.clear()
        self.show_state()

    # ------------------------------------------------------------------ workers
    def _start(self, func: Callable, on_done: Callable[[Any], None]) -> Any:
        box: list = [None]
        worker = create_worker(func, _start_thread=False)
        worker.returned.connect(lambda result: box.__setitem__(0, result))
        worker.errored.connect(lambda exc: box.__setitem__(0, describe_error(exc)))

        def finished() -> None:
            if not self.closed:
                on_done(box[0])

        worker.finished.connect(finished)
        self._workers.add(worker)
        worker.finished.connect(lambda: self._workers.discard(worker), Qt.ConnectionType.DirectConnection)
        worker.start()
        return worker

    def close(self) -> None:
        """Stop reporting; running work is cancelled."""
        self.closed = True
        self._cancel.set()
        self.boxes.release()
