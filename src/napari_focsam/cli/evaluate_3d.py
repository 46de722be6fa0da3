"""``napari-focsam evaluate-3d``: the 3D correction protocol on a labelled stack.

A simulated user clicks the middle slice of each object, the object is propagated, then the user
corrects the slice with the most wrong voxels, again and again (:mod:`napari_focsam.evaluation.volumes`).
On a named set of the shared data (``--volume cells3d --data-root ../shared/data``) or on one's
own stack and label stack (``--image stack.tif --labels labels.tif``). Writes every object's
curve to ``--out``/``results.json`` and prints one line of JSON: the mean 3D IoU after 1..N
clicks, 3D NoC@80/85/90 and the seconds per re-propagation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..core.defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD, DEFAULT_MODEL
from ..errors import UserError
from ._common import check_stops, note, positive_int, read_input

__all__ = ["add_parser", "run"]

#: The named sets (their files under ``--data-root``), listed without importing the evaluation.
VOLUME_NAMES = ("cells3d", "stardist3d", "chloroplasts", "vnc_mito")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate-3d`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser("evaluate-3d", help="3D correction protocol: mean 3D IoU after 1..N clicks, 3D NoC",
                              description="The 3D correction protocol on a labelled stack: a simulated user "
                                          "clicks, propagates and corrects each object; mean 3D IoU after 1..N "
                                          "clicks and 3D NoC@80/85/90.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--volume", choices=VOLUME_NAMES, help="a named set under --data-root")
    src.add_argument("--image", metavar="STACK", help="your own (Z, Y, X) stack (with --labels)")
    p.add_argument("--labels", metavar="LABELS", help="with --image: its 3D instance labels (0 = background)")
    p.add_argument("--data-root", default=None, help="with --volume: the folder holding micro/ (../shared/data)")
    p.add_argument("--objects", type=positive_int, default=None, metavar="N",
                   help="at most N objects (drawn with --seed; default: the set's own choice, or all)")
    p.add_argument("--min-slices", type=positive_int, default=1, metavar="N",
                   help="with --image: only objects spanning at least N slices (default 1)")
    p.add_argument("--window", type=positive_int, default=None, metavar="PX",
                   help="with --image: segment each object in a PX x PX window around it (large planes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clicks", type=positive_int, default=8, help="clicks per object, the first included")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name or checkpoint path")
    p.add_argument("--device", default="auto")
    p.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD, metavar="T",
                   help=f"the propagation's IoU stop (default {DEFAULT_IOU_THRESHOLD})")
    p.add_argument("--edge-fade", type=float, default=DEFAULT_EDGE_FADE, metavar="F",
                   help=f"the propagation's out-of-focus stop, 0 = off (default {DEFAULT_EDGE_FADE})")
    p.add_argument("--no-vote", action="store_true", help="no vote between neighbouring slices (see `segment`)")
    p.add_argument("--no-fit-neighbours", action="store_true",
                   help="keep a later click's answer on a started slice even where it is far from the size of "
                        "the clicked slices next to it")
    p.add_argument("--cache", default=None, metavar="DIR", help="embedding cache folder")
    p.add_argument("--quiet", action="store_true", help="no line per object on stderr")
    p.add_argument("--out", required=True, help="output folder (results.json)")
    p.set_defaults(func=run)
    return p


def _inputs(args: argparse.Namespace):
    """(image, labels, object ids, window, name); UserError for anything that cannot be evaluated."""
    import numpy as np

    from ..evaluation.volumes import read_volume_set, select_objects

    if args.volume:
        if args.labels or args.window:
            raise UserError("--labels and --window go with --image, not with --volume")
        if not args.data_root:
            raise UserError("--volume needs --data-root (the folder holding micro/, e.g. ../shared/data)")
        try:
            image, labels, spec = read_volume_set(args.volume, args.data_root)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        keep = spec.keep if args.objects is None else min(spec.keep or args.objects, args.objects)
        return image, labels, select_objects(labels, keep, spec.min_z, args.seed), spec.window, args.volume
    if not args.labels:
        raise UserError("--image needs --labels: the instance labels to score against")
    image, labels = read_input(args.image), read_input(args.labels)
    if image.ndim != 3 or labels.shape != image.shape:
        raise UserError(f"--image {image.shape} and --labels {labels.shape}: expected one (Z, Y, X) stack and "
                        "labels of the same shape")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"--labels {args.labels} holds {labels.dtype} values: expected integer instance ids")
    ids = select_objects(labels, args.objects, args.min_slices, args.seed)
    if not ids:
        raise UserError(f"--labels {args.labels}: no object spans {args.min_slices} slice(s) or more")
    return image, labels, ids, args.window, Path(args.image).name


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam evaluate-3d``; return the exit code."""
    check_stops(args.iou_threshold, args.edge_fade)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder")
    image, labels, ids, window, name = _inputs(args)
    try:  # before any work: a folder that cannot be written fails now, not after the run
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None

    from ..core.models import load_model
    from ..evaluation.volumes import evaluate_volume, summarise

    model = load_model(args.model, args.device)
    note(f"{name}: {image.shape} {image.dtype}, {len(ids)} objects, {args.clicks} clicks each, model {args.model}")
    t0 = time.perf_counter()

    def progress(row):
        if not args.quiet:
            print(f"napari-focsam: object {row['label']}: " + " ".join(f"{v:.3f}" for v in row["ious"]),
                  file=sys.stderr, flush=True)

    stops = {"iou_threshold": args.iou_threshold, "edge_fade": args.edge_fade, "vote": not args.no_vote}
    rows = evaluate_volume(image, labels, model, ids=ids, n_clicks=args.clicks, window=window,
                           cache_dir=args.cache, propagate_kwargs=stops, progress=progress,
                           fit_neighbours=not args.no_fit_neighbours)
    summary = summarise(rows)
    (out / "results.json").write_text(json.dumps({"volume": name, "model": args.model, **stops,
                                                  "fit_neighbours": not args.no_fit_neighbours,
                                                  "summary": summary, "objects": rows}, indent=1))
    print(json.dumps({"volume": name, "model": args.model, "objects": len(rows),
                      "mean_iou": [round(v, 4) for v in summary["mean_iou"]], "noc": summary["noc"],
                      "seconds_repropagate": summary["seconds_repropagate"],
                      "seconds": round(time.perf_counter() - t0, 1), "out": str(out / "results.json")}))
    return 0
