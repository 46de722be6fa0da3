"""Whole-scan segment-all benchmark (``bench_segment_all.py --scan``): mosaics, EM slices, workers.

Baseline: one Coelho image through the single-image path (:func:`segment_all`, the image squeezed
onto one encoder canvas). Against it, 2x4 and 8x8 mosaics of that image (the ground truth tiled
the same way, ids offset per copy), each written as a zarr array and run through the real command
line: ``segment-all MOSAIC.zarr --workers W --cache DIR --out scan.ome.zarr``, then once more
(every tile reused: ``computed`` must be 0). The output is opened with ome-zarr-py (it must be a
Label image with a pyramid). Per run: F1 at IoU 0.5, mean matched IoU, the ground-truth objects
crossing a level-0 tile seam (the middle of each tile overlap, where a cut without overlap would
fall) and how many of those were found (IoU >= 0.5), seconds, tiles, and each worker's peak RSS.

EM: one chloroplast slice (2341 x 3293) squeezed (baseline) vs tiled. Workers: tiles per second
of segment-all with 1, 2 and 4 local workers on a 1x2 mosaic (fresh cache each: encoder work
included), with the ratio against 1 worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def mosaic(img: np.ndarray, gt: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The image repeated rows x cols times, and its ground truth with ids offset per copy."""
    n = int(gt.max())
    big = np.tile(img, (rows, cols))
    tiles = [[np.where(gt > 0, gt.astype(np.int64) + (r * cols + c) * n, 0) for c in range(cols)]
             for r in range(rows)]
    return big, np.block(tiles)


def seam_lines(size: int, tile: int = 1024, halo: int = 256) -> list[float]:
    """Middles of the overlaps of neighbouring level-0 tiles along one axis."""
    from napari_focsam.core.images import axis_starts

    s = axis_starts(size, tile, tile - halo)
    return [(s[i] + s[i - 1] + tile) / 2 for i in range(1, len(s))]


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    """F1@0.5, mean matched IoU, and the ground-truth objects on seams: crossing, found."""
    from scipy import ndimage as ndi

    from napari_focsam.evaluation.instances import match_instances, pairwise_iou

    s = match_instances(truth, pred)
    t_ids, _, iou = pairwise_iou(truth, pred)
    found = set(t_ids[iou >= 0.5].tolist())
    ys, xs = seam_lines(truth.shape[0]), seam_lines(truth.shape[1])
    on_seam = []
    for i, sl in enumerate(ndi.find_objects(truth), start=1):
        if sl is not None and (any(sl[0].start < y < sl[0].stop for y in ys)
                               or any(sl[1].start < x < sl[1].stop for x in xs)):
            on_seam.append(i)
    return {"f1": round(s.f1, 3), "miou": round(s.mean_matched_iou, 3), "true": s.n_true, "pred": s.n_pred,
            "seam_objects": len(on_seam), "seam_found": sum(i in found for i in on_seam)}


def write_zarr(path: Path, arr: np.ndarray) -> Path:
    import zarr

    z = zarr.create_array(str(path), shape=arr.shape, chunks=(1024, 1024), dtype=arr.dtype, fill_value=0)
    z[:] = arr
    return path


