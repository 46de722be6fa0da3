# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Compare refiners on the validation splits with the evaluation harness (same objects for all).

    python -m napari_focsam.training.compare --data-root ../shared/data --out /tmp/cmp \\
        --run plain=vit_t --run old=vit_t+weights/old_refiner.pt --run new=vit_t+runs/x/focsam_t_refiner.pt

Each ``--run LABEL=MODEL[+REFINER]`` is one loop: ``MODEL`` alone is the plain SAM loop of that
model (no refinement), ``MODEL+REFINER`` refines at the product's refine click (the 1st).
Every run sees the same objects: all of GrabCut (natural images) and, of the Coelho
validation images (``last:16``), ``max_nuclei`` nuclei drawn with a fixed seed.  Clicks, IoU and NoC come from
:func:`napari_focsam.evaluation.protocol.evaluate_dataset` and the engine's per-object loop
(:class:`napari_focsam.evaluation.runner.PredictorAdapter`, embeddings computed once per image
and shared by the runs through its cache folder).

Writes ``<out>/<split>/<label>/`` (the harness' per-object IoUs and summaries),
``<out>/compare.json`` (summaries, settings, git commit), ``<out>/compare.md`` (the NoC table)
and ``<out>/miou_<split>.png`` (mean IoU per click of every run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..evaluation.datasets import EvalDataset, EvalSample, read_dataset

__all__ = ["ChosenObjects", "compare_runs", "main", "markdown_table", "validation_splits"]

#: the validation splits of configs/focsam_t*.json: (name, dataset, image selection)
SPLITS = (("grabcut", "grabcut", "all"), ("coelho_val", "coelho2009_gnf", "last:16"))


class ChosenObjects:
    """The samples of ``dataset`` restricted to chosen objects, read lazily image by image.

    ``chosen`` maps an image id to the indices of its objects (in the dataset's object order,
    empty masks left out) that are kept; images without a chosen object are skipped.
    """

    def __init__(self, dataset: EvalDataset, chosen: dict[str, list[int]]) -> None:
        self.dataset = dataset
        self.chosen = {k: sorted(v) for k, v in chosen.items() if v}

    def __iter__(self) -> Iterator[EvalSample]:
        for sample in self.dataset:
            keep = self.chosen.get(sample.image_id)
            if keep:
                yield EvalSample(sample.image_id, sample.image_path, [sample.objects[i] for i in keep],
                                 sample.loader)

    def __len__(self) -> int:
        return sum(len(v) for v in self.chosen.values())


def sample_objects(dataset: EvalDataset, max_objects: int | None, seed: int) -> dict[str, list[int]]:
    """``{image_id: [object indices]}``: every object, or ``max_objects`` of them drawn
    uniformly without replacement with ``default_rng(seed)`` (reads the masks, not the images)."""
    pairs = [(s.image_id, i) for s in dataset for i in range(len(s.objects))]
    if max_objects is not None and len(pairs) > max_objects:
        pick = np.random.default_rng(seed).choice(len(pairs), size=max_objects, replace=False)
        pairs = [pairs[i] for i in sorted(pick)]
    out: dict[str, list[int]] = {}
    for image_id, i in pairs:
        out.setdefault(image_id, []).append(i)
    return out


def validation_splits(data_root, max_nuclei: int | None = 60, seed: int = 0) -> dict[str, ChosenObjects]:
    """The validation objects: all GrabCut objects and ``max_nuclei`` Coelho validation nuclei."""
    out = {}
    for name, dataset, images in SPLITS:
        ds = read_dataset(dataset, data_root).select(images)
        cap = max_nuclei if dataset == "coelho2009_gnf" else None
        out[name] = ChosenObjects(ds, sample_objects(ds, cap, seed))
    return out


def git_commit(repo: Path) -> str:
    """``HEAD`` of the repository holding this file, with ``+dirty`` when tracked files changed."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def compare_runs(runs: dict[str, tuple[str, str | None]], data_root, out_dir, *, max_nuclei: int | None = 60,
                 seed: int = 0, max_clicks: int = 20, device: str = "cpu",
                 splits: Sequence[str] | None = None, log=print) -> dict:
    """Evaluate every run on the same validation objects; returns ``{split: {label: summary}}``.

    Parameters
    ----------
    runs : dict
        ``label -> (model, refiner)``; ``refiner`` None runs the plain loop of ``model``.
    data_root : path
        The data folder (``../shared/data``).
    out_dir : path
        Output folder (see the module docstring).
    max_nuclei, seed : int
        How many Coelho validation nuclei, drawn with this seed (None: all).
    """
    from ..core.models import load_model
    from ..core.prompting import FocSAMPredictor
    from ..evaluation.protocol import evaluate_dataset, plot_miou_curves, write_results
    from ..evaluation.runner import PredictorAdapter

    import hashlib

    # the working tree may be shared and edited while this runs: record what was imported
    pred_file = Path(__file__).resolve().parents[1] / "core" / "predictor.py"
    predictor_sha1 = hashlib.sha1(pred_file.read_bytes()).hexdigest()
    commit = git_commit(Path(__file__).resolve().parents[3])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = validation_splits(data_root, max_nuclei, seed)
    names = list(splits) if splits else list(chosen)
    results: dict = {}
    for split in names:
        objs = chosen[split]
        results[split] = {}
        for label, (model, refiner) in runs.items():
            net = load_model(model, device, refiner=refiner)
            predictor = FocSAMPredictor(net, refine=refiner is not None)
            adapter = PredictorAdapter(predictor, cache_dir=out_dir / "embeddings")
            t0 = time.perf_counter()
            per_object, summary = evaluate_dataset(objs, adapter, max_clicks)
            summary.update({"split": split, "label": label, "model": model, "refiner": refiner,
                            "refine": predictor.refine, "wall_seconds": round(time.perf_counter() - t0, 1)})
            write_results(out_dir / split / label, per_object, summary, label=label)
            results[split][label] = summary
            if log:
                log(json.dumps({"split": split, "label": label, "noc85": round(summary["noc85"], 3),
                                "noc90": round(summary["noc90"], 3), "noc95": round(summary["noc95"], 3),
                                "n_objects": summary["n_objects"], "wall_s": summary["wall_seconds"]}))
        plot_miou_curves({lab: s["miou"] for lab, s in results[split].items()}, out_dir / f"miou_{split}.png",
                         title=f"{split}: mean IoU per click ({len(objs)} objects)")
    info = {"git_commit": commit, "predictor_sha1": predictor_sha1,
            "max_nuclei": max_nuclei, "seed": seed,
            "max_clicks": max_clicks, "runs": {k: list(v) for k, v in runs.items()},
            "chosen": {s: chosen[s].chosen for s in names}, "results": results}
    (out_dir / "compare.json").write_text(json.dumps(info, indent=1, default=float))
    (out_dir / "compare.md").write_text(markdown_table(results, info["git_commit"]))
    return results


def markdown_table(results: dict, commit: str = "") -> str:
    """NoC@85/90/95 and the mean IoU after 1, 2, 3, 5, 10, 20 clicks, one row per split and run."""
    clicks = (1, 2, 3, 5, 10, 20)
    head = "| split | run | objects | NoC@85 | NoC@90 | NoC@95 | " + " | ".join(f"mIoU@{c}" for c in clicks) + " |"
    lines = [head, "|" + "---|" * (6 + len(clicks))]
    for split, runs in results.items():
        for label, s in runs.items():
            m = s["miou"]
            lines.append(f"| {split} | {label} | {s['n_objects']} | {s['noc85']:.2f} | {s['noc90']:.2f} | "
                         f"{s['noc95']:.2f} | " + " | ".join(f"{m[c - 1]:.3f}" for c in clicks if c <= len(m)) + " |")
    if commit:
        lines.append(f"\ncommit: `{commit}`")
    return "\n".join(lines) + "\n"


def parse_run(text: str) -> tuple[str, tuple[str, str | None]]:
    label, sep, spec = text.partition("=")
    if not sep or not label or not spec:
        raise SystemExit(f"--run expects LABEL=MODEL[+REFINER], got {text!r}")
    model, _, refiner = spec.partition("+")
    return label, (model, refiner or None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_focsam.training.compare", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=MODEL[+REFINER]")
    p.add_argument("--max-nuclei", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--split", action="append", choices=[s[0] for s in SPLITS], default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    runs = dict(parse_run(r) for r in a.run)
    results = compare_runs(runs, a.data_root, a.out, max_nuclei=a.max_nuclei, seed=a.seed, max_clicks=a.max_clicks,
                           device=a.device, splits=a.split)
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
