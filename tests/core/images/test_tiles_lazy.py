"""Clicking and propagating on a lazily opened (20, 8192, 8192) uint16 zarr volume reads no whole
slice (only tiles), and keeps masks as regions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from lazy_helpers import SpyArray, make_large_zarr  # noqa: E402

from napari_focsam.core.images import ImageVolume  # noqa: E402
from napari_focsam.core.session import Session
from napari_focsam.core.propagation import RegionMasks  # noqa: E402

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


def test_coarse_tiles_come_from_the_pyramid_level_when_there_is_one(tiny_focsam):
    from napari_focsam.core.embeddings import TiledEmbeddingStore
    from napari_focsam.core.images import TileKey
    from napari_focsam.core.prompting import FocSAMPredictor

    full = np.random.default_rng(0).integers(0, 4000, (4096, 3000), dtype=np.uint16)
    half = full.reshape(2048, 2, 1500, 2).mean(axis=(1, 3)).astype(np.uint16)
    spies = [SpyArray(full), SpyArray(half)]
    store = TiledEmbeddingStore(FocSAMPredictor(tiny_focsam), ImageVolume(spies, contrast_limits=(0, 4000)))
    assert [g.shape for g in store.grids] == [(4096, 3000), (2048, 1500), (1024, 750)]
    store.get_tile(0, TileKey(1, 1, 0))  # a stored level: read there, not from level 0
    assert spies[0].requests == [] and spies[1].requests == [((768, 1792), (0, 1024))]
    store.get_tile(0, TileKey(2, 0, 0))  # a virtual level: block means of the coarsest stored level
    assert spies[0].requests == [] and len(spies[1].requests) > 1  # level 0 is never read
    assert store.tile_window(TileKey(1, 1, 0)) == (1536, 3584, 0, 2048)
