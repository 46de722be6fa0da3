"""The propagation's stop rule: the shape of consecutive sections, not their place, and a
second decoding with the previous mask's box before a run stops (a scripted decoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.core.propagation import _plain as V
from test_propagation import (  # noqa: F401
    S, Z, ball_masks, fast_model, force_mask, propagate_from_centre, seed, session)


def test_a_section_that_moves_between_slices_is_followed_and_one_that_changes_shape_ends(session, monkeypatch):
    """Serial-section EM: an object's section shifts by about half its width from slice to slice
    and keeps its shape (plain IoU of consecutive sections under 0.65): it is followed to the
    stack's end; a section that doubles its area in one slice (IoU 0.5) ends the run there."""
    yy, xx = np.mgrid[:S, :S]

    def disc(cy, cx, r):
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2

    moving = {z: disc(6 + 1.8 * z, 4.5 + 2.1 * z, 4.0) for z in range(Z)}
    growing = {z: disc(16, 16, 4.0 if z <= 6 else 4.0 * 2 ** 0.5) for z in range(Z)}
    assert max(V.mask_iou(moving[z], moving[z + 1]) for z in range(Z - 1)) < 0.65
    for truth, reached in ((moving, (0, Z - 1)), (growing, (0, 6))):
        monkeypatch.setattr(V, "next_slice_scored", lambda predictor, emb, prev, *a, truth=truth, **k:
                            (truth[emb.z].copy(), torch.zeros(1, 1, 256, 256), 0.9))
        obj = session.new_object()
        obj.add_click(*(int(v) for v in np.argwhere(truth[3])[0]), z=3)
        force_mask(obj, 3, truth[3])
        res = obj.propagate()  # the product's stop rule (IoU 0.65)
        assert res.z_range == reached, res.stopped_reason
        if truth is growing:
            reason = res.stopped_reason["up"]
            assert reason.startswith("iou ") and float(reason.split()[1]) < 0.55 and reason.endswith("at z=7")
        session.remove_object(obj)


def test_a_slice_the_click_alone_loses_is_decoded_again_with_the_box(session, monkeypatch):
    """Large sections with inner structure: from the previous mask's interior point alone the
    decoder can give a part of the object; before the run stops there, the slice is decoded
    once more with the previous mask's box, and that mask is kept when it passes the rule.
    Only with a decoder whose floor can still end the object (a calibrated IoU head); SAM's own
    decoder keeps the single decoding."""
    truth = ball_masks()
    sliver = {z: truth[z] & (np.arange(S)[None, :] < S // 2 - 3) for z in truth}
    model = session.predictor.model
    assert V.propagation_floor(model) is None
    monkeypatch.setattr(model, "propagation_thresholds", {"min_pred_iou": 0.5}, raising=False)
    for box_finds_it, floor, reached in ((True, True, (2, 9)), (False, True, (5, 9)), (True, False, (5, 9))):
        if not floor:
            monkeypatch.setattr(model, "propagation_thresholds", None)
        calls = []

        def fake(predictor, emb, prev, logits, prompt=None, multimask=None, box_finds_it=box_finds_it, **k):
            calls.append((emb.z, prompt))
            lost = emb.z == 4 and (prompt == "point" or not box_finds_it)
            return (sliver if lost else truth)[emb.z].copy(), torch.zeros(1, 1, 256, 256), 0.9

        monkeypatch.setattr(V, "next_slice_scored", fake)
        obj = session.new_object()
        seed(obj, truth, 6)
        res = obj.propagate()
        assert res.z_range == reached, res.stopped_reason
        # the one slice that failed, decoded again only with a floor
        assert [c for c in calls if c[1] != "point"] == ([(4, "point_box")] if floor else [])
        if box_finds_it and floor:
            np.testing.assert_array_equal(obj.mask(4), truth[4])
        else:
            assert res.stopped_reason["down"].startswith("iou ") and not obj.volume_mask()[4].any()
        session.remove_object(obj)


@pytest.mark.slow
def test_real_propagation_follows_a_mitochondrion_through_serial_sections(mobile_sam, shared_data):
    """ssTEM (50 nm sections): a mitochondrion's section moves by a good part of its width from
    slice to slice. One click on its middle slice follows it through all ten labelled slices."""
    from scipy import ndimage as ndi

    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "micro" / "em_vnc_sstem"
    if not (folder / "vnc_mitochondria_label.tif").is_file():
        pytest.skip("the VNC ssTEM stack is not present")
    stack = tifffile.imread(folder / "vnc_em.tif")[8:18]  # the longest run of labelled slices
    labels, _ = ndi.label(tifffile.imread(folder / "vnc_mitochondria_label.tif")[8:18] > 0)
    gt = labels == 7  # its consecutive labelled sections overlap by IoU 0.55-0.64 around slice 4
    res, iou = propagate_from_centre(mobile_sam, stack, gt, 4)
    assert res.z_range == (0, 9) and iou > 0.8, (iou, res.stopped_reason)
