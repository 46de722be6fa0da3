"""The image encoders FocSAM runs, as a table: how to recognise their weights and build them.

In the manner of segment-anything's ``sam_model_registry``: a new encoder is one module (the
network, a ``config_from_state_dict`` and an ``identify``) and one row of :data:`ENCODERS`.
Checkpoint loading (:mod:`napari_focsam.core.models`) reads this table and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from .image_encoder_vit import ImageEncoderViT, identify_vit, vit_config_from_state_dict
from .tiny_vit import TinyViT, identify_tinyvit, tinyvit_config_from_state_dict

__all__ = ["ENCODERS", "EncoderSpec", "encoder_from_state_dict", "identify_encoder"]


@dataclass(frozen=True)
class EncoderSpec:
    """One kind of image encoder.

    Attributes
    ----------
    name : str
        What the kind is called in messages.
    marker : str
        A state-dict key that only this kind's weights hold (FocSAM's own key names).
    build : callable
        ``build(state_dict)``: an un-initialised encoder whose shapes match the weights.
    identify : callable
        ``identify(encoder)``: its model type (``"vit_t"``, ``"vit_b"``, ...) or None when the
        encoder is of another kind.
    """

    name: str
    marker: str
    build: Callable[[Mapping[str, torch.Tensor]], nn.Module]
    identify: Callable[[nn.Module], str | None]


#: The encoders, tried in this order.
ENCODERS: tuple[EncoderSpec, ...] = (
    EncoderSpec("MobileSAM's TinyViT", "image_encoder.patch_embed.seq.0.c.weight",
                lambda sd: TinyViT(tinyvit_config_from_state_dict(sd)), identify_tinyvit),
    EncoderSpec("SAM ViT", "image_encoder.patch_embed.proj.weight",
                lambda sd: ImageEncoderViT(vit_config_from_state_dict(sd)), identify_vit),
)


def encoder_from_state_dict(sd: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """The encoder the (normalised) state dict holds weights for, un-initialised; None when no
    row of :data:`ENCODERS` recognises it (KeyError when the weights are incomplete)."""
    for spec in ENCODERS:
        if spec.marker in sd:
            return spec.build(sd)
    return None


def identify_encoder(encoder: nn.Module) -> str:
    """The model type of ``encoder`` (``"vit_t"``, ``"vit_b"``, ..., or ``"<kind>_custom"``)."""
    for spec in ENCODERS:
        found = spec.identify(encoder)
        if found is not None:
            return found
    raise TypeError(f"{type(encoder).__name__} is not an encoder of the ENCODERS table")
