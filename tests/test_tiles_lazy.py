"""Clicking and propagating on a lazily opened (20, 8192, 8192) uint16 zarr volume reads no whole
slice (only tiles), and keeps masks as regions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lazy_helpers import SpyArray, make_large_zarr  # noqa: E402

from napari_focsam.core.session import ImageVolume, Session  # noqa: E402
from napari_focsam.core.tiled_volume import RegionMasks  # noqa: E402

zarr = pytest.importorskip("zarr")

#: a nucleus-like disc through slices 9..11 (z, cy, cx, r), nothing elsewhere
DISCS = tuple((z, 4096, 4100, 90) for z in (9, 10, 11))


def test_click_and_propagate_on_a_lazy_8k_stack_read_no_whole_slice(mobile_sam, tmp_path):
    arr = make_large_zarr(tmp_path / "big.zarr", discs=DISCS)
    spy = SpyArray(arr)
    session = Session(ImageVolume(spy, contrast_limits=(100, 4000)), mobile_sam)
    assert session.tiled and session.volume.shape == (20, 8192, 8192)
    obj = session.new_object()
    y0, x0, crop = obj.add_click(4096, 4100, z=10, region=True)
    yy, xx = np.mgrid[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
    truth = (yy - 4096) ** 2 + (xx - 4100) ** 2 <= 90 ** 2
    assert np.count_nonzero(crop & truth) / np.count_nonzero(crop | truth) > 0.85
    assert obj.tile(10).level == 0
    result = obj.propagate()
    assert isinstance(result.masks, RegionMasks)
    assert sorted(z for z, r in obj.volume_regions().items() if r.crop.any()) == [9, 10, 11]
    assert "blank" in result.stopped_reason["down"] and "blank" in result.stopped_reason["up"]
    assert all(r.crop.shape[0] < 250 for r in obj.volume_regions().values())
    # only tiles were read: never a whole slice, never more than one 1024 x 1024 tile at once
    assert spy.requests and spy.whole_slice_requests() == []
    assert spy.largest_request() <= 1024 * 1024
    assert session.store.stats["computed"] == 5  # slices 8..12, one level-0 tile each
