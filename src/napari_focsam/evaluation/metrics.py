"""Benchmark metrics: IoU, NoC@85/90/95, mean IoU per click and seconds per click."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

__all__ = [
    "DEFAULT_MAX_CLICKS",
    "TIMING_KEYS",
    "Timings",
    "iou",
    "miou_curve",
    "noc",
    "nof",
    "seconds_per_click",
    "summarize",
]

DEFAULT_MAX_CLICKS = 20
TIMING_KEYS = ("embedding", "decoder", "refine")
_THRESHOLDS = {"85": 0.85, "90": 0.90, "95": 0.95}


def iou(gt, pred, ignore=None) -> float:
    """Foreground IoU; ``ignore`` pixels are excluded from both masks; empty union gives 1.0."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ in shape")
    if ignore is not None:
        valid = ~np.asarray(ignore, dtype=bool)
        gt = gt & valid
        pred = pred & valid
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(gt & pred) / union)


def noc(ious: Sequence[float], thr: float, max_clicks: int = DEFAULT_MAX_CLICKS) -> int:
    """Number of clicks: first 1-based click whose IoU is >= ``thr``; ``max_clicks`` if never.

    Same as the official loop, which forces the IoU of click ``max_clicks`` to 1.
    """
    for i, v in enumerate(list(ious)[:max_clicks]):
        if v >= thr:
            return i + 1
    return max_clicks


def nof(per_object_ious: Iterable[Sequence[float]], thr: float, max_clicks: int = DEFAULT_MAX_CLICKS) -> int:
    """Number of failures: objects whose IoU never reaches ``thr`` within ``max_clicks``."""
    return sum(1 for ious in per_object_ious if not any(v >= thr for v in list(ious)[:max_clicks]))


def miou_curve(per_object_ious: Sequence[Sequence[float]], max_clicks: int = DEFAULT_MAX_CLICKS) -> list[float]:
    """Mean IoU at clicks 1..max_clicks. Shorter lists (early stop) are padded with their last
    value; an empty list counts as IoU 0."""
    if len(per_object_ious) == 0:
        return [float("nan")] * max_clicks
    arr = np.zeros((len(per_object_ious), max_clicks))
    for r, ious in enumerate(per_object_ious):
        ious = list(ious)[:max_clicks]
        if ious:
            arr[r, : len(ious)] = ious
            arr[r, len(ious):] = ious[-1]
    return [float(v) for v in arr.mean(axis=0)]


def _sum_timings(timings) -> dict:
    total = {k: 0.0 for k in TIMING_KEYS}
    n_clicks = None
    if timings is None:
        return {"seconds": total, "n_clicks": None}
    items = [timings] if isinstance(timings, (Mapping, Timings)) else list(timings)
    for t in items:
        if isinstance(t, Timings):
            t = t.as_dict()
        for k, v in t.items():
            if k == "n_clicks":
                n_clicks = (n_clicks or 0) + int(v)
            elif k in total:
                total[k] += float(v)
            else:
                total[k] = total.get(k, 0.0) + float(v)
    return {"seconds": total, "n_clicks": n_clicks}


def seconds_per_click(timings, n_clicks: int) -> dict:
    """``{"total": s, "embedding": s, "decoder": s, "refine": s}`` in seconds per click.

    ``timings``: one mapping (or :class:`Timings`) of total seconds per component, or a list of
    them (summed). A ``"n_clicks"`` entry there overrides ``n_clicks``.
    """
    summed = _sum_timings(timings)
    n = summed["n_clicks"] if summed["n_clicks"] is not None else n_clicks
    secs = summed["seconds"]
    out = {}
    for k, v in secs.items():
        out[k] = float(v / n) if n else 0.0
    out["total"] = float(sum(secs.values()) / n) if n else 0.0
    return {"total": out.pop("total"), **out}


def summarize(
    per_object_ious: Sequence[Sequence[float]],
    timings=None,
    max_clicks: int = DEFAULT_MAX_CLICKS,
    n_clicks: int | None = None,
) -> dict:
    """Summary of a run.

    Keys: ``noc85``, ``noc90``, ``noc95`` (mean over objects), ``nof85/90/95`` (failures),
    ``miou`` (list of ``max_clicks`` means at clicks 1..max_clicks), ``spc`` (seconds per click:
    ``total``, ``embedding``, ``decoder``, ``refine``), ``n_objects``, ``n_clicks``, ``max_clicks``.

    ``timings`` is as in :func:`seconds_per_click`. The click count dividing the seconds is, in
    order of precedence: ``n_clicks`` in ``timings``, the ``n_clicks`` argument (the number of
    predictions really made; :func:`.protocol.evaluate_dataset` passes it), else the sum of the
    per-object IoU list lengths (which also counts the entries padded after a perfect mask).
    """
    per_object_ious = [list(map(float, ious)) for ious in per_object_ious]
    n = len(per_object_ious)
    out: dict = {}
    for key, thr in _THRESHOLDS.items():
        out[f"noc{key}"] = (
            float(np.mean([noc(i, thr, max_clicks) for i in per_object_ious])) if n else float("nan")
        )
    for key, thr in _THRESHOLDS.items():
        out[f"nof{key}"] = nof(per_object_ious, thr, max_clicks)
    out["miou"] = miou_curve(per_object_ious, max_clicks)
    if n_clicks is None:
        n_clicks = sum(min(len(i), max_clicks) for i in per_object_ious)
    summed = _sum_timings(timings)
    if summed["n_clicks"] is not None:
        n_clicks = summed["n_clicks"]
    out["spc"] = seconds_per_click(timings, n_clicks)
    out["n_objects"] = n
    out["n_clicks"] = int(n_clicks)
    out["max_clicks"] = int(max_clicks)
    return out


class Timings:
    """Accumulates wall-clock seconds per component (``embedding``, ``decoder``, ``refine``...).

    >>> t = Timings()
    >>> with t.measure("decoder"):
    ...     pass
    >>> t.add_clicks(1)
    """

    def __init__(self):
        self.seconds = {k: 0.0 for k in TIMING_KEYS}
        self.n_clicks = 0

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + float(seconds)

    def add_clicks(self, n: int = 1) -> None:
        self.n_clicks += int(n)

    @contextmanager
    def measure(self, key: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - t0)

    def as_dict(self) -> dict:
        """Seconds per component, plus ``n_clicks`` when clicks were counted."""
        out = dict(self.seconds)
        if self.n_clicks:
            out["n_clicks"] = self.n_clicks
        return out
