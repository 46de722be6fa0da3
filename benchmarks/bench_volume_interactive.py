"""3D interactive quality: corrective clicks on propagated objects (the 3D correction protocol).

For every selected object: one positive click at the interior point of its label on its
middle slice, then :meth:`SegmentedObject.propagate`. Then, up to ``--clicks`` in all, the
simulated user looks at the whole (Z, Y, X) result, picks the slice with the most wrong
voxels, and clicks at the centre (maximum of the distance transform, the plane border
counting as boundary) of that slice's larger error region: a positive click where the object
is missed (its largest missed component), a negative one where the mask leaks (its largest
leak component); the object is propagated again. Everything goes through the public API
(``add_click(y, x, positive, z=z)`` then ``propagate()``), so the same script measures any
engine. The protocol itself is :mod:`napari_focsam.evaluation.volumes` (also
``napari-focsam evaluate-3d``); this script runs it on the named sets, prints every object's
curve and the diagnosis, and draws the pictures.

Reported per volume: mean 3D IoU after 1..N clicks, 3D NoC@80/85/90 (the first click count
reaching the IoU, N when never) with the failures, and the wall time of each re-propagation.
Diagnosis (``--diagnose``, on by default): for every corrective click, where it went
(inside the label's z extent, at its first/last two slices, or outside it), its polarity,
whether its slice came out empty and the IoU change; the wrong voxels by kind (outlines on the
slices where label and mask both are, against the z extent: slices the object misses or
leaks onto) after clicks 1, 3, 5 and the last; and a picture of the worst objects
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
        [--pictures benchmarks/out] [--threads 1] [--fit-neighbours on|off]

``--fit-neighbours off`` runs the sessions without the check of a later click on a started
slice against the clicked slices next to it (:attr:`Session.fit_neighbours`), the baseline of
that rule.

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


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_focsam.evaluation.volumes import (  # noqa: E402
    VOLUME_SETS,
    evaluate_volume,
    read_volume_set,
    select_objects,
)
from napari_focsam.evaluation.volumes import summarise as summary_of  # noqa: E402


def run_volume(name: str, root: Path, model, args, log) -> list[dict]:
    image, labels, spec = read_volume_set(name, root)
    if spec.annotated_only:
        log(f"{name}: the longest run of annotated slices only, relabelled as 3D connected components")
    keep = spec.keep if not args.max_objects else min(spec.keep or 10**6, args.max_objects)
    ids = select_objects(labels, keep, spec.min_z, args.seed)
    log(f"{name}: {image.shape} {image.dtype}, {len(ids)} objects {ids}")
    kwargs = {k: v for k, v in (("iou_threshold", args.iou_threshold), ("prompt", args.prompt),
                                ("multimask", args.multimask), ("edge_fade", args.edge_fade),
                                ("vote", args.vote)) if v is not None}
    t0 = [time.perf_counter()]

    def progress(row):
        log(f"  {name} {row['label']:4d} ({row['voxels']:7d} vox, z {row['gt_z']}): " +
            " ".join(f"{v:.3f}" for v in row["ious"]) +
            "  clicks " + " ".join(f"{c[0]}{'+' if c[3] else '-'}" for c in row["clicks"][1:]) +
            f"  ({time.perf_counter() - t0[0]:.1f} s)")
        t0[0] = time.perf_counter()
    return evaluate_volume(image, labels, model, ids=ids, n_clicks=args.clicks, window=spec.window,
                           cache_dir=args.cache, propagate_kwargs=kwargs, progress=progress,
                           fit_neighbours=args.fit_neighbours)


def summarise(name: str, rows: list[dict], n_clicks: int, log) -> dict:
    out = summary_of(rows)
    nocs, fails = out["noc"], out["failures"]
    log(f"\n{name} ({len(rows)} objects): mean 3D IoU after 1..{n_clicks} clicks")
    log("  " + " ".join(f"{v:.3f}" for v in out["mean_iou"]))
    log("  NoC@80/85/90: " + " / ".join(f"{nocs[k]:.2f} ({fails[k]} fail)" for k in nocs))
    log(f"  propagation {out['seconds_first']:.2f} s (first), re-propagation mean "
        f"{out['seconds_repropagate'] or 0:.2f} s / median {out['seconds_repropagate_median'] or 0:.2f} s")
    if out["click_groups"]:
        log("  corrective clicks (polarity, place): count, mean IoU change")
        for key, (n, d) in out["click_groups"].items():
            log(f"    {key:10s} {n:4d}  {d:+.4f}")
        log(f"  clicks that left their slice empty although the label is there: {out['emptied']}")
    if out.get("error_kinds"):
        shares = out["error_kinds"]
        at = sorted({0, min(2, n_clicks - 1), min(4, n_clicks - 1), len(next(iter(shares.values()))) - 1})
        log("  wrong voxels by kind, share after click " + " / ".join(str(i + 1) for i in at) +
            " (outline: slices where label and mask both are; extent: only one of them)")
        for kind, v in shares.items():
            log(f"    {kind:15s} " + " / ".join(f"{v[i]:.2f}" for i in at))
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
    p.add_argument("--volumes", default=",".join(VOLUME_SETS))
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
    p.add_argument("--vote", default=None, type=lambda v: v.lower() in ("1", "true", "yes", "on"),
                   help="on/off: the propagated slices voted with their neighbours (default: the product's)")
    p.add_argument("--fit-neighbours", default=True, type=lambda v: v.lower() in ("1", "true", "yes", "on"),
                   help="on/off: a later click on a started slice checked against the object's neighbouring "
                        "sections (default: on, the product's)")
    p.add_argument("--json", default=None)
    p.add_argument("--pictures", default=None, help="folder for the worst objects' PNGs")
    args = p.parse_args(argv)

    import torch

    from napari_focsam.core.models import load_model

    torch.set_num_threads(args.threads)

    def log(*a, **k):
        print(*a, **k, flush=True)

    model = load_model(args.model, args.device, refiner=args.refiner)
    log(f"model {args.model} on {model.device}, torch threads {torch.get_num_threads()}")
    root = Path(args.data_root)
    results = {}
    for name in args.volumes.split(","):
        if not (root / VOLUME_SETS[name].image).is_file():
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
