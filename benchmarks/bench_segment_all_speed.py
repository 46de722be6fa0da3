"""Segment all: seconds and F1 of this build beside today's baseline, interleaved in one process.

    python benchmarks/bench_segment_all_speed.py [--data ../shared/data] [--threads 2] [--repeats 1]
        [--images coelho_dna-33,em_vnc16,stardist_2d]

Images: a 1030x1349 Coelho nuclei image (held-out split), a 512x512 EM slice (the top-left
crop of slice 16 of the VNC ssTEM stack, the 2D neurite profiles as ground truth: a
validation slice) and the stardist 512x512 nuclei image. Each image is embedded once; then
:func:`~napari_focsam.core.automatic._segment_all.segment_all` runs with the default parameters, the
baseline and this build alternating (the order flips at every repeat), and the script prints
the median seconds (wall and process CPU), the points decoded and F1 at IoU 0.5 of both, and
the ratio this build / baseline. The load average is printed with every row.

The baseline is this build with the speed-up switched off (see :func:`baseline`): every
point's logits upscaled over the whole map instead of around the point
(``SegmentAllParams.upscale_window``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def baseline():
    """Today's segment-all: every point's logits upscaled over the whole map."""
    from napari_focsam.core.automatic import SegmentAllParams

    return SegmentAllParams(upscale_window=0)


def this_build():
    from napari_focsam.core.automatic import SegmentAllParams

    return SegmentAllParams()


BASELINES = {"today": baseline, "new": this_build}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="vit_t")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--images", default="coelho_dna-33,em_vnc16,stardist_2d")
    args = ap.parse_args(argv)
    import torch

    from napari_focsam.core.automatic import segment_all
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor
    from napari_focsam.evaluation.instances import match_instances

    torch.set_num_threads(args.threads)
    predictor = FocSAMPredictor(load_model(args.model, "cpu"), refine=False)
    print(f"model {args.model}, {args.threads} torch threads; per image: median of {args.repeats} run(s), "
          f"baseline and this build interleaved")
    print(f"{'image':<15} {'build':<6} {'seconds':>8} {'cpu s':>7} {'points':>6} {'F1@0.5':>7} {'mIoU':>6} "
          f"{'ratio':>6}  load")
    for name in args.images.split(","):
        got = load(Path(args.data), name)
        if got is None:
            print(f"{name:<15} (data absent)")
            continue
        img, gt = got
        emb = predictor.embed(img)
        runs: dict[str, list] = {k: [] for k in BASELINES}
        for rep in range(args.repeats):
            for key in (list(BASELINES) if rep % 2 == 0 else list(BASELINES)[::-1]):
                params = BASELINES[key]()
                t0, c0 = time.perf_counter(), time.process_time()
                res = segment_all(predictor, img, embedding=emb, params=params)
                runs[key].append((time.perf_counter() - t0, time.process_time() - c0, res))
        med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
        for key, v in runs.items():
            res = v[-1][2]
            s = match_instances(gt, res.labels)
            ratio = f"{med[key] / med['today']:6.2f}" if key != "today" else f"{'':>6}"
            print(f"{name:<15} {key:<6} {med[key]:8.1f} {statistics.median(r[1] for r in v):7.1f} "
                  f"{res.n_points:6d} {s.f1:7.3f} {s.mean_matched_iou:6.3f} {ratio}  "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
