"""Cache entries are signed with a per-user key kept outside the cache folder: an entry written,
copied or forged by anyone without the key is recomputed, never used."""

from __future__ import annotations

import hashlib
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.embeddings import _signing as signing  # noqa: E402
from napari_focsam.core.embeddings import EmbeddingStore  # noqa: E402
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.prompting import FocSAMPredictor  # noqa: E402

zarr = pytest.importorskip("zarr")


@pytest.fixture
def own_key(tmp_path, monkeypatch):
    path = tmp_path / "config" / "key"
    monkeypatch.setenv(signing.KEY_ENV, str(path))
    monkeypatch.setattr(signing, "_cached", {})
    return path


def _filled_store(tmp_path):
    vol = ImageVolume(blobs_stack(3))
    predictor = FocSAMPredictor(make_fast_focsam())
    store = EmbeddingStore(predictor, vol, cache_dir=tmp_path / "cache")
    store.precompute()
    (path,) = (tmp_path / "cache").glob("*.zarr")
    return vol, predictor, path


def _reopen(vol, predictor, tmp_path):
    store = EmbeddingStore(predictor, vol, cache_dir=tmp_path / "cache")
    return store, predictor.model.image_encoder.calls


def test_the_key_is_made_once_private_and_outside_the_cache(own_key, tmp_path):
    key = signing.signing_key()
    assert len(key) == 32 and own_key.read_bytes() == key
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    signing._cached.clear()
    assert signing.signing_key() == key  # read back, not made again
    assert not own_key.is_relative_to(tmp_path / "cache")


def test_an_entry_copied_from_another_slice_with_its_checksum_recomputed_is_refused(own_key, tmp_path, caplog):
    vol, predictor, path = _filled_store(tmp_path)
    g = zarr.open_group(str(path), mode="r+")
    feats, sigs, flags = g["features"], g["signatures"], g["checksums"]
    feats[0] = feats[2]  # slice 2's features under slice 0's signature
    # what a forger without the key can compute: a plain hash of the stored parts
    h = hashlib.sha1(np.ascontiguousarray(feats[0]).reshape(-1).view(np.uint8))
    h.update(bytes(np.asarray(sigs[0])))
    h.update(bytes([int(np.asarray(g["done"][0]))]))
    flags[0] = np.frombuffer(h.digest(), np.uint8)
    g["done"][1] = 2  # and a forged "blank" flag on slice 1
    store, before = _reopen(vol, predictor, tmp_path)
    store.get(0)
    store.get(1)
    store.get(2)
    assert predictor.model.image_encoder.calls - before == 2  # slices 0 and 1 recomputed, 2 reused
    assert "not written by this user" in caplog.text


def test_entries_signed_with_another_users_key_are_recomputed(own_key, tmp_path, monkeypatch):
    vol, predictor, _ = _filled_store(tmp_path)
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "someone-else" / "key"))
    store, before = _reopen(vol, predictor, tmp_path)
    for z in range(3):
        store.get(z)
    assert predictor.model.image_encoder.calls - before == 3


def test_a_key_file_that_is_not_a_key_is_one_error(own_key):
    own_key.parent.mkdir(parents=True)
    own_key.write_bytes(b"short")
    with pytest.raises(OSError, match="is not a key of this tool"):
        signing.signing_key()
