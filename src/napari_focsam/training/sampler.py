# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Deterministic batch sampling over the training cache (per group, then source, item, object)."""

from __future__ import annotations

import numpy as np

from .cache import TrainingCache

__all__ = ["BatchSampler"]


class BatchSampler:
    """Deterministic batches: iteration ``it`` uses ``default_rng([seed, it, 1])`` only.

    A batch comes from one group (drawn with ``group_weights``), as FocSAM simulates clicks per
    source dataset; inside the group, a source is drawn with its weight, then an item of the
    source uniformly, then one of the item's objects uniformly.
    """

    def __init__(self, cache: TrainingCache, seed: int, batch_size: int,
                 group_weights: dict[str, float] | None = None,
                 source_weights: dict[str, float] | None = None) -> None:
        self.cache = cache
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        by_group: dict[str, dict[str, list[int]]] = {}
        for i, m in enumerate(cache.items):
            by_group.setdefault(m.get("group", "natural"), {}).setdefault(m["dataset"], []).append(i)
        self.groups = sorted(by_group)
        self.by_group = by_group
        gw = np.array([float((group_weights or {}).get(g, 1.0)) for g in self.groups])
        if gw.sum() <= 0:
            raise ValueError("group weights must not all be zero")
        self.group_p = gw / gw.sum()
        self.source_weights = source_weights or {}

    def sample(self, iteration: int) -> tuple[str, list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, int(iteration), 1])
        g = self.groups[int(rng.choice(len(self.groups), p=self.group_p))]
        sources = sorted(self.by_group[g])
        sw = np.array([float(self.source_weights.get(s, 1.0)) for s in sources])
        picks = []
        for _ in range(self.batch_size):
            s = sources[int(rng.choice(len(sources), p=sw / sw.sum()))]
            items = self.by_group[g][s]
            it = items[int(rng.integers(len(items)))]
            n_obj = len(self.cache.items[it]["objects"])
            picks.append((it, int(rng.integers(n_obj))))
        return g, picks
