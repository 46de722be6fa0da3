"""The headless demo behind ``napari-focsam demo`` (:mod:`napari_focsam.cli.demo`): one click per
well separated nucleus of the 2D sample, IoU against its ground truth, an overlay PNG."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .core.defaults import DEFAULT_MODEL
from .core.propagation import interior_point


def pick_separated_objects(labels: np.ndarray, n: int, min_gap: int = 3) -> list[int]:
    """Ids of up to ``n`` labelled objects (largest first) that no other label touches within ``min_gap`` px."""
    from scipy import ndimage as ndi

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    chosen = []
    for i in ids[np.argsort(-counts)]:
        obj = labels == i
        ring = ndi.binary_dilation(obj, iterations=min_gap) & ~obj
        if not np.any(labels[ring] > 0) and obj.sum() >= 50:
            chosen.append(int(i))
        if len(chosen) == n:
            break
    return chosen


def run_demo(model: str = DEFAULT_MODEL, n_objects: int = 5, out: str | Path = "focsam-demo", device: str = "auto") -> dict:
    """Segment well separated nuclei of the 2D sample with one click each; IoU vs ground truth."""
    from ._sample_data import load_nuclei
    from .core.models import load_model
    from .core.prompting import Click, FocSAMPredictor, InteractiveObject
    from .evaluation.metrics import iou

    image, gt = load_nuclei("2d")
    t0 = time.perf_counter()
    predictor = FocSAMPredictor(load_model(model, device))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = predictor.embed(image)
    t_embed = time.perf_counter() - t0
    rows, result = [], np.zeros(gt.shape, np.uint16)
    for k, label in enumerate(pick_separated_objects(gt, n_objects), start=1):
        y, x = interior_point(gt == label)
        obj = InteractiveObject(predictor, emb)
        step = obj.add(Click(y, x, True))
        result[step.mask & (result == 0)] = k
        rows.append({"label": label, "click": [y, x], "iou": round(iou(gt == label, step.mask), 3),
                     "ms": round(1000 * (step.decoder_seconds + step.refine_seconds), 1)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save_overlay(image, result, [r["click"] for r in rows], out / "demo_overlay.png")
    summary = {"model": predictor.model.model_type, "image": list(image.shape), "load_seconds": round(t_load, 2),
               "embedding_seconds": round(t_embed, 2), "objects": rows,
               "mean_iou": round(float(np.mean([r["iou"] for r in rows])), 3) if rows else None,
               "overlay": str(out / "demo_overlay.png")}
    return summary


def _save_overlay(image: np.ndarray, labels: np.ndarray, clicks, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .core.images import to_rgb_uint8

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(to_rgb_uint8(image))
    ax.imshow(np.ma.masked_equal(labels, 0), cmap="tab10", vmin=0, vmax=10, alpha=0.45, interpolation="nearest")
    for y, x in clicks:
        ax.plot(x, y, "o", ms=6, mfc="lime", mec="black")
    ax.set_axis_off()
    fig.savefig(path)
