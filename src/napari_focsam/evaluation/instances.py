"""Instance-segmentation scores: matching predicted objects to ground-truth objects by IoU.

Used by ``benchmarks/bench_segment_all.py``. A predicted object and a ground-truth object match
when their IoU is at least the threshold; for thresholds >= 0.5 a match is unique on both sides
(two objects cannot both overlap a third by more than half of their union), below 0.5 pairs are
matched greedily by decreasing IoU. F1 = 2 TP / (2 TP + FP + FN).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["InstanceScores", "match_instances", "pairwise_iou"]


@dataclass(frozen=True)
class InstanceScores:
    """tp, fp, fn counts; precision, recall, f1; mean_matched_iou: mean IoU of the matched pairs
    (0 when none); n_true, n_pred: object counts."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    n_true: int
    n_pred: int

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def pairwise_iou(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (true id, predicted id) pair that overlaps.

    Returns (true_ids, pred_ids, iou): 1D arrays of the same length, one entry per overlapping
    pair; background (0) is not an object.
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} vs {pred.shape}")
    t = true.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_area = np.bincount(t_inv)
    p_area = np.bincount(p_inv)
    both = (t != 0) & (p != 0)
    pair = t_inv[both] * len(p_ids) + p_inv[both]
    keys, inter = np.unique(pair, return_counts=True)
    ti, pi = keys // len(p_ids), keys % len(p_ids)
    union = t_area[ti] + p_area[pi] - inter
    return t_ids[ti], p_ids[pi], inter / union


def match_instances(true: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> InstanceScores:
    """Match the objects of two label images (same shape, 0 = background) at IoU >= ``thresh``."""
    n_true = int(np.count_nonzero(np.unique(true)))
    n_pred = int(np.count_nonzero(np.unique(pred)))
    t_ids, p_ids, ious = pairwise_iou(true, pred)
    order = np.argsort(-ious, kind="stable")
    used_t: set[int] = set()
    used_p: set[int] = set()
    matched = []
    for k in order:
        if ious[k] < thresh:
            break
        if t_ids[k] in used_t or p_ids[k] in used_p:
            continue
        used_t.add(int(t_ids[k]))
        used_p.add(int(p_ids[k]))
        matched.append(float(ious[k]))
    tp = len(matched)
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return InstanceScores(tp, fp, fn, precision, recall, f1, float(np.mean(matched)) if matched else 0.0,
                          n_true, n_pred)
