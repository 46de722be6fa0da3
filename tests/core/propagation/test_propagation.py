"""Propagation through stacks (control flow with a scripted decoder, then the real one) and the CLI."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.propagation import _plain as V  # noqa: E402
from napari_focsam.core.propagation import (  # noqa: E402
    VOTE_MIN_OVERLAP, regions_overlap, sections_overlap, vote_regions, vote_slices)
from napari_focsam.core.prompting import region_from_plane, region_to_plane  # noqa: E402
from napari_focsam.core.session import Session  # noqa: E402

Z, S = 12, 32


@pytest.fixture(scope="module")
def fast_model():
    return make_fast_focsam()


def ball_masks(n=Z, size=S, radius=(6, 9)):
    """Per-slice disc masks of a ball spanning slices 2..9 (radius grows to the middle)."""
    yy, xx = np.mgrid[:size, :size]
    out = {}
    for z in range(n):
        r = 0 if not 2 <= z <= 9 else radius[1] - abs(z - 5.5) * (radius[1] - radius[0]) / 3.5
        out[z] = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r ** 2
    return out


@pytest.fixture
def scripted(monkeypatch):
    """Replace the per-slice decoder by a script: slice z -> the mask in ``truth[z]``."""
    truth = ball_masks()
    visits = []

    def fake_next_slice(predictor, emb, prev_mask, prev_logits, prompt=None, multimask=None, refine=False,
                        offset=0.0, confidence=None):
        assert prev_mask.any()
        visits.append(emb.z)
        return truth[emb.z].copy(), torch.zeros(1, 1, 256, 256), 0.9

    monkeypatch.setattr(V, "next_slice_scored", fake_next_slice)
    return truth, visits


@pytest.fixture
def session(fast_model, monkeypatch):
    s = Session(np.random.default_rng(0).random((Z, S, S)).astype(np.float32), fast_model)
    return s


def force_mask(obj, z, mask):
    """Make the current mask of slice z's click history ``mask`` (the decoder is random)."""
    hist = obj.history(z)
    hist._mask = mask.copy()
    assert obj.mask(z) is hist._mask  # the cached mask of the current step is what is shown


