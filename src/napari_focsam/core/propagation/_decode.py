"""Prompts through the mask decoder; a propagated slice's logits upscaled around its object only.

:func:`decoder_outputs` turns clicks, a box and a mask prompt (image pixels) into the decoder's
raw outputs on a slice's embedding.

The decoder's last stage turns every one of the 64 x 64 image tokens into its own 4 x 4 patch
of logits (no overlap between patches): about a quarter of a propagated slice's decoding on a
2-core CPU (7-9 of 32 ms), though the slice's object lies where the previous slice's was. So
:func:`block_logits` upscales only a block of tokens around the previous mask (its box on the
grid, :data:`BLOCK_MARGIN` tokens wider on each side) and sets the rest of the map to
:data:`OUTSIDE`. Inside the block the logits are those of the whole map (each token's patch is
computed from that token alone). Where any candidate's logits are above the mask's level within
:data:`EDGE` logits of an inner edge of the block (the object goes on past it), the whole map is
upscaled instead. What the block leaves out is a piece of a mask that does not reach the block's
edge: a separate blob away from the object, which the propagation would take as a leak.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ...modeling.mask_decoder import DecoderOutput, MaskDecoder
from ..embeddings import ImageEmbedding
from ..prompting import FocSAMPredictor

__all__ = ["BLOCK_MARGIN", "EDGE", "OUTSIDE", "block_logits", "decode_around", "decoder_outputs", "token_block"]

#: Tokens (16 canvas pixels each) added around the previous mask's box on each side.
BLOCK_MARGIN = 4
#: Logits at an inner edge of the block that must stay at or below the mask's level.
EDGE = 2
#: The logits outside the block.
OUTSIDE = -100.0
#: A block covering more than this share of the grid is not worth it: the whole map.
MAX_SHARE = 0.5


def _valid(input_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the token grid that hold the image (16 canvas pixels per token)."""
    return min(grid[0], -(-input_size[0] // 16)), min(grid[1], -(-input_size[1] // 16))


def token_block(mask: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int],
                grid: tuple[int, int] = (64, 64), margin: int = BLOCK_MARGIN) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1), half-open rows and columns of the token grid around the (H, W) bool
    ``mask``'s box (``margin`` tokens wider on each side, inside the grid's part that holds the
    image), or None for an empty mask or a block over :data:`MAX_SHARE` of the grid."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    (H, W), (h, w) = original_size, input_size
    gh, gw = grid
    per_row, per_col = 16 * H / h, 16 * W / w  # image pixels per token
    valid_r, valid_c = _valid(input_size, grid)
    r0 = max(0, int(rows[0] // per_row) - margin)
    r1 = min(valid_r, int(rows[-1] // per_row) + 1 + margin)
    c0 = max(0, int(cols[0] // per_col) - margin)
    c1 = min(valid_c, int(cols[-1] // per_col) + 1 + margin)
    if (r1 - r0) * (c1 - c0) > MAX_SHARE * gh * gw:
        return None
    return r0, r1, c0, c1


def block_logits(decoder: MaskDecoder, src: torch.Tensor, hyper_in: torch.Tensor, grid: tuple[int, int],
                 block: tuple[int, int, int, int], valid: tuple[int, int], level: float = 0.0) -> torch.Tensor | None:
    """The (B, M, 4 gh, 4 gw) logits of the token ``block`` (:func:`token_block`), :data:`OUTSIDE`
    elsewhere; None when a candidate's logits exceed ``level`` within :data:`EDGE` logits of an
    inner edge of the block (the caller upscales the whole map then).

    src (B, gh*gw, C) image tokens, hyper_in (B, M, C/8); ``valid``: the (rows, columns) of
    tokens that hold the image (an edge of the block on the padding's border is not inner).
    """
    r0, r1, c0, c1 = block
    gh, gw = grid
    B, _, C = src.shape
    tokens = src.view(B, gh, gw, C)[:, r0:r1, c0:c1].reshape(B, -1, C)
    part = decoder.upscale_masks(tokens, hyper_in, (r1 - r0, c1 - c0))  # (B, M, 4 bh, 4 bw)
    above = part > level
    inner = [(r0 > 0, above[..., :EDGE, :]), (r1 < valid[0], above[..., -EDGE:, :]),
             (c0 > 0, above[..., :, :EDGE]), (c1 < valid[1], above[..., :, -EDGE:])]
    if any(is_inner and bool(edge.any()) for is_inner, edge in inner):
        return None
    logits = part.new_full((B, part.shape[1], 4 * gh, 4 * gw), OUTSIDE)
    logits[..., 4 * r0:4 * r1, 4 * c0:4 * c1] = part
    return logits


def decode_around(decoder: MaskDecoder, features: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                  dense: torch.Tensor, multimask: bool, around: np.ndarray, original_size: tuple[int, int],
                  input_size: tuple[int, int], level: float = 0.0) -> DecoderOutput:
    """The decoder's outputs (``MaskDecoder.forward``'s arguments) with the logits upscaled in
    the token block around the (H, W) bool mask ``around`` only (:func:`block_logits`), or over
    the whole map where the block does not hold the candidates above ``level``."""
    hyper_in, iou, token, src = decoder.decode_tokens(features, image_pe, sparse, dense, multimask)
    grid = tuple(features.shape[-2:])
    block = token_block(around, original_size, input_size, grid)
    logits = None
    if block is not None:
        logits = block_logits(decoder, src, hyper_in, grid, block, _valid(input_size, grid), level)
    if logits is None:
        logits = decoder.upscale_masks(src, hyper_in, grid)
    return DecoderOutput(logits, iou, token)


@torch.inference_mode()
def decoder_outputs(predictor: FocSAMPredictor, embedding: ImageEmbedding, points: Iterable[tuple[float, float, bool]],
                    box: tuple[float, float, float, float] | None = None, mask_input: torch.Tensor | None = None, *,
                    multimask: bool = False, features: torch.Tensor | None = None,
                    around: np.ndarray | None = None, level: float = 0.0):
    """The mask decoder's raw outputs for clicks ``(y, x, positive)`` (image pixels), an optional
    box (x0, y0, x1, y1) and optional (1, 1, 256, 256) logits as mask input: ``logits``
    (1, M, 256, 256), ``iou`` (1, M) and ``token`` (1, 1, 256), with M = 3 candidates with
    ``multimask``, else 1. ``features``: (1, 256, 64, 64) decoded instead of the embedding's.
    ``around``: an (H, W) bool mask (the previous slice's) the logits are upscaled around only
    (:func:`decode_around`; the masks above ``level``
    that reach the block's edge get the whole map)."""
    model = predictor.model
    dev = predictor.device
    H, W = embedding.original_size
    h, w = embedding.input_size
    sy, sx = h / H, w / W
    pts = [[x * sx, y * sy] for y, x, _ in points]
    labels = [1 if p else 0 for _, _, p in points]
    if box is not None:
        x0, y0, x1, y1 = box
        pts += [[x0 * sx, y0 * sy], [x1 * sx, y1 * sy]]
        labels += [2, 3]
    if not pts:
        raise ValueError("a prompt needs at least one point or a box")
    P = torch.tensor(pts, dtype=torch.float32, device=dev)[None]
    L = torch.tensor(labels, dtype=torch.int64, device=dev)[None]
    pe = model.prompt_encoder
    sparse = pe.embed_points(P, L, pad=box is None)  # as SAM: no padding point when a box is given
    _, dense = pe(None, mask_input.to(dev) if mask_input is not None else None)
    feats = (embedding.features if features is None else features).to(dev)
    if around is not None:
        return decode_around(model.mask_decoder, feats, pe.get_dense_pe(), sparse, dense, multimask, around,
                             embedding.original_size, embedding.input_size, level)
    return model.mask_decoder(feats, pe.get_dense_pe(), sparse, dense, multimask)
