"""The encoder hand-off: an image preprocessed for the encoder and the embedding it gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...modeling.focsam import PIXEL_MEAN, PIXEL_STD, FocSAM

class Encoder(Protocol):
    """What an embedding store needs of a predictor (:class:`~napari_focsam.core.prompting.FocSAMPredictor`):
    the model (its ``image_encoder`` and ``model_type``), the channel order of its weights and its
    device. The stores sit below the click loop and never import it."""

    model: Any
    channel_order: str
    device: torch.device


#: Bumped whenever preprocessing changes numerically (signs the embedding cache).
PREPROCESS_VERSION = 1


@dataclass
class ImageEmbedding:
    """The encoder output of one 2D image.

    features: (1, 256, 64, 64); input_size: (h, w) of the image resized on the 1024
    canvas; original_size: (H, W) of the image.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def input_size_for(original_size: tuple[int, int], target: int = FocSAM.image_size) -> tuple[int, int]:
    """Size (h, w) of an (H, W) image resized so that its longest side is ``target``."""
    H, W = original_size
    scale = target / max(H, W)
    return int(H * scale + 0.5), int(W * scale + 0.5)


def preprocess(image_rgb: np.ndarray, channel_order: str = "rgb", device: torch.device | str = "cpu"):
    """(H, W, 3) uint8 RGB -> ((1, 3, 1024, 1024) normalised padded tensor, input_size).

    Resizes with bilinear, antialiased interpolation so that the longest side is 1024,
    normalises with SAM's statistics (in the weights' channel order), zero-pads
    bottom/right.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[-1] != 3:
        raise ValueError(f"preprocess expects (H, W, 3), got {image_rgb.shape}")
    H, W = image_rgb.shape[:2]
    h, w = input_size_for((H, W))
    x = torch.from_numpy(np.array(image_rgb, dtype=np.uint8, copy=True)).to(device).permute(2, 0, 1)[None].float()
    if channel_order == "bgr":
        x = x.flip(1)
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, FocSAM.image_size - w, 0, FocSAM.image_size - h))
    return x, (h, w)
