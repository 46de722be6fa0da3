"""Pyramids, lazy reads by region, and clear errors when the storage fails.

The central test wraps a lazily opened (20, 8192, 8192) uint16 zarr array in a spy that
records every read and checks that no read covers a whole slice (nor the whole array), through
the region API, the contrast limits and the signatures.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from lazy_helpers import SpyArray, make_large_zarr  # noqa: E402

from napari_focsam.core.images import _pyramid as pyramid  # noqa: E402
from napari_focsam.core.images._contrast import robust_limits  # noqa: E402
from napari_focsam.core.images import TILING_MIN_SIDE, ImageReadError, ImageVolume  # noqa: E402

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def large_zarr(tmp_path_factory):
    return make_large_zarr(tmp_path_factory.mktemp("large") / "big.zarr")


def test_a_large_lazy_zarr_is_never_read_a_whole_slice_at_a_time(large_zarr):
    spy = SpyArray(large_zarr)
    vol = ImageVolume(spy)
    assert vol.is_large() and vol.plane_shape == (8192, 8192) and vol.n_levels == 1
    lo, hi = vol.contrast_limits
    assert lo == 100 and hi > lo
    # at most a few chunk-sized windows per sampled slice
    assert len(spy.requests) <= 9 * 9 and spy.largest_request() <= 512 * 512
    assert all(a // 1024 == (b - 1) // 1024 for r in spy.requests for a, b in r[1:])  # one chunk each
    # the disc at (3, 6100, 7000) with radius 200, at full resolution and as the encoder sees it
    region = vol.read_region(3, 5900, 6300, 6800, 7200)
    assert region.shape == (400, 400) and region.dtype == np.uint16
    assert region[200, 200] == 4000 and region[0, 0] == 100
    rgb = vol.rgb_region(3, 5900, 6300, 6800, 7200)
    assert rgb.shape == (400, 400, 3) and rgb[200, 200, 0] == 255 and rgb[0, 0, 0] == 0
    # a virtual 4x level: a 512 x 512 region is read from a 2048 x 2048 region, in bands
    coarse = vol.read_region(3, 1024, 1536, 1536, 2048, level=2)
    assert coarse.shape == (512, 512) and vol.level_factor(2) == 4.0 and vol.level_shape(2) == (2048, 2048)
    assert coarse[1525 - 1024, 1750 - 1536] == 4000 and coarse[0, 0] == 100
    sig = vol.slice_signature(3)
    assert sig == ImageVolume(large_zarr).slice_signature(3) and vol.volume_key()
    big = np.full((2, 2000, 2000), 100, np.uint16)
    assert ImageVolume(big).slice_signature(1) != ImageVolume(big[:, :, :1999]).slice_signature(1)
    assert ImageVolume(big).slice_signature(1) != ImageVolume(big.astype(np.int32)).slice_signature(1)
    assert vol.region_signature(3, 0, 1024, 0, 1024) == vol.region_signature(4, 0, 1024, 0, 1024)
    assert spy.whole_slice_requests() == []
    assert all(r[0][1] - r[0][0] == 1 for r in spy.requests)  # one slice per request, never the volume
    assert spy.largest_request() <= pyramid.VIRTUAL_BAND_PIXELS


def test_rgb_regions_agree_with_each_other_and_with_the_whole_plane():
    rng = np.random.default_rng(1)
    img = rng.normal(1000, 200, (1700, 1600)).astype(np.float32)
    vol = ImageVolume(img)
    assert vol.is_large()
    whole = vol.rgb_plane(0)
    np.testing.assert_array_equal(vol.rgb_region(0, 100, 300, 1500, 1700), whole[100:300, 1500:1600])
    np.testing.assert_array_equal(vol.read_region(0, -5, 10, 0, 4), img[:10, :4])  # clipped


def test_small_images_keep_their_limits_and_signatures():
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 3000, (3, TILING_MIN_SIDE, 700)).astype(np.uint16)
    vol = ImageVolume(stack)
    assert not vol.is_large() and vol.max_level >= 1
    expected = hashlib.sha1(f"{stack.dtype.str}|{stack[1].shape}|".encode())
    expected.update(np.ascontiguousarray(stack[1]).reshape(-1).view(np.uint8))
    assert vol.slice_signature(1) == expected.hexdigest()
    assert vol.region_signature(1, 0, TILING_MIN_SIDE, 0, 700) == expected.hexdigest()
    values = stack.astype(np.float32).reshape(-1)
    values = np.concatenate([v[:: int(np.ceil(v.size / 250_000))] for v in values.reshape(3, -1)])
    assert vol.contrast_limits == tuple(float(v) for v in np.percentile(values, (0.5, 99.5)))
    assert ImageVolume(stack[0]).contrast_limits == robust_limits(stack[0])
    assert ImageVolume(np.zeros((TILING_MIN_SIDE + 1, 10), np.uint8)).is_large()


def test_virtual_levels_are_block_means_read_band_by_band(monkeypatch):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 1000, (2, 1001, 777)).astype(np.int32)
    spy = SpyArray(img)
    vol = ImageVolume(spy)
    assert [vol.level_shape(k) for k in range(vol.max_level + 1)] == [(1001, 777), (501, 389), (251, 195)]
    monkeypatch.setattr(pyramid, "VIRTUAL_BAND_PIXELS", 4 * 57)
    out = vol.read_region(1, 240, 260, 180, 200, level=2)  # the bottom-right corner: partial blocks
    assert out.shape == (11, 15) and out.dtype == np.int32
    padded = np.full((44, 60), np.nan)
    padded[:41, :57] = img[1, 960:1001, 720:777]
    expected = np.rint(np.nanmean(padded.reshape(11, 4, 15, 4), axis=(1, 3))).astype(np.int32)
    np.testing.assert_array_equal(out, expected)
    assert len(spy.requests) == 11 and all(r[1][1] - r[1][0] <= 4 for r in spy.requests)  # bands of 4 rows


def test_a_napari_multiscale_list_uses_its_levels():
    rng = np.random.default_rng(4)
    base = rng.integers(0, 500, (3, 2048, 2048)).astype(np.uint16)
    spies = [SpyArray(base), SpyArray(base[:, ::2, ::2].copy()), SpyArray(base[:, ::4, ::4].copy())]
    vol = ImageVolume(spies)
    assert vol.n_levels == 3 and [vol.level_factor(k) for k in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert vol.plane_shape == (2048, 2048) and vol.level_shape(2) == (512, 512)
    lo, hi = vol.contrast_limits  # from level 1, the first one with a long side <= 2048
    assert spies[0].requests == [] and spies[1].requests and 0 <= lo < hi <= 500
    np.testing.assert_array_equal(vol.read_region(2, 10, 20, 30, 40, level=1), base[2, ::2, ::2][10:20, 30:40])
    virtual = vol.read_region(0, 0, 8, 0, 8, level=3)  # from level 2, 2x2 block means
    np.testing.assert_array_equal(virtual, np.rint(base[0, ::4, ::4][:16, :16].reshape(8, 2, 8, 2)
                                                   .mean(axis=(1, 3))).astype(np.uint16))
    assert spies[0].whole_slice_requests() == []
    with pytest.raises(ValueError, match=r"level 4 is out of range: this image has levels 0..3 \(3 stored\)"):
        vol.read_region(0, 0, 8, 0, 8, level=4)
    with pytest.raises(ValueError, match="holds no pixel of level 1"):
        vol.read_region(0, 2000, 2100, 0, 8, level=1)


@pytest.mark.parametrize("shapes, message", [
    ([(2, 64, 64), (2, 32, 16)], r"pyramid level 1 has shape \(2, 32, 16\), level 0 \(2, 64, 64\): y shrinks by 2 "
                                 r"and x by 4"),
    ([(2, 64, 64), (3, 32, 32)], "same number of slices"),
    ([(64, 64), (2, 32, 32)], "different numbers of axes"),
    ([(64, 64, 3), (32, 32, 4)], "same number of channels"),
    ([(64, 64), (43, 43)], "same whole factor"),
    ([(64, 64), (16, 16), (32, 32)], r"level 2 has shape \(32, 32\).*not coarser than level 1 \(16, 16\)"),
])
def test_levels_that_disagree_are_refused_with_one_line(shapes, message):
    with pytest.raises(ValueError, match=message) as info:
        ImageVolume([np.zeros(s, np.uint8) for s in shapes])
    assert "\n" not in str(info.value)


def test_levels_with_another_pixel_type_are_refused():
    with pytest.raises(ValueError, match="pyramid level 1 has pixel type uint16, level 0 uint8"):
        ImageVolume([np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint16)])


def test_odd_sizes_round_either_way():
    assert pyramid.level_factors([(1030, 1349), (515, 675), (258, 337)], is_3d=False, has_channels=False) == [1, 2, 4]


def _ome_zarr(path, levels, axes):
    g = zarr.open_group(str(path), mode="w")
    for i, a in enumerate(levels):
        g.create_array(str(i), shape=a.shape, dtype=a.dtype, chunks=a.shape)[...] = a
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in axes],
                               "datasets": [{"path": str(i)} for i in range(len(levels))]}]
    return zarr.open_group(str(path), mode="r")


def test_an_ome_zarr_group_with_t_and_c_axes(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 255, (1, 1, 4, 64, 96)).astype(np.uint8)
    g = _ome_zarr(tmp_path / "img.ome.zarr", [base, base[..., ::2, ::2].copy()], "tczyx")
    vol = ImageVolume(g)
    assert vol.shape == (4, 64, 96) and vol.n_levels == 2 and vol.level_factor(1) == 2.0
    assert vol.origin.endswith("img.ome.zarr")
    np.testing.assert_array_equal(vol.read_region(3, 5, 9, 10, 20, level=1), base[0, 0, 3, ::2, ::2][5:9, 10:20])
    np.testing.assert_array_equal(vol.plane(2), base[0, 0, 2])
    two = rng.integers(0, 255, (2, 3, 64, 96)).astype(np.uint8)  # c z y x -> z y x c
    vol2 = ImageVolume(_ome_zarr(tmp_path / "two.zarr", [two], "czyx"))
    assert vol2.shape == (3, 64, 96, 2) and vol2.has_channels
    np.testing.assert_array_equal(vol2.read_region(1, 0, 4, 0, 5), np.moveaxis(two[:, 1, :4, :5], 0, -1))


def test_zarr_groups_without_multiscales_or_with_a_missing_level(tmp_path):
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("raw", shape=(8, 8), dtype="uint8")
    with pytest.raises(ValueError, match=r"plain.zarr is a zarr group without OME-Zarr 'multiscales' metadata: "
                                         r"name the array inside it \(it holds the arrays raw\)"):
        ImageVolume(zarr.open_group(str(tmp_path / "plain.zarr"), mode="r"))
    g.attrs["multiscales"] = [{"datasets": [{"path": "raw"}, {"path": "1"}]}]
    with pytest.raises(ValueError, match="pyramid level '1' listed in 'multiscales' is missing"):
        ImageVolume(zarr.open_group(str(tmp_path / "plain.zarr"), mode="r"))
    with pytest.raises(ValueError, match="empty list"):
        ImageVolume([])


def test_a_list_of_equal_slices_is_still_a_stack():
    vol = ImageVolume([np.zeros((64, 80), np.uint8)] * 3)
    assert vol.n_levels == 1 and vol.is_3d and vol.shape == (3, 64, 80)
    assert ImageVolume([np.zeros((64, 80), np.uint8)]).shape == (1, 64, 80)


def test_a_store_that_disappears_between_two_reads_is_a_one_line_oserror(tmp_path):
    arr = make_large_zarr(tmp_path / "gone.zarr", shape=(4, 2048, 2048), chunks=(1, 512, 512),
                          discs=((1, 1000, 1000, 50),))
    vol = ImageVolume(arr)
    assert vol.read_region(1, 950, 1050, 950, 1050)[50, 50] == 4000
    shutil.rmtree(tmp_path / "gone.zarr")  # every chunk file and the metadata
    with pytest.raises(OSError, match=r"cannot read slice 1, level 0, rows 0:512, columns 0:512: the zarr store "
                                      r".*gone.zarr has disappeared") as info:
        vol.read_region(1, 0, 512, 0, 512)
    assert isinstance(info.value, ImageReadError) and "\n" not in str(info.value)


def test_a_damaged_chunk_is_a_one_line_oserror(tmp_path):
    arr = make_large_zarr(tmp_path / "bad.zarr", shape=(2, 1024, 1024), chunks=(1, 512, 512),
                          discs=((0, 100, 100, 50),))
    chunk = tmp_path / "bad.zarr" / "c" / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage")
    vol = ImageVolume(arr, contrast_limits=(0, 5000))
    with pytest.raises(OSError, match=r"cannot read slice 0, level 0, rows 0:10, columns 0:10 of .*bad.zarr: ") as info:
        vol.rgb_region(0, 0, 10, 0, 10)
    assert "\n" not in str(info.value)


def test_chunk_files_deleted_between_two_reads_are_a_one_line_oserror(tmp_path):
    """zarr reads a missing chunk as its fill value (an unwritten chunk is legal): a chunk file
    that was there at the first read (of any region of that level) and is gone at the second is
    an error, not an empty tile."""
    arr = make_large_zarr(tmp_path / "chunks.zarr", shape=(2, 2048, 2048), chunks=(1, 512, 512),
                          discs=((1, 1000, 1000, 50),))
    vol = ImageVolume(arr)
    assert vol.read_region(0, 0, 600, 0, 600)[0, 0] == 100  # never-written chunks: the fill value
    shutil.rmtree(tmp_path / "chunks.zarr" / "c")  # every chunk file; the metadata stays
    with pytest.raises(OSError, match=r"cannot read slice 1, level 0, rows 950:1050, columns 950:1050: the chunk "
                                      r"file .*chunks.zarr/c/1/1/1 has disappeared since it was last seen") as info:
        vol.read_region(1, 950, 1050, 950, 1050)
    assert "\n" not in str(info.value)
    with pytest.raises(OSError, match="has disappeared since it was last seen"):
        vol.read_region(1, 0, 256, 0, 256, level=2)  # a virtual level reads the same chunks
    assert pyramid.stored_chunk_files(SpyArray(arr), (0, slice(0, 10))) is None  # unknown for wrappers
