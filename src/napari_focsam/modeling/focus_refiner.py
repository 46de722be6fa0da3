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
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deform_conv import ModulatedDeformConvPack
from .p_dyrelu import PixelDynamicReLU

Ratio = Union[float, Sequence[float]]
Size = Union[int, Sequence[int]]


def _size2(v: Size) -> Tuple[int, int]:
    if isinstance(v, (tuple, list, torch.Size)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _ratio2(v: Ratio) -> Tuple[float, float]:
    """float or (h_ratio, w_ratio) -> (h_ratio, w_ratio) as Python floats."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expand ratio must be a float or (h_ratio, w_ratio), got {v}")
        return float(v[0]), float(v[1])
    return float(v), float(v)


# --------------------------------------------------------------------------------------
# Focus region: boxes and token masks
# --------------------------------------------------------------------------------------


def mask_to_box(mask: Tensor) -> Tensor:
    """Tight bounding box of a binary mask.

    Arguments:
      mask (Tensor): (B, H, W) or (B, 1, H, W), bool or numeric (non-zero = foreground).

    Returns:
      (Tensor): (B, 4) int64 boxes ``(left, top, right, bottom)`` with right/bottom
        exclusive.  An empty mask gives the whole canvas ``(0, 0, W, H)``.
    """
    if mask.dim() == 4:
        mask = mask[:, 0]
    mask = mask.bool()
    b, h, w = mask.shape
    rows = mask.any(dim=-1)  # (B, H)
    cols = mask.any(dim=-2)  # (B, W)
    ys = torch.arange(h, device=mask.device)
    xs = torch.arange(w, device=mask.device)
    top = torch.where(rows, ys, h).amin(dim=-1)
    bottom = torch.where(rows, ys + 1, 0).amax(dim=-1)
    left = torch.where(cols, xs, w).amin(dim=-1)
    right = torch.where(cols, xs + 1, 0).amax(dim=-1)
    boxes = torch.stack((left, top, right, bottom), dim=-1)
    full = torch.tensor([0, 0, w, h], device=mask.device, dtype=boxes.dtype).expand(b, 4)
    empty = ~rows.any(dim=-1, keepdim=True)
    return torch.where(empty, full, boxes)


def expand_box(boxes: Tensor, h_ratio: float, w_ratio: float, height: int, width: int) -> Tensor:
    """Scale boxes about their centres and clip them to the canvas.

    Each side moves to ``round(c + ratio * (side - c))`` where ``c`` is the centre along
    that axis (``h_ratio`` for top/bottom, ``w_ratio`` for left/right), then is clipped to
    ``[0, width]`` / ``[0, height]``.  Arithmetic is float32 and ``torch.round`` rounds
    half to even, matching the reference.

    Arguments:
      boxes (Tensor): (B, 4) ``(left, top, right, bottom)``, right/bottom exclusive.
      h_ratio, w_ratio (float): expansion factors.
      height, width (int): canvas size.

    Returns:
      (Tensor): (B, 4) int64 expanded boxes.
    """
    left, top, right, bottom = boxes.to(torch.float32).unbind(dim=-1)
    xc = (left + right) / 2.0
    yc = (top + bottom) / 2.0
    left = torch.round(xc - w_ratio * (xc - left)).clamp(0, width)
    right = torch.round(xc - w_ratio * (xc - right)).clamp(0, width)
    top = torch.round(yc - h_ratio * (yc - top)).clamp(0, height)
    bottom = torch.round(yc - h_ratio * (yc - bottom)).clamp(0, height)
    return torch.stack((left, top, right, bottom), dim=-1).long()


def compute_focus_box(
    coarse_logits: Tensor, expand_ratio: Ratio = 1.4, canvas_size: Size = 1024
) -> Tensor:
    """Expanded bounding box of the coarse mask on the model canvas.

    Arguments:
      coarse_logits (Tensor): (B, 1, h, w) or (B, h, w) low-res decoder logits (SAM: 256x256).
      expand_ratio (float or (h_ratio, w_ratio)): box expansion about the centre.
      canvas_size (int or (H, W)): canvas the logits are upsampled to (SAM: 1024).

    Returns:
      (Tensor): (B, 4) int64 boxes ``(left, top, right, bottom)`` in canvas pixels,
        right/bottom exclusive.  An empty coarse mask gives the whole canvas.
    """
    if coarse_logits.dim() == 3:
        coarse_logits = coarse_logits[:, None]
    height, width = _size2(canvas_size)
    h_ratio, w_ratio = _ratio2(expand_ratio)
    up = F.interpolate(
        coarse_logits.detach().float(), (height, width), mode="bilinear", align_corners=False
    )
    boxes = mask_to_box(up[:, 0] > 0.0)
    return expand_box(boxes, h_ratio, w_ratio, height, width)


def box_to_token_mask(boxes: Tensor, canvas_size: Size = 1024, grid_size: Size = 64) -> Tensor:
    """Rasterise boxes and max-pool them to the token grid.

    Equivalent to drawing each box into a (H, W) binary canvas and applying
    ``F.adaptive_max_pool2d(canvas, grid_size)``, computed directly from the cell bounds.

    Arguments:
      boxes (Tensor): (B, 4) ``(left, top, right, bottom)`` canvas pixels, exclusive ends.
      canvas_size (int or (H, W)): canvas size (SAM: 1024).
      grid_size (int or (h, w)): token grid size (SAM: 64).

    Returns:
      (Tensor): (B, h, w) bool, True for tokens whose cell intersects the box.
    """
    height, width = _size2(canvas_size)
    gh, gw = _size2(grid_size)
    boxes = boxes.long()
    left, top, right, bottom = (v[:, None] for v in boxes.unbind(dim=-1))
    dev = boxes.device
    iy = torch.arange(gh, device=dev)
    ix = torch.arange(gw, device=dev)
    # Adaptive pooling cell i covers [floor(i*S/n), ceil((i+1)*S/n)).
    y0, y1 = (iy * height) // gh, ((iy + 1) * height + gh - 1) // gh
    x0, x1 = (ix * width) // gw, ((ix + 1) * width + gw - 1) // gw
    rows = (y0[None] < bottom) & (y1[None] > top) & (bottom > top)  # (B, h)
    cols = (x0[None] < right) & (x1[None] > left) & (right > left)  # (B, w)
    return rows[:, :, None] & cols[:, None, :]


def focus_token_mask(
    coarse_logits: Tensor,
    expand_ratio: Ratio = 1.4,
    canvas_size: Size = 1024,
    grid_size: Size = 64,
) -> Tensor:
    """Token mask of the focus region: ``box_to_token_mask(compute_focus_box(...))``.

    Arguments:
      coarse_logits (Tensor): (B, 1, h, w) low-res decoder logits.
      expand_ratio (float or (h_ratio, w_ratio)): box expansion.
      canvas_size (int or (H, W)): model canvas (1024).
      grid_size (int or (h, w)): embedding grid (64).

    Returns:
      (Tensor): (B, gh, gw) bool.
    """
    boxes = compute_focus_box(coarse_logits, expand_ratio, canvas_size)
    return box_to_token_mask(boxes, canvas_size, grid_size)


# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------


def window_partition(x: Tensor, window_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Split a channel-first map into non-overlapping windows, zero-padding if needed.

    Arguments:
      x (Tensor): (B, C, H, W).
      window_size (int): window side ws.

    Returns:
      windows (Tensor): (B * nH * nW, C, ws, ws), ordered image-major, then row-major.
      (Hp, Wp) (tuple): padded size.
    """
    b, c, h, w = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    nh, nw = hp // window_size, wp // window_size
    x = x.view(b, c, nh, window_size, nw, window_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * nh * nw, c, window_size, window_size), (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: Tuple[int, int], hw: Tuple[int, int]
) -> Tensor:
    """Inverse of ``window_partition``.

    Arguments:
      windows (Tensor): (B * nH * nW, C, ws, ws).
      window_size (int): window side ws.
      pad_hw (tuple): padded size (Hp, Wp).
      hw (tuple): original size (H, W).

    Returns:
      (Tensor): (B, C, H, W).
    """
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    c = windows.shape[1]
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, c, window_size, window_size).permute(0, 3, 1, 4, 2, 5)
    x = x.reshape(b, c, hp, wp)
    if hp > h or wp > w:
        x = x[:, :, :h, :w].contiguous()
    return x


