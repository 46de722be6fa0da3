# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Window partitioning for the focus refiner's Dwin-MSA blocks (16x16 windows, optionally shifted).

Only windows that touch the focus region are processed: ``select_windows`` finds them and
``window_token_index`` gathers their tokens by index from a channel-last (B, H, W, C) map, so
a shifted block never materialises the rolled map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
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
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
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
    grid_hw: tuple[int, int],
    window_size: int,
    shift_size: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
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
