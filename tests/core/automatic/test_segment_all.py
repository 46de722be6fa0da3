"""Segment all (core/automatic.py): grid, tiles, mask upscaling, NMS, the overlap rule, blank
images, cancel and progress (fast random model), and real MobileSAM on synthetic nuclei."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.core.automatic import SegmentAllParams, segment_all
from napari_focsam.core.automatic._segment_all import (
    MaskCandidate, MaskUpscaler, deepest_first, foreground_mask, grid_points, nms_masks, paint_labels, tile_spans)
from napari_focsam.core.prompting import FocSAMPredictor, logits_to_mask
from napari_focsam.evaluation.instances import match_instances

from engine_helpers import make_fast_focsam
from scene_helpers import discs


def test_grid_points_are_cell_centres():
    pts = grid_points(2, (100, 60))
    assert pts.tolist() == [[24.5, 14.5], [24.5, 44.5], [74.5, 14.5], [74.5, 44.5]]
    assert grid_points((3, 1), (30, 10)).shape == (3, 2)


@pytest.mark.parametrize("size,n", [(512, 1), (512, 2), (1349, 3), (100, 4)])
def test_tile_spans_cover_and_overlap(size, n):
    spans = tile_spans(size, n)
    assert len(spans) == n and spans[0][0] == 0 and spans[-1][1] == size
    lengths = {b - a for a, b in spans}
    assert len(lengths) == 1
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert b0 < a1  # overlapping neighbours


@pytest.mark.parametrize("input_size,original_size", [((1024, 1024), (512, 512)), ((782, 1024), (1030, 1349)),
                                                      ((1024, 640), (1024, 640)), ((300, 1024), (90, 307))])
def test_upscaler_matches_the_interactive_mask(input_size, original_size):
    """The per-box matrix upscaling gives the mask of predictor.logits_to_mask."""
    g = torch.Generator().manual_seed(1)
    low = torch.randn(1, 1, 256, 256, generator=g) * 0.3 - 2.0
    low[..., 60:90, 100:140] += 5.0  # one blob
    want = logits_to_mask(low, input_size, original_size)
    got = MaskUpscaler(input_size, original_size).mask(low[0, 0].numpy())
    assert got is not None
    y0, x0, crop = got
    full = np.zeros(original_size, bool)
    full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    assert np.count_nonzero(full != want) <= 2  # float rounding exactly at logit 0
    assert full.any()
    assert MaskUpscaler(input_size, original_size).mask(-np.ones((256, 256), np.float32)) is None


def _cand(score, y0, x0, h, w):
    return MaskCandidate(score, y0, x0, np.ones((h, w), bool))


def test_nms_keeps_the_best_of_overlapping_masks():
    a = _cand(0.9, 0, 0, 10, 10)
    b = _cand(0.95, 1, 1, 10, 10)  # IoU with a = 81/119 = 0.68
    c = _cand(0.5, 30, 30, 5, 5)  # apart
    kept = nms_masks([a, b, c], 0.5)
    assert kept == [b, c]
    assert len(nms_masks([a, b, c], 0.7)) == 3


def test_paint_labels_no_overlap_best_score_wins():
    big = _cand(0.9, 0, 0, 10, 10)
    part = _cand(0.8, 5, 5, 10, 10)  # 75 of its 100 pixels are free
    swallowed = _cand(0.7, 2, 2, 4, 4)  # entirely inside `big`
    small = _cand(0.6, 30, 30, 2, 2)  # 4 pixels < min_area
    labels, scores = paint_labels([part, small, big, swallowed], (40, 40), min_area=5)
    assert labels[0, 0] == 1 and labels[9, 9] == 1  # contested pixels stay with the best score
    assert labels[14, 14] == 2
    assert np.count_nonzero(labels == 2) == 75
    assert set(np.unique(labels)) == {0, 1, 2}
    assert scores.tolist() == pytest.approx([0.9, 0.8])


def test_foreground_mask_only_for_dark_backgrounds():
    img, labels = discs()
    fg = foreground_mask(np.repeat((img // 4).astype(np.uint8)[..., None], 3, -1))
    assert fg is not None and (fg == (labels > 0)).mean() > 0.97
    inverted = np.repeat((255 - img // 4).astype(np.uint8)[..., None], 3, -1)
    assert foreground_mask(inverted) is None  # bright background: decode every point


def test_params_are_checked():
    with pytest.raises(ValueError, match="points_per_side"):
        SegmentAllParams(points_per_side=0)
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        SegmentAllParams(pred_iou_thresh=1.5)
    with pytest.raises(ValueError, match="tiles"):
        SegmentAllParams(tiles=0)
    with pytest.raises(ValueError, match="min_area"):
        SegmentAllParams(min_area=-1)


@pytest.fixture
def fast_predictor():
    return FocSAMPredictor(make_fast_focsam(), refine=False)


def test_blank_image_gives_empty_labels_and_a_message(fast_predictor):
    res = segment_all(fast_predictor, np.full((64, 80), 7, np.uint16))
    assert res.labels.shape == (64, 80) and not res.labels.any()
    assert res.n_objects == 0 and "blank" in res.message and not res.cancelled


def test_cancel_stops_and_returns_nothing(fast_predictor):
    img, _ = discs()
    seen = []
    params = SegmentAllParams(points_per_side=8, points_per_batch=4, skip_background=False,
                              pred_iou_thresh=0.0, stability_thresh=0.0)
    res = segment_all(fast_predictor, img, params, progress=lambda d, t: seen.append((d, t)),
                      cancelled=lambda: len(seen) >= 2)
    assert res.cancelled and not res.labels.any() and res.n_objects == 0
    assert len(seen) == 2  # stopped at the first check after the cancel


def test_progress_reaches_total(fast_predictor):
    img, _ = discs()
    seen = []
    params = SegmentAllParams(points_per_side=6, points_per_batch=8, skip_background=False, tiles=2)
    res = segment_all(fast_predictor, img, params, progress=lambda d, t: seen.append((d, t)))
    assert not res.cancelled
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1]
    assert res.labels.dtype == np.int32 and res.labels.shape == img.shape


def test_embedding_of_another_image_is_refused(fast_predictor):
    img, _ = discs()
    emb = fast_predictor.embed(np.zeros((50, 50), np.uint8) + np.arange(50, dtype=np.uint8))
    with pytest.raises(ValueError, match="embedding"):
        segment_all(fast_predictor, img, embedding=emb)


@pytest.fixture(scope="module")
def mobile_predictor(vit_t_path):
    from napari_focsam.core.models import load_checkpoint

    return FocSAMPredictor(load_checkpoint(vit_t_path), refine=False)


@pytest.mark.parametrize("skip", [True, False])
def test_real_model_finds_each_nucleus_once(mobile_predictor, skip):
    img, labels = discs()
    res = segment_all(mobile_predictor, img, SegmentAllParams(points_per_side=12, skip_background=skip))
    scores = match_instances(labels, res.labels)
    assert scores.tp == 4 and scores.fp == 0, scores
    assert scores.mean_matched_iou > 0.85
    assert sorted(np.unique(res.labels)) == list(range(res.n_objects + 1))
    if skip:  # the background and the points inside found discs were not decoded
        assert res.n_points < 12 * 12 / 4


def test_deepest_first_puts_object_centres_first_and_background_last():
    fg = np.zeros((60, 60), bool)
    fg[10:50, 10:50] = True
    pts = grid_points(6, fg.shape)  # spacing 10: (4.5, 14.5, ..., 54.5)
    order = deepest_first(pts, fg)
    first = np.rint(pts[order[0]]).astype(int)
    assert 20 <= first[0] <= 40 and 20 <= first[1] <= 40  # a point of the square's middle
    on_fg = fg[tuple(np.clip(np.rint(pts[order]).astype(int), 0, 59).T)]
    assert on_fg[:16].all() and not on_fg[16:].any()  # background points last
    assert sorted(order.tolist()) == list(range(36))


def test_real_model_decodes_fewer_points_deepest_first_and_finds_the_same_nuclei(mobile_predictor, monkeypatch):
    """Large discs hold many grid points: decoded from the centre first, one point finds each
    disc and its mask covers the others; in grid order the points on the discs' upper rims come
    first and more of them are decoded. Same objects either way."""
    import napari_focsam.core.automatic._segment_all as sa

    img, labels = discs((240, 240), ((60, 60), (60, 175), (175, 70), (170, 170)), r=34)
    params = SegmentAllParams(points_per_side=24, points_per_batch=4)
    deep = segment_all(mobile_predictor, img, params)
    monkeypatch.setattr(sa, "deepest_first", lambda pts, fg: np.arange(len(pts)))
    grid = segment_all(mobile_predictor, img, params)
    for res in (deep, grid):
        scores = match_instances(labels, res.labels)
        assert scores.tp == 4 and scores.fp == 0, scores
        assert scores.mean_matched_iou > 0.85
    assert deep.n_points <= 8 < grid.n_points, (deep.n_points, grid.n_points)


def test_match_instances_counts_and_ious():
    true = np.zeros((20, 20), int)
    true[0:10, 0:10] = 1
    true[12:20, 12:20] = 2
    true[0:4, 15:19] = 3
    pred = np.zeros_like(true)
    pred[0:10, 0:8] = 5  # IoU 0.8 with 1
    pred[12:20, 12:14] = 6  # IoU 0.25 with 2: no match at 0.5
    pred[15:19, 0:4] = 7  # nothing there
    s = match_instances(true, pred)
    assert (s.tp, s.fp, s.fn, s.n_true, s.n_pred) == (1, 2, 2, 3, 3)
    assert s.mean_matched_iou == pytest.approx(0.8)
    assert s.f1 == pytest.approx(2 / 6)
    assert match_instances(true, pred, 0.2).tp == 2
    assert match_instances(true, true).f1 == 1.0
    with pytest.raises(ValueError, match="shape"):
        match_instances(true, pred[:5])


def test_clump_centres_split_touching_discs_not_one_elongated_object():
    from napari_focsam.core.automatic._clumps import clump_centres

    yy, xx = np.mgrid[:60, :80]
    two = ((yy - 30) ** 2 + (xx - 25) ** 2 <= 144) | ((yy - 30) ** 2 + (xx - 47) ** 2 <= 144)
    assert sorted(map(tuple, clump_centres(two))) == [(30, 25), (30, 47)]
    three = two | ((yy - 50) ** 2 + (xx - 36) ** 2 <= 100)
    assert len(clump_centres(three)) == 3
    ellipse = ((yy - 30) / 12.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1
    assert clump_centres(ellipse).shape == (0, 2)
    assert clump_centres((yy - 30) ** 2 + (xx - 40) ** 2 <= 200).shape == (0, 2)


def test_real_model_splits_touching_nuclei(mobile_predictor):
    img, labels = discs(centres=((60, 60), (60, 86), (40, 150)), r=14)
    merged = SegmentAllParams(points_per_side=12, split_clumps=False)
    split = SegmentAllParams(points_per_side=12)
    before = match_instances(labels, segment_all(mobile_predictor, img, merged).labels)
    after = match_instances(labels, segment_all(mobile_predictor, img, split).labels)
    assert after.tp == 3 and after.fp == 0, (before, after)


def test_the_upscale_window_is_a_parameter_and_the_whole_map_gives_the_same_objects():
    with pytest.raises(ValueError, match="upscale_window"):
        SegmentAllParams(upscale_window=-1)
    img, _ = discs()
    pred = FocSAMPredictor(make_fast_focsam())
    window = segment_all(pred, img, SegmentAllParams(points_per_side=8))
    whole = segment_all(pred, img, SegmentAllParams(points_per_side=8, upscale_window=0))
    np.testing.assert_array_equal(window.labels, whole.labels)


def test_thresholds_left_unset_follow_the_model():
    """A decoder with its own calibration (``segment_all_thresholds``) gets its thresholds where the
    caller set none; values given by the caller always win; other models get SAM's."""
    from types import SimpleNamespace

    from napari_focsam.core.automatic import DEFAULT_PRED_IOU_THRESH, DEFAULT_STABILITY_THRESH, SegmentAllParams

    calibrated = SimpleNamespace(segment_all_thresholds={"pred_iou_thresh": 0.6, "stability_thresh": 0.7})
    p = SegmentAllParams().for_model(calibrated)
    assert (p.pred_iou_thresh, p.stability_thresh) == (0.6, 0.7)
    p = SegmentAllParams(pred_iou_thresh=0.85).for_model(calibrated)
    assert (p.pred_iou_thresh, p.stability_thresh) == (0.85, 0.7)
    p = SegmentAllParams().for_model(SimpleNamespace())
    assert (p.pred_iou_thresh, p.stability_thresh) == (DEFAULT_PRED_IOU_THRESH, DEFAULT_STABILITY_THRESH)
    assert SegmentAllParams().for_model(None).pred_iou_thresh == DEFAULT_PRED_IOU_THRESH
    with pytest.raises(ValueError):
        SegmentAllParams(stability_thresh=1.5)
