"""Segment all: seconds and F1 of this build beside a baseline build, interleaved.

    python benchmarks/bench_segment_all_speed.py [--data ../shared/data] [--threads 2] [--repeats 1]
        [--images coelho_dna-33,em_vnc16,stardist_2d] [--model vit_t] [--baseline-rev 0d6bcd4]

Images: a 1030x1349 Coelho nuclei image (held-out split), a 512x512 EM slice (the top-left
crop of slice 16 of the VNC ssTEM stack, the 2D neurite profiles as ground truth: a
validation slice) and the stardist 512x512 nuclei image.

The baseline is an earlier revision of this repository (``--baseline-rev``, default the
build before these speed-ups: every 32-point batch in one decoder pass,
the image tokens copied per prompt, the points in grid order), unpacked with ``git archive``
into a temporary folder. Each build runs in its own process (one per build and repeat, the
two builds alternating and the order flipping at every repeat), on the same threads: the
process loads the model, embeds each image once (not timed) and times
:func:`~napari_focsam.core.automatic._segment_all.segment_all` with the default parameters.
The script prints, per image and build, the median seconds (wall and process CPU), the points
decoded and F1 / mean matched IoU at IoU 0.5, the ratio this build / baseline and the load
average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from revisions import alternate_builds

REPO = Path(__file__).resolve().parents[1]
#: the landed build before the speed-ups (decoder passes of 8, shared image tokens, deepest first)
BASELINE_REV = "0d6bcd4"


def load(root: Path, name: str):
    """(image, ground-truth labels) of a benchmark image, or None when its files are absent."""
    import imageio.v3 as iio
    import tifffile

    micro = root / "micro"
    if name.startswith("coelho_"):
        stem = name[len("coelho_"):]
        f = micro / "coelho2009_gnf" / "images" / f"{stem}.png"
        if not f.is_file():
            return None
        img = iio.imread(f)
        return (img[..., 0] if img.ndim == 3 else img), iio.imread(micro / "coelho2009_gnf" / "labels" / f"{stem}.png")
    if name == "em_vnc16":
        d = micro / "em_vnc_sstem"
        if not (d / "vnc_em.tif").is_file():
            return None
        return (tifffile.imread(d / "vnc_em.tif")[16, :512, :512],
                tifffile.imread(d / "vnc_neurites_label2d.tif")[16, :512, :512])
    if name == "stardist_2d":
        d = micro / "stardist"
        if not (d / "stardist_img2d.tif").is_file():
            return None
        return tifffile.imread(d / "stardist_img2d.tif"), tifffile.imread(d / "stardist_mask2d.tif")
    raise SystemExit(f"unknown image {name!r}")


def worker(args) -> int:
    """One build's run over the images; prints one JSON line per image."""
    import torch

    from napari_focsam.core.automatic import segment_all
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor
    from napari_focsam.evaluation.instances import match_instances

    torch.set_num_threads(args.threads)
    predictor = FocSAMPredictor(load_model(args.model, "cpu"), refine=False)
    for name in args.images.split(","):
        got = load(Path(args.data), name)
        if got is None:
            print(json.dumps({"image": name, "absent": True}), flush=True)
            continue
        img, gt = got
        emb = predictor.embed(img)
        t0, c0 = time.perf_counter(), time.process_time()
        res = segment_all(predictor, img, embedding=emb)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = match_instances(gt, res.labels)
        print(json.dumps({"image": name, "wall": wall, "cpu": cpu, "points": res.n_points, "f1": s.f1,
                          "miou": s.mean_matched_iou, "load": os.getloadavg()[0]}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="vit_t")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--images", default="coelho_dna-33,em_vnc16,stardist_2d")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    wargs = ["--worker", "--data", args.data, "--model", args.model, "--threads", str(args.threads),
             "--images", args.images]
    runs = {key: [{r["image"]: r for r in run} for run in v]
            for key, v in alternate_builds(args.baseline_rev, __file__, wargs, args.repeats).items()}
    print(f"model {args.model}, {args.threads} torch threads; baseline {args.baseline_rev}; per image: median of "
          f"{args.repeats} run(s), the builds in separate processes, alternating")
    print(f"{'image':<15} {'build':<5} {'seconds':>8} {'cpu s':>7} {'points':>6} {'F1@0.5':>7} {'mIoU':>6} "
          f"{'ratio':>6}  load")
    for name in args.images.split(","):
        if any("absent" in r[name] for v in runs.values() for r in v):
            print(f"{name:<15} (data absent)")
            continue
        med = {k: statistics.median(r[name]["wall"] for r in v) for k, v in runs.items()}
        for key, v in runs.items():
            last = v[-1][name]
            ratio = f"{med[key] / med['base']:6.2f}" if key != "base" else f"{'':>6}"
            print(f"{name:<15} {key:<5} {med[key]:8.1f} {statistics.median(r[name]['cpu'] for r in v):7.1f} "
                  f"{last['points']:6d} {last['f1']:7.3f} {last['miou']:6.3f} {ratio}  "
                  f"{statistics.median(r[name]['load'] for r in v):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
