"""Objects as regions (core/mask_regions.py): the same commits as the full-size planners, reading
only the objects' boxes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.core.labels import PasteError, plan_paste
from napari_focsam.core.mask_regions import (
    MaskRegion,
    crop_region,
    labels_max,
    merge_regions,
    object_region,
    plan_many_regions,
    plan_paste_regions,
)
from napari_focsam.core.multi_prompts import plan_many


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class ReadSpy:
    """A labels array that records every region read (an array that must not be read whole)."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(np.asarray(out).size)
        return out


def test_crop_region_round_trip_and_empty():
    m = _disc((64, 80), 30, 50, 6)
    r = crop_region(m, z=2)
    assert r.z == 2 and r.bbox == (24, 37, 44, 57) and r.crop.shape == (13, 13)
    assert np.array_equal(r.full(m.shape), m) and r.n_pixels == m.sum()
    e = crop_region(np.zeros((5, 5), bool))
    assert e.empty and e.crop.shape == (0, 0) and not e.full((5, 5)).any()


def test_object_region_prefers_mask_region_and_trims_it():
    class Obj:
        def mask_region(self, z):
            crop = np.zeros((10, 10), bool)
            crop[3:5, 6:9] = True
            return 100, 200, crop

        def mask(self, z):  # pragma: no cover - must not be used
            raise AssertionError("the full plane was asked for")

    r = object_region(Obj(), 0)
    assert r.bbox == (103, 105, 206, 209) and r.crop.all()


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
    got = plan_paste_regions(spy, [crop_region(mask[z], z) for z in range(3)], overwrite=overwrite,
                             max_label=int(labels.max()))
    assert got.label == want.label
    assert sorted(zip(*got.index)) == sorted(zip(*want.index))
    assert max(spy.reads) < 0.2 * labels[0].size  # the boxes only, never a plane


def test_plan_paste_regions_errors():
    labels = np.zeros((20, 20), np.uint8)
    r = crop_region(_disc((20, 20), 10, 10, 3))
    with pytest.raises(PasteError) as e:
        plan_paste_regions(labels, [crop_region(np.zeros((20, 20), bool))])
    assert e.value.reason == "empty"
    with pytest.raises(PasteError) as e:
        plan_paste_regions(np.zeros((10, 10), np.uint8), [r])
    assert e.value.reason == "shape"
    with pytest.raises(PasteError) as e:
        plan_paste_regions(np.full((20, 20), 255, np.uint8), [r])
    assert e.value.reason == "full"
    labels[5:16, 5:16] = 1
    with pytest.raises(PasteError) as e:
        plan_paste_regions(labels, [r])
    assert e.value.reason == "occupied"


def test_plan_many_regions_matches_plan_many():
    labels = np.zeros((80, 80), np.uint32)
    labels[0:10, 0:10] = 7
    masks = [_disc((80, 80), 20, 20, 10), _disc((80, 80), 25, 25, 10), _disc((80, 80), 60, 60, 5),
             np.zeros((80, 80), bool)]
    want = plan_many(labels, masks)
    got = plan_many_regions(labels, [[crop_region(m)] for m in masks])
    assert got.ids == want.ids
    a = dict(zip(zip(*got.index), got.values.tolist()))
    b = dict(zip(zip(*want.index), want.values.tolist()))
    assert a == b


def test_merge_regions_and_labels_max_blockwise():
    a, b = crop_region(_disc((50, 50), 10, 10, 4)), crop_region(_disc((50, 50), 40, 30, 3))
    m = merge_regions([a, b])
    assert np.array_equal(m.full((50, 50)), a.full((50, 50)) | b.full((50, 50)))
    labels = np.zeros((2, 300, 200), np.uint16)
    labels[1, 250, 7] = 9
    spy = ReadSpy(labels)
    assert labels_max(spy, block=200 * 50) == 9 and max(spy.reads) <= 200 * 50
    assert MaskRegion(0, 0, 0, np.zeros((0, 0), bool)).empty
