"""MobileSAM's TinyViT-5M image encoder.

A 1024x1024 image goes through a stride-4 convolutional stem (256x256x64), one
stage of inverted-residual convolutions, and three stages of windowed attention
blocks with learned per-offset attention biases and a depth-wise "local" conv.
Patch merging halves the resolution twice (to 128, then 64) and keeps it at 64
for the last stage, so the neck receives (B, 320, 64, 64) and returns the SAM
style (B, 256, 64, 64) embedding. All convolutions carry a BatchNorm (inference
statistics from the checkpoint).

Fast path: in eval mode without autograd (``torch.inference_mode`` / ``torch.no_grad``) the
encoder runs every BatchNorm folded into its convolution, keeps activations channels-last
(1x1 convolutions become row-wise linear layers, the depth-wise ones channels-last
convolutions), fuses GELU and residual sums into oneDNN kernels on CPUs
(:mod:`.fast_ops`), pre-scales queries and pre-gathers the attention-bias tables, and
partitions / merges windows without intermediate padded copies. The result equals the
plain path up to float rounding; the folded tensors are rebuilt whenever a parameter
changes and never enter the state dict. ``TinyViT.fast_inference = False`` forces the plain
path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_ops
from .common import LayerNorm2d, count_indices
from .fast_ops import DerivedTensors, cast, fast_path_enabled, fold_batchnorm

F32 = torch.float32


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

    #: dtype of the fast path's products (None: float32); set by ``TinyViT.set_matmul_dtype``
    matmul_dtype: torch.dtype | None = None

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self._folded = DerivedTensors()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the convolution with the BatchNorm folded in, in ``matmul_dtype`` (cached)."""
        bn, dtype = self.bn, self.matmul_dtype
        return self._folded.get((self.c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                lambda: cast(fold_batchnorm(self.c.weight, bn), dtype), dtype)

    def conv_fast(self, x: torch.Tensor, act: str | None = None,
                  out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Folded conv (+ GELU) on a channels-last (B, C, H, W) tensor; channels-last out."""
        w, b = self.folded()
        return fast_ops.conv2d(x, w, b, self.c.stride[0], self.c.padding[0], self.c.groups, act, out_dtype)

    def linear_fast(self, rows: torch.Tensor, act: str | None = None, add: torch.Tensor | None = None,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Folded 1x1 conv as a linear layer on (N, C) rows: act(rows @ w.T + b + add)."""
        w, b = self.folded()
        return fast_ops.linear(rows, w.view(w.shape[0], -1), b, act, add, out_dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Channels-last (B, C, H, W) -> (B*H*W, C) view."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _image(rows: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    """(B*H*W, C) or (B, H*W, C) rows -> channels-last (B, C, H, W) view."""
    return rows.view(B, H, W, -1).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """(B, 3, 1024, 1024) -> (B, C0, 256, 256): two stride-2 3x3 ConvBN with GELU between."""

    def __init__(self, cout: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, cout // 2, 3, 2, 1), nn.GELU(), ConvBN(cout // 2, cout, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        x = self.seq[0].conv_fast(x.contiguous(memory_format=torch.channels_last), "gelu")
        return self.seq[2].conv_fast(x, out_dtype=F32)


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

    #: rows of the map per pass of the fast path, per torch thread: the 4x wider hidden
    #: activations of a band stay in the CPU caches (one halo row above and below is
    #: recomputed). Measured: 16 rows 7 % faster with 1 thread, 32 rows 11 % with 2.
    band_rows = 16

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last (B, C, H, W) in and out."""
        B, C, H, W = x.shape
        x4 = x.permute(0, 2, 3, 1)
        out = torch.empty_like(x4)
        band = self.band_rows * max(1, torch.get_num_threads())
        for i in range(B):
            for r0 in range(0, H, band):
                r1 = min(r0 + band, H)
                a, b = max(r0 - 1, 0), min(r1 + 1, H)  # hidden rows the depth-wise conv needs
                h = self.conv1.linear_fast(x4[i, a:b].reshape(-1, C), "gelu")
                h = self.conv2.conv_fast(_image(h, 1, b - a, W), "gelu")  # zero-padded at a and b
                h = h.permute(0, 2, 3, 1)[0, r0 - a : r1 - a].reshape(-1, h.shape[1])
                z = self.conv3.linear_fast(h, add=x4[i, r0:r1].reshape(-1, C))
                out[i, r0:r1] = torch.ops.aten.gelu_(z).view(r1 - r0, W, C)
        return out.permute(0, 3, 1, 2)


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

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last (B, C, H, W) or (B, H*W, C) tokens -> (B, H'*W', C') tokens."""
        if x.ndim == 3:
            B, H, W = x.shape[0], self.resolution, self.resolution
            rows = x.reshape(-1, x.shape[2])
        else:
            B, _, H, W = x.shape
            rows = _rows(x)
        y = self.conv2.conv_fast(_image(self.conv1.linear_fast(rows, "gelu"), B, H, W), "gelu")
        return self.conv3.linear_fast(_rows(y), out_dtype=F32).view(B, y.shape[2] * y.shape[3], -1)


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

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block.forward_fast(x)
        return self.downsample.forward_fast(x) if self.downsample is not None else x


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
        self._derived = DerivedTensors()

    #: dtype of the fast path's qkv and output projections (None: float32)
    matmul_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.bias_index]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)

    def _fast_tensors(self) -> tuple[torch.Tensor, ...]:
        """qkv weight and bias (queries pre-scaled), proj weight and bias, (heads, N, N) bias table."""
        def build():
            hd = self.head_dim
            scale = torch.ones(self.num_heads, 3 * hd, dtype=torch.float64, device=self.qkv.weight.device)
            scale[:, :hd] = self.scale
            scale = scale.flatten()
            w = (self.qkv.weight.double() * scale[:, None]).to(self.qkv.weight.dtype)
            b = (self.qkv.bias.double() * scale).to(self.qkv.bias.dtype)
            return (*cast((w, b, self.proj.weight, self.proj.bias), self.matmul_dtype),
                    self.attention_biases[:, self.bias_index].contiguous())
        return self._derived.get((self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
                                  self.attention_biases, self.bias_index), build, self.matmul_dtype)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """(Bw, N, C) windows -> (Bw * N, C) rows (output projection applied)."""
        Bw, N, C = x.shape
        w, b, pw, pb, bias = self._fast_tensors()
        h = F.layer_norm(x.reshape(-1, C), (C,), self.norm.weight, self.norm.bias, self.norm.eps)
        qkv = fast_ops.linear(h, w, b, out_dtype=F32)  # the attention itself runs in float32
        qkv = qkv.view(Bw, N, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        attn = torch.matmul(q, k.transpose(-2, -1)).add_(bias).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(Bw * N, C)
        return fast_ops.linear(out, pw, pb, out_dtype=F32)


class TokenMLP(nn.Module):
    """Pre-norm MLP on tokens: fc2(GELU(fc1(LN(x))))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self._derived = DerivedTensors()

    #: dtype of the fast path's products (None: float32)
    matmul_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))

    def forward_fast(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, C) rows -> rows + MLP(rows)."""
        params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        w1, b1, w2, b2 = self._derived.get(params, lambda: cast(params, self.matmul_dtype), self.matmul_dtype)
        h = F.layer_norm(rows, rows.shape[-1:], self.norm.weight, self.norm.bias, self.norm.eps)
        return fast_ops.linear(fast_ops.linear(h, w1, b1, "gelu"), w2, b2, add=rows)


def _window_pairs(x4: torch.Tensor, grid: torch.Tensor, ws: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Matching views of a (B, H, W, C) map and its (B, nh, ws, nw, ws, C) window grid.

    The map is cut into at most four blocks (full windows, the partial last column and row
    of windows, the corner), each a strided view of both tensors with the same shape.
    """
    _, H, W, _ = x4.shape
    fh, rh = divmod(H, ws)
    fw, rw = divmod(W, ws)
    rows = [(0, fh * ws, slice(0, fh), slice(None))] if fh else []
    rows += [(fh * ws, H, slice(fh, fh + 1), slice(0, rh))] if rh else []
    cols = [(0, fw * ws, slice(0, fw), slice(None))] if fw else []
    cols += [(fw * ws, W, slice(fw, fw + 1), slice(0, rw))] if rw else []
    pairs = []
    for r0, r1, gi, gr in rows:
        for c0, c1, gj, gc in cols:
            g = grid[:, gi, gr, gj, gc]
            pairs.append((x4[:, r0:r1, c0:c1].view(g.shape), g))
    return pairs


def partition_windows(x: torch.Tensor, resolution: int, ws: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B*nh*nw, ws*ws, C) windows, zero-padded bottom / right (one copy)."""
    B, _, C = x.shape
    H = W = resolution
    nh, nw = -(-H // ws), -(-W // ws)
    out = x.new_empty(B, nh, nw, ws, ws, C)
    grid = out.permute(0, 1, 3, 2, 4, 5)
    for src, dst in _window_pairs(x.view(B, H, W, C), grid, ws):
        dst.copy_(src)
    if H % ws:
        grid[:, H // ws, H % ws:].zero_()
    if W % ws:
        grid[:, :, :, W // ws, W % ws:].zero_()
    return out.view(B * nh * nw, ws * ws, C)


def add_windows(x: torch.Tensor, windows: torch.Tensor, resolution: int, ws: int) -> torch.Tensor:
    """(B, H*W, C) tokens + the unpadded part of (B*nh*nw, ws*ws, C) windows -> new tokens."""
    B, _, C = x.shape
    H = W = resolution
    nh, nw = -(-H // ws), -(-W // ws)
    grid = windows.view(B, nh, nw, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    out = torch.empty_like(x)
    out4 = out.view(B, H, W, C)
    for (src, win), (dst, _) in zip(_window_pairs(x.view(B, H, W, C), grid, ws),
                                    _window_pairs(out4, grid, ws)):
        torch.add(src, win, out=dst)
    return out


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

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) contiguous tokens in and out."""
        B, L, C = x.shape
        r, ws = self.resolution, self.window
        attn = self.attn.forward_fast(partition_windows(x, r, ws))
        x = add_windows(x, attn.view(-1, ws * ws, C), r, ws)
        x = self.local_conv.conv_fast(_image(x, B, r, r), out_dtype=F32)
        x = self.mlp.forward_fast(_rows(x))
        return x.view(B, L, C)


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

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block.forward_fast(x)
        return self.downsample.forward_fast(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """(B, 3, 1024, 1024) normalised image -> (B, 256, 64, 64) embedding.

    ``norm_head`` / ``head`` are TinyViT's ImageNet classifier; MobileSAM checkpoints carry
    them, so they exist for strict loading, but :meth:`forward` never uses them.
    """

    def __init__(self, config: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        self.config = config
        #: use the folded / fused inference path in eval mode without autograd
        self.fast_inference = True
        self.matmul_dtype: torch.dtype | None = None
        self._neck_weights = DerivedTensors()
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
        if fast_path_enabled(self, x):
            return self.forward_fast(x)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        r = self.final_resolution
        return self.neck(x.view(B, r, r, C).permute(0, 3, 1, 2))

    def set_matmul_dtype(self, dtype: torch.dtype | None) -> None:
        """Run the fast path's linear layers and convolutions in ``dtype`` (``torch.bfloat16``:
        bf16 inputs and weights, float32 accumulation), or in float32 (None).

        Norms, softmax attention, residual sums, the output, the stem and the convolution
        stage stay float32. Worth it only on CPUs with native bf16 dot products; it changes
        the embedding by about 1e-2 (one-click masks: IoU >= 0.98 against float32).
        """
        if dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"matmul dtype must be None, float32 or bfloat16, got {dtype}")
        dtype = None if dtype == torch.float32 else dtype
        self.matmul_dtype = dtype
        for m in self.modules():
            if isinstance(m, (ConvBN, BiasedWindowAttention, TokenMLP)):
                m.matmul_dtype = dtype
        for m in self.modules():  # their float32 input and output would cost more in casts
            if isinstance(m, TinyViTBlock):
                m.local_conv.matmul_dtype = None
        # the full-resolution stem and convolution stage carry the fine image detail: in
        # bf16 they moved mask boundaries (IoU 0.90 against float32 for one of 14 objects)
        for m in [*self.patch_embed.modules(), *self.layers[0].modules()]:
            if isinstance(m, ConvBN):
                m.matmul_dtype = None

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The inference path (module docstring); call only without autograd."""
        x = self.patch_embed.forward_fast(x)
        for layer in self.layers:
            x = layer.forward_fast(x)
        return self.neck_fast(x)

    def neck_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The neck of the inference path: (B, r*r, C) tokens of the last stage -> (B, 256, r, r)."""
        B, _, C = x.shape
        r = self.final_resolution
        conv1, norm1, conv2, norm2 = self.neck
        w1, w2 = self._neck_weights.get((conv1.weight, conv2.weight),
                                        lambda: cast((conv1.weight, conv2.weight), self.matmul_dtype),
                                        self.matmul_dtype)
        y = fast_ops.linear(x.reshape(-1, C), w1.view(w1.shape[0], -1), None, out_dtype=F32)
        y = F.layer_norm(y, y.shape[-1:], norm1.weight, norm1.bias, norm1.eps)
        y = _rows(fast_ops.conv2d(_image(y, B, r, r), w2, None, 1, 1, out_dtype=F32))
        y = F.layer_norm(y, y.shape[-1:], norm2.weight, norm2.bias, norm2.eps)
        return _image(y, B, r, r).contiguous()


def tinyvit_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> TinyViTConfig:
    """Infer TinyViT stage widths, depths, heads and windows from tensor shapes."""
    n_layers = count_indices(sd, r"image_encoder\.layers\.(\d+)\.")
    dims, depths, heads, windows = [], [], [], []
    for i in range(n_layers):
        depths.append(count_indices(sd, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\."))
        if i == 0:
            dims.append(sd["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[1])
            heads.append(1)
            windows.append(7)
        else:
            bias = sd[f"image_encoder.layers.{i}.blocks.0.attn.attention_biases"]
            dims.append(sd[f"image_encoder.layers.{i}.blocks.0.attn.proj.weight"].shape[0])
            heads.append(bias.shape[0])
            windows.append(int(round(bias.shape[1] ** 0.5)))
    expand = sd["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[0] / dims[0]
    mlp_ratio = sd["image_encoder.layers.1.blocks.0.mlp.fc1.weight"].shape[0] / dims[1]
    return TinyViTConfig(tuple(dims), tuple(depths), tuple(heads), tuple(windows), mlp_ratio, expand,
                         out_chans=sd["image_encoder.neck.0.weight"].shape[0],
                         num_classes=sd["image_encoder.head.weight"].shape[0])


def identify_tinyvit(encoder: nn.Module) -> str | None:
    """``"vit_t"`` for MobileSAM's TinyViT, ``"tinyvit_custom"`` for another one, None for another
    kind of encoder."""
    if not isinstance(encoder, TinyViT):
        return None
    c, ref = encoder.config, TinyViTConfig()
    same = (c.embed_dims, c.depths, c.num_heads[1:], c.window_sizes[1:]) == (
        ref.embed_dims, ref.depths, ref.num_heads[1:], ref.window_sizes[1:])
    return "vit_t" if same else "tinyvit_custom"
