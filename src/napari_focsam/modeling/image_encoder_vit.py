"""SAM's ViT image encoder (ViT-B / ViT-L / ViT-H).

A 1024x1024 image becomes 64x64 patch tokens (patch 16); transformer blocks use
14x14 windowed attention except a few global blocks; every block adds decomposed
relative positions to its attention logits. A convolutional neck maps the tokens
to the (B, 256, 64, 64) image embedding that the decoder and refiner consume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, count_indices


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a SAM ViT encoder."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    mlp_dim: int | None = None  # default 4 * embed_dim
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    out_chans: int = 256


VIT_CONFIGS = {
    "vit_b": ViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": ViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": ViTConfig(1280, 32, 16, (7, 15, 23, 31)),
}


class PatchEmbed(nn.Module):
    """(B, 3, H, W) image -> (B, H/16, W/16, D) patch tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def _relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather a (q_size, k_size, head_dim) table of relative-position embeddings."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_dist, mode="linear"
        ).reshape(-1, max_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[rel.long()]


class ViTAttention(nn.Module):
    """Multi-head self-attention on (B, H, W, D) with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        rh = _relative_position_table(H, H, self.rel_pos_h)  # (H, H, c)
        rw = _relative_position_table(W, W, self.rel_pos_w)  # (W, W, c)
        rq = q.reshape(B * self.num_heads, H, W, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, rw)
        attn = attn.view(-1, H, W, H, W) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        attn = attn.view(-1, H * W, H * W).softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B*nW, window, window, C), zero-padding H and W up to a multiple."""
    B, H, W, C = x.shape
    pad_h, pad_w = (window - H % window) % window, (window - W % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    Hp, Wp = padded
    B = windows.shape[0] // ((Hp // window) * (Wp // window))
    x = windows.view(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, : size[0], : size[1], :].contiguous()


class ViTBlock(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, window_size: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = (window_size, window_size) if window_size > 0 else (grid, grid)
        self.attn = ViTAttention(dim, num_heads, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """(B, 3, 1024, 1024) normalised image -> (B, 256, 64, 64) embedding."""

    def __init__(self, config: ViTConfig = VIT_CONFIGS["vit_b"]) -> None:
        super().__init__()
        self.config = config
        grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, 3, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        mlp_dim = config.mlp_dim or 4 * config.embed_dim
        self.blocks = nn.ModuleList(
            ViTBlock(
                config.embed_dim,
                config.num_heads,
                mlp_dim,
                0 if i in config.global_attn_indexes else config.window_size,
                grid,
            )
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(config.embed_dim, config.out_chans, 1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def vit_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> ViTConfig:
    """Infer a SAM ViT's width, depth, heads, window and global blocks from tensor shapes."""
    w = sd["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch = w.shape[0], w.shape[-1]
    grid = sd["image_encoder.pos_embed"].shape[1]
    depth = count_indices(sd, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_idx, window = [], 14
    for i in range(depth):
        rows = sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]
        if rows == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (rows + 1) // 2
    mlp_dim = sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]
    if mlp_dim == 4 * embed_dim:
        mlp_dim = None  # the default, as in VIT_CONFIGS
    return ViTConfig(embed_dim, depth, embed_dim // head_dim, tuple(global_idx), mlp_dim,
                     grid * patch, patch, window, sd["image_encoder.neck.0.weight"].shape[0])


def identify_vit(encoder: nn.Module) -> str | None:
    """``"vit_b"``/``"vit_l"``/``"vit_h"`` for SAM's ViTs, ``"vit_custom"`` for another ViT, None
    for another kind of encoder."""
    if not isinstance(encoder, ImageEncoderViT):
        return None
    c = encoder.config
    for name, cfg in VIT_CONFIGS.items():
        if c == cfg or (c.embed_dim, c.depth, c.num_heads, c.global_attn_indexes) == (
                cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.global_attn_indexes):
            return name
    return "vit_custom"
