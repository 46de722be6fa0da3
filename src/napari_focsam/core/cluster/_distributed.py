"""Precompute and batch segmentation on a dask.distributed cluster.

Why dask.distributed: it is the scheduler the field already speaks (napari's dask arrays,
dask-jobqueue on SLURM/PBS/SGE clusters, ``dask scheduler`` / ``dask worker`` by hand, or a
:class:`~distributed.LocalCluster` of processes on one machine), with what a home-made pool would
re-invent: workers that keep state (the model), retries of tasks whose worker died, progress.

Units of work are slices (one 2D image is one unit). Each task runs on a worker:

1. it re-opens the image from a picklable :class:`ImageSource` (lazily: a zarr array or a TIFF
   read page by page through tifffile's zarr view, so a worker reads only its slices);
2. it loads the model through :func:`~napari_focsam.core.models._load.load_model`, once per worker;
3. it fills its slices into the same signed zarr store a single process would write
   (:class:`~napari_focsam.core.embeddings._store.EmbeddingStore.precompute`).

The store needs nothing from the file system but atomic ``mkdir`` and ``rename`` (true on local
disks and NFS): every slice is its own chunk in every array, so workers never write the same
chunk; a slice counts as done only once its features, checksum and completion flag are
written, so a worker killed mid-write leaves a slice that is recomputed, never read; and the
per-slice claims of :mod:`~napari_focsam.core.embeddings._claims` keep two workers from encoding
one slice at once (a dead process's claim is broken at once on its host, after
``CLAIM_TIMEOUT_S`` elsewhere). A task whose worker died is re-run on another worker
(``retries``); whatever a run leaves undone, the next run completes.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..outputs import labels_dtype, paint_objects_into
from ._local import local_cluster

__all__ = [
    "ImageSource",
    "ObjectResult",
    "connect",
    "open_image",
    "paint_objects",
    "precompute_distributed",
    "progress_on_stderr",
    "read_seeds",
    "regions_to_crop",
    "segment_seeds",
    "worker_store",
]


def progress_on_stderr(futures: Sequence[Any]) -> None:
    """dask's text progress bar for ``futures``, drawn on stderr (it draws on stdout, which the
    command line keeps for its one JSON line); returns when all are done."""
    import contextlib
    import sys

    from distributed import progress as dask_progress

    with contextlib.redirect_stdout(sys.stderr):
        dask_progress(futures, notebook=False)


@dataclass(frozen=True)
class ImageSource:
    """A picklable recipe to re-open an image lazily on a worker.

    Parameters
    ----------
    path : str
        A TIFF file, a zarr array or OME-Zarr group (folder) or any image file
        :func:`~napari_focsam.core.images.read_image` reads.
    contrast_limits : tuple of float or None
        Fixed limits for the 8-bit encoder input (None: the volume's robust defaults).
    rgb : bool or None
        Passed to :class:`~napari_focsam.core.images.ImageVolume` (None: detect).
    level : int or None
        One level of an OME-Zarr pyramid to use as the image (None: the whole pyramid).
    tiling : (tile_size, halo) or None
        A large image is cached tile by tile (every tile of every level is one unit of work,
        the same signed store a single process fills); None: whole slices.
    """

    path: str
    contrast_limits: tuple[float, float] | None = None
    rgb: bool | None = None
    level: int | None = None
    tiling: tuple[int, int] | None = None

    def volume(self):
        """The :class:`~napari_focsam.core.images.ImageVolume` of this source, opened lazily."""
        from ..images import ImageVolume

        return ImageVolume(open_image(self.path, self.level), rgb=self.rgb, contrast_limits=self.contrast_limits)


def open_image(path: str | Path, level: int | None = None) -> Any:
    """Open an image for slice-by-slice (or region by region) reading without loading all of it.

    Parameters
    ----------
    path : str or Path
        A zarr array folder (``.zarr``, opened read-only; also an array inside an OME-Zarr group,
        e.g. ``image.ome.zarr/0``), an OME-Zarr group with ``multiscales`` metadata (the whole
        pyramid), a TIFF file (through tifffile's zarr view: pages are read when a slice is asked
        for) or another image file (read whole; such files hold one plane).
    level : int or None
        With an OME-Zarr group: use this one level as the image (0 = full resolution).

    Returns
    -------
    array-like or zarr group
        A zarr array (or a lazy view of one), a zarr group holding a pyramid (give it to
        :class:`~napari_focsam.core.images.ImageVolume`), or a numpy array.

    Raises
    ------
    ValueError
        One line: not a zarr array or group, a group without ``multiscales`` metadata, a level
        out of range or given for an image that has no levels.
    """
    import zarr

    from ..images import as_levels, ngff_view_of

    p = Path(path)
    if level is not None and (not isinstance(level, int) or level < 0):
        raise ValueError(f"level {level!r} must be a whole number >= 0")
    if p.is_dir():
        if not any((p / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")):
            raise ValueError(f"cannot read {p}: it is a directory, not an image file nor a zarr array or "
                             "OME-Zarr folder")
        try:
            node = zarr.open(str(p), mode="r")
        except Exception as exc:
            raise ValueError(f"cannot read {p}: not a zarr array or group ({' '.join(str(exc).split())})") from None
        if hasattr(node, "shape") and hasattr(node, "dtype"):
            if level not in (None, 0):
                raise ValueError(f"--level {level} given, but {p} is one zarr array (one level): "
                                 "drop --level or name the group that holds the pyramid")
            return ngff_view_of(node, p)
        levels, _ = as_levels(node)  # a group: ValueError without multiscales metadata
        if level is None:
            return node
        if level >= len(levels):
            raise ValueError(f"--level {level} is out of range: {p} has {len(levels)} levels (0..{len(levels) - 1})")
        return levels[level]
    if level not in (None, 0):
        raise ValueError(f"--level {level} given, but {p} is not an OME-Zarr pyramid (one level)")
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        from ..images import read_image

        with tifffile.TiffFile(p) as tif:
            stack = len(tif.pages) > 1 and bool(tif.series) and len(tif.series[0].shape) >= 3
        if stack:  # page by page through tifffile's zarr view
            return zarr.open(tifffile.imread(p, aszarr=True), mode="r")
        return read_image(p)  # one plane (with the truncation checks)
    from ..images import read_image

    return read_image(p)


@contextmanager
def connect(workers: int | None = None, scheduler: str | None = None,
            threads_per_worker: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client`: a new local cluster of ``workers`` processes, or ``scheduler``.

    Parameters
    ----------
    workers : int or None
        Start a :class:`distributed.LocalCluster` with this many worker processes (1 thread
        each; torch uses ``threads_per_worker`` threads inside, default cores / workers).
    scheduler : str or None
        Address of a running scheduler (``tcp://host:8786``), e.g. from ``dask scheduler`` or a
        dask-jobqueue cluster. Exactly one of ``workers`` and ``scheduler`` is given.
    threads_per_worker : int or None
        Torch threads in each local worker.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client

    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers (a local cluster) or scheduler (an address), not both")
    cluster = None
    if scheduler is not None:
        try:  # not a default client: a failed one stayed registered, with dask's scheduler set to it
            client = Client(scheduler, timeout="20s", set_as_default=False)
        except Exception as exc:  # refused, a timeout, TLS without keys, a server that is not dask ...
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"cannot use the dask scheduler at {scheduler}: {why[:300]} (is it a dask "
                             "scheduler, and does the address give the right protocol, tcp:// or tls:// "
                             "with its security settings?)") from None
    else:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        torch_threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        env = {"OMP_NUM_THREADS": str(torch_threads), "MKL_NUM_THREADS": str(torch_threads)}
        cluster = local_cluster(workers, env)
        client = Client(cluster, security=cluster.security, set_as_default=False)
    try:
        with client.as_current():  # the default client (progress bars) while in use only
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def wait_for_tasks(client: Any, futures: Sequence[Any], *, poll_s: float = 0.2, lost_after_s: float = 5.0) -> None:
    """Wait until every one of ``futures`` is done (finished, failed or cancelled).

    ``distributed.wait`` and ``result()`` can block for ever when the scheduler goes away at the wrong
    moment (seen in CI). This polls: ``ConnectionError`` once the client has been away from its scheduler
    (status not ``"running"``) for ``lost_after_s`` s, ``CancelledError`` for cancelled tasks (as ``wait``).
    """
    away_since = None
    while not all(f.done() for f in futures):
        if client.status == "running":
            away_since = None
        else:
            away_since = time.monotonic() if away_since is None else away_since
            if time.monotonic() - away_since > lost_after_s:
                raise ConnectionError(f"the client lost its scheduler (status {client.status!r})")
        time.sleep(poll_s)
    cancelled = sum(f.status == "cancelled" for f in futures)
    if cancelled:  # as distributed.wait: the scheduler went away (or someone cancelled them)
        raise CancelledError(f"{cancelled} of {len(futures)} tasks were cancelled (client {client.status!r})")


# ----------------------------------------------------------------------------- precompute


def worker_store(source: ImageSource, cache_dir: str | None, model: str, device: str, threads: int | None):
    """Runs on a worker: the volume, the (kept) model and a store bound to the shared cache
    (a :class:`~napari_focsam.core.embeddings.TiledEmbeddingStore` when ``source.tiling`` is set, else an
    :class:`~napari_focsam.core.embeddings.EmbeddingStore`; no memory LRU: each unit is used once per task)."""
    import torch

    from ..embeddings import open_store
    from ..models import load_model
    from ..prompting import FocSAMPredictor

    if threads:
        torch.set_num_threads(int(threads))
    net = load_model(model, device)
    tiling = {} if source.tiling is None else {"tile_size": source.tiling[0], "halo": source.tiling[1]}
    return open_store(FocSAMPredictor(net), source.volume(), tiles=source.tiling is not None, cache_dir=cache_dir,
                      max_memory_bytes=0, **tiling)


def missing_units(source: ImageSource, cache_dir: str, model: str, device: str = "cpu",
                  threads: int | None = None) -> tuple[int, list[int]]:
    """``(units, units still to compute)`` (runs wherever it is called): the slices missing from
    the cache (verified), or for a tiled source the tiles of every level not marked done (only
    the done flags are read: a tile's pixels are hashed when a worker visits it, so a huge scan
    is planned at once)."""
    store = worker_store(source, cache_dir, model, device, threads)
    if store.disk_error:
        raise ValueError(store.disk_error)
    if source.tiling is None:
        return store.volume.n_slices, store.missing()
    units = store.units()
    done = set(store.done_units())
    return len(units), [u for u in units if u not in done]


def fill_units(source: ImageSource, cache_dir: str, model: str, device: str, units: Sequence[int],
               threads: int | None = None) -> dict[str, Any]:
    """Runs on a worker: encode ``units`` into the shared store; returns the counts."""
    store = worker_store(source, cache_dir, model, device, threads)
    if store.disk_error:
        raise OSError(store.disk_error)
    if source.tiling is not None:  # units are tiles: given as (slice, tile key) pairs
        store.precompute(tiles=[store.tile_of(int(u)) for u in units])
    else:
        store.precompute(list(units))
    info = dict(store.last_precompute)
    info["worker_pid"] = os.getpid()
    try:
        import resource

        info["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # Windows
        info["max_rss_mb"] = None
    return info


def precompute_distributed(client: Any, source: ImageSource, cache_dir: str | Path, *, model: str,
                           device: str = "cpu", units_per_task: int = 1, retries: int = 3,
                           threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fill the embedding cache of ``source`` with the workers of ``client``.

    Parameters
    ----------
    client : distributed.Client
        From :func:`connect`.
    source : ImageSource
        The image, re-opened lazily on every worker.
    cache_dir : str or Path
        The cache folder, reachable under the same path from every worker (a shared file
        system for a multi-machine cluster).
    model, device : str
        Registry name or path of the weights (present on every worker), and the device.
    units_per_task : int
        Slices per task (1: best balance; more: less scheduling overhead for tiny slices).
    retries : int
        How often the scheduler re-runs a task whose worker failed or died.
    threads : int or None
        Torch threads per task (None: the worker's default).
    progress : bool
        Show dask's progress bar on the terminal.

    Returns
    -------
    dict
        ``units`` (slices in the image), ``computed`` (filled in this run), ``reused``
        (already cached), ``workers``, ``seconds``, ``failed`` (units left for the next run; a
        worker that died may still have written some of them), ``errors`` (why) and
        ``worker_max_rss_mb`` (peak resident memory of each worker process).
    """
    t0 = time.perf_counter()
    cache_dir = str(Path(cache_dir).expanduser().resolve())
    plan = client.submit(missing_units, source, cache_dir, model, device, threads, pure=False, retries=retries)
    wait_for_tasks(client, [plan])
    n_units, todo = plan.result()
    groups = [todo[i:i + units_per_task] for i in range(0, len(todo), max(1, units_per_task))]
    futures = [client.submit(fill_units, source, cache_dir, model, device, g, threads, pure=False,
                             retries=retries, key=f"focsam-fill-{g[0]}-{os.getpid()}-{time.time_ns()}")
               for g in groups]
    lost = None
    try:
        if futures and progress:
            progress_on_stderr(futures)
        wait_for_tasks(client, futures)
    except Exception as exc:  # the scheduler went away mid-run: say what was done, not a traceback
        lost = f"the cluster went away during the run ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    # A unit of a finished task was filled during this run: by that task, or by a worker that
    # died after writing it (its task was then re-run and found the slice done).
    computed, failed, rss, errors = 0, [], {}, []
    for group, fut in zip(groups, futures):
        if fut.status == "finished":
            computed += len(group)
            try:
                info = fut.result(timeout=5)
                rss[info["worker_pid"]] = info.get("max_rss_mb")
            except Exception:  # done, but its report is gone with the scheduler
                pass
        else:
            failed.extend(group)
            if lost is not None:
                continue
            try:
                exc = fut.exception(timeout=5)
            except Exception as err:  # cancelled, or the scheduler is gone
                exc = err
            errors.append(f"slices {group}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    if lost is not None:
        errors.insert(0, f"{lost}; slices {failed} were not confirmed (those written are reused next time)")
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
    except Exception:
        n_workers = 0
    return {"units": n_units, "computed": computed, "reused": n_units - len(todo),
            "workers": n_workers,
            "seconds": round(time.perf_counter() - t0, 2), "failed": failed, "errors": errors,
            "worker_max_rss_mb": [round(v, 1) for v in rss.values() if v is not None]}


# ----------------------------------------------------------------------------- batch segmentation


@dataclass(frozen=True)
class ObjectResult:
    """One object of a batch: its mask inside its bounding box.

    ``index`` is the seed's row (0-based); ``offset`` the (z, y, x) corner of ``mask`` (a 3D
    bool array, one plane for 2D images) in the image; ``mask`` is None for an empty object.
    """

    index: int
    offset: tuple[int, int, int]
    mask: np.ndarray | None

    @property
    def area(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())


def read_seeds(path: str | Path, ndim: int) -> np.ndarray:
    """Seeds from a napari points-layer CSV: ``(N, ndim)`` float (z, y, x) or (y, x) coordinates.

    The file is what napari's *File > Save Selected Layers* writes for a points layer: a
    header ``index,axis-0,axis-1[,axis-2]`` and one row per point; other columns (point
    properties) are ignored, as is a missing ``index`` column.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read seeds {path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise ValueError(f"seeds file {path} is not a text (CSV) file: save the points layer from napari "
                         "(File > Save Selected Layers, .csv)") from None
    except csv.Error as exc:
        raise ValueError(f"seeds file {path} is not a readable CSV file ({exc})") from None
    if not rows:
        raise ValueError(f"seeds file {path} is empty")
    header = [h.strip() for h in rows[0]]
    axes = [h for h in header if h.startswith("axis-")]
    if not axes:
        raise ValueError(f"seeds file {path} has no axis-0, axis-1 columns (header: {','.join(header)})")
    if len(axes) != ndim:
        raise ValueError(f"seeds file {path} has {len(axes)} coordinates per point, the image needs {ndim} "
                         f"({'z, y, x' if ndim == 3 else 'y, x'})")
    cols = [header.index(f"axis-{i}") for i in range(ndim)]
    pts = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            pts.append([float(row[c]) for c in cols])
        except (ValueError, IndexError):
            raise ValueError(f"seeds file {path}, line {n}: not a number in {row}") from None
    if not pts:
        raise ValueError(f"seeds file {path} holds no point")
    arr = np.asarray(pts, dtype=float)
    if not np.isfinite(arr).all():
        raise ValueError(f"seeds file {path} holds a non-finite coordinate")
    return arr


def regions_to_crop(regions: dict[int, Any]) -> tuple[tuple[int, int, int], np.ndarray | None]:
    """``{z: (y0, x0, crop)}`` -> the ``(z, y, x)`` corner and the 3D bool crop of their common
    bounding box (None when empty): bounded by the object's extent, never by the image's."""
    live = {z: r for z, r in regions.items() if np.asarray(r[2]).any()}
    if not live:
        return (0, 0, 0), None
    zs = sorted(live)
    y0 = min(int(r[0]) for r in live.values())
    x0 = min(int(r[1]) for r in live.values())
    y1 = max(int(r[0]) + np.asarray(r[2]).shape[0] for r in live.values())
    x1 = max(int(r[1]) + np.asarray(r[2]).shape[1] for r in live.values())
    out = np.zeros((zs[-1] - zs[0] + 1, y1 - y0, x1 - x0), bool)
    for z, (ry, rx, crop) in live.items():
        crop = np.asarray(crop, bool)
        out[z - zs[0], ry - y0:ry - y0 + crop.shape[0], rx - x0:rx - x0 + crop.shape[1]] |= crop
    return (zs[0], y0, x0), out


def segment_one(session: Any, index: int, seed: Sequence[float], propagate: bool,
                stops: Mapping[str, Any] | None = None) -> ObjectResult:
    """One object from one positive seed (propagated through a stack with keyword arguments ``stops``);
    region by region, so memory follows the object, not the image (no full plane of a huge image)."""
    vol = session.volume
    z = int(round(seed[0])) if vol.is_3d else 0
    y, x = float(seed[-2]), float(seed[-1])
    obj = session.new_object()
    try:
        region = obj.add_click(y, x, True, z, region=True) if vol.is_3d else obj.add_click(y, x, True, region=True)
        if vol.is_3d and propagate:
            obj.propagate(**(stops or {}))
            regions = obj.volume_regions()
        else:
            regions = {z: region}
        offset, crop = regions_to_crop(regions)
        return ObjectResult(index, offset, crop)
    finally:
        session.remove_object(obj)


def _segment_task(source: ImageSource, cache_dir: str | None, model: str, device: str,
                  items: Sequence[tuple[int, Sequence[float]]], propagate: bool,
                  stops: Mapping[str, Any], threads: int | None) -> list[ObjectResult]:
    """Runs on a worker: segment several seeds with one session (the worker keeps the model)."""
    import torch

    from ..session import Session

    if threads:
        torch.set_num_threads(int(threads))
    with Session(source.volume(), model, device=device, cache_dir=cache_dir) as session:
        return [segment_one(session, i, seed, propagate, stops) for i, seed in items]


def segment_seeds(source: ImageSource, seeds: np.ndarray, *, model: str, device: str = "cpu",
                  cache_dir: str | Path | None = None, propagate: bool = False, iou_threshold: float | None = None,
                  edge_fade: float | None = None, vote: bool = True, client: Any = None, seeds_per_task: int = 4,
                  retries: int = 3, threads: int | None = None, progress: bool = True,
                  on_object: Callable[[int, int], None] | None = None) -> list[ObjectResult]:
    """Segment one object per seed, in this process or on the workers of ``client``.

    Parameters
    ----------
    source : ImageSource
        The image.
    seeds : numpy.ndarray
        ``(N, 2)`` (y, x) or ``(N, 3)`` (z, y, x) positive clicks, one object each.
    model, device : str
        Weights (registry name or path) and device.
    cache_dir : str, Path or None
        The shared embedding cache (strongly advised with workers: ``precompute`` it first, so
        that no two workers encode one slice).
    propagate : bool
        Propagate each object through the stack from its seed's slice.
    iou_threshold, edge_fade, vote : float or None, float or None, bool
        The propagation's stop rules and vote (``SegmentedObject.propagate``); None: the product's.
    client : distributed.Client or None
        None runs in this process, one session for all seeds.
    seeds_per_task : int
        Seeds per task on the cluster.

    Returns
    -------
    list of ObjectResult
        In seed order.
    """
    vol = source.volume()
    ndim = 3 if vol.is_3d else 2
    if seeds.ndim != 2 or seeds.shape[1] != ndim:
        raise ValueError(f"expected seeds of shape (N, {ndim}), got {seeds.shape}")
    items = [(i, tuple(float(v) for v in s)) for i, s in enumerate(seeds)]
    stops = {k: v for k, v in {"iou_threshold": iou_threshold, "edge_fade": edge_fade, "vote": vote}.items()
             if v is not None}
    cache = None if cache_dir is None else str(Path(cache_dir).expanduser().resolve())
    if client is None:
        from ..session import Session

        out = []
        with Session(vol, model, device=device, cache_dir=cache) as session:
            for n, (i, seed) in enumerate(items, start=1):
                out.append(segment_one(session, i, seed, propagate, stops))
                if on_object is not None:
                    on_object(n, len(items))
        return out
    groups = [items[k:k + max(1, seeds_per_task)] for k in range(0, len(items), max(1, seeds_per_task))]
    futures = [client.submit(_segment_task, source, cache, model, device, g, propagate, stops, threads,
                             pure=False, retries=retries) for g in groups]
    if futures and progress:
        progress_on_stderr(futures)
    wait_for_tasks(client, futures)
    results: list[ObjectResult] = []
    for g, fut in zip(groups, futures):
        if fut.status != "finished":
            raise RuntimeError(f"seeds {g[0][0] + 1}-{g[-1][0] + 1} failed on the cluster: {fut.exception()}")
        results.extend(fut.result())
    return sorted(results, key=lambda r: r.index)


def paint_objects(shape: tuple[int, ...], results: Sequence[ObjectResult]) -> np.ndarray:
    """One labels image from objects, id = seed row + 1.

    Overlaps: objects are painted from the largest to the smallest, so where two objects
    overlap the smaller one keeps the pixels (a large leak never swallows a small cell).

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    results : sequence of ObjectResult

    Returns
    -------
    numpy.ndarray
        uint16 labels (uint32 beyond 65,535 seeds) of ``shape``.
    """
    labels = np.zeros(shape, labels_dtype(max((r.index for r in results), default=-1) + 1))
    paint_objects_into(labels, results)
    return labels
