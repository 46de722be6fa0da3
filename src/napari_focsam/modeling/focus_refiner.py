# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""FocSAM FocusRefiner: Dwin-MSA blocks that rewrite SAM's image embedding around the object.

Pipeline (design doc sections 1.3 and 1.4):

1. Focus region.  The coarse single-mask logits (B, 1, 256, 256) are upsampled to the
   1024x1024 canvas, binarised at 0, boxed, the box is expanded about its centre
   (1.4x at test time) and rasterised to a (B, 64, 64) token mask ("in focus" if any
   pixel of a token's 16x16 cell is inside the box).
2. Stem.  ``x = embed_proj(E)`` on the whole map; ``cls = token_proj(query_token)``.
3. ``depth`` blocks; even blocks use plain 16x16 windows, odd blocks cyclically shifted ones.
   Only windows touching the focus region are processed (gathered into the batch
   dimension); the others pass through unchanged.  Each processed window first updates a
   copy of the query token from the window (``img2cls``), then updates the window from
   the token (``cls2img``: self-attention, P-DyReLU, modulated deformable conv).  The
   window copies of the token are merged back into one token per image with a learned
   rescaling of the mean update.

Implementation note: the blocks keep the map channel-last, (B, H, W, C), and gather the
selected windows by index (``window_token_index``), so a shifted block never materialises
the rolled map and unselected windows are never copied; results are identical to
roll + partition + select + write back + unroll (a test checks this).

Rounding note: the box expansion uses ``torch.round`` (round half to even, like Python's
``round``) on float32 values computed exactly as in the reference implementation, so
half-way cases round the same way.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deform_conv import ModulatedDeformConvPack
from .focus_region import (
    Ratio, Size, box_to_token_mask, compute_focus_box, expand_box, focus_token_mask, mask_to_box, ratio2, size2)
from .p_dyrelu import PixelDynamicReLU
from .windows import count_selected_windows, select_windows, window_partition, window_token_index, window_unpartition

__all__ = [
    "Attention", "CrossAttentionBlock", "FocusRefiner", "MSAModule", "RefineBlock",
    # re-exported from focus_region and windows
    "box_to_token_mask", "compute_focus_box", "count_selected_windows", "expand_box",
    "focus_token_mask", "mask_to_box", "select_windows", "window_partition", "window_token_index",
    "window_unpartition",
]


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with one all-zero key/value "null slot" per head.

    After the q/k/v projections a zero key and a zero value are appended to every head,
    so each query can put weight on "nothing" (logit 0, contributes 0).  There is no
    learned null token and no positional encoding.
    """

    def __init__(self, embed_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: (B, Nq, C); k, v: (B, Nk, C) -> (B, Nq, C)."""
        q = self._split_heads(self.q_proj(q))
        k = F.pad(self._split_heads(self.k_proj(k)), (0, 0, 0, 1))  # (B, h, Nk + 1, d)
        v = F.pad(self._split_heads(self.v_proj(v)), (0, 0, 0, 1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        b, _, nq, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, nq, self.embed_dim))


class CrossAttentionBlock(nn.Module):
    """img2cls: the query token attends to the tokens of its window (pre-norm, LayerScale).

    ``c <- c + gamma1 * Attn(norm_q(c), norm_kv(X), norm_kv(X))``
    ``c <- c + gamma2 * MLP(norm(c))``
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * embed_dim)
        self.norm_q = nn.LayerNorm(embed_dim)
        self.norm_kv = nn.LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, num_heads)
        self.gamma1 = nn.Parameter(torch.ones(embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim)
        )
        self.gamma2 = nn.Parameter(torch.ones(embed_dim))

    def forward(self, cls: Tensor, tokens: Tensor) -> Tensor:
        """cls: (N, 1, C) window copies of the query token; tokens: (N, L, C) -> (N, 1, C)."""
        kv = self.norm_kv(tokens)
        cls = cls + self.gamma1 * self.attn(self.norm_q(cls), kv, kv)
        return cls + self.gamma2 * self.mlp(self.norm(cls))


class MSAModule(nn.Module):
    """cls2img: window self-attention + P-DyReLU + modulated deformable conv.

    ``A = PDyReLU(norm1(Attn(X, X, X)), cls_proj(c))``;  ``Y = X + gamma1 * A``;
    ``out = X + gamma2 * ReLU(norm2(conv2(Y)))`` (the second residual is on X, not Y).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.cls_proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.LayerNorm(embed_dim))
        self.attn = Attention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.relu1 = PixelDynamicReLU(embed_dim)
        self.conv2 = ModulatedDeformConvPack(embed_dim, embed_dim, kernel_size=3)
        self.norm2 = nn.GroupNorm(1, embed_dim)
        self.gamma1 = nn.Parameter(torch.ones(1, embed_dim, 1, 1))
        self.gamma2 = nn.Parameter(torch.ones(1, embed_dim, 1, 1))

    def forward(self, x: Tensor, cls: Tensor) -> Tensor:
        """x: (N, C, ws, ws) windows; cls: (N, 1, C) their query tokens -> (N, C, ws, ws)."""
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
        a = self.attn(tokens, tokens, tokens)
        a = self.relu1(self.norm1(a), self.cls_proj(cls))
        y = x + self.gamma1 * a.transpose(1, 2).reshape(n, c, h, w)
        z = F.relu(self.norm2(self.conv2(y)))
        return x + self.gamma2 * z


