"""Sessions and objects: clicks, undo/reset, set_clicks diffs, several objects, bad input."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.prompting import Click, CropEmbeddings, FocSAMPredictor  # noqa: E402
from napari_focsam.core.embeddings import EmbeddingStore
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.propagation import PropagationResult
from napari_focsam.core.session._objects import SegmentedObject
from napari_focsam.core.session import Session


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
    r1 = obj.history(0).refined
    assert r1 is not None  # the focus refiner ran at the 1st click
    obj.add_click(10, 30, positive=False)
    assert obj.history(0).refined is r1  # ... once: later clicks share its embedding
    np.testing.assert_array_equal(obj.undo(), m1)
    torch.testing.assert_close(obj.logits(0), l1)
    assert obj.history(0).refined is r1
    obj.undo()
    assert obj.history(0) is None and not obj.mask(0).any()  # no click left on the slice
    np.testing.assert_array_equal(obj.add_click(20, 20), m1)
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


# --------------------------------------------------------------------------- one click history


def test_a_slice_history_is_the_predictors_interactive_object(refiner_model):
    from napari_focsam.core.prompting import InteractiveObject

    s = Session(blobs_stack(2, size=40), refiner_model)
    obj = s.new_object()
    obj.set_clicks([(1, 20, 20, True), (1, 10, 30, False)])
    hist = obj.history(1)
    assert isinstance(hist, InteractiveObject) and obj.history(0) is None
    assert [c.coords for c in hist.clicks] == [(20.0, 20.0), (10.0, 30.0)]
    assert hist.refined is not None and hist.states[0].refined is hist.refined  # refined once, at the 1st click
    assert hist.states[1].refined is hist.refined  # ... and shared, not copied, by the later steps
    np.testing.assert_array_equal(obj.mask(1), hist.mask)
    torch.testing.assert_close(obj.logits(1), hist.logits)


def count_decodes(model, monkeypatch) -> list:
    calls = []
    original = model.decode
    monkeypatch.setattr(model, "decode", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    return calls


def test_only_negative_clicks_select_nothing_and_propagate_nothing(fast_model, monkeypatch):
    s = Session(blobs_stack(6), fast_model)
    obj = s.new_object()
    decodes = count_decodes(fast_model, monkeypatch)
    m = obj.add_click(24, 24, positive=False, z=3)  # on the ball: it must not be selected
    assert not m.any() and obj.logits(3) is None and decodes == []
    obj.add_click(10, 10, positive=False, z=3)
    assert not obj.mask(3).any() and decodes == []
    res = obj.propagate()
    assert res.masks == {} and not obj.volume_mask().any()
    m = obj.add_click(24, 24, positive=True, z=3)  # the first positive click starts the object
    assert len(decodes) == 1 and obj.logits(3) is not None
    np.testing.assert_array_equal(obj.undo(), np.zeros((48, 48), bool))


@pytest.mark.parametrize("refine_click", [1, 2])
def test_refiner_runs_at_its_click_counted_from_the_first_positive(refiner_model, monkeypatch, refine_click):
    """The default refines at the object's 1st click, FocSAM as published (``refine_click=2``)
    at the 2nd; a negative click before the first positive one does not count; once only."""
    from napari_focsam.core.prompting import InteractiveObject

    calls = []
    original = refiner_model.refine
    monkeypatch.setattr(refiner_model, "refine", lambda *a: (calls.append(1), original(*a))[1])
    pred = FocSAMPredictor(refiner_model, refine_click=refine_click)
    obj = InteractiveObject(pred, pred.embed(blobs_stack(1, size=40)[0]))
    obj.add_click(5, 5, False)
    assert calls == [] and obj.refined is None
    obj.add_click(20, 20, True)
    assert (calls == [1]) == (refine_click == 1) and (obj.refined is not None) == (refine_click == 1)
    obj.add_click(30, 8, False)
    obj.add_click(8, 30, False)
    assert calls == [1] and obj.refined is not None
    assert FocSAMPredictor(refiner_model).refine_click == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="refine_click must be a click number"):
            FocSAMPredictor(refiner_model, refine_click=bad)


@pytest.mark.parametrize("positive", ["false", "True", 1, 0, None, 1.0, np.array([True])])
def test_positive_must_be_a_bool(fast_model, positive):
    from napari_focsam.core.prompting import InteractiveObject

    s = Session(blobs_stack(1, size=32)[0], fast_model)
    obj = s.new_object()
    with pytest.raises(TypeError, match="positive must be True or False"):
        obj.add_click(16, 16, positive=positive)
    with pytest.raises(TypeError, match="positive must be True or False"):
        obj.set_clicks([(0, 16, 16, positive)])
    with pytest.raises(TypeError, match="positive must be True or False"):
        InteractiveObject(s.predictor, s.predictor.embed(s.volume.plane(0))).add_click(16, 16, positive)
    assert obj.clicks == [] and s.store.stats["computed"] == 0
    assert not obj.add_click(16, 16, positive=np.bool_(False)).any()  # numpy bools are bools


def test_z_is_required_on_a_stack_and_must_be_an_integer(fast_model):
    s = Session(blobs_stack(3, size=32), fast_model)
    obj = s.new_object()
    for call in (lambda: obj.add_click(16, 16), lambda: obj.add_click(16, 16, True, None),
                 lambda: obj.mask(), lambda: obj.logits(), lambda: obj.set_clicks([(None, 16, 16, True)])):
        with pytest.raises(ValueError, match=r"the stack has 3 slices \(0\.\.2\): pass the slice z"):
            call()
    for z in (True, "1", b"1"):
        with pytest.raises(TypeError, match="must be an integer"):
            obj.add_click(16, 16, z=z)
    with pytest.raises(ValueError, match="slice 1.5 is out of range"):
        obj.add_click(16, 16, z=1.5)
    for bad in (5, "z,y,x,p", (1, 16, 16)):
        with pytest.raises(ValueError, match=r"a click is \(z, y, x, positive\)"):
            obj.set_clicks([bad])
    assert obj.clicks == [] and s.store.stats["computed"] == 0
    obj.add_click(16, 16, z=np.int64(2))
    assert obj.clicks == [(2, 16.0, 16.0, True)] and obj.undo().shape == (32, 32)
    flat = Session(blobs_stack(1, size=32)[0], fast_model).new_object()  # 2D: z may be left out
    assert flat.add_click(16, 16).shape == (32, 32) and flat.mask().shape == (32, 32)


@pytest.mark.parametrize("y, x", [("3", 3), (3, b"3"), (True, 3), (None, 3), ([3], 3), (float("nan"), 3),
                                  (3, float("-inf")), (1e300, 3), (-0.6, 3), (3, 32.5)])
def test_bad_coordinates_are_refused_everywhere(fast_model, y, x):
    from napari_focsam.core.prompting import InteractiveObject

    s = Session(blobs_stack(1, size=32)[0], fast_model)
    hist = InteractiveObject(s.predictor, s.predictor.embed(s.volume.plane(0)))
    for call in (lambda: s.new_object().add_click(y, x), lambda: s.new_object().set_clicks([(0, y, x, True)]),
                 lambda: hist.add_click(y, x)):
        with pytest.raises(ValueError, match="must be numbers|outside the image of 32x32 pixels"):
            call()


def reachable_array_bytes(root, skip, shared=()) -> tuple[int, list]:
    """Bytes of the distinct numpy buffers and torch storages reachable from ``root`` through
    attributes, containers, dataclasses and closures, not entering the objects in ``skip`` nor
    instances of the ``shared`` types."""
    import dataclasses
    import types

    seen, arrays, todo = {id(o) for o in skip}, {}, [root]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, (str, bytes, int, float, bool, type(None), type) + tuple(shared)):
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            arrays[("t", st.data_ptr())] = (st.nbytes(), tuple(o.shape))
        elif isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            arrays[("a", base.__array_interface__["data"][0])] = (base.nbytes, o.shape)
        elif isinstance(o, dict):
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            todo.extend(o)
        elif isinstance(o, types.FunctionType):
            todo.extend(c.cell_contents for c in (o.__closure__ or ()))
            todo.extend(o.__defaults__ or ())
        elif dataclasses.is_dataclass(o) or hasattr(o, "__dict__"):
            todo.extend(vars(o).values())
    return sum(n for n, _ in arrays.values()), sorted((s for _, s in arrays.values()), key=str)


def test_history_memory_does_not_grow_with_the_image_size(refiner_model):
    """30 clicks hold their 256x256 logits, one refined embedding and one current mask: the
    history stayed at ~16 MiB per click on a 4096x4096 image before (a mask per click)."""
    held = {}
    for size in (256, 2048):
        img = np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)
        s = Session(img, refiner_model, tiles=False)  # the plain history (a 2048 image is tiled by default)
        obj = s.new_object()
        rng = np.random.default_rng(1)
        for i in range(30):
            obj.add_click(*rng.uniform(0, size - 1, 2), positive=i == 0 or bool(rng.integers(0, 2)))
        # the session's own: its embeddings, and the zoomed crops its slices share between objects
        total, shapes = reachable_array_bytes(obj, skip=[s, s.store, s.predictor, s.volume], shared=(CropEmbeddings,))
        mask_bytes = size * size  # the one full-resolution mask: the current step's
        held[size] = total - mask_bytes
        assert [sh for sh in shapes if sh == (size, size)] == [(size, size)], shapes
        assert obj.nbytes() == total
    per_click_logits = 256 * 256 * 4
    refined = 256 * 64 * 64 * 4
    assert held[256] == held[2048] <= 30 * per_click_logits + refined
    obj.undo()
    assert obj.nbytes() <= 29 * per_click_logits + refined + 2048 * 2048  # the mask is recomputed, once


def test_undo_recomputes_the_exact_mask_from_the_logits(refiner_model):
    s = Session(np.random.default_rng(0).integers(0, 255, (300, 500), dtype=np.uint8), refiner_model)
    obj = s.new_object()
    masks = [obj.add_click(150, 250).copy(), obj.add_click(20, 30, positive=False).copy(),
             obj.add_click(200, 400).copy()]
    np.testing.assert_array_equal(obj.undo(), masks[1])
    np.testing.assert_array_equal(obj.undo(), masks[0])
    assert not obj.mask().flags.writeable


def test_memory_is_given_back_when_much_is_freed(fast_model, monkeypatch):
    from napari_focsam.core.session import _objects as objects_module, _session as session_module

    calls = []
    for module in (session_module, objects_module):  # SegmentedObject lives in core/objects.py
        monkeypatch.setattr(module, "release_memory", lambda: calls.append(1))
    s = Session(blobs_stack(2), fast_model)
    a, b = s.new_object(), s.new_object()
    a.add_click(24, 24, z=0)
    a.reset()
    assert calls == [1]
    many = [(1, 24, 24, True)] + [(1, 10 + i, 10, False) for i in range(20)]
    b.set_clicks(many)
    b.set_clicks(many[:-1])  # dropping one click: not worth a trim
    assert calls == [1]
    b.set_clicks(many[:2])  # dropping 18 clicks at once
    assert calls == [1, 1]
    s.remove_object(a)
    assert calls == [1, 1, 1] and a.clicks == []
    with s:
        pass
    assert calls == [1, 1, 1, 1] and s.objects == [] and b.clicks == [] and s.store.in_memory() == []


def test_release_memory_returns_freed_heap_pages_to_the_system():
    """glibc keeps freed blocks below the mmap threshold (raised by tune_malloc) in the heap;
    release_memory() (malloc_trim) gives them back: the process' resident size falls."""
    import subprocess

    if not sys.platform.startswith("linux"):
        pytest.skip("malloc_trim is glibc's")
    code = """
import numpy as np
from napari_focsam.core.models._allocator import release_memory, tune_malloc
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
if not tune_malloc():
    print('skip'); raise SystemExit
keep, tmp = [], []
for i in range(150):  # 150 MiB in 1 MiB blocks, each followed by a small block that stays
    a = np.ones(2**20, np.uint8); tmp.append(a); keep.append(np.ones(64, np.uint8))
del tmp
before = rss(); released = release_memory(); after = rss()
print(released, before - after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out == ["skip"]:
        pytest.skip("not glibc")
    assert out[0] == "True" and int(out[1]) > 100 * 2**20, out


# --------------------------------------------------------------------------- clicks after the refine


def scripted_decoder(model, embedding, monkeypatch, *, original_logit, refined_logit) -> list:
    """Make ``model.decode`` (and ``decode_pair``, pass by pass) give fixed logits: ``original_logit`` on the image's own embedding,
    ``refined_logit`` on any other (the refined one); a float fills the map, a (256, 256)
    tensor is used as it is. Records which embedding it served."""
    served = []
    decode = model.decode

    def fake(features, points, labels, mask_input=None, multimask_output=False):
        out = decode(features, points, labels, mask_input, multimask_output)
        own = features is embedding.features
        served.append("original" if own else "refined")
        value = original_logit if own else refined_logit
        if isinstance(value, torch.Tensor):
            return out._replace(logits=value.expand_as(out.logits).clone())
        return out._replace(logits=torch.full_like(out.logits, value))

    def fake_pair(first, second, points, labels, mask_input=None):
        return (fake(first, points, labels, mask_input), fake(second, points, labels, mask_input))

    monkeypatch.setattr(model, "decode", fake)
    monkeypatch.setattr(model, "decode_pair", fake_pair)
    return served


@pytest.mark.parametrize("policy", ["steady", "pick", "reuse"])
def test_later_clicks_keep_the_prediction_that_agrees_with_more_clicks(refiner_model, monkeypatch, policy):
    """From the 3rd click on, "steady" and "pick" decode on both embeddings and keep the mask
    that agrees with more clicks; "reuse" (the published loop) keeps the refined embedding's."""
    from napari_focsam.core.prompting import InteractiveObject, click_agreement

    pred = FocSAMPredictor(refiner_model, later_clicks=policy, refine_click=2)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    served = scripted_decoder(refiner_model, emb, monkeypatch, original_logit=5.0, refined_logit=-5.0)
    obj = InteractiveObject(pred, emb)
    assert obj.add_click(20, 20, True).all()  # click 1: the original embedding (everything)
    assert not obj.add_click(10, 10, True).any()  # click 2: the refined one (nothing)
    assert served == ["original", "original", "refined"]  # coarse pass, refine, final pass
    mask = obj.add_click(30, 30, True)
    if policy in ("steady", "pick"):
        assert mask.all() and click_agreement(mask, obj.clicks) == 3
        assert sorted(served[3:]) == ["original", "refined"]
        assert obj.refined is not None  # the refined embedding stays for the next clicks
    else:
        assert not mask.any() and served[3:] == ["refined"]


