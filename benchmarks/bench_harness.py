"""Full interactive-segmentation benchmark: NoC@85/90/95 per dataset, with and without refinement.

    python benchmarks/bench_harness.py --data-root ../shared/data [--model focsam_t] [--refiner FILE]
        [--datasets grabcut davis coco_mval coelho2009_gnf] [--max-objects N] [--out results/harness]

Runs the FocSAM click protocol (design §5.2, 20 clicks) through ``napari-focsam evaluate``'s
code path on each dataset, once with the focus refiner (when the model has one) and once as the
plain SAM loop with the same weights (the baseline, same process), and prints a table:
NoC@85/90/95, seconds per click (embedding / decoder / refine) and wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_focsam.core.defaults import DEFAULT_MODEL
from napari_focsam.evaluation.runner import run_evaluation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--refiner", default=None)
    ap.add_argument("--datasets", nargs="+", default=["grabcut", "davis", "coco_mval", "coelho2009_gnf"])
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="results/harness")
    args = ap.parse_args()

    rows = []
    for name in args.datasets:
        summaries = run_evaluation(name, args.data_root, args.model, Path(args.out) / name,
                                   refine_modes=(True, False), max_objects=args.max_objects,
                                   max_clicks=args.max_clicks, device=args.device, refiner=args.refiner)
        for label, s in summaries.items():
            rows.append({"dataset": name, "run": label, "n": s["n_objects"], "noc85": s["noc85"],
                         "noc90": s["noc90"], "noc95": s["noc95"], "spc_total": s["spc"]["total"],
                         "spc_embed": s["spc"]["embedding"], "spc_decoder": s["spc"]["decoder"],
                         "spc_refine": s["spc"]["refine"], "wall_s": s["wall_seconds"]})
    head = f"{'dataset':<16}{'run':<11}{'n':>5}{'NoC85':>8}{'NoC90':>8}{'NoC95':>8}{'SPC s':>8}{'embed':>8}{'dec':>8}{'refine':>8}{'wall s':>9}"
    print(head)
    for r in rows:
        print(f"{r['dataset']:<16}{r['run']:<11}{r['n']:>5}{r['noc85']:>8.2f}{r['noc90']:>8.2f}{r['noc95']:>8.2f}"
              f"{r['spc_total']:>8.3f}{r['spc_embed']:>8.3f}{r['spc_decoder']:>8.3f}{r['spc_refine']:>8.3f}{r['wall_s']:>9.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
