"""Engine time of a first (refine) click and of a later click, this build against today's, per click.

    python benchmarks/bench_later_clicks.py [--threads 1,2] [--objects 12] [--later 3]

On the nuclei of the 2D sample (``focsam_t``, the default predictor), every object gets a first
click at its deepest pixel and ``--later`` clicks at random pixels of the object. Every later
click is run twice on the same state, once by this build (the ``steady`` rule's two decoder
passes in one batched call, :meth:`FocSAM.decode_pair`) and once by today's (the two passes one
after the other, the prompt encoded twice), in alternating order; the script prints the medians
(wall and process CPU), their ratio, the 95th percentiles, and whether the two masks were
identical. The first click is the same code in both builds (timed once per object). Without the
widget's preview and event loop: ``bench_widget.py`` times those.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def sequential(model):
    """Today's pair: two :meth:`FocSAM.decode` calls."""
    def decode_pair(first, second, points, labels, mask_input=None):
        return model.decode(first, points, labels, mask_input), model.decode(second, points, labels, mask_input)
    return decode_pair


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--objects", type=int, default=12)
    ap.add_argument("--later", type=int, default=3)
    args = ap.parse_args(argv)
    import torch
    from scipy import ndimage as ndi

    from napari_focsam._sample_data import load_nuclei
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import Click, FocSAMPredictor

    image, gt = load_nuclei("2d")
    model = load_model("focsam_t", "cpu")
    pred = FocSAMPredictor(model)
    emb = pred.embed(image)
    batched, today = model.decode_pair, sequential(model)
    ids = [i for i in np.unique(gt) if i and (gt == i).sum() > 150]
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        rng = np.random.default_rng(0)
        first, new, old, same = [], [], [], True
        for k in range(args.objects):
            obj = gt == ids[rng.integers(len(ids))]
            dist = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
            clicks = [Click(float(y), float(x), True)]
            t0, c0 = time.perf_counter(), time.process_time()
            res = pred.step(emb, clicks)
            first.append((time.perf_counter() - t0, time.process_time() - c0))
            ys, xs = np.nonzero(obj)
            for j in range(args.later):
                i = rng.integers(len(ys))
                clicks = clicks + [Click(float(ys[i]), float(xs[i]), bool(rng.random() < 0.8))]
                out = {}
                for build in (("new", "today") if (k + j) % 2 == 0 else ("today", "new")):
                    model.decode_pair = batched if build == "new" else today
                    t0, c0 = time.perf_counter(), time.process_time()
                    out[build] = pred.step(emb, clicks, res.logits, res.refined)
                    (new if build == "new" else old).append((time.perf_counter() - t0, time.process_time() - c0))
                model.decode_pair = batched
                same &= bool(np.array_equal(out["new"].mask, out["today"].mask))
                res = out["new"]
        med = lambda v, i: 1000 * statistics.median(x[i] for x in v)
        p95 = lambda v: 1000 * float(np.percentile([x[0] for x in v], 95))
        print(f"threads {threads}, load {os.getloadavg()[0]:.1f}: first click median {med(first, 0):.0f} ms "
              f"(p95 {p95(first):.0f}); later click this build {med(new, 0):.0f} ms (p95 {p95(new):.0f}, cpu "
              f"{med(new, 1):.0f}), today {med(old, 0):.0f} ms (p95 {p95(old):.0f}, cpu {med(old, 1):.0f}); ratio "
              f"wall {med(new, 0) / med(old, 0):.2f}, cpu {med(new, 1) / med(old, 1):.2f}; {len(new)} later clicks, "
              f"masks {'identical' if same else 'DIFFERENT'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
