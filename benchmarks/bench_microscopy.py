"""Microscopy benchmark: NoC@85/90/95 and mean IoU per click, plain ``vit_t`` vs ``focsam_t``.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_microscopy.py [--data-root ../shared/data]
        [--sets chloroplasts_val,yeast_val,...] [--runs plain,focsam_t[,NAME=POLICY@REFINER]]
        [--first-click] [--figure docs/microscopy/first_clicks.png] [--out results/microscopy]
        [--label-edges]

The 20-click protocol of ``napari_focsam.evaluation`` (design §5.2) through the engine's per-object
loop (:class:`~napari_focsam.evaluation.runner.PredictorAdapter`, embeddings cached on disk by
image content, shared by every run with the MobileSAM encoder) on fixed validation splits of the
microscopy folders (``evaluate`` datasets of :mod:`napari_focsam.evaluation.stacks`). Every run
sees the same objects; clicks follow each run's own masks. Prints one markdown table: per set,
NoC@85/90/95 and the mean IoU after clicks 1..10.

Sets (image selection, objects drawn with seed 0 among those that pass the filters of
:mod:`napari_focsam.evaluation.stacks`: >= 100 px, not cut by a tile edge):

``chloroplasts_val``  EM chloroplasts, slices 8-9 (0-based; the README's "9-10"), 2 x 3 tiles of
                      1170 x 1098 per slice, 35 objects;
``yeast_val``         phase-contrast yeast, frames 8-9, 35 cells;
``vnc_neurites_val``  ssTEM VNC neurite profiles, slices 16-19, 35 profiles (<= 20 % of the slice);
``vnc_mito_val``      ssTEM VNC mitochondria (2D cross-sections of the 3D labels), slices 16-19, 35;
``coelho_val``        Coelho 2009 nuclei, images dna-33..dna-49, 60 nuclei (as bench_refine_policy);
``stardist_val``      the right half of the stardist 2D nuclei image, 35 nuclei (the shipped
                      ``focsam_t`` refiner was trained on the whole image: not held out for it).

Named only: ``vnc_neurites_s0_3`` and ``vnc_mito_s0_3``, the same on the stack's first four slices
(a second draw of the held-out stack; no shipped model has seen it).

Runs: ``plain`` (MobileSAM loop), ``focsam_t`` (the photo model's predictor), any policy of
``refine_policies.build_predictor`` on the ``focsam_t`` weights (``NAME=POLICY``), on another
refiner file (``NAME=POLICY@FILE``) or on the shipped default model (``NAME=POLICY@default``);
a policy ending in ``+zoom`` decodes small objects on an enlarged crop
(:class:`~napari_focsam.core.prompting.ZoomedObject`), e.g. ``zoom=steady+zoom@default``.

``--label-edges``: no model; where each set's label outlines sit on its objects' intensity
ramp (:func:`label_edge_profile`): the nuclei sets follow different conventions.

``--first-click``: at the protocol's first click of every object, the IoU of SAM's single-mask
output (mask token 0, what the loop shows before the refine), of each of the three multimask
candidates, of the candidate with the highest predicted IoU, of the best candidate (oracle) and
of the refined mask, and which candidate the single-mask output coincides with (largest IoU
between the masks); ``--figure`` draws the first-click masks of four objects per set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bench_refine_policy as brp  # benchmarks/ is on sys.path when run as a script
from refine_policies import build_predictor

REPO = Path(__file__).resolve().parents[1]
MICRO_SETS = {
    "chloroplasts_val": ("chloroplasts_em", "range:48:60", 35, 0),
    "yeast_val": ("yeast_phase", "last:2", 35, 0),
    "vnc_neurites_val": ("vnc_neurites", "last:4", 35, 0),
    "vnc_mito_val": ("vnc_mitochondria", "last:4", 35, 0),
    "coelho_val": ("coelho2009_gnf", "last:16", 60, 0),
    "stardist_val": ("stardist2d_halves", ["z00-r0c1"], 35, 0),
}
#: a second draw of the held-out VNC stack (its first four slices), run only when named in --sets
EXTRA_SETS = {
    "vnc_neurites_s0_3": ("vnc_neurites", "first:4", 35, 0),
    "vnc_mito_s0_3": ("vnc_mitochondria", "first:4", 35, 0),
}
brp.SETS.update(MICRO_SETS)
brp.SETS.update(EXTRA_SETS)
TABLE_CLICKS = 10


def parse_run(spec: str) -> tuple[str, str, str | None]:
    """``NAME[=POLICY][@REFINER]`` -> (name, policy, refiner file or None)."""
    name, _, rest = spec.partition("=")
    policy, _, refiner = (rest or name).partition("@")
    policy = {"focsam_t": "steady"}.get(policy, policy)
    return name, policy, (refiner or None)


def load(refiner: str | None):
    """``focsam_t`` without a refiner file, the shipped default model for ``default``."""
    from napari_focsam.core.models import load_model

    if refiner == "default":
        return load_model(device="cpu")
    return load_model("vit_t", "cpu", refiner=refiner) if refiner else load_model("focsam_t", "cpu")


def run_set(set_name: str, name: str, policy: str, model, root, cache, out: Path, log,
            max_clicks: int = 20) -> dict:
    """The click protocol (``max_clicks``) of one run on one set; kept in ``out`` and reused."""
    from napari_focsam.evaluation.protocol import evaluate_dataset
    from napari_focsam.evaluation.runner import PredictorAdapter

    path = out / f"{set_name}__{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    zoom = policy.endswith("+zoom")  # small objects on an enlarged crop (core.prompting.ZoomedObject)
    adapter = PredictorAdapter(build_predictor(model, policy.removesuffix("+zoom")), cache_dir=cache, zoom=zoom)
    t0 = time.perf_counter()
    per_object, summary = evaluate_dataset(brp.make_dataset(set_name, root), adapter, max_clicks,
                                           progress=lambda k, _i: log(f"\r  {set_name} {name}: {k}", end=""))
    summary["wall_seconds"] = time.perf_counter() - t0
    log(f"\r  {set_name} {name}: {summary['n_objects']} objects, {summary['wall_seconds']:.0f} s")
    res = {"summary": summary, "ious": [o["ious"] for o in per_object],
           "objects": [o["object_id"] for o in per_object]}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return res


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """One markdown table: a row per (set, run) with NoC@85/90/95 and mIoU after clicks 1..10."""
    head = ("| set | run | n | NoC@85 | NoC@90 | NoC@95 | "
            + " | ".join(f"@{k}" for k in range(1, TABLE_CLICKS + 1)) + " |")
    lines = [head, "|" + "---|" * (6 + TABLE_CLICKS)]
    for set_name, runs in results.items():
        for i, (name, r) in enumerate(runs.items()):
            s = r["summary"]
            miou = " | ".join(f"{v:.3f}" for v in s["miou"][:TABLE_CLICKS])
            lines.append(f"| {set_name if i == 0 else ''} | {name} | {s['n_objects']} | {s['noc85']:.2f} | "
                         f"{s['noc90']:.2f} | {s['noc95']:.2f} | {miou} |")
    return "\n".join(lines)


@torch.inference_mode()
def first_click_records(set_name: str, model, root, cache, refiners: dict) -> list[dict]:
    """Per object, at the protocol's first click: the candidates' IoUs, areas and predicted IoUs.

    ``refiners`` maps a run name to a predictor whose one-click mask is recorded too.
    """
    from napari_focsam.core.prompting import InteractiveObject, logits_to_mask, mask_iou
    from napari_focsam.evaluation.clicker import next_click
    from napari_focsam.evaluation.metrics import iou
    from napari_focsam.evaluation.runner import PredictorAdapter

    plain = build_predictor(model, "plain")
    adapter = PredictorAdapter(plain, cache_dir=cache)
    rows = []
    for sample in brp.make_dataset(set_name, root):
        adapter.set_image(sample.load_image())
        emb = adapter.embedding
        for ob in sample.objects:
            gt = np.asarray(ob.gt, bool)
            click = next_click(gt, np.zeros_like(gt), ob.ignore, [])
            pts, lab = plain._prompts(emb, [click])
            feats = emb.features.to(plain.device)
            single = plain.model.decode(feats, pts, lab, None)
            multi = plain.model.decode(feats, pts, lab, None, multimask_output=True)
            m_single = logits_to_mask(single.logits, emb.input_size, emb.original_size)
            m_multi = [logits_to_mask(multi.logits[:, k:k + 1], emb.input_size, emb.original_size) for k in range(3)]
            ign = ob.ignore
            row = {"object": ob.object_id, "click": [click.y, click.x], "gt_area": int(gt.sum()),
                   "single_iou": iou(gt, m_single, ign), "single_area": int(m_single.sum()),
                   "single_pred_iou": float(single.iou[0, 0]),
                   "multi_iou": [iou(gt, m, ign) for m in m_multi], "multi_area": [int(m.sum()) for m in m_multi],
                   "multi_pred_iou": [float(v) for v in multi.iou[0]],
                   "single_is": int(np.argmax([mask_iou(m_single, m) for m in m_multi]))}
            masks = {"plain": m_single}
            for name, pred in refiners.items():
                m = InteractiveObject(pred, emb).add(click).mask
                row[f"{name}_iou"], row[f"{name}_area"] = iou(gt, m, ign), int(m.sum())
                masks[name] = m
            row["_masks"], row["_gt"], row["_image"] = masks, gt, sample.image_id
            rows.append(row)
    return rows


def summarize_first_click(set_name: str, rows: list[dict], log) -> dict:
    """Print and return the first-click summary of one set."""
    mi = np.array([r["multi_iou"] for r in rows])
    pi = np.array([r["multi_pred_iou"] for r in rows])
    ar = np.array([r["multi_area"] for r in rows], float)
    gt_area = np.array([r["gt_area"] for r in rows], float)
    single = np.array([r["single_iou"] for r in rows])
    best_pred = mi[np.arange(len(mi)), pi.argmax(1)]
    out = {"n": len(rows), "single": single.mean(), "multi": mi.mean(0).tolist(), "by_pred_iou": best_pred.mean(),
           "oracle": mi.max(1).mean(),
           "single_is": np.bincount([r["single_is"] for r in rows], minlength=3).tolist(),
           "oracle_is": np.bincount(mi.argmax(1), minlength=3).tolist(),
           "area_ratio_single": float(np.median([r["single_area"] / r["gt_area"] for r in rows])),
           "area_ratio_multi": np.median(ar / gt_area[:, None], axis=0).tolist()}
    for key in [k[:-4] for k in rows[0] if k.endswith("_iou") and k not in ("single_iou", "multi_iou")
                and not k.endswith("pred_iou")]:
        out[key] = float(np.mean([r[f"{key}_iou"] for r in rows]))
        out[f"area_ratio_{key}"] = float(np.median([r[f"{key}_area"] / r["gt_area"] for r in rows]))
    log(f"{set_name:18s} n={out['n']:3d} single {out['single']:.3f} (median area x{out['area_ratio_single']:.2f}) "
        f"multi {' / '.join(f'{v:.3f}' for v in out['multi'])} by-pred-IoU {out['by_pred_iou']:.3f} "
        f"oracle {out['oracle']:.3f}; single = candidate {out['single_is']}, best = {out['oracle_is']}; "
        + ", ".join(f"{k} {out[k]:.3f} (area x{out['area_ratio_' + k]:.2f})" for k in out
                    if f"area_ratio_{k}" in out and k not in ("single", "multi")))
    return out


def label_edge_profile(set_name: str, root, rings=range(-4, 7)) -> tuple[np.ndarray, float, int]:
    """Where a set's labels draw their outlines on the object's intensity ramp.

    Per object, the mean grey of each one-pixel ring around the label's outline (ring 0: the
    label's own outermost pixels, -k inside, +k outside), as a fraction of the way from the local
    background (median of the ring 11-15 pixels outside) to the interior (median deeper than 4
    pixels inside). Returns the per-ring median over the objects, their median area and their
    number. A label drawn at half maximum has ring 0 near 0.5; a generous hand outline nearer 0.
    Only objects brighter than their surround by a tenth of the image's range count (fluorescence
    nuclei): EM profiles and phase-contrast cells have no such ramp.
    """
    from scipy import ndimage as ndi

    profiles, areas = [], []
    for sample in brp.make_dataset(set_name, root):
        img = np.asarray(sample.load_image(), np.float64)
        img = img.mean(-1) if img.ndim == 3 else img
        for ob in sample.objects:
            gt = np.asarray(ob.gt, bool)
            d_in, d_out = ndi.distance_transform_edt(gt), ndi.distance_transform_edt(~gt)
            ring_of = np.where(gt, 1 - np.ceil(d_in), np.ceil(d_out))
            inside = np.median(img[d_in > 4]) if (d_in > 4).any() else img[gt].max()
            background = np.median(img[(d_out > 10) & (d_out <= 15)])
            if inside - background < 0.1 * (img.max() - img.min()):
                continue  # not a bright object on a darker surround (EM, phase contrast): no ramp to read
            prof = [img[ring_of == k].mean() if (ring_of == k).any() else np.nan for k in rings]
            profiles.append((np.array(prof) - background) / (inside - background))
            areas.append(int(gt.sum()))
    if not profiles:
        return np.full(len(rings), np.nan), 0, 0
    return np.nanmedian(np.array(profiles), axis=0), float(np.median(areas)), len(profiles)


def draw_first_clicks(all_rows: dict[str, list[dict]], root, path: str, per_set: int = 4) -> None:
    """A grid: one row per set, ``per_set`` objects each, the crop around the object with the
    ground truth (white outline), each run's first-click mask (coloured outlines) and the click."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"plain": "tab:orange", "focsam_t": "tab:red", "focsam_t_micro": "tab:cyan"}
    sets = list(all_rows)
    fig, axes = plt.subplots(len(sets), per_set, figsize=(2.6 * per_set, 2.7 * len(sets)), squeeze=False)
    for i, set_name in enumerate(sets):
        rows = all_rows[set_name][:: max(1, len(all_rows[set_name]) // per_set)][:per_set]
        images = {s.image_id: s for s in brp.make_dataset(set_name, root)}
        for j, ax in enumerate(axes[i]):
            ax.axis("off")
            if j >= len(rows):
                continue
            r = rows[j]
            img = images[r["_image"]].load_image()
            ys, xs = np.nonzero(r["_gt"] | r["_masks"]["plain"] | next(iter(r["_masks"].values())))
            for m in r["_masks"].values():
                yy, xx = np.nonzero(m)
                if len(yy):
                    ys, xs = np.concatenate([ys, yy]), np.concatenate([xs, xx])
            pad = 20
            y0, y1 = max(0, ys.min() - pad), min(img.shape[0], ys.max() + pad)
            x0, x1 = max(0, xs.min() - pad), min(img.shape[1], xs.max() + pad)
            ax.imshow(img[y0:y1, x0:x1], cmap="gray")
            ax.contour(r["_gt"][y0:y1, x0:x1], levels=[0.5], colors="white", linewidths=1.2)
            for k, (name, m) in enumerate(r["_masks"].items()):
                ax.contour(m[y0:y1, x0:x1], levels=[0.5], colors=colours.get(name, f"C{k + 2}"), linewidths=1.0)
            ax.plot(r["click"][1] - x0, r["click"][0] - y0, "g+", ms=9, mew=2)
            label = " ".join(f"{n[:6]} {r['single_iou' if n == 'plain' else n + '_iou']:.2f}" for n in r["_masks"])
            ax.set_title(f"{set_name[:14]}: {label}", fontsize=6.5)
    fig.suptitle("first click: ground truth white, plain vit_t orange, focsam_t red, focsam_t_micro cyan (others: C2..)",
                 fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--sets", default=",".join(MICRO_SETS))
    p.add_argument("--runs", default="plain,focsam_t")
    p.add_argument("--out", default=str(REPO / "results" / "microscopy"))
    p.add_argument("--cache", default=str(REPO / "results" / "embedding_cache"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-clicks", type=int, default=20, help="clicks per object (NoC is capped there)")
    p.add_argument("--objects", type=int, default=None, help="objects per set (default: each set's own)")
    p.add_argument("--first-click", action="store_true", help="only the first-click candidate analysis")
    p.add_argument("--figure", default=None, metavar="PNG", help="with --first-click: draw the masks")
    p.add_argument("--label-edges", action="store_true",
                   help="only where each set's labels sit on the objects' intensity ramp (no model)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(*a, **k):
        print(*a, **k, flush=True)

    root = Path(args.data_root)
    if not root.is_dir():
        log(f"no data at {root}: pass --data-root")
        return 1
    if args.label_edges:
        for set_name in args.sets.split(","):
            prof, area, n = label_edge_profile(set_name, root)
            log(f"{set_name:18s} {n:3d} bright objects, median area {area:7.0f} px; rings -4..+6: "
                + " ".join(f"{v:.2f}" for v in prof))
        return 0
    runs = [parse_run(s) for s in args.runs.split(",")]
    if args.objects:
        for k, (ds, images, _n, seed) in list(brp.SETS.items()):
            brp.SETS[k] = (ds, images, args.objects, seed)
    models = {ref: load(ref) for ref in {r for _, _, r in runs}}
    sets = args.sets.split(",")
    if args.first_click:
        preds = {name: build_predictor(models[ref], pol) for name, pol, ref in runs if pol != "plain"}
        all_rows, summary = {}, {}
        for set_name in sets:
            all_rows[set_name] = first_click_records(set_name, models[None] if None in models else
                                                     next(iter(models.values())), root, args.cache, preds)
            summary[set_name] = summarize_first_click(set_name, all_rows[set_name], log)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "first_click.json").write_text(json.dumps(
            {"summary": summary, "rows": {s: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
                                          for s, rows in all_rows.items()}}))
        if args.figure:
            draw_first_clicks(all_rows, root, args.figure)
            log(f"figure: {args.figure}")
        return 0
    results: dict[str, dict[str, dict]] = {}
    for set_name in sets:
        results[set_name] = {name: run_set(set_name, name, pol, models[ref], root, args.cache, Path(args.out), log,
                                             args.max_clicks)
                             for name, pol, ref in runs}
    log(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
