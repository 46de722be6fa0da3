"""``napari-focsam segment-all IMAGE --out LABELS [--points-per-side N] [--slice Z] ...``.

Automatic instance segmentation of a 2D image (or of one slice of a stack) from a grid of point
prompts (:func:`napari_focsam.core.automatic._segment_all.segment_all`), written as a labels image with ids
1..n and no overlaps. Prints one line of JSON on stdout; a blank image gives an empty labels
image and a note on stderr. The output path, the image and the parameters are checked before
the model is loaded.

A large slice (long side above 1536 pixels; a zarr folder, OME-Zarr pyramid or large TIFF is
opened lazily), ``--workers N``/``--scheduler ADDRESS`` and ``--into-input-labels NAME`` go to
:mod:`.segment_all_scan`: one grid of prompts per tile of the tiled embedding store, seams and
levels resolved, labels written chunk by chunk.
"""

from __future__ import annotations

import argparse
import json

from ..core.automatic import DEFAULT_PRED_IOU_THRESH, DEFAULT_STABILITY_THRESH, SegmentAllParams
from ..core.defaults import DEFAULT_MODEL
from ..core.outputs import formats_help
from ..errors import UserError
from ._common import (
    add_cluster_options, add_large_image_options, check_output, layout_of, load_volume, note, open_input, parse_limits,
    progress_bar, tile_options)

__all__ = ["add_parser", "params_from_args", "run"]

