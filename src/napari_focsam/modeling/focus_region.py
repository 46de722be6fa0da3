# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""FocSAM's focus region: from coarse logits to the box and the 64x64 token mask in focus.

The coarse single-mask logits (B, 1, 256, 256) are upsampled to the 1024x1024 canvas,
binarised at 0 and boxed; the box is expanded about its centre (1.4x at test time) and
rasterised to a (B, 64, 64) token mask ("in focus" if any pixel of a token's 16x16 cell is
inside the box). The expansion uses ``torch.round`` (round half to even) on float32 values
computed exactly as in the reference implementation, so half-way cases round the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Ratio = float | Sequence[float]
Size = int | Sequence[int]


def size2(v: Size) -> tuple[int, int]:
    if isinstance(v, (tuple, list, torch.Size)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def ratio2(v: Ratio) -> tuple[float, float]:
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
    height, width = size2(canvas_size)
    h_ratio, w_ratio = ratio2(expand_ratio)
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
    height, width = size2(canvas_size)
    gh, gw = size2(grid_size)
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

