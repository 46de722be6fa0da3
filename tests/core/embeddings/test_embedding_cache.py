"""Images as volumes, slice signatures, the memory LRU and the signed on-disk embedding cache."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.embeddings._disk import CACHE_FORMAT_VERSION, DiskCache
from napari_focsam.core.embeddings import EmbeddingStore, model_id
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.prompting import FocSAMPredictor  # noqa: E402

SLICE_F16 = 256 * 64 * 64 * 2


@pytest.fixture
def fast_predictor():
    return FocSAMPredictor(make_fast_focsam())


def calls(predictor) -> int:
    return predictor.model.image_encoder.calls


# --------------------------------------------------------------------------- model identity


def test_model_id_tracks_encoder_weights_and_channel_order():
    model = make_fast_focsam(seed=0)
    a = model_id(FocSAMPredictor(model))
    assert a == model_id(FocSAMPredictor(model)) and len(a) == 40
    assert model_id(FocSAMPredictor(make_fast_focsam(seed=0))) == a
    assert model_id(FocSAMPredictor(make_fast_focsam(seed=1))) != a
    assert model_id(FocSAMPredictor(model, channel_order="bgr")) != a
    other = make_fast_focsam(seed=0)
    with torch.no_grad():
        other.mask_decoder.iou_token.weight.add_(1.0)  # decoder changes do not matter
    assert model_id(FocSAMPredictor(other)) == a
    other = make_fast_focsam(seed=0)
    with torch.no_grad():
        other.image_encoder.proj.bias[5] += 1e-3
    assert model_id(FocSAMPredictor(other)) != a


def _with_refiner(model):
    from napari_focsam.modeling.focus_refiner import FocusRefiner

    model.focus_refiner = FocusRefiner(depth=1, mlp_ratio=1.0).eval()
    return model


def test_models_sharing_an_encoder_share_embeddings():
    """vit_t and focsam_t (the same encoder plus a refiner) have one model id and one cache."""
    plain = make_fast_focsam(seed=0, model_type="vit_t")
    focsam = _with_refiner(make_fast_focsam(seed=0, model_type="focsam_vit_t"))
    assert model_id(FocSAMPredictor(plain)) == model_id(FocSAMPredictor(focsam))
    assert model_id(FocSAMPredictor(make_fast_focsam(seed=0, model_type="vit_b"))) != model_id(FocSAMPredictor(plain))


def test_adopt_takes_over_memory_only_for_the_same_image_and_encoder():
    stack = blobs_stack(3)
    a = FocSAMPredictor(make_fast_focsam(seed=0, model_type="vit_t"))
    b = FocSAMPredictor(_with_refiner(make_fast_focsam(seed=0, model_type="focsam_vit_t")))
    old = EmbeddingStore(a, ImageVolume(stack))
    old.get(0), old.get(2)
    new = EmbeddingStore(b, ImageVolume(stack.copy()))
    assert new.adopt(old) == 2
    before = calls(b)
    new.get(0), new.get(2)
    assert calls(b) == before  # nothing re-encoded
    assert new.get(1) is not None and calls(b) == before + 1
    other_image = EmbeddingStore(b, ImageVolume(blobs_stack(3, seed=1)))
    assert other_image.adopt(old) == 0
    other_encoder = EmbeddingStore(FocSAMPredictor(make_fast_focsam(seed=1)), ImageVolume(stack))
    assert other_encoder.adopt(old) == 0


# --------------------------------------------------------------------------- memory


def test_memory_lru_is_bounded_in_bytes(fast_predictor):
    vol = ImageVolume(blobs_stack(5))
    store = EmbeddingStore(fast_predictor, vol, max_memory_bytes=int(2.5 * SLICE_F16) + 4 * 2**20)
    for z in range(4):
        emb = store.get(z)
        assert emb.features.shape == (1, 256, 64, 64) and emb.features.dtype == torch.float32
        assert emb.z == z and emb.original_size == (48, 48) and emb.input_size == (1024, 1024)
    assert store.in_memory() == [2, 3] and store.memory_bytes <= store.max_memory_bytes
    n = calls(fast_predictor)
    store.get(2)
    store.get(3)
    assert calls(fast_predictor) == n  # served from memory
    store.get(0)
    assert calls(fast_predictor) == n + 1 and store.in_memory() == [3, 0]  # 2 was least recently used
    assert store.has(3) and not store.has(1)
    zero = EmbeddingStore(fast_predictor, vol, max_memory_bytes=0)
    zero.get(1)
    assert zero.memory_bytes == 0 and zero.in_memory() == []


def test_float16_features_match_float32(fast_predictor):
    vol = ImageVolume(blobs_stack(3))
    f16 = EmbeddingStore(fast_predictor, vol).get(1).features
    f32 = EmbeddingStore(fast_predictor, vol, feature_dtype="float32").get(1).features
    assert torch.allclose(f16, f32, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="float16 or float32"):
        EmbeddingStore(fast_predictor, vol, feature_dtype="int8")



@pytest.mark.parametrize("feature_dtype", ["float16", "float32"])
def test_features_come_channels_last_and_decode_as_token_views(fast_predictor, tmp_path, feature_dtype):
    """The store hands out features with the channels last in memory (computed or read from
    disk), so the decoder's (h w, C) image tokens are a view of them, and the decoder and the
    refiner answer exactly as on the same values in the (N, C, H, W) layout."""
    vol = ImageVolume(blobs_stack(3))
    computed = EmbeddingStore(fast_predictor, vol, feature_dtype=feature_dtype, cache_dir=tmp_path).get(1).features
    read = EmbeddingStore(fast_predictor, vol, feature_dtype=feature_dtype, cache_dir=tmp_path)
    assert read.has(1)
    feats = read.get(1).features
    assert read.stats["disk_hits"] == 1
    for f in (computed, feats):
        assert f.shape == (1, 256, 64, 64) and f.dtype == torch.float32
        assert f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
    torch.testing.assert_close(feats, computed, rtol=0, atol=0)
    from napari_focsam.core.models import load_model

    model = load_model("focsam_t_micro", "cpu")  # the shipped weights, with the CPU's refine precision
    decoder, pe = model.mask_decoder, model.prompt_encoder
    with torch.inference_mode():
        image_tokens, _ = decoder.transformer.image_tokens(feats, pe.get_dense_pe())
        assert image_tokens.data_ptr() == feats.data_ptr()  # no copy
        plain = feats.contiguous()
        sparse = pe.embed_points(torch.tensor([[[500.0, 520.0]]]), torch.tensor([[1]]))
        dense = pe(None, None)[1]
        a = decoder(feats, pe.get_dense_pe(), sparse, dense, True)
        b = decoder(plain, pe.get_dense_pe(), sparse, dense, True)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.iou, b.iou)
        # the refiner's 1x1 convolution can round differently on channels-last input: it gets (N, C, H, W)
        seen = []
        hook = model.focus_refiner.embed_proj.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous()))
        try:
            refined = model.focus_refiner(feats, a.logits[:, :1] + 4.0, a.token)
            assert torch.equal(refined, model.focus_refiner(plain, b.logits[:, :1] + 4.0, b.token))
        finally:
            hook.remove()
        assert seen == [True, True]
        assert refined.is_contiguous(memory_format=torch.channels_last)

# --------------------------------------------------------------------------- disk cache


def test_precompute_fills_disk_and_new_store_reuses_it(fast_predictor, tmp_path):
    vol = ImageVolume(blobs_stack(4))
    store = EmbeddingStore(fast_predictor, vol, cache_dir=tmp_path)
    seen = []
    assert store.precompute(progress=lambda d, t: seen.append((d, t))) == 4
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert store.in_memory() == []  # precompute goes to disk, not through the memory LRU
    path = store.cache_path
    assert path.parent == tmp_path and path.name.startswith("fast_test-") and path.suffix == ".zarr"
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    assert attrs["napari_focsam_embeddings"] == CACHE_FORMAT_VERSION
    assert attrs["model_id"] == store.model_id and attrs["image_shape"] == [4, 48, 48]
    assert attrs["contrast_limits"] == list(vol.contrast_limits)
    assert group["features"].dtype == np.float16 and tuple(group["features"].chunks) == (1, 256, 64, 64)
    assert np.asarray(group["done"][:]).tolist() == [1, 1, 1, 1]

    n = calls(fast_predictor)
    again = EmbeddingStore(fast_predictor, ImageVolume(blobs_stack(4)), cache_dir=tmp_path)
    assert again.has(2) and again.precompute() == 0 and again.last_precompute["reused"] == 4
    emb = again.get(2)
    assert calls(fast_predictor) == n and again.stats["disk_hits"] == 1
    torch.testing.assert_close(emb.features, store.get(2).features)


def test_interrupted_precompute_resumes(fast_predictor, tmp_path):
    vol = ImageVolume(blobs_stack(6))
    store = EmbeddingStore(fast_predictor, vol, cache_dir=tmp_path)
    done = []
    assert store.precompute(progress=lambda d, t: done.append(d), cancelled=lambda: len(done) >= 2) == 2
    assert store.last_precompute["cancelled"]
    # a crash after writing slice 4's features but before its done marker: not trusted
    store._disk._features[4] = np.ones((256, 64, 64), np.float16)
    resumed = EmbeddingStore(fast_predictor, vol, cache_dir=tmp_path)
    n = calls(fast_predictor)
    assert resumed.precompute() == 4  # slices 2..5, slice 4 included
    assert calls(fast_predictor) == n + 4
    assert not np.all(np.asarray(resumed._disk._features[4]) == 1)


def _store(pred, data, path, **kw):
    return EmbeddingStore(pred, ImageVolume(data, **kw), cache_dir=path)


@pytest.mark.parametrize("change", ["image", "model", "contrast"])
def test_cache_for_another_image_model_or_contrast_is_rebuilt(fast_predictor, tmp_path, caplog, change):
    path = tmp_path / "mine.zarr"  # one explicit store path, reused for everything
    data = blobs_stack(3)
    _store(fast_predictor, data, path).precompute()
    pred, kw = fast_predictor, {}
    if change == "image":
        data = blobs_stack(3, seed=1)
    elif change == "model":
        pred = FocSAMPredictor(make_fast_focsam(seed=3))
    else:
        kw = {"contrast_limits": (0, 5000)}
    with caplog.at_level(logging.WARNING):
        store = _store(pred, data, path, **kw)
        assert not store.has(0)
        assert store.precompute() == 3
    why = {"image": "another image", "model": "another model", "contrast": "other contrast limits"}[change]
    assert why in caplog.text and "rebuilding" in caplog.text
    assert _store(pred, data, path, **kw).precompute() == 0


def test_cache_folder_holds_one_store_per_image_and_model(fast_predictor, tmp_path):
    a = _store(fast_predictor, blobs_stack(3), tmp_path)
    b = _store(fast_predictor, blobs_stack(3, seed=1), tmp_path)
    c = _store(FocSAMPredictor(make_fast_focsam(seed=3)), blobs_stack(3), tmp_path)
    assert len({a.cache_path, b.cache_path, c.cache_path}) == 3
    assert all(s.precompute(slices=[0]) == 1 for s in (a, b, c))
    assert _store(fast_predictor, blobs_stack(3), tmp_path).has(0)


def test_changed_slice_is_recomputed_not_used(fast_predictor, tmp_path, caplog):
    data = blobs_stack(5)
    _store(fast_predictor, data, tmp_path).precompute()
    edited = data.copy()
    edited[1, 10, 10] += 1  # slice 1 is not one of the slices of the volume key
    store = _store(fast_predictor, edited, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert not store.has(1) and store.has(2)
        n = calls(fast_predictor)
        store.get(1)
    assert calls(fast_predictor) == n + 1
    assert "slice 1 was computed from different pixel data" in caplog.text
    assert _store(fast_predictor, edited, tmp_path).has(1)  # rewritten


def test_damaged_stores_are_rebuilt(fast_predictor, tmp_path, caplog):
    data = blobs_stack(3)
    path = tmp_path / "s.zarr"
    store = _store(fast_predictor, data, path)
    store.precompute()
    meta = path / "zarr.json" if (path / "zarr.json").exists() else path / ".zattrs"
    meta.write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        assert _store(fast_predictor, data, path).precompute() == 3
    assert "rebuilding" in caplog.text
    caplog.clear()
    import shutil

    shutil.rmtree(path / "done")
    with caplog.at_level(logging.WARNING):
        assert _store(fast_predictor, data, path).precompute() == 3
    assert "array 'done' is missing" in caplog.text


def test_nan_in_a_done_slice_is_recomputed(fast_predictor, tmp_path, caplog):
    data = blobs_stack(3)
    store = _store(fast_predictor, data, tmp_path)
    store.precompute()
    bad = np.zeros((256, 64, 64), np.float16)
    bad[0, 0, 0] = np.nan
    store._disk._features[1] = bad
    fresh = _store(fast_predictor, data, tmp_path)
    n = calls(fast_predictor)
    with caplog.at_level(logging.WARNING):
        emb = fresh.get(1)
    assert calls(fast_predictor) == n + 1 and torch.isfinite(emb.features).all()
    assert "invalid values" in caplog.text


def test_foreign_folder_at_store_path_is_refused_untouched(fast_predictor, tmp_path, caplog):
    # a user's own folder given as the cache is refused, never moved or deleted
    path = tmp_path / "data.zarr"
    path.mkdir()
    (path / "precious.txt").write_text("user data")
    with caplog.at_level(logging.WARNING):
        store = _store(fast_predictor, blobs_stack(2), path)
        store.precompute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]
    assert sorted(p.name for p in path.iterdir()) == ["precious.txt"]
    assert (path / "precious.txt").read_text() == "user data"
    assert store.cache_path is None and not store.disk_writable
    assert "not a napari-focsam embedding cache: refusing" in store.disk_error


def _make_read_only(path: Path):
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)


def test_read_only_cache_folder_warns_once_and_stays_in_memory(fast_predictor, tmp_path, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    _make_read_only(ro)
    try:
        with caplog.at_level(logging.WARNING):
            store = _store(fast_predictor, blobs_stack(3), ro)
            assert store.precompute() == 3
            store.get(0)
            store.get(1)
        assert not store.disk_writable and store.cache_path is None
        assert "read-only" in store.disk_error
        assert caplog.text.count("embedding cache:") == 1
        assert list(ro.iterdir()) == []
        assert store.in_memory() == [2, 0, 1]
    finally:
        ro.chmod(stat.S_IRWXU)


def test_read_only_folder_with_a_valid_store_is_read(fast_predictor, tmp_path):
    data = blobs_stack(3)
    _store(fast_predictor, data, tmp_path / "c").precompute(slices=[0, 1])
    _make_read_only(tmp_path / "c")
    try:
        store = _store(fast_predictor, data, tmp_path / "c")
        n = calls(fast_predictor)
        store.get(0)
        assert calls(fast_predictor) == n and store.cache_path is not None and not store.disk_writable
        store.get(2)  # not on disk: computed, kept in memory
        assert calls(fast_predictor) == n + 1
    finally:
        (tmp_path / "c").chmod(stat.S_IRWXU)


def test_full_disk_warns_once_and_continues_in_memory(fast_predictor, tmp_path, caplog, monkeypatch):
    attempts = []

    def full(self, *args):
        attempts.append(args[0])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(DiskCache, "_write_arrays", full)
    store = _store(fast_predictor, blobs_stack(4), tmp_path)
    with caplog.at_level(logging.WARNING):
        for z in range(4):
            assert store.get(z).features.shape == (1, 256, 64, 64)
    assert attempts == [0]  # no more writes after the first failure
    assert not store.disk_writable and "No space left" in store.disk_error
    assert caplog.text.count("embedding cache:") == 1
    assert store.in_memory() == [0, 1, 2, 3]


def test_concurrent_gets_encode_a_slice_once(fast_predictor, tmp_path):
    fast_predictor.model.image_encoder.delay = 0.2
    store = _store(fast_predictor, blobs_stack(4), tmp_path)
    store.cache_path  # open the store before the race
    results, errors = [], []

    def worker():
        try:
            results.append(store.get(2))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and calls(fast_predictor) == 1


def test_get_while_precompute_runs_in_another_thread(fast_predictor, tmp_path):
    fast_predictor.model.image_encoder.delay = 0.05
    store = _store(fast_predictor, blobs_stack(6), tmp_path)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("n", store.precompute()))
    t.start()
    embs = [store.get(z) for z in (5, 3, 0)]
    t.join()
    assert all(e.features.shape == (1, 256, 64, 64) for e in embs)
    assert calls(fast_predictor) == 6  # every slice encoded exactly once
    assert out["n"] + store.stats["computed"] - out["n"] == 6 or store.stats["computed"] == 6
    assert json.dumps(store.last_precompute)  # plain numbers


def test_precompute_can_keep_slices_in_memory_within_its_bound(fast_predictor, tmp_path):
    """``memorize``: computed slices and slices already on disk go to the memory LRU as well,
    which stays bounded; without it precompute leaves memory alone."""
    vol = ImageVolume(blobs_stack(5))
    first = EmbeddingStore(fast_predictor, vol, cache_dir=tmp_path)
    assert first.precompute([0, 1, 2], memorize=True) == 3
    assert sorted(first.in_memory()) == [0, 1, 2] and all(first.has(z) for z in (0, 1, 2))
    n = calls(fast_predictor)
    assert first.get(1) is not None and first.stats["disk_hits"] == 0 and calls(fast_predictor) == n

    again = EmbeddingStore(fast_predictor, ImageVolume(blobs_stack(5)), cache_dir=tmp_path)
    assert again.precompute() == 2 and again.in_memory() == []  # the default: disk only
    small = EmbeddingStore(fast_predictor, ImageVolume(blobs_stack(5)), cache_dir=tmp_path,
                           max_memory_bytes=2 * SLICE_F16)
    assert small.precompute(memorize=True) == 0  # all on disk: read into memory, two at most
    assert small.in_memory() == [3, 4] and small.stats["disk_hits"] == 5
    assert calls(fast_predictor) == n + 2


def test_memorizing_precompute_writes_slices_computed_before_the_cache(fast_predictor, tmp_path):
    """A slice computed in memory before the store had a disk cache is written to it by
    ``precompute(memorize=True)``, as by a plain precompute."""
    memory_only = EmbeddingStore(fast_predictor, ImageVolume(blobs_stack(3)))
    memory_only.get(1)
    store = EmbeddingStore(fast_predictor, ImageVolume(blobs_stack(3)), cache_dir=tmp_path)
    assert store.adopt(memory_only) == 1  # e.g. a session reopened with a cache folder
    n = calls(fast_predictor)
    assert store.precompute(memorize=True) == 2 and calls(fast_predictor) == n + 2
    again = EmbeddingStore(fast_predictor, ImageVolume(blobs_stack(3)), cache_dir=tmp_path)
    assert all(again.has(z) for z in range(3))
