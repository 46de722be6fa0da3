"""``napari-focsam track MOVIE --axes tyx|tzyx --points SEEDS.csv --out LABELS.tif [--tracks TRACKS.csv]``.

A time-lapse segmented frame by frame (:mod:`napari_focsam.core.session._timelapse`): one object per
seed of a napari points-layer CSV (``axis-0`` = t, then ``y, x`` or ``z, y, x``), on any frame,
followed forwards and backwards with the z propagation run along t; object id = seed row + 1
in every frame. ``--divide`` names a second points CSV, one point per division, on one
daughter in the first frame where the two are apart: the object under it (or, where its track
stopped at the division, the object of the frame before) is split there with that one click.
The labels stack is written as ``.tif``/``.npy``; ``--tracks`` adds a CSV with one row per
object and frame: object_id, t, [z,] y, x (centroid, pixels), area, parent_id. Prints one line
of JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from ..core.defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD
from ..errors import UserError
from ._common import add_image_model_options, check_output, check_stops, note, progress_bar, read_input

__all__ = ["add_parser", "run"]

#: The axis orders ``--axes`` takes (the same as ``core.timelapse.AXES``, kept here so that
#: ``--help`` does not import the engine).
AXES_CHOICES = ("tyx", "tzyx")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``track`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "track", help="follow objects through a time-lapse (T, Y, X) or (T, Z, Y, X); labels and tracks out",
        description="One object per seed (napari points CSV: t, [z,] y, x) on any frame, followed frame by "
                    "frame with the slice propagation run along t; ids are kept through time.")
    p.add_argument("image", help="time-lapse: a (T, Y, X) or (T, Z, Y, X) tif or npy")
    p.add_argument("--axes", required=True, type=str.lower, choices=AXES_CHOICES,
                   help="the image's axis order: tyx (2D frames) or tzyx (a z-stack per frame)")
    p.add_argument("--points", required=True, metavar="CSV",
                   help="seeds, a napari points CSV: index,axis-0 (t),axis-1,axis-2[,axis-3]")
    p.add_argument("--divide", default=None, metavar="CSV",
                   help="divisions: one point per division, on one daughter, in the first frame after it")
    p.add_argument("--out", required=True, help="output labels stack: .tif, .tiff or .npy")
    p.add_argument("--tracks", default=None, metavar="CSV", help="also write object_id,t,[z,]y,x,area,parent_id")
    p.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD, metavar="T",
                   help=f"a track stops below this IoU with the previous frame, the masks centred on each other "
                        f"(default {DEFAULT_IOU_THRESHOLD})")
    p.add_argument("--edge-fade", type=float, default=DEFAULT_EDGE_FADE, metavar="F",
                   help="a track (or, in a 4D movie, an object along z) stops where its outline has faded "
                        f"below F times its clicked frame's: out of focus; 0 turns it off (default {DEFAULT_EDGE_FADE})")
    add_image_model_options(p)
    p.add_argument("--cache", default=None, metavar="DIR", help="embedding cache folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _points(path: str, shape: tuple[int, ...], what: str):
    """Points of a napari CSV as (N, ndim) rows, checked against ``shape``; UserError otherwise."""
    from ..core.cluster import read_seeds

    try:
        pts = read_seeds(path, len(shape))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for row, p in enumerate(pts, start=1):
        if not all(-0.5 <= v < n - 0.5 for v, n in zip(p, shape)):
            raise UserError(f"{what} {row} in {path} at {tuple(float(v) for v in p)} is outside the movie {shape}")
    return pts


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam track``; return the exit code."""
    from ..core.images import ImageVolume
    from ..core.outputs import write_mask
    from ..core.session import Session, TimeLapse, check_axes, tracks_table, write_tracks_csv

    t0 = time.perf_counter()
    check_stops(args.iou_threshold, args.edge_fade)
    movie = read_input(args.image)
    try:
        axes = check_axes(args.axes, movie.shape)
    except ValueError as exc:
        raise UserError(f"{args.image}: {exc}") from None
    out = check_output(args.out, 3, args.image)
    if out.suffix.lower() not in (".tif", ".tiff", ".npy"):
        raise UserError(f"--out {out}: a labels stack is written as .tif, .tiff or .npy")
    seeds = _points(args.points, movie.shape, "seed")
    divisions = _points(args.divide, movie.shape, "division") if args.divide else []

    from ..core.models import load_model

    model = load_model(args.model, args.device)

    def session_factory(arr):  # every frame's session shares the one model
        try:
            return Session(ImageVolume(arr, contrast_limits=args.contrast_limits), model, cache_dir=args.cache)
        except ValueError as exc:
            raise UserError(f"{args.image}: {exc}") from None

    note(f"read {args.image} as {axes.upper()} {tuple(movie.shape)}; {len(seeds)} seeds, {len(divisions)} divisions")
    tl = TimeLapse(movie, axes=axes, session_factory=session_factory)
    try:
        update, close = progress_bar(len(seeds), "objects", not args.no_progress)
        try:
            for p in seeds:
                t, rest = int(round(p[0])), [float(v) for v in p[1:]]
                if tl.is_4d:
                    tl.add_object(t, rest[1], rest[2], z=int(round(rest[0])))
                else:
                    tl.add_object(t, rest[0], rest[1])
            tl.propagate(iou_threshold=args.iou_threshold, edge_fade=args.edge_fade, progress=update)
        finally:
            close()
        for p in sorted(divisions, key=lambda q: q[0]):
            t = int(round(p[0]))
            z = int(round(p[1])) if tl.is_4d else None
            y, x = float(p[-2]), float(p[-1])
            oid = _object_at(tl, t, z, y, x)
            daughters = tl.split(oid, t, y, x, z)
            tl.propagate(daughters, iou_threshold=args.iou_threshold, edge_fade=args.edge_fade)
        labels = tl.labels()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        tl.close()
    write_mask(out, labels)
    summary = {"image": str(args.image), "axes": axes, "objects": len(tl.tracks), "frames": tl.n_frames,
               "divisions": len(divisions), "out": str(out)}
    if args.tracks:
        rows = tracks_table(labels, {i: tr.parent for i, tr in tl.tracks.items()})
        summary["tracks"] = str(write_tracks_csv(args.tracks, rows))
        summary["track_rows"] = len(rows)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary))
    return 0


def _object_at(tl, t: int, z: int | None, y: float, x: float) -> int:
    """The object under (y, x) on frame ``t``; else (its track stopped at the division) the
    object of frame ``t - 1`` nearest to the point, within its own size. UserError when none is."""
    import numpy as np
    from scipy import ndimage as ndi

    iy, ix = int(round(y)), int(round(x))
    best = None
    for frame in (t, t - 1):
        if frame < 0:
            continue
        for oid in sorted(tl.tracks):
            m = tl.mask(oid, frame)
            plane = m[z] if tl.is_4d else m
            if not plane.any():
                continue
            if frame == t:
                if plane[iy, ix]:
                    return oid
                continue
            d = float(ndi.distance_transform_edt(~plane)[iy, ix])
            if d <= np.sqrt(plane.sum()) and (best is None or d < best[0]):
                best = (d, oid)
        if best is not None:
            return best[1]
    raise UserError(f"division at t={t}, ({y}, {x}): no object there (nor next to it on frame {t - 1}); "
                    "put the point on one daughter of a tracked object")
