"""Segment all's point decoding: logits upscaled around each point only."""

from __future__ import annotations

import torch

from napari_focsam.core.automatic._point_decode import OUTSIDE, decode_points

from conftest import make_tiny_focsam


def _decode(model, features, pts):
    lab = torch.ones(pts.shape[:2], dtype=torch.int64)
    return model.decode(features, pts, lab, None, multimask_output=True)


def test_decode_points_gives_the_full_maps_logits_inside_each_block():
    torch.manual_seed(0)
    model = make_tiny_focsam()
    features = torch.randn(1, 256, 64, 64)
    pts = torch.tensor([[[100.0, 80.0]], [[900.0, 1000.0]], [[512.0, 500.0]]])
    with torch.inference_mode():
        full = _decode(model, features, pts)
        logits, iou = decode_points(model, features, pts, threshold=1e9, window=16)  # no point spills
        torch.testing.assert_close(iou, full.iou, rtol=0, atol=0)
        inside = logits != OUTSIDE
        assert inside.flatten(1).sum(1).tolist() == [3 * 64 * 64] * 3  # one 16-token block per point
        torch.testing.assert_close(logits[inside], full.logits[inside], rtol=1e-5, atol=1e-5)
        # the first point's block is the corner of the map (its centre clamped into the grid)
        assert (logits[0, :, :64, :64] != OUTSIDE).all()
        # window 0: the whole map
        whole, _ = decode_points(model, features, pts, threshold=0.0, window=0)
        torch.testing.assert_close(whole, full.logits, rtol=1e-5, atol=1e-5)


def test_a_point_whose_kept_candidate_reaches_the_block_edge_gets_the_whole_map():
    torch.manual_seed(0)
    model = make_tiny_focsam()
    features = torch.randn(1, 256, 64, 64)
    pts = torch.tensor([[[300.0, 300.0]], [[700.0, 600.0]]])
    with torch.inference_mode():
        full = _decode(model, features, pts)
        lo = float(full.logits.min()) - 1  # every logit is above: every block edge spills
        spilled, _ = decode_points(model, features, pts, threshold=lo, window=16)
        torch.testing.assert_close(spilled, full.logits, rtol=1e-5, atol=1e-5)
        # the same spill, but no candidate may be kept (IoU filter): the blocks only
        blocks, _ = decode_points(model, features, pts, threshold=lo, window=16, min_iou=2.0)
        assert (blocks == OUTSIDE).any()
