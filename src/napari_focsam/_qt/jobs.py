"""The widget's background jobs: device probe, model load, embeddings, prediction, volume.

``SessionJobs`` owns the current :class:`SessionContext` (one Session: image x model x device x
cache folder) and runs every heavy step in a napari worker thread, so the GUI thread never imports
torch or touches the model. Jobs take their inputs as arguments (the clicks, the ticket of the
prediction) and report through Qt signals on the GUI thread; each catches its own errors and
reports a :class:`~napari_focsam.core.errors.Failure`. Engine modules are imported inside the
worker bodies (that keeps torch off the GUI thread: the dock appears at once).
"""

from __future__ import annotations

import atexit
import functools
import math
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Qt, QTimer, Signal

from ..core.editing import Ticket, set_prompts
from ..core.models import compute_thread
from ..core.prompting import Prompts
from ..core.errors import Failure, describe_error, is_oom
from .constants import EMBEDDING_BYTES
from .state import Foreground, SharedClosed, WidgetState

__all__ = ["LoadResult", "SessionContext", "SessionJobs"]


@dataclass
class SessionContext:
    """Everything that belongs to one Session (image x model x device x cache folder)."""

    session: Any
    image: Any
    model_name: str
    device: str
    cache_dir: str | None
    has_refiner: bool
    is_3d: bool
    n_slices: int
    plane_shape: tuple[int, int]
    epoch: int = -1
    obj: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def object_for(self, epoch: int) -> Any:
        """The session object of ``epoch`` (a new one when the widget moved on); call under lock."""
        if self.obj is None or self.epoch != epoch:
            if self.obj is not None:
                try:
                    self.session.remove_object(self.obj)
                except ValueError:
                    pass
            self.obj = self.session.new_object()
            self.epoch = epoch
        return self.obj


@dataclass(frozen=True)
class LoadResult:
    """A loaded session, or why loading failed (``failure``)."""

    token: int
    context: SessionContext | None = None
    note: str | None = None
    seconds: float = 0.0
    failure: Failure | None = None


def _probe_devices() -> dict[str, bool]:
    import importlib

    import torch

    importlib.import_module("napari_focsam.core.models")  # warms the model code up for the first load
    importlib.import_module("pandas")  # napari needs it for our first points/labels layer (seconds)

    mps = getattr(torch.backends, "mps", None)
    return {"auto": True, "cpu": True, "cuda": torch.cuda.is_available(),
            "mps": bool(mps is not None and mps.is_available())}


#: Seconds between two progress reports of a job to the GUI thread.
PROGRESS_INTERVAL_S = 0.5