@pytest.mark.parametrize("hole_rows, switch", [(32, False), (160, True)])
def test_later_clicks_switch_only_to_a_substantially_different_mask(refiner_model, monkeypatch, hole_rows, switch):
    """The refined mask misses a negative click that the original one honours: the original
    mask is taken only when the two differ by more than a boundary strip (IoU < 0.8)."""
    from napari_focsam.core.prompting import InteractiveObject, mask_iou
    from napari_focsam.core.prompting import PICK_BELOW_IOU

    pred = FocSAMPredictor(refiner_model, later_clicks="pick", refine_click=2)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    holed = torch.full((256, 256), 5.0)
    holed[:hole_rows, :32] = -5.0  # a hole in the top-left corner, 32 / 160 rows of the logits
    holed[:hole_rows, 32:] = -5.0 if switch else 5.0
    scripted_decoder(refiner_model, emb, monkeypatch, original_logit=holed, refined_logit=5.0)
    obj = InteractiveObject(pred, emb)
    obj.add_click(30, 30, True)
    obj.add_click(35, 20, True)
    refined_mask = obj.mask.copy()
    assert refined_mask.all()
    mask = obj.add_click(2, 2, False)  # inside the hole
    original_mask = logits_to_mask_of(holed, emb)
    assert (mask_iou(original_mask, refined_mask) < PICK_BELOW_IOU) == switch
    np.testing.assert_array_equal(mask, original_mask if switch else refined_mask)


