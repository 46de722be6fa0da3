"""``napari-focsam precompute IMAGE --cache DIR [--model NAME]``: fill the on-disk embedding cache.

Computes the embeddings of a 2D image or of every slice of a stack into one zarr store per
image and model in DIR; an interrupted run resumes where it stopped. A complete cache in a
read-only folder is reported as such (nothing to do, exit 0). Prints one line of JSON.

With ``--workers N`` the slices are spread over a local dask cluster of N processes, with
``--scheduler ADDRESS`` over a running dask cluster (see :mod:`napari_focsam.core.cluster._distributed`);
the store is the same as a single process writes.

A large image (long side above 1536 pixels; a zarr folder or OME-Zarr pyramid is opened lazily)
is cached tile by tile (``--tile-size``, ``--halo``), at every level the tiled engine uses: the
units counted are then tiles.
"""

from __future__ import annotations

import argparse
import json
import time

from ..errors import UserError
from ._common import (
    add_cluster_options, add_image_model_options, add_large_image_options, layout_of, load_volume, note, note_tiling,
    open_input, progress_bar, tile_options)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``precompute`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "precompute", help="compute and cache the embeddings of an image or of every slice of a stack",
        description="Fill the on-disk embedding cache (one zarr store per image and model in DIR); "
                    "an interrupted run resumes where it stopped.")
    p.add_argument("image", help="2D image (tif/png/jpg), 3D stack (tif), or a zarr array / OME-Zarr folder")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache folder (created if needed)")
    add_image_model_options(p)
    add_large_image_options(p)
    add_cluster_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam precompute``; return the exit code."""
    from ..core.embeddings import CacheWriteError, open_store
    from ..core.models import load_model
    from ..core.prompting import FocSAMPredictor

    tiling = tile_options(args)
    if args.workers is not None or args.scheduler is not None:
        return _run_on_cluster(args)
    vol = load_volume(open_input(args.image, args.level), args.contrast_limits)
    if vol.is_3d or vol.has_channels:
        note(f"read {args.image} as {layout_of(vol)}")
    large = note_tiling(args, vol, tiling)
    model = load_model(args.model, args.device)
    store = open_store(FocSAMPredictor(model), vol, tiles=large, cache_dir=args.cache, tile_size=tiling[0],
                       halo=tiling[1])
    n, what = store.n_units, store.unit_name
    if store.cache_path is None:
        raise UserError(f"cannot fill the cache in {args.cache}: {store.disk_error}")
    t0 = time.perf_counter()
    if not store.disk_writable:
        missing = len(store.missing())
        if missing:
            why = store.disk_error or f"the store {store.cache_path} is read-only"
            raise UserError(f"cannot fill the cache in {args.cache}: {why} ({missing} of {n} {what} are missing)")
        note(f"nothing to do: the read-only cache {store.cache_path} holds all {n} {what}")
        computed, reused = 0, n
    else:
        update, close = progress_bar(n, "embeddings", not args.no_progress)
        update(0, n)  # at once: a huge image starts with its first unit, not after a planning pass
        try:
            computed = store.precompute(progress=update)
        except CacheWriteError as exc:  # e.g. the disk filled up on the way
            raise UserError(f"the cache in {store.cache_path} is incomplete: {exc}") from None
        finally:
            close()
        reused = store.last_precompute.get("reused", 0) + store.last_precompute.get("by_others", 0)
        if store.disk_error:
            raise UserError(f"the cache in {store.cache_path} is incomplete: {store.disk_error}")
    print(json.dumps({
        "image": str(args.image), "shape": list(vol.shape), "slices": vol.n_slices, "units": n,
        "computed": computed, "reused": reused, "workers": 1, "seconds": round(time.perf_counter() - t0, 2),
        "model": model.model_type, "model_id": store.model_id[:16], "cache": str(store.cache_path),
    }))
    return 0


def _run_on_cluster(args: argparse.Namespace) -> int:
    """``precompute --workers N`` or ``--scheduler ADDRESS``: the slices (or, on a large image,
    the tiles of every level) as dask tasks."""
    from ..core.cluster import ImageSource, connect, open_image, precompute_distributed
    from ..core.models import model_files

    try:
        vol = load_volume(open_image(args.image, args.level), args.contrast_limits)  # lazily: no whole read here
    except ValueError as exc:
        raise UserError(str(exc)) from None
    note(f"read {args.image} as {layout_of(vol)}")
    tiling = tile_options(args)
    large = note_tiling(args, vol, tiling)  # tiled: every tile of every level is a unit of the same store
    model_files(args.model)  # fetch once here (a refiner entry: its base too), not once per worker
    source = ImageSource(str(args.image), contrast_limits=args.contrast_limits, level=args.level,
                         tiling=tuple(tiling) if large else None)
    try:
        with connect(args.workers, args.scheduler) as client:
            info = precompute_distributed(client, source, args.cache, model=args.model, device=args.device,
                                          units_per_task=args.units_per_task, progress=not args.no_progress)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    info = {"image": str(args.image), **info, "cache": str(args.cache)}
    print(json.dumps(info))
    if info["failed"]:
        note(f"{len(info['failed'])} unit(s) failed on the cluster ({info['errors'][0]}); "
             "run the same command again to finish them")
        return 1
    return 0
