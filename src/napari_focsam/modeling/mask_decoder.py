"""SAM's mask decoder (unchanged by FocSAM; FocSAM also reads the mask-#0 output token)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from . import fast_ops
from .common import MLP, LayerNorm2d
from .fast_ops import tensor_version
from .transformer import TwoWayTransformer


class DecoderOutput(NamedTuple):
    """Decoder results.

    logits: (B, M, 256, 256) raw mask logits; M = 1 (single mask #0) or 3 (multimask).
    iou: (B, M) predicted IoU of each mask.
    token: (B, 1, C) output token of mask #0 (FocSAM's click-fused query).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    token: torch.Tensor


class PatchConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d with kernel == stride (no overlap), computed as one matrix product.

    Each input pixel maps linearly to a k x k patch of output pixels; a GEMM plus a
    reshuffle is about twice as fast on CPU as the generic transposed convolution.
    Same parameters and state-dict keys as ``nn.ConvTranspose2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 2) -> None:
        super().__init__(in_channels, out_channels, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, kH, kW)
        B, C, H, W = x.shape
        k = self.kernel_size[0]
        y = self.forward_pixels(x.permute(0, 2, 3, 1).reshape(-1, C))
        y = y.view(B, H, W, k, k, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return y.reshape(B, self.out_channels, k * H, k * W)

    def forward_pixels(self, x: torch.Tensor, act: str | None = None) -> torch.Tensor:
        """(N, Cin) input pixels -> (N * k * k, Cout) output pixels in patch order.

        Output row ``n * k * k + dy * k + dx`` is the pixel at offset (dy, dx) of input
        pixel ``n``'s patch; the bias is fused into the matrix product. ``act="gelu"``
        (only without autograd) fuses a GELU into it as well.
        """
        k = self.kernel_size[0]
        cout = self.out_channels
        weight = self.weight.permute(0, 2, 3, 1).reshape(x.shape[1], k * k * cout)
        if not torch.is_grad_enabled():  # (oneDNN on CPUs: no copy of the bias into the output)
            return fast_ops.linear(x, weight.t().contiguous(), self.bias.repeat(k * k), act).view(-1, cout)
        if act is not None:
            raise RuntimeError("forward_pixels(act=...) is for inference only")
        return torch.addmm(self.bias.repeat(k * k), x, weight).view(-1, cout)


class MaskDecoder(nn.Module):
    """Two-way transformer over prompt + output tokens, upscaling, hyper-network mask heads."""

    def __init__(self, transformer_dim: int = 256, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(2, transformer_dim, 8, 2048, 2)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            PatchConvTranspose2d(transformer_dim, transformer_dim // 4),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            PatchConvTranspose2d(transformer_dim // 4, transformer_dim // 8),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> DecoderOutput:
        """image_embeddings (B|1, C, 64, 64), image_pe (1, C, 64, 64), sparse (B, N, C), dense (B, C, 64, 64)."""
        hyper_in, iou, token, src = self.decode_tokens(image_embeddings, image_pe, sparse_prompt_embeddings,
                                                       dense_prompt_embeddings, multimask_output)
        masks = self.upscale_masks(src, hyper_in, image_embeddings.shape[-2:])
        return DecoderOutput(masks, iou, token)

    def decode_tokens(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                      multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder up to the upscaling: hyper-network weights (B, M, C/8), predicted IoU
        (B, M), mask-#0 token (B, 1, C) and the image tokens (B, h*w, C) that
        :meth:`upscale_masks` turns into logits (each token into its own 4x4 patch of logits)."""
        B = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings], dim=1)
        image_tokens = self._image_tokens(image_embeddings, image_pe, dense_prompt_embeddings)
        hs, src = self.transformer(None, image_pe, tokens, image_tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        sel = range(1, self.num_mask_tokens) if multimask_output else range(0, 1)
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens_out[:, i]) for i in sel], dim=1)
        iou = self.iou_prediction_head(iou_token_out)
        iou = iou[:, 1:] if multimask_output else iou[:, :1]
        return hyper_in, iou, mask_tokens_out[:, :1], src

    def _image_tokens(self, image: torch.Tensor, image_pe: torch.Tensor,
                      dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's image tokens for ``image + dense``.

        Without a mask prompt, ``dense`` is one learned vector broadcast over the map, so
        the tokens depend only on the image: they are kept (with the image, the dense
        vector and the PE they came from, compared by identity and version) and reused
        by every first click of an object on the same image. Recomputed when autograd is on.
        (Tensors made under ``torch.inference_mode`` carry no version counter: changing an
        embedding in place there is not noticed; the predictors never do.)
        """
        constant = dense.stride(-1) == 0 and dense.stride(-2) == 0
        if torch.is_grad_enabled() or not constant:
            return self.transformer.image_tokens(image + dense, image_pe)
        if image.shape[0] == 1 and dense.stride(0) == 0:
            dense = dense[:1]  # one image, prompts without a mask: the same tokens serve all of them
        v = tensor_version
        key = (image, v(image), dense.data_ptr(), v(dense), dense.shape, image_pe, v(image_pe))
        cached = getattr(self, "_tokens_cache", None)
        if cached is None or not all(a is b if isinstance(a, torch.Tensor) else a == b
                                     for a, b in zip(cached[0], key)):
            # the key's tensors and ``dense`` are held, so their memory is not reused meanwhile
            cached = self._tokens_cache = (key, self.transformer.image_tokens(image + dense, image_pe), dense)
        return cached[1]

    def upscale_masks(self, src: torch.Tensor, hyper_in: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Image tokens (B, h*w, C) and hyper-network weights (B, M, C/8) -> (B, M, 4h, 4w).

        Same result as ``output_upscaling`` on the (B, C, h, w) image followed by the
        product with ``hyper_in``, but every step runs on rows of channels in patch order
        (LayerNorm2d is a LayerNorm over those rows), so the two 4x-larger feature maps
        are never reshuffled; only the M output maps are put back in raster order.
        """
        up1, norm, _, up2, _ = self.output_upscaling
        B, M = hyper_in.shape[:2]
        h, w = size
        x = up1.forward_pixels(src.reshape(-1, src.shape[-1]))  # (B*h*w*4, C/4)
        x = F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
        if torch.is_grad_enabled():
            x = F.gelu(up2.forward_pixels(F.gelu(x)))  # (B*h*w*16, C/8)
        else:  # in place, and GELU fused into the second product
            x = up2.forward_pixels(torch.ops.aten.gelu_(x), act="gelu")
        masks = torch.bmm(x.view(B, -1, x.shape[-1]), hyper_in.transpose(1, 2))  # (B, h*w*16, M)
        # rows are (y, x, dy, dx, ey, ex) -> pixel (4y + 2dy + ey, 4x + 2dx + ex)
        masks = masks.view(B, h, w, 2, 2, 2, 2, M).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(B, M, 4 * h, 4 * w)


def upscale_window(decoder: MaskDecoder, src: torch.Tensor, hyper_in: torch.Tensor, size: tuple[int, int],
                   starts: torch.Tensor, window: int) -> torch.Tensor:
    """:meth:`MaskDecoder.upscale_masks` over a ``window`` x ``window`` block of tokens only.

    src (B, h*w, C) image tokens of an (h, w) grid, hyper_in (B, M, C/8), starts (B, 2) the
    (row, column) of each block's first token (the block inside the grid). Returns the
    block's logits (B, M, 4 window, 4 window): each token makes its own 4x4 patch of logits
    (the upscaling has no overlap), so these are the values of the full map there.
    """
    B, _, C = src.shape
    w = size[1]
    r = torch.arange(window, device=src.device)
    rows = (starts[:, :1, None] + r[None, :, None]) * w + starts[:, 1:, None] + r[None, None, :]  # (B, win, win)
    block = torch.gather(src, 1, rows.reshape(B, -1, 1).expand(-1, -1, C))
    return decoder.upscale_masks(block, hyper_in, (window, window))


def upscale_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, M, h, w) logits."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
