"""``napari-focsam segment IMAGE [--box Y0,X0,Y1,X1] [--click Y,X[,+|-] ...] --out MASK [--slice Z]``.

One object from a box and/or clicks (the box is the first prompt, the clicks refine it),
through the engine's :class:`~napari_focsam.core.session._session.Session`
(the same click loop as the API and the widget). Without ``--propagate`` the mask of the
clicked slice is written, (Y, X); with it, the object is propagated through the stack and the
(Z, Y, X) mask is written. Prints one line of JSON on stdout; what was assumed about the
image's axes, and warnings (a blank image), go to stderr.

Everything that can be checked is checked before the model is loaded: the output path and
format, the tiling options, the image, its layout, the slice and the clicks.

Large images (long side above 1536 pixels; a zarr folder or OME-Zarr pyramid is opened lazily)
are segmented in encoder tiles, with the object at the scale that fits it (see
:mod:`napari_focsam.core.images._tiles`); their masks are kept as regions and written region by region
(``--out mask.zarr`` for a chunked zarr array, or a tiled TIFF), never as a full-size array in
memory (except ``.png``). The output is written to a temporary file and renamed over ``--out``
only once complete: a failed run leaves an existing output as it was.
"""

from __future__ import annotations

import argparse
import json
import time

from ..core.defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD, DEFAULT_MODEL, REFINE_PRECISIONS
from ..core.outputs import formats_help
from ..core.prompting import Click
from ..errors import UserError
from ._common import (
    add_large_image_options, check_output, check_size, check_stops, layout_of, load_volume, note, note_tiling,
    open_input, progress_bar, tile_options, write_regions)

__all__ = ["add_parser", "parse_click", "run"]


