"""Which embedding serves the clicks after the refine click: mean IoU per click, plain vs FocSAM.

    nice python benchmarks/bench_refine_policy.py [--data-root ../shared/data] [--refiner FILE]
        [--sets grabcut,coelho_val,coco_last50,davis_last50] [--policies plain,pick,steady,...] [--out DIR]

Runs the 20-click protocol of ``napari_focsam.evaluation`` (design §5.2; the harness's
:class:`~napari_focsam.evaluation.runner.PredictorAdapter` and ``evaluate_dataset``) on the
validation splits with several click policies of the same vit_t + FocSAM-T weights, and prints
NoC@85/90/95 and the mean IoU at every click 1..20 side by side, with the difference to the
plain loop. Each (set, policy) result is kept in ``--out`` and reused by later runs (delete the
file to recompute); embeddings are cached on disk (``--cache``).

Sets: ``grabcut`` (all 50 objects, natural, never trained on); ``coelho_val`` (the last 16
images of coelho2009_gnf, 60 nuclei drawn with seed 0); ``coco_last50`` (COCO_MVal's last 50
images: held out from the shipped refiner, which was trained on the first 200 only);
``davis_last50`` (DAVIS's last 50 images, held out from the shipped refiner, trained on the
first 100; multi-part objects, the hardest of the four).

Policies ("E0" is the original embedding, "E1" the refined one; the refine runs at the
object's 1st click for ``steady`` and its variants marked so, at the 2nd for the others):

``plain``     the plain SAM loop on E0 (no refiner);
``steady``    the shipped predictor (``FocSAMPredictor`` defaults): refine at click 1; from
              click 2 on, decode on E1 and E0 and keep, of E1's logits, E0's and their mean,
              one that follows the newest click (a positive click removes at most 30 % of the
              previous mask, a negative one adds at most 30 %), then the one agreeing with the
              most clicks, then the one closest to the previous mask (IoU);
``steady2``   the same rule with the refine at click 2 (FocSAM's refine click);
``steady_nocheck`` the earlier default: refine at click 2, no check of the newest click;
``steady_nocheck_r1`` as ``steady_nocheck`` with the refine at click 1; ``steady_nocheck_r12``: refine at click 1
              and again at click 2; ``steady_noE1`` / ``steady_nomean``: ``steady`` without the
              E1 / the mean candidate;
``steady_e1`` ``steady``, but E1's candidate whenever it follows the newest click;
``steady_kT``  ``steady``, keeping the coarse mask at click 1 when the refined one overlaps
              it with an IoU >= T/100;
``steady_g1M`` ``steady``, keeping the coarse mask at click 1 when the decoder predicts a
              higher IoU for it than for the refined one (by more than M/100);
``--candidates`` the shipped rule's choice among the later-click candidates against the
              best one (the ground truth known) on the same clicks;
``--boxes``   box prompts (the ground-truth box, then two clicks): the plain loop, ``steady``
              (the refine at the first click after the box) and a refine of the box step itself;
``steadypmN`` ``steady2`` and, from click N on, a progressive merge (only the change connected
              to the newest click is kept); ``steadyrr``: ``steady2`` and a new refine when the
              previous mask leaves the refined embedding's focus region (both measured on
              ``steady_nocheck``, before the newest-click check);
``local``     as ``steady_nocheck`` with the two embeddings' masks only; ``local4`` adds both decoded
              without the previous logits (much worse: the mask input matters);
``reuse``     FocSAM as published: E1 serves click 2 and every later click;
``pick``      the policy shipped before ``steady`` (``later_clicks="pick"`` of
              :class:`napari_focsam.core.prompting._predictor.FocSAMPredictor`): from click 3 on, E1's
              mask unless it misses a click (positive outside, negative inside), E0's mask
              overlaps it with an IoU below 0.8 and agrees better with the clicks: ranked by
              (agrees with the newest click, number of clicks agreed);
              With the refine gate (``refine_gate``): at click 2, E0's mask and the plain
              loop afterwards when E1's mask bridges positive clicks that E0's has on
              separate pieces;
              Every policy built on FocSAMPredictor leaves out of the prompt a click taken back
              by a later one of the other polarity on the same pixel (``live_clicks``);
``pick_nogate`` ``pick`` without the refine gate;
``--two-cells N`` a positive click on a nucleus, one on its nearest neighbour, a negative one
              on the same point of the neighbour (the 'one object is one cell' hint after
              click 2, IoU with the first nucleus and the neighbour's remainder after click 3);
``pick_any``  E1's mask unless E0's agrees with more clicks (no IoU condition, no newest-click
              rank);
``pick_iou``  decode on both, keep the one agreeing with more clicks, ties broken by the
              decoder's predicted IoU;
``pick_e0``   as ``pick_iou``, ties to E0;
``pick_farT`` as ``pick_any``, and E0 only where the masks' IoU is below T/100;
``fallbackN`` E1 for clicks 2..N, E0 afterwards;
``avg2``/``avgL`` the mean of E1's and E0's logits from click 2 / from click 3 on (``avgLW``:
              weight W % on E1);
``agavg``     decode on both, the one agreeing with more clicks, a tie averaged;
``dual``      two decoder chains (E1's and E0's, each fed its own previous logits), their mean
              shown; ``dualag``: the mean unless one chain agrees with more clicks;
              ``dualE0``/``dualE1``: one chain's mask, ties to E0 / E1;
``rerefine``  E1 reused until the mask's expanded box leaves the refined windows, then refine
              again from the current mask;
``every``     refine again at every click from the 2nd;
``gate``      ``pick``, and at click 2 keep the coarse (E0) mask when the refined one breaks
              click consistency and the coarse one does not, or when the decoder predicts a
              lower IoU for it.
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
from refine_policies import build_predictor  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
SETS = {
    # name: (dataset, image selection, objects sampled (None: all), seed)
    "grabcut": ("grabcut", "all", None, 0),
    "coelho_val": ("coelho2009_gnf", "last:16", 60, 0),
    "coco_last50": ("coco_mval", "last:50", None, 0),
    "davis_last50": ("davis", "last:50", None, 0),
}
THRESHOLDS = ("85", "90", "95")


def make_dataset(set_name: str, root):
    from napari_focsam.evaluation.datasets import read_dataset

    name, images, n_objects, seed = SETS[set_name]
    ds = read_dataset(name, root).select(images)
    return ds.sample_objects(n_objects, seed) if n_objects else ds


class FirstObjects:
    """The first ``n`` objects of a dataset, in its order (a cheaper run on the same objects)."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __iter__(self):
        import dataclasses

        left = self.n
        for sample in self.dataset:
            if left <= 0:
                return
            objs = list(sample.objects)[:left]
            left -= len(objs)
            yield dataclasses.replace(sample, objects=objs) if dataclasses.is_dataclass(sample) else sample