_DEFAULTS = SegmentAllParams()


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``segment-all`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "segment-all", help="segment every object automatically (grid of point prompts)",
        description="Automatic instance segmentation from a grid of point prompts, scored by the "
                    "decoder's predicted IoU and stability, duplicates removed; writes a labels image.")
    p.add_argument("image", help="2D image (tif/png/jpg, gray or RGB) or a 3D stack (tif, with --slice)")
    p.add_argument("--out", default=None,
                   help="output labels (ids 1..n): " + formats_help(extra=[(
                       ".ome.zarr", "an NGFF label image with a pyramid; the format for large images")]))
    p.add_argument("--into-input-labels", default=None, metavar="NAME",
                   help="with an OME-Zarr image as input: write the labels into its labels/NAME group (the "
                        "image itself is never changed; an existing NAME only if this tool wrote it)")
    p.add_argument("--slice", type=int, default=None, metavar="Z", help="slice of a 3D stack")
    p.add_argument("--points-per-side", type=int, default=_DEFAULTS.points_per_side, metavar="N",
                   help=f"grid of N x N point prompts over the image (default {_DEFAULTS.points_per_side})")
    p.add_argument("--pred-iou-thresh", type=float, default=None, metavar="T",
                   help=f"drop masks whose predicted IoU is below T (default: the model's own, "
                        f"{DEFAULT_PRED_IOU_THRESH} for SAM's decoders)")
    p.add_argument("--stability-thresh", type=float, default=None, metavar="T",
                   help=f"drop masks whose stability score is below T (default: the model's own, "
                        f"{DEFAULT_STABILITY_THRESH} for SAM's decoders)")
    p.add_argument("--nms-thresh", type=float, default=_DEFAULTS.nms_iou_thresh, metavar="T",
                   help=f"of two masks with IoU above T keep the better one (default {_DEFAULTS.nms_iou_thresh})")
    p.add_argument("--min-area", type=int, default=_DEFAULTS.min_area, metavar="PIXELS",
                   help=f"drop objects smaller than this (default {_DEFAULTS.min_area})")
    p.add_argument("--max-area-fraction", type=float, default=_DEFAULTS.max_area_fraction, metavar="F",
                   help=f"drop masks covering more than this fraction of the image (default {_DEFAULTS.max_area_fraction})")
    p.add_argument("--tiles", type=int, default=_DEFAULTS.tiles, metavar="N",
                   help="cut the image into N x N overlapping tiles, each encoded on its own canvas "
                        f"(small objects; N times the encoder work; default {_DEFAULTS.tiles})")
    p.add_argument("--no-split", action="store_true",
                   help="do not decode clumps of touching objects again per object (faster)")
    p.add_argument("--all-points", action="store_true",
                   help="decode every grid point (default: skip the dark background of fluorescence "
                        "images and points inside objects already found)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name (see `weights list`) or checkpoint path")
    p.add_argument("--cache", default=None, metavar="DIR", help="embedding cache folder (see `precompute`)")
    p.add_argument("--contrast-limits", type=parse_limits, default=None, metavar="LOW,HIGH",
                   help="intensities mapped to black and white (default: robust percentiles)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_large_image_options(p)
    p.add_argument("--max-level", type=int, default=None, metavar="L",
                   help="large images: the coarsest pyramid level scanned for objects larger than the halo "
                        "(default: all; 0: full resolution only, when every object is smaller than the halo)")
    add_cluster_options(p)
    p.set_defaults(func=run)
    return p


def params_from_args(args: argparse.Namespace) -> SegmentAllParams:
    """The :class:`SegmentAllParams` of the command line (UserError for a value out of range)."""
    try:
        return SegmentAllParams(
            points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
            stability_thresh=args.stability_thresh, nms_iou_thresh=args.nms_thresh, min_area=args.min_area,
            max_area_fraction=args.max_area_fraction, tiles=args.tiles, skip_background=not args.all_points,
            split_clumps=not args.no_split)
    except ValueError as exc:
        raise UserError(f"bad option: {exc}") from None


def _slice_of(vol, z: int | None) -> int:
    if not vol.is_3d:
        if z not in (None, 0):
            raise UserError(f"--slice {z} given, but the image is 2D {tuple(vol.shape)}")
        return 0
    if z is None:
        raise UserError(f"the image is a 3D stack of {vol.n_slices} slices {tuple(vol.shape)}: pass --slice Z")
    if not 0 <= z < vol.n_slices:
        raise UserError(f"--slice {z} is out of range: the stack has {vol.n_slices} slices (0..{vol.n_slices - 1})")
    return z


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam segment-all``; return the exit code."""
    params = params_from_args(args)
    if args.out is None and args.into_input_labels is None:
        raise UserError("give --out LABELS (or, for an OME-Zarr input, --into-input-labels NAME)")
    if args.out is not None:
        check_output(args.out, 2, args.image)
    vol = load_volume(open_input(args.image, args.level), args.contrast_limits)
    z = _slice_of(vol, args.slice)
    if vol.is_3d or vol.has_channels:
        note(f"read {args.image} as {layout_of(vol)}")
    if (vol.is_large(tile_options(args)[0]) or args.workers is not None or args.scheduler is not None
            or args.into_input_labels is not None):
        from .segment_all_scan import run_scan

        return run_scan(args, params, vol, z)

    import numpy as np

    from ..core.automatic import segment_all

    rgb = vol.rgb_plane(z)
    if rgb.min() == rgb.max():  # nothing to segment: no model needed
        model_type = args.model
        result = segment_all(None, rgb, params)
    else:
        from ..core.embeddings import open_store
        from ..core.models import load_model
        from ..core.prompting import FocSAMPredictor

        model = load_model(args.model, args.device)
        model_type = model.model_type
        predictor = FocSAMPredictor(model, refine=False)
        embedding = None
        if params.tiles == 1:
            embedding = open_store(predictor, vol, tiles=False, cache_dir=args.cache).get(z)
        update, close = progress_bar(1, "segment-all (points)", not args.no_progress)
        try:
            result = segment_all(predictor, rgb, params, embedding=embedding, progress=update)
        finally:
            close()
    if result.message and not result.n_objects:
        note(f"warning: {result.message}; the labels image is empty")
    labels = result.labels
    labels = labels.astype(np.uint16 if result.n_objects < 2**16 else np.uint32)
    from ..core.outputs import write_labels_array

    try:
        write_labels_array(args.out, labels)  # *.ome.zarr: an NGFF label image with its pyramid
    except ValueError as exc:  # the checks passed before the work; the folder changed since
        raise UserError(str(exc)) from None
    summary = {
        "model": model_type, "objects": result.n_objects, "points_decoded": result.n_points,
        "candidates": result.n_candidates, "seconds": round(result.seconds, 3), "shape": list(labels.shape),
        "params": params.as_dict(), "out": str(args.out),
    }
    if vol.is_3d:
        summary["slice"] = z
    print(json.dumps(summary))
    return 0
