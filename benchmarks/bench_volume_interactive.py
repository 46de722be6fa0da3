"""3D interactive quality: corrective clicks on propagated objects (the 3D correction protocol).

For every selected object: one positive click at the interior point of its label on its
middle slice, then :meth:`SegmentedObject.propagate`. Then, up to ``--clicks`` in all, the
simulated user looks at the whole (Z, Y, X) result, picks the slice with the most wrong
voxels, and clicks at the centre (maximum of the distance transform, the plane border
counting as boundary) of that slice's larger error region: a positive click where the object
is missed (its largest missed component), a negative one where the mask leaks (its largest
leak component); the object is propagated again. Everything goes through the public API
(``add_click(y, x, positive, z=z)`` then ``propagate()``), so the same script measures any
engine.

Reported per volume: mean 3D IoU after 1..N clicks, 3D NoC@80/85/90 (the first click count
reaching the IoU, N when never) with the failures, and the wall time of each re-propagation.
Diagnosis (``--diagnose``, on by default): for every corrective click, where it went
(inside the label's z extent, at its first/last two slices, or outside it), its polarity,
whether its slice came out empty and the IoU change; and a picture of the worst objects
(``--pictures DIR``: per object, the 3D IoU curve and the error per slice after each click).

Volumes (objects chosen with a fixed seed, ``--seed``):

``cells3d``      (60, 256, 256) nuclei, all 20 labels (as the issue);
``stardist3d``   (31, 61, 57) nuclei, 15 of 51;
``chloroplasts`` (10, 2341, 3293) EM, 12 of 104; each object is segmented in its own
                 512 x 512 window (centred on its bounding box, all 10 slices), so each costs
                 10 embeddings of a small image instead of tiles of the huge planes;
``vnc_mito``     (20, 1024, 1024) anisotropic EM; slices 1, 7 and 18 carry no labels at all (not
                 annotated), so the published 3D components stop there and the same mitochondrion
                 has another id behind them: a propagation that follows it through slice 7 was
                 counted as a leak, and a click there as a click outside the object. Only the
                 longest run of annotated slices is used (8..17, 10 slices), relabelled as 3D
                 connected components (:func:`annotated_block`); 12 of the mitochondria spanning
                 >= 3 slices there.

    python benchmarks/bench_volume_interactive.py [--data-root ../shared/data] [--model focsam_t]
        [--volumes cells3d,stardist3d,chloroplasts,vnc_mito] [--clicks 8] [--json out.json]
        [--pictures benchmarks/out] [--threads 1]

Embeddings are cached on disk (``--cache``); the first run computes them.
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
VOLUMES = {
    # name: (image, labels, objects kept (None: all), min z extent, crop window or None)
    "cells3d": ("micro/cells3d/cells3d_nuclei.tif", "micro/cells3d/cells3d_nuclei_label.tif", None, 1, None),
    "stardist3d": ("micro/stardist/stardist_img3d.tif", "micro/stardist/stardist_mask3d.tif", 15, 1, None),
    "chloroplasts": ("micro/plant_chloroplasts_em/chloroplasts_em.tif",
                     "micro/plant_chloroplasts_em/chloroplasts_em_label.tif", 12, 3, 512),
    "vnc_mito": ("micro/em_vnc_sstem/vnc_em.tif", "micro/em_vnc_sstem/vnc_mitochondria_label.tif", 12, 3, None),
}
NOC_THRESHOLDS = (0.80, 0.85, 0.90)
#: Volumes with whole slices left unannotated (the labels stop there although the objects do
#: not): only their longest run of annotated slices is used (:func:`annotated_block`). Not
#: cells3d: its slices without labels are slices without nuclei.
UNANNOTATED_SLICES = {"vnc_mito"}


def annotated_block(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The longest run of slices that carry labels, and its labels as 3D connected components
    (a stack where every slice carries labels is returned unchanged); returns (image, labels,
    first slice of the run)."""
    has = labels.reshape(labels.shape[0], -1).any(axis=1)
    if has.all():
        return image, labels, 0
    best, start = (0, 0), None
    for z, h in enumerate([*has, False]):
        if h and start is None:
            start = z
        elif not h and start is not None:
            best = max(best, (z - start, start))
            start = None
    n, a = best
    block = labels[a:a + n] > 0
    relabelled, _ = ndi.label(block)
    return image[a:a + n], relabelled.astype(labels.dtype), a


