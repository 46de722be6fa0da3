"""Benchmark of ``segment-all``: F1 at IoU 0.5, mean matched IoU and time on fluorescence nuclei.

Images: the stardist 2D nuclei image (512x512, 125 nuclei) and Coelho 2009 (GNF) images of the
held-out validation split (dna-33..49; the first few by default). Data from ``--data`` or
``$FOCSAM_DATA`` (default ``../shared/data``); the script exits with a note when it is absent.

    python benchmarks/bench_segment_all.py                      # defaults, stardist + 3 Coelho
    python benchmarks/bench_segment_all.py --grid "points_per_side=32,48;tiles=1,2" --coelho 0
    python benchmarks/bench_segment_all.py --scan --mosaics 2x4 8x8 --workers 2 --em --scaling 1 2 4

``--scan``: whole scans (``benchmarks/scan_bench.py``): one Coelho image (the baseline) against
mosaics of it through ``segment-all --workers N --out scan.ome.zarr``, a chloroplast EM slice,
and tiles per second with 1, 2, 4 workers.

Each configuration prints one line per image and a mean; ``--json FILE`` also writes all rows.
Times are wall-clock seconds of :func:`segment_all` (encoder passes included) on this machine
with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_focsam.core.automatic import SegmentAllParams  # noqa: E402
from napari_focsam.evaluation.instances import match_instances  # noqa: E402

COELHO_VALIDATION = [f"dna-{i}" for i in range(33, 50)]


def data_root(arg: str | None) -> Path | None:
    root = Path(arg or os.environ.get("FOCSAM_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


def load_images(root: Path, n_coelho: int, stardist: bool = True) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, image, labels)] of the benchmark images that exist under ``root``."""
    import imageio.v3 as iio
    import tifffile

    out = []
    sd = root / "micro" / "stardist"
    if stardist and (sd / "stardist_img2d.tif").is_file():
        out.append(("stardist_2d", tifffile.imread(sd / "stardist_img2d.tif"),
                     tifffile.imread(sd / "stardist_mask2d.tif")))
    co = root / "micro" / "coelho2009_gnf"
    names = [n for n in COELHO_VALIDATION if (co / "images" / f"{n}.png").is_file()][:n_coelho]
    for n in names:
        img = iio.imread(co / "images" / f"{n}.png")
        if img.ndim == 3:
            img = img[..., 0]
        out.append((f"coelho_{n}", img, iio.imread(co / "labels" / f"{n}.png")))
    return out


def parse_grid(text: str) -> list[dict]:
    """``"a=1,2;b=x"`` -> the product of the values, as dicts of SegmentAllParams fields."""
    if not text:
        return [{}]
    keys, values = [], []
    for part in text.split(";"):
        k, v = part.split("=")
        keys.append(k.strip())
        vals = []
        for item in v.split(","):
            item = item.strip()
            vals.append(item == "true" if item in ("true", "false") else (float(item) if "." in item else int(item)))
        values.append(vals)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data folder (default $FOCSAM_DATA or ../shared/data)")
    ap.add_argument("--model", default="vit_t")
    ap.add_argument("--refiner", default=None, help="a refiner (or head) file for --model, e.g. a training export")
    ap.add_argument("--coelho", type=int, default=3, help="how many Coelho validation images (0: none)")
    ap.add_argument("--no-stardist", action="store_true")
    ap.add_argument("--grid", default="", help='parameter grid, e.g. "points_per_side=32,48;tiles=1,2"')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write every row to this file")
    scan = ap.add_argument_group("whole scans (--scan)")
    scan.add_argument("--scan", action="store_true", help="mosaics, EM slice and workers instead of the grid")
    scan.add_argument("--image", default="dna-33", help="the Coelho image of the mosaics")
    scan.add_argument("--mosaics", nargs="*", default=["2x4", "8x8"], help="ROWSxCOLS mosaics")
    scan.add_argument("--points", type=int, default=32, help="points per side (per tile for the scans)")
    scan.add_argument("--no-split", action="store_true", help="no clump splitting (faster)")
    scan.add_argument("--workers", type=int, default=2, help="local workers of the mosaic runs (0: one process)")
    scan.add_argument("--max-level", type=int, default=None, help="--max-level of the mosaic runs")
    scan.add_argument("--no-again", action="store_true", help="no second run of the mosaics (cache reuse)")
    scan.add_argument("--em", action="store_true", help="also a chloroplast EM slice")
    scan.add_argument("--em-slice", type=int, default=9)
    scan.add_argument("--em-points", type=int, default=16)
    scan.add_argument("--scaling", type=int, nargs="*", default=[], help="worker counts for tiles/s (e.g. 1 2 4)")
    scan.add_argument("--workdir", default=None, help="folder for the mosaics, caches and outputs")
    args = ap.parse_args(argv)
    root = data_root(args.data)
    if root is None:
        print("bench_segment_all: data folder not found (set FOCSAM_DATA); nothing to do")
        return 0
    if args.scan:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from scan_bench import main as scan_main

        args.data = str(root)
        return scan_main(args, load_images)
    import torch

    from napari_focsam.core.automatic import segment_all
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    torch.set_num_threads(args.threads)
    images = load_images(root, args.coelho, not args.no_stardist)
    predictor = FocSAMPredictor(load_model(args.model, "cpu", refiner=args.refiner), refine=False)
    rows = []
    print(f"model {args.model}{' + ' + args.refiner if args.refiner else ''}, {args.threads} torch threads, "
          f"{os.cpu_count()} CPUs")
    for overrides in parse_grid(args.grid):
        params = SegmentAllParams(**overrides)
        print(f"\n== {overrides or 'defaults'}: {params}")
        print(f"{'image':<18} {'F1@0.5':>7} {'mIoU':>6} {'prec':>6} {'rec':>6} {'pred':>5} {'true':>5} "
              f"{'points':>6} {'seconds':>8}")
        for name, img, gt in images:
            t0 = time.perf_counter()
            res = segment_all(predictor, img, params)
            secs = time.perf_counter() - t0
            s = match_instances(gt, res.labels)
            print(f"{name:<18} {s.f1:7.3f} {s.mean_matched_iou:6.3f} {s.precision:6.3f} {s.recall:6.3f} "
                  f"{s.n_pred:5d} {s.n_true:5d} {res.n_points:6d} {secs:8.1f}", flush=True)
            rows.append({"image": name, "params": params.as_dict(), **s.as_dict(), "points": res.n_points,
                         "seconds": round(secs, 2), "timings": res.timings})
        mine = rows[-len(images):]
        if mine:
            print(f"{'mean':<18} {np.mean([r['f1'] for r in mine]):7.3f} "
                  f"{np.mean([r['mean_matched_iou'] for r in mine]):6.3f} {'':>6} {'':>6} {'':>5} {'':>5} "
                  f"{'':>6} {np.mean([r['seconds'] for r in mine]):8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
