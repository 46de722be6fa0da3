"""Tiled sessions on large images: automatic tiling, object-adaptive scale, regions, undo, boxes,
propagation, events, the tiled disk cache and bad tilings (synthetic 2048 x 1600 images)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_focsam.core.embeddings import EmbeddingStore, TiledEmbeddingStore
from napari_focsam.core.images import ImageVolume, TileKey
from napari_focsam.core.prompting import (
    FocSAMPredictor, logits_to_mask, region_from_plane, region_iou, region_to_plane, tile_logits_values,
    values_to_region)
from napari_focsam.core.propagation import RegionMasks
from napari_focsam.core.session import Session

H, W = 2048, 1600


def disc(cy: float, cx: float, r: float, shape=(H, W)) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


def image_with(*masks: np.ndarray, shape=(H, W), seed: int = 0) -> np.ndarray:
    img = np.random.default_rng(seed).normal(30, 4, shape).clip(0, 255).astype(np.uint8)
    for m in masks:
        img[m] = 200
    return img


def iou(a, b) -> float:
    return float(np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b)))


def test_small_image_keeps_the_single_canvas(tiny_focsam):
    s = Session(np.zeros((1030, 1349), np.uint8), tiny_focsam)
    assert not s.tiled and type(s.store) is EmbeddingStore and s.tiles_in_memory() == []
    obj = s.new_object()
    mask = obj.add_click(500, 600)
    y0, x0, crop = obj.mask_region()
    np.testing.assert_array_equal(region_to_plane(obj.mask_region(), mask.shape), mask)
    with pytest.raises(ValueError, match="does not tile"):
        s.tile_window(0, TileKey(0, 0, 0))


def test_small_object_is_segmented_in_one_full_resolution_tile(mobile_sam):
    truth = disc(1000, 800, 25)
    s = Session(image_with(truth), mobile_sam)
    assert s.tiled and isinstance(s.store, TiledEmbeddingStore)
    events = []
    s.on_tile(lambda z, key, state: events.append((z, key, state)))
    obj = s.new_object()
    y0, x0, crop = obj.add_click(1000, 800, z=None, region=True)
    key = obj.tile()
    assert key.level == 0 and s.store.stats["computed"] == 1
    assert events == [(0, key, "embedding"), (0, key, "ready")] and s.tiles_in_memory() == [(0, key)]
    s.off_tile(events.append)  # not registered: nothing happens
    ty0, ty1, tx0, tx1 = s.tile_window(0, key)
    assert ty0 + 128 <= 1000 < ty1 - 128 and tx0 + 128 <= 800 < tx1 - 128  # the click well inside
    assert crop.shape[0] < 80 and crop.shape[1] < 80  # a region, not a plane
    plane = obj.mask()
    assert plane.shape == (H, W) and iou(plane, truth) > 0.85
    np.testing.assert_array_equal(plane, region_to_plane((y0, x0, crop), (H, W)))


def test_large_object_moves_to_a_coarser_level_and_is_not_cut(mobile_sam):
    truth = disc(1024, 800, 560)  # 1120 pixels across: no 1024 tile of level 0 holds it
    s = Session(image_with(truth), mobile_sam, zoom=False)  # the tiles' own history (its moves)
    obj = s.new_object()
    mask = obj.add_click(1024, 800)
    moves = obj.history(0).last_moves
    assert moves[0].level == 0 and obj.tile().level == 1, moves
    assert iou(mask, truth) > 0.9
    # the decoder's score of the placement's last click (what the zoom's doubt rule reads)
    assert 0.5 < obj.history(0).score <= 1.1


def test_undo_and_boxes_keep_working_in_tiled_mode(mobile_sam):
    small, big = disc(600, 500, 30), disc(1300, 900, 560)
    s = Session(image_with(small, big), mobile_sam)
    obj = s.new_object()
    first = obj.add_click(600, 500).copy()
    key = obj.tile()
    # a second positive click on the big disc: the clicks no longer fit in the small one's tile
    obj.add_click(1300, 900)
    assert obj.tile() != key
    np.testing.assert_array_equal(obj.undo(), first)
    assert obj.tile() == key and obj.clicks == [(0, 600.0, 500.0, True)]
    changed = obj.set_clicks([(0, 600, 500, True), (0, 640, 500, False)], region=True)
    y0, x0, crop = changed[0]
    assert crop.shape[0] < 100 and obj.tile() == key  # one step more on the same tile
    boxed = s.new_object()
    mask = boxed.set_box((560, 460, 640, 540))
    assert iou(mask, small) > 0.8 and boxed.tile().level == 0
    assert iou(boxed.add_click(600, 500), small) > 0.8
    assert iou(boxed.undo(), small) > 0.8 and boxed.box is not None


def test_tiled_stack_propagates_with_regions(mobile_sam):
    truths = [disc(1000 + 6 * z, 800 + 4 * z, 30 + 2 * z) for z in range(3)]
    stack = np.stack([image_with(t, seed=z) for z, t in enumerate(truths)])
    s = Session(ImageVolume(stack), mobile_sam)
    obj = s.new_object()
    obj.add_click(1006, 804, z=1)
    result = obj.propagate()
    assert isinstance(result.masks, RegionMasks) and sorted(result.masks) == [0, 1, 2]
    for z in (0, 2):
        assert iou(obj.mask(z), truths[z]) > 0.8
        assert obj.mask_region(z).crop.shape[0] < 100
    assert sorted(obj.volume_regions()) == [0, 1, 2]
    vol = obj.volume_mask()
    assert vol.shape == (3, H, W) and all(iou(vol[z], truths[z]) > 0.8 for z in range(3))
    assert s.store.stats["computed"] == 3  # one level-0 tile per slice
    stats = dict(s.store.stats)
    again = obj.propagate()  # nothing changed: every run is reused, no tile is even looked up
    assert s.store.stats == stats and again.masks.regions.keys() == result.masks.regions.keys()
    boxed = obj.propagate(prompt="point_box_logits", multimask=False)  # the other prompt modes work too
    assert sorted(boxed.masks) == [0, 1, 2] and all(iou(boxed.masks[z], truths[z]) > 0.7 for z in (0, 2))


def test_tiled_propagation_decodes_around_the_previous_mask_with_the_same_regions(mobile_sam, monkeypatch):
    """The logits of a propagated tile are upscaled around the previous mask only
    (``core/propagation/_decode.py``); the regions are those of the whole map."""
    from napari_focsam.core.propagation import _decode

    truths = [disc(1000 + 6 * z, 800 + 4 * z, 30 + 2 * z) for z in range(3)]
    stack = np.stack([image_with(t, seed=z) for z, t in enumerate(truths)])
    s = Session(ImageVolume(stack), mobile_sam)
    blocks = []
    real_block = _decode.block_logits
    monkeypatch.setattr(_decode, "block_logits", lambda *a, **k: blocks.append(1) or real_block(*a, **k))

    def regions():
        obj = s.new_object()
        obj.add_click(1006, 804, z=1)
        obj.propagate()
        got = {z: (r.y0, r.x0, r.crop.copy()) for z, r in obj.volume_regions().items()}
        s.remove_object(obj)
        return got

    block = regions()
    assert len(blocks) >= 2  # both propagated slices
    monkeypatch.setattr(_decode, "decode_around", lambda dec, feats, pe, sparse, dense, multimask, *a, **k:
                        dec(feats, pe, sparse, dense, multimask))
    whole = regions()
    assert sorted(block) == sorted(whole) == [0, 1, 2]
    for z in block:
        assert block[z][:2] == whole[z][:2] and np.array_equal(block[z][2], whole[z][2])


def test_tiled_propagation_stops_where_a_calibrated_decoder_doubts_its_mask(mobile_sam):
    """The propagation floor of a model with a calibrated IoU head (``propagation_thresholds``,
    read from its checkpoint) ends the object on tiled volumes as on plain ones: a slice whose
    mask the decoder scores below it is empty, and the run stops there."""
    truths = [disc(1000 + 6 * z, 800 + 4 * z, 30 + 2 * z) for z in range(3)]
    stack = np.stack([image_with(t, seed=z) for z, t in enumerate(truths)])
    s = Session(ImageVolume(stack), mobile_sam)
    assert mobile_sam.propagation_thresholds is None
    try:
        for floor, slices in ((10.0, [1]), (-10.0, [0, 1, 2])):  # above / below any score the head gives
            mobile_sam.propagation_thresholds = {"min_pred_iou": floor}
            obj = s.new_object()
            obj.add_click(1006, 804, z=1)
            result = obj.propagate()
            assert isinstance(result.masks, RegionMasks)
            assert [z for z in sorted(result.masks) if result.masks.region(z).crop.any()] == slices, floor
            if floor > 1:
                assert all("vanished" in why for why in result.stopped_reason.values()), result.stopped_reason
            s.remove_object(obj)
    finally:
        mobile_sam.propagation_thresholds = None


def test_tiled_propagation_stops_where_the_object_goes_out_of_focus(mobile_sam):
    """The out-of-focus stop on a tiled stack: a disc sharp on slices 1-3 and, on slices 0 and 4,
    its light blurred and dimmer; the decoder finds the blur, the outline rule ends the object."""
    from scipy import ndimage as ndi

    truth = disc(1000, 800, 40)
    sharp = image_with(truth)
    blurred = ndi.gaussian_filter(sharp.astype(np.float32) * 0.7, 8).clip(0, 255).astype(np.uint8)
    stack = np.stack([blurred, sharp, sharp, sharp, blurred])
    s = Session(ImageVolume(stack), mobile_sam)
    obj = s.new_object()
    obj.add_click(1000, 800, z=2)
    result = obj.propagate()
    assert isinstance(result.masks, RegionMasks) and result.z_range == (1, 3), result.stopped_reason
    assert all(why.startswith(f"faded at z={z}") for why, z in zip(result.stopped_reason.values(), (0, 4)))
    assert obj.propagate(edge_fade=None).z_range == (0, 4)  # the decoder does follow the blur


def test_tiled_disk_cache_is_signed_per_tile_resumable_and_detects_damage(tiny_focsam, tmp_path, caplog):
    img = image_with(disc(1000, 800, 25))
    pred = FocSAMPredictor(tiny_focsam)
    vol = ImageVolume(img)
    store = TiledEmbeddingStore(pred, vol, cache_dir=tmp_path)
    assert "-tiles-" in store.cache_path.name
    keys = [(0, k) for k in store.grid(0).keys()[:3]]
    done = []
    assert store.precompute(tiles=keys, progress=lambda d, t: done.append(d), cancelled=lambda: len(done) >= 2) == 2
    again = TiledEmbeddingStore(pred, ImageVolume(img), cache_dir=tmp_path)
    assert again.precompute(tiles=keys) == 1 and again.last_precompute["reused"] == 2  # resumed
    assert all(again.has_tile(0, k) for _, k in keys) and not again.has_tile(0, store.grid(0).keys()[3])
    torch.testing.assert_close(again.get_tile(0, keys[0][1]).features, store.get_tile(0, keys[0][1]).features)
    # a damaged chunk is detected by its checksum and recomputed
    third = TiledEmbeddingStore(pred, ImageVolume(img), cache_dir=tmp_path)
    third._ensure_disk()._features[third.unit(*keys[1])] = np.ones((256, 64, 64), np.float16)
    with caplog.at_level(logging.WARNING):
        third.get_tile(*keys[1])
    assert "damaged" in caplog.text and third.stats["computed"] == 1
    # other pixels in a tile: that tile (only) is recomputed
    changed = img.copy()
    changed[:10, :10] = 255
    fourth = TiledEmbeddingStore(pred, ImageVolume(changed, contrast_limits=vol.contrast_limits),
                                 cache_dir=tmp_path)
    assert fourth.cache_path == store.cache_path
    missing = fourth.missing(levels=[0])
    assert keys[0][1] == TileKey(0, 0, 0) and fourth.unit(*keys[0]) in missing
    assert fourth.unit(*keys[1]) not in missing and fourth.unit(*keys[2]) not in missing


@pytest.mark.parametrize("kwargs, words", [({"tile_size": 100}, "tile_size 100"), ({"halo": 600}, "halo 600"),
                                           ({"tile_size": 1000}, "multiple of 16")])
def test_nonsense_tiling_is_refused(tiny_focsam, kwargs, words):
    with pytest.raises(ValueError, match=words):
        Session(np.zeros((2048, 1600), np.uint8), tiny_focsam, **kwargs)


def test_regions_match_the_plain_post_processing():
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 256, 256) * 4 - 6
    logits[..., 100:140, 80:150] += 12
    plane = logits_to_mask(logits, (1024, 800), (1024, 800))
    y0, x0, values = tile_logits_values(logits, (1024, 800), (1024, 800))
    region = values_to_region(y0, x0, values, (0, 0), 1, (1024, 800))
    np.testing.assert_array_equal(region_to_plane(region, (1024, 800)), plane)
    assert region_iou(region, region_from_plane(plane)) == 1.0
    # a level twice as coarse: the plain post-processing at twice the size, up to rounding
    up = values_to_region(y0, x0, values, (0, 0), 2, (2048, 1600))
    plain2 = logits_to_mask(logits, (1024, 800), (2048, 1600))
    assert region_iou(up, region_from_plane(plain2)) > 0.98


def test_adopt_takes_tiles_only_from_a_store_with_the_same_tiling(tiny_focsam, tmp_path):
    pred = FocSAMPredictor(tiny_focsam)
    img = image_with(disc(1000, 800, 25))
    tiled = TiledEmbeddingStore(pred, ImageVolume(img))
    events = []
    tiled.add_listener(lambda z, key, state: events.append(state))
    tiled.get_tile(0, TileKey(0, 1, 1))
    assert events == ["embedding", "ready"]
    plain = EmbeddingStore(pred, ImageVolume(img))
    assert plain.adopt(tiled) == 0 and tiled.adopt(plain) == 0  # slices and tiles are other units
    assert TiledEmbeddingStore(pred, ImageVolume(img), halo=128).adopt(tiled) == 0
    same = TiledEmbeddingStore(pred, ImageVolume(img))
    assert same.adopt(tiled) == 1 and same.tiles_in_memory() == [(0, TileKey(0, 1, 1))]
    # a precompute to disk reports its tiles ready too (the widget shows them as done)
    disk = TiledEmbeddingStore(pred, ImageVolume(img), cache_dir=tmp_path)
    seen = []
    disk.add_listener(lambda z, key, state: seen.append((key, state)))
    disk.precompute(tiles=[(0, TileKey(1, 0, 0))])
    assert seen == [(TileKey(1, 0, 0), "embedding"), (TileKey(1, 0, 0), "ready")] and disk.in_memory() == []


def test_a_small_object_of_a_large_image_is_zoomed_at_full_resolution(mobile_sam):
    """On a tiled 2D image an object under 48 pixels across (a level-0 tile shows it at 1 canvas
    pixel per pixel) is decoded on a 512-pixel crop of full-resolution pixels, read as a window
    only; its masks stay regions; unticked, the tiles decode it."""
    from napari_focsam.core.prompting import ZoomedObject

    small, other = disc(700, 900, 14), disc(740, 945, 11)
    img = image_with(small, other)
    reads = []

    class Watched(ImageVolume):
        def read_region(self, z, y0, y1, x0, x1, level=0):
            reads.append((y1 - y0, x1 - x0))
            return super().read_region(z, y0, y1, x0, x1, level)

    s = Session(Watched(img), mobile_sam)
    assert s.tiled and s.zoom
    heard = []
    s.zoom_listener = lambda z, region: heard.append((z, region))
    obj = s.new_object()
    y0, x0, crop = obj.add_click(700, 900, region=True)
    hist = obj.history(0)
    assert isinstance(hist, ZoomedObject) and hist.window is not None and obj.tile() is None
    wy0, wy1, wx0, wx1 = hist.window
    assert (wy1 - wy0, wx1 - wx0) == (512, 512) and (512, 512) in reads
    assert max(h * w for h, w in reads) <= 1024 * 1024  # windows and tiles, never the plane
    assert crop.shape[0] < 60 and crop.shape[1] < 60
    assert len(heard) == 1 and heard[0][0] == 0 and heard[0][1].crop.any()  # the tile's answer, meanwhile
    zoomed = region_to_plane((y0, x0, crop), (H, W))
    assert iou(zoomed, small) > 0.85
    # a neighbour shares the crop: no second read of it
    n = len(reads)
    second = s.new_object()
    second.add_click(740, 945)
    assert second.history(0).window == hist.window and len(reads) == n
    # undo, then the same click without zoom: the tile decodes it
    assert not obj.undo(region=True)[2].any()
    s.zoom = False
    plain = s.new_object()
    plain.add_click(700, 900)
    assert type(plain.history(0)).__name__ == "TiledHistory" and plain.tile().level == 0
    assert iou(plain.mask(), small) > 0.6
