"""``SegmentAllJob``: Segment all from the dock, on one canvas or tile by tile, and its writing.

:func:`~napari_focsam.core.automatic.segment_all` runs on the image (or the slice in view) in a
worker; the objects go to the output layer on background pixels only, with ids above the
current maximum, as one undo step. On a tiled (large) image it is
:func:`~napari_focsam.core.cluster.segment_all_tiled` on the session's tile store, and the
objects are written box by box (never a plane-sized array per object): as one undo step up to
:data:`SEGMENT_ALL_UNDO_PIXELS` pixels (napari's history keeps every written pixel's index and
old value), without undo above. Engine modules are imported inside the worker.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from ..core.editing import PasteError, label_limit, plan_many_regions, plan_new_labels, region_key
from ..core.errors import Failure, describe_error

__all__ = ["SEGMENT_ALL_MAX_PIXELS", "SEGMENT_ALL_MAX_SIDE", "SEGMENT_ALL_UNDO_PIXELS", "SegmentAllJob"]

#: Segment all on one canvas holds the whole slice (and its 8-bit RGB copy): an image that is not
#: tiled is refused above this many pixels (a tiled one is scanned tile by tile).
SEGMENT_ALL_MAX_SIDE = 4096
SEGMENT_ALL_MAX_PIXELS = SEGMENT_ALL_MAX_SIDE * SEGMENT_ALL_MAX_SIDE
#: A tiled Segment all writes up to this many object pixels as one undo step (about 20 bytes of
#: napari history per pixel, as the single-canvas path at its largest); more go box by box, no undo.
SEGMENT_ALL_UNDO_PIXELS = SEGMENT_ALL_MAX_PIXELS


class SegmentAllJob:
    """Segment all for the dock's prompt modes.

    Parameters
    ----------
    jobs, sync
        The dock's jobs (context, foreground guard) and viewer sync (image, slice in view, output).
    params : callable
        ``params()``: the :class:`~napari_focsam.core.automatic.SegmentAllParams` of the panel
        (ValueError for a bad entry).
    next_label
        The output layer's largest id (:class:`~.region_layers.NextLabel`), shared with commits.
    report, notify, show_state, start_worker, busy : callable
        Progress ``(done, total, format)``, ``notify(level, message)``, the buttons' refresh,
        ``start_worker(func, on_done)`` and whether other prompt work runs.
    """

    def __init__(self, *, jobs: Any, sync: Any, params: Callable[[], Any], next_label: Any,
                 report: Callable[[int, int, str], None], notify: Callable[[str, str], None],
                 show_state: Callable[[], None], start_worker: Callable, busy: Callable[[], bool]) -> None:
        self.jobs, self.sync, self.params, self.next_label = jobs, sync, params, next_label
        self.report, self.notify, self.show_state = report, notify, show_state
        self.start_worker, self.busy = start_worker, busy
        self.running = False
        self._cancel = threading.Event()
        self._release: Callable[[], None] = lambda: None

    def start(self) -> None:
        """Segment every object of the image (or the slice in view) in a worker."""
        jobs, sync = self.jobs, self.sync
        ctx, image = jobs.context, sync.image
        if ctx is None or image is None:
            self.notify("warning", "no model loaded yet: wait for 'ready', then Segment all")
            return
        if self.busy():
            return
        try:
            params = self.params()
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
        z = int(sync.view_z) if ctx.is_3d else None
        vol = ctx.session.volume
        cancel = self._cancel = threading.Event()
        report = self.report
        self.running = True
        self._release = jobs.foreground.hold()
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
            self._end()
            if tiled and not isinstance(res, Failure):
                self._write_scan(res, z)
            else:
                self._write_all(res, z)

        self.start_worker(run, done)

    @staticmethod
    def _scan_tiles(session: Any, z: int, params: Any, report: Callable[[int, int, str], None],
                   cancelled: Callable[[], bool]) -> tuple | None:
        """In a worker: :func:`~napari_focsam.core.cluster._scan.segment_all_tiled` on slice ``z``
        of a tiled ``session``; returns ``(ScanResult, [{z: MaskRegion}] per object, levels)``,
        None when cancelled."""
        from ..core.cluster import segment_all_tiled
        from ..core.prompting import MaskRegion

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
        out = self.sync.output_layer(create=True)
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
        out = self.sync.output_layer(create=True)
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
        """Answered at once: nothing is written, the buttons come back, and the worker ends at its
        next check (within one batch of points) without reporting."""
        self._cancel.set()
        if self.running:
            self._cancel = threading.Event()  # the running worker's result is ignored
            self._end()
            self.notify("info", "Segment all cancelled: nothing was written")

    def _end(self) -> None:
        """Segment all is over (done or cancelled): clicks may pause the background again."""
        self.running = False
        self._release()
        self.show_state()
