"""Commits by region (core/region_paste.py): the same commits as the full-size planners, reading
only the objects' boxes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.core.editing import PasteError, labels_max, merge_regions, plan_many_regions, plan_paste_regions
from napari_focsam.core.editing._paste import plan_paste
from napari_focsam.core.editing._paste_many import plan_many
from napari_focsam.core.prompting import empty_region, region_from_plane, region_to_plane


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class ReadSpy:
    """A labels array that records the size of every region read (an array not to be read whole)."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(np.asarray(out).size)
        return out


@pytest.mark.parametrize("overwrite", [False, True])
def test_plan_paste_regions_matches_plan_paste(overwrite):
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 96, 128), np.uint16)
    labels[1, 40:60, 40:70] = 5
    labels[2] = rng.integers(0, 2, (96, 128)) * 3
    mask = np.zeros(labels.shape, bool)
    mask[1] = _disc((96, 128), 50, 60, 15)
    mask[2] = _disc((96, 128), 20, 20, 8)
    want = plan_paste(labels, mask, overwrite=overwrite)
    spy = ReadSpy(labels)
    got = plan_paste_regions(spy, {z: region_from_plane(mask[z]) for z in range(3)}, overwrite=overwrite,
                             max_label=int(labels.max()))
    assert got.label == want.label
    assert sorted(zip(*got.index)) == sorted(zip(*want.index))
    assert all(n < 0.2 * labels[0].size for n in spy.reads)  # the boxes only, never a plane
    two_d = plan_paste_regions(labels[1], {0: region_from_plane(mask[1])}, overwrite=overwrite)
    assert len(two_d.index) == 2 and two_d.label == 6


def test_plan_paste_regions_errors():
    labels = np.zeros((20, 20), np.uint8)
    r = region_from_plane(_disc((20, 20), 10, 10, 3))
    for bad_labels, regions, reason in ((labels, {0: empty_region()}, "empty"),
                                        (np.zeros((10, 10), np.uint8), {0: r}, "shape"),
                                        (labels, {1: r}, "shape"),
                                        (np.full((20, 20), 255, np.uint8), {0: r}, "full")):
        with pytest.raises(PasteError) as e:
            plan_paste_regions(bad_labels, regions)
        assert e.value.reason == reason
    labels[5:16, 5:16] = 1
    with pytest.raises(PasteError) as e:
        plan_paste_regions(labels, {0: r})
    assert e.value.reason == "occupied"


def test_plan_many_regions_matches_plan_many():
    labels = np.zeros((80, 80), np.uint32)
    labels[0:10, 0:10] = 7
    masks = [_disc((80, 80), 20, 20, 10), _disc((80, 80), 25, 25, 10), _disc((80, 80), 60, 60, 5),
             np.zeros((80, 80), bool)]
    want = plan_many(labels, masks)
    got = plan_many_regions(labels, [{0: region_from_plane(m)} for m in masks])
    assert got.ids == want.ids
    assert dict(zip(zip(*got.index), got.values.tolist())) == dict(zip(zip(*want.index), want.values.tolist()))


def test_merge_regions_and_labels_max_blockwise():
    a, b = region_from_plane(_disc((50, 50), 10, 10, 4)), region_from_plane(_disc((50, 50), 40, 30, 3))
    m = merge_regions([a, b, empty_region()])
    assert np.array_equal(region_to_plane(m, (50, 50)), region_to_plane(a, (50, 50)) | region_to_plane(b, (50, 50)))
    assert merge_regions([]).crop.size == 0
    labels = np.zeros((2, 300, 200), np.uint16)
    labels[1, 250, 7] = 9
    spy = ReadSpy(labels)
    assert labels_max(spy, block=200 * 50) == 9 and max(spy.reads) <= 200 * 50
