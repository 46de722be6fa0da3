"""Sessions and objects: clicks, undo/reset, set_clicks diffs, several objects, bad input."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.predictor import Click, FocSAMPredictor  # noqa: E402
from napari_focsam.core.session import (  # noqa: E402
    EmbeddingStore,
    ImageVolume,
    PropagationResult,
    SegmentedObject,
    Session,
)


@pytest.fixture(scope="module")
def fast_model():
    return make_fast_focsam()


@pytest.fixture(scope="module")
def refiner_model():
    return make_fast_focsam(refiner_depth=1)


def count_steps(session, monkeypatch) -> list:
    """Record every decoder step made by ``session``'s predictor."""
    seen = []
    original = session.predictor.step

    def step(embedding, clicks, prev_logits=None, refined=None):
        seen.append(len(clicks))
        return original(embedding, clicks, prev_logits, refined)

    monkeypatch.setattr(session.predictor, "step", step)
    return seen


def test_api_names_and_session_parts(fast_model):
    s = Session(np.zeros((2, 16, 16), np.float32) + np.arange(16), fast_model)
    assert isinstance(s.volume, ImageVolume) and isinstance(s.store, EmbeddingStore)
    assert isinstance(s.predictor, FocSAMPredictor) and s.objects == []
    a, b = s.new_object(), s.new_object()
    assert isinstance(a, SegmentedObject) and (a.id, b.id) == (1, 2) and s.objects == [a, b]
    s.remove_object(a)
    assert s.objects == [b]
    with pytest.raises(ValueError, match="does not belong"):
        s.remove_object(a)
    assert PropagationResult.__dataclass_fields__.keys() >= {"masks", "z_range", "stopped_reason", "cancelled"}


def test_click_returns_full_resolution_mask_equal_to_the_plain_loop(fast_model):
    img = blobs_stack(1, size=40)[0].astype(np.float32)
    s = Session(ImageVolume(img), fast_model)
    obj = s.new_object()
    m1 = obj.add_click(20, 20)
    assert m1.shape == (40, 40) and m1.dtype == bool and not m1.flags.writeable
    m2 = obj.add_click(5, 5, positive=False)
    emb = s.store.get(0)
    r1 = s.predictor.step(emb, [Click(20, 20, True)])
    r2 = s.predictor.step(emb, [Click(20, 20, True), Click(5, 5, False)], r1.logits, r1.refined)
    np.testing.assert_array_equal(m1, r1.mask)
    np.testing.assert_array_equal(m2, r2.mask)
    assert obj.clicks == [(0, 20.0, 20.0, True), (0, 5.0, 5.0, False)]
    np.testing.assert_array_equal(obj.mask(0), m2)
    torch.testing.assert_close(obj.logits(0), r2.logits)


def test_undo_restores_the_exact_previous_state_and_reset(refiner_model):
    s = Session(blobs_stack(1, size=40)[0], refiner_model)
    obj = s.new_object()
    m1 = obj.add_click(20, 20).copy()
    l1 = obj.logits(0).clone()
    obj.add_click(10, 30, positive=False)
    assert obj._steps[0][-1].refined is not None  # the focus refiner ran at the 2nd click
    np.testing.assert_array_equal(obj.undo(), m1)
    torch.testing.assert_close(obj.logits(0), l1)
    assert obj._steps[0][-1].refined is None
    m2 = obj.add_click(10, 30, positive=False)
    np.testing.assert_array_equal(obj.undo(0), m1)
    np.testing.assert_array_equal(obj.add_click(10, 30, positive=False), m2)  # same again
    obj.reset()
    assert obj.clicks == [] and not obj.mask(0).any() and obj.undo().shape == (40, 40)


def test_objects_are_independent(fast_model):
    s = Session(blobs_stack(3), fast_model)
    a, b = s.new_object(), s.new_object()
    ma = a.add_click(24, 24, z=1).copy()
    b.add_click(5, 5, z=1)
    b.add_click(40, 40, z=2)
    np.testing.assert_array_equal(a.mask(1), ma)
    assert a.slices_with_clicks == [1] and b.slices_with_clicks == [1, 2]
    b.reset()
    np.testing.assert_array_equal(a.mask(1), ma)
    assert s.store.stats["computed"] == 2  # one shared embedding per slice


def test_click_on_a_slice_without_embedding_computes_it(fast_model):
    s = Session(blobs_stack(4), fast_model)
    assert not s.store.has(3)
    assert s.new_object().add_click(24, 24, z=3).shape == (48, 48)
    assert s.store.has(3) and not s.store.has(0)


def test_clicks_outside_the_image_or_stack_raise(fast_model):
    s = Session(blobs_stack(2, size=32), fast_model)
    obj = s.new_object()
    for y, x, z in [(-1, 5, 0), (5, 32, 0), (32, 0, 1), (np.nan, 3, 0), (3, np.inf, 0)]:
        with pytest.raises(ValueError, match="outside the image of 32x32"):
            obj.add_click(y, x, z=z)
    with pytest.raises(ValueError, match="out of range: the stack has 2 slices"):
        obj.add_click(3, 3, z=2)
    with pytest.raises(ValueError, match="must be numbers"):
        obj.add_click("a", 3)
    assert obj.clicks == [] and s.store.stats["computed"] == 0
    # napari's pixel convention: -0.5..size-0.5 lies on the image (clamped to the border pixels)
    obj.add_click(-0.4, 31.4, z=1)
    assert obj.clicks == [(1, 0.0, 31.0, True)]


