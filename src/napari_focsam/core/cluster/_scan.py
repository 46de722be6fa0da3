"""Segment all on a large or pyramidal image: one grid of prompts per tile, on one process or a cluster.

A scan of 10k-100k pixels a side is never squeezed onto one encoder canvas (a nucleus would
shrink to a few pixels) nor held whole in memory. The work follows the tiles of the signed tiled
embedding store (:class:`~napari_focsam.core.embeddings.TiledEmbeddingStore`, the one ``precompute`` and the
widget fill; tiles encoded 1:1):

1. Per tile: :func:`~napari_focsam.core.automatic.segment_all` runs on the tile's own pixels with the tile's cached
   embedding (one image to it), and its objects are mapped to full-resolution pixels. An object
   touching an inner edge of its tile (within :data:`~napari_focsam.core.images.EDGE_MARGIN` pixels of an edge that
   is not the image border) is marked *cut*: a neighbouring tile holds it whole, since any object
   up to the halo lies wholly in one tile.
2. Scale, as the interactive scale rule (:mod:`~napari_focsam.core.prompting._tiled_history`): level 0 keeps the whole objects
   at most ``halo - 2 x EDGE_MARGIN`` level pixels across (:func:`size_limit`); each coarser level
   keeps the whole objects that were too large for the level below and fit its own limit; the
   coarsest level scanned keeps every whole object too large for the level below it. Masks of
   coarser levels are upsampled (nearest) to full resolution, only over the object's box.
   Coarser levels use a sparser grid (:func:`coarse_points`): the objects they keep are large.
3. Seams: candidates of all tiles are made one disjoint set of objects by :mod:`~napari_focsam.core.automatic._seams` (NMS
   across tiles, cut pieces resolved in the neighbouring tile or stitched across the seam).

Memory: each tile's decoder batches are capped at :data:`SCAN_POINTS_PER_BATCH` points (the
decoder's upscaled masks of 32 points took a process from 0.5 GB after the encoder to a 1.4 GB
peak on a Coelho tile, 8 points to 0.8 GB), so that a worker stays well under 2 GB.

Tiles are independent units: :func:`segment_all_scan` runs them in this process or as dask
tasks (several tiles per task), each worker filling and reusing the same signed store, so a
killed worker loses nothing (the scheduler re-runs its tasks elsewhere; the tiles it wrote are
reused, and the summary counts ``lost_workers`` and ``retried`` tasks), and a second run of the
same scan encodes nothing. Memory: a worker holds one tile's pixels, its embedding and its
decoder batches; the client holds the objects (their boxes), never a plane.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..automatic import ScanObject, SeamStats, SegmentAllParams, resolve_seams, segment_all
from ..images import EDGE_MARGIN, TileKey
from ._distributed import ImageSource, progress_on_stderr, worker_store

__all__ = ["SCAN_POINTS_PER_BATCH", "ScanResult", "TilePlan", "coarse_points", "peak_rss_mb", "scan_keys",
           "segment_all_scan", "segment_all_tiled", "segment_tiles", "size_limit", "tile_objects"]

#: Points decoded at once per tile (see the module docs: memory per worker).
SCAN_POINTS_PER_BATCH = 8


@dataclass
class ScanResult:
    """Outcome of :func:`segment_all_scan` / :func:`segment_all_tiled`.

    Attributes
    ----------
    objects : list of ScanObject
        Disjoint objects, best score first (id = position + 1), full-resolution pixels.
    shape : (H, W)
        The plane's shape at full resolution.
    info : dict
        ``units`` (tiles scanned), ``computed`` (tiles encoded in this run), ``reused``,
        ``workers``, ``seconds``, ``objects``, ``seams`` (:class:`~napari_focsam.core.automatic.SeamStats` as a dict),
        ``failed`` (tiles whose task failed: the run then has no labels), ``errors``,
        ``lost_workers`` (workers of the cluster that died or left during the run),
        ``retried`` (tasks run more than once: taken back from a lost worker, running or queued
        there, or re-run after an error; the tiles they had encoded are reused, not counted in
        ``computed``) and ``worker_max_rss_mb``.
    """

    objects: list[ScanObject]
    shape: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return len(self.objects)


def size_limit(store: Any) -> int:
    """The largest object (level pixels across) a level keeps: ``halo - 2 x EDGE_MARGIN``, the size
    that is sure to lie in one tile with room to spare (0: no limit, for a tiling without halo)."""
    return max(0, int(store.halo) - 2 * EDGE_MARGIN)


def coarse_points(params: SegmentAllParams, tile_size: int, limit: int) -> int:
    """Points per tile side above level 0: objects kept there are more than ``limit / 2`` level
    pixels across, so a spacing of ``limit / 4`` puts at least two points on each."""
    if limit <= 0:
        return params.points_per_side
    return max(4, min(params.points_per_side, math.ceil(4 * tile_size / limit)))


def scan_keys(store: Any, max_level: int | None = None) -> list[TileKey]:
    """Every tile of the levels scanned (0 up to ``max_level``, default the store's top level)."""
    top = store.top_level if max_level is None else max(0, min(int(max_level), store.top_level))
    return [k for lv in range(top + 1) for k in store.grid(lv).keys()]


def tile_objects(predictor: Any, store: Any, z: int, key: TileKey, params: SegmentAllParams,
                 top: int | None = None) -> list[ScanObject]:
    """The candidate objects of one tile, in full-resolution pixels (see the module docs).

    Parameters
    ----------
    predictor : FocSAMPredictor
        The model (the decoder runs without the focus refiner).
    store : TiledEmbeddingStore
        The tiles' embeddings (computed on demand, or read from its cache).
    z : int
        The slice.
    key : TileKey
        The tile (and its level).
    params : SegmentAllParams
        ``points_per_side`` is per tile side at level 0 (:func:`coarse_points` above it);
        ``tiles`` is ignored (the store's tiles are the tiles); ``points_per_batch`` is capped
        at :data:`SCAN_POINTS_PER_BATCH`.
    top : int or None
        The coarsest level scanned (default the store's top level): it keeps the objects too
        large for every level.

    Returns
    -------
    list of ScanObject
        Masks are bool crops at full resolution; ``cut`` for those touching an inner tile edge.
    """
    from scipy import ndimage as ndi

    top = store.top_level if top is None else top
    level = key.level
    grid = store.grid(level)
    y0, y1, x0, x1 = grid.window(key)
    limit = size_limit(store)
    tile_params = replace(params, tiles=1, points_per_batch=min(params.points_per_batch, SCAN_POINTS_PER_BATCH))
    if level > 0:
        tile_params = replace(tile_params, points_per_side=coarse_points(params, store.tile_size, limit))
    emb = store.get_tile(z, key)
    rgb = store.volume.rgb_region(z, y0, y1, x0, x1, level)
    res = segment_all(predictor, rgb, tile_params, embedding=emb)
    f = int(round(store.factor(level)))
    ratio = store.factor(level) / store.factor(level - 1) if level > 0 else 1.0
    H, W = store.volume.plane_shape
    out = []
    for i, sl in enumerate(ndi.find_objects(res.labels)):
        if sl is None:
            continue
        m = res.labels[sl] == i + 1
        box = (y0 + sl[0].start, y0 + sl[0].stop, x0 + sl[1].start, x0 + sl[1].stop)
        extent = max(m.shape)
        cut = grid.touches_inner_edge(key, box)
        if not cut and limit > 0:
            if level < top and extent > limit:
                continue  # too large here: a coarser level holds it whole
            if level > 0 and extent * ratio <= limit:
                continue  # the level below holds it whole, at a finer scale
        if f > 1:
            m = np.repeat(np.repeat(m, f, axis=0), f, axis=1)
        fy, fx = box[0] * f, box[2] * f
        m = m[:max(0, H - fy), :max(0, W - fx)]
        if m.any():
            out.append(ScanObject(float(res.scores[i]), fy, fx, m, TileKey(*key), cut))
    return out


def segment_tiles(predictor: Any, store: Any, z: int, keys: Sequence[TileKey], params: SegmentAllParams,
                  top: int | None = None, on_tile: Callable[[], bool] | None = None
                  ) -> tuple[list[ScanObject], int] | None:
    """:func:`tile_objects` of several tiles; returns ``(objects, tiles encoded here)``, or None
    when ``on_tile()`` (called after each tile) returns False (cancelled)."""
    objects: list[ScanObject] = []
    before = store.stats["computed"]
    for key in keys:
        objects.extend(tile_objects(predictor, store, z, key, params, top))
        if on_tile is not None and not on_tile():
            return None
    return objects, store.stats["computed"] - before


def segment_all_tiled(predictor: Any, store: Any, z: int = 0, params: SegmentAllParams | None = None, *,
                      max_level: int | None = None, progress: Callable[[int, int], None] | None = None,
                      cancelled: Callable[[], bool] | None = None) -> ScanResult | None:
    """Segment every object of slice ``z`` of a tiled image, in this process.

    Parameters
    ----------
    predictor : FocSAMPredictor
    store : TiledEmbeddingStore
        The image's tiles (a disk cache makes a second run encode nothing).
    z : int
        The slice.
    params : SegmentAllParams, optional
        See :func:`tile_objects`.
    max_level : int or None
        The coarsest level scanned (default: the store's top level; 0 scans full resolution
        only, for images whose objects are all smaller than the halo).
    progress : callable, optional
        ``progress(tiles done, tiles)``.
    cancelled : callable, optional
        Checked after each tile; True stops the run (then None is returned).

    Returns
    -------
    ScanResult or None
        None when cancelled.
    """
    params = params or SegmentAllParams()
    t0 = time.perf_counter()
    keys = scan_keys(store, max_level)
    top = max(k.level for k in keys)
    state = {"done": 0}

    def tick() -> bool:
        state["done"] += 1
        if progress is not None:
            progress(state["done"], len(keys))
        return not (cancelled is not None and cancelled())

    got = segment_tiles(predictor, store, z, keys, params, top, tick)
    if got is None:
        return None
    objects, computed = got
    final, stats = resolve_seams(objects, store.tile_window, params.nms_iou_thresh, params.min_area)
    info = {"units": len(keys), "computed": computed, "reused": len(keys) - computed, "workers": 1,
            "seconds": round(time.perf_counter() - t0, 2), "objects": len(final), "seams": stats.as_dict(),
            "failed": [], "errors": [], "lost_workers": 0, "retried": 0}
    return ScanResult(final, tuple(store.volume.plane_shape), info)


def _scan_task(source: ImageSource, cache_dir: str | None, model: str, device: str, z: int,
               keys: Sequence[tuple[int, int, int]], params: SegmentAllParams, top: int,
               threads: int | None) -> tuple[list[ScanObject], dict[str, Any]]:
    """Runs on a worker: the candidates of some tiles, with the worker's kept model."""
    store = worker_store(source, cache_dir, model, device, threads)
    if store.disk_error and cache_dir is not None:
        raise OSError(store.disk_error)
    objects, computed = segment_tiles(store.predictor, store, z, [TileKey(*k) for k in keys], params, top)
    return objects, {"computed": computed, "worker_pid": os.getpid(), "max_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MiB (None where unknown). Linux: ``VmHWM``, which
    starts afresh with the process image (``ru_maxrss`` survives exec, so a worker spawned by a
    large process would report its parent's peak); elsewhere ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    except ImportError:  # Windows
        return None


def segment_all_scan(source: ImageSource, z: int = 0, params: SegmentAllParams | None = None, *, model: str,
                     device: str = "cpu", cache_dir: str | Path | None = None, client: Any = None,
                     max_level: int | None = None, tiles_per_task: int = 1, retries: int = 3,
                     threads: int | None = None, progress: bool = True) -> ScanResult:
    """Segment every object of slice ``z`` of a large image, in this process or on a dask cluster.

    Parameters
    ----------
    source : ImageSource
        The image, with ``tiling`` = (tile_size, halo) set; re-opened lazily on every worker.
    z : int
        The slice (0 for a 2D image).
    params : SegmentAllParams, optional
        See :func:`tile_objects`.
    model, device : str
        Weights (registry name or path, present on every worker) and device.
    cache_dir : str, Path or None
        The signed tiled embedding cache, reachable under the same path from every worker
        (needed with a cluster, so that tiles are shared, kept and reused).
    client : distributed.Client or None
        None runs in this process; else each task is ``tiles_per_task`` tiles.
    max_level : int or None
        The coarsest level scanned (default all).
    retries : int
        How often the scheduler re-runs a task whose worker failed or died.
    threads : int or None
        Torch threads per task (None: the worker's default).
    progress : bool
        A progress bar on stderr.

    Returns
    -------
    ScanResult
        ``info["failed"]`` lists the tiles whose task failed (then ``objects`` is empty: run
        again, the cached tiles are reused).

    Raises
    ------
    ValueError
        A source without tiling, or a cluster without a cache folder.
    """
    if source.tiling is None:
        raise ValueError("segment_all_scan needs an ImageSource with tiling=(tile_size, halo)")
    params = params or SegmentAllParams()
    cache = None if cache_dir is None else str(Path(cache_dir).expanduser().resolve())
    t0 = time.perf_counter()
    if client is None:
        store = worker_store(source, cache, model, device, threads)
        bar = _stderr_bar(progress)
        result = segment_all_tiled(store.predictor, store, z, params, max_level=max_level, progress=bar)
        assert result is not None  # nothing cancels it
        if progress:
            print(file=sys.stderr)
        return result
    if cache is None:
        raise ValueError("segment-all on a cluster needs an embedding cache folder that every worker reaches")
    vol = source.volume()
    plan = TilePlan(vol, *source.tiling)
    keys = scan_keys(plan, max_level)
    top = max(k.level for k in keys)
    groups = [keys[i:i + max(1, tiles_per_task)] for i in range(0, len(keys), max(1, tiles_per_task))]
    workers_before = _worker_addresses(client)
    futures = [client.submit(_scan_task, source, cache, model, device, int(z), [tuple(k) for k in g], params, top,
                             threads, pure=False, retries=retries,
                             key=f"focsam-scan-{z}-{g[0].level}-{g[0].iy}-{g[0].ix}-{time.time_ns()}")
               for g in groups]
    if futures and progress:
        progress_on_stderr(futures)
    for fut in futures:  # waits on each (distributed.wait would ask for the process's default client)
        try:
            fut.result()
        except Exception:  # reported below, task by task
            pass
    objects: list[ScanObject] = []
    computed, failed, errors, rss = 0, [], [], {}
    for g, fut in zip(groups, futures):
        if fut.status == "finished":
            objs, info = fut.result()
            objects.extend(objs)
            computed += info["computed"]
            rss[info["worker_pid"]] = info["max_rss_mb"]
        else:
            failed.extend(tuple(k) for k in g)
            try:
                exc = fut.exception(timeout=5)
            except Exception as err:  # cancelled, or the scheduler is gone
                exc = err
            errors.append(f"tiles {[tuple(k) for k in g]}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    workers_after = _worker_addresses(client)
    retried = _tasks_run_again(client, [fut.key for fut in futures])
    final, stats = ([], SeamStats()) if failed else resolve_seams(
        objects, plan.tile_window, params.nms_iou_thresh, params.min_area)
    info = {"units": len(keys), "computed": computed, "reused": len(keys) - computed - len(failed),
            "workers": len(workers_after), "seconds": round(time.perf_counter() - t0, 2), "objects": len(final),
            "seams": stats.as_dict(), "failed": failed, "errors": errors,
            "lost_workers": len(workers_before - workers_after), "retried": retried,
            "worker_max_rss_mb": [round(v, 1) for v in rss.values() if v is not None]}
    return ScanResult(final, tuple(vol.plane_shape), info)


def _worker_addresses(client: Any) -> set[str]:
    """The addresses of the cluster's workers now (a worker restarted by its nanny comes back
    under a new address; empty when the scheduler does not answer)."""
    try:
        return set(client.scheduler_info(n_workers=-1).get("workers", {}))
    except Exception:
        return set()


def _tasks_run_again(client: Any, keys: Sequence[str]) -> int | None:
    """How many of ``keys`` the scheduler sent to a worker more than once (from its task log: a
    task taken back from a lost worker, or retried after an error; work stealing is not logged
    there, so it does not count). None when the scheduler's log cannot be read."""
    try:
        story = client.story(*keys, on_error="ignore")
    except Exception:
        return None
    sent: dict[str, int] = {}
    for entry in story:
        if entry[0] == "scheduler" and len(entry) > 3 and entry[3] == "processing":  # (who, key, start, finish, ...)
            sent[entry[1]] = sent.get(entry[1], 0) + 1
    return sum(1 for n in sent.values() if n > 1)


class TilePlan:
    """The tile geometry of a tiled store of ``vol`` (the grids of its levels, tile windows),
    without a model or a cache: what the client of a cluster run needs to plan and stitch.

    Parameters
    ----------
    vol : ImageVolume
    tile_size, halo : int
        The tiling (see :func:`~napari_focsam.core.images.check_tiling`).
    """

    def __init__(self, vol: Any, tile_size: int, halo: int) -> None:
        from ..images import TileGrid, check_tiling

        self.tile_size, self.halo = check_tiling(tile_size, halo)
        self.volume = vol
        self.grids = []
        for level in range(vol.max_level + 1):
            self.grids.append(TileGrid(vol.level_shape(level), self.tile_size, self.halo, level))
            if self.grids[-1].single:
                break

    @property
    def top_level(self) -> int:
        return len(self.grids) - 1

    def grid(self, level: int):
        return self.grids[int(level)]

    def tile_window(self, key: TileKey) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``key`` in full-resolution pixels (as the store's)."""
        y0, y1, x0, x1 = self.grid(key.level).window(key)
        f = self.factor(key.level)
        H, W = self.volume.plane_shape
        return round(y0 * f), min(H, round(y1 * f)), round(x0 * f), min(W, round(x1 * f))

    def factor(self, level: int) -> float:
        return self.volume.level_factor(self.grid(level).level)


def _stderr_bar(enabled: bool) -> Callable[[int, int], None] | None:
    if not enabled:
        return None

    def bar(done: int, total: int) -> None:
        print(f"\rsegment-all: tile {done}/{total}", end="", file=sys.stderr, flush=True)

    return bar