def test_steady_later_clicks_keep_the_candidate_that_changes_the_previous_mask_least(refiner_model, monkeypatch):
    """Both embeddings' masks honour every click: "steady" keeps the one closer to the mask
    shown before the click (here the refined one, with its hole), decoding both every time."""
    from napari_focsam.core.prompting import InteractiveObject, mask_iou

    assert FocSAMPredictor(refiner_model).later_clicks == "steady"  # the default
    pred = FocSAMPredictor(refiner_model, refine_click=2)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    holed = torch.full((256, 256), 5.0)
    holed[:96, :96] = -5.0  # a hole in the top-left corner (15 x 15 pixels of the 40 x 40 image)
    served = scripted_decoder(refiner_model, emb, monkeypatch, original_logit=5.0, refined_logit=holed)
    obj = InteractiveObject(pred, emb)
    obj.add_click(30, 30, True)
    before = obj.add_click(35, 20, True).copy()  # the refine click: the holed mask
    assert not before[:10, :10].any() and before[30:, 30:].all()
    for k, (y, x) in enumerate([(25, 35), (38, 5), (20, 25)]):
        mask = obj.add_click(y, x, True)
        np.testing.assert_array_equal(mask, before)  # the full original mask would redraw the corner
        assert sorted(served[3 + 2 * k:5 + 2 * k]) == ["original", "refined"]
    assert mask_iou(mask, np.ones_like(mask)) < 1.0
    # a positive click in the hole: the refined mask and the mean (zero there) miss it, the
    # original full mask agrees with every click and is kept although it changes more
    assert obj.add_click(3, 3, True).all()


