"""A propagated slice's logits upscaled in a block of tokens around the previous mask only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.propagation import _decode as D  # noqa: E402
from napari_focsam.core.propagation import _plain as P  # noqa: E402
from napari_focsam.core.prompting import FocSAMPredictor  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return make_fast_focsam()


def test_the_block_is_the_masks_box_on_the_token_grid_with_a_margin():
    mask = np.zeros((512, 512), bool)
    mask[100:140, 300:330] = True  # 2 canvas px per image px: tokens of 8 image px
    assert D.token_block(mask, (512, 512), (1024, 1024)) == (12 - 4, 18 + 4, 37 - 4, 42 + 4)
    assert D.token_block(mask, (512, 512), (1024, 1024), margin=0) == (12, 18, 37, 42)
    edge = np.zeros((512, 512), bool)
    edge[0:10, 500:512] = True  # clipped to the grid
    assert D.token_block(edge, (512, 512), (1024, 1024)) == (0, 6, 58, 64)
    assert D.token_block(np.zeros((512, 512), bool), (512, 512), (1024, 1024)) is None
    big = np.zeros((512, 512), bool)
    big[10:500, 10:500] = True  # most of the grid: the whole map is cheaper
    assert D.token_block(big, (512, 512), (1024, 1024)) is None


def test_only_the_rows_that_hold_the_image_count_on_a_wide_image():
    mask = np.zeros((100, 400), bool)
    mask[90:100, 0:10] = True  # input 256 x 1024: 16 token rows hold the image
    assert D.token_block(mask, (100, 400), (256, 1024)) == (10, 16, 0, 6)  # 6.25 image px per token


def test_inside_the_block_the_logits_are_the_whole_maps(model):
    torch.manual_seed(0)
    dec = model.mask_decoder
    src, hyper_in = torch.randn(1, 64 * 64, 256), torch.randn(1, 3, 32)
    full = dec.upscale_masks(src, hyper_in, (64, 64))
    got = D.block_logits(dec, src, hyper_in, (64, 64), (10, 20, 30, 44), (64, 64), level=1e9)  # never spills
    assert torch.allclose(got[..., 40:80, 120:176], full[..., 40:80, 120:176], atol=1e-5)
    assert (got[..., :40, :] == D.OUTSIDE).all() and (got[..., :, 176:] == D.OUTSIDE).all()
    # a candidate above the level at an inner edge: the caller must upscale the whole map
    assert D.block_logits(dec, src, hyper_in, (64, 64), (10, 20, 30, 44), (64, 64), level=-1e9) is None
    # ... but not at an edge on the image's border
    assert D.block_logits(dec, src, hyper_in, (64, 64), (0, 64, 0, 64), (64, 64), level=-1e9) is not None


def test_a_propagated_slice_gets_the_same_mask_with_the_block(model, monkeypatch):
    stack = blobs_stack(n_slices=3, size=96)
    pred = FocSAMPredictor(model)
    emb = pred.embed(stack[1])
    prev = np.zeros((96, 96), bool)
    prev[40:56, 40:56] = True
    y, x = P.interior_point(prev)
    blocks = []
    real = D.block_logits

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        blocks.append(out is not None)
        return out

    monkeypatch.setattr(D, "block_logits", spy)
    for level in (0.0, 0.5, 3.0):
        whole = P.decode_prompt_token(pred, emb, [(y, x, True)], multimask=True, reference=prev, offset=level)
        block = P.decode_prompt_token(pred, emb, [(y, x, True)], multimask=True, reference=prev, offset=level,
                                      around=prev)
        assert np.array_equal(whole[0], block[0]) and whole[3] == block[3]
    assert len(blocks) == 3


def test_next_slice_uses_the_block_only_where_the_logits_are_not_used_again(model, monkeypatch):
    seen = []
    real = D.decoder_outputs

    def spy(*args, **kwargs):
        seen.append(kwargs.get("around") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "decoder_outputs", spy)
    pred = FocSAMPredictor(model)
    emb = pred.embed(blobs_stack(n_slices=3, size=96)[1])
    prev = np.zeros((96, 96), bool)
    prev[36:60, 36:60] = True
    for prompt in ("point", "point_box", "point_logits", "point_box_logits"):
        P.next_slice_scored(pred, emb, prev, None, prompt)
    assert seen == [True, True, False, False]


class PatchDecoder:
    """A decoder whose upscaling turns each token into a 4 x 4 patch of its first channel (as the
    real one, each token's patch depends on that token alone)."""

    def upscale_masks(self, src, hyper_in, size):
        h, w = size
        v = src[..., 0].view(src.shape[0], 1, h, w).expand(-1, hyper_in.shape[1], -1, -1)
        return v.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def test_a_blob_inside_the_block_gives_the_whole_maps_mask():
    from napari_focsam.core.prompting import logits_to_mask

    values = torch.full((64, 64), -5.0)
    values[20:26, 30:37] = 6.0  # the object, well inside the block
    values[50:52, 5:7] = 6.0  # a separate blob far away: left out by the block
    src = values.reshape(1, -1, 1).expand(-1, -1, 8).contiguous()
    hyper_in = torch.zeros(1, 3, 32)
    dec = PatchDecoder()
    full = dec.upscale_masks(src, hyper_in, (64, 64))
    previous = np.zeros((1024, 1024), bool)
    previous[20 * 16:26 * 16, 30 * 16:37 * 16] = True  # the previous slice's mask: the object's place
    block = D.token_block(previous, (1024, 1024), (1024, 1024))
    assert block == (16, 30, 26, 41)
    got = D.block_logits(dec, src, hyper_in, (64, 64), block, (64, 64))
    a = logits_to_mask(got[:, :1], (1024, 1024), (300, 300))
    b = logits_to_mask(full[:, :1], (1024, 1024), (300, 300))
    far = np.zeros_like(b)
    far[int(300 * 48 / 64):, : int(300 * 10 / 64)] = True
    assert a.any() and np.array_equal(a, b & ~far)
    # the object reaching the block's edge: the whole map
    values[16:30, 26:41] = 6.0
    src = values.reshape(1, -1, 1).expand(-1, -1, 8).contiguous()
    assert D.block_logits(dec, src, hyper_in, (64, 64), block, (64, 64)) is None