def seed(obj, truth, z):
    """Click on slice z with the clicked mask forced to the truth."""
    obj.add_click(S // 2, S // 2, z=z)
    force_mask(obj, z, truth[z])


def test_propagation_follows_the_object_and_stops_where_it_vanishes(session, scripted):
    truth, visits = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    progress = []
    res = obj.propagate(progress=lambda d, t: progress.append((d, t)))
    assert sorted(res.masks) == list(range(2, 10)) and res.z_range == (2, 9)
    assert res.stopped_reason == {"down": "vanished at z=1", "up": "vanished at z=10"}
    assert not res.cancelled and visits == [5, 4, 3, 2, 1, 7, 8, 9, 10]
    assert all(0 < res.ious[z] <= 1 for z in (5, 7))
    assert progress[-1] == (Z - 1, Z - 1) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    vm = obj.volume_mask()
    assert vm.shape == (Z, S, S) and vm.dtype == bool
    for z in range(Z):
        np.testing.assert_array_equal(vm[z], truth[z])
        np.testing.assert_array_equal(obj.mask(z), truth[z])


def test_iou_threshold_stops_early_and_the_failing_slice_is_not_kept(session, scripted):
    truth, _ = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    res = obj.propagate(iou_threshold=0.78)
    # radii shrink towards the ends: the IoU of consecutive discs falls below 0.78 near the ends
    lo, hi = res.z_range
    assert 2 < lo < 6 < hi < 9
    assert res.stopped_reason["down"].startswith("iou ") and f"at z={lo - 1}" in res.stopped_reason["down"]
    assert res.ious[lo - 1] < 0.78 and lo - 1 not in res.masks
    assert not obj.volume_mask()[lo - 1].any()


def test_directions_and_border(session, scripted):
    truth, visits = scripted
    obj = session.new_object()
    seed(obj, truth, 3)
    res = obj.propagate(directions=("up",))
    assert res.stopped_reason == {"down": "not requested", "up": "vanished at z=10"}
    assert min(res.masks) == 3
    truth[0] = truth[1] = truth[2] = truth[3]  # the object reaches the border
    res = obj.propagate(directions=("down",))
    assert res.stopped_reason == {"down": "border", "up": "not requested"} and res.z_range == (0, 3)
    with pytest.raises(ValueError, match="direction"):
        obj.propagate(directions=("left",))


def test_gaps_between_clicked_slices_fill_from_both_sides(session, scripted):
    truth, visits = scripted
    obj = session.new_object()
    seed(obj, truth, 3)
    seed(obj, truth, 8)
    res = obj.propagate(iou_threshold=0.99)  # the threshold applies beyond the clicked slices only
    assert visits[:1] == [2] and set(visits[1:5]) == {4, 5, 6, 7}
    assert visits[1:3] == [4, 5] and visits[3:5] == [7, 6]  # from 3 upwards, from 8 downwards
    assert all(z in res.masks for z in range(3, 9))


def test_user_clicks_override_a_propagated_slice(session, scripted, fast_model):
    truth, _ = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    obj.propagate()
    np.testing.assert_array_equal(obj.mask(4), truth[4])
    m = obj.add_click(3, 3, z=4)  # the real (random) decoder's answer now rules slice 4
    np.testing.assert_array_equal(obj.mask(4), m)
    np.testing.assert_array_equal(obj.volume_mask()[4], m)
    assert obj.slices_with_clicks == [4, 6]
    obj.undo(4)  # slice 4 has no clicks any more: its stale propagated mask is gone too
    assert not obj.mask(4).any()


def test_repropagation_only_redoes_the_runs_next_to_the_edited_slice(session, scripted):
    truth, visits = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    first = obj.propagate(iou_threshold=0.0)
    visits.clear()
    seed(obj, truth, 8)  # a click on slice 8
    res = obj.propagate(iou_threshold=0.0)
    # the run below slice 6 is reused, and slice 7 (between 6 and 8) is cut from 6's earlier run up
    assert visits == [9, 10]
    assert sorted(res.masks) == sorted(first.masks) and res.stopped_reason == first.stopped_reason
    visits.clear()
    obj.propagate(iou_threshold=0.0)
    assert visits == []  # nothing changed
    obj.propagate(iou_threshold=0.3)
    assert visits == [5, 4, 3, 2, 1, 9, 10]  # another threshold: the outer runs are redone


def test_object_stays_readable_while_it_propagates(session, scripted, monkeypatch):
    import threading
    import time

    truth, _ = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    started, release = threading.Event(), threading.Event()
    scripted_step = V.next_slice_scored

    def blocking(*args, **kwargs):
        started.set()
        release.wait(10)
        return scripted_step(*args, **kwargs)

    monkeypatch.setattr(V, "next_slice_scored", blocking)
    worker = threading.Thread(target=obj.propagate)
    worker.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    mask, clicks = obj.mask(6), obj.clicks
    waited = time.perf_counter() - t0
    release.set()
    worker.join()
    assert waited < 2 and len(clicks) == 1
    np.testing.assert_array_equal(mask, truth[6])
    assert obj.last_propagation.z_range == (2, 9)


def test_cancel_keeps_what_was_finished(session, scripted):
    truth, visits = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    res = obj.propagate(cancelled=lambda: len(visits) >= 2)
    assert res.cancelled and visits == [5, 4]
    assert res.stopped_reason == {"down": "cancelled", "up": "cancelled"}
    assert sorted(res.masks) == [4, 5, 6] and obj.volume_mask()[4].any()


def test_empty_clicked_slice_stops_and_blank_slices_vanish(session, scripted, fast_model):
    truth, visits = scripted
    obj = session.new_object()
    seed(obj, truth, 6)
    obj.add_click(1, 1, positive=False, z=4)  # only a negative click: an empty mask
    assert not obj.mask(4).any() and obj.logits(4) is None
    res = obj.propagate()
    assert 3 not in res.masks and 5 in res.masks  # slice 4 (empty) blocks the way down
    assert res.stopped_reason["down"] == "the clicked slice 4 has an empty mask"
    stack = blobs_stack(5, size=S).astype(np.float32)
    stack[0] = 0  # a blank end slice
    s = Session(stack, fast_model)
    o = s.new_object()
    truth[1] = truth[6]
    seed(o, {2: truth[6]}, 2)
    visits.clear()
    res = o.propagate(directions=("down",))
    assert res.stopped_reason["down"] == "vanished at z=0 (blank slice)" and visits == [1]


def test_z_start_and_errors(session, scripted, fast_model):
    truth, visits = scripted
    obj = session.new_object()
    with pytest.raises(ValueError, match="no clicks"):
        obj.propagate()
    seed(obj, truth, 6)
    obj.propagate(iou_threshold=0.8)
    lo = min(obj.last_propagation.masks)
    with pytest.raises(ValueError, match="no clicks and no mask"):
        obj.propagate(z_start=0)
    visits.clear()
    res = obj.propagate(z_start=lo, iou_threshold=0.0, directions=("down",))
    assert visits[0] == lo - 1 and res.z_range[0] == 2
    with pytest.raises(ValueError, match="iou_threshold"):
        obj.propagate(iou_threshold=1.5)
    with pytest.raises(ValueError, match="prompt mode"):
        obj.propagate(prompt="magic")
    flat = Session(blobs_stack(1, size=S)[0], fast_model).new_object()
    flat.add_click(16, 16)
    res = flat.propagate()
    assert list(res.masks) in ([0], []) and res.stopped_reason == {"down": "border", "up": "border"}
    assert flat.volume_mask().shape == (1, S, S)


# --------------------------------------------------------------------------- prompt helpers


def test_interior_point_box_and_logits():
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[12:28, 12:28] = False  # a thick square ring: the centre is outside
    y, x = V.interior_point(ring)
    assert ring[y, x]
    edge = np.zeros((20, 20), bool)
    edge[:, :6] = True  # touching the image border: the border counts as boundary
    assert V.interior_point(edge)[1] in (2, 3)
    box = V.mask_box(edge)
    assert box[0] == 0 and box[2] > 5 and box[3] == 19
    logits = V.mask_to_logits(edge, (1024, 1024))
    assert logits.shape == (1, 1, 256, 256)
    assert logits[0, 0, 128, 10] > 0 > logits[0, 0, 128, 200]
    assert V.mask_iou(edge, edge) == 1.0 and V.mask_iou(edge, ~edge) == 0.0


def test_interior_point_on_the_bounding_box_equals_the_whole_image_transform():
    """The distance transform runs on the mask's box only: same point as on the whole image,
    for blobs anywhere (touching borders included), ties broken in the same raster order."""
    from scipy import ndimage as ndi

    def whole(mask):
        dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), dist.shape))

    rng = np.random.default_rng(3)
    for _ in range(40):
        noise = ndi.gaussian_filter(rng.random((48, 64)), 3)
        mask = noise > np.quantile(noise, rng.uniform(0.5, 0.97))
        assert V.interior_point(mask) == whole(mask)
    square = np.zeros((30, 30), bool)
    square[10:20, 4:14] = True  # an even side: four pixels tie
    assert V.interior_point(square) == whole(square)
    assert V.interior_point(np.zeros((5, 5), bool)) == (0, 0)