def test_steadiest_candidate_ranks_clicks_agreed_then_closeness_then_order():
    from napari_focsam.core.prompting import steadiest_candidate

    small, big, other = (np.zeros((20, 20), bool) for _ in range(3))
    small[5:10, 5:10] = True
    big[2:15, 2:15] = True
    other[12:18, 12:18] = True
    pos = [Click(6, 6, True)]
    assert steadiest_candidate([other, small, big], pos, small) == 1  # agreement first
    assert steadiest_candidate([big, small], pos, small) == 1  # then closest to the previous mask
    assert steadiest_candidate([big, small], pos, big) == 0
    assert steadiest_candidate([small, small.copy()], pos, big) == 0  # then the first
    assert steadiest_candidate([big, small], pos, None) == 0  # no previous mask: order
    assert steadiest_candidate([small, big], pos + [Click(12, 12, True)], small) == 1
    with pytest.raises(ValueError, match="candidate"):
        steadiest_candidate([], pos, small)


def test_steadiest_candidate_puts_a_mask_against_the_newest_click_last():
    """A positive click that makes a candidate lose most of the previous mask (a collapse), or
    a negative one that makes it grow by more than the tolerance (a leak), goes against the
    click: such a candidate is kept only when every candidate does, even when it agrees with
    more clicks (an empty mask honours every negative click)."""
    from napari_focsam.core.prompting import follows_click, steadiest_candidate
    from napari_focsam.core.prompting._click_rules import INTENT_TOLERANCE

    full, empty, part = np.ones((20, 20), bool), np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    part[:, :15] = True  # 75 % of the full mask
    clicks = [Click(1, 1, False), Click(2, 2, False), Click(10, 10, True), Click(5, 18, True)]
    assert follows_click(part, full, clicks[-1]) and not follows_click(empty, full, clicks[-1])
    assert steadiest_candidate([empty, full], clicks[:3], full) == 1  # empty agrees with 2, full with 1
    assert steadiest_candidate([empty, empty.copy()], clicks, full) == 0  # all against it: as before
    grown = np.zeros((20, 20), bool)
    grown[:, :10] = True
    neg = Click(15, 15, False)
    assert not follows_click(full, grown, neg) and follows_click(grown, grown, neg)
    assert steadiest_candidate([full, part], [Click(5, 2, True), neg], grown) == 1
    assert follows_click(full, empty, neg)  # nothing shown before: anything goes
    assert 0 < INTENT_TOLERANCE < 1


