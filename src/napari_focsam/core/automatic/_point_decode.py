"""Many single-point prompts through the decoder, the logits upscaled around each point only.

Segment all decodes thousands of point prompts, each with SAM's three candidate masks. The
decoder's last stage turns every one of the 64 x 64 image tokens into a 4 x 4 patch of
logits (no overlap between patches), about 40 % of a pass; but a point's masks are objects
around the point. So the upscaling runs on a block of :data:`WINDOW_TOKENS` tokens around
each point, the rest of the logits map is set to :data:`OUTSIDE` (far below any threshold),
and a point with a candidate that the caller may keep (its predicted IoU and its area in the
block pass the caller's filters) whose logits reach the block's inner edge (above the
stability score's lower threshold within two logits of it) is upscaled again over the whole
map. Inside the block
the logits are those of the full map (up to float rounding); what the block leaves out is a
piece of a mask that does not touch the block's edge, such as a second, separate blob.
"""

from __future__ import annotations

import torch

from ...modeling.focsam import FocSAM
from ...modeling.mask_decoder import upscale_window

__all__ = ["OUTSIDE", "WINDOW_TOKENS", "decode_points"]

#: Side of the block of image tokens upscaled around each point (0: the whole map).
WINDOW_TOKENS = 24
#: The logits outside a point's block.
OUTSIDE = -100.0
#: Width (in logits) of the block's edge that must stay below the threshold.
EDGE = 2


@torch.inference_mode()
def decode_points(model: FocSAM, features: torch.Tensor, points: torch.Tensor, threshold: float, *,
                  min_iou: float = 0.0, max_area: float = float("inf"), valid: tuple[int, int] | None = None,
                  window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimask logits of single positive points, upscaled around each point only.

    Parameters
    ----------
    model : FocSAM
        Its prompt encoder and mask decoder are used.
    features : torch.Tensor
        (1, 256, 64, 64) image embedding.
    points : torch.Tensor
        (B, 1, 2) canvas (x, y) of the points (one positive point per prompt).
    threshold : float
        A point whose logits exceed this on the block's edge is upscaled over the whole map
        (segment all passes minus its stability offset: every pixel it counts is computed).
    min_iou, max_area : float
        Only candidates that the caller may keep need their whole map: a predicted IoU of at
        least ``min_iou`` and at most ``max_area`` logits above 0 in the block (the area
        beyond it only adds), within ``valid``. The others keep their block's logits.
    valid : (int, int), optional
        The (rows, columns) of the logits map that hold the image (the rest is padding).
    window : int, optional
        The block's side in tokens (default :data:`WINDOW_TOKENS`; 0: the whole map, as
        :meth:`FocSAM.decode`).

    Returns
    -------
    logits : torch.Tensor
        (B, 3, 256, 256) raw logits, :data:`OUTSIDE` away from the point's block.
    iou : torch.Tensor
        (B, 3) predicted IoU of each candidate.
    """
    window = WINDOW_TOKENS if window is None else window
    labels = torch.ones(points.shape[:2], dtype=torch.int64, device=points.device)
    pe = model.prompt_encoder
    sparse, dense = pe((points, labels), None)
    dec = model.mask_decoder
    hyper_in, iou, _, src = dec.decode_tokens(features, pe.get_dense_pe(), sparse, dense, True)
    h, w = features.shape[-2:]
    if not 0 < window < min(h, w):
        return dec.upscale_masks(src, hyper_in, (h, w)), iou
    B, M = hyper_in.shape[:2]
    patch = FocSAM.image_size // (4 * h)  # canvas pixels per logit (4)
    centre = (points[:, 0, [1, 0]] / (patch * 4)).floor().long()  # (B, 2) token (row, col)
    starts = (centre - window // 2).clamp(min=0, max=min(h, w) - window)
    block = upscale_window(dec, src, hyper_in, (h, w), starts, window)  # (B, M, 4win, 4win)
    side = 4 * window
    logits = torch.full((B, M, 4 * h, 4 * w), OUTSIDE, dtype=block.dtype, device=block.device)
    above = block > threshold
    spill = torch.zeros(B, M, dtype=torch.bool, device=block.device)
    inner = [(starts[:, 0] > 0, above[..., :EDGE, :]), (starts[:, 0] + window < h, above[..., -EDGE:, :]),
             (starts[:, 1] > 0, above[..., :, :EDGE]), (starts[:, 1] + window < w, above[..., :, -EDGE:])]
    for is_inner, edge in inner:
        spill |= is_inner[:, None] & edge.flatten(2).any(dim=2)
    for b, (y0, x0) in enumerate((4 * starts).tolist()):
        logits[b, :, y0:y0 + side, x0:x0 + side] = block[b]
    vh, vw = valid if valid is not None else (4 * h, 4 * w)
    area = (logits[..., :vh, :vw] > 0).flatten(2).sum(dim=2)  # (B, M): at most the whole map's
    spill &= (iou >= min_iou) & (area <= max_area)
    again = torch.nonzero(spill.any(dim=1)).flatten()
    if again.numel():
        logits[again] = dec.upscale_masks(src[again], hyper_in[again], (h, w))
    return logits, iou
