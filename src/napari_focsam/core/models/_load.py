"""Model resolution: a registry name or a checkpoint path -> a loaded FocSAM on a device."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from ...modeling.focsam import FocSAM
from ._allocator import tune_malloc
from ._checkpoint import load_checkpoint
from ._device import resolve_device
from ..defaults import DEFAULT_MODEL, REFINE_PRECISIONS

_CACHE: dict[tuple, FocSAM] = {}
_LOCK = threading.Lock()


def model_path(name_or_path: str | Path, *, download: bool = True) -> Path:
    """Local file of a registry name (fetched and verified if needed) or an explicit path."""
    from .weights import resolve_weights

    return resolve_weights(str(name_or_path), download=download)


def _split_refiner_entry(name_or_path, refiner):
    """A registry entry that is a refiner-only file (``base`` set) -> (its base, itself)."""
    from .weights import find_weights

    entry = find_weights(name_or_path) if isinstance(name_or_path, str) else None
    if entry is None or entry.base is None:
        return name_or_path, refiner
    if refiner is not None:
        raise ValueError(f"{name_or_path!r} already is a refiner for {entry.base!r}; "
                         f"give it as the model or pass --refiner with a base model, not both")
    return entry.base, name_or_path


def model_files(name_or_path: str | Path, refiner: str | Path | None = None, *,
                download: bool = True) -> tuple[Path, Path | None]:
    """The local files (fetched and verified if needed) of a model and its refiner.

    A refiner-only registry entry such as the default ``focsam_t`` resolves to its base
    (``vit_t``) and itself, so fetching "the model" before starting workers fetches both.
    """
    name_or_path, refiner = _split_refiner_entry(name_or_path, refiner)
    path = model_path(name_or_path, download=download)
    return path, (model_path(refiner, download=download) if refiner is not None else None)


def native_bf16_cpu() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # older torch or non-x86 builds
        return False


def refine_matmul_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The refiner's matmul dtype for ``precision`` (None: read ``NAPARI_FOCSAM_REFINE_PRECISION``,
    default "auto") on ``device``; None means float32."""
    precision = (precision or os.environ.get("NAPARI_FOCSAM_REFINE_PRECISION") or "auto").lower()
    if precision not in REFINE_PRECISIONS:
        raise ValueError(f"refine precision must be one of {', '.join(REFINE_PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and native_bf16_cpu() else None


def refine_precision_of(model: FocSAM) -> str | None:
    """"bf16" or "fp32" for the model's refiner, None without one."""
    if model.focus_refiner is None:
        return None
    return "bf16" if model.focus_refiner.matmul_dtype == torch.bfloat16 else "fp32"


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    *,
    refiner: str | Path | None = None,
    channel_order: str | None = None,
    download: bool = True,
    refine_precision: str | None = None,
) -> FocSAM:
    """Load (once per process, then from memory) a model by registry name or path.

    ``refine_precision`` ("auto", "fp32", "bf16"; see :func:`refine_matmul_dtype`) sets
    the focus refiner's matrix products; the encoder and decoder always run in float32.
    """
    tune_malloc()
    path, rpath = model_files(name_or_path, refiner, download=download)
    dev = resolve_device(device)
    matmul_dtype = refine_matmul_dtype(refine_precision, dev)
    key = (str(path.resolve()), str(rpath) if rpath else None, str(dev), channel_order,
           path.stat().st_mtime_ns, matmul_dtype)
    with _LOCK:
        if key not in _CACHE:
            model = load_checkpoint(path, refiner=rpath, channel_order=channel_order, device=dev)
            if model.focus_refiner is not None:
                model.focus_refiner.set_matmul_dtype(matmul_dtype)
            _CACHE[key] = model
        return _CACHE[key]
