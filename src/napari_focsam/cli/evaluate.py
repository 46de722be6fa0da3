"""``napari-focsam evaluate --dataset NAME --data-root DIR --out DIR``: NoC@85/90/95.

Runs the FocSAM click protocol (:mod:`napari_focsam.evaluation`) on a benchmark dataset, with
or without focus refinement (``--compare``: both); prints one line of JSON per run.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.defaults import DEFAULT_MODEL, REFINE_PRECISIONS

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on ``subparsers``; return its parser."""
    p = subparsers.add_parser("evaluate", help="NoC@85/90/95 with the FocSAM click protocol")
    p.add_argument("--dataset", required=True,
                   help="grabcut, davis, coco_mval, berkeley, sbd, coelho2009_gnf, stardist2d, microscopy, "
                        "or a microscopy stack: chloroplasts_em, yeast_phase, vnc_neurites, vnc_mitochondria, "
                        "stardist2d_halves (one image per slice or tile, ids zZZ / zZZ-rRcC)")
    p.add_argument("--data-root", required=True, help="folder holding the dataset (e.g. ../shared/data)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name or checkpoint path")
    p.add_argument("--refiner", default=None, metavar="FILE_OR_NAME",
                   help="focus-refiner weights for the base model (FocSAM-T)")
    p.add_argument("--no-refine", action="store_true", help="plain SAM loop with the same weights")
    p.add_argument("--compare", action="store_true", help="run with and without refinement")
    p.add_argument("--no-zoom", action="store_true",
                   help="decode every object on the whole image (by default, as in the widget, a small object "
                        "of an image of 768 pixels or more is decoded on an enlarged crop)")
    p.add_argument("--images", default=None, metavar="SPEC",
                   help="image selection: first:N, last:N or range:A:B in natural order (e.g. a validation split: "
                        "yeast_phase last:2, vnc_* last:4, chloroplasts_em range:48:60)")
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--refine-precision", choices=REFINE_PRECISIONS, default=None,
                   help="the refiner's matrix products (default: $NAPARI_FOCSAM_REFINE_PRECISION or auto)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam evaluate``; return the exit code."""
    from ..evaluation.runner import run_evaluation

    modes = (True, False) if args.compare else ((False,) if args.no_refine else (True,))

    def progress(n, object_id):
        if not args.quiet:
            print(f"\r{n} objects", end="", flush=True, file=sys.stderr)

    summaries = run_evaluation(args.dataset, args.data_root, args.model, args.out, refine_modes=modes,
                               max_objects=args.max_objects, max_clicks=args.max_clicks,
                               device=args.device, progress=progress, refiner=args.refiner,
                               images=args.images, refine_precision=args.refine_precision,
                               zoom=not args.no_zoom)
    if not args.quiet:
        print(file=sys.stderr)
    for label, s in summaries.items():
        print(json.dumps({"run": label, "dataset": s["dataset"], "model": s["model"], "zoom": s["zoom"],
                          "n_objects": s["n_objects"],
                          "noc85": round(s["noc85"], 3), "noc90": round(s["noc90"], 3),
                          "noc95": round(s["noc95"], 3), "spc": s["spc"], "wall_seconds": s["wall_seconds"]}))
    return 0
