"""``segment-all`` on a large or pyramidal image, in this process or on a dask cluster.

Called by :mod:`.segment_all` when the slice is large (long side above 1536 pixels: tiled as the
engine tiles it), when ``--workers``/``--scheduler`` is given, or with ``--into-input-labels``.
Every check (output, label name, tiling, cache) comes before the model is loaded; the labels are
written chunk by chunk (:mod:`napari_focsam.core.cluster._scan_labels`); one JSON line at the end with
units (tiles), computed, reused, workers, seconds and objects (on a cluster also lost_workers and
retried: a killed worker's tasks run again elsewhere, and the tiles it encoded count as reused).
"""

from __future__ import annotations

import argparse
import json

from ..core.automatic import SegmentAllParams
from ..errors import UserError
from ._common import check_output, note, note_tiling, tile_options

__all__ = ["run_scan"]


def run_scan(args: argparse.Namespace, params: SegmentAllParams, vol, z: int) -> int:
    """Segment slice ``z`` of ``vol`` (opened lazily from ``args.image``) tile by tile; return the exit code."""
    from ..core.outputs import check_labels_into, check_labels_output

    plane = tuple(vol.plane_shape)
    try:
        if args.into_input_labels is not None:
            check_labels_into(args.image, args.into_input_labels, plane)
        if args.out is not None:
            check_output(args.out, 2, args.image)
            check_labels_output(args.out, plane)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    tiling = tile_options(args)
    if not note_tiling(args, vol, tiling):
        note(f"the image ({plane[0]}x{plane[1]}) is tiled for the cluster: tiles of {tiling[0]} overlapping "
             f"by {tiling[1]}")
    cluster = args.workers is not None or args.scheduler is not None
    if cluster and args.cache is None:
        raise UserError("--workers/--scheduler need --cache DIR: the workers share and keep the tiles' "
                        "embeddings there (a second run reuses them)")
    if args.max_level is not None and args.max_level < 0:
        raise UserError(f"--max-level {args.max_level} must be 0 or more")
    from ..core.cluster import ImageSource, connect, segment_all_scan, write_scan_labels, write_scan_labels_into
    from ..core.models import model_files

    model_files(args.model)  # fetch once here, not once per worker
    source = ImageSource(str(args.image), contrast_limits=args.contrast_limits, level=args.level,
                         tiling=tuple(tiling))
    kwargs = dict(model=args.model, device=args.device, cache_dir=args.cache, max_level=args.max_level,
                  tiles_per_task=args.units_per_task, progress=not args.no_progress)
    try:
        if cluster:
            with connect(args.workers, args.scheduler) as client:
                result = segment_all_scan(source, z, params, client=client, **kwargs)
        else:
            result = segment_all_scan(source, z, params, **kwargs)
    except (ValueError, OSError) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    info = result.info
    if info["failed"]:
        print(json.dumps({"image": str(args.image), **info}))
        note(f"{len(info['failed'])} tile(s) failed on the cluster ({info['errors'][0]}); no labels were "
             "written: run the same command again (the cached tiles are reused)")
        return 1
    try:
        if args.into_input_labels is not None:
            into = write_scan_labels_into(args.image, args.into_input_labels, plane, result.objects)
        if args.out is not None:
            write_scan_labels(args.out, plane, result.objects)
    except ValueError as exc:  # the checks passed before the work; the folder changed since
        raise UserError(str(exc)) from None
    if not result.objects:
        note("warning: no object passed the filters; the labels image is empty")
    summary = {"image": str(args.image), "model": args.model, **info, "shape": list(plane),
               "tiling": {"tile_size": tiling[0], "halo": tiling[1]}, "params": params.as_dict()}
    if args.out is not None:
        summary["out"] = str(args.out)
    if args.into_input_labels is not None:
        summary["into"] = str(into)
    if vol.is_3d:
        summary["slice"] = z
    print(json.dumps(summary))
    return 0