@pytest.mark.parametrize("prompt", V.PROMPT_MODES)
@pytest.mark.parametrize("multimask", [False, True])
def test_every_prompt_mode_runs_on_the_real_decoder(fast_model, prompt, multimask):
    s = Session(blobs_stack(2, size=S), fast_model)
    prev = ball_masks()[5]
    emb = s.store.get(1)
    mask, logits = V.next_slice(s.predictor, emb, prev, None, prompt, multimask)
    assert mask.shape == (S, S) and mask.dtype == bool and logits.shape == (1, 1, 256, 256)


def test_propagation_refines_each_new_slice_once_only_when_asked(monkeypatch):
    """Refining the propagated slices measured worse on cells3d (module docs): off by default,
    even with a model that has a refiner; ``refine=True`` refines every new slice once."""
    model = make_fast_focsam(refiner_depth=1)
    s = Session(blobs_stack(6, size=S), model)
    obj = s.new_object()
    seed_mask = obj.add_click(S // 2, S // 2, True, z=3)
    seeds = {3: (seed_mask, obj.logits(3))}
    refines, visited = [], []
    original_refine, original_get = model.refine, s.store.get
    monkeypatch.setattr(model, "refine", lambda *a: (refines.append(1), original_refine(*a))[1])
    monkeypatch.setattr(s.store, "get", lambda z=0: (visited.append(z), original_get(z))[1])
    assert V.DEFAULT_REFINE_3D is False
    V.propagate(s.store, seeds, iou_threshold=0.0, min_pixels=0)
    assert refines == [] and sorted(visited) == [0, 1, 2, 4, 5]
    visited.clear()
    V.propagate(s.store, seeds, iou_threshold=0.0, min_pixels=0, refine=True)
    assert len(refines) == len(visited) == 5


def test_a_refined_slice_is_decoded_on_the_refined_embedding(monkeypatch):
    model = make_fast_focsam(refiner_depth=1)
    s = Session(blobs_stack(2, size=S), model)
    emb, prev = s.store.get(1), ball_masks()[5]
    seen = []
    decode = model.mask_decoder.decode_tokens  # every decoding, whole map or block (``_decode.py``)
    monkeypatch.setattr(model.mask_decoder, "decode_tokens",
                        lambda feats, *a: (seen.append(feats), decode(feats, *a))[1])
    plain_mask, plain_logits = V.next_slice(s.predictor, emb, prev, None)
    refined_mask, refined_logits = V.next_slice(s.predictor, emb, prev, None, refine=True)
    assert len(seen) == 3 and seen[1] is seen[0] is not seen[2]  # coarse pass on the slice, then the refined one
    assert not torch.equal(plain_logits, refined_logits) and refined_mask.shape == plain_mask.shape


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_model(monkeypatch, fast_model):
    import napari_focsam.core.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: fast_model)


