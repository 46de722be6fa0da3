# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Modulated deformable convolution (DCNv2) in plain PyTorch.

The op follows the semantics of mmcv's ``ModulatedDeformConv2d`` (DCNv2), which the
official FocSAM refiner uses, so that its trained weights can be loaded as they are:

* ``offset`` has ``2 * K`` channels for a ``kh x kw`` kernel (``K = kh * kw``), interleaved
  per kernel tap: ``offset[:, 2k]`` is the vertical offset ``dy`` and ``offset[:, 2k + 1]``
  the horizontal offset ``dx`` of tap ``k = i * kw + j`` (row-major over the kernel).
* ``mask`` has ``K`` channels (one modulation scalar per tap, usually a sigmoid output).
* Tap ``(i, j)`` of output pixel ``(ho, wo)`` samples the input at
  ``(ho * stride - pad + i * dilation + dy,  wo * stride - pad + j * dilation + dx)``
  with bilinear interpolation; neighbours outside the input contribute zero.
* The sampled values are multiplied by the mask and contracted with ``weight``.

The implementation builds the deformed "im2col" matrix for all pixels and taps with one
fused gather + weighted-sum (``F.embedding_bag`` with per-sample weights = bilinear
corner weight x mask x in-bounds) and contracts it with the weight in a single GEMM, so
there is no Python loop over pixels or taps.  On CPU this is about 1.5x faster than a
``grid_sample`` formulation in the forward pass and >10x faster in the backward pass.
Only ``groups == 1`` and one deformable group are supported (all FocSAM needs).
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_Pair = Union[int, Tuple[int, int]]


def _pair(v: _Pair) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        assert len(v) == 2
        return int(v[0]), int(v[1])
    return int(v), int(v)


def modulated_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _Pair = 1,
    padding: _Pair = 0,
    dilation: _Pair = 1,
) -> Tensor:
    """Modulated deformable 2D convolution (DCNv2, mmcv layout).

    Arguments:
      input (Tensor): (N, C_in, H, W).
      offset (Tensor): (N, 2*K, H_out, W_out), interleaved (dy, dx) per tap, K = kh*kw.
      mask (Tensor): (N, K, H_out, W_out) modulation scalars (not passed through sigmoid here).
      weight (Tensor): (C_out, C_in, kh, kw).
      bias (Tensor or None): (C_out,).
      stride, padding, dilation (int or tuple): as in ``F.conv2d``.

    Returns:
      (Tensor): (N, C_out, H_out, W_out), in channels-last memory format.
    """
    n, c_in, h, w = input.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c_in:
        raise ValueError(f"weight expects {c_w} input channels, got {c_in} (groups=1 only)")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    if offset.shape != (n, 2 * k, h_out, w_out):
        raise ValueError(
            f"offset must have shape {(n, 2 * k, h_out, w_out)}, got {tuple(offset.shape)}"
        )
    if mask.shape != (n, k, h_out, w_out):
        raise ValueError(f"mask must have shape {(n, k, h_out, w_out)}, got {tuple(mask.shape)}")

    dtype, device = offset.dtype, offset.device
    # Regular (undeformed) sampling position of every tap, in input pixel units.
    ki = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw)  # (K,) tap row
    kj = torch.arange(kw, device=device, dtype=dtype).repeat(kh)  # (K,) tap column
    oy = torch.arange(h_out, device=device, dtype=dtype) * sh - ph
    ox = torch.arange(w_out, device=device, dtype=dtype) * sw - pw
    offset = offset.reshape(n, k, 2, h_out, w_out).permute(0, 3, 4, 1, 2)  # (N, Ho, Wo, K, 2)
    pos_y = oy.view(1, h_out, 1, 1) + (ki * dh).view(1, 1, 1, k) + offset[..., 0]
    pos_x = ox.view(1, 1, w_out, 1) + (kj * dw).view(1, 1, 1, k) + offset[..., 1]

    # Bilinear corners and weights (N, Ho, Wo, K, 4).  A corner outside the input gets
    # weight 0, which is mmcv's DCNv2 boundary rule (zero padding per neighbour).
    y0, x0 = pos_y.floor(), pos_x.floor()
    ly, lx = pos_y - y0, pos_x - x0
    y0, x0 = y0.long(), x0.long()
    ys = torch.stack((y0, y0, y0 + 1, y0 + 1), dim=-1)
    xs = torch.stack((x0, x0 + 1, x0, x0 + 1), dim=-1)
    wy = torch.stack((1 - ly, 1 - ly, ly, ly), dim=-1)
    wx = torch.stack((1 - lx, lx, 1 - lx, lx), dim=-1)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    modulation = mask.permute(0, 2, 3, 1).unsqueeze(-1)  # (N, Ho, Wo, K, 1)
    corner_w = wy * wx * modulation * inside
    image = torch.arange(n, device=device).view(n, 1, 1, 1, 1) * (h * w)
    index = image + ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)

    # Gather + weighted sum of the 4 corners in one fused kernel: rows of the
    # (N*H*W, C_in) pixel table -> "columns" (N*Ho*Wo*K, C_in), mask already applied.
    table = input.permute(0, 2, 3, 1).reshape(n * h * w, c_in)
    cols = F.embedding_bag(
        index.reshape(-1, 4),
        table,
        per_sample_weights=corner_w.reshape(-1, 4).to(input.dtype),
        mode="sum",
    )
    cols = cols.view(n * h_out * w_out, k * c_in)  # tap-major, channel-minor
    out = F.linear(cols, weight.permute(0, 2, 3, 1).reshape(c_out, k * c_in), bias)
    return out.view(n, h_out, w_out, c_out).permute(0, 3, 1, 2)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer holding only the convolution weight (and optional bias).

    The offsets and masks are inputs of ``forward``; see ``ModulatedDeformConvPack`` for
    the variant that predicts them from the input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Pair = 3,
        stride: _Pair = 1,
        padding: _Pair = 1,
        dilation: _Pair = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and zero bias (mmcv's default)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """x: (N, C_in, H, W); offset: (N, 2K, H_out, W_out); mask: (N, K, H_out, W_out)."""
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}"
        )


