"""Precompute throughput: one process against dask LocalClusters of 2 and 4 worker processes.

Prints, per mode, the slices per second, the ratio against the single process (the baseline,
run in the same script on the same slices, each mode with a fresh cache), and the peak
resident memory of each worker process. With ``--scheduler-demo`` it also fills the cache of
the whole 60-slice cells3d stack through a ``dask scheduler`` and two ``dask worker`` processes
started by hand (``precompute --scheduler``), then checks that a single-process ``precompute``
afterwards computes nothing.

Usage::

    python benchmarks/bench_distributed.py [--slices 12] [--workers 2 4] [--scheduler-demo]

On an N-core machine expect no gain past N workers: each worker runs its own encoder with
cores / workers torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _stack(n: int, folder: Path) -> Path:
    """The first ``n`` slices of the cells3d nuclei stack (all 60 from ../shared/data when there,
    else the 36 of the package's 3D sample)."""
    import tifffile

    from napari_focsam._sample_data import load_nuclei

    full = Path(os.environ.get("FOCSAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    full = full / "micro" / "cells3d" / "cells3d_nuclei.tif"
    image = tifffile.imread(full) if full.is_file() else load_nuclei("3d")[0]
    path = folder / f"stack{n}.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image[:n]))
    return path


def _single(stack: Path, cache: Path, threads: int) -> dict:
    import resource

    import torch

    from napari_focsam.core.cluster import ImageSource
    from napari_focsam.core.embeddings import EmbeddingStore
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    torch.set_num_threads(threads)
    model = load_model("vit_t", "cpu")
    t0 = time.perf_counter()
    store = EmbeddingStore(FocSAMPredictor(model), ImageSource(str(stack)).volume(), cache_dir=cache,
                           max_memory_bytes=0)
    computed = store.precompute()
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"computed": computed, "seconds": seconds, "worker_max_rss_mb": [round(rss, 1)]}


def _cluster(stack: Path, cache: Path, workers: int) -> dict:
    from napari_focsam.core.cluster import ImageSource, connect, precompute_distributed

    with connect(workers=workers) as client:
        # warm the workers (model load) outside the timing, as a long run amortises it
        client.run(lambda: __import__("napari_focsam.core.models", fromlist=["load_model"]).load_model("vit_t", "cpu"))
        info = precompute_distributed(client, ImageSource(str(stack)), cache, model="vit_t", progress=False)
    return info


def _scheduler_demo(folder: Path) -> None:
    stack = _stack(60, folder)
    dask_cli = str(Path(sys.executable).with_name("dask"))
    sched_file = folder / "scheduler.json"
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                               ":0", "--scheduler-file", str(sched_file)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        while not sched_file.is_file():
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        for _ in range(2):
            procs.append(subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1", "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env=dict(os.environ, OMP_NUM_THREADS=threads)))
        cache = folder / "sched-cache"
        cmd = [sys.executable, "-m", "napari_focsam.cli", "precompute", str(stack), "--cache", str(cache),
               "--scheduler", address, "--no-progress"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"scheduler + 2 workers: {out}")
    finally:
        for p in procs[::-1]:
            p.terminate()
    cmd = [sys.executable, "-m", "napari_focsam.cli", "precompute", str(stack), "--cache", str(cache), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    print(f"single process afterwards: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the single process")
    ap.add_argument("--scheduler-demo", action="store_true")
    ap.add_argument("--demo-only", action="store_true", help="only the scheduler demo")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.demo_only:
            _scheduler_demo(folder)
            return
        stack = _stack(args.slices, folder)
        print(f"{args.slices} slices of 256x256 (cells3d), vit_t, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        base = _single(stack, folder / "single", args.threads)
        base_rate = base["computed"] / base["seconds"]
        print(f"{'mode':<14}{'slices/s':>10}{'ratio':>8}{'seconds':>9}  worker peak RSS (MB)")
        print(f"{'1 process':<14}{base_rate:>10.3f}{1.0:>8.2f}{base['seconds']:>9.1f}  {base['worker_max_rss_mb']}")
        for n in args.workers:
            info = _cluster(stack, folder / f"w{n}", n)
            rate = info["computed"] / info["seconds"]
            print(f"{f'--workers {n}':<14}{rate:>10.3f}{rate / base_rate:>8.2f}{info['seconds']:>9.1f}  "
                  f"{info['worker_max_rss_mb']}")
        if args.scheduler_demo:
            _scheduler_demo(folder)


if __name__ == "__main__":
    main()
