# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Training losses of FocSAM (design §5.1): normalised focal loss and the click (point) loss.

Normalised focal loss (NFL), written from its definition.  For a logit ``z`` and a binary
target ``y`` at a valid pixel, with ``p = sigmoid(z)``:

* ``p_t = p`` if ``y = 1`` else ``1 - p`` (probability of the true class),
* ``alpha_t = alpha`` if ``y = 1`` else ``1 - alpha``,
* ``beta = (1 - p_t) ** gamma`` (the focal modulation),
* per sample ``s``, ``norm_s = N_s / sum_{valid px of s} beta`` where ``N_s`` is the number
  of valid pixels of ``s``; the normaliser is **detached** (no gradient flows through it),
* ``loss = sum_s sum_px alpha_t * norm_s * beta * (-log p_t) / sum_s N_s``.

So each sample's focal weights are rescaled to average 1 over its valid pixels (the loss
does not shrink as the prediction gets better, unlike the plain focal loss), and the result
is the mean over all valid pixels of the batch.  With every pixel at the same ``p_t`` the
loss is ``alpha_t * -log(p_t)``.  ``log p_t`` is computed as ``logsigmoid(+-z)`` so large
logits are safe.

Click loss: ``mean over real clicks of (sigmoid(z at the click) - label) ** 2`` with label 1
for positive and 0 for negative clicks; padded clicks (label -1) are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NormalizedFocalLoss", "click_loss", "iou_head_loss", "mask_iou_targets", "min_candidate_loss",
           "normalized_focal_loss"]


def normalized_focal_loss(
    logits: Tensor,
    target: Tensor,
    valid: Tensor | None = None,
    *,
    alpha: float = 0.5,
    gamma: float = 2.0,
    eps: float = 1e-8,
) -> Tensor:
    """Normalised focal loss (see the module docstring).

    Arguments:
      logits (Tensor): (B, 1, H, W) or (B, H, W) raw logits.
      target (Tensor): same shape, {0, 1} (bool or float).
      valid (Tensor or None): same shape, bool; pixels that count (None: all).
      alpha, gamma: focal parameters (FocSAM: 0.5, 2).

    Returns:
      (Tensor): scalar loss.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    z = logits.float()
    y = target.to(torch.bool)
    v = torch.ones_like(y) if valid is None else valid.to(torch.bool)
    sign = torch.where(y, 1.0, -1.0)
    log_pt = F.logsigmoid(sign * z)
    pt = log_pt.exp()
    alpha_t = torch.where(y, alpha, 1.0 - alpha)
    vf = v.to(z.dtype)
    beta = (1.0 - pt).pow(gamma) * vf
    dims = tuple(range(1, z.dim()))
    n_valid = vf.sum(dim=dims, keepdim=True)
    norm = (n_valid / (beta.sum(dim=dims, keepdim=True) + eps)).detach()
    per_px = -alpha_t * norm * beta * log_pt
    return per_px.sum() / n_valid.sum().clamp_min(1.0)


class NormalizedFocalLoss(nn.Module):
    """Module wrapper of :func:`normalized_focal_loss` (alpha 0.5, gamma 2 by default)."""

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.alpha, self.gamma, self.eps = alpha, gamma, eps

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        return normalized_focal_loss(logits, target, valid, alpha=self.alpha, gamma=self.gamma, eps=self.eps)


def click_loss(logits: Tensor, points_yx: Tensor, labels: Tensor) -> Tensor:
    """Squared error between the predicted probability at each click and its label.

    Arguments:
      logits (Tensor): (B, 1, H, W) or (B, H, W) logits on the grid the clicks refer to.
      points_yx (Tensor): (B, N, 2) integer (row, column) click positions on that grid.
      labels (Tensor): (B, N) 1 positive, 0 negative, -1 padding (ignored).

    Returns:
      (Tensor): scalar, the mean over real clicks (0 when there is none).
    """
    if logits.dim() == 4:
        logits = logits[:, 0]
    b, h, w = logits.shape
    real = labels >= 0
    if not bool(real.any()):
        return logits.sum() * 0.0
    ys = points_yx[..., 0].long().clamp(0, h - 1)
    xs = points_yx[..., 1].long().clamp(0, w - 1)
    flat = logits.reshape(b, h * w)
    z = torch.gather(flat, 1, ys * w + xs)  # (B, N)
    err = (torch.sigmoid(z.float()) - labels.clamp_min(0).to(torch.float32)) ** 2
    return err[real].mean()


def mask_iou_targets(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """IoU of each mask ``logits > 0`` with ``target`` inside ``valid`` (no gradient).

    Arguments:
      logits (Tensor): (B, M, H, W) logits (M candidate masks).
      target, valid (Tensor): (B, H, W) bool on the same grid.

    Returns:
      (Tensor): (B, M) float IoUs (1 where both masks are empty).
    """
    with torch.no_grad():
        pred = (logits.detach() > 0) & valid[:, None]
        g = (target & valid)[:, None]
        inter = (pred & g).flatten(2).sum(-1).float()
        union = (pred | g).flatten(2).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_head_loss(pred_iou: Tensor, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error of the decoder's IoU prediction against each mask's real IoU (as SAM).

    Arguments:
      pred_iou (Tensor): (B, M) predicted IoUs; logits (B, M, H, W) the masks they score;
      target, valid (Tensor): (B, H, W) bool.
    """
    return F.mse_loss(pred_iou.float(), mask_iou_targets(logits, target, valid))


def min_candidate_loss(logits: Tensor, target: Tensor, valid: Tensor, *, alpha: float = 0.5,
                       gamma: float = 2.0) -> Tensor:
    """SAM's multimask loss: per sample, the normalised focal loss of its best candidate only.

    Arguments:
      logits (Tensor): (B, M, H, W) candidate logits; target, valid (Tensor): (B, H, W) bool.

    Returns:
      (Tensor): scalar, the mean over samples of the smallest per-candidate NFL.
    """
    b, m = logits.shape[:2]
    per = torch.stack([
        torch.stack([normalized_focal_loss(logits[i, k][None, None], target[i][None, None], valid[i][None, None],
                                           alpha=alpha, gamma=gamma) for k in range(m)])
        for i in range(b)])  # (B, M)
    return per.min(dim=1).values.mean()
