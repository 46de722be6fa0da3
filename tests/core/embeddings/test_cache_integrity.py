"""The disk cache under damage and contention: missing chunks, full disks, a user's
own .zarr, read-only complete caches, two precomputes into one store, stale claims."""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.embeddings import _disk as disk_cache  # noqa: E402
from napari_focsam.core.embeddings._claims import Claims  # noqa: E402
from napari_focsam.core.embeddings import CacheWriteError  # noqa: E402
from napari_focsam.core.embeddings._disk import DiskCache
from napari_focsam.core.embeddings import EmbeddingStore  # noqa: E402
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.prompting import FocSAMPredictor  # noqa: E402


@pytest.fixture
def pred():
    return FocSAMPredictor(make_fast_focsam())


def calls(predictor) -> int:
    return predictor.model.image_encoder.calls


def _store(pred, data, path, **kw):
    return EmbeddingStore(pred, ImageVolume(data), cache_dir=path, **kw)


def _remove_chunk(store_path: Path, array: str, z: int) -> None:
    folder = store_path / array
    v3 = folder / "c" / str(z)
    targets = [v3] if v3.exists() else [f for f in folder.iterdir() if f.name.split(".")[0] == str(z)]
    assert targets, f"no chunk of slice {z} in {folder}"
    for t in targets:
        shutil.rmtree(t) if t.is_dir() else t.unlink()


# --------------------------------------------------------------------------- missing chunks


@pytest.mark.parametrize("array", ["features", "checksums", "signatures"])
def test_deleted_chunk_of_a_done_slice_is_recomputed_not_read_as_zeros(pred, tmp_path, caplog, array):
    data = blobs_stack(3)
    first = _store(pred, data, tmp_path)
    first.precompute()
    reference = first.get(1).features.clone()
    _remove_chunk(first.cache_path, array, 1)

    fresh = _store(pred, data, tmp_path)
    assert not fresh.has(1) and fresh.has(0)
    assert fresh.missing() == [1]
    n = calls(pred)
    with caplog.at_level(logging.WARNING):
        emb = fresh.get(1)
    assert calls(pred) == n + 1  # recomputed, never taken from the zero-filled chunk
    assert emb.features.abs().sum() > 0
    torch.testing.assert_close(emb.features, reference)
    assert "recomputing" in caplog.text
    assert _store(pred, data, tmp_path).missing() == []  # and written back


def test_precompute_repairs_a_slice_whose_chunk_is_gone(pred, tmp_path):
    data = blobs_stack(4)
    _store(pred, data, tmp_path).precompute()
    store = _store(pred, data, tmp_path)
    _remove_chunk(store.cache_path, "features", 2)
    n = calls(pred)
    assert store.precompute() == 1 and calls(pred) == n + 1
    assert store.last_precompute["reused"] == 3


# --------------------------------------------------------------------------- poor items


def test_complete_read_only_cache_reports_nothing_to_do(pred, tmp_path):
    data = blobs_stack(3)
    _store(pred, data, tmp_path / "c").precompute()
    (tmp_path / "c").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        store = _store(pred, data, tmp_path / "c")
        assert not store.disk_writable and store.cache_path is not None
        assert store.missing() == []
        n = calls(pred)
        assert store.precompute() == 0 and calls(pred) == n
        info = store.last_precompute
        assert (info["reused"], info["computed"], info["error"]) == (3, 0, None)
        assert store.in_memory() == []  # reusing does not load the slices
    finally:
        (tmp_path / "c").chmod(stat.S_IRWXU)


def test_a_users_zarr_store_is_refused_untouched(pred, tmp_path):
    import zarr

    path = tmp_path / "my_data.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.attrs["owner"] = "me"
    group.create_array("raw", shape=(4, 4), dtype="u1") if hasattr(group, "create_array") else \
        group.create_dataset("raw", shape=(4, 4), dtype="u1")
    group["raw"][:] = 7
    before = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))

    store = _store(pred, blobs_stack(2), path)
    assert store.cache_path is None and "not a napari-focsam embedding cache: refusing" in store.disk_error
    store.precompute()  # works, in memory
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == before
    assert np.asarray(zarr.open_group(str(path), mode="r")["raw"][:]).tolist() == [[7] * 4] * 4
    assert [p.name for p in tmp_path.iterdir()] == ["my_data.zarr"]