def cli(args: list, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-m", "napari_focsam.cli", *map(str, args)], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def opens_as_labels(path: Path) -> bool:
    """ome-zarr-py reads ``path`` as a Label image with a pyramid."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (node,) = list(Reader(parse_url(str(path)))())
    return {type(s).__name__ for s in node.specs} >= {"Label", "Multiscales"} and len(node.data) > 1


def run_scan(img, gt, name: str, folder: Path, params: list, workers: int, threads: int, again: bool = True,
             extra: tuple = ()) -> dict:
    """One mosaic (or slice) through the command line; returns its row."""
    import zarr

    src = write_zarr(folder / f"{name}.zarr", img)
    out = folder / f"{name}.ome.zarr"
    cache = folder / f"cache-{name}"
    cmd = ["segment-all", src, "--out", out, "--cache", cache, "--no-progress", *params, *extra]
    if workers:
        cmd += ["--workers", workers]
    t0 = time.perf_counter()
    first = cli(cmd, threads)
    secs = time.perf_counter() - t0
    pred = np.asarray(zarr.open_group(str(out), mode="r")["0"][:])
    row = {"image": name, "shape": list(img.shape), **score(gt, pred), "seconds": round(secs, 1),
           "tiles": first["units"], "computed": first["computed"], "workers": first["workers"],
           "worker_max_rss_mb": first.get("worker_max_rss_mb"), "seams": first["seams"],
           "ome_zarr_labels": opens_as_labels(out)}
    if again:
        second = cli(cmd, threads)
        row["second_computed"] = second["computed"]
        row["second_seconds"] = second["seconds"]
    return row


def main(args, images_loader=None) -> int:
    import tempfile

    import imageio.v3 as iio
    import torch

    from napari_focsam.core.automatic import SegmentAllParams, segment_all
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    co = root / "micro" / "coelho2009_gnf"
    img = iio.imread(co / "images" / f"{args.image}.png")
    img = img[..., 0] if img.ndim == 3 else img
    gt = iio.imread(co / "labels" / f"{args.image}.png").astype(np.int64)
    params = SegmentAllParams(points_per_side=args.points, split_clumps=not args.no_split)
    flags = ["--points-per-side", args.points, "--model", args.model] + (["--no-split"] if args.no_split else [])
    pred = FocSAMPredictor(load_model(args.model, "cpu"), refine=False)
    rows = []

    def show(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    t0 = time.perf_counter()
    single = segment_all(pred, img, params)
    show({"image": f"{args.image} single (baseline)", "shape": list(img.shape), **score(gt, single.labels),
          "seconds": round(time.perf_counter() - t0, 1)})
    if args.workdir is not None:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        for spec in args.mosaics:
            r, c = (int(v) for v in spec.split("x"))
            big, truth = mosaic(img, gt, r, c)
            extra = ("--max-level", args.max_level) if args.max_level is not None else ()
            show(run_scan(big, truth, f"mosaic{spec}", folder, flags, args.workers, args.threads,
                          again=not args.no_again, extra=extra))
        if args.em:
            import tifffile

            em = root / "micro" / "plant_chloroplasts_em"
            z = args.em_slice
            em_img = tifffile.imread(em / "chloroplasts_em.tif", key=z)
            em_gt = tifffile.imread(em / "chloroplasts_em_label.tif", key=z).astype(np.int64)
            em_params = SegmentAllParams(points_per_side=args.em_points, split_clumps=False)
            t0 = time.perf_counter()
            sq = segment_all(pred, em_img, em_params)
            show({"image": f"chloroplasts z={z} squeezed (baseline)", "shape": list(em_img.shape),
                  **score(em_gt, sq.labels), "seconds": round(time.perf_counter() - t0, 1)})
            show(run_scan(em_img, em_gt, f"chloroplasts{z}", folder,
                          ["--points-per-side", args.em_points, "--model", args.model, "--no-split"],
                          args.workers, args.threads, again=False))
        if args.scaling:
            big, _ = mosaic(img, gt, 1, 2)
            src = write_zarr(folder / "scaling.zarr", big)
            base = None
            for w in args.scaling:
                show(scaling_row(src, folder / f"cache-w{w}", w, params, args.model, base))
                base = base or rows[-1]["tiles_per_s"]
    return 0


def scaling_row(src: Path, cache: Path, workers: int, params, model: str, base: float | None) -> dict:
    """segment-all of ``src`` (level 0 only) on a local cluster of ``workers`` processes, fresh cache."""
    from napari_focsam.core.cluster import ImageSource, connect, segment_all_scan

    source = ImageSource(str(src), tiling=(1024, 256))
    t0 = time.perf_counter()
    with connect(workers=workers, threads_per_worker=1) as client:
        res = segment_all_scan(source, 0, params, model=model, cache_dir=cache, client=client, max_level=0,
                               progress=False)
    secs = time.perf_counter() - t0
    rate = res.info["units"] / secs
    return {"workers": workers, "tiles": res.info["units"], "tiles_per_s": round(rate, 4),
            "ratio_vs_1": round(rate / (base or rate), 2), "seconds": round(secs, 1), "objects": res.n_objects,
            "worker_max_rss_mb": res.info["worker_max_rss_mb"]}