def test_default_refines_at_the_first_click_and_steadies_the_later_ones(refiner_model, monkeypatch):
    """The default: the 1st click is decoded on the original embedding (coarse pass), refined,
    and decoded again on the refined embedding, which is shown; each later click decodes on
    both, and a refined mask that collapses after a positive click is not shown."""
    from napari_focsam.core.prompting import InteractiveObject

    pred = FocSAMPredictor(refiner_model)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    part = torch.full((256, 256), -5.0)
    part[:, :200] = 5.0
    served = scripted_decoder(refiner_model, emb, monkeypatch, original_logit=part, refined_logit=5.0)
    obj = InteractiveObject(pred, emb)
    res = obj.add(Click(20, 20, True))
    assert served == ["original", "refined"] and res.refine_seconds > 0 and res.mask.all()
    monkeypatch.setattr(refiner_model, "decode", refiner_model.decode)  # keep the scripted one
    served.clear()
    obj.add_click(5, 5, True)
    assert sorted(served) == ["original", "refined"] and obj.mask.all()
    collapsed = torch.full((256, 256), -5.0)
    collapsed[:8, :8] = 5.0  # the refined embedding loses the object but keeps the clicks
    served2 = scripted_decoder(refiner_model, emb, monkeypatch, original_logit=5.0, refined_logit=collapsed)
    mask = obj.add_click(1, 1, True)
    assert mask.all() and sorted(served2) == ["original", "refined"]


