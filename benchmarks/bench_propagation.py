"""Propagation with cached embeddings: milliseconds per slice, this build beside a baseline build.

    python benchmarks/bench_propagation.py [--data ../shared/data] [--model focsam_t_micro] [--threads 2]
        [--repeats 2] [--runs 3] [--baseline-rev 0d6bcd4] [--cache DIR]

One click at the centre of each of five cells3d nuclei (ids 2, 4, 7, 10, 12; the middle slice of
each), propagated up and down (``SegmentedObject.propagate``, no IoU stop) ``--runs`` times;
the time per propagated slice (the run's seconds over the slices it wrote) of every run. The
cells3d embeddings are cached in ``--cache`` (computed on the first run, not timed).

The baseline is an earlier revision (``--baseline-rev``, default the build whose propagation
ran the distance transform of the prompt point over the whole slice), unpacked with
``git archive`` (``benchmarks/revisions.py``); each build runs in its own process, the builds alternating ``--repeats`` times (the order flips
at every repeat). Printed: per build, the median and the 10th / 90th percentile of the
milliseconds per slice over all its runs, the mean 3D IoU of the five nuclei (the same in
both builds unless the propagation changed), and the ratio this build / baseline.

``--in-memory``: each build first propagates every nucleus once, untimed, so that the timed runs
find all slices in the store's memory (about 240 MB, under its 512 MB bound), as after the dock
embedded the stack (``precompute(memorize=True)``) or after a first propagation; without it the
first run of each nucleus reads its slices back from the disk cache (11-14 ms a slice).

``--after-embedding``: instead, in this build only, the first propagation of the five nuclei in a
fresh session right after the embeddings were cached (as after the dock's background embedding):
``store.precompute()`` leaving the slices on disk only, against ``precompute(memorize=True)``
keeping them in memory too, ``--repeats`` sessions each, alternating; milliseconds per slice
(medians) and the ratio memory / disk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from revisions import alternate_builds

REPO = Path(__file__).resolve().parents[1]
BASELINE_REV = "0d6bcd4"
NUCLEI = (2, 4, 7, 10, 12)


def seeds(labels: np.ndarray, ndi) -> list[tuple[int, int, int]]:
    """(y, x, z) of each nucleus's click: its middle slice's deepest pixel."""
    out = []
    for lab in NUCLEI:
        gt = labels == lab
        zs = np.flatnonzero(gt.any(axis=(1, 2)))
        z = int((zs[0] + zs[-1]) // 2)
        y, x = np.unravel_index(int(np.argmax(ndi.distance_transform_edt(gt[z]))), gt[z].shape)
        out.append((int(y), int(x), z))
    return out


def after_embedding(args) -> int:
    """The first propagation after the embeddings were cached: slices on disk only, or in memory too."""
    import tifffile
    import torch
    from scipy import ndimage as ndi

    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.session import Session

    torch.set_num_threads(args.threads)
    d = Path(args.data) / "micro" / "cells3d"
    stack, labels = tifffile.imread(d / "cells3d_nuclei.tif"), tifffile.imread(d / "cells3d_nuclei_label.tif")
    clicks = seeds(labels, ndi)
    Session(ImageVolume(stack), args.model, cache_dir=args.cache).store.precompute()  # cached, not timed
    ms: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.repeats):
        for memorize in ((False, True) if rep % 2 == 0 else (True, False)):
            session = Session(ImageVolume(stack), args.model, cache_dir=args.cache)
            session.store.precompute(memorize=memorize)
            seconds, slices = 0.0, 0
            for y, x, z in clicks:
                obj = session.new_object()
                obj.add_click(y, x, z=z)
                res = obj.propagate(iou_threshold=0.0)
                seconds, slices = seconds + res.seconds, slices + len(res.masks) - 1
            ms[memorize].append(1000 * seconds / slices)
            session.close()
    disk, memory = statistics.median(ms[False]), statistics.median(ms[True])
    print(f"model {args.model}, {args.threads} torch threads; the first propagation of cells3d nuclei {NUCLEI} "
          f"in a fresh session after the embeddings were cached, {args.repeats} sessions each, alternating; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"slices on disk only:    ms/slice median {disk:.1f} ({', '.join(f'{v:.1f}' for v in ms[False])})")
    print(f"slices in memory too:   ms/slice median {memory:.1f} ({', '.join(f'{v:.1f}' for v in ms[True])})"
          f"  ratio {memory / disk:.2f}")
    return 0


def worker(args) -> int:
    import tifffile
    import torch
    from scipy import ndimage as ndi

    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.session import Session

    torch.set_num_threads(args.threads)
    d = Path(args.data) / "micro" / "cells3d"
    stack, labels = tifffile.imread(d / "cells3d_nuclei.tif"), tifffile.imread(d / "cells3d_nuclei_label.tif")
    session = Session(ImageVolume(stack), args.model, cache_dir=args.cache)
    session.store.precompute()
    clicks = seeds(labels, ndi)
    if args.in_memory:  # untimed: every slice read once into the store's memory
        for y, x, z in clicks:
            obj = session.new_object()
            obj.add_click(int(y), int(x), z=z)
            obj.propagate(iou_threshold=0.0)
    for lab, (y, x, z) in zip(NUCLEI, clicks):
        gt = labels == lab
        for _ in range(args.runs):
            obj = session.new_object()
            obj.add_click(int(y), int(x), z=z)
            res = obj.propagate(iou_threshold=0.0)
            pred = np.zeros(gt.shape, bool)
            for zz, m in res.masks.items():
                pred[zz] = m
            iou = np.count_nonzero(pred & gt) / max(np.count_nonzero(pred | gt), 1)
            print(json.dumps({"nucleus": lab, "ms": 1000 * res.seconds / max(len(res.masks) - 1, 1),
                              "slices": len(res.masks) - 1, "iou": iou}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="focsam_t_micro")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "napari-focsam-bench-cache"))
    ap.add_argument("--in-memory", action="store_true",
                    help="an untimed propagation of each nucleus first: the timed runs find the slices in memory")
    ap.add_argument("--after-embedding", action="store_true",
                    help="this build only: the first propagation with the slices on disk vs in memory")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (Path(args.data) / "micro" / "cells3d" / "cells3d_nuclei.tif").is_file():
        print("cells3d is absent from", args.data)
        return 0
    if args.worker:
        return worker(args)
    if args.after_embedding:
        return after_embedding(args)
    wargs = ["--worker", "--data", args.data, "--model", args.model, "--threads", str(args.threads),
             "--runs", str(args.runs), "--cache", args.cache] + (["--in-memory"] if args.in_memory else [])
    runs = alternate_builds(args.baseline_rev, __file__, wargs, args.repeats)
    rows = {key: [row for run in v for row in run] for key, v in runs.items()}
    print(f"model {args.model}, {args.threads} torch threads, baseline {args.baseline_rev}; cells3d nuclei "
          f"{NUCLEI}, {args.runs} runs each per repeat, {args.repeats} repeats"
          f"{', slices in memory' if args.in_memory else ''}; load {os.getloadavg()[0]:.1f}")
    med = {k: statistics.median(r["ms"] for r in v) for k, v in rows.items()}
    for key, v in rows.items():
        ms = [r["ms"] for r in v]
        ious = {r["nucleus"]: r["iou"] for r in v}
        ratio = f"  ratio {med[key] / med['base']:.2f}" if key != "base" else ""
        print(f"{key:<5} ms/slice median {med[key]:.1f} (p10 {np.percentile(ms, 10):.1f}, p90 "
              f"{np.percentile(ms, 90):.1f}), {statistics.median(r['slices'] for r in v)} slices per run, "
              f"mean 3D IoU {np.mean(list(ious.values())):.3f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
