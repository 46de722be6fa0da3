"""Prompts as one value (Prompts, PlanePrompts) and the later-click rules as objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_helpers import blobs_stack, make_fast_focsam
from napari_focsam.core.editing import set_prompts
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.prompting import (
    LATER_CLICK_RULES, Box, Click, FocSAMPredictor, InteractiveObject, PickRule, PlanePrompts, Prompts, ReuseRule,
    SteadyRule, steadiest_candidate)
from napari_focsam.core.session import Session


def test_plane_prompts_tokens_scale_clicks_then_box_corners():
    p = PlanePrompts((Click(10.0, 20.0, True), Click(30.0, 5.0, False)), Box(0.0, 4.0, 40.0, 44.0))
    pts, lab = p.tokens((40, 80), (512, 1024))
    assert pts.shape == (1, 4, 2) and lab.tolist() == [[1, 0, 2, 3]]
    np.testing.assert_allclose(pts[0].numpy(), [[256, 128], [64, 384], [51.2, 0], [563.2, 512]], rtol=1e-6)


def test_step_takes_the_prompts_as_one_value():
    model = make_fast_focsam(refiner_depth=1)
    pred = FocSAMPredictor(model)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    clicks, box = (Click(20.0, 20.0, True),), Box(10.0, 10.0, 30.0, 30.0)
    a = pred.step(emb, PlanePrompts(clicks, box))
    b = pred.step(emb, list(clicks), box=box)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert torch.equal(a.logits, b.logits)


def test_set_prompts_takes_a_prompts_value_or_clicks_and_a_box():
    stack = blobs_stack(3, size=40)
    s1, s2 = (Session(ImageVolume(stack), make_fast_focsam()) for _ in range(2))
    o1, o2 = s1.new_object(), s2.new_object()
    clicks, box = [(1, 20.0, 20.0, True)], (1, (10, 10, 30, 30))
    prompts = Prompts.of(clicks, box)
    assert prompts and prompts.slices == {1} and not Prompts()
    a, b = set_prompts(o1, prompts), set_prompts(o2, clicks, box)
    assert a.keys() == b.keys() == {1}
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="box is on slice 1"):
        set_prompts(o1, Prompts.of([(2, 20.0, 20.0, True)], box))


def test_later_click_rules_are_objects_the_click_loop_plugs_in():
    assert set(LATER_CLICK_RULES) == {"steady", "pick", "reuse"}
    model = make_fast_focsam(refiner_depth=1)
    assert FocSAMPredictor(model).later_clicks == "steady"
    assert isinstance(FocSAMPredictor(model, later_clicks="pick").later_rule, PickRule)
    seen = []

    def rank(masks, clicks, previous):  # a benchmark's own rank, recorded
        seen.append(len(masks))
        return steadiest_candidate(masks, clicks, previous)

    pred = FocSAMPredictor(model, later_clicks=SteadyRule(rank=rank))
    obj = InteractiveObject(pred, pred.embed(blobs_stack(1, size=40)[0]))
    obj.add_click(20, 20, True)
    assert seen == []  # the refine click: no later-click rule yet
    obj.add_click(10, 10, True)
    obj.add_click(30, 30, False)
    assert seen == [3, 3]  # each later click: three candidates ranked by the plugged rank


def test_a_rule_object_without_decide_is_refused():
    model = make_fast_focsam(refiner_depth=1)
    with pytest.raises(TypeError, match="name and decide"):
        FocSAMPredictor(model, later_clicks=object())
    with pytest.raises(ValueError, match="later_clicks"):
        FocSAMPredictor(model, later_clicks="sometimes")
    assert FocSAMPredictor(model, later_clicks=ReuseRule()).later_clicks == "reuse"


def test_every_slice_history_has_one_interface_and_an_object_gives_back_its_prompts():
    from napari_focsam.core.prompting import SliceHistory, TiledHistory, ZoomedObject
    from napari_focsam.core.propagation import AnchorHistory

    stack = blobs_stack(3, size=40)
    s = Session(ImageVolume(stack), make_fast_focsam(refiner_depth=1))
    obj = s.new_object()
    set_prompts(obj, Prompts.of([(1, 20.0, 20.0, True), (1, 12.0, 12.0, False)], (1, (8, 8, 32, 32))))
    assert isinstance(obj.history(1), SliceHistory) and isinstance(obj.history(1), InteractiveObject)
    assert obj.history(1).prompts == PlanePrompts(tuple(obj.history(1).clicks), obj.history(1).box)
    before = obj.history(1).token
    assert set_prompts(obj, obj.prompts) == {} and obj.history(1).token == before  # a round trip changes nothing
    obj2 = s.new_object()
    obj2.add_click(20, 20, True, z=1)
    obj2.propagate()
    obj2.add_click(20, 20, True, z=2)  # a correction on a propagated slice
    assert isinstance(obj2.history(2), AnchorHistory) and isinstance(obj2.history(2), SliceHistory)
    big = np.zeros((600, 600), np.uint8)
    big[280:330, 280:330] = 200
    for zoom, kind in ((False, TiledHistory), (True, ZoomedObject)):  # a 2D image zooms around the tiles
        tiled = Session(ImageVolume(big), make_fast_focsam(), tiles=True, tile_size=256, halo=64, zoom=zoom)
        t = tiled.new_object()
        t.add_click(300, 300, True)
        assert isinstance(t.history(), kind) and isinstance(t.history(), SliceHistory)
        assert t.history().prompts.clicks == (Click(300.0, 300.0, True),)
    plane = Session(ImageVolume(big), make_fast_focsam()).new_object()
    plane.add_click(300, 300, True)
    assert isinstance(plane.history(), ZoomedObject) and isinstance(plane.history(), SliceHistory)


def test_a_later_click_compares_with_the_mask_shown_without_computing_it_again(monkeypatch):
    """The steady rule ranks its candidates against the previous mask: the object passes the
    mask it shows (the same array), and the click comes out as when the mask is recomputed."""
    import napari_focsam.core.prompting._predictor as P

    model = make_fast_focsam(refiner_depth=1)
    image = blobs_stack(1, size=40)[0]
    previous = []

    def rank(masks, clicks, prev):
        previous.append(prev)
        return steadiest_candidate(masks, clicks, prev)

    pred = FocSAMPredictor(model, later_clicks=SteadyRule(rank=rank))
    obj = InteractiveObject(pred, pred.embed(image))
    obj.add_click(20, 20, True)
    shown, first_logits = obj.mask, obj.logits
    calls = []
    real = P.logits_to_mask
    monkeypatch.setattr(P, "logits_to_mask", lambda *a: calls.append(1) or real(*a))
    obj.add_click(10, 10, True)
    assert previous[-1] is shown and len(calls) == 3  # the three candidates only
    monkeypatch.setattr(P, "logits_to_mask", real)
    # the same click without the shown mask (recomputed from the logits): the same result
    again = pred.step(obj.embedding, obj.clicks, first_logits, obj.refined)
    np.testing.assert_array_equal(again.mask, obj.mask)
    np.testing.assert_array_equal(previous[-1], shown)


def _disc(cy: float, cx: float, r: float, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


def test_shape_iou_sees_a_section_that_moved_as_unchanged_and_one_that_grew_as_changed():
    from napari_focsam.core.prompting import mask_iou, region_from_plane, region_shape_iou, shape_iou

    a, moved = _disc(30, 20, 8), _disc(33, 27, 8)  # moved by 7.6 px, nearly the radius
    assert mask_iou(a, moved) < 0.5
    assert shape_iou(a, moved) == 1.0  # a whole-pixel move: the same disc
    assert shape_iou(a, _disc(33.4, 27.3, 8)) > 0.9  # off the pixel grid: rounding only
    grown = _disc(30, 20, 8 * 2 ** 0.5)  # twice the area, same centre
    assert shape_iou(a, grown) == pytest.approx(mask_iou(a, grown)) and shape_iou(a, grown) < 0.55
    assert shape_iou(a, _disc(30, 50, 8)) == 0.0  # no overlap at all: elsewhere, not moved
    empty = np.zeros_like(a)
    assert shape_iou(empty, empty) == 1.0 and shape_iou(a, empty) == 0.0
    # regions: the same figure from crops, whatever their offsets in the plane
    assert region_shape_iou(region_from_plane(a), region_from_plane(moved)) == 1.0
    assert region_shape_iou(region_from_plane(a), region_from_plane(grown)) == pytest.approx(shape_iou(a, grown))
