"""MobileSAM's TinyViT-5M image encoder.

A 1024x1024 image goes through a stride-4 convolutional stem (256x256x64), one
stage of inverted-residual convolutions, and three stages of windowed attention
blocks with learned per-offset attention biases and a depth-wise "local" conv.
Patch merging halves the resolution twice (to 128, then 64) and keeps it at 64
for the last stage, so the neck receives (B, 320, 64, 64) and returns the SAM
style (B, 256, 64, 64) embedding. All convolutions carry a BatchNorm (inference
statistics from the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    """Stage widths, depths, heads and window sizes of TinyViT (MobileSAM's 5M variant)."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    img_size: int = 1024
    out_chans: int = 256
    num_classes: int = 1000


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d (keys ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class ConvStem(nn.Module):
    """(B, 3, 1024, 1024) -> (B, C0, 256, 256): two stride-2 3x3 ConvBN with GELU between."""

    def __init__(self, cout: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, cout // 2, 3, 2, 1), nn.GELU(), ConvBN(cout // 2, cout, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depth-wise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) tokens -> (B, H'*W', C') tokens; stride 2, or 1 for wide stages."""

    def __init__(self, resolution: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            B, _, C = x.shape
            x = x.view(B, self.resolution, self.resolution, C).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks at stem resolution, then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class BiasedWindowAttention(nn.Module):
    """Pre-norm attention over (Bw, ws*ws, C) windows with a learned bias per |dy|,|dx| offset and head.

    ``qkv`` is laid out head-major: for each head its q, k and v channels are contiguous.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("bias_index", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.bias_index]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class TokenMLP(nn.Module):
    """Pre-norm MLP on tokens: fc2(GELU(fc1(LN(x))))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed biased attention + depth-wise 3x3 local conv + MLP on (B, H*W, C) tokens."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = BiasedWindowAttention(dim, num_heads, window)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H = W = self.resolution
        ws = self.window
        if H == ws and W == ws:
            return self.attn(x)
        x = x.view(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        nh, nw = Hp // ws, Wp // ws
        x = x.view(B, nh, ws, nw, ws, C).transpose(2, 3).reshape(B * nh * nw, ws * ws, C)
        x = self.attn(x)
        x = x.view(B, nh, nw, ws, ws, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        return x[:, :H, :W].reshape(B, L, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        x = x + self._windowed_attention(x)
        x = x.transpose(1, 2).reshape(B, C, self.resolution, self.resolution)
        x = self.local_conv(x).view(B, C, L).transpose(1, 2)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks, then optional patch merging."""

    def __init__(self, dim, resolution, depth, num_heads, window, mlp_ratio, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """(B, 3, 1024, 1024) normalised image -> (B, 256, 64, 64) embedding.

    ``norm_head`` / ``head`` are TinyViT's ImageNet classifier; MobileSAM checkpoints carry
    them, so they exist for strict loading, but :meth:`forward` never uses them.
    """

    def __init__(self, config: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        self.config = config
        dims = config.embed_dims
        self.patch_embed = ConvStem(dims[0])
        res = config.img_size // 4
        layers: list[nn.Module] = []
        for i, depth in enumerate(config.depths):
            last = i == len(config.depths) - 1
            down = None if last else PatchMerging(res, dims[i], dims[i + 1])
            if i == 0:
                layers.append(ConvStage(dims[0], depth, config.mbconv_expand_ratio, down))
            else:
                layers.append(
                    AttentionStage(dims[i], res, depth, config.num_heads[i], config.window_sizes[i],
                                   config.mlp_ratio, down)
                )
            if not last and dims[i + 1] not in (320, 448, 576):
                res //= 2
        self.layers = nn.ModuleList(layers)
        self.final_resolution = res
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], config.num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, 1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        r = self.final_resolution
        return self.neck(x.view(B, r, r, C).permute(0, 3, 1, 2))
