"""Segment all on tiled images: objects across tile seams are neither cut nor doubled, large ones
come from a coarser level, and the labels are written chunk by chunk.

The per-tile segmenter is replaced by an oracle that sees only the tile (the connected components
of its bright pixels, so an object crossing the tile's edge comes back cut, as a model's would):
the tiling, the level rule and the seam resolution are tested exactly and fast; the real model runs
in ``test_tiled_automatic_cli.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.core.automatic import ScanObject, SegmentAllParams, resolve_seams
from napari_focsam.core.cluster import _scan as tiled_automatic
from napari_focsam.core.embeddings import TiledEmbeddingStore
from napari_focsam.core.images import ImageVolume, TileKey
from napari_focsam.core.prompting import FocSAMPredictor
from napari_focsam.evaluation.instances import match_instances
from scene_helpers import HALO, TILE, oracle, scene


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One signed tiled cache for the module: the tiles are encoded once."""
    return tmp_path_factory.mktemp("scan_cache")


@pytest.fixture
def store(tiny_focsam, monkeypatch, cache):
    monkeypatch.setattr(tiled_automatic, "segment_all", oracle)
    image, truth = scene()
    st = TiledEmbeddingStore(FocSAMPredictor(tiny_focsam), ImageVolume(image), tile_size=TILE, halo=HALO,
                             max_memory_bytes=0, cache_dir=cache)
    return st, truth


def _labels(result, shape):
    out = np.zeros(shape, np.int32)
    for k, o in enumerate(result.objects, start=1):
        out[o.y0:o.y0 + o.mask.shape[0], o.x0:o.x0 + o.mask.shape[1]][o.mask] = k
    return out


def test_objects_across_seams_are_neither_cut_nor_doubled(store):
    st, truth = store
    res = tiled_automatic.segment_all_tiled(st.predictor, st, 0, SegmentAllParams(min_area=5))
    labels = _labels(res, truth.shape)
    s = match_instances(truth, labels, 0.9)
    assert (s.tp, s.fp, s.fn) == (6, 0, 0), s
    assert res.info["units"] == 16 + 4 + 1 and res.info["computed"] + res.info["reused"] == 21
    seams = res.info["seams"]
    assert seams["duplicates"] > 0 and seams["resolved"] > 0  # seen whole twice, and cut elsewhere
    # the large disc is decoded at level 1 (it does not fit a level-0 tile's halo)
    big = next(o for o in res.objects if o.mask.shape[0] > 70 and o.mask.shape[1] > 70)
    assert big.tile.level == 1


def test_without_coarser_levels_the_pieces_of_a_long_object_are_stitched(store):
    st, truth = store
    res = tiled_automatic.segment_all_tiled(st.predictor, st, 0, SegmentAllParams(min_area=5), max_level=0)
    labels = _labels(res, truth.shape)
    bar = truth == 6
    ids = np.unique(labels[bar])
    assert ids.size == 1 and ids[0] > 0  # one object, not a piece per tile
    assert res.info["seams"]["stitched"] >= 1
    s = match_instances(truth, labels, 0.9)
    assert s.fp == 0 and s.tp == 6  # the large disc too: cut at level 0, stitched


def test_a_second_run_encodes_no_tile(store):
    st, truth = store
    first = tiled_automatic.segment_all_tiled(st.predictor, st, 0, SegmentAllParams(min_area=5))
    again = tiled_automatic.segment_all_tiled(st.predictor, st, 0, SegmentAllParams(min_area=5))
    assert again.info["computed"] == 0 and again.info["reused"] == 21
    assert [o.box for o in again.objects] == [o.box for o in first.objects]


def test_stitch_needs_agreement_inside_the_tiles_overlap():
    a = ScanObject(0.9, 0, 0, np.ones((10, 30), bool), TileKey(0, 0, 0), cut=True)   # tile 0: x 0..32
    b = ScanObject(0.8, 0, 20, np.ones((10, 30), bool), TileKey(0, 0, 1), cut=True)  # tile 1: x 16..64
    c = ScanObject(0.7, 40, 20, np.ones((5, 5), bool), TileKey(0, 0, 1), cut=True)   # elsewhere
    windows = {TileKey(0, 0, 0): (0, 64, 0, 32), TileKey(0, 0, 1): (0, 64, 16, 64)}
    out, stats = resolve_seams([a, b, c], windows.__getitem__, 0.5, 1)
    assert stats.stitched == 1 and stats.pieces == 2 and len(out) == 2
    assert out[0].box == (0, 10, 0, 50) and out[0].mask.all()


def test_labels_are_written_chunk_by_chunk_as_ome_zarr(store, tmp_path):
    zarr = pytest.importorskip("zarr")
    from napari_focsam.core.cluster import write_scan_labels

    st, truth = store
    res = tiled_automatic.segment_all_tiled(st.predictor, st, 0, SegmentAllParams(min_area=5))
    out = tmp_path / "scan.ome.zarr"
    assert write_scan_labels(out, truth.shape, res.objects) == 6
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["0"][:], _labels(res, truth.shape))
    assert group.attrs["image-label"]["version"] == "0.4"