def logits_to_mask_of(logits: torch.Tensor, emb) -> np.ndarray:
    from napari_focsam.core.prompting import logits_to_mask

    return logits_to_mask(logits[None, None], emb.input_size, emb.original_size)


def test_later_clicks_prefer_the_refined_embedding_on_a_tie(refiner_model, monkeypatch):
    from napari_focsam.core.prompting import InteractiveObject

    pred = FocSAMPredictor(refiner_model, later_clicks="pick", refine_click=2)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    served = scripted_decoder(refiner_model, emb, monkeypatch, original_logit=9.0, refined_logit=3.0)
    obj = InteractiveObject(pred, emb)
    for y, x in [(20, 20), (10, 10), (30, 30)]:
        obj.add_click(y, x, True)
    assert obj.mask.all() and float(obj.logits.max()) == 3.0  # the refined mask agrees with every click
    assert served[3:] == ["refined"]  # ... so the original embedding is not decoded at all


def test_click_agreement_counts_positives_inside_and_negatives_outside():
    from napari_focsam.core.prompting import click_agreement

    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    clicks = [Click(3, 3, True), Click(8, 8, False), Click(8, 8, True), Click(4.4, 4.4, False)]
    assert click_agreement(mask, clicks) == 2
    assert click_agreement(mask, []) == 0
    with pytest.raises(ValueError, match="later_clicks"):
        FocSAMPredictor(make_fast_focsam(), later_clicks="sometimes")


def test_later_clicks_rank_the_newest_click_first(refiner_model, monkeypatch):
    """A refined mask that lost the object (empty) agrees with the older negative clicks but not
    with the newest, positive one: the original embedding's mask, which does, is taken."""
    from napari_focsam.core.prompting import InteractiveObject, click_agreement

    pred = FocSAMPredictor(refiner_model, later_clicks="pick", refine_click=2)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    scripted_decoder(refiner_model, emb, monkeypatch, original_logit=5.0, refined_logit=-5.0)
    obj = InteractiveObject(pred, emb)
    obj.add_click(30, 30, True)
    obj.add_click(35, 20, True)
    for y, x in [(5, 5), (6, 30), (10, 10), (3, 20)]:
        assert not obj.add_click(y, x, False).any()  # the empty refined mask honours the newest click
    mask = obj.add_click(20, 20, True)
    assert click_agreement(np.zeros_like(mask), obj.clicks) == 4 > click_agreement(mask, obj.clicks) == 3
    assert mask.all()  # fewer clicks agreed, but the newest one


def test_joins_clicked_pieces_sees_a_bridge_between_two_clicked_pieces():
    from napari_focsam.core.prompting._click_rules import joins_clicked_pieces

    coarse = np.zeros((20, 30), bool)
    coarse[2:8, 2:8] = coarse[12:18, 20:28] = True
    bridged = coarse.copy()
    bridged[7:13, 7:21] = True
    two, one = [Click(4, 4, True), Click(15, 24, True)], [Click(4, 4, True), Click(15, 24, False)]
    assert joins_clicked_pieces(coarse, bridged, two)
    assert not joins_clicked_pieces(coarse, coarse, two)  # still apart
    assert not joins_clicked_pieces(coarse, bridged, one)  # one positive click: nothing to keep apart
    assert not joins_clicked_pieces(bridged, bridged, two)  # one piece in the coarse mask already
    assert not joins_clicked_pieces(coarse, bridged, [Click(4, 4, True), Click(4, 5, True)])