def parse_click(text: str) -> Click:
    """``Y,X`` or ``Y,X,+`` / ``Y,X,-`` -> :class:`Click` (unmarked clicks are positive)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"click {text!r} must be Y,X or Y,X,+ or Y,X,- "
                                         "(write --click=-1,5 for a negative coordinate)")
    try:
        y, x = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"click {text!r}: Y and X must be numbers") from None
    sign = parts[2] if len(parts) == 3 else "+"
    if sign not in ("+", "-"):
        raise argparse.ArgumentTypeError(f"click {text!r}: the third field must be + or -")
    return Click(y, x, sign != "-")


def box_arg(text: str):
    """argparse type of ``--box``: ``Y0,X0,Y1,X1`` -> :class:`~napari_focsam.core.prompting._boxes.Box`."""
    from ..core.prompting import parse_box

    try:
        return parse_box(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``segment`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser("segment", help="segment one object from clicks (headless)")
    p.add_argument("image", help="2D image (tif/png/jpg, gray or RGB), a 3D stack (tif), or a zarr array / "
                                 "OME-Zarr folder (read lazily)")
    p.add_argument("--click", action="append", type=parse_click, default=None,
                   metavar="Y,X[,+|-]", help="a click in pixel coordinates; repeat for more clicks")
    p.add_argument("--box", type=box_arg, default=None, metavar="Y0,X0,Y1,X1",
                   help="a box prompt (pixel corners) that starts the object; clicks then refine it")
    p.add_argument("--slice", type=int, default=None, metavar="Z", help="slice of a 3D stack")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name (see `weights list`) or checkpoint path")
    p.add_argument("--refiner", default=None, metavar="FILE_OR_NAME",
                   help="focus-refiner weights trained for this base model (FocSAM-T)")
    p.add_argument("--no-refine", action="store_true", help="plain SAM loop, no focus refinement")
    p.add_argument("--no-zoom", action="store_true",
                   help="a 2D image: decode every object on the whole image (by default a small object on an "
                        "image of 768 pixels or more is decoded on a crop the encoder sees 2x enlarged)")
    p.add_argument("--propagate", action="store_true", help="propagate through the stack (3D mask)")
    p.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD, metavar="T",
                   help="with --propagate: stop where the IoU with the previous slice, the masks centred "
                        f"on each other, falls below T (default {DEFAULT_IOU_THRESHOLD})")
    p.add_argument("--edge-fade", type=float, default=DEFAULT_EDGE_FADE, metavar="F",
                   help="with --propagate: stop where the object's outline (the image gradient around the "
                        "mask) has faded below F times its clicked slice's, as past the ends of an object "
                        f"in a fluorescence stack; 0 turns it off (default {DEFAULT_EDGE_FADE})")
    p.add_argument("--no-vote", action="store_true",
                   help="with --propagate: keep each propagated slice as decoded (by default a pixel is kept "
                        "where two of the slice and its two neighbours have it, on objects whose sections "
                        "overlap from slice to slice); use it when the slices are frames in time")
    p.add_argument("--cache", default=None, metavar="DIR", help="embedding cache folder (see `precompute`)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--refine-precision", choices=REFINE_PRECISIONS, default=None,
                   help="the refiner's matrix products: auto (bf16 on CPUs with native bf16, "
                        "else fp32; default, or $NAPARI_FOCSAM_REFINE_PRECISION), fp32 or bf16")
    add_large_image_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (--propagate)")
    p.add_argument("--out", required=True,
                   help="output mask (uint8, 1 = object): " + formats_help())
    p.set_defaults(func=run)
    return p


def _slice_of(vol, slice_index: int | None, propagate: bool) -> int:
    """The slice the clicks are on, checked against the volume."""
    if not vol.is_3d:
        if propagate:
            raise UserError(f"--propagate needs a 3D stack (Z, Y, X), but the image is 2D {tuple(vol.shape)}: "
                            "drop --propagate")
        if slice_index not in (None, 0):
            raise UserError(f"--slice {slice_index} given, but the image is 2D {tuple(vol.shape)}")
        return 0
    n = vol.n_slices
    if slice_index is None:
        if propagate:
            raise UserError(f"the stack has {n} slices: pass --slice Z for the slice the clicks are on")
        raise UserError(f"the image is a 3D stack of {n} slices {tuple(vol.shape)}: pass --slice Z")
    if not 0 <= slice_index < n:
        raise UserError(f"--slice {slice_index} is out of range: the stack has {n} slices (0..{n - 1})")
    return slice_index


def _check_clicks(vol, clicks: list[Click]) -> None:
    H, W = vol.plane_shape
    for c in clicks:
        if not (0 <= c.y < H and 0 <= c.x < W):
            raise UserError(f"click ({c.y:g},{c.x:g}) is outside the image of {H}x{W} pixels")


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam segment``; return the exit code."""
    if args.propagate:
        check_stops(args.iou_threshold, args.edge_fade)
    tiling = tile_options(args)
    check_output(args.out, 3 if args.propagate else 2, args.image)
    vol = load_volume(open_input(args.image, args.level))
    check_size(args.out, (((vol.n_slices,) if args.propagate else ()) + tuple(vol.plane_shape)))
    z = _slice_of(vol, args.slice, args.propagate)
    clicks = list(args.click or [])
    box = None
    if not clicks and args.box is None:
        raise UserError("give at least one --click Y,X or a --box Y0,X0,Y1,X1")
    _check_clicks(vol, clicks)
    if args.box is not None:
        from ..core.prompting import checked_box

        try:
            box = checked_box(args.box, vol.plane_shape)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if vol.is_3d or vol.has_channels:
        note(f"read {args.image} as {layout_of(vol)}")
    large = note_tiling(args, vol, tiling)

    from ..core.models import load_model, refine_precision_of
    from ..core.session import Session

    model = load_model(args.model, args.device, refiner=args.refiner, refine_precision=args.refine_precision)
    extra = {"tile_size": tiling[0], "halo": tiling[1]} if large else {}
    session = Session(vol, model, refine=not args.no_refine, cache_dir=args.cache, zoom=not args.no_zoom, **extra)
    obj = session.new_object()
    t0 = time.perf_counter()
    if not large:  # a tiled image embeds the tiles under the prompts only, in the first prompt
        session.store.get(z)  # a blank slice gets an empty mask, with the engine's warning on stderr
    t_embed = time.perf_counter() - t0
    click_s = []
    as_region = {"region": True} if large else {}
    if box is not None:
        t0 = time.perf_counter()
        obj.set_box(box, z=z, **as_region)
        summary_box = {"box": box.to_json(), "box_seconds": round(time.perf_counter() - t0, 4)}
    else:
        summary_box = {}
    for c in clicks:
        t0 = time.perf_counter()
        try:
            obj.add_click(c.y, c.x, c.is_positive, z=z, **as_region)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        click_s.append(round(time.perf_counter() - t0, 4))
    refine = session.predictor.refine
    summary = {
        "model": model.model_type, "refine": refine, "clicks": len(clicks),
        "refine_precision": refine_precision_of(model) if refine else None, **summary_box,
    }
    if large:
        return _finish_large(args, vol, session, obj, z, summary, click_s, t_embed, tiling)
    if not args.propagate:
        mask = obj.mask(z).astype("uint8")
        _write(args.out, mask)
        summary.update({"embedding_seconds": round(t_embed, 3), "click_seconds": click_s,
                        "mask_pixels": int(mask.sum()), "shape": list(mask.shape), "out": str(args.out)})
        if vol.is_3d:
            summary["slice"] = z
        print(json.dumps(summary))
        return 0

    result = _propagate(args, vol, obj)
    volume = obj.volume_mask().astype("uint8")
    _write(args.out, volume)
    summary.update({
        "slice": z, "z_range": list(result.z_range), "stopped": result.stopped_reason,
        "slices_with_mask": int(volume.any(axis=(1, 2)).sum()), "mask_voxels": int(volume.sum()),
        "click_seconds": round(sum(click_s) + t_embed, 3), "propagation_seconds": round(result.seconds, 3),
        "embeddings_computed": session.store.stats["computed"], "shape": list(volume.shape), "out": str(args.out),
    })
    print(json.dumps(summary))
    return 0


