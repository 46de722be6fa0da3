"""Adapter from the FocSAM predictor to the benchmark protocol, and the ``evaluate`` command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..core.predictor import FocSAMPredictor, InteractiveObject
from ..core.weights import DEFAULT_MODEL, REFINE_PRECISIONS
from .datasets import read_dataset
from .metrics import Timings
from .protocol import evaluate_dataset, plot_miou_curves, write_results


class PredictorAdapter:
    """Runs the FocSAM per-object loop for :func:`.protocol.evaluate_dataset`.

    The embedding is computed once per image (``set_image``) and shared by its objects;
    each object gets a fresh :class:`InteractiveObject`; seconds are split into embedding,
    decoder and refine.
    """

    def __init__(self, predictor: FocSAMPredictor) -> None:
        self.predictor = predictor
        self.timings = Timings()
        self._embedding = None
        self._object: InteractiveObject | None = None

    def set_image(self, image: np.ndarray) -> None:
        with self.timings.measure("embedding"):
            self._embedding = self.predictor.embed(image)

    def reset(self) -> None:
        self._object = InteractiveObject(self.predictor, self._embedding)

    def predict(self, clicks) -> np.ndarray:
        if self._object is None:
            self.reset()
        if len(clicks) != len(self._object.clicks) + 1:
            raise RuntimeError("the protocol must add exactly one click per prediction")
        res = self._object.add(clicks[-1])
        self.timings.add("decoder", res.decoder_seconds)
        self.timings.add("refine", res.refine_seconds)
        return res.mask


def run_evaluation(dataset: str, data_root, model, out_dir, *, refine_modes=(True,), max_objects=None,
                   max_clicks: int = 20, device: str = "auto", progress=None,
                   refiner=None, images: str | None = None,
                   refine_precision: str | None = None) -> dict[str, dict]:
    """Evaluate one model on one dataset for each refine mode; returns {label: summary}."""
    from ..core.models import load_model

    net = load_model(model, device, refiner=refiner, refine_precision=refine_precision)
    out_dir = Path(out_dir)
    summaries, curves = {}, {}
    for refine in refine_modes:
        predictor = FocSAMPredictor(net, refine=refine)
        label = "focsam" if predictor.refine else "no_refine"
        if label in summaries:
            continue  # a model without refiner gives the same loop twice
        ds = read_dataset(dataset, data_root, max_objects=max_objects)
        if images:
            ds = ds.select(images)
        adapter = PredictorAdapter(predictor)
        t0 = time.perf_counter()
        per_object, summary = evaluate_dataset(ds, adapter, max_clicks, progress=progress)
        summary.update({"dataset": dataset, "model": net.model_type, "refine": predictor.refine,
                        "refine_matmul_dtype": str(net.focus_refiner.matmul_dtype) if predictor.refine else None,
                        "wall_seconds": round(time.perf_counter() - t0, 2)})
        target = out_dir / label if len(refine_modes) > 1 else out_dir
        write_results(target, per_object, summary, label=label)
        summaries[label], curves[label] = summary, summary["miou"]
    if len(curves) > 1:
        plot_miou_curves(curves, out_dir / "miou_curve.png", title=f"{dataset}: mean IoU per click")
    return summaries


def cmd_evaluate(args) -> int:
    modes = (True, False) if args.compare else ((False,) if args.no_refine else (True,))

    def progress(n, object_id):
        if not args.quiet:
            print(f"\r{n} objects", end="", flush=True, file=sys.stderr)

    summaries = run_evaluation(args.dataset, args.data_root, args.model, args.out, refine_modes=modes,
                               max_objects=args.max_objects, max_clicks=args.max_clicks,
                               device=args.device, progress=progress, refiner=args.refiner,
                               images=args.images, refine_precision=args.refine_precision)
    if not args.quiet:
        print(file=sys.stderr)
    for label, s in summaries.items():
        print(json.dumps({"run": label, "dataset": s["dataset"], "model": s["model"], "n_objects": s["n_objects"],
                          "noc85": round(s["noc85"], 3), "noc90": round(s["noc90"], 3),
                          "noc95": round(s["noc95"], 3), "spc": s["spc"], "wall_seconds": s["wall_seconds"]}))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="NoC@85/90/95 with the FocSAM click protocol")
    p.add_argument("--dataset", required=True,
                   help="grabcut, davis, coco_mval, berkeley, sbd, coelho2009_gnf, stardist2d, microscopy")
    p.add_argument("--data-root", required=True, help="folder holding the dataset (e.g. ../shared/data)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name or checkpoint path")
    p.add_argument("--refiner", default=None, metavar="FILE_OR_NAME",
                   help="focus-refiner weights for the base model (FocSAM-T)")
    p.add_argument("--no-refine", action="store_true", help="plain SAM loop with the same weights")
    p.add_argument("--compare", action="store_true", help="run with and without refinement")
    p.add_argument("--images", default=None, metavar="SPEC",
                   help="image selection: first:N, last:N or range:A:B in natural order (e.g. a validation split)")
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--refine-precision", choices=REFINE_PRECISIONS, default=None,
                   help="the refiner's matrix products (default: $NAPARI_FOCSAM_REFINE_PRECISION or auto)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_evaluate)
