"""ImageVolume as the one layout detector: which axis holds channels, and what it says it assumed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack  # noqa: E402

from napari_focsam.core.images import ImageVolume, has_channel_axis  # noqa: E402


@pytest.mark.parametrize("shape, is_3d, n_slices, plane, channels, words", [
    ((256, 256), False, 1, (256, 256), 1, "2D image 256x256, gray"),
    ((256, 256, 2), False, 1, (256, 256), 2, "2D image 256x256, 2 channels (last axis)"),
    ((7, 256, 256, 2), True, 7, (256, 256), 2, "3D stack of 7 slices of 256x256, 2 channels (last axis)"),
    ((64, 80, 3), False, 1, (64, 80), 3, "2D image 64x80, RGB (last axis)"),
    ((3, 64, 80, 4), True, 3, (64, 80), 4, "3D stack of 3 slices of 64x80, RGBA (last axis), alpha ignored"),
    ((3, 64, 80), True, 3, (64, 80), 1, "3D stack of 3 slices of 64x80, gray"),
    ((64, 80, 1), False, 1, (64, 80), 1, "2D image 64x80, 1 channel (last axis)"),
])
def test_trailing_small_axis_is_read_as_channels_and_said(shape, is_3d, n_slices, plane, channels, words):
    vol = ImageVolume(np.zeros(shape, np.uint16))
    assert (vol.is_3d, vol.n_slices, vol.plane_shape, vol.n_channels) == (is_3d, n_slices, plane, channels)
    assert vol.spatial_shape == ((n_slices, *plane) if is_3d else plane)
    assert vol.layout.startswith(words)
    assert has_channel_axis(shape) == (len(shape) - is_3d == 3)
    assert vol.rgb_plane(n_slices - 1).shape == (*plane, 3)


def test_two_channel_image_uses_both_channels_as_red_and_green():
    a = np.zeros((32, 40, 2), np.uint8)
    a[..., 0] = 200
    a[..., 1] = 50
    vol = ImageVolume(a)
    assert "red and green" in vol.layout
    rgb = vol.rgb_plane(0)
    assert (rgb[..., 0] == 200).all() and (rgb[..., 1] == 50).all() and (rgb[..., 2] == 0).all()


def test_forced_layouts_are_said_too():
    assert ImageVolume(np.zeros((40, 50, 3), np.uint8), rgb=False).layout == "3D stack of 40 slices of 50x3, gray"
    with pytest.raises(ValueError, match="wrong channel count"):
        has_channel_axis((40, 50, 6), True)


def test_old_import_path_still_works():
    from napari_focsam.core.images import ImageVolume as Old

    assert Old is ImageVolume


# --------------------------------------------------------------------------- shapes, limits, signatures


@pytest.mark.parametrize("shape, rgb, is_3d, n, plane", [
    ((40, 50), None, False, 1, (40, 50)),
    ((40, 50, 3), None, False, 1, (40, 50)),
    ((40, 50, 4), None, False, 1, (40, 50)),
    ((40, 50, 2), None, False, 1, (40, 50)),
    ((5, 40, 50), None, True, 5, (40, 50)),
    ((3, 40, 50), None, True, 3, (40, 50)),
    ((5, 40, 50, 3), None, True, 5, (40, 50)),
    ((5, 40, 50, 1), None, True, 5, (40, 50)),
    ((40, 50, 3), False, True, 40, (50, 3)),
    ((40, 50, 1), True, False, 1, (40, 50)),
])
def test_volume_layouts(shape, rgb, is_3d, n, plane):
    vol = ImageVolume(np.zeros(shape, np.uint16), rgb=rgb)
    assert (vol.is_3d, vol.n_slices, vol.plane_shape) == (is_3d, n, plane)
    p = vol.plane(n - 1)
    assert p.shape[:2] == plane and isinstance(p, np.ndarray)
    assert vol.rgb_plane(0).shape == (*plane, 3) and vol.rgb_plane(0).dtype == np.uint8


@pytest.mark.parametrize("shape, rgb, match", [
    ((2, 5, 40, 50), None, "4D data"),
    ((2, 5, 40, 50), False, "4D data"),
    ((2, 3, 5, 40, 50), None, "5D data"),
    ((40, 50, 5), None, "wrong channel count"),
    ((40, 50, 6), True, "wrong channel count"),
    ((4, 40, 50, 7), None, "wrong channel count"),
    ((40, 50), True, "no channel axis"),
    ((1, 100), None, "at least 2x2"),
    ((6, 100, 1), False, "at least 2x2"),
    ((0, 10), None, "empty"),
    ((3, 0, 10), None, "empty"),
    ((7,), None, "at least two axes"),
])
def test_volume_bad_shapes_raise_clear_errors(shape, rgb, match):
    with pytest.raises(ValueError, match=match):
        ImageVolume(np.zeros(shape, np.float32), rgb=rgb)


def test_volume_bad_dtype_limits_and_slices():
    with pytest.raises(ValueError, match="pixel type"):
        ImageVolume(np.zeros((8, 8), np.complex64))
    with pytest.raises(ValueError, match="contrast limits"):
        ImageVolume(np.zeros((8, 8)), contrast_limits=(5, 1))
    with pytest.raises(ValueError, match="contrast limits"):
        ImageVolume(np.zeros((8, 8)), contrast_limits=(0, np.nan))
    vol = ImageVolume(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"out of range: the stack has 3 slices \(0..2\)"):
        vol.plane(3)
    with pytest.raises(ValueError, match="out of range"):
        vol.plane(-1)
    assert vol.check_z(2.0) == 2 and vol.check_z(np.int64(1)) == 1
    with pytest.raises(ValueError, match="2D"):
        ImageVolume(np.zeros((8, 8))).plane(1)


def test_contrast_limits_given_default_and_uint8():
    stack = np.zeros((20, 16, 16), np.float32)
    stack[:, :8] = 100.0
    stack[10, 0, 0] = 1e6  # one outlier: robust percentiles ignore it
    vol = ImageVolume(stack)
    lo, hi = vol.contrast_limits
    assert lo == 0 and hi == 100
    assert vol.rgb_plane(3)[0, 0, 0] == 255 and vol.rgb_plane(3)[12, 0, 0] == 0
    assert ImageVolume(stack, contrast_limits=(0, 200)).rgb_plane(3)[0, 0, 0] == 128
    rgb8 = np.full((8, 8, 3), 7, np.uint8)
    assert ImageVolume(rgb8).contrast_limits is None  # 8-bit colour used as is
    assert ImageVolume(rgb8).rgb_plane()[0, 0, 0] == 7


def test_dim_8bit_gray_gets_the_robust_stretch():
    """A dim 8-bit gray image reaches the encoder as its bright original does."""
    bright = np.tile(np.linspace(0, 240, 64), (32, 1)).astype(np.uint8)
    dim = (bright // 4).astype(np.uint8)
    a, b = ImageVolume(bright), ImageVolume(dim)
    assert b.contrast_limits is not None and b.contrast_limits[1] <= 60
    assert b.rgb_plane().max() == 255 and a.rgb_plane().max() == 255
    assert np.abs(a.rgb_plane().astype(int) - b.rgb_plane().astype(int)).max() <= 6
    assert ImageVolume(dim, contrast_limits=(0, 255)).rgb_plane().max() == 60  # given limits win


def test_nan_pixels_map_to_black_and_all_nan_is_blank():
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    img[2, 3] = np.nan
    rgb = ImageVolume(img).rgb_plane()
    assert rgb[2, 3].tolist() == [0, 0, 0] and rgb.max() == 255
    allnan = ImageVolume(np.full((3, 8, 8), np.nan, np.float32))
    assert allnan.contrast_limits == (0.0, 1.0) and allnan.rgb_plane(1).max() == 0


class LazyStack:
    """An array-like that records which slices are read and refuses whole-volume reads."""

    def __init__(self, data):
        self._data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.reads = []

    def __getitem__(self, key):
        if not isinstance(key, (int, np.integer)):
            raise AssertionError(f"whole-volume read {key!r}")
        self.reads.append(int(key))
        return self._data[key]


def test_signatures_are_per_slice_and_never_read_the_whole_volume():
    data = blobs_stack(8)
    lazy = LazyStack(data)
    vol = ImageVolume(lazy)
    s3 = vol.slice_signature(3)
    assert lazy.reads == [3]
    assert vol.slice_signature(3) == s3 and lazy.reads == [3]  # remembered
    assert s3 != vol.slice_signature(4)
    vol.volume_key()
    assert sorted(set(lazy.reads)) == [0, 3, 4, 7]
    # same pixels -> same signature; the signature covers dtype and shape too
    assert ImageVolume(data.copy()).slice_signature(3) == s3
    assert ImageVolume(data.astype(np.int32)).slice_signature(3) != s3


def test_dask_stack_is_read_slice_by_slice():
    da = pytest.importorskip("dask.array")
    data = blobs_stack(6)
    loaded = []

    def load(z):
        loaded.append(z)
        return data[z]

    from dask import delayed

    lazy = da.stack([da.from_delayed(delayed(load)(z), data.shape[1:], data.dtype) for z in range(6)])
    vol = ImageVolume(lazy)
    assert vol.is_3d and vol.n_slices == 6
    np.testing.assert_array_equal(vol.plane(2), data[2])
    assert loaded == [2]
    assert vol.slice_signature(4) == ImageVolume(data).slice_signature(4)
    assert loaded == [2, 4]


def test_a_dask_array_is_read_only_in_the_chunks_of_a_region():
    """Regions of a chunked dask array read only the chunks they overlap."""
    da = pytest.importorskip("dask.array")
    from lazy_helpers import SpyArray

    data = np.arange(3 * 2048 * 1600, dtype=np.uint32).reshape(3, 2048, 1600)
    spy = SpyArray(data)
    vol = ImageVolume(da.from_array(spy, chunks=(1, 512, 512), asarray=False))
    assert vol.is_large()
    np.testing.assert_array_equal(vol.read_region(2, 500, 530, 1000, 1100), data[2, 500:530, 1000:1100])
    reads = [r for r in spy.requests if all(b > a for a, b in r)]  # dask also probes with empty slices
    assert reads and all(r[0] == (2, 3) and 0 <= r[1][0] < r[1][1] <= 1024 and 512 <= r[2][0] < r[2][1] <= 1536
                         for r in reads)  # within the 4 chunks the region overlaps
    vol.contrast_limits
    vol.slice_signature(1)
    assert spy.whole_slice_requests() == [] and spy.largest_request() <= 512 * 512