class ModulatedDeformConvPack(nn.Module):
    """3x3 DCNv2 whose offsets and masks are predicted from its own input.

    This is the ``conv2`` module of FocSAM's ``MSAModule``; its state-dict names are
    ``dcn_offset.{weight,bias}`` (a plain Conv2d with ``3 * K`` = 27 output channels) and
    ``dcn.weight`` (no bias).  The 27 channels are split into thirds ``o1 | o2 | m``;
    ``cat(o1, o2)`` is the 18-channel offset (mmcv layout, see module docstring) and
    ``sigmoid(m)`` the mask.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        bias: bool = False,
        zero_init_offset: bool = True,
    ) -> None:
        """
        Arguments:
          in_channels, out_channels (int): channel counts.
          kernel_size (int): odd kernel size; padding is ``dilation * (kernel_size // 2)``.
          dilation (int): kernel dilation.
          bias (bool): whether the deformable conv has a bias (FocSAM: False).
          zero_init_offset (bool): zero-initialise ``dcn_offset`` so that, at init, the
            layer is a plain conv scaled by sigmoid(0) = 0.5 (mmcv's DCNv2 pack does this).
            The official FocSAM code keeps PyTorch's default Conv2d init here instead;
            this only matters when training from scratch.
        """
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.num_taps = kernel_size * kernel_size
        self.dcn_offset = nn.Conv2d(
            in_channels,
            3 * self.num_taps,
            kernel_size=kernel_size,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        self.dcn = ModulatedDeformConv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=1,
            padding=padding,
            dilation=dilation,
            bias=bias,
        )
        # Official FocSAM initialises the DCN weight with Caffe2's "MSRA fill":
        # N(0, std) with std = sqrt(2 / (fan_in + fan_out)), fan_out = out_channels.
        fan_in = in_channels * kernel_size * kernel_size
        with torch.no_grad():
            self.dcn.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + out_channels)))
        if zero_init_offset:
            nn.init.zeros_(self.dcn_offset.weight)
            nn.init.zeros_(self.dcn_offset.bias)

    def offsets_and_mask(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """x: (N, C, H, W) -> offset (N, 2K, H, W), mask (N, K, H, W) in (0, 1)."""
        o1, o2, m = torch.chunk(self.dcn_offset(x), 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(m)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, H, W)."""
        offset, mask = self.offsets_and_mask(x)
        return self.dcn(x, offset, mask)
