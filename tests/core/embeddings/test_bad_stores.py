"""Faulty stores and interrupted runs: zarr inputs with holes, a pyramid level that is a group,
an input chunk lost while precomputing, partial outputs of killed runs, claims of other hosts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.embeddings import EmbeddingStore  # noqa: E402
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.outputs._mask_files import replacing, sweep_stale_partials  # noqa: E402
from napari_focsam.core.outputs import write_mask
from napari_focsam.core.prompting import FocSAMPredictor  # noqa: E402
from napari_focsam.core.images import ImageReadError  # noqa: E402

zarr = pytest.importorskip("zarr")


def test_a_region_with_chunks_never_written_is_warned_once(tmp_path, caplog):
    path = tmp_path / "holes.zarr"
    a = zarr.create_array(str(path), shape=(1024, 1024), chunks=(256, 256), dtype="uint8")
    a[...] = 100
    os.remove(path / "c" / "1" / "1")  # lost before the run: zarr reads its fill value, 0
    vol = ImageVolume(zarr.open_array(str(path), mode="r"))
    with caplog.at_level(logging.WARNING, logger="napari_focsam"):
        vol.read_region(0, 0, 200, 0, 200)  # all present: nothing said
        assert not caplog.records
        assert vol.read_region(0, 200, 600, 200, 600).min() == 0
        vol.read_region(0, 300, 700, 300, 700)
    (record,) = caplog.records
    assert "holes.zarr: 1 chunk file(s)" in record.getMessage() and "c/1/1" in record.getMessage()
    assert "fill value" in record.getMessage()


def test_a_multiscales_path_naming_a_group_is_one_clear_error(tmp_path):
    g = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w")
    g.create_array("0", shape=(64, 64), dtype="uint8")
    g.create_group("1")
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}],
                               "datasets": [{"path": "0"}, {"path": "1"}]}]
    with pytest.raises(ValueError, match="pyramid level '1' listed in 'multiscales' is a group, not an array"):
        ImageVolume(zarr.open_group(str(tmp_path / "bad.zarr"), mode="r"))


def test_an_input_chunk_lost_during_precompute_is_reported_as_the_input(tmp_path):
    src = tmp_path / "stack.zarr"
    zarr.create_array(str(src), shape=(4, 48, 48), chunks=(1, 48, 48), dtype="uint16")[...] = blobs_stack(4)
    vol = ImageVolume(zarr.open_array(str(src), mode="r"))
    store = EmbeddingStore(FocSAMPredictor(make_fast_focsam()), vol, cache_dir=tmp_path / "cache")
    store.precompute([0])
    shutil.rmtree(src / "c" / "2")  # slice 2's chunk goes after the store listed it
    with pytest.raises(ImageReadError, match="slice 2.*has disappeared"):
        store.precompute()
    assert store.disk_writable  # the cache is fine: it stays writable
    assert 2 in store.missing()


def test_stale_partials_of_dead_processes_are_swept(tmp_path):
    out = tmp_path / "mask.tif"
    import socket

    dead = tmp_path / f".mask.tif.partial-{socket.gethostname()}-999999999"
    legacy = tmp_path / ".mask.tif.partial-999999998"
    other_host = tmp_path / ".mask.tif.partial-elsewhere-999999997"
    live = tmp_path / f".mask.tif.partial-{socket.gethostname()}-{os.getppid()}"
    for p in (dead, legacy, other_host, live):
        p.write_bytes(b"half a mask")
    old_dir = tmp_path / f".mask.tif.old-{socket.gethostname()}-999999996"
    old_dir.mkdir()
    write_mask(out, np.ones((4, 4), np.uint8))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["mask.tif", other_host.name, live.name])
    assert sweep_stale_partials(out) == []
    with replacing(tmp_path / "x.npy") as tmp:  # the run's own temporary file carries host and pid
        assert tmp.name == f".x.npy.partial-{socket.gethostname()}-{os.getpid()}"
        tmp.write_bytes(b"")


def test_waiting_for_another_hosts_claim_says_whose_and_until_when(tmp_path, caplog, monkeypatch):
    vol = ImageVolume(blobs_stack(2))
    store = EmbeddingStore(FocSAMPredictor(make_fast_focsam()), vol, cache_dir=tmp_path / "cache")
    store.precompute([0])
    claims = store._disk.claims
    claim = claims.folder / "1"
    claim.mkdir(parents=True)
    (claim / "owner.json").write_text(json.dumps({"host": "node42", "pid": 4242, "token": "x",
                                                  "time": time.time()}))
    claims.timeout_s = 1.5  # the claim counts 1.5 s, then this run takes the unit over
    with caplog.at_level(logging.WARNING, logger="napari_focsam"):
        store.precompute(poll_s=0.2)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "waiting for 1 unit(s) that another process is computing" in text
    assert "host node42, process 4242, since" in text and "taken over at" in text
    assert store.missing() == []


def test_a_huge_image_starts_at_once_and_hashes_a_unit_only_when_it_is_computed(tmp_path, monkeypatch):
    from napari_focsam.core.embeddings import TiledEmbeddingStore

    path = tmp_path / "huge.zarr"
    zarr.create_array(str(path), shape=(20_000, 20_000), chunks=(2048, 2048), dtype="uint8")  # declared, empty
    vol = ImageVolume(zarr.open_array(str(path), mode="r"))
    store = TiledEmbeddingStore(FocSAMPredictor(make_fast_focsam()), vol, cache_dir=tmp_path / "cache",
                                tile_size=1024, halo=64)
    hashed, seen = [], []
    real = TiledEmbeddingStore._unit_signature
    monkeypatch.setattr(TiledEmbeddingStore, "_unit_signature",
                        lambda self, u: hashed.append(u) or real(self, u))
    store.precompute(progress=lambda done, total: seen.append((done, len(hashed))),
                     cancelled=lambda: len(seen) >= 2)
    assert store._unit_count() > 400
    assert seen[0][0] == 1 and seen[0][1] <= 3  # the first unit done after hashing only itself
