"""Speed of the interactive engine: click latency, embedding throughput, propagation, memory.

    python benchmarks/bench_engine.py [--data-root ../shared/data] [--model vit_t] [--quick]

1. click-to-mask latency with a cached embedding on a 1024x1024 2D image (cells3d slice 30
   enlarged 4x): ``SegmentedObject.add_click`` (store lookup, float16 -> float32, decoder, mask
   at full resolution) against the baseline ``FocSAMPredictor.step`` on a float32 embedding held
   by the caller; median, 95th percentile and ratio; also the widget's ``set_clicks`` path;
2. float16 vs float32 embeddings: IoU between the masks of the same clicks;
3. embedding throughput (slices/s) for 256x256, 512x512 and 1024x1024 slices;
4. propagation time through the 60-slice cells3d volume once its embeddings are cached;
5. peak memory (max RSS) and the store's memory use.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def pct(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def load_cells3d(root: Path):
    import tifffile

    img = root / "micro" / "cells3d" / "cells3d_nuclei.tif"
    if not img.is_file():
        return None, None
    return tifffile.imread(img), tifffile.imread(root / "micro" / "cells3d" / "cells3d_nuclei_label.tif")


def click_plan(labels2d: np.ndarray | None, size: int, n: int, rng) -> list[list[tuple[float, float, bool]]]:
    """n clicks as objects of 3 clicks: a positive at a nucleus centre (or random), then 2 random."""
    from scipy import ndimage as ndi

    objects = []
    ids = [int(i) for i in np.unique(labels2d) if i] if labels2d is not None else []
    while sum(len(o) for o in objects) < n:
        if ids:
            i = ids[len(objects) % len(ids)]
            dist = ndi.distance_transform_edt(labels2d == i)
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        else:
            y, x = rng.integers(0, size, 2)
        clicks = [(float(y), float(x), True)]
        for _ in range(2):
            clicks.append((float(rng.integers(0, size)), float(rng.integers(0, size)), bool(rng.integers(0, 2))))
        objects.append(clicks)
    return objects


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--model", default="vit_t")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clicks", type=int, default=30)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "napari-focsam-bench-cache"),
                   help="disk cache for the cells3d embeddings (shared with bench_volume_quality.py)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)

    import torch

    from napari_focsam.core.embeddings import EmbeddingStore
    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import Click
    from napari_focsam.core.session import Session

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    rng = np.random.default_rng(0)
    model = load_model(args.model, args.device)
    print(f"model {model.model_type} on {model.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    stack, labels = load_cells3d(root)
    n_clicks = 10 if args.quick else args.clicks

    # 1. click latency on a 1024x1024 image
    if stack is not None:
        img = np.kron(stack[30], np.ones((4, 4), stack.dtype))
        lab = np.kron(labels[30], np.ones((4, 4), labels.dtype))
    else:
        img = (rng.random((1024, 1024)) * 1000).astype(np.uint16)
        lab = None
    session = Session(ImageVolume(img), model)
    t0 = time.perf_counter()
    session.store.get(0)
    t_embed = time.perf_counter() - t0
    plan = click_plan(lab, 1024, n_clicks, rng)
    for clicks in plan[:1]:  # warm-up
        o = session.new_object()
        o.add_click(*clicks[0])
    engine, widget, baseline, agree = [], [], [], []
    emb32 = session.predictor.embed(img)  # float32, held by the caller: the baseline path
    for clicks in plan:
        obj = session.new_object()
        wobj = session.new_object()
        prev = None
        done = []
        for y, x, pos in clicks:
            t = time.perf_counter()
            m = obj.add_click(y, x, pos)
            engine.append(time.perf_counter() - t)
            done.append((0, y, x, pos))
            t = time.perf_counter()
            wobj.set_clicks(done)
            widget.append(time.perf_counter() - t)
            cl = [Click(c[1], c[2], c[3]) for c in done]
            t = time.perf_counter()
            res = session.predictor.step(emb32, cl, prev.logits if prev else None, prev.refined if prev else None)
            baseline.append(time.perf_counter() - t)
            prev = res
            inter, union = np.count_nonzero(m & res.mask), np.count_nonzero(m | res.mask)
            agree.append(inter / union if union else 1.0)
    print(f"\n1. click-to-mask latency, 1024x1024 2D, cached embedding, {len(engine)} clicks "
          f"(embedding itself: {t_embed:.2f} s)")
    print(f"   engine  add_click : median {pct(engine, 50):7.1f} ms, p95 {pct(engine, 95):7.1f} ms")
    print(f"   widget  set_clicks: median {pct(widget, 50):7.1f} ms, p95 {pct(widget, 95):7.1f} ms")
    print(f"   baseline step     : median {pct(baseline, 50):7.1f} ms, p95 {pct(baseline, 95):7.1f} ms")
    print(f"   ratio engine/baseline: median {pct(engine, 50) / pct(baseline, 50):.2f}, "
          f"p95 {pct(engine, 95) / pct(baseline, 95):.2f}")
    print(f"\n2. float16 (store) vs float32 embedding, same clicks: mask IoU min {min(agree):.4f}, "
          f"mean {np.mean(agree):.5f}, identical masks {np.mean(np.array(agree) == 1.0) * 100:.0f} %")

    # 3. embedding throughput
    print("\n3. embedding throughput (memory-only store, encoder input is always 1024x1024)")
    n_slices = 2 if args.quick else 4
    for size in (256, 512, 1024):
        data = (rng.random((n_slices, size, size)) * 1000).astype(np.uint16)
        if stack is not None:
            reps = size // 256
            data = np.stack([np.kron(stack[20 + i], np.ones((reps, reps), stack.dtype)) for i in range(n_slices)])
        store = EmbeddingStore(session.predictor, ImageVolume(data))
        t = time.perf_counter()
        store.precompute()
        dt = time.perf_counter() - t
        print(f"   {size:4d}x{size:<4d}: {n_slices / dt:.3f} slices/s ({dt / n_slices:.2f} s/slice)", flush=True)

    # 4. propagation through cells3d
    if stack is not None:
        vol = ImageVolume(stack)
        s3 = Session(vol, model, cache_dir=args.cache)
        t = time.perf_counter()
        computed = s3.store.precompute()
        print(f"\n4. cells3d {stack.shape}: embeddings cached in {args.cache} "
              f"({computed} computed now, {time.perf_counter() - t:.1f} s)")
        from scipy import ndimage as ndi

        gt = labels == 4  # the nucleus with the longest z extent (17..59)
        zs = np.flatnonzero(gt.any(axis=(1, 2)))
        z = int((zs[0] + zs[-1]) // 2)
        dist = ndi.distance_transform_edt(gt[z])
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        from napari_focsam.core.defaults import DEFAULT_IOU_THRESHOLD
        from napari_focsam.core.propagation import next_slice

        for thr in (0.0, DEFAULT_IOU_THRESHOLD):
            obj = s3.new_object()
            obj.add_click(y, x, z=z)
            res = obj.propagate(iou_threshold=thr)
            n = len(res.masks) - 1
            print(f"   iou_threshold {thr}: {res.seconds:.2f} s for {n} propagated slices "
                  f"({1000 * res.seconds / max(n, 1):.0f} ms/slice), z_range {res.z_range}, "
                  f"stopped {res.stopped_reason}")
        obj = s3.new_object()
        obj.add_click(y, x, z=z)
        t = time.perf_counter()
        visited = 0
        for zz in range(vol.n_slices):  # the raw per-slice cost over all 60 slices
            emb = s3.store.get(zz)
            next_slice(s3.predictor, emb, obj.mask(z), obj.logits(z))
            visited += 1
        dt = time.perf_counter() - t
        print(f"   all {visited} slices, one propagation step each: {dt:.2f} s ({1000 * dt / visited:.0f} ms/slice)")
        print(f"   store memory: {s3.store.memory_bytes / 2**20:.0f} MiB for {len(s3.store.in_memory())} slices "
              "(float16)")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n5. peak memory (max RSS) {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