def select_windows(token_mask: Tensor, window_size: int = 16, shift_size: int = 0) -> Tensor:
    """Which windows of a (possibly shifted) block touch the focus region.

    Arguments:
      token_mask (Tensor): (B, H, W) bool focus mask on the token grid.
      window_size (int): window side.
      shift_size (int): cyclic shift of the block (0 for plain blocks).

    Returns:
      (Tensor): (B, nH * nW) bool, True for windows with any in-focus token.
    """
    m = token_mask[:, None].to(torch.uint8)
    b, _, h, w = m.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        m = F.pad(m, (0, pad_w, 0, pad_h))
    if shift_size:
        m = torch.roll(m, shifts=(-shift_size, -shift_size), dims=(-2, -1))
    wins, _ = window_partition(m, window_size)
    return wins.flatten(1).amax(dim=1).bool().view(b, -1)


def count_selected_windows(
    token_mask: Tensor, depth: int = 12, window_size: int = 16, shift_size: int = 8
) -> Tensor:
    """Number of processed windows per image and block (even blocks plain, odd shifted).

    Arguments:
      token_mask (Tensor): (B, H, W) bool focus mask on the token grid.
      depth (int): number of blocks.
      window_size, shift_size (int): window geometry.

    Returns:
      (Tensor): (B, depth) int64.
    """
    plain = select_windows(token_mask, window_size, 0).sum(dim=1)
    shifted = select_windows(token_mask, window_size, shift_size).sum(dim=1)
    return torch.stack([plain if i % 2 == 0 else shifted for i in range(depth)], dim=1)