def two_squares_and_bridge() -> tuple[torch.Tensor, torch.Tensor]:
    """(256, 256) logits: two separate squares, and one rectangle covering both (a bridge)."""
    apart = torch.full((256, 256), -5.0)
    apart[20:100, 20:100] = apart[150:230, 150:230] = 5.0
    bridge = torch.full((256, 256), -5.0)
    bridge[20:230, 20:230] = 5.0
    return apart, bridge


@pytest.mark.parametrize("gate", [True, False])
def test_refine_gate_keeps_the_coarse_mask_when_the_refine_bridges_two_clicked_cells(
        refiner_model, monkeypatch, gate):
    """Positive clicks on two separate cells; the refined mask joins them into one
    piece. The gate keeps the coarse mask (two pieces: the widget's 'one object is one cell'
    hint), keeps no refined embedding and tries the refine again at the next click: a negative
    click on the second cell takes its positive click back, and the refine is taken."""
    from napari_focsam.core.prompting import InteractiveObject

    pred = FocSAMPredictor(refiner_model, refine_gate=gate, refine_click=2)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    apart, bridge = two_squares_and_bridge()
    served = scripted_decoder(refiner_model, emb, monkeypatch, original_logit=apart, refined_logit=bridge)
    obj = InteractiveObject(pred, emb)
    obj.add_click(9, 9, True)
    mask = obj.add_click(29, 29, True)
    assert served == ["original", "original", "refined"]  # coarse pass, refine, final pass
    np.testing.assert_array_equal(mask, logits_to_mask_of(apart if gate else bridge, emb))
    assert (obj.refined is None) == gate
    obj.add_click(29, 29, False)
    # gate: coarse pass, refine, final pass again; no gate: pick decodes on both embeddings
    assert served[3:] == (["original", "refined"] if gate else ["refined", "original"])
    assert obj.refined is not None


def test_a_click_of_the_other_polarity_on_the_same_pixel_takes_the_earlier_one_back():
    from napari_focsam.core.prompting import live_clicks

    a, b, b_neg = Click(3, 3, True), Click(8, 8, True), Click(8.2, 7.9, False)
    assert live_clicks([a, b, b_neg], (20, 20)) == [a, b_neg]
    assert live_clicks([a, b, b_neg, Click(8, 8, True)], (20, 20)) == [a, Click(8, 8, True)]
    assert live_clicks([a, a, Click(8, 9, False)], (20, 20)) == [a, a, Click(8, 9, False)]  # same polarity, other pixel


def test_a_negative_click_on_a_positive_one_is_decoded_without_it(refiner_model, monkeypatch):
    """Positive clicks on cells A and B, then a negative one on B's click: the decoder
    gets A's positive and B's negative click only (no mask can honour both on B); a negative
    click on the only positive one leaves nothing selected."""
    from napari_focsam.core.prompting import InteractiveObject

    pred = FocSAMPredictor(refiner_model)
    emb = pred.embed(blobs_stack(1, size=40)[0])
    labels = []
    decode = refiner_model.decode

    def spy(features, points, lab, mask_input=None, multimask_output=False):
        labels.append(lab[0].tolist())
        return decode(features, points, lab, mask_input, multimask_output)

    def spy_pair(first, second, points, lab, mask_input=None):  # a later click: both passes at once
        return spy(first, points, lab, mask_input), spy(second, points, lab, mask_input)

    monkeypatch.setattr(refiner_model, "decode", spy)
    monkeypatch.setattr(refiner_model, "decode_pair", spy_pair)
    obj = InteractiveObject(pred, emb)
    obj.add_click(9, 9, True)
    obj.add_click(29, 29, True)
    labels.clear()
    obj.add_click(29, 29, False)
    assert labels and all(lab == [1, 0] for lab in labels)
    alone = InteractiveObject(pred, emb)
    alone.add_click(9, 9, True)
    assert not alone.add_click(9, 9, False).any() and alone.logits is None