def run_cli(argv, capsys):
    from napari_focsam.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_segment_propagate_writes_a_3d_mask(tmp_path, capsys, cli_model):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "stack.tif", blobs_stack(4, size=S))
    out = tmp_path / "mask.tif"
    rc, stdout, err = run_cli(["segment", str(tmp_path / "stack.tif"), "--slice", "2", "--click", "16,16",
                               "--propagate", "--out", str(out), "--cache", str(tmp_path / "c"),
                               "--iou-threshold", "0.9"], capsys)
    assert rc == 0, err
    info = json.loads(stdout)
    assert info["slice"] == 2 and info["shape"] == [4, S, S] and set(info["stopped"]) == {"down", "up"}
    mask = tifffile.imread(out)
    assert mask.shape == (4, S, S) and mask.dtype == np.uint8 and mask[2].any()
    assert len(list((tmp_path / "c").glob("*.zarr"))) == 1


@pytest.mark.parametrize("argv, message", [
    (["--click", "16,16"], "pass --slice Z"),
    (["--click", "16,16", "--slice", "9"], "out of range"),
    (["--click", "99,16", "--slice", "1"], "outside the image"),
    (["--click", "16,16", "--slice", "1", "--iou-threshold", "2"], "--iou-threshold 2 is out of range"),
])
def test_cli_segment_propagate_bad_input(tmp_path, capsys, cli_model, argv, message):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "stack.tif", blobs_stack(3, size=S))
    rc, _, err = run_cli(["segment", str(tmp_path / "stack.tif"), "--propagate", "--out",
                          str(tmp_path / "m.tif"), *argv], capsys)
    assert rc == 2 and message in err and "Traceback" not in err


def test_cli_propagate_on_a_2d_image_is_refused(tmp_path, capsys, cli_model):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "img.tif", blobs_stack(1, size=S)[0])
    rc, _, err = run_cli(["segment", str(tmp_path / "img.tif"), "--click", "5,5", "--propagate", "--out",
                          str(tmp_path / "m.tif")], capsys)
    assert rc == 2 and "needs a 3D stack" in err