def window_token_index(
    batch_index: Tensor,
    window_index: Tensor,
    grid_hw: Tuple[int, int],
    window_size: int,
    shift_size: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Advanced-indexing tuple addressing the tokens of selected (shifted) windows.

    Window ``w`` of a block with cyclic shift ``s`` holds the tokens at rows
    ``(wy * ws + s + 0..ws-1) mod Hp`` and columns ``(wx * ws + s + 0..ws-1) mod Wp`` of the
    (padded) map, which is what rolling by ``-s`` and partitioning gives.

    Arguments:
      batch_index, window_index (Tensor): (N,) image and window (row-major) of each
        selected window.
      grid_hw (tuple): padded token grid (Hp, Wp), multiples of window_size.
      window_size, shift_size (int): window geometry.

    Returns:
      (b, rows, cols) (tuple of Tensor): broadcastable (N, 1, 1), (N, ws, 1), (N, 1, ws)
        indices, so that ``x[b, rows, cols]`` is (N, ws, ws, C) for x of shape (B, Hp, Wp, C).
    """
    hp, wp = grid_hw
    nw = wp // window_size
    ar = torch.arange(window_size, device=window_index.device) + shift_size
    rows = ((window_index // nw) * window_size)[:, None] + ar
    cols = ((window_index % nw) * window_size)[:, None] + ar
    return batch_index[:, None, None], (rows % hp)[:, :, None], (cols % wp)[:, None, :]


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


def _matmul_precision(dtype: Optional[torch.dtype], device: torch.device):
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
        self.matmul_dtype: Optional[torch.dtype] = None
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
    ) -> Tuple[Tensor, Tensor]:
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
        shift_size: Optional[int] = 8,
        expand_ratio: Ratio = 1.4,
        expand_ratio_range: Optional[Tuple[float, float]] = (1.0, 1.4),
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
        self.expand_ratio = _ratio2(expand_ratio)
        self.expand_ratio_range = None if expand_ratio_range is None else tuple(expand_ratio_range)
        self.canvas_size = _size2(canvas_size)
        self.last_expand_ratio: Optional[Tuple[float, float]] = None

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

    def set_matmul_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Run the blocks' matrix products (linear layers, attention, the deformable
        convolution's GEMM) in ``dtype`` with float32 accumulation, e.g. ``torch.bfloat16``
        on CPUs with native bf16 dot products; norms, softmax statistics, the residual
        map and the output stay float32. None restores full precision."""
        for block in self.blocks:
            block.matmul_dtype = dtype

    @property
    def matmul_dtype(self) -> Optional[torch.dtype]:
        return self.blocks[0].matmul_dtype if len(self.blocks) else None

    def resolve_expand_ratio(self, expand_ratio: Optional[Ratio] = None) -> Tuple[float, float]:
        """The (h, w) ratio of this call: explicit > random draw in training > default."""
        if expand_ratio is not None:
            return _ratio2(expand_ratio)
        if self.training and self.expand_ratio_range is not None:
            lo, hi = self.expand_ratio_range
            h_ratio, w_ratio = (lo + (hi - lo) * torch.rand(2, dtype=torch.float64)).tolist()
            return h_ratio, w_ratio
        return _ratio2(self.expand_ratio)

    def focus_mask(
        self,
        coarse_logits: Tensor,
        grid_size: Size = 64,
        expand_ratio: Optional[Ratio] = None,
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
        coarse_logits: Optional[Tensor],
        query_token: Tensor,
        token_mask: Optional[Tensor] = None,
        expand_ratio: Optional[Ratio] = None,
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

        x = self.embed_proj(image_embedding)
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
        return x[:, :h, :w].permute(0, 3, 1, 2).contiguous()