def run_one(set_name, policy, model, root, cache, out: Path, log, first: int | None = None) -> dict:
    from napari_focsam.evaluation.protocol import evaluate_dataset
    from napari_focsam.evaluation.runner import PredictorAdapter

    full = out / f"{set_name}__{policy}.json"
    if full.is_file():
        res = json.loads(full.read_text())
        if not first or len(res["ious"]) <= first:
            return res
        from napari_focsam.evaluation.metrics import summarize  # a full run: its first objects

        return {"summary": {**summarize(res["ious"][:first], None), "spc": res["summary"]["spc"]},
                "ious": res["ious"][:first]}
    path = out / f"{set_name}__{policy}__first{first}.json" if first else full
    if path.is_file():
        return json.loads(path.read_text())
    adapter = PredictorAdapter(build_predictor(model, policy), cache_dir=cache)
    t0 = time.perf_counter()
    ds = make_dataset(set_name, root)
    per_object, summary = evaluate_dataset(FirstObjects(ds, first) if first else ds, adapter,
                                           progress=lambda k, _id: log(f"\r  {set_name} {policy}: {k}", end=""))
    summary["wall_seconds"] = time.perf_counter() - t0
    log(f"\r  {set_name} {policy}: {summary['n_objects']} objects, {summary['wall_seconds']:.0f} s")
    res = {"summary": summary, "ious": [o["ious"] for o in per_object]}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return res