def test_cli_precompute_fills_and_resumes(tmp_path, capsys, cli_model):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "stack.tif", blobs_stack(3, size=S))
    argv = ["precompute", str(tmp_path / "stack.tif"), "--cache", str(tmp_path / "cache"), "--no-progress"]
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 0, err
    first = json.loads(stdout)
    assert (first["slices"], first["computed"], first["reused"]) == (3, 3, 0)
    assert Path(first["cache"]).parent == tmp_path / "cache"
    rc, stdout, _ = run_cli(argv, capsys)
    assert rc == 0 and (json.loads(stdout)["computed"], json.loads(stdout)["reused"]) == (0, 3)


def test_cli_precompute_errors(tmp_path, capsys, cli_model):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "bad.tif", np.zeros((2, 3, 16, 16), np.uint16))
    rc, _, err = run_cli(["precompute", str(tmp_path / "bad.tif"), "--cache", str(tmp_path / "c")], capsys)
    assert rc == 2 and "4D data" in err
    tifffile.imwrite(tmp_path / "ok.tif", blobs_stack(2, size=S))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, _, err = run_cli(["precompute", str(tmp_path / "ok.tif"), "--cache", str(ro), "--no-progress"],
                             capsys)
    finally:
        ro.chmod(stat.S_IRWXU)
    assert rc == 2 and "read-only" in err


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_real_propagation_through_a_cells3d_nucleus(mobile_sam, shared_data):
    """One click on a nucleus' middle slice, propagation through a 7-slice sub-stack."""
    tifffile = pytest.importorskip("tifffile")
    img = shared_data / "micro" / "cells3d" / "cells3d_nuclei.tif"
    if not img.is_file():
        pytest.skip("cells3d not present")
    stack = tifffile.imread(img)
    labels = tifffile.imread(shared_data / "micro" / "cells3d" / "cells3d_nuclei_label.tif")
    sub, gt = stack[32:39], labels[32:39] == 5
    res, iou = propagate_from_centre(mobile_sam, sub, gt, 3)
    assert res.z_range == (0, 6) and iou > 0.8, (iou, res.stopped_reason)


