"""``napari-focsam segment-batch IMAGE --points POINTS.csv --out LABELS.tif [--propagate] [--workers N]``.

One object per seed of a napari points-layer CSV (``index,axis-0,axis-1[,axis-2]``, as
*File > Save Selected Layers* writes it), each seed a positive click; with ``--propagate`` each
object is propagated through the stack from its seed's slice. The result is one labels image:
object id = seed row + 1; where objects overlap, the smaller object keeps the pixels. Seeds
run in this process, or as dask tasks with ``--workers N`` (a local cluster) or
``--scheduler ADDRESS`` (see :mod:`napari_focsam.core.cluster._distributed`). Prints one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from ..core.defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD
from ..core.outputs import formats_help
from ..errors import UserError
from ._common import (
    add_cluster_options, add_image_model_options, check_output, check_size, check_stops, layout_of, load_volume, note,
    progress_bar)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``segment-batch`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "segment-batch", help="segment one object per seed point (points-layer CSV), optionally on a dask cluster",
        description="One object per positive seed from a napari points-layer CSV, written as one labels "
                    "image (id = seed row + 1; overlaps go to the smaller object).")
    p.add_argument("image", help="2D image or 3D stack (tif, png, ..., or a zarr array folder)")
    p.add_argument("--points", required=True, metavar="CSV", help="napari points CSV: index,axis-0,axis-1[,axis-2]")
    p.add_argument("--out", required=True, help="output labels: " + formats_help())
    p.add_argument("--propagate", action="store_true", help="propagate every object through the stack")
    p.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD, metavar="T",
                   help=f"with --propagate: stop below this IoU with the previous slice, the masks centred on each other "
                        f"(default {DEFAULT_IOU_THRESHOLD})")
    p.add_argument("--edge-fade", type=float, default=DEFAULT_EDGE_FADE, metavar="F",
                   help="with --propagate: stop where an object's outline has faded below F times its seed "
                        f"slice's (out of focus); 0 turns it off (default {DEFAULT_EDGE_FADE})")
    p.add_argument("--no-vote", action="store_true",
                   help="with --propagate: keep each propagated slice as decoded (no vote with its neighbours)")
    add_image_model_options(p)
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="embedding cache folder shared by the workers (run `precompute` first)")
    add_cluster_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam segment-batch``; return the exit code."""
    from ..core.cluster import ImageSource, connect, open_image, read_seeds, segment_seeds
    from ..core.outputs import write_object_labels

    t0 = time.perf_counter()
    check_stops(args.iou_threshold, args.edge_fade)
    try:
        vol = load_volume(open_image(args.image), args.contrast_limits)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ndim = 3 if vol.is_3d else 2
    if args.propagate and not vol.is_3d:
        raise UserError(f"--propagate needs a 3D stack, but {args.image} is {layout_of(vol)}: drop --propagate")
    out = check_output(args.out, ndim, args.image)
    shape = ((vol.n_slices,) if vol.is_3d else ()) + tuple(vol.plane_shape)
    check_size(out, shape)  # e.g. a TIFF too large to compress: before any work
    try:
        seeds = read_seeds(args.points, ndim)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    limits = ((vol.n_slices,) if vol.is_3d else ()) + tuple(vol.plane_shape)
    for row, seed in enumerate(seeds, start=1):
        inside = all(-0.5 <= v < n - 0.5 for v, n in zip(seed, limits))
        if not inside:
            raise UserError(f"seed {row} at {tuple(float(v) for v in seed)} is outside the image {limits}")
    note(f"read {args.image} as {layout_of(vol)}; {len(seeds)} seeds")
    source = ImageSource(str(args.image), contrast_limits=args.contrast_limits)
    kwargs = dict(model=args.model, device=args.device, cache_dir=args.cache, propagate=args.propagate,
                  iou_threshold=args.iou_threshold, edge_fade=args.edge_fade, vote=not args.no_vote,
                  seeds_per_task=args.units_per_task,
                  progress=not args.no_progress)
    workers = 1
    try:
        if args.workers is None and args.scheduler is None:
            update, close = progress_bar(len(seeds), "objects", not args.no_progress)
            try:
                results = segment_seeds(source, seeds, on_object=update, **kwargs)
            finally:
                close()
        else:
            from ..core.models import model_files

            model_files(args.model)  # fetch once here (a refiner entry: its base too), not once per worker
            with connect(args.workers, args.scheduler) as client:
                workers = len(client.scheduler_info().get("workers", {}))
                results = segment_seeds(source, seeds, client=client, **kwargs)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    try:
        write_object_labels(out, shape, results)  # object by object: no full-size labels array
    except ValueError as exc:  # the checks passed before the work; the folder changed since
        raise UserError(str(exc)) from None
    empty = [r.index + 1 for r in results if r.mask is None]
    if empty:
        note(f"{len(empty)} seed(s) gave an empty object (ids {empty[:10]}{' ...' if len(empty) > 10 else ''})")
    print(json.dumps({"image": str(args.image), "objects": len(seeds), "segmented": len(seeds) - len(empty),
                      "empty": empty, "workers": workers, "seconds": round(time.perf_counter() - t0, 2),
                      "out": str(out)}))
    return 0
