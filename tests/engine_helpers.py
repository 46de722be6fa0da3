"""Helpers for the engine tests (test_engine, test_embedding_cache, test_volume).

``make_fast_focsam``: the real prompt encoder, mask decoder and (optionally) focus refiner
of :class:`FocSAM` behind a trivial, randomly initialised image encoder (16x16 average
pooling, then a 1x1 convolution to 256 channels): it maps a 1024x1024 input to the real
(256, 64, 64) embedding shape in a few milliseconds, so the cache, LRU, thread and bad-input
tests do not pay for a ViT. The few tests that need the real encoder architecture use
``conftest.make_tiny_focsam``; the quality tests use the real MobileSAM weights.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn


class PoolEncoder(nn.Module):
    """(B, 3, 1024, 1024) -> (B, 256, 64, 64): pooling, 1x1 conv, tanh (counts its calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 256, kernel_size=1)
        self.calls = 0
        self.delay = 0.0
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
        if self.delay:
            import time

            time.sleep(self.delay)
        return torch.tanh(self.proj(nn.functional.avg_pool2d(x, 16)))


def make_fast_focsam(seed: int = 0, refiner_depth: int = 0, model_type: str = "fast_test"):
    from napari_focsam.modeling.focsam import FocSAM

    torch.manual_seed(seed)
    refiner = None
    if refiner_depth:
        from napari_focsam.modeling.focus_refiner import FocusRefiner

        refiner = FocusRefiner(depth=refiner_depth, mlp_ratio=1.0)
    return FocSAM(PoolEncoder(), focus_refiner=refiner, model_type=model_type).eval()


def blobs_stack(n_slices: int = 6, size: int = 48, seed: int = 0) -> np.ndarray:
    """A uint16 stack with a bright ball in the middle and noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n_slices, :size, :size]
    c = (n_slices - 1) / 2
    ball = ((z - c) / max(c, 1)) ** 2 + ((y - size / 2) / (size / 4)) ** 2 + ((x - size / 2) / (size / 4)) ** 2
    img = 200 + 800 * (ball < 1) + rng.normal(0, 20, ball.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)