def test_set_clicks_only_replays_the_difference(fast_model, monkeypatch):
    s = Session(blobs_stack(3), fast_model)
    obj = s.new_object()
    steps = count_steps(s, monkeypatch)
    c = [(1, 24, 24, True), (1, 5, 5, False), (2, 24, 24, True)]
    changed = obj.set_clicks(c)
    assert sorted(changed) == [1, 2] and steps == [1, 2, 1]
    ref = obj.mask(1).copy()
    steps.clear()
    assert obj.set_clicks(c) == {} and steps == []  # nothing changed
    changed = obj.set_clicks(c + [(1, 40, 40, False)])  # one click added at the end
    assert list(changed) == [1] and steps == [3]
    steps.clear()
    changed = obj.set_clicks(c)  # ... and removed again: a pure undo
    assert list(changed) == [1] and steps == []
    np.testing.assert_array_equal(changed[1], ref)
    changed = obj.set_clicks([c[0], (1, 6, 6, False), c[2]])  # a middle click moved
    assert list(changed) == [1] and steps == [2]
    changed = obj.set_clicks([c[0]])  # slice 2 lost its clicks
    assert sorted(changed) == [1, 2] and not changed[2].any()
    assert obj.slices_with_clicks == [1] and obj.clicks == [(1, 24.0, 24.0, True)]
    with pytest.raises(ValueError, match="outside"):
        obj.set_clicks([c[0], (1, 99, 99, True)])
    assert obj.clicks == [(1, 24.0, 24.0, True)]  # validated before anything changed
    with pytest.raises(ValueError, match=r"\(z, y, x, positive\)"):
        obj.set_clicks([(24, 24, True)])


def test_set_clicks_keeps_the_global_click_order(fast_model):
    s = Session(blobs_stack(3), fast_model)
    obj = s.new_object()
    c = [(2, 20, 20, True), (0, 24, 24, True), (2, 10, 10, False)]
    obj.set_clicks(c)
    assert obj.clicks == [(z, float(y), float(x), p) for z, y, x, p in c]
    obj.undo()  # the last click made: slice 2's negative click
    assert obj.clicks == [(2, 20.0, 20.0, True), (0, 24.0, 24.0, True)]


def test_constant_and_nan_images(fast_model, caplog):
    with caplog.at_level(logging.WARNING):
        s = Session(np.full((32, 32), 7.0, np.float32), fast_model)
        mask = s.new_object().add_click(10, 10)
    assert mask.shape == (32, 32) and not mask.any() and "blank" in caplog.text
    s = Session(np.full((2, 32, 32), np.nan, np.float32), fast_model)
    assert not s.new_object().add_click(3, 3, z=1).any()
    img = blobs_stack(1, size=32)[0].astype(np.float32)
    img[:5] = np.nan  # partly missing data
    s = Session(img, fast_model)
    assert s.new_object().add_click(16, 16).shape == (32, 32)
    assert np.isfinite(s.store.get(0).features).all()


@pytest.mark.parametrize("data", [
    np.zeros((0, 16), np.float32),
    np.zeros((2, 3, 16, 16), np.float32),
    np.zeros((1, 2, 3, 16, 16), np.float32),
    np.zeros((64, 64, 5), np.uint8),
], ids=["empty", "4D", "5D", "5-channels"])
def test_session_rejects_bad_images(fast_model, data):
    with pytest.raises(ValueError):
        Session(data, fast_model)


@pytest.mark.parametrize("data", [
    np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8),
    np.random.default_rng(0).integers(0, 255, (24, 24, 4), dtype=np.uint8),
    np.random.default_rng(0).random((24, 24, 3)),
    np.random.default_rng(0).random((24, 24, 2)).astype(np.float32),
    np.random.default_rng(0).integers(0, 4000, (2, 24, 24, 3), dtype=np.uint16),
], ids=["rgb8", "rgba8", "rgb-float", "two-channel", "rgb-stack16"])
def test_colour_inputs(fast_model, data):
    s = Session(data, fast_model)
    z = s.volume.n_slices - 1
    assert s.new_object().add_click(12, 12, z=z).shape == (24, 24)


def test_dask_input(fast_model):
    da = pytest.importorskip("dask.array")
    data = blobs_stack(3)
    s = Session(da.from_array(data, chunks=(1, 48, 48)), fast_model)
    ref = Session(data, fast_model)
    np.testing.assert_array_equal(s.new_object().add_click(24, 24, z=1), ref.new_object().add_click(24, 24, z=1))


@pytest.mark.slow
def test_real_click_on_a_cells3d_nucleus(mobile_sam, shared_data):
    tifffile = pytest.importorskip("tifffile")
    img = shared_data / "micro" / "cells3d" / "cells3d_nuclei.tif"
    lab = shared_data / "micro" / "cells3d" / "cells3d_nuclei_label.tif"
    if not img.is_file():
        pytest.skip("cells3d not present")
    stack, labels = tifffile.imread(img), tifffile.imread(lab)
    z = 35
    s = Session(stack[z], mobile_sam)  # one slice as a 2D image
    from scipy import ndimage as ndi

    ious = []
    for i in (1, 5, 9):
        gt = labels[z] == i
        dist = ndi.distance_transform_edt(gt)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        m = s.new_object().add_click(y, x)
        ious.append((m & gt).sum() / (m | gt).sum())
    assert np.mean(ious) > 0.8, ious
    # float16 embeddings (the store's default) give the same masks as float32
    f32 = EmbeddingStore(s.predictor, s.volume, feature_dtype="float32").get(0)
    f16 = s.store.get(0)
    for y, x in [(60, 60), (128, 128), (200, 90)]:
        a = s.predictor.step(f32, [Click(y, x, True)]).mask
        b = s.predictor.step(f16, [Click(y, x, True)]).mask
        assert (a != b).sum() <= 0.001 * a.size