def throttled(report: Callable[[int, int], None], interval: float = PROGRESS_INTERVAL_S) -> Callable[[int, int], None]:
    """``report(done, total)`` at most every ``interval`` seconds (and always the last one).

    Each report repaints the dock's progress bar, and its changing text re-lays out the window
    (the canvas included): once per slice, that GUI work made Segment volume 1.4x slower than
    the engine's propagation on a 2-core machine (benchmarks/bench_widget_responsiveness.py).
    """
    last = [-math.inf]

    def maybe(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= interval:
            last[0] = now
            report(done, total)

    return maybe


def on_compute(func: Callable) -> Callable:
    """``func`` with its body run on the process's compute thread, the caller waiting for it
    (:func:`~napari_focsam.core.models.compute_thread`: one OpenMP pool for all model work,
    whichever worker asks; with a pool per worker thread every click ran at sleeping pools' pace)."""
    @functools.wraps(func)
    def body(*args: Any, **kwargs: Any) -> Any:
        return compute_thread().run(func, *args, **kwargs)
    return body


def start_job(func: Callable, on_done: Callable[[Any], None] | None, pending: set, is_closed: Callable[[], bool],
              *, compute: bool = False, before_done: Callable[[Any], None] | None = None) -> Any:
    """Run ``func`` in a napari worker; ``on_done(result)`` on the GUI thread after it ended.

    The result is ``func``'s return value, or a :class:`~napari_focsam.core.errors.Failure`
    when it raised. It is reported from ``finished`` (after ``returned``), after
    ``before_done(worker)``, and not once ``is_closed()``. The worker is in ``pending`` while it
    runs. ``compute``: ``func`` touches the model, so it runs on the compute thread
    (:func:`on_compute`; generators pass their model steps there themselves).
    """
    box: list = [None]
    worker = create_worker(on_compute(func) if compute else func, _start_thread=False)
    worker.returned.connect(lambda result: box.__setitem__(0, result))
    worker.errored.connect(lambda exc: box.__setitem__(0, describe_error(exc)))

    def finished() -> None:
        if before_done is not None:
            before_done(worker)
        if on_done is not None and not is_closed():
            on_done(box[0])

    worker.finished.connect(finished)
    pending.add(worker)
    worker.finished.connect(lambda: pending.discard(worker), Qt.ConnectionType.DirectConnection)
    return worker


def _await_jobs(ref: weakref.ref) -> None:
    """At interpreter exit: let running jobs end first (a model load cannot be interrupted); a
    worker still running while Python tears Qt down prints tracebacks from its deleted signals."""
    jobs = ref()
    if jobs is not None:
        jobs.wait()


class SessionJobs(QObject):
    """Runs and tracks the background workers of one widget (see the module docs)."""

    devices_found = Signal(object)          # {device: available}
    loaded = Signal(object)                 # LoadResult
    embedded = Signal(int, int)             # slices done, slices to do
    tiles_embedded = Signal(int, int, object)  # tiled sessions: tiles done, done + still wanted, (z, TileKey)
    embedding_done = Signal(object)         # Failure | cache warning (str) | None
    predicted = Signal(object, object, float)  # Ticket, {z: mask} | Failure | None (skipped), seconds
    zoom_preview = Signal(object, object)   # Ticket, {z: MaskRegion}: the whole image's mask while a crop encodes
    volume_progress = Signal(int, int)      # emitted from the worker thread (queued)
    volume_done = Signal(object, object, object)  # Ticket, PropagationResult | Failure, {z: MaskRegion}
    failed = Signal(object)                 # Failure of a job that broke its own error handling
    closed = SharedClosed()

    def __init__(self, state: WidgetState | None = None) -> None:
        super().__init__()
        #: the dock's state (its ``closed`` is this object's); a standalone instance has its own
        self.state = state if state is not None else WidgetState()
        self.context: SessionContext | None = None
        self._last_store = None  # the dropped session's store, offered to the next one
        self._token = 0
        self._load_worker = None
        self._probe_worker = None
        self._embed_worker = None
        self._embed_stop = threading.Event()
        self._predict_worker = None
        self._volume_worker = None
        self._layer_worker = None
        self._volume_cancel = threading.Event()
        #: held while a click is answered, a volume runs, ...: background embedding pauses
        self.foreground = Foreground()
        #: False: embed only the slice in view (benchmarks compare Segment volume without it)
        self.background_embedding = True
        self._pending: set = set()  # workers not finished yet (tracked from their own threads)
        self._threads = 1
        self._probed = threading.Event()  # set: no device probe is importing torch right now
        self._probed.set()
        self._probe_due = False  # a probe is scheduled (probe_devices with a delay)
        atexit.register(_await_jobs, weakref.ref(self))

    # ------------------------------------------------------------------ state
    @property
    def interactive(self) -> threading.Event:
        """Set while the foreground holds (see :class:`~.state.Foreground`); workers wait on it."""
        return self.foreground.event

    @property
    def loading(self) -> bool:
        return self._load_worker is not None

    @property
    def embedding(self) -> bool:
        return self._embed_worker is not None

    @property
    def building_layer(self) -> bool:
        return self._layer_worker is not None

    @property
    def predicting(self) -> bool:
        return self._predict_worker is not None

    @property
    def volume_running(self) -> bool:
        return self._volume_worker is not None

    def any_running(self) -> bool:
        return self._probe_due or any(w is not None for w in (self._probe_worker, self._load_worker, self._embed_worker,
                                          self._predict_worker, self._volume_worker, self._layer_worker))

    def build_layer(self, make: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        """Build a napari layer *model* with ``make()`` in a worker; ``on_done(layer)`` on the GUI
        thread (a Failure if it failed). A labels layer's model costs ~0.6 s the first time (its
        feature table, the default label colours): off the GUI thread, the window stays responsive;
        only adding it to the viewer (its vispy visual) remains on the GUI thread."""

        def run():
            try:
                return make()
            except Exception as exc:
                return describe_error(exc, "building a layer")

        self._start(run, "_layer_worker", on_done)

    def _start(self, func: Callable, attr: str, on_done: Callable[[Any], None] | None, *, compute: bool = False):
        """Start ``func`` in a worker stored in ``self.<attr>``; ``on_done(result)`` runs after it ended.

        ``compute``: ``func`` touches the model, so it runs on the compute thread (:func:`on_compute`;
        generators pass their model steps there themselves).

        The result is reported from ``finished`` (after ``returned``), when ``self.<attr>`` is None
        again, so a handler that starts the next job sees this one gone.
        """
        def forget(worker) -> None:
            if getattr(self, attr) is worker:
                setattr(self, attr, None)

        worker = start_job(func, on_done, self._pending, lambda: self.closed, compute=compute, before_done=forget)
        setattr(self, attr, worker)
        worker.start()  # only once every signal is connected (a fast job could finish first)
        return worker

    # ------------------------------------------------------------------ devices
    def probe_devices(self, delay_ms: int | None = None) -> None:
        """Import torch and the model code in the background; report the devices found.

        ``delay_ms``: start after that long in the event loop (counted as running meanwhile), e.g.
        once napari has laid out the dock: a torch import competes with the GUI for the interpreter.
        """
        probed = self._probed
        probed.clear()
        if delay_ms is not None:
            self._probe_due = True
            QTimer.singleShot(delay_ms, lambda: self.probe_devices() if self._probe_due else None)
            return
        self._probe_due = False
        if self.closed:
            probed.set()
            return

        def probe():
            try:
                return _probe_devices()
            finally:
                probed.set()

        def done(result):
            if isinstance(result, dict):
                self.devices_found.emit(result)
        self._start(probe, "_probe_worker", done)

    # ------------------------------------------------------------------ loading
    def drop(self) -> None:
        """Forget the current session; running jobs become stale."""
        self.stop_embedding()
        self._volume_cancel.set()
        if self.context is not None:  # its embeddings may serve the next session (same image and encoder)
            self._last_store = self.context.session.store
        self.context = None
        self._token += 1

    def load(self, image: Any, data: Any, rgb: bool, model: str, device: str, cache: str | None,
             refine: bool, threads: int) -> None:
        """Load ``model`` and open a Session on ``data`` in a worker; reports ``loaded``.

        ``threads``: CPU threads for torch (process-wide), set before loading.
        """
        self.drop()
        previous, self._last_store = self._last_store, None
        token = self._token

        probed = self._probed

        def load() -> LoadResult:
            probed.wait(300)  # one thread imports torch and the model code, not two at once
            try:
                import torch  # waits if another thread is importing it

                self._threads = threads
                torch.set_num_threads(threads)
                from ..core.images import ImageVolume
                from ..core.models import load_model
                from ..core.session import Session

                vol = ImageVolume(data, rgb=rgb)
                t0 = time.perf_counter()
                note = None
                try:
                    net = load_model(model, device)
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    net = load_model(model, "cpu")
                    note = "out of GPU memory while loading the model: using the CPU"
                session = Session(vol, model=net, refine=refine, cache_dir=cache)
                if previous is not None:  # same image, same encoder (vit_t <-> focsam_t): no re-encoding
                    session.store.adopt(previous)
                ctx = SessionContext(
                    session=session, image=image, model_name=Path(model).name, device=device, cache_dir=cache,
                    has_refiner=bool(getattr(net, "has_refiner", False)), is_3d=vol.is_3d,
                    n_slices=vol.n_slices, plane_shape=tuple(vol.plane_shape))
                session.predictor.refine = refine and ctx.has_refiner
                return LoadResult(token, ctx, note, time.perf_counter() - t0)
            except Exception as exc:
                return LoadResult(token, failure=describe_error(exc))

        def done(result):
            if not isinstance(result, LoadResult):  # broke its own error handling
                result = LoadResult(token, failure=result if isinstance(result, Failure)
                                    else Failure("loading the model stopped"))
            if result.token != self._token:
                return  # an older load: the setup changed meanwhile
            if result.context is not None:
                self.context = result.context
            self.loaded.emit(result)

        self._start(load, "_load_worker", done, compute=True)

    # ------------------------------------------------------------------ embeddings
    def start_embedding(self, view_z: Callable[[], int]) -> int:
        """Embed every slice, nearest to ``view_z()`` first, pausing while ``interactive`` is set.

        Returns the number of slices it will embed (fewer than the stack when the memory store
        cannot hold them all and no cache folder is set).
        """
        ctx = self.context
        if ctx is None:
            return 0
        self.stop_embedding()
        stop = self._embed_stop = threading.Event()
        store, n = ctx.session.store, ctx.n_slices
        fits = n * EMBEDDING_BYTES <= 0.8 * store.max_memory_bytes
        total = n if (ctx.cache_dir or fits) else max(1, int(0.8 * store.max_memory_bytes // EMBEDDING_BYTES))
        total = total if self.background_embedding else 1
        interactive = self.interactive

        def embed():
            left, done = set(range(n)), 0
            try:
                while left and done < total:
                    while interactive.is_set() and not stop.is_set():
                        time.sleep(0.02)  # a click is being answered: let it have the CPU/GPU
                    if stop.is_set():
                        return None
                    zc = view_z()
                    z = min(left, key=lambda s: (abs(s - zc), s))
                    left.discard(z)
                    # a stack that fits the memory store stays there too: Segment volume then reads
                    # no slice back from the disk cache
                    compute_thread().run(store.precompute, [z], memorize=fits)
                    done += 1
                    yield done
            except Exception as exc:
                return describe_error(exc, "computing embeddings")
            return store.disk_error

        def on_yield(done: int) -> None:
            if not stop.is_set() and not self.closed:
                self.embedded.emit(done, total)

        def done(result):
            if not stop.is_set():
                self.embedding_done.emit(result)

        worker = self._start(embed, "_embed_worker", done)
        worker.yielded.connect(on_yield)
        return total

    def start_tile_embedding(self, wanted: Callable[[], list]) -> None:
        """Tiled sessions: embed the tiles ``wanted()`` lists (``(z, TileKey)``, most wanted first,
        read again before each tile: it follows the view) that are not cached yet, one at a time,
        pausing while ``interactive`` is set (a click's own tile goes first); reports
        ``tiles_embedded(done, total, tile)`` and ``embedding_done``; ends when no wanted tile is missing."""
        ctx = self.context
        if ctx is None:
            return
        self.stop_embedding()
        stop = self._embed_stop = threading.Event()
        store, interactive = ctx.session.store, self.interactive

        def embed():
            done = 0
            try:
                while not stop.is_set():
                    while interactive.is_set() and not stop.is_set():
                        time.sleep(0.02)
                    if stop.is_set():
                        return None
                    todo = [t for t in wanted() if not store.has_tile(*t)]
                    if not todo:
                        break
                    compute_thread().run(store.precompute, tiles=todo[:1])  # cached: to disk, then "ready"
                    done += 1
                    yield done, done + len(todo) - 1, todo[0]
            except Exception as exc:
                return describe_error(exc, "computing tile embeddings")
            return store.disk_error

        def on_yield(counts) -> None:
            if not self.closed:  # also after a stop: the tile in flight is done (its outline goes)
                self.tiles_embedded.emit(*counts)

        def done(result):
            if not stop.is_set():
                self.embedding_done.emit(result)

        worker = self._start(embed, "_embed_worker", done)
        worker.yielded.connect(on_yield)

    def stop_embedding(self) -> None:
        self._embed_stop.set()
        if self._embed_worker is not None:
            self._embed_worker.quit()

    # ------------------------------------------------------------------ prediction
    def predict(self, ticket: Ticket, prompts: Prompts, shown: set[int], is_current: Callable[[Ticket], bool]) -> None:
        """Set the object of ``ticket.epoch`` to ``prompts``; reports ``predicted`` with the masks of
        the changed, shown and prompted slices ({z: MaskRegion}: each the object's box on that
        slice, never a full-size plane)."""
        ctx = self.context
        release = self.foreground.hold()

        def predict():
            if ctx is None or not is_current(ticket):
                return None, 0.0
            try:
                with ctx.lock:
                    obj = ctx.object_for(ticket.epoch)
                    t0 = time.perf_counter()
                    ctx.session.zoom_listener = lambda z, region: self.zoom_preview.emit(ticket, {z: region})
                    try:
                        if prompts or obj.box is not None:
                            changed = set_prompts(obj, prompts, region=True)
                        else:
                            obj.reset()
                            changed = {}
                    finally:
                        ctx.session.zoom_listener = None
                    dt = time.perf_counter() - t0
                    zs = set(changed) | shown | prompts.slices
                    return {z: obj.mask_region(z) for z in zs}, dt
            except Exception as exc:
                return describe_error(exc), 0.0

        def done(result):
            release()
            masks, dt = result if isinstance(result, tuple) else (result, 0.0)
            self.predicted.emit(ticket, masks, dt)

        self._start(predict, "_predict_worker", done, compute=True)

    # ------------------------------------------------------------------ volume
    def segment_volume(self, ticket: Ticket, prompts: Prompts, stops: dict) -> None:
        """Propagate the object of ``ticket.epoch`` (set to ``prompts``) through the stack;
        ``stops``: the stop rules' settings (``iou_threshold``, ``edge_fade``)."""
        ctx = self.context
        cancel = self._volume_cancel = threading.Event()
        report = throttled(self.volume_progress.emit)
        ref: list = []

        def cancelled() -> bool:
            return cancel.is_set() or bool(ref and ref[0].abort_requested)

        def run():
            try:
                with ctx.lock:
                    obj = ctx.object_for(ticket.epoch)
                    set_prompts(obj, prompts, region=True)
                    res = obj.propagate(**stops, progress=report, cancelled=cancelled)
                    return res, obj.volume_regions()
            except Exception as exc:
                return describe_error(exc, "Segment volume"), None

        def done(result):
            release()
            res, vol = result if isinstance(result, tuple) else (result, None)
            self.volume_done.emit(ticket, res, vol)

        release = self.foreground.hold()
        ref.append(self._start(run, "_volume_worker", done, compute=True))

    def cancel_volume(self) -> None:
        self._volume_cancel.set()

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Stop everything; nothing is reported any more."""
        self.closed = True
        if self._probe_due:  # scheduled, never started
            self._probe_due = False
            self._probed.set()
        self.drop()
        self._last_store = None
        self.foreground.reset()

    def wait(self, timeout: float = 60.0) -> bool:
        """Ask every worker to stop and wait until all ended (True) or ``timeout`` seconds passed."""
        self.close()
        for worker in list(self._pending):
            worker.quit()
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._pending

    def set_threads(self, n: int) -> None:
        """Let torch use ``n`` CPU threads, on the compute thread (each thread has its own count)
        after its job in progress if torch is imported, else when the model loads."""
        self._threads = n = int(n)
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "set_num_threads"):  # imported (not half-way)
            compute_thread().submit(lambda: torch.get_num_threads() == n or torch.set_num_threads(n))

    @staticmethod
    def release_gpu_memory() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
