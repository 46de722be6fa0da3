"""Cost of the once-per-process SHA-256 check of a cached weights file.

Times :func:`napari_focsam.core.hashing.sha256_file` and a first ``resolve_weights``
in a "new process" (the process memo cleared) on the cached default model, and
extrapolates to the 2.56 GB ViT-H files at the measured rate.  The file is read
from the page cache after the first run; a cold disk read adds the disk's time.

    python benchmarks/bench_weights_hash.py [--runs 5] [--name vit_t]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--name", default="vit_t", help="registry name of a cached model")
    args = p.parse_args()

    from napari_focsam.core.hashing import sha256_file
    from napari_focsam.core.models import weights as W

    path = W.resolve_weights(args.name)  # fetch if needed (and warm the page cache)
    size = path.stat().st_size
    hashes, resolves = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        sha256_file(path)
        hashes.append(time.perf_counter() - t)
        W.forget_verified()
        t = time.perf_counter()
        W.resolve_weights(args.name)
        resolves.append(time.perf_counter() - t)
    t = time.perf_counter()
    W.resolve_weights(args.name)  # verified in this process: no hash
    again = time.perf_counter() - t
    h, r = statistics.median(hashes), statistics.median(resolves)
    rate = size / h
    vit_h = W.get_weights("vit_h").size
    print(f"{args.name}: {path} ({size / 1e6:.1f} MB)")
    print(f"sha256_file: median {h * 1e3:.0f} ms of {args.runs} runs "
          f"({', '.join(f'{x * 1e3:.0f}' for x in hashes)} ms) = {rate / 1e6:.0f} MB/s")
    print(f"first resolve in a process: median {r * 1e3:.0f} ms; later resolves: {again * 1e3:.2f} ms")
    print(f"ViT-H ({vit_h / 1e9:.2f} GB) at this rate: about {vit_h / rate:.1f} s once per process")


if __name__ == "__main__":
    main()
