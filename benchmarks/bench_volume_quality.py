"""3D quality of click + propagation on labelled microscopy volumes (one click, then propagation).

For every labelled nucleus: one positive click at the interior point (maximum of the distance
transform) of its label on its middle slice (middle of its z extent), then propagation in
both directions; the 3D IoU against the label. Every prompt variant is run once with no IoU
stop (``iou_threshold=0``) while recording IoU(previous slice, slice) along the way, which
gives the result for every stop threshold exactly (a run with threshold t is the same run cut
at the first slice whose IoU is below t).

    python benchmarks/bench_volume_quality.py [--data-root ../shared/data] [--model focsam_t] [--quick]
        [--refine both|on|off]

With a model that has a focus refiner (``focsam_t``), ``--refine both`` (default) runs every
variant with and without the refiner on each new slice (``+ref`` in the variant name; see
:func:`napari_focsam.core.propagation._plain.next_slice`).

Embeddings are cached on disk (``--cache``, default a folder in the temp dir) so reruns and
the variants reuse them. Data files are read in place, never copied.
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
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "cells3d": ("micro/cells3d/cells3d_nuclei.tif", "micro/cells3d/cells3d_nuclei_label.tif"),
    "stardist3d": ("micro/stardist/stardist_img3d.tif", "micro/stardist/stardist_mask3d.tif"),
}
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
#: cells3d has a few tiny spurious labels inside nuclei; also report means without them.
MIN_VOXELS = 1000


def seed_click(label_mask: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x): middle slice of the object's z extent, interior point of its section there."""
    zs = np.flatnonzero(label_mask.any(axis=(1, 2)))
    z = int((zs[0] + zs[-1]) // 2)
    if not label_mask[z].any():  # a gap in z: use the largest section instead
        z = int(np.argmax(label_mask.sum(axis=(1, 2))))
    dist = ndi.distance_transform_edt(np.pad(label_mask[z], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return z, int(y), int(x)


def cut(result, z0: int, threshold: float) -> dict[int, np.ndarray]:
    """The masks a run with stop threshold ``threshold`` would have kept."""
    kept = {z0: result.masks[z0]} if z0 in result.masks else {}
    for step in (-1, 1):
        z = z0 + step
        while z in result.masks and result.ious.get(z, 1.0) >= threshold:
            kept[z] = result.masks[z]
            z += step
    return kept


def iou3d(masks: dict[int, np.ndarray], gt: np.ndarray) -> float:
    inter = sum(int(np.count_nonzero(m & gt[z])) for z, m in masks.items())
    pred = sum(int(np.count_nonzero(m)) for m in masks.values())
    union = pred + int(np.count_nonzero(gt)) - inter
    return inter / union if union else 1.0


def run_dataset(name, image, labels, model, variants, cache, quick, log, refine_click=None):
    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.propagation import propagate
    from napari_focsam.core.session import Session

    vol = ImageVolume(image)
    session = Session(vol, model, cache_dir=cache)
    if refine_click is not None:  # the seed click's refine (the default refines at click 1)
        session.predictor.refine_click = refine_click
    t0 = time.perf_counter()
    n = session.store.precompute(progress=lambda d, t: log(f"\r  {name}: embeddings {d}/{t}", end=""))
    log(f"\n  {name}: {n} embeddings computed, {vol.n_slices - n} reused, {time.perf_counter() - t0:.1f} s")
    ids = [int(i) for i in np.unique(labels) if i]
    if quick:
        ids = ids[:: max(1, len(ids) // 6)][:6]
    rows = []
    for i in ids:
        gt = labels == i
        z, y, x = seed_click(gt)
        row = {"label": i, "voxels": int(gt.sum()), "z": z, "click": [y, x], "variants": {}}
        for prompt, multimask, refine in variants:
            obj = session.new_object()
            m2d = obj.add_click(y, x, True, z=z)
            t1 = time.perf_counter()
            res = propagate(session.store, {z: (m2d, obj.logits(z))}, iou_threshold=0.0, prompt=prompt,
                            multimask=multimask, refine=refine)
            dt = time.perf_counter() - t1
            key = f"{prompt}{'+mm' if multimask else ''}{'+ref' if refine else ''}"
            row["variants"][key] = {
                "iou2d_seed": float(np.count_nonzero(m2d & gt[z]) / max(1, np.count_nonzero(m2d | gt[z]))),
                "iou3d": {f"{t:.2f}": iou3d(cut(res, z, t), gt) for t in THRESHOLDS},
                "slices": {f"{t:.2f}": len(cut(res, z, t)) for t in THRESHOLDS},
                "seconds": dt,
                # slice -> [pixels shared with the label, mask pixels, IoU with the previous slice]
                "per_slice": {str(k): [int(np.count_nonzero(m & gt[k])), int(np.count_nonzero(m)),
                                       res.ious.get(k)] for k, m in res.masks.items()},
            }
            session.remove_object(obj)
        best = max(row["variants"].items(), key=lambda kv: kv[1]["iou3d"]["0.50"])
        log(f"  {name} label {i:4d} ({row['voxels']:6d} vox, z={z:2d}): seed 2D IoU "
            f"{best[1]['iou2d_seed']:.3f}; 3D IoU @0.5 " +
            " ".join(f"{k}={v['iou3d']['0.50']:.3f}" for k, v in row["variants"].items()))
        rows.append(row)
    return rows


def summarise(all_rows, variants, log):
    summary = {}
    for name, rows in all_rows.items():
        subsets = [("all", lambda r: True)]
        if name == "cells3d":  # its few tiny labels are spurious (inside nuclei)
            subsets.append((f">={MIN_VOXELS}vox", lambda r: r["voxels"] >= MIN_VOXELS))
        for subset, keep in subsets:
            sel = [r for r in rows if keep(r)]
            if not sel:
                continue
            for key in sel[0]["variants"]:
                for t in THRESHOLDS:
                    vals = [r["variants"][key]["iou3d"][f"{t:.2f}"] for r in sel]
                    summary.setdefault(name, {}).setdefault(subset, {}).setdefault(key, {})[f"{t:.2f}"] = (
                        float(np.mean(vals)))
    keys = list(next(iter(all_rows.values()))[0]["variants"])
    for name in summary:
        for subset in summary[name]:
            n = len([r for r in all_rows[name] if subset == "all" or r["voxels"] >= MIN_VOXELS])
            log(f"\nmean 3D IoU, {name} ({subset}, {n} objects); rows: prompt variant, columns: stop threshold")
            log(f"{'variant':24s}" + "".join(f"{t:>7.2f}" for t in THRESHOLDS))
            for key in keys:
                log(f"{key:24s}" + "".join(f"{summary[name][subset][key][f'{t:.2f}']:7.3f}" for t in THRESHOLDS))
    if len(summary) > 1:
        log("\nmean over datasets (all objects):")
        log(f"{'variant':24s}" + "".join(f"{t:>7.2f}" for t in THRESHOLDS))
        for key in keys:
            vals = [np.mean([summary[n]["all"][key][f"{t:.2f}"] for n in summary]) for t in THRESHOLDS]
            log(f"{key:24s}" + "".join(f"{v:7.3f}" for v in vals))
    return summary


def main(argv=None) -> int:
    from napari_focsam.core.propagation import PROMPT_MODES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--model", default="focsam_t")
    p.add_argument("--refiner", default=None, help="refiner file for --model (default: its own)")
    p.add_argument("--refine", default="both", choices=("both", "on", "off"))
    p.add_argument("--refine-click", type=int, default=None,
                   help="the 2D click that refines (default: the predictor's, 1; 2 as published)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="6 objects per dataset, 2 variants")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--prompts", default=",".join(PROMPT_MODES))
    p.add_argument("--multimask", default="both", choices=("both", "on", "off"))
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "napari-focsam-bench-cache"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="write per-object results here")
    args = p.parse_args(argv)

    import tifffile
    import torch

    from napari_focsam.core.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)

    def log(*a, **k):
        print(*a, **k, flush=True)

    root = Path(args.data_root)
    prompts = args.prompts.split(",")
    mm = {"both": (False, True), "on": (True,), "off": (False,)}[args.multimask]
    refines = {"both": (False, True), "on": (True,), "off": (False,)}[args.refine]
    variants = [(pr, m, r) for pr in prompts for m in mm for r in refines]
    if args.quick:
        variants = [("point", True, r) for r in refines]
    model = load_model(args.model, args.device, refiner=args.refiner)
    if not model.has_refiner:
        variants = list(dict.fromkeys((pr, m, False) for pr, m, _ in variants))
    log(f"model {model.model_type} on {model.device}, torch threads {torch.get_num_threads()}, "
        f"variants {len(variants)}, cache {args.cache}")
    all_rows = {}
    for name in args.datasets.split(","):
        img_rel, lab_rel = DATASETS[name]
        if not (root / img_rel).is_file():
            log(f"  {name}: {root / img_rel} not found, skipped")
            continue
        image = tifffile.imread(root / img_rel)
        labels = tifffile.imread(root / lab_rel)
        t0 = time.perf_counter()
        all_rows[name] = run_dataset(name, image, labels, model, variants, args.cache, args.quick, log,
                                     args.refine_click)
        log(f"  {name}: {time.perf_counter() - t0:.1f} s")
    if not all_rows:
        log("no data found: pass --data-root")
        return 1
    summary = summarise(all_rows, variants, log)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "objects": all_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
