"""Cached-embedding FocSAM inference: preprocessing and the per-object click loop (design §1.2-1.3).

The image encoder runs once per image (:meth:`FocSAMPredictor.embed`). Each object
is an :class:`InteractiveObject`: every click runs the light decoder on all clicks so
far plus the previous raw logits; at the 2nd click, when the model has a focus
refiner, a coarse pass on the original embedding feeds the refiner once and the
refined embedding serves that click and every later one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.focsam import FocSAM
from .allocator import tune_malloc
from .clicks import Click  # noqa: F401  (re-exported: part of the predictor API)
from .image import to_rgb_uint8

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


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is missing raises."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but this PyTorch build has no usable CUDA device")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("MPS was requested but is not available on this machine")
    return dev


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
    mean = torch.tensor([123.675, 116.28, 103.53], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375], device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, FocSAM.image_size - w, 0, FocSAM.image_size - h))
    return x, (h, w)


def logits_to_mask(logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """(1, 1, 256, 256) raw logits -> (H, W) bool mask at the original resolution."""
    x = F.interpolate(logits, size=(FocSAM.image_size,) * 2, mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(original_size):
        x = F.interpolate(x, size=original_size, mode="bilinear", align_corners=False)
    return (x[0, 0] > 0).cpu().numpy()


@dataclass
class StepResult:
    """Outcome of one click: mask (H, W) bool, raw logits (1, 1, 256, 256), timings in s."""

    mask: np.ndarray
    logits: torch.Tensor
    refined: torch.Tensor | None
    decoder_seconds: float
    refine_seconds: float = 0.0


class FocSAMPredictor:
    """Runs a :class:`FocSAM` model on images and clicks.

    refine: use the focus refiner at the ``refine_click``-th click when the model has
    one (False runs the plain SAM loop with the same weights).
    """

    def __init__(self, model: FocSAM, *, refine: bool = True, refine_click: int = 2,
                 channel_order: str | None = None) -> None:
        tune_malloc()  # per-click tensors of several MiB: avoid a page fault per 4 KiB
        self.model = model.eval()
        self.refine = refine and model.has_refiner
        self.refine_click = refine_click
        self.channel_order = channel_order or model.channel_order

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Encode a 2D image ((H, W) or (H, W, C), any dtype) -> :class:`ImageEmbedding`."""
        rgb = to_rgb_uint8(image)
        x, input_size = preprocess(rgb, self.channel_order, self.device)
        features = self.model.encode(x)
        return ImageEmbedding(features, input_size, tuple(rgb.shape[:2]))

    def _prompts(self, embedding: ImageEmbedding, clicks: Sequence[Click]):
        H, W = embedding.original_size
        h, w = embedding.input_size
        pts = torch.tensor([[c.x * (w / W), c.y * (h / H)] for c in clicks], dtype=torch.float32)
        lab = torch.tensor([1 if c.is_positive else 0 for c in clicks], dtype=torch.int64)
        return pts[None].to(self.device), lab[None].to(self.device)

    @torch.inference_mode()
    def step(
        self,
        embedding: ImageEmbedding,
        clicks: Sequence[Click],
        prev_logits: torch.Tensor | None = None,
        refined: torch.Tensor | None = None,
    ) -> StepResult:
        """One click of the FocSAM loop. ``clicks`` are all clicks so far (>= 1)."""
        if not clicks:
            raise ValueError("at least one click is needed")
        H, W = embedding.original_size
        for c in clicks:
            if not (0 <= c.y < H and 0 <= c.x < W):
                raise ValueError(f"click (y={c.y}, x={c.x}) is outside the image of shape {(H, W)}")
        pts, lab = self._prompts(embedding, clicks)
        features = embedding.features.to(self.device)
        refine_s = 0.0
        t0 = time.perf_counter()
        if refined is None and self.refine and len(clicks) == self.refine_click:
            coarse = self.model.decode(features, pts, lab, prev_logits)
            t1 = time.perf_counter()
            refined = self.model.refine(features, coarse.logits, coarse.token)
            refine_s = time.perf_counter() - t1
        out = self.model.decode(refined if refined is not None else features, pts, lab, prev_logits)
        logits = out.logits
        mask = logits_to_mask(logits, embedding.input_size, embedding.original_size)
        total = time.perf_counter() - t0
        return StepResult(mask, logits, refined, total - refine_s, refine_s)


@dataclass
class _State:
    click: Click
    logits: torch.Tensor
    refined: torch.Tensor | None
    mask: np.ndarray


@dataclass
class InteractiveObject:
    """One object being segmented by clicks on one image embedding.

    Keeps the history of steps so that :meth:`undo` restores the exact previous
    state (logits and refined embedding), as if the last click had never happened.
    """

    predictor: FocSAMPredictor
    embedding: ImageEmbedding
    _states: list[_State] = field(default_factory=list)

    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self._states]

    @property
    def logits(self) -> torch.Tensor | None:
        return self._states[-1].logits if self._states else None

    @property
    def refined(self) -> torch.Tensor | None:
        return self._states[-1].refined if self._states else None

    @property
    def mask(self) -> np.ndarray:
        if self._states:
            return self._states[-1].mask
        return np.zeros(self.embedding.original_size, dtype=bool)

    def add_click(self, y: float, x: float, positive: bool = True) -> np.ndarray:
        """Add a click (image coordinates) and return the new (H, W) bool mask."""
        return self.add(Click(float(y), float(x), bool(positive))).mask

    def add(self, click: Click) -> StepResult:
        """Add a click and return the full :class:`StepResult` (with timings)."""
        res = self.predictor.step(self.embedding, self.clicks + [click], self.logits, self.refined)
        self._states.append(_State(click, res.logits, res.refined, res.mask))
        return res

    def undo(self) -> np.ndarray:
        """Remove the last click; returns the previous mask (empty when no click is left)."""
        if self._states:
            self._states.pop()
        return self.mask

    def reset(self) -> None:
        self._states.clear()
