"""FocSAM: SAM's encoder / prompt encoder / decoder plus the optional focus refiner."""

from __future__ import annotations

import torch
from torch import nn

from .mask_decoder import DecoderOutput, MaskDecoder
from .prompt_encoder import PromptEncoder

#: SAM's normalisation statistics (RGB order, 0-255 scale).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class FocSAM(nn.Module):
    """Image encoder (run once per image), light decoder (run per click), focus refiner
    (run once per object: at its first click in this project's loop, at its second in
    FocSAM as published; see :class:`~napari_focsam.core.prompting._predictor.FocSAMPredictor`).

    Without a refiner this is plain SAM / MobileSAM, used with the same click loop.
    ``channel_order`` is the colour order the weights were trained with: "rgb" for
    SAM and MobileSAM, "bgr" for the official FocSAM release (design §1.2).
    """

    image_size = 1024
    embedding_size = 64

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder | None = None,
        mask_decoder: MaskDecoder | None = None,
        focus_refiner: nn.Module | None = None,
        *,
        model_type: str = "custom",
        channel_order: str = "rgb",
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder if prompt_encoder is not None else PromptEncoder()
        self.mask_decoder = mask_decoder if mask_decoder is not None else MaskDecoder()
        #: thresholds calibrated for this decoder (from the checkpoint), or None: segment-all's
        #: ``pred_iou_thresh`` / ``stability_thresh`` and the propagation's ``min_pred_iou``
        self.segment_all_thresholds: dict[str, float] | None = None
        self.propagation_thresholds: dict[str, float] | None = None
        self.focus_refiner = focus_refiner
        self.model_type = model_type
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.channel_order = channel_order
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def has_refiner(self) -> bool:
        return self.focus_refiner is not None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1024, 1024) normalised, zero-padded images -> (B, 256, 64, 64) embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> DecoderOutput:
        """Run the prompt encoder and the mask decoder.

        image_embedding (B|1, 256, 64, 64); points (B, N, 2) as (x, y) on the 1024 canvas;
        labels (B, N) with 1 positive / 0 negative; mask_input (B, 1, 256, 256) raw logits
        of the previous step or None. Returns logits (B, M, 256, 256), iou, token (B, 1, 256).
        """
        sparse, dense = self.prompt_encoder((points, labels), mask_input)
        return self.mask_decoder(
            image_embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
        )

    def decode_pair(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[DecoderOutput, DecoderOutput]:
        """The same prompts decoded on two embeddings in one decoder call (single mask).

        first, second (1, 256, 64, 64); points (1, N, 2), labels (1, N) and mask_input
        (1, 1, 256, 256) or None, as in :meth:`decode`. The prompt encoder runs once (both
        passes share its sparse and dense embeddings) and the mask decoder runs on a batch
        of two. Returns two outputs as :meth:`decode`'s, logits (1, 1, 256, 256) each; equal
        to two :meth:`decode` calls up to float rounding (~1e-5 on the logits).
        """
        sparse, dense = self.prompt_encoder((points, labels), mask_input)
        out = self.mask_decoder(torch.cat([first, second]), self.prompt_encoder.get_dense_pe(),
                                sparse.expand(2, -1, -1), dense, False)
        return (DecoderOutput(out.logits[:1], out.iou[:1], out.token[:1]),
                DecoderOutput(out.logits[1:], out.iou[1:], out.token[1:]))

    def refine(self, image_embedding: torch.Tensor, coarse_logits: torch.Tensor,
               token: torch.Tensor) -> torch.Tensor:
        """Focus refinement (Dwin-MSA + P-DyReLU): (B, 256, 64, 64) -> (B, 256, 64, 64)."""
        if self.focus_refiner is None:
            raise RuntimeError("this model has no focus refiner (plain SAM / MobileSAM weights)")
        return self.focus_refiner(image_embedding, coarse_logits, token)
