"""Outputs: only a mask written earlier by this tool is ever replaced.

An existing zarr group (someone's OME-Zarr image, an embedding cache store), a zarr array this
tool did not write and any path inside a zarr store are refused before the model loads, and
nothing on disk changes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from cli_helpers import ome_zarr, one_line, run  # noqa: E402

from napari_focsam.core.outputs import check_mask_path, write_mask, write_mask_regions  # noqa: E402

zarr = pytest.importorskip("zarr")


def _tree_digest(folder: Path) -> str:
    """A digest of every file's relative path and bytes under ``folder``."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def image(tmp_path):
    base = np.zeros((2, 64, 64), np.uint8)
    base[1, 20:40, 20:40] = 200
    return ome_zarr(tmp_path / "input.ome.zarr", [base, base[:, ::2, ::2].copy()])


@pytest.fixture
def victim(tmp_path):
    base = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    return ome_zarr(tmp_path / "victim.ome.zarr", [base, base[:, ::2, ::2].copy()])


def test_segment_out_on_someone_elses_ome_zarr_group_is_refused_and_nothing_changes(tiny_ckpt, image, victim,
                                                                                  capsys, loads):
    before = _tree_digest(victim)
    rc, out, err = run(["segment", image, "--slice", "1", "--click", "30,30", "--model", tiny_ckpt,
                        "--out", victim], capsys)
    assert rc == 2 and out == "" and loads == []
    assert "victim.ome.zarr: it is a zarr group" in one_line(err)
    assert _tree_digest(victim) == before
    assert sorted(p.name for p in victim.parent.iterdir()) == ["input.ome.zarr", "victim.ome.zarr"]


def test_a_new_array_inside_the_input_store_is_refused(tiny_ckpt, image, capsys, loads):
    before = _tree_digest(image)
    rc, out, err = run(["segment", image, "--slice", "1", "--click", "30,30", "--model", tiny_ckpt,
                        "--out", image / "1.zarr"], capsys)
    assert rc == 2 and loads == []
    assert "is part of the input" in one_line(err)
    assert _tree_digest(image) == before and not (image / "1.zarr").exists()


def test_a_new_array_inside_any_zarr_store_is_refused(victim):
    with pytest.raises(ValueError, match="inside the zarr store .*victim.ome.zarr"):
        check_mask_path(victim / "0" / "mask.zarr", 3)
    with pytest.raises(ValueError, match="inside the zarr store"):
        write_mask(victim / "labels.tif", np.ones((4, 4), np.uint8))
    assert not (victim / "labels.tif").exists()


def test_the_embedding_cache_store_in_use_is_never_replaced(tiny_ckpt, image, tmp_path, capsys):
    cache = tmp_path / "cache"
    rc, _, err = run(["segment", image, "--slice", "1", "--click", "30,30", "--model", tiny_ckpt,
                      "--cache", cache, "--out", tmp_path / "m.tif"], capsys)
    assert rc == 0, err
    (store,) = [p for p in cache.iterdir() if p.suffix == ".zarr"]
    before = _tree_digest(store)
    rc, out, err = run(["segment", image, "--slice", "1", "--click", "30,30", "--model", tiny_ckpt,
                        "--cache", cache, "--out", store], capsys)
    assert rc == 2 and "it is a zarr group" in one_line(err)
    assert _tree_digest(store) == before


def test_a_zarr_array_this_tool_did_not_write_is_refused(tmp_path):
    foreign = tmp_path / "data.zarr"
    zarr.create_array(str(foreign), shape=(8, 8), dtype="uint8")[...] = 5
    with pytest.raises(ValueError, match="a zarr array this tool did not write"):
        write_mask(foreign, np.ones((8, 8), np.uint8))
    assert (zarr.open_array(str(foreign), mode="r")[:] == 5).all()


@pytest.mark.parametrize("writer", ["write_mask", "write_mask_regions"])
def test_a_mask_written_by_this_tool_may_be_replaced(tmp_path, writer):
    out = tmp_path / "mask.zarr"
    for value in (1, 3):
        if writer == "write_mask":
            write_mask(out, np.full((2, 8, 8), value, np.uint8))
        else:
            write_mask_regions(out, (2, 8, 8), lambda z: (0, 0, np.full((8, 8), value, np.uint8)))
        assert (zarr.open_array(str(out), mode="r")[:] == value).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.zarr"]


def test_dask_progress_goes_to_stderr_so_stdout_holds_only_the_json_line(capfd):
    distributed = pytest.importorskip("distributed")
    from napari_focsam.core.cluster._distributed import progress_on_stderr

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        futures = [client.submit(pow, i, 2) for i in range(4)]
        progress_on_stderr(futures)
        assert [f.result() for f in futures] == [0, 1, 4, 9]
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "100%" in captured.err or "Completed" in captured.err or "#" in captured.err