def _propagate(args, vol, obj):
    """``obj.propagate`` with a progress bar; a refused propagation is a one-line UserError."""
    update, close = progress_bar(vol.n_slices, "propagation", not args.no_progress)
    try:
        return obj.propagate(progress=update, iou_threshold=args.iou_threshold, edge_fade=args.edge_fade,
                             vote=not args.no_vote)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        close()


def _finish_large(args, vol, session, obj, z: int, summary: dict, click_s: list, t_embed: float,
                  tiling: tuple[int, int]) -> int:
    """Write the mask of a tiled image region by region (and propagate first with --propagate)."""
    summary["tiling"] = {"tile_size": tiling[0], "halo": tiling[1], "levels": vol.n_levels}
    if not args.propagate:
        counts = write_regions(args.out, vol.plane_shape, lambda _z: obj.mask_region(z))
        summary.update({"embedding_seconds": round(t_embed, 3), "click_seconds": click_s,
                        "mask_pixels": counts["mask_pixels"], "shape": list(vol.plane_shape), "out": str(args.out)})
        if vol.is_3d:
            summary["slice"] = z
        print(json.dumps(summary))
        return 0
    result = _propagate(args, vol, obj)
    shape = (vol.n_slices, *vol.plane_shape)
    counts = write_regions(args.out, shape, obj.mask_region)
    summary.update({
        "slice": z, "z_range": list(result.z_range), "stopped": result.stopped_reason,
        "slices_with_mask": counts["slices_with_mask"], "mask_voxels": counts["mask_pixels"],
        "click_seconds": round(sum(click_s) + t_embed, 3), "propagation_seconds": round(result.seconds, 3),
        "embeddings_computed": session.store.stats["computed"], "shape": list(shape), "out": str(args.out),
    })
    print(json.dumps(summary))
    return 0


def _write(path, mask) -> None:
    from ..core.outputs import write_mask

    try:
        write_mask(path, mask)
    except ValueError as exc:  # the checks passed before the work; the folder changed since
        raise UserError(str(exc)) from None
