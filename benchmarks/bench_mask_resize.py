"""The full-resolution mask of a click: ours against SAM's post-processing and an earlier build.

    python benchmarks/bench_mask_resize.py [--threads 1] [--clicks 24] [--repeats 5]
        [--baseline-rev 4b8566a] [--data-root ../shared/data]

Every click ends with its (256, 256) logits turned into the image's (H, W) bool mask. SAM's
post-processing (the reference's ``SamPredictor.predict``) resizes the logits bilinearly to the
1024 canvas, crops the resized image and resizes that to (H, W), then thresholds. Ours
(:func:`napari_focsam.modeling.mask_resize.logits_to_mask_roi`) computes only the region the
mask can reach and, inside it, only the pixels along the outline.

The logits are real: ``vit_t`` decodes seeded random clicks anywhere in the images of
``bench_vs_reference.py`` (a 1024x1024 and a 1030x1349 nuclei image, a 321x481 photo:
background, single nuclei and large masks). For each image the three ways run alternately on
the same logits (the order rotates), in one process; the earlier build's function is loaded
from ``git show REV:src/napari_focsam/modeling/mask_resize.py`` (a module with no imports from
the package). Prints median milliseconds per mask, the ratios against SAM's post-processing
and against the earlier build, and whether all three give the same masks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]


def sam_postprocess(logits: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """SAM's way: resize to the 1024 canvas, crop, resize to the image, threshold."""
    x = F.interpolate(logits, size=(1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return (F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def module_at(rev: str) -> types.ModuleType:
    """``modeling/mask_resize.py`` of revision ``rev``, as a module of its own."""
    code = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/napari_focsam/modeling/mask_resize.py"],
                          check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType(f"mask_resize_{rev}")
    sys.modules[mod.__name__] = mod  # (dataclasses and annotations look their module up)
    exec(compile(code, f"{rev}:mask_resize.py", "exec"), mod.__dict__)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get(
        "FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clicks", type=int, default=24, help="random clicks per image")
    ap.add_argument("--repeats", type=int, default=5, help="timings of each mask per way")
    ap.add_argument("--baseline-rev", default="4b8566a", help="the earlier build's revision")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bench_vs_reference import load_images

    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor
    from napari_focsam.modeling.mask_resize import logits_to_mask_roi

    base = module_at(args.baseline_rev).logits_to_mask_roi
    model = load_model("vit_t", "cpu")
    predictor = FocSAMPredictor(model)
    ways = {"ours": logits_to_mask_roi, "base": base, "sam": sam_postprocess}
    rows = []
    for name, (img, _) in load_images(Path(args.data_root)).items():
        emb = predictor.embed(img)
        (h, w), (H, W) = emb.input_size, emb.original_size
        rng = np.random.default_rng(0)
        logits = []
        with torch.inference_mode():
            for _ in range(args.clicks):
                y, x = rng.uniform(0, H - 1), rng.uniform(0, W - 1)
                pts = torch.tensor([[[x * w / W, y * h / H]]], dtype=torch.float32)
                logits.append(model.decode(emb.features, pts, torch.ones(1, 1, dtype=torch.int64)).logits)
        times = {k: [] for k in ways}
        same = True
        for i, lg in enumerate(logits):
            masks = {k: f(lg, emb.input_size, emb.original_size) for k, f in ways.items()}  # (warm-up)
            same &= all(np.array_equal(masks["sam"], m) for m in masks.values())
            order = list(ways)[i % 3:] + list(ways)[:i % 3]
            per = {k: [] for k in ways}
            for _ in range(args.repeats):
                for k in order:
                    t0 = time.perf_counter()
                    ways[k](lg, emb.input_size, emb.original_size)
                    per[k].append(time.perf_counter() - t0)
            for k in ways:
                times[k].append(statistics.median(per[k]))
        area = [float(np.count_nonzero(sam_postprocess(lg, emb.input_size, emb.original_size))) / (H * W)
                for lg in logits]
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        mean = {k: 1000 * float(np.mean(v)) for k, v in times.items()}
        rows.append({"image": name, "median_ms": med, "mean_ms": mean, "same_masks": bool(same),
                     "mask_area_fraction_median": statistics.median(area), "mask_area_fraction_max": max(area)})

    print(f"threads={torch.get_num_threads()} clicks={args.clicks} repeats={args.repeats} "
          f"baseline={args.baseline_rev} load(1 min)={os.getloadavg()[0]:.2f}")
    print("milliseconds per mask (median over the clicks of each click's median; mean in brackets)")
    print(f"{'image':<18}{'ours':>14}{args.baseline_rev:>14}{'SAM post':>14}{'/SAM':>7}{'/base':>7}{'same':>6}"
          f"{'area med':>9}{'max':>6}")
    for r in rows:
        m, a = r["median_ms"], r["mean_ms"]
        cell = lambda k: f"{m[k]:.2f} ({a[k]:.2f})"
        print(f"{r['image']:<18}{cell('ours'):>14}{cell('base'):>14}{cell('sam'):>14}"
              f"{m['ours'] / m['sam']:>7.2f}{m['ours'] / m['base']:>7.2f}{str(r['same_masks']):>6}"
              f"{r['mask_area_fraction_median']:>9.3f}{r['mask_area_fraction_max']:>6.2f}")
    print(json.dumps({"threads": torch.get_num_threads(), "baseline": args.baseline_rev, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