def report(set_name, results: dict[str, dict], log) -> None:
    base = results.get("plain")
    log(f"\n== {set_name} ({next(iter(results.values()))['summary']['n_objects']} objects) ==")
    log(f"{'policy':12s}" + "".join(f"{'NoC' + t:>8s}" for t in THRESHOLDS)
        + f"{'dec ms':>8s}{'ref ms':>8s}  worst click vs plain, clicks below it, mean difference 1..20")
    for pol, r in results.items():
        s = r["summary"]
        worst = ""
        if base is not None and pol != "plain":
            d = np.asarray(s["miou"]) - np.asarray(base["summary"]["miou"])
            k = int(np.argmin(d))
            worst = f"{d[k]:+.4f} @ {k + 1}, {int((d < 0).sum())} below, {d.mean():+.4f}"
        log(f"{pol:12s}" + "".join(f"{s['noc' + t]:8.2f}" for t in THRESHOLDS)
            + f"{1000 * s['spc']['decoder']:8.1f}{1000 * s['spc']['refine']:8.1f}  {worst}")
    log("mean IoU per click" + (" (policy - plain below the plain column)" if base else ""))
    pols = list(results)
    log(f"{'click':>5s}" + "".join(f"{p[:9]:>10s}" for p in pols))
    for i in range(len(next(iter(results.values()))["summary"]["miou"])):
        row = f"{i + 1:5d}"
        for p in pols:
            v = results[p]["summary"]["miou"][i]
            if base is None or p == "plain":
                row += f"{v:10.4f}"
            else:
                row += f"{v - base['summary']['miou'][i]:+10.4f}"
        log(row)


def plot_differences(all_results: dict[str, dict[str, dict]], path: str) -> None:
    """One panel per set: each policy's mean IoU per click minus the plain loop's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s, r in all_results.items() if "plain" in r]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        res = all_results[set_name]
        base = np.asarray(res["plain"]["summary"]["miou"])
        clicks = np.arange(1, len(base) + 1)
        ax.axhline(0.0, color="k", lw=0.8, label="plain (0)")
        for pol, r in res.items():
            if pol != "plain":
                ax.plot(clicks, np.asarray(r["summary"]["miou"]) - base, marker=".", label=pol)
        ax.set_title(f"{set_name} ({res['plain']['summary']['n_objects']} objects)")
        ax.set_xlabel("click")
        ax.set_xticks([1, 5, 10, 15, 20])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean IoU minus the plain loop's")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def time_clicks(model, root, cache, log, n_objects: int = 6) -> None:
    """Seconds per later click (3..20) of ``reuse``, ``pick`` and ``steady`` on the first GrabCut
    objects, the policies interleaved click by click (same load on the machine); decoder + masks
    only. The clicks follow ``reuse``'s masks."""
    from napari_focsam.core.prompting import FocSAMPredictor, InteractiveObject
    from napari_focsam.evaluation.clicker import next_click
    from napari_focsam.evaluation.runner import PredictorAdapter

    preds = {p: FocSAMPredictor(model, later_clicks=p) for p in ("reuse", "pick", "steady")}
    secs: dict[str, list[float]] = {p: [] for p in preds}
    decodes = {p: 0 for p in preds}
    decode = model.decode
    current = ["reuse"]

    def counting(*a, **k):
        decodes[current[0]] += 1
        return decode(*a, **k)

    model.decode = counting
    ds = make_dataset("grabcut", root)
    done = 0
    for sample in ds:
        adapter = PredictorAdapter(preds["reuse"], cache_dir=cache)
        adapter.set_image(sample.load_image())
        for obj in sample.objects:
            objs = {p: InteractiveObject(pr, adapter.embedding) for p, pr in preds.items()}
            pred = np.zeros(obj.gt.shape, bool)
            clicks = []
            for k in range(20):
                c = next_click(obj.gt, pred, obj.ignore, clicks)
                if c is None:
                    break
                clicks.append(c)
                for p, o in objs.items():
                    current[0] = p
                    t0 = time.perf_counter()
                    m = o.add(c).mask
                    if k >= 2:
                        secs[p].append(time.perf_counter() - t0)
                    if p == "reuse":
                        pred = m
            done += 1
            if done >= n_objects:
                break
        if done >= n_objects:
            break
    del model.decode
    for p, v in secs.items():
        log(f"later click, {p:6s}: median {1000 * np.median(v):6.1f} ms, mean {1000 * np.mean(v):6.1f} ms "
            f"({len(v)} clicks, torch threads {torch.get_num_threads()}); decoder passes over all clicks: "
            f"{decodes[p]}")


