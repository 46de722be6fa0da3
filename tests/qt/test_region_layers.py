"""Labels layers written by region (_qt/region_layers.py), without a viewer."""

from __future__ import annotations

import numpy as np

from napari_focsam._qt.region_layers import (
    NUMPY_MAX_PIXELS, NextLabel, full_mask, merge_by_slice, new_labels_array, output_dtype, split_hint, write_regions)
from napari_focsam.core.prompting import MaskRegion, empty_region, region_from_plane, region_to_plane


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class WriteSpy(np.ndarray):
    def __array_finalize__(self, obj):
        if not hasattr(self, "writes"):
            self.writes = []

    def __setitem__(self, key, value):
        self.writes.append(np.broadcast_to(np.zeros((), bool), self.shape)[key].size)
        super().__setitem__(key, value)


def test_write_regions_touches_only_the_old_and_new_boxes():
    data = np.zeros((3, 512, 512), np.uint8).view(WriteSpy)
    a = region_from_plane(_disc((512, 512), 100, 100, 10))
    b = region_from_plane(_disc((512, 512), 110, 120, 12))
    shown = write_regions(data, {}, {1: a}, True)
    assert set(shown) == {1} and np.array_equal(data[1] > 0, region_to_plane(a, (512, 512)))
    shown = write_regions(data, shown, {1: b}, True)  # the object moved: a's pixels are gone
    assert np.array_equal(data[1] > 0, region_to_plane(b, (512, 512))) and not data[0].any()
    assert max(data.writes) <= (12 * 2 + 1 + 20) ** 2  # the union box, never a plane
    shown = write_regions(data, shown, {2: a}, True, replace=True)  # a volume replaces everything
    assert set(shown) == {2} and not data[1].any() and data[2].any()
    shown = write_regions(data, shown, {2: empty_region()}, True)
    assert shown == {} and not data.any()
    assert np.array_equal(full_mask({1: a, 2: b}, (3, 512, 512), True)[1], region_to_plane(a, (512, 512)))


def test_large_labels_arrays_store_only_labelled_chunks():
    small = new_labels_array((100, 100), np.uint32)
    assert isinstance(small, np.ndarray) and small.dtype == np.uint32
    assert output_dtype((3, 4096, 4096)) == np.uint32 and output_dtype((8192, 8192)) == np.uint16
    big = new_labels_array((20, 8192, 8192), np.uint32)  # 5.4 GB as numpy
    assert not isinstance(big, np.ndarray) and 20 * 8192 * 8192 > NUMPY_MAX_PIXELS
    r = region_from_plane(_disc((8192, 8192), 4000, 5000, 40))
    write_regions(big, {}, {7: r}, True, value=3)
    assert big.nchunks_initialized == 1  # one 2048x2048 chunk, not the whole 5.4 GB
    assert int(np.asarray(big[7, 4000, 5000])) == 3 and not np.asarray(big[6, 4000, 5000])
    write_regions(big, {7: r}, {7: empty_region()}, True)
    assert big.nchunks_initialized == 0  # an emptied chunk is dropped again


def test_next_label_of_a_zarr_layer_is_kept_up_to_date():
    from napari.layers import Labels

    layer = Labels(new_labels_array((2, 9000, 9000), np.uint16))
    nl = NextLabel()
    assert nl.max_label(layer) == 0
    idx = (np.array([1, 1]), np.array([5, 6]), np.array([5, 5]))
    layer.data_setitem(idx, 4)
    nl.wrote(layer, 4)
    assert nl.max_label(layer) == 4
    layer.undo()  # the id is an upper bound: an undone id is not reused (no rescan of a large array)
    assert nl.max_label(layer) == 4
    layer.selected_label = 9
    layer.paint((1, 100, 100), 9)  # a user's paint stroke: read again
    assert nl.max_label(layer) == 9


def test_merge_by_slice_and_split_hint():
    a = region_from_plane(_disc((200, 200), 50, 50, 10))
    b = region_from_plane(_disc((200, 200), 150, 150, 10))
    merged = merge_by_slice([{0: a}, {0: b}])
    assert np.array_equal(region_to_plane(merged[0], (200, 200)),
                          region_to_plane(a, (200, 200)) | region_to_plane(b, (200, 200)))
    assert split_hint([(0, 50, 50, True), (0, 150, 150, True)], merged) == [0]
    assert split_hint([(0, 50, 50, True), (0, 55, 52, True)], merged) == []
    assert split_hint([(0, 50, 50, True), (0, 5, 190, True)], merged) == []  # outside the box: background
    assert isinstance(merged[0], MaskRegion)
