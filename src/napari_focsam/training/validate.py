# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Fast validation during training: IoU at canvas resolution and the 20-click protocol on cached items."""

from __future__ import annotations

import numpy as np
import torch

from ..core.embeddings import ImageEmbedding
from ..core.prompting import FocSAMPredictor, InteractiveObject
from ..modeling.focsam import FocSAM
from .cache import TrainingCache

__all__ = ["evaluate_cached", "iou_canvas"]


def iou_canvas(logits_1024: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-item IoU (B,) of logits (B, 1, 1024, 1024) > 0 against gt (B, 1024, 1024) inside valid."""
    pred = (logits_1024[:, 0] > 0) & valid
    g = gt & valid
    inter = (pred & g).flatten(1).sum(1).float()
    union = (pred | g).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@torch.no_grad()
def evaluate_cached(model: FocSAM, cache: TrainingCache, device, max_objects: int = 50,
                    max_clicks: int = 20, modes=(False, True)) -> dict:
    """The 20-click protocol (inner_k = 1, seed 42) on the copy-0 items of a cache, at canvas
    resolution, per dataset (at most ``max_objects`` each).

    The clicks go through the engine's own loop (:class:`~napari_focsam.core.prompting._predictor.InteractiveObject`
    over a canvas-size embedding), so the monitor refines exactly when the product does.

    Returns ``{dataset: {"plain": {noc85, noc90, miou, n_objects}, "refine": {...}}}``.  This is
    a fast monitor; the harness (``napari-focsam evaluate``) scores at image resolution.
    """
    from ..evaluation.clicker import next_click
    from ..evaluation.metrics import iou as iou_fn, miou_curve, noc

    model.eval()
    by_ds: dict[str, list[tuple[int, int]]] = {}
    for idx, meta in enumerate(cache.items):
        if meta.get("copy", 0) != 0:
            continue
        lst = by_ds.setdefault(meta["dataset"], [])
        for oi in range(len(meta["objects"])):
            if len(lst) < max_objects:
                lst.append((idx, oi))
    results: dict = {}
    for ds, objs in by_ds.items():
        results[ds] = {}
        for refine in modes:
            if refine and model.focus_refiner is None:
                continue
            predictor = FocSAMPredictor(model, refine=refine)
            per_obj = []
            for idx, oi in objs:
                s = cache.load(idx, oi)
                emb = ImageEmbedding(s.embedding[None].to(device), s.input_size, s.input_size)
                obj = InteractiveObject(predictor, emb, skip_blank=False)
                pred, ious = np.zeros_like(s.gt_crop), []
                for _ in range(max_clicks):
                    c = next_click(s.gt_crop, pred, s.ignore_crop, obj.clicks)
                    if c is None:
                        ious += [ious[-1] if ious else 1.0] * (max_clicks - len(ious))
                        break
                    pred = obj.add_click(c.y, c.x, c.is_positive)
                    ious.append(iou_fn(s.gt_crop, pred, s.ignore_crop))
                per_obj.append(ious)
            results[ds]["refine" if refine else "plain"] = {
                "noc85": float(np.mean([noc(i, 0.85, max_clicks) for i in per_obj])),
                "noc90": float(np.mean([noc(i, 0.90, max_clicks) for i in per_obj])),
                "miou": [round(v, 4) for v in miou_curve(per_obj, max_clicks)],
                "n_objects": len(per_obj),
            }
    return results