def _matmul_precision(dtype: torch.dtype | None, device: torch.device):
    """Autocast context for the blocks' matrix products (None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class RefineBlock(nn.Module):
    """One Dwin-MSA block: plain (``shift_size=0``) or cyclically shifted windows.

    Only windows that contain an in-focus token are processed; all others pass through
    unchanged.  Shifted blocks use the windows of the map rolled by ``-shift_size`` (with
    wrap-around and no attention mask), without materialising the roll: the selected
    windows are gathered from, and written back to, the channel-last map by index.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        shift_size: int = 0,
        cls_scale: bool = True,
    ) -> None:
        """
        Arguments:
          embed_dim, num_heads, mlp_ratio: layer sizes.
          window_size (int): window side in tokens.
          shift_size (int): cyclic shift (0 for a plain block).
          cls_scale (bool): whether the block merges the window tokens with the learned
            ``cls_scale_proj`` rescaling (all blocks but the last).
        """
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        #: dtype of the matrix products inside the windows (None: that of the input);
        #: set for the whole refiner with ``FocusRefiner.set_matmul_dtype``
        self.matmul_dtype: torch.dtype | None = None
        self.img2cls = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio)
        self.cls2img = MSAModule(embed_dim, num_heads)
        if cls_scale:
            self.cls_scale_proj = nn.Linear(1, 1)
            nn.init.ones_(self.cls_scale_proj.weight)
            nn.init.zeros_(self.cls_scale_proj.bias)
        else:
            self.cls_scale_proj = None

    def select(self, token_mask: Tensor) -> Tensor:
        """token_mask (B, H, W) bool -> (B, nH * nW) bool selected windows of this block."""
        return select_windows(token_mask, self.window_size, self.shift_size)

    def forward(
        self, x: Tensor, cls: Tensor, token_mask: Tensor, inplace: bool = False
    ) -> tuple[Tensor, Tensor]:
        """
        Arguments:
          x (Tensor): (B, Hp, Wp, C) channel-last token map, Hp and Wp multiples of the
            window size (``FocusRefiner`` pads once and re-zeroes the padding).
          cls (Tensor): (B, 1, C) query token.
          token_mask (Tensor): (B, H, W) bool focus mask (H <= Hp, W <= Wp).
          inplace (bool): write the processed windows into ``x`` itself (saves a copy of
            the map; only for maps the caller owns and that need no gradient).

        Returns:
          x (Tensor): (B, Hp, Wp, C) updated map.
          cls (Tensor): (B, 1, C) updated query token.
        """
        b, hp, wp, c = x.shape
        ws = self.window_size
        selected = self.select(token_mask)  # (B, nW)
        num_windows = selected.shape[1]
        cls_win = cls.repeat_interleave(num_windows, dim=0)  # (B * nW, 1, C)
        batch_index, window_index = selected.nonzero(as_tuple=True)

        if batch_index.numel() > 0:
            index = window_token_index(batch_index, window_index, (hp, wp), ws, self.shift_size)
            windows = x[index]  # (N, ws, ws, C)
            flat = batch_index * num_windows + window_index
            with _matmul_precision(self.matmul_dtype, x.device):
                cls_sel = self.img2cls(cls_win.index_select(0, flat), windows.view(-1, ws * ws, c))
                # MSAModule is layout-agnostic; a channels-last NCHW view avoids copies.
                out = self.cls2img(windows.permute(0, 3, 1, 2), cls_sel).permute(0, 2, 3, 1)
            out, cls_sel = out.to(x.dtype), cls_sel.to(cls.dtype)
            x = x.index_put_(index, out) if inplace else x.index_put(index, out)
            cls_win = cls_win.index_copy(0, flat, cls_sel)

        # Merge the window copies of the token: mean over all windows of the image
        # (unselected ones still hold the incoming token), then rescale the update by
        # s = exp(w * -log(r) + b), r = fraction of selected windows (>= 0.01).
        cls_mean = cls_win.view(b, num_windows, 1, c).mean(dim=1)
        if self.cls_scale_proj is None:
            return x, cls_mean
        ratio = selected.to(cls.dtype).mean(dim=1).clamp(min=1e-2).view(b, 1, 1)
        scale = self.cls_scale_proj(-ratio.log()).exp()
        return x, scale * (cls_mean - cls) + cls


