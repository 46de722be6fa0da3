# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Stage-2 click simulation of FocSAM training (design §5.1), on cached embeddings.

For one batch (all samples share ``n`` and ``refine_step``, as FocSAM draws them per
source-dataset batch):

1. ``n ~ P(k) ∝ gamma^k`` for ``k = 0..max_num_clicks`` and ``refine_step ~ P(k) ∝ gamma_r^k``
   for ``k = 0..n`` (:func:`sample_geometric`).
2. The first click of every sample is placed on its ground truth with the evaluation
   :class:`~napari_focsam.evaluation.clicker.ClickSimulator` (``first_inner_k = 1``: the
   deepest interior point).
3. ``n`` iterations with the **frozen** decoder in ``no_grad`` mode: each runs the decoder on
   the current embedding with all clicks so far and the previous raw 256x256 logits, turns
   the logits into a mask, and adds one click with ``inner_k = 1.7`` (a random pixel deeper
   than ``max/1.7`` in the larger error region).  Before iteration ``refine_step`` (or after
   the last one when ``refine_step == n``) a coarse pass on the original embedding ``E0`` with
   the current prompts gives the coarse logits and the mask-#0 token, and the refiner
   (no grad, a random expand ratio) rewrites the embedding used by the later iterations.
   Refinement may therefore happen with 1 click and no previous logits (``refine_step = 0``).
4. The result holds the final prompts (``1 + n`` clicks, the last logits) and the coarse
   logits / token of the refine time; the trainer then runs the refiner *with* gradient on
   ``E0`` (a fresh expand ratio) and the frozen decoder on its output with the final prompts.

Resolution: clicks are simulated **on the 1024 canvas**, on the valid (un-padded) area of the
resized image (``(h, w) = input_size``): the logits are upsampled bilinearly from 256 to 1024
and thresholded at 0, exactly like the first half of the test-time post-processing (design
§1.3 step 6), and the ground truth is the canvas-resolution mask of the cache.  A click at
canvas pixel (row y, column x) is passed to the prompt encoder as the point (x, y), which adds
0.5 (the pixel centre), as the predictor does for image pixels.

A sample whose prediction is already perfect gets a padding click (label -1, "not a point")
instead of a new click, so all samples keep the same number of prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..evaluation.clicker import Click, ClickSimulator
from .cache import TrainingItem
from .data import CANVAS

__all__ = ["SimulationResult", "logits_to_canvas_masks", "sample_geometric", "simulate_clicks"]


def sample_geometric(rng: np.random.Generator, gamma: float, k_max: int) -> int:
    """Draw ``k`` in ``0..k_max`` with ``P(k) ∝ gamma ** k`` (gamma = 0 always gives 0)."""
    if k_max <= 0:
        return 0
    if gamma < 0:
        raise ValueError("gamma must be >= 0")
    k = np.arange(k_max + 1)
    w = np.power(float(gamma), k.astype(float))  # 0 ** 0 == 1
    return int(rng.choice(k_max + 1, p=w / w.sum()))


def geometric_probabilities(gamma: float, k_max: int) -> np.ndarray:
    """The distribution :func:`sample_geometric` draws from (for tests and docs)."""
    w = np.power(float(gamma), np.arange(k_max + 1, dtype=float))
    return w / w.sum()


@dataclass
class SimulationResult:
    """Prompts of a simulated batch.

    points (B, N, 2) float (x, y) canvas points, labels (B, N) int64 (1 / 0 / -1 padding),
    points_yx (B, N, 2) int64 canvas (row, column) of the same clicks, prev_logits
    (B, 1, 256, 256) or None: the final prompts.  refine_*: the prompts at refine time;
    coarse_logits (B, 1, 256, 256) / coarse_token (B, 1, 256): the frozen decoder's coarse
    pass on E0 at refine time (None when no refinement was simulated).  sim_logits: the last
    no-grad prediction of the simulation (on the refined embedding after refine time).
    """

    points: Tensor
    labels: Tensor
    points_yx: Tensor
    prev_logits: Tensor | None
    n_clicks: int
    refine_step: int | None
    refine_points: Tensor | None = None
    refine_labels: Tensor | None = None
    refine_prev_logits: Tensor | None = None
    coarse_logits: Tensor | None = None
    coarse_token: Tensor | None = None
    sim_logits: Tensor | None = None