def propagate_from_centre(model, stack: np.ndarray, gt: np.ndarray, z: int):
    """One click on slice ``z`` at the point of the label ``gt[z]`` farthest from its boundary,
    propagated through ``stack``: (the propagation's result, the 3D IoU with ``gt``)."""
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(np.pad(gt[z], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    obj = Session(stack, model, cache_dir=None).new_object()
    obj.add_click(y, x, z=z)
    res = obj.propagate()
    vm = obj.volume_mask()
    return res, (vm & gt).sum() / (vm | gt).sum()


def test_cli_propagate_passes_refiner_and_precision(tmp_path, capsys, monkeypatch, fast_model):
    """`segment --propagate` loads the model with the given refiner and precision (it used to drop them)."""
    tifffile = pytest.importorskip("tifffile")
    import napari_focsam.core.models as models

    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        return fast_model

    monkeypatch.setattr(models, "load_model", fake_load)
    tifffile.imwrite(tmp_path / "stack.tif", blobs_stack(3, size=S))
    rc, stdout, err = run_cli(["segment", str(tmp_path / "stack.tif"), "--slice", "1", "--click", "16,16",
                               "--propagate", "--refiner", "r.pt", "--refine-precision", "fp32",
                               "--out", str(tmp_path / "m.tif")], capsys)
    assert rc == 0, err
    assert seen == {"refiner": "r.pt", "refine_precision": "fp32"}
    assert "refine_precision" in json.loads(stdout)


def test_a_calibrated_decoder_that_doubts_its_mask_ends_the_object(fast_model, monkeypatch):
    """``propagation_thresholds["min_pred_iou"]`` (from a checkpoint whose IoU head is trained):
    a slice whose chosen mask scores below it is empty (the run stops there); without a floor,
    or above it, the mask is kept."""
    from napari_focsam.core.prompting import FocSAMPredictor

    pred = FocSAMPredictor(fast_model)
    stack = blobs_stack(3)
    emb = pred.embed(stack[1])
    prev = np.zeros(stack.shape[1:], bool)
    prev[10:22, 10:22] = True
    seen = []
    real = V.decode_prompt_token

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append([out[3]])
        return out

    monkeypatch.setattr(V, "decode_prompt_token", spy)
    mask, _ = V.next_slice(pred, emb, prev, None)
    score = seen[-1][0]
    assert fast_model.propagation_thresholds is None
    try:
        fast_model.propagation_thresholds = {"min_pred_iou": score + 0.01}
        doubted, _ = V.next_slice(pred, emb, prev, None)
        assert not doubted.any() and doubted.shape == mask.shape
        fast_model.propagation_thresholds = {"min_pred_iou": score - 0.01}
        kept, _ = V.next_slice(pred, emb, prev, None)
        np.testing.assert_array_equal(kept, mask)
    finally:
        fast_model.propagation_thresholds = None


def test_the_floor_falls_with_the_decoders_confidence_in_the_object():
    """The floor holds as set for an object the decoder is sure of; for one whose best seed it
    scores lower (noisy, tiny planes), it falls in proportion (stardist 3D: seeds 0.37-0.67,
    the object's own slices 0.30-0.73, so the plain floor of 0.55 ended most objects at once)."""

    class Calibrated:
        propagation_thresholds = {"min_pred_iou": 0.55}

    model = Calibrated()
    assert V.doubts_its_mask(model, 0.50) and not V.doubts_its_mask(model, 0.60)
    assert V.doubts_its_mask(model, 0.50, confidence=0.95)  # never above the floor as set
    assert not V.doubts_its_mask(model, 0.40, confidence=0.6)  # 0.55 * 0.6 / 0.9 = 0.367
    assert V.doubts_its_mask(model, 0.35, confidence=0.6)
    assert not V.doubts_its_mask(object(), 0.01, confidence=0.99)  # no floor: never


def test_an_unsure_object_keeps_its_slices_and_a_sure_one_ends_as_before(fast_model, monkeypatch):
    """propagate(): the floor of every run comes from the object's best seed score (one decode
    per seed, kept in the memo by the seed's token), not from each run's own seed."""
    from napari_focsam.core.embeddings import EmbeddingStore
    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.prompting import FocSAMPredictor

    stack = blobs_stack(5)
    store = EmbeddingStore(FocSAMPredictor(fast_model), ImageVolume(stack))
    seed = np.zeros(stack.shape[1:], bool)
    seed[10:22, 10:22] = True
    scores = {"seed": 0.6, "slice": 0.45}  # what the decoder says of the seed / of the other slices
    real = V.decode_prompt_token
    calls = []

    def scripted(predictor, embedding, points, *a, **k):
        mask, logits, token, _ = real(predictor, embedding, points, *a, **k)
        is_seed = embedding is store.get(2)
        calls.append(is_seed)
        return mask, logits, token, scores["seed" if is_seed else "slice"]

    monkeypatch.setattr(V, "decode_prompt_token", scripted)
    fast_model.propagation_thresholds = {"min_pred_iou": 0.55}
    try:
        memo: dict = {}
        unsure = V.propagate(store, {2: (seed, None)}, iou_threshold=0.0, tokens={2: "a"}, memo=memo)
        assert unsure.z_range[0] < 2 or unsure.z_range[1] > 2  # 0.45 > 0.55 * 0.6 / 0.9: kept
        n = len(calls)
        V.propagate(store, {2: (seed, None)}, iou_threshold=0.0, tokens={2: "a"}, memo=memo)
        assert len(calls) == n  # the seed's score and the runs come from the memo
        scores["seed"] = 0.95
        sure = V.propagate(store, {2: (seed, None)}, iou_threshold=0.0, tokens={2: "b"}, memo={})
        assert sure.z_range == (2, 2)  # 0.45 < 0.55: the object ends at its seed, as before
    finally:
        fast_model.propagation_thresholds = None


def test_decoder_thresholds_come_only_from_numbers_in_range():
    from napari_focsam.core.models import decoder_thresholds

    meta = {"segment_all": {"pred_iou_thresh": 0.6, "stability_thresh": "0.7", "evil": 0.5},
            "propagation": {"min_pred_iou": 1.5}}
    assert decoder_thresholds(meta, "segment_all", ("pred_iou_thresh", "stability_thresh")) == {"pred_iou_thresh": 0.6}
    assert decoder_thresholds(meta, "propagation", ("min_pred_iou",)) is None
    assert decoder_thresholds({}, "propagation", ("min_pred_iou",)) is None
    assert decoder_thresholds({"propagation": {"min_pred_iou": True}}, "propagation", ("min_pred_iou",)) is None


# --------------------------------------------------------------------------- the vote between slices


def test_the_vote_keeps_what_two_of_three_slices_have_and_leaves_seeds_and_ends_alone():
    def square(a, b):
        m = np.zeros((12, 12), bool)
        m[a:b, a:b] = True
        return m

    wobble = square(3, 9)
    wobble[0, 0] = True           # a speck only slice 2 has
    wobble[5, 3] = False          # a notch only slice 2 has
    masks = {1: square(3, 9), 2: wobble, 3: square(3, 9), 4: square(2, 10)}
    out = vote_slices(masks, keep=[3])
    np.testing.assert_array_equal(out[2], square(3, 9))  # the speck and the notch are voted away
    assert out[3] is masks[3]                            # a seed keeps its mask
    np.testing.assert_array_equal(out[4], square(3, 9))  # an end keeps what its inner neighbour has
    np.testing.assert_array_equal(out[1], square(3, 9) & wobble)  # the vote reads the decoded masks
    assert 0 not in out and 5 not in out                 # never past the object's ends
    assert masks[2] is wobble and wobble[0, 0]           # the input is not changed
    lonely = {7: square(3, 9)}
    assert vote_slices(lonely)[7] is lonely[7]


def test_the_vote_on_regions_is_the_vote_on_planes():
    rng = np.random.default_rng(1)
    planes = {z: ndi.binary_opening(rng.random((40, 40)) < 0.6) for z in range(3, 9)}
    planes[5] = np.zeros((40, 40), bool)
    planes[5][30:33, 2:5] = True  # a small section far from the others: the boxes differ
    regions = {z: region_from_plane(m) for z, m in planes.items()}
    voted, on_regions = vote_slices(planes, keep=[4]), vote_regions(regions, keep=[4])
    assert sorted(voted) == sorted(on_regions)
    for z in planes:
        np.testing.assert_array_equal(region_to_plane(on_regions[z], (40, 40)), voted[z])
    assert regions_overlap(regions) == pytest.approx(sections_overlap(planes))


def test_sections_overlap_measures_how_finely_z_samples_the_object():
    m = np.zeros((10, 10), bool)
    m[2:6, 2:6] = True
    shifted = np.roll(m, 2, axis=1)
    assert sections_overlap({0: m, 1: m, 2: m}) == 1.0
    assert sections_overlap({0: m, 1: shifted}) == pytest.approx(8 / 24)
    assert sections_overlap({0: m, 2: m}) == 0.0  # no consecutive pair


def test_propagation_votes_where_the_sections_overlap_and_not_along_time(session, scripted, monkeypatch):
    truth, visits = scripted
    truth[7][0, 0] = True  # a speck the decoder draws on slice 7 only
    obj = session.new_object()
    seed(obj, truth, 4)
    voted = obj.propagate(iou_threshold=0.0).masks
    assert not voted[7][0, 0] and voted[4].sum() == truth[4].sum()  # the speck is voted away, the seed kept
    assert sections_overlap(voted) >= VOTE_MIN_OVERLAP
    raw = obj.propagate(iou_threshold=0.0, vote=False).masks  # frames of a time-lapse: no vote
    assert raw[7][0, 0] and sorted(voted) == sorted(raw)
    for z in raw:
        np.testing.assert_array_equal(voted[z], vote_slices(raw, keep=[4])[z])
    # an object whose sections do not overlap enough is left as decoded
    monkeypatch.setattr(V, "VOTE_MIN_OVERLAP", 1.01)  # the name propagate() reads
    assert obj.propagate(iou_threshold=0.0).masks[7][0, 0]