# --------------------------------------------------------------------------------------
# FocusRefiner
# --------------------------------------------------------------------------------------


class FocusRefiner(nn.Module):
    """FocSAM's refine head: rewrites a SAM image embedding around the focused object.

    Official settings (FocSAM ViT-H): ``embed_dim=256, depth=12, num_heads=8,
    mlp_ratio=4.0, window_size=16, shift_size=8, expand_ratio=1.4``; 25,396,058 parameters.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        window_size: int = 16,
        shift_size: int | None = 8,
        expand_ratio: Ratio = 1.4,
        expand_ratio_range: tuple[float, float] | None = (1.0, 1.4),
        canvas_size: Size = 1024,
    ) -> None:
        """
        Arguments:
          embed_dim (int): channel count of the image embedding (256 for every SAM).
          depth (int): number of blocks; even blocks use plain, odd blocks shifted windows.
          num_heads (int): attention heads.
          mlp_ratio (float): hidden width of the token MLP relative to embed_dim.
          window_size (int): window side in tokens.
          shift_size (int or None): cyclic shift of odd blocks (None: window_size // 2).
          expand_ratio (float or (h, w)): box expansion used in eval mode.
          expand_ratio_range ((lo, hi) or None): in training mode, when no ratio is passed
            to ``forward``, h and w ratios are drawn independently from U(lo, hi) once per
            call (torch's global RNG).  None disables the draw.
          canvas_size (int or (H, W)): model input canvas the coarse logits refer to.
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift_size is None else shift_size
        self.expand_ratio = ratio2(expand_ratio)
        self.expand_ratio_range = None if expand_ratio_range is None else tuple(expand_ratio_range)
        self.canvas_size = size2(canvas_size)
        self.last_expand_ratio: tuple[float, float] | None = None

        self.embed_proj = nn.Conv2d(embed_dim, embed_dim, kernel_size=1)
        self.token_proj = nn.Linear(embed_dim, embed_dim)
        self.blocks = nn.ModuleList(
            RefineBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size,
                shift_size=0 if i % 2 == 0 else self.shift_size,
                cls_scale=i < depth - 1,
            )
            for i in range(depth)
        )

    def set_matmul_dtype(self, dtype: torch.dtype | None) -> None:
        """Run the blocks' matrix products (linear layers, attention, the deformable
        convolution's GEMM) in ``dtype`` with float32 accumulation, e.g. ``torch.bfloat16``
        on CPUs with native bf16 dot products; norms, softmax statistics, the residual
        map and the output stay float32. None restores full precision."""
        for block in self.blocks:
            block.matmul_dtype = dtype

    @property
    def matmul_dtype(self) -> torch.dtype | None:
        return self.blocks[0].matmul_dtype if len(self.blocks) else None

    def resolve_expand_ratio(self, expand_ratio: Ratio | None = None) -> tuple[float, float]:
        """The (h, w) ratio of this call: explicit > random draw in training > default."""
        if expand_ratio is not None:
            return ratio2(expand_ratio)
        if self.training and self.expand_ratio_range is not None:
            lo, hi = self.expand_ratio_range
            h_ratio, w_ratio = (lo + (hi - lo) * torch.rand(2, dtype=torch.float64)).tolist()
            return h_ratio, w_ratio
        return ratio2(self.expand_ratio)

    def focus_mask(
        self,
        coarse_logits: Tensor,
        grid_size: Size = 64,
        expand_ratio: Ratio | None = None,
    ) -> Tensor:
        """coarse_logits (B, 1, h, w) -> (B, gh, gw) bool token mask of the focus region."""
        ratio = self.resolve_expand_ratio(expand_ratio)
        self.last_expand_ratio = ratio
        return focus_token_mask(coarse_logits, ratio, self.canvas_size, grid_size)

    def selected_windows_per_block(self, token_mask: Tensor) -> Tensor:
        """token_mask (B, H, W) bool -> (B, depth) int64 number of processed windows."""
        return count_selected_windows(token_mask, self.depth, self.window_size, self.shift_size)

    def forward(
        self,
        image_embedding: Tensor,
        coarse_logits: Tensor | None,
        query_token: Tensor,
        token_mask: Tensor | None = None,
        expand_ratio: Ratio | None = None,
    ) -> Tensor:
        """
        Arguments:
          image_embedding (Tensor): (B, C, H, W) SAM image embedding (C=256, H=W=64).
          coarse_logits (Tensor or None): (B, 1, h, w) single-mask decoder logits; may be
            None when ``token_mask`` is given.
          query_token (Tensor): (B, 1, C) or (B, C) decoder output token of mask #0.
          token_mask (Tensor or None): (B, H, W) bool focus mask overriding the box
            computed from ``coarse_logits``.
          expand_ratio (float, (h, w) or None): box expansion for this call.

        Returns:
          (Tensor): (B, C, H, W) refined embedding.
        """
        if query_token.dim() == 2:
            query_token = query_token[:, None]
        if query_token.dim() != 3 or query_token.shape[1] != 1:
            raise ValueError(f"query_token must be (B, 1, C), got {tuple(query_token.shape)}")
        grid = tuple(image_embedding.shape[-2:])
        if token_mask is None:
            if coarse_logits is None:
                raise ValueError("either coarse_logits or token_mask is required")
            token_mask = self.focus_mask(coarse_logits, grid, expand_ratio)
        token_mask = token_mask.to(device=image_embedding.device, dtype=torch.bool)
        if token_mask.dim() == 4:
            token_mask = token_mask[:, 0]
        if tuple(token_mask.shape) != (image_embedding.shape[0],) + grid:
            raise ValueError(
                f"token_mask must be {(image_embedding.shape[0],) + grid}, "
                f"got {tuple(token_mask.shape)}"
            )

        # NCHW in memory whatever the caller's layout: the convolution's result must not depend on it
        x = self.embed_proj(image_embedding.contiguous())
        cls = self.token_proj(query_token)
        h, w = grid
        ws = self.window_size
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        # Channel-last (B, Hp, Wp, C) map for the blocks; windows are gathered by index.
        x = F.pad(x, (0, pad_w, 0, pad_h)).permute(0, 2, 3, 1).contiguous()
        # The map is our own copy, so without autograd the blocks may update it in place.
        inplace = not torch.is_grad_enabled()
        for block in self.blocks:
            x, cls = block(x, cls, token_mask, inplace=inplace)
            if pad_h or pad_w:  # the reference crops and zero-pads again in every block
                x = F.pad(x[:, :h, :w], (0, 0, 0, pad_w, 0, pad_h))
        # channels last in memory, as the embedding store's: the decoder reads it as tokens without a copy
        return x[:, :h, :w].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
