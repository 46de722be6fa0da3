"""ImageVolume as the one layout detector: which axis holds channels, and what it says it assumed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.core.image_volume import ImageVolume, has_channel_axis


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
    from napari_focsam.core.embeddings import ImageVolume as Old

    assert Old is ImageVolume
