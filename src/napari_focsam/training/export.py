# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""FocSAM-T refiners: construction, identity initialisation and the float16 refiner-only export."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ..modeling.focsam import FocSAM
from ..modeling.focus_refiner import FocusRefiner
from .config import ModelConfig

__all__ = ["REFINER_FILE", "build_refiner", "export_refiner", "identity_init_", "refiner_config"]

REFINER_FILE = "focsam_t_refiner.pt"


# --------------------------------------------------------------------------- model helpers


def refiner_config(mc: ModelConfig, embed_dim: int = 256) -> dict:
    """FocusRefiner constructor arguments (stored as ``refiner_config`` in exported files).

    ``embed_dim`` is the image-embedding width of the base model (256 for every SAM)."""
    return {"embed_dim": int(embed_dim), "depth": int(mc.depth), "num_heads": int(mc.num_heads),
            "mlp_ratio": float(mc.mlp_ratio), "window_size": int(mc.window_size),
            "shift_size": int(mc.shift_size), "expand_ratio": float(mc.expand_ratio)}


@torch.no_grad()
def identity_init_(refiner: FocusRefiner) -> FocusRefiner:
    """Make the refiner return its input: ``embed_proj = I`` and every block's last residual
    scale ``cls2img.gamma2 = 0`` (the token path and the other weights keep their init)."""
    c = refiner.embed_dim
    refiner.embed_proj.weight.copy_(torch.eye(c).view(c, c, 1, 1))
    refiner.embed_proj.bias.zero_()
    for block in refiner.blocks:
        block.cls2img.gamma2.zero_()
    return refiner


def build_refiner(mc: ModelConfig, expand_ratio_range=(1.0, 1.4), embed_dim: int = 256) -> FocusRefiner:
    refiner = FocusRefiner(**refiner_config(mc, embed_dim), expand_ratio_range=tuple(expand_ratio_range))
    if mc.init == "identity":
        identity_init_(refiner)
    return refiner


def export_refiner(model: FocSAM, path: str | Path, mc: ModelConfig, *, with_decoder: bool = False,
                   **meta: Any) -> dict:
    """Write a float16 refiner file loadable by ``load_checkpoint(base, refiner=path)``.

    ``with_decoder``: the file also holds the model's mask decoder (``mask_decoder.*``), for a
    refiner trained together with a fine-tuned decoder: a *head file* that replaces the base
    model's decoder and adds the refiner, over the base's image and prompt encoders.

    Returns ``{"path", "bytes", "sha256"}`` and writes ``<path>.sha256`` next to it.
    """
    parts = {"focus_refiner": model.focus_refiner}
    if with_decoder:
        parts["mask_decoder"] = model.mask_decoder
    sd = {f"{name}.{k}": v.detach().to("cpu", torch.float16).contiguous()
          for name, module in parts.items() for k, v in module.state_dict().items()}
    info = {"refiner_config": refiner_config(mc, model.focus_refiner.embed_dim), "channel_order": model.channel_order,
            "dtype": "float16", **meta}
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "napari_focsam": info}, buf)
    data = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    digest = hashlib.sha256(data).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return {"path": str(path), "bytes": len(data), "sha256": digest}