def seed_click(gt: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x): the middle slice of the object's z extent (its largest section when that
    slice is empty), at the interior point of its section there."""
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    z = int((zs[0] + zs[-1]) // 2)
    if not gt[z].any():
        z = int(np.argmax(gt.sum(axis=(1, 2))))
    y, x = centre(gt[z])
    return z, y, x


def centre(region: np.ndarray) -> tuple[int, int]:
    """(y, x) of the pixel of ``region`` (H, W) bool farthest from its boundary (the plane
    border counts as boundary)."""
    dist = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def next_click_3d(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, bool] | None:
    """The simulated user's next click on (Z, Y, X) ``pred`` against ``gt``: (z, y, x, positive)
    on the slice with the most wrong voxels, at the centre of its larger error region; None
    when nothing is wrong."""
    missed = gt & ~pred
    leak = pred & ~gt
    wrong = (missed | leak).sum(axis=(1, 2))
    if not wrong.any():
        return None
    z = int(np.argmax(wrong))
    fn = largest_component(missed[z]) if missed[z].any() else missed[z]
    fp = largest_component(leak[z]) if leak[z].any() else leak[z]
    positive = int(fn.sum()) >= int(fp.sum())
    y, x = centre(fn if positive else fp)
    return z, y, x, positive


def iou3d(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else 1.0


def noc(ious: list[float], thr: float) -> int:
    for i, v in enumerate(ious):
        if v >= thr:
            return i + 1
    return len(ious)


def where_in_z(z: int, gt: np.ndarray) -> str:
    """'outside' the label's z extent, at its 'end' (first/last two slices) or 'inside'."""
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    if z < zs[0] or z > zs[-1]:
        return "outside"
    if z - zs[0] < 2 or zs[-1] - z < 2:
        return "end"
    return "inside"


def select_objects(labels: np.ndarray, keep: int | None, min_z: int, seed: int) -> list[int]:
    """Label ids spanning at least ``min_z`` slices; ``keep`` of them chosen with ``seed``
    (all when None), sorted."""
    ids = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None and sl[0].stop - sl[0].start >= min_z:
            ids.append(i)
    if keep is not None and len(ids) > keep:
        ids = sorted(np.random.default_rng(seed).choice(ids, keep, replace=False).tolist())
    return ids


