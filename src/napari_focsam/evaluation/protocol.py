"""The 20-click benchmark loop and the writing of its results.

:func:`run_object` runs the protocol of ``../shared/design/focsam.md`` §5.2 on one object with a
caller-supplied ``predict(clicks) -> (H, W) bool mask``: the first prediction is all zeros; each
step simulates the next click from ``(gt, last prediction)`` with :func:`.clicker.next_click`,
calls ``predict`` with all clicks so far, and records the IoU. The predictor keeps its own
per-object state (previous logits, refined embedding) and timings.

:func:`evaluate_dataset` drives a predictor over an :class:`.datasets.EvalDataset`, setting each
image once for all its objects. :func:`write_results` writes ``per_object_ious.json``,
``summary.json``, ``summary.csv`` and ``miou_curve.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .clicker import DEFAULT_SEED, Click, next_click
from .metrics import DEFAULT_MAX_CLICKS, iou, summarize

__all__ = [
    "evaluate_dataset",
    "plot_miou_curves",
    "run_object",
    "summary_row",
    "write_results",
]


def run_object(
    predict: Callable[[list[Click]], np.ndarray],
    gt,
    ignore=None,
    max_clicks: int = DEFAULT_MAX_CLICKS,
    *,
    stop_iou: float | None = None,
    seed: int = DEFAULT_SEED,
) -> tuple[list[float], list[Click]]:
    """Run up to ``max_clicks`` simulated clicks on one object.

    Returns ``(ious, clicks)``: ``ious[i]`` is the IoU after click ``i + 1``. By default all
    ``max_clicks`` clicks are made (as in the paper); with ``stop_iou`` the loop stops after the
    first IoU >= ``stop_iou``. When the prediction becomes perfect (no error pixel left) no more
    clicks are made and the last IoU is repeated up to ``max_clicks`` entries, so ``clicks`` may
    be shorter than ``ious``. ``predict`` receives a new list each call.
    """
    gt = np.asarray(gt, dtype=bool)
    ign = None if ignore is None else np.asarray(ignore, dtype=bool)
    pred = np.zeros(gt.shape, dtype=bool)
    clicks: list[Click] = []
    ious: list[float] = []
    for _ in range(max_clicks):
        click = next_click(gt, pred, ign, clicks, seed=seed)
        if click is None:
            last = ious[-1] if ious else iou(gt, pred, ign)
            ious.extend([last] * (max_clicks - len(ious)))
            break
        clicks.append(click)
        out = np.asarray(predict(list(clicks)))
        if out.shape != gt.shape:
            raise ValueError(f"predict returned shape {out.shape}, expected {gt.shape}")
        pred = out.astype(bool, copy=False)
        ious.append(iou(gt, pred, ign))
        if stop_iou is not None and ious[-1] >= stop_iou:
            break
    return ious, clicks


def evaluate_dataset(
    dataset,
    predictor,
    max_clicks: int = DEFAULT_MAX_CLICKS,
    *,
    stop_iou: float | None = None,
    seed: int = DEFAULT_SEED,
    progress: Callable[[int, str], None] | None = None,
) -> tuple[list[dict], dict]:
    """Evaluate ``predictor`` on every object of ``dataset`` (iterable of ``EvalSample``).

    ``predictor`` is duck-typed: ``set_image(image)`` is called once per image (the embedding is
    computed there), ``reset()`` (optional) before each object, ``predict(clicks) -> mask`` per
    click; its optional ``timings`` attribute (a :class:`.metrics.Timings` or a mapping of total
    seconds per component, read after the run) feeds the seconds-per-click summary.
    ``progress(n_done, object_id)`` is called after each object.

    Returns ``(per_object, summary)`` where each per-object dict has ``image_id``,
    ``object_id``, ``ious`` and ``clicks`` (``[y, x, is_positive]`` lists).
    """
    per_object: list[dict] = []
    for sample in dataset:
        predictor.set_image(sample.load_image())
        for obj in sample.objects:
            if hasattr(predictor, "reset"):
                predictor.reset()
            ious, clicks = run_object(
                predictor.predict, obj.gt, obj.ignore, max_clicks, stop_iou=stop_iou, seed=seed
            )
            per_object.append(
                {
                    "image_id": sample.image_id,
                    "object_id": obj.object_id,
                    "ious": [float(v) for v in ious],
                    "clicks": [c.as_list() for c in clicks],
                }
            )
            if progress is not None:
                progress(len(per_object), obj.object_id)
    timings = getattr(predictor, "timings", None)
    n_clicks = sum(len(o["clicks"]) for o in per_object)
    summary = summarize([o["ious"] for o in per_object], timings, max_clicks, n_clicks=n_clicks)
    return per_object, summary


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Click):
        return obj.as_list()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if math.isnan(v) else v
    if isinstance(obj, Path):
        return str(obj)
    return obj


def summary_row(summary: Mapping) -> dict:
    """Flatten a summary into one CSV row: scalars as they are, ``spc`` as ``spc_<part>``, the
    mIoU curve as ``miou_01`` .. ``miou_NN``; other nested values are left out."""
    row: dict = {}
    for k, v in summary.items():
        if k == "miou" and isinstance(v, Sequence):
            for i, m in enumerate(v, start=1):
                row[f"miou_{i:02d}"] = _jsonable(m)
        elif isinstance(v, Mapping):
            for kk, vv in v.items():
                if isinstance(vv, (int, float, np.integer, np.floating, str, bool)):
                    row[f"{k}_{kk}"] = _jsonable(vv)
        elif isinstance(v, (int, float, np.integer, np.floating, str, bool)) or v is None:
            row[k] = _jsonable(v)
    # text columns first, the curve columns last
    text = {k: v for k, v in row.items() if isinstance(v, str)}
    curve = {k: v for k, v in row.items() if k.startswith("miou_") and k not in text}
    rest = {k: v for k, v in row.items() if k not in text and k not in curve}
    return {**text, **rest, **curve}


def plot_miou_curves(curves: Mapping[str, Sequence[float]], path, title: str | None = None) -> Path:
    """Plot mean IoU against the click number for one or several runs on one figure (PNG).

    Uses matplotlib's Agg canvas directly, so the global pyplot backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n_max = 1
    for label, miou in curves.items():
        y = [float("nan") if v is None else float(v) for v in miou]
        x = np.arange(1, len(y) + 1)
        n_max = max(n_max, len(y))
        ax.plot(x, y, marker="o", markersize=3, label=str(label))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean IoU")
    ax.set_xlim(1, n_max)
    ax.set_xticks(range(1, n_max + 1, 1 if n_max <= 20 else max(1, n_max // 10)))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_results(
    out_dir,
    per_object: list[dict],
    summary: Mapping,
    curves: Mapping[str, Sequence[float]] | None = None,
    label: str | None = None,
) -> dict[str, Path]:
    """Write ``per_object_ious.json``, ``summary.json``, ``summary.csv`` and ``miou_curve.png``.

    ``curves`` (label -> mIoU list) plots several runs (e.g. refine vs no-refine) on one figure;
    by default only this run's ``summary["miou"]`` is plotted, labelled ``label`` (or the
    summary's ``label`` / ``model`` entry). Returns the written paths by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_object": out / "per_object_ious.json",
        "summary_json": out / "summary.json",
        "summary_csv": out / "summary.csv",
        "plot": out / "miou_curve.png",
    }
    paths["per_object"].write_text(json.dumps(_jsonable(per_object), indent=1))
    paths["summary_json"].write_text(json.dumps(_jsonable(summary), indent=2))
    row = summary_row(summary)
    with paths["summary_csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    if curves is None:
        name = label or summary.get("label") or summary.get("model") or "model"
        curves = {str(name): summary.get("miou", [])}
    title = summary.get("dataset") if isinstance(summary.get("dataset"), str) else None
    plot_miou_curves(curves, paths["plot"], title=title)
    return paths