def test_only_stores_with_our_marker_are_rebuilt(pred, tmp_path, caplog):
    data = blobs_stack(2)
    path = tmp_path / "ours.zarr"
    _store(pred, data, path).precompute()
    (path / "zarr.json").write_text("{ broken")  # zarr metadata unreadable, our marker file says it is ours
    with caplog.at_level(logging.WARNING):
        assert _store(pred, data, path).precompute() == 2
    assert "rebuilding" in caplog.text
    (path / disk_cache.MARKER_FILE).unlink()
    (path / "zarr.json").write_text("{ broken")  # now nothing says it is ours: refused
    store = _store(pred, data, path)
    assert store.cache_path is None and "refusing" in store.disk_error
    assert (path / "zarr.json").read_text() == "{ broken"


def test_empty_folder_given_as_the_store_is_used(pred, tmp_path):
    (tmp_path / "new.zarr").mkdir()
    store = _store(pred, blobs_stack(2), tmp_path / "new.zarr")
    assert store.disk_writable and store.precompute() == 2


def test_full_disk_stops_precompute_at_the_first_failed_write(pred, tmp_path, monkeypatch):
    attempts = []
    real = DiskCache._write_arrays

    def full_after_features(self, z, features, *rest):
        attempts.append(z)
        if len(attempts) >= 2:
            self._features[z] = features  # half written: features only
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, z, features, *rest)

    monkeypatch.setattr(DiskCache, "_write_arrays", full_after_features)
    data = blobs_stack(6)
    store = _store(pred, data, tmp_path)
    with pytest.raises(CacheWriteError, match="disk is full"):
        store.precompute()
    assert attempts == [0, 1] and calls(pred) == 2  # stopped at once, not after 4 more slices
    assert store.last_precompute["computed"] == 1 and "disk is full" in store.last_precompute["error"]
    monkeypatch.setattr(DiskCache, "_write_arrays", real)
    resumed = _store(pred, data, tmp_path)
    assert resumed.missing() == [1, 2, 3, 4, 5]  # the half-written slice 1 is not marked done
    assert resumed.precompute() == 5
    assert not any((resumed.cache_path / "claims").iterdir())


def test_precompute_checks_free_space_before_starting(pred, tmp_path, monkeypatch):
    store = _store(pred, blobs_stack(5), tmp_path)
    store.precompute(slices=[0])
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_cache.shutil, "disk_usage", lambda p: usage(10**12, 10**12, 3 * 2**20))
    n = calls(pred)
    with pytest.raises(CacheWriteError, match=r"not enough free space .* 4 slices need"):
        store.precompute()
    assert calls(pred) == n
    assert store.precompute(slices=[0]) == 0  # nothing to write: no space needed


# --------------------------------------------------------------------------- two precomputes, one store


def test_two_concurrent_precomputes_share_the_work(tmp_path):
    model = make_fast_focsam()
    model.image_encoder.delay = 0.05
    data = blobs_stack(8)
    stores = [_store(FocSAMPredictor(model), data, tmp_path, max_memory_bytes=0) for _ in range(2)]
    for s in stores:
        s.cache_path  # both open the same store (as two processes would)
    assert stores[0].cache_path == stores[1].cache_path
    errors = []

    def run(s):
        try:
            s.precompute(poll_s=0.01)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert model.image_encoder.calls == 8  # each slice encoded once in all
    infos = [s.last_precompute for s in stores]
    assert sum(i["computed"] for i in infos) == 8
    assert all(i["computed"] + i["reused"] + i["by_others"] == 8 for i in infos)
    assert _store(FocSAMPredictor(model), data, tmp_path).missing() == []


