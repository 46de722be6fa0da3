"""Tile grids: windows, coverage guarantee, tile choice, the inner-edge test, bad arguments."""

from __future__ import annotations

import itertools

import pytest

from napari_focsam.core.images import TileGrid, TileKey, axis_starts, check_tiling


def test_windows_cover_the_plane_with_the_halo_overlap():
    g = TileGrid((2048, 1600), 1024, 256)
    assert (g.n_rows, g.n_cols) == (3, 2)
    assert g.y_starts == [0, 768, 1024]  # the last tile is clamped to the border
    assert g.x_starts == [0, 576]
    assert g.window(TileKey(0, 1, 1)) == (768, 1792, 576, 1600)
    assert all(b - a == 1024 for k in g.keys() for a, b in (g.window(k)[:2], g.window(k)[2:]))


def test_small_plane_is_one_tile_of_its_own_size():
    g = TileGrid((300, 900), 1024, 256, level=3)
    assert g.single and g.keys() == [TileKey(3, 0, 0)]
    assert g.window(TileKey(3, 0, 0)) == (0, 300, 0, 900)


@pytest.mark.parametrize("n,tile,halo", [(5000, 1024, 256), (3000, 512, 128), (1500, 1024, 0)])
def test_any_interval_up_to_the_halo_lies_in_one_tile(n, tile, halo):
    starts = axis_starts(n, tile, tile - halo)
    e = max(halo, 1)
    for a in range(0, n - e + 1, 7):
        assert any(s <= a and a + e <= s + tile for s in starts), a


def test_best_tile_keeps_clicks_at_least_half_a_halo_from_inner_edges():
    g = TileGrid((4120, 5396))
    for y, x in itertools.product(range(0, 4120, 97), range(0, 5396, 131)):
        key = g.tile_for_points([(y, x)])
        assert key is not None
        assert g.inner_margin(key, (y, y + 1, x, x + 1)) >= g.halo / 2 - 1


def test_tile_for_points_none_when_spread_over_more_than_a_tile():
    g = TileGrid((4000, 4000))
    assert g.tile_for_points([(10, 10), (3000, 3000)]) is None
    assert g.tile_for_points([(10, 10), (900, 900)]) == TileKey(0, 0, 0)


def test_inner_edge_test_ignores_the_image_border():
    g = TileGrid((2048, 2048))
    k = TileKey(0, 0, 0)  # window (0, 1024, 0, 1024): top and left edges are the border
    assert not g.touches_inner_edge(k, (0, 100, 0, 100))
    assert g.touches_inner_edge(k, (500, 1020, 500, 600))
    assert not g.touches_inner_edge(k, (500, 1000, 500, 600))
    assert g.tiles_for_box((900, 1100, 100, 200))[0] == TileKey(0, 1, 0)
    assert g.tiles_for_box((100, 1900, 100, 200)) == []


@pytest.mark.parametrize("tile,halo", [(100, 10), (1000, 100), (8192, 256), (1024, 512), (1024, -1),
                                       (1024.5, 0), ("1024", 0), (True, 0)])
def test_nonsense_tiling_is_refused_with_the_valid_range(tile, halo):
    with pytest.raises(ValueError, match="tile_size|halo"):
        check_tiling(tile, halo)


def test_foreign_key_is_refused():
    g = TileGrid((2048, 2048))
    with pytest.raises(ValueError, match="not a tile of level 0"):
        g.window(TileKey(1, 0, 0))
    with pytest.raises(ValueError, match="not a tile"):
        g.window(TileKey(0, 5, 0))


def test_next_placement_moves_to_a_same_level_tile_or_a_coarser_level(tiny_focsam):
    import numpy as np

    from napari_focsam.core.embeddings import TiledEmbeddingStore
    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.prompting import FocSAMPredictor, next_placement

    store = TiledEmbeddingStore(FocSAMPredictor(tiny_focsam), ImageVolume(np.zeros((4096, 4096), np.uint8)))
    assert [g.shape for g in store.grids] == [(4096, 4096), (2048, 2048), (1024, 1024)]
    k = TileKey(0, 1, 1)  # window (768, 1792, 768, 1792)
    none = lambda lv: None  # noqa: E731
    assert next_placement(store, k, (1000, 1100, 1000, 1100), none, {k}) is None  # inside, small
    # reaches the bottom edge: a tile of the same level holds it with room
    moved = next_placement(store, k, (1700, 1790, 1000, 1100), none, {k})
    assert moved.level == 0 and store.grid(0).contains(moved, (1700, 1900, 1000, 1100))
    # more than the halo across: the first coarser level where it is at most 256 pixels
    assert next_placement(store, k, (900, 1200, 900, 1100), none, {k}).level == 1
    assert next_placement(store, k, (800, 1700, 900, 1100), none, {k}).level == 2
    assert next_placement(store, TileKey(2, 0, 0), (0, 1024, 0, 1024), none, set()) is None  # top level
