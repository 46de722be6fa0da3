# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Learning-rate schedule (linear warm-up, then poly decay) and AdamW parameter groups."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["WarmupPolyLR", "param_groups"]


class WarmupPolyLR:
    """Linear warm-up from ``warmup_factor * lr`` to ``lr`` over ``warmup_iters``, then
    ``lr_t = (lr - min_lr) * (1 - t / total) ** power + min_lr`` down to ``min_lr`` at ``total``.

    ``step(it)`` sets the learning rate used by iteration ``it`` (0-based).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int = 0,
                 warmup_factor: float = 1e-6, power: float = 1.0, min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.total = max(int(total_iters), 1)
        self.warmup = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = lr
        self.last_iter = -1
        self.step(0)

    def lr_at(self, it: int, base: float) -> float:
        t = min(max(int(it), 0), self.total)
        lr = (base - self.min_lr) * (1.0 - t / self.total) ** self.power + self.min_lr
        if t < self.warmup:
            f = self.warmup_factor + (1.0 - self.warmup_factor) * t / self.warmup
            lr *= f
        return lr

    def step(self, it: int) -> None:
        self.last_iter = int(it)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(it, base)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"total": self.total, "warmup": self.warmup, "warmup_factor": self.warmup_factor,
                "power": self.power, "min_lr": self.min_lr, "base_lrs": list(self.base_lrs),
                "last_iter": self.last_iter}

    def load_state_dict(self, state: dict) -> None:
        for k in ("total", "warmup", "warmup_factor", "power", "min_lr", "last_iter"):
            setattr(self, k, state[k])
        self.base_lrs = list(state["base_lrs"])
        self.step(self.last_iter)


def param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float, no_decay_1d: bool) -> list[dict]:
    """AdamW parameter groups: 1-D parameters and layer scales (``gamma``) without weight decay."""
    decay, no_decay = [], []
    for name, p in params:
        if not p.requires_grad:
            continue
        (no_decay if (no_decay_1d and (p.ndim <= 1 or "gamma" in name)) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