def crop_window(gt: np.ndarray, size: int) -> tuple[slice, slice]:
    """A ``size`` x ``size`` window (clipped to the plane) centred on the object's bounding box."""
    _, ys, xs = ndi.find_objects(gt.astype(np.uint8))[0]
    H, W = gt.shape[1:]
    out = []
    for s, n in ((ys, H), (xs, W)):
        c = (s.start + s.stop) // 2
        a = int(np.clip(c - size // 2, 0, max(0, n - size)))
        out.append(slice(a, min(n, a + size)))
    return out[0], out[1]


def run_object(session, gt: np.ndarray, n_clicks: int, log, propagate_kwargs: dict | None = None) -> dict:
    """The click loop on one object; returns its IoU curve, clicks, times and diagnosis."""
    obj = session.new_object()
    z, y, x = seed_click(gt)
    clicks = [(z, y, x, True)]
    ious, times, notes, errors = [], [], [], []
    try:
        for k in range(n_clicks):
            cz, cy, cx, pos = clicks[-1]
            obj.add_click(cy, cx, pos, z=cz)
            t0 = time.perf_counter()
            res = obj.propagate(**(propagate_kwargs or {}))
            times.append(time.perf_counter() - t0)
            pred = obj.volume_mask()
            ious.append(iou3d(pred, gt))
            errors.append((pred ^ gt).sum(axis=(1, 2)).astype(int).tolist())
            if k:
                notes.append({"click": k + 1, "z": cz, "positive": pos, "where": where_in_z(cz, gt),
                              "slice_empty": not pred[cz].any(), "label_there": bool(gt[cz].any()),
                              "delta": ious[-1] - ious[-2], "z_range": list(res.z_range),
                              "reasons": dict(res.stopped_reason)})
            if k + 1 < n_clicks:
                nxt = next_click_3d(pred, gt)
                if nxt is None:  # perfect: the curve stays
                    ious += [ious[-1]] * (n_clicks - k - 1)
                    break
                clicks.append(nxt)
    finally:
        session.remove_object(obj)
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    return {"ious": ious, "clicks": clicks, "times": times, "notes": notes, "errors": errors,
            "gt_z": [int(zs[0]), int(zs[-1])], "voxels": int(gt.sum())}


def run_volume(name: str, root: Path, model, args, log) -> list[dict]:
    import tifffile

    from napari_focsam.core.session import Session

    img_rel, lab_rel, keep, min_z, window = VOLUMES[name]
    image, labels = tifffile.imread(root / img_rel), tifffile.imread(root / lab_rel)
    if name in UNANNOTATED_SLICES:
        image, labels, z0 = annotated_block(image, labels)
        log(f"{name}: slices {z0}..{z0 + image.shape[0] - 1} only (the longest run of annotated slices), "
            "relabelled as 3D connected components")
    ids = select_objects(labels, keep, min_z, args.seed)
    log(f"{name}: {image.shape} {image.dtype}, {len(ids)} objects {ids}")
    rows = []
    session = None if window else Session(image, model, cache_dir=args.cache)
    if session is not None:
        t0 = time.perf_counter()
        session.store.precompute()
        log(f"  {name}: embeddings ready in {time.perf_counter() - t0:.1f} s")
    for i in ids:
        gt = labels == i
        sub, s = image, session
        if window:
            wy, wx = crop_window(gt, window)
            gt, sub = gt[:, wy, wx], image[:, wy, wx]
            s = Session(np.ascontiguousarray(sub), model, cache_dir=args.cache)
        t0 = time.perf_counter()
        kwargs = {k: v for k, v in (("iou_threshold", args.iou_threshold), ("prompt", args.prompt),
                                    ("multimask", args.multimask), ("edge_fade", args.edge_fade)) if v is not None}
        row = run_object(s, gt, args.clicks, log, kwargs)
        row["label"] = i
        if window:
            row["window"] = [wy.start, wx.start, window]
            s.close()
        rows.append(row)
        log(f"  {name} {i:4d} ({row['voxels']:7d} vox, z {row['gt_z']}): " +
            " ".join(f"{v:.3f}" for v in row["ious"]) +
            "  clicks " + " ".join(f"{c[0]}{'+' if c[3] else '-'}" for c in row["clicks"][1:]) +
            f"  ({time.perf_counter() - t0:.1f} s)")
    if session is not None:
        session.close()
    return rows


def summarise(name: str, rows: list[dict], n_clicks: int, log) -> dict:
    curves = np.array([r["ious"] for r in rows])
    mean = curves.mean(axis=0)
    nocs = {f"{t:.2f}": float(np.mean([noc(r["ious"], t) for r in rows])) for t in NOC_THRESHOLDS}
    fails = {f"{t:.2f}": int(sum(max(r["ious"]) < t for r in rows)) for t in NOC_THRESHOLDS}
    first = [r["times"][0] for r in rows]
    later = [t for r in rows for t in r["times"][1:]]
    notes = [n for r in rows for n in r["notes"]]
    out = {"n": len(rows), "mean_iou": mean.tolist(), "noc": nocs, "failures": fails,
           "seconds_first": float(np.mean(first)), "seconds_repropagate": float(np.mean(later)) if later else None,
           "seconds_repropagate_median": float(np.median(later)) if later else None}
    log(f"\n{name} ({len(rows)} objects): mean 3D IoU after 1..{n_clicks} clicks")
    log("  " + " ".join(f"{v:.3f}" for v in mean))
    log("  NoC@80/85/90: " + " / ".join(f"{nocs[k]:.2f} ({fails[k]} fail)" for k in nocs))
    log(f"  propagation {out['seconds_first']:.2f} s (first), re-propagation mean "
        f"{out['seconds_repropagate'] or 0:.2f} s / median {out['seconds_repropagate_median'] or 0:.2f} s")
    if notes:
        groups: dict[str, list[float]] = {}
        for n in notes:
            key = f"{'+' if n['positive'] else '-'} {n['where']}"
            groups.setdefault(key, []).append(n["delta"])
        log("  corrective clicks (polarity, place): count, mean IoU change, worsened")
        for key in sorted(groups):
            d = np.array(groups[key])
            log(f"    {key:10s} {len(d):4d}  {d.mean():+.4f}  {int((d < -1e-3).sum())}")
        emptied = [n for n in notes if n["slice_empty"] and n["label_there"]]
        log(f"  clicks that left their slice empty although the label is there: {len(emptied)} "
            f"(mean change {np.mean([n['delta'] for n in emptied]) if emptied else 0:+.4f})")
        out["click_groups"] = {k: [len(v), float(np.mean(v))] for k, v in groups.items()}
        out["emptied"] = len(emptied)
    return out


def pictures(name: str, rows: list[dict], folder: Path, worst: int = 4) -> Path | None:
    """PNG of the ``worst`` objects (lowest final IoU): the IoU curve and wrong voxels per slice
    after each click, with the clicks marked."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sel = sorted(rows, key=lambda r: r["ious"][-1])[:worst]
    fig, axes = plt.subplots(len(sel), 2, figsize=(11, 2.6 * len(sel)), squeeze=False)
    for ax, r in zip(axes, sel):
        ax[0].plot(range(1, len(r["ious"]) + 1), r["ious"], "o-")
        ax[0].set_ylim(0, 1)
        ax[0].set_title(f"{name} label {r['label']}: 3D IoU per click", fontsize=9)
        cmap = plt.get_cmap("viridis")
        for k, err in enumerate(r["errors"]):
            ax[1].plot(err, color=cmap(k / max(1, len(r["errors"]) - 1)), lw=1, label=f"{k + 1}")
        for k, (z, _, _, pos) in enumerate(r["clicks"][1:], start=2):
            ax[1].axvline(z, color="g" if pos else "r", ls=":", lw=1)
            ax[1].text(z, ax[1].get_ylim()[1] * 0.9, str(k), fontsize=7)
        ax[1].axvspan(r["gt_z"][0], r["gt_z"][1], color="0.9", zorder=0)
        ax[1].set_title("wrong voxels per slice after each click (grey: label extent; "
                        "green/red: +/- click)", fontsize=9)
        ax[1].legend(fontsize=6, ncol=4)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"volume_interactive_{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--model", default="focsam_t")
    p.add_argument("--refiner", default=None, help="a refiner (or head) file for --model, e.g. a training export")
    p.add_argument("--device", default="auto")
    p.add_argument("--volumes", default=",".join(VOLUMES))
    p.add_argument("--clicks", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-objects", type=int, default=None, help="first N selected objects only (quick runs)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "napari-focsam-bench-cache"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="the propagation's stop rule on the IoU of consecutive slices (default: the product's)")
    p.add_argument("--prompt", default=None, help="the propagation's prompt mode (default: the product's)")
    p.add_argument("--multimask", default=None, type=lambda v: v.lower() in ("1", "true", "yes"),
                   help="true/false: the propagation decodes SAM's three candidates (default: the product's)")
    p.add_argument("--edge-fade", type=float, default=None,
                   help="the out-of-focus stop (a fraction of the object's strongest outline; 0: off; "
                        "default: the product's)")
    p.add_argument("--json", default=None)
    p.add_argument("--pictures", default=None, help="folder for the worst objects' PNGs")
    args = p.parse_args(argv)

    import torch

    from napari_focsam.core.models import load_model

    torch.set_num_threads(args.threads)

    def log(*a, **k):
        print(*a, **k, flush=True)

    if args.max_objects:
        for k, v in VOLUMES.items():
            VOLUMES[k] = (*v[:2], min(v[2] or 10**6, args.max_objects), *v[3:])
    model = load_model(args.model, args.device, refiner=args.refiner)
    log(f"model {args.model} on {model.device}, torch threads {torch.get_num_threads()}")
    root = Path(args.data_root)
    results = {}
    for name in args.volumes.split(","):
        if not (root / VOLUMES[name][0]).is_file():
            log(f"{name}: not found under {root}, skipped")
            continue
        t0 = time.perf_counter()
        rows = run_volume(name, root, model, args, log)
        summary = summarise(name, rows, args.clicks, log)
        log(f"  {name}: {time.perf_counter() - t0:.0f} s")
        results[name] = {"summary": summary, "objects": rows}
        if args.pictures:
            path = pictures(name, rows, Path(args.pictures))
            if path:
                log(f"  picture: {path}")
    log("\nmean 3D IoU after 1..N clicks; NoC@80/85/90; re-propagation s (mean)")
    for name, r in results.items():
        s = r["summary"]
        log(f"{name:13s} " + " ".join(f"{v:.3f}" for v in s["mean_iou"]) + "  " +
            "/".join(f"{v:.2f}" for v in s["noc"].values()) + f"  {s['seconds_repropagate'] or 0:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
