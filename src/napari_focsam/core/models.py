"""Model resolution: a registry name or a checkpoint path -> a loaded FocSAM on a device."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..modeling.focsam import FocSAM
from .allocator import tune_malloc
from .checkpoint import load_checkpoint
from .predictor import resolve_device

DEFAULT_MODEL = "vit_t"

_CACHE: dict[tuple, FocSAM] = {}
_LOCK = threading.Lock()


def model_path(name_or_path: str | Path, *, download: bool = True) -> Path:
    """Local file of a registry name (fetched and verified if needed) or an explicit path."""
    from .weights import resolve_weights

    return resolve_weights(str(name_or_path), download=download)


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    *,
    refiner: str | Path | None = None,
    channel_order: str | None = None,
    download: bool = True,
) -> FocSAM:
    """Load (once per process, then from memory) a model by registry name or path."""
    tune_malloc()
    path = model_path(name_or_path, download=download)
    rpath = model_path(refiner, download=download) if refiner is not None else None
    dev = resolve_device(device)
    key = (str(path.resolve()), str(rpath) if rpath else None, str(dev), channel_order,
           path.stat().st_mtime_ns)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_checkpoint(path, refiner=rpath, channel_order=channel_order, device=dev)
        return _CACHE[key]
