"""Zoom on small objects: the time of a first and a second click, and their IoU, against the whole image.

    OMP_NUM_THREADS=1 python benchmarks/bench_zoom.py [--data-root ../shared/data]
        [--sets vnc_neurites_val,vnc_mito_val] [--objects 24] [--threads 1] [--repeats 2]

For each object of the microscopy benchmark's splits (``bench_microscopy.py``), the protocol's
first click and a second click (at the centre of the larger error region of the first mask)
are decoded twice, interleaved: by the engine's plain click loop on the whole image's cached
embedding (:class:`~napari_focsam.core.prompting.InteractiveObject`, the baseline) and by
:class:`~napari_focsam.core.prompting.ZoomedObject` (the product's default on 2D images: a small
object is decoded on a crop the encoder sees enlarged). Prints, per set, the medians of the
first and second click's time (a zoomed first click includes encoding its crop, a fresh object
each repeat), the ratio zoom / whole, the share of objects zoomed and the mean IoU after each
click. ``--figure PNG`` draws the first-click masks of the first zoomed objects of each set
(ground truth white, whole image orange, zoomed crop cyan).

``--mosaic``: the set's images (the VNC validation slices: four of 1024 x 1024) put side by side
in a 2 x 2 mosaic, a large image the product tiles; the 10-click protocol on the same objects
(moved into their quadrant) through the tiled session (``evaluation.tiled.LargeImageAdapter``),
with zoom off and on: NoC@85/90 and the mean IoU per click.

``--shown-small``: the set's objects shown smaller on the encoder's canvas: its first two images
side by side (the two yeast validation frames, 520 x 1384: cells about 16 canvas pixels across
instead of 33), or one image and its three mirror images in 2 x 2 (the stardist half, 1024 x 512);
the 10-click protocol on that plane image (not tiled), zoom off and on: NoC@85/90 and the mean IoU
per click.

``--widget``: the dock in a real viewer (an Xvfb display is started when none is set) on a
drawn 1024 x 1024 EM-like image with small cells (radius 12-15, dark membranes): per cell, a new
object and one click (the prompts layer's data), zoom off for every cell, then on; printed: the
median time from the click to the first mask shown (with zoom, the whole image's mask shown
while the crop is encoded) and to the final mask, for a cell whose crop must be encoded and for
a neighbour that reuses it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bench_microscopy  # noqa: F401 (registers the microscopy splits in bench_refine_policy.SETS)
import bench_refine_policy as brp

REPO = Path(__file__).resolve().parents[1]


def run_set(set_name: str, predictor, root, cache, repeats: int, log, shots: list | None = None) -> dict:
    from napari_focsam.core.prompting import InteractiveObject, ZoomedObject
    from napari_focsam.evaluation.clicker import next_click
    from napari_focsam.evaluation.datasets import to_rgb_uint8
    from napari_focsam.evaluation.metrics import iou
    from napari_focsam.evaluation.runner import PredictorAdapter

    adapter = PredictorAdapter(predictor, cache_dir=cache)
    times = {"whole": ([], []), "zoom": ([], [])}
    ious = {"whole": ([], []), "zoom": ([], [])}
    zoomed = 0
    for sample in brp.make_dataset(set_name, root):
        image = sample.load_image()
        adapter.set_image(image)
        emb = adapter.embedding
        rgb = to_rgb_uint8(image)  # the crops: one intensity mapping with the whole image
        for ob in sample.objects:
            gt = np.asarray(ob.gt, bool)
            first = next_click(gt, np.zeros_like(gt), ob.ignore, [])
            for r in range(repeats):
                order = ("whole", "zoom") if r % 2 == 0 else ("zoom", "whole")
                got = {}
                for name in order:
                    obj = (InteractiveObject(predictor, emb) if name == "whole"
                           else ZoomedObject(predictor, emb, lambda y0, y1, x0, x1: rgb[y0:y1, x0:x1]))
                    t0 = time.perf_counter()
                    m1 = obj.add(first).mask
                    t1 = time.perf_counter()
                    second = next_click(gt, m1, ob.ignore, [first])
                    m2 = obj.add(second).mask
                    t2 = time.perf_counter()
                    times[name][0].append(t1 - t0)
                    times[name][1].append(t2 - t1)
                    got[name] = (m1, iou(gt, m1, ob.ignore), iou(gt, m2, ob.ignore),
                                 getattr(obj, "windows", [None])[0])
                if r == 0:
                    for name in got:
                        ious[name][0].append(got[name][1])
                        ious[name][1].append(got[name][2])
                    zoomed += got["zoom"][3] is not None
                    if shots is not None and got["zoom"][3] is not None:
                        shots.append((set_name, rgb, gt, first, *got["zoom"][:2], *got["whole"][:2]))
    n = len(ious["whole"][0])
    out = {"n": n, "zoomed": zoomed}
    for name in times:
        out[name] = {"first_ms": 1e3 * statistics.median(times[name][0]),
                     "second_ms": 1e3 * statistics.median(times[name][1]),
                     "iou": [float(np.mean(ious[name][0])), float(np.mean(ious[name][1]))]}
    w, z = out["whole"], out["zoom"]
    log(f"{set_name:18s} n={n:3d} zoomed {zoomed:3d} | first click {w['first_ms']:7.1f} -> {z['first_ms']:7.1f} ms "
        f"(x{z['first_ms'] / w['first_ms']:.2f}) | second {w['second_ms']:6.1f} -> {z['second_ms']:6.1f} ms "
        f"(x{z['second_ms'] / w['second_ms']:.2f}) | IoU after 1 / 2 clicks {w['iou'][0]:.3f} / {w['iou'][1]:.3f} "
        f"-> {z['iou'][0]:.3f} / {z['iou'][1]:.3f}")
    return out


def draw(shots: list, path: str, per_set: int = 4) -> None:
    """Crops around the first zoomed objects of each set: truth, whole-image and zoomed masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(s[0] for s in shots))
    fig, axes = plt.subplots(len(sets), per_set, figsize=(2.6 * per_set, 2.8 * len(sets)), squeeze=False)
    for i, name in enumerate(sets):
        rows = [s for s in shots if s[0] == name][:per_set]
        for ax, (_, rgb, gt, click, mz, iz, mw, iw) in zip(axes[i], rows):
            ys, xs = np.nonzero(gt | mz | mw)
            y0, y1 = max(0, ys.min() - 25), min(gt.shape[0], ys.max() + 25)
            x0, x1 = max(0, xs.min() - 25), min(gt.shape[1], xs.max() + 25)
            ax.imshow(rgb[y0:y1, x0:x1])
            for m, colour in ((gt, "white"), (mw, "tab:orange"), (mz, "cyan")):
                ax.contour(m[y0:y1, x0:x1], levels=[0.5], colors=colour, linewidths=1.0)
            ax.plot(click.x - x0, click.y - y0, "g+", ms=9, mew=2)
            ax.set_title(f"{name[:12]}: whole {iw:.2f}, zoom {iz:.2f}", fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle("first click: truth white, whole image orange, zoomed crop cyan", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def side_by_side(pieces: list, grid: tuple[int, int]) -> tuple[np.ndarray, list]:
    """Images of one size and their objects ``[(image, objects), ...]`` placed row by row on a
    ``grid`` (rows, columns): the large image and the objects moved into their places."""
    from napari_focsam.evaluation.datasets import EvalObject

    h, w = pieces[0][0].shape[:2]
    big = np.zeros((grid[0] * h, grid[1] * w) + pieces[0][0].shape[2:], pieces[0][0].dtype)
    objects = []
    for k, (img, objs) in enumerate(pieces):
        oy, ox = (k // grid[1]) * h, (k % grid[1]) * w
        big[oy:oy + h, ox:ox + w] = img
        for ob in objs:
            gt = np.zeros(big.shape[:2], bool)
            gt[oy:oy + h, ox:ox + w] = ob.gt
            ign = None
            if ob.ignore is not None:
                ign = np.zeros(big.shape[:2], bool)
                ign[oy:oy + h, ox:ox + w] = ob.ignore
            objects.append(EvalObject(gt, ign, ob.object_id))
    return big, objects


def mosaic_protocol(set_name: str, predictor, root, log, max_clicks: int = 10) -> None:
    """The click protocol on a 2 x 2 mosaic of the set's images, tiled, zoom off and on."""
    from napari_focsam.evaluation.datasets import EvalSample
    from napari_focsam.evaluation.protocol import evaluate_dataset
    from napari_focsam.evaluation.runner import PredictorAdapter
    from napari_focsam.evaluation.tiled import LargeImageAdapter

    samples = list(brp.make_dataset(set_name, root))[:4]
    big, objects = side_by_side([(s.load_image(), s.objects) for s in samples], (2, 2))
    sample = EvalSample("mosaic", Path("mosaic"), objects, loader=lambda: big)
    for zoom in (False, True):
        adapter = LargeImageAdapter(PredictorAdapter(predictor, zoom=zoom))
        t0 = time.perf_counter()
        _, summary = evaluate_dataset([sample], adapter, max_clicks)
        miou = " ".join(f"{v:.3f}" for v in summary["miou"][:max_clicks])
        log(f"{set_name} 2x2 mosaic {big.shape[0]}x{big.shape[1]} (tiled {adapter.stats['tiled_images']}), "
            f"zoom {'on ' if zoom else 'off'}: n={summary['n_objects']} NoC@85 {summary['noc85']:.2f} "
            f"NoC@90 {summary['noc90']:.2f} mIoU {miou} ({time.perf_counter() - t0:.0f} s)")


def shown_small(set_name: str, predictor, root, log, max_clicks: int = 10) -> None:
    """The click protocol where the set's objects are shown smaller on the encoder's canvas: its
    first two images side by side (one image: it and its three mirror images in 2 x 2), a plane
    image (not tiled), zoom off and on."""
    from napari_focsam.evaluation.datasets import EvalObject, EvalSample
    from napari_focsam.evaluation.protocol import evaluate_dataset
    from napari_focsam.evaluation.runner import PredictorAdapter

    samples = list(brp.make_dataset(set_name, root))
    if len(samples) >= 2:
        pieces, grid = [(s.load_image(), s.objects) for s in samples[:2]], (1, 2)
    else:
        flips = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]]
        img = samples[0].load_image()
        pieces = [(np.ascontiguousarray(f(img)), [
            EvalObject(np.ascontiguousarray(f(np.asarray(o.gt))), None if o.ignore is None
                       else np.ascontiguousarray(f(np.asarray(o.ignore))), o.object_id) for o in samples[0].objects])
            for f in flips]
        grid = (2, 2)
    h, w = pieces[0][0].shape[:2]
    big, objects = side_by_side(pieces, grid)
    sample = EvalSample("shown-small", Path("shown-small"), objects, loader=lambda: big)
    for zoom in (False, True):
        t0 = time.perf_counter()
        _, summary = evaluate_dataset([sample], PredictorAdapter(predictor, zoom=zoom), max_clicks)
        miou = " ".join(f"{v:.3f}" for v in summary["miou"][:max_clicks])
        log(f"{set_name} {grid[0]} x {grid[1]} {big.shape[0]}x{big.shape[1]} (canvas {1024 / max(big.shape[:2]):.2f}x"
            f" against {1024 / max(h, w):.2f}x), zoom {'on ' if zoom else 'off'}: n={summary['n_objects']} NoC@85 "
            f"{summary['noc85']:.2f} NoC@90 {summary['noc90']:.2f} mIoU {miou} ({time.perf_counter() - t0:.0f} s)")


def em_like_cells(n: int = 1024) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A drawn EM-like image: pairs of small bright cells with dark membranes on grey noise, one
    pair near the centre of each quadrant (the second cell of a pair shares the first's crop)."""
    rng = np.random.default_rng(3)
    img = 90 + 12 * rng.standard_normal((n, n))
    yy, xx = np.ogrid[:n, :n]
    centres = []
    for qy in (n // 4, 3 * n // 4):
        for qx in (n // 4, 3 * n // 4):
            for dy, dx, r in ((0, 0, 14), (30, 36, 12)):
                cy, cx = qy + dy, qx + dx
                d = np.hypot(yy - cy, xx - cx)
                img[(d > r) & (d <= r + 2)] = 25
                img[d <= r] = 185
                centres.append((cy, cx))
    return np.clip(img, 0, 255).astype(np.uint8), centres


def widget_clicks(threads: int, log) -> None:
    """Click-to-mask in the dock, zoom off then on (see the module docs)."""
    from bench_widget import ensure_display, wait as wait_app

    xvfb = ensure_display()
    import napari
    from qtpy.QtWidgets import QApplication

    image, centres = em_like_cells()
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="em-like")
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    app = QApplication.instance()
    widget.threads_spin.setValue(threads)

    def wait(cond) -> None:
        wait_app(app, cond)

    wait(lambda: widget.is_ready and not widget.is_busy())
    shown: list[float] = []
    widget.jobs.zoom_preview.connect(lambda *_: shown.append(time.perf_counter()))
    for zoom in (False, True):
        widget.zoom_check.setChecked(zoom)
        wait(lambda: not widget.is_busy())
        rows = {"own crop": ([], []), "shared crop": ([], [])}
        for i, (cy, cx) in enumerate(centres):
            widget.clear()
            wait(lambda: not widget.is_busy())
            shown.clear()
            t0 = time.perf_counter()
            widget.prompts_layer.data = np.array([[cy, cx]], float)
            wait(lambda: not widget.is_busy() and widget.current_mask is not None and widget.current_mask.any())
            t1 = time.perf_counter()
            kind = "own crop" if i % 2 == 0 else "shared crop"
            rows[kind][0].append(1e3 * ((shown[0] if shown else t1) - t0))
            rows[kind][1].append(1e3 * (t1 - t0))
        for kind, (first, final) in rows.items():
            log(f"dock, {threads} thread(s), zoom {'on ' if zoom else 'off'}, {kind:11s}: first mask shown "
                f"{statistics.median(first):6.0f} ms, final {statistics.median(final):6.0f} ms "
                f"(medians of {len(final)} cells)")
    widget.close_session()
    viewer.close()
    if xvfb is not None:
        xvfb.terminate()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("FOCSAM_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--sets", default="vnc_neurites_val,vnc_mito_val")
    p.add_argument("--objects", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache", default=str(REPO / "results" / "embedding_cache"))
    p.add_argument("--figure", default=None, metavar="PNG", help="draw the first zoomed objects' first clicks")
    p.add_argument("--mosaic", action="store_true", help="only the click protocol on a tiled 2 x 2 mosaic")
    p.add_argument("--widget", action="store_true", help="only click-to-mask in the dock, zoom off and on")
    p.add_argument("--shown-small", action="store_true",
                   help="only the click protocol on the sets' images side by side (objects smaller on the canvas)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.widget:
        widget_clicks(args.threads, lambda *a: print(*a, flush=True))
        return 0
    root = Path(args.data_root)
    if not root.is_dir():
        print(f"no data at {root}: pass --data-root")
        return 1
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    for k, (ds, images, _n, seed) in list(brp.SETS.items()):
        brp.SETS[k] = (ds, images, args.objects, seed)
    predictor = FocSAMPredictor(load_model(device="cpu"))
    if args.mosaic:
        for set_name in args.sets.split(","):
            mosaic_protocol(set_name, predictor, root, lambda *a: print(*a, flush=True))
        return 0
    if args.shown_small:
        for set_name in args.sets.split(","):
            shown_small(set_name, predictor, root, lambda *a: print(*a, flush=True))
        return 0
    shots = [] if args.figure else None
    for set_name in args.sets.split(","):
        run_set(set_name, predictor, root, args.cache, args.repeats, lambda *a: print(*a, flush=True), shots)
    if args.figure:
        draw(shots, args.figure)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