def logits_to_canvas_masks(logits: Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """(B, 1, 256, 256) logits -> per sample (h, w) bool masks of the canvas' valid area."""
    up = F.interpolate(logits.float(), size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)
    pos = (up[:, 0] > 0).cpu().numpy()
    return [pos[i, : h, : w] for i, (h, w) in enumerate(sizes)]


class _Prompts:
    """Per-sample click lists and their padded tensors."""

    def __init__(self, first: Sequence[Click], device: torch.device) -> None:
        self.clicks: list[list[Click | None]] = [[c] for c in first]
        self.device = device

    def add(self, clicks: Sequence[Click | None]) -> None:
        for lst, c in zip(self.clicks, clicks):
            lst.append(c)

    def real(self, i: int) -> list[Click]:
        return [c for c in self.clicks[i] if c is not None]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        b, n = len(self.clicks), len(self.clicks[0])
        yx = torch.zeros(b, n, 2, dtype=torch.long)
        lab = torch.full((b, n), -1, dtype=torch.long)
        for i, lst in enumerate(self.clicks):
            for j, c in enumerate(lst):
                if c is not None:
                    yx[i, j, 0], yx[i, j, 1] = c.y, c.x
                    lab[i, j] = 1 if c.is_positive else 0
        pts = yx.flip(-1).to(torch.float32)  # (x, y)
        return pts.to(self.device), lab.to(self.device), yx.to(self.device)


@torch.no_grad()
def simulate_clicks(
    model,
    embeddings: Tensor,
    samples: Sequence[TrainingItem],
    *,
    n_clicks: int,
    refine_step: int | None,
    rng: np.random.Generator,
    inner_k: float = 1.7,
    first_inner_k: float = 1.0,
    expand_ratio_range: tuple[float, float] = (1.0, 1.4),
) -> SimulationResult:
    """Simulate ``n_clicks`` corrective clicks after the first one (see the module docstring).

    Arguments:
      model: a FocSAM (prompt encoder, mask decoder and, when ``refine_step`` is not None,
        a focus refiner); it is used as is (the caller freezes / sets eval mode).
      embeddings: (B, 256, 64, 64) original embeddings E0 on the model's device.
      samples: the batch's :class:`TrainingItem` (ground truth on the canvas).
      n_clicks: ``n``; refine_step: ``0..n`` or None (no refinement: stage 1).
      rng: numpy generator for the clicks and the expand ratio.
    """
    if refine_step is not None and not 0 <= refine_step <= n_clicks:
        raise ValueError(f"refine_step {refine_step} outside 0..{n_clicks}")
    sizes = [s.input_size for s in samples]
    sim = ClickSimulator(inner_k=inner_k, first_inner_k=first_inner_k)
    sim.rng = rng
    first = []
    for s in samples:
        c = sim.first_click(s.gt_crop, s.ignore_crop)
        if c is None:
            raise ValueError(f"{s.key}: empty ground truth")
        first.append(c)
    prompts = _Prompts(first, embeddings.device)
    e0 = embeddings
    emb = e0
    prev: Tensor | None = None
    res: dict = {}

    def refine_now() -> Tensor:
        pts, lab, _ = prompts.tensors()
        coarse = model.decode(e0, pts, lab, prev)
        lo, hi = expand_ratio_range
        ratio = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        res.update(refine_points=pts, refine_labels=lab, refine_prev_logits=prev,
                   coarse_logits=coarse.logits, coarse_token=coarse.token)
        return model.focus_refiner(e0, coarse.logits, coarse.token, expand_ratio=ratio)

    logits = None
    for it in range(n_clicks):
        if refine_step is not None and it == refine_step:
            emb = refine_now()
        pts, lab, _ = prompts.tensors()
        logits = model.decode(emb, pts, lab, prev).logits
        prev = logits
        preds = logits_to_canvas_masks(logits, sizes)
        new = [sim.next(s.gt_crop, p, s.ignore_crop, prompts.real(i)) for i, (s, p) in enumerate(zip(samples, preds))]
        prompts.add(new)
    if refine_step is not None and refine_step == n_clicks:
        emb = refine_now()
    pts, lab, yx = prompts.tensors()
    return SimulationResult(pts, lab, yx, prev, n_clicks, refine_step, sim_logits=logits, **res)