def two_cells(model, root, cache, log, n_pairs: int, policies: list[str]) -> None:
    """The 'two cells, then take one back' sequence on Coelho validation nuclei.

    For each nucleus A and its nearest neighbour B (one pair per A, the first ``n_pairs``):
    a positive click inside A, a positive one inside B (the user clicked two cells), then a
    negative click at the same point of B. Reports, per policy: the share of pairs whose
    mask after click 2 has A and B on separate pieces (the widget's 'one object is one cell'
    hint, :func:`napari_focsam.core.editing._predict_queue.split_objects`), and after click 3 the mean
    IoU with A and the mean share of B left in the mask.
    """
    from scipy import ndimage as ndi

    from napari_focsam.core.editing import split_objects
    from napari_focsam.core.prompting import Click, InteractiveObject, mask_iou
    from napari_focsam.evaluation.runner import PredictorAdapter

    def inside(m):
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        return np.unravel_index(int(d.argmax()), d.shape)

    ds = make_dataset("coelho_val", root)
    preds = {p: build_predictor(model, p) for p in policies}
    rows: dict[str, list[tuple[bool, float, float]]] = {p: [] for p in policies}
    for sample in ds:
        adapter = PredictorAdapter(preds[policies[0]], cache_dir=cache)
        adapter.set_image(sample.load_image())
        gts = [np.asarray(o.gt, bool) for o in sample.objects]
        centres = np.array([np.argwhere(g).mean(0) for g in gts])
        for i, a in enumerate(gts):
            if len(gts) < 2 or len(rows[policies[0]]) >= n_pairs:
                break
            d = np.linalg.norm(centres - centres[i], axis=1)
            d[i] = np.inf
            b = gts[int(d.argmin())]
            ya, xa = inside(a)
            yb, xb = inside(b)
            for p, pr in preds.items():
                obj = InteractiveObject(pr, adapter.embedding)
                obj.add(Click(float(ya), float(xa), True))
                m2 = obj.add(Click(float(yb), float(xb), True)).mask
                hint = bool(split_objects([(0, ya, xa, True), (0, yb, xb, True)], {0: m2}))
                m3 = obj.add(Click(float(yb), float(xb), False)).mask
                rows[p].append((hint, mask_iou(m3, a), np.count_nonzero(m3 & b) / max(1, np.count_nonzero(b))))
        if len(rows[policies[0]]) >= n_pairs:
            break
    log(f"\n== two cells, then a negative click on the second (coelho_val, {len(rows[policies[0]])} pairs) ==")
    log(f"{'policy':12s}{'hint@2':>8s}{'IoU A@3':>9s}{'B left@3':>9s}{'B>10%':>7s}")
    for p, r in rows.items():
        h, ia, bl = (np.array(v, float) for v in zip(*r))
        log(f"{p:12s}{h.mean():8.2f}{ia.mean():9.4f}{bl.mean():9.4f}{int((bl > 0.1).sum()):7d}")


def box_prompts(model, root, cache, log, sets: list[str], extra_clicks: int = 2) -> None:
    """Box prompts: each object's ground-truth bounding box, then ``extra_clicks`` protocol
    clicks; mean IoU after the box and after each click, for the plain loop, the shipped
    predictor (the refiner runs at the first click after the box) and the refine of the box
    step's own mask (``box_refine``)."""
    from refine_policies import box_refining_predictor
    from napari_focsam.core.prompting import InteractiveObject
    from napari_focsam.evaluation.clicker import next_click
    from napari_focsam.evaluation.metrics import iou
    from napari_focsam.evaluation.runner import PredictorAdapter

    preds = {"plain": build_predictor(model, "plain"), "steady": build_predictor(model, "steady"),
             "box_refine": box_refining_predictor(model)}
    for set_name in sets:
        rows: dict[str, list[list[float]]] = {p: [] for p in preds}
        adapter = PredictorAdapter(preds["plain"], cache_dir=cache)
        for sample in make_dataset(set_name, root):
            adapter.set_image(sample.load_image())
            for ob in sample.objects:
                ys, xs = np.nonzero(ob.gt)
                box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
                for name, pred in preds.items():
                    obj = InteractiveObject(pred, adapter.embedding)
                    row = [iou(ob.gt, obj.set_box(box), ob.ignore)]
                    for _ in range(extra_clicks):
                        c = next_click(ob.gt, obj.mask, ob.ignore, clicked=obj.clicks)
                        row.append(row[-1] if c is None else iou(ob.gt, obj.add(c).mask, ob.ignore))
                    rows[name].append(row)
        log(f"\n== box prompts, {set_name} ({len(rows['plain'])} objects): mean IoU after the box, "
            f"then after each click ==")
        for name, r in rows.items():
            log(f"{name:12s}" + "".join(f"{v:8.4f}" for v in np.mean(r, axis=0)))