def test_precompute_waits_for_a_slice_claimed_by_another_process_and_reuses_it(pred, tmp_path):
    data = blobs_stack(3)
    other = _store(pred, data, tmp_path)
    other_disk = other._ensure_disk()
    assert other_disk.claims.acquire(1)  # "another process" is encoding slice 1
    mine = _store(pred, data, tmp_path)
    seen = []

    def finish_other():
        while len(seen) < 2:
            time.sleep(0.01)
        other.get(1)  # computes and writes slice 1 under its claim
        other_disk.claims.release(1)

    t = threading.Thread(target=finish_other)
    t.start()
    mine.precompute(progress=lambda d, n: seen.append(d), poll_s=0.01)
    t.join()
    assert mine.last_precompute == {**mine.last_precompute, "computed": 2, "by_others": 1, "reused": 0}
    assert seen == [1, 2, 3] and calls(pred) == 3


def test_claims_of_dead_or_silent_holders_expire(tmp_path):
    folder = tmp_path / "claims"
    a, b = Claims(folder), Claims(folder, timeout_s=60)
    assert a.acquire(3) and not b.acquire(3) and b.is_claimed(3)
    assert a.acquire(3)  # re-entrant for its holder
    a.release(3)
    assert b.is_claimed(3)
    a.release(3)
    assert b.acquire(3)
    b.release(3)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (folder / "4").mkdir()
    (folder / "4" / "owner.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x", "time": time.time()}))
    assert not b.is_claimed(4) and b.acquire(4)  # its process is gone: broken at once
    b.release(4)

    (folder / "5").mkdir()  # a holder on another machine: trusted until the timeout
    (folder / "5" / "owner.json").write_text(json.dumps(
        {"host": "elsewhere", "pid": 1, "token": "y", "time": time.time()}))
    assert not b.acquire(5)
    old = time.time() - 120
    os.utime(folder / "5", (old, old))
    assert b.acquire(5)
    b.release(5)
    assert sorted(p.name for p in folder.iterdir()) == []


WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from engine_helpers import blobs_stack, make_fast_focsam
from napari_focsam.core.embeddings import EmbeddingStore
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.prompting import FocSAMPredictor
model = make_fast_focsam()
model.image_encoder.delay = 0.1
store = EmbeddingStore(FocSAMPredictor(model), ImageVolume(blobs_stack(8)), cache_dir={cache!r},
                       max_memory_bytes=0)
store.precompute(poll_s=0.02)
print(json.dumps({{**store.last_precompute, "calls": model.image_encoder.calls}}))
"""


@pytest.mark.slow
def test_two_processes_fill_one_store_without_encoding_a_slice_twice(tmp_path):
    code = WORKER.format(tests=str(Path(__file__).parents[2]), cache=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    infos = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum(i["calls"] for i in infos) == 8  # the old code: 16
    assert all(i["computed"] + i["reused"] + i["by_others"] == 8 and i["error"] is None for i in infos)
    store = _store(FocSAMPredictor(make_fast_focsam()), blobs_stack(8), tmp_path / "cache")
    assert store.missing() == [] and len(list((tmp_path / "cache").iterdir())) == 1


def test_leftovers_of_killed_creations_are_swept_when_old(pred, tmp_path):
    data = blobs_stack(2)
    path = tmp_path / "s.zarr"
    old_tmp, new_tmp = tmp_path / ".s.zarr.tmp-dead", tmp_path / ".s.zarr.tmp-busy"
    for d in (old_tmp, new_tmp):
        (d / "features").mkdir(parents=True)
    long_ago = time.time() - 7200
    os.utime(old_tmp, (long_ago, long_ago))
    keep = tmp_path / "notes.tmp-x"
    keep.mkdir()
    _store(pred, data, path).precompute()
    assert not old_tmp.exists() and new_tmp.exists() and keep.exists() and path.exists()
