"""How far can slice-by-slice decoding go? 3D IoU ceilings of the propagation's decoder.

The 3D correction protocol (``bench_volume_interactive.py``) stalls below the targets set for it
on cells3d (mean 3D IoU 0.90 after 3 clicks, 0.93 after 5). This script measures what the
decoder gives when it is handed better prompts than any propagation can have, on the same
volumes and objects:

``propagated``  the product's own result after one click (the interactive benchmark's first
                click: a positive click at the middle slice's interior point, propagated);
``per-slice``   every labelled slice of the object clicked once, at its label's interior point,
                as a 2D first click (with the refine, as the widget does), the masks stacked;
``truth-fed``   every labelled slice decoded by the propagation step itself
                (:func:`~napari_focsam.core.propagation.next_slice`: point, box and mask prompt
                of the previous slice) from the *true* mask of its neighbour towards the
                object's middle (its own true mask at the object's ends): the best input a
                propagation can ever give a slice;
``truth-fed, best level``  the same at the mask level (logit threshold, -2..+2) that fits each
                object best, chosen with the labels: a per-object threshold no user could set.

Mean 3D IoU over the objects (the same objects and windows as the interactive benchmark), and
the median and mean 2D IoU over all labelled slices for ``per-slice`` and ``truth-fed``.

    python benchmarks/bench_volume_ceiling.py [--data-root ../shared/data] [--model focsam_t_micro]
        [--volumes cells3d,stardist3d,chloroplasts,vnc_mito] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_focsam.evaluation.volumes import (  # noqa: E402
    VOLUME_SETS,
    centre,
    crop_window,
    iou3d,
    read_volume_set,
    seed_click,
    select_objects,
)

#: mask levels (logit thresholds) tried for the per-object best level
LEVELS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def iou2d(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def object_ceilings(session, gt: np.ndarray) -> dict:
    """The four figures of one object (``gt``: its (Z, Y, X) bool label in the session's volume)."""
    from napari_focsam.core.prompting import InteractiveObject
    from napari_focsam.core.propagation import next_slice

    store, pred = session.store, session.predictor
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    mid = (zs[0] + zs[-1]) // 2

    obj = session.new_object()
    try:
        z, y, x = seed_click(gt)
        obj.add_click(y, x, True, z=z)
        obj.propagate()
        propagated = iou3d(obj.volume_mask(), gt)
    finally:
        session.remove_object(obj)

    clicked = np.zeros_like(gt)
    fed = {level: np.zeros_like(gt) for level in LEVELS}
    ious_clicked, ious_fed = [], []
    for z in zs:
        emb = store.get(int(z))
        y, x = centre(gt[z])
        clicked[z] = InteractiveObject(pred, emb).add_click(y, x, True)
        ious_clicked.append(iou2d(clicked[z], gt[z]))
        src = z - 1 if z > mid else z + 1
        if not (0 <= src < gt.shape[0]) or not gt[src].any():
            src = z
        for level in LEVELS:
            fed[level][z] = next_slice(pred, emb, gt[src], None, offset=level)[0]
        ious_fed.append(iou2d(fed[0.0][z], gt[z]))
    by_level = {level: iou3d(m, gt) for level, m in fed.items()}
    return {"propagated": propagated, "per_slice": iou3d(clicked, gt), "truth_fed": by_level[0.0],
            "truth_fed_best": max(by_level.values()), "best_level": max(by_level, key=by_level.get),
            "slice_iou_clicked": ious_clicked, "slice_iou_fed": ious_fed}


def run_volume(name: str, root: Path, model, args, log) -> list[dict]:
    from napari_focsam.core.session import Session

    image, labels, spec = read_volume_set(name, root)
    window = spec.window
    ids = select_objects(labels, spec.keep, spec.min_z, args.seed)
    if args.max_objects:
        ids = ids[:args.max_objects]
    session = None if window else Session(image, model, cache_dir=args.cache)
    rows = []
    for i in ids:
        gt = labels == i
        s = session
        if window:
            wy, wx = crop_window(gt, window)
            gt = gt[:, wy, wx]
            s = Session(np.ascontiguousarray(image[:, wy, wx]), model, cache_dir=args.cache)
        t0 = time.perf_counter()
        row = object_ceilings(s, gt)
        row["label"] = int(i)
        if window:
            s.close()
        rows.append(row)
        log(f"  {name} {i:4d}: propagated {row['propagated']:.3f}  per-slice {row['per_slice']:.3f}  "
            f"truth-fed {row['truth_fed']:.3f}  best level {row['truth_fed_best']:.3f} "
            f"(at {row['best_level']:+.1f})  ({time.perf_counter() - t0:.1f} s)")
    if session is not None:
        session.close()
    return rows


def summarise(rows: list[dict]) -> dict:
    clicked = np.concatenate([r["slice_iou_clicked"] for r in rows])
    fed = np.concatenate([r["slice_iou_fed"] for r in rows])
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("propagated", "per_slice", "truth_fed", "truth_fed_best")}
    out.update(n=len(rows), slice_iou_clicked_median=float(np.median(clicked)), slice_iou_clicked_mean=float(clicked.mean()),
               slice_iou_fed_median=float(np.median(fed)), slice_iou_fed_mean=float(fed.mean()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--model", default="focsam_t_micro")
    p.add_argument("--device", default="cpu")
    p.add_argument("--volumes", default=",".join(VOLUME_SETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "napari-focsam-bench-cache"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from napari_focsam.core.models import load_model

    torch.set_num_threads(args.threads)

    def log(*a):
        print(*a, flush=True)

    root = Path(args.data_root)
    results = {}
    for model_name in args.model.split(","):
        model = load_model(model_name, args.device)
        log(f"model {model_name}, torch threads {torch.get_num_threads()}")
        for name in args.volumes.split(","):
            if not (root / VOLUME_SETS[name].image).is_file():
                log(f"{name}: not found under {root}, skipped")
                continue
            rows = run_volume(name, root, model, args, log)
            results.setdefault(model_name, {})[name] = {"summary": summarise(rows), "objects": rows}
    log("\nmean 3D IoU: propagated (1 click) / a click on every slice / truth-fed step / truth-fed at the best "
        "level; slice IoU median (mean): clicked, truth-fed")
    for model_name, vols in results.items():
        for name, r in vols.items():
            s = r["summary"]
            log(f"{model_name:15s} {name:13s} {s['propagated']:.3f} / {s['per_slice']:.3f} / {s['truth_fed']:.3f} / "
                f"{s['truth_fed_best']:.3f}   {s['slice_iou_clicked_median']:.3f} ({s['slice_iou_clicked_mean']:.3f}), "
                f"{s['slice_iou_fed_median']:.3f} ({s['slice_iou_fed_mean']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