def candidate_choice(model, root, cache, log, sets: list[str]) -> None:
    """How good the shipped rule's choice among the three later-click candidates is: the
    shipped predictor is replayed on each set and, at every click after the refine, the
    ground-truth IoU of each candidate (E1's, E0's, their mean) is recorded; printed: the
    mean IoU of the candidate chosen, of each candidate, and of the best one (an oracle that
    knows the ground truth, on the same click trajectory)."""
    from napari_focsam.core.prompting import FocSAMPredictor, SteadyRule, steadiest_candidate
    from napari_focsam.evaluation.metrics import iou
    from napari_focsam.evaluation.protocol import run_object
    from napari_focsam.evaluation.runner import PredictorAdapter

    rule = steadiest_candidate
    current: dict = {}
    rows: list[tuple[int, list[float]]] = []

    def recording(masks, clicks, previous):
        best = rule(masks, clicks, previous)
        rows.append((best, [iou(current["gt"], m, current["ignore"]) for m in masks]))
        return best

    for set_name in sets:
        rows.clear()
        adapter = PredictorAdapter(FocSAMPredictor(model, later_clicks=SteadyRule(rank=recording)), cache_dir=cache)
        for sample in make_dataset(set_name, root):
            adapter.set_image(sample.load_image())
            for ob in sample.objects:
                current.update(gt=np.asarray(ob.gt, bool), ignore=ob.ignore)
                adapter.reset()
                run_object(adapter.predict, ob.gt, ob.ignore)
        gt = np.array([r[1] for r in rows])
        pick = np.array([r[0] for r in rows])
        log(f"\n== later-click candidates, {set_name} ({len(rows)} clicks): picked E1 / E0 / mean "
            f"{' / '.join(str(int(c)) for c in np.bincount(pick, minlength=3))} times ==")
        log(f"mean IoU: chosen {gt[np.arange(len(gt)), pick].mean():.4f}, E1 {gt[:, 0].mean():.4f}, "
            f"E0 {gt[:, 1].mean():.4f}, mean {gt[:, 2].mean():.4f}, oracle {gt.max(axis=1).mean():.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--model", default="vit_t", help="base model (registry name or checkpoint)")
    p.add_argument("--refiner", default=None, help="refiner file (default: the shipped focsam_t)")
    p.add_argument("--sets", default="grabcut,coelho_val,coco_last50,davis_last50")
    p.add_argument("--policies", default="plain,pick,steady")
    p.add_argument("--out", default="results/refine_policy")
    p.add_argument("--cache", default=str(REPO / "results" / "embedding_cache"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--first", type=int, default=None,
                   help="only the first N objects of each set (full runs kept in --out are cut to them)")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the per-click differences to the plain loop")
    p.add_argument("--time", action="store_true", help="only time later clicks of reuse, pick and steady")
    p.add_argument("--boxes", action="store_true", help="only box prompts on --sets (see box_prompts)")
    p.add_argument("--candidates", action="store_true",
                   help="only the later-click candidates' IoU against an oracle choice on --sets")
    p.add_argument("--two-cells", type=int, default=0, metavar="N",
                   help="only the two-cells sequence on N Coelho validation pairs (see two_cells)")
    args = p.parse_args(argv)

    from napari_focsam.core.models import load_model

    torch.set_num_threads(args.threads)

    def log(*a, **k):
        print(*a, **k, flush=True)

    root = Path(args.data_root)
    if not root.is_dir():
        log(f"no data at {root}: pass --data-root")
        return 1
    if args.refiner:
        model = load_model(args.model, "cpu", refiner=args.refiner)
    else:
        model = load_model("focsam_t", "cpu")
    if args.time:
        time_clicks(model, root, args.cache, log)
        return 0
    if args.candidates:
        candidate_choice(model, root, args.cache, log, args.sets.split(","))
        return 0
    if args.boxes:
        box_prompts(model, root, args.cache, log, args.sets.split(","))
        return 0
    if args.two_cells:
        two_cells(model, root, args.cache, log, args.two_cells, args.policies.split(","))
        return 0
    out = Path(args.out)
    all_results = {}
    for set_name in args.sets.split(","):
        results = {pol: run_one(set_name, pol, model, root, args.cache, out, log, args.first)
                   for pol in args.policies.split(",")}
        report(set_name, results, log)
        all_results[set_name] = results
    if args.plot:
        plot_differences(all_results, args.plot)
        log(f"figure: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
