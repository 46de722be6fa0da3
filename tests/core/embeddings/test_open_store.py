"""One store factory for the session and the command line: whole planes or tiles."""

from __future__ import annotations

import numpy as np

from engine_helpers import make_fast_focsam
from napari_focsam.core.embeddings import EmbeddingStore, TiledEmbeddingStore, open_store
from napari_focsam.core.images import ImageVolume
from napari_focsam.core.prompting import FocSAMPredictor
from napari_focsam.core.session import Session


def test_open_store_tiles_large_images_only_unless_told():
    pred = FocSAMPredictor(make_fast_focsam())
    small, large = ImageVolume(np.zeros((3, 64, 80), np.uint8)), ImageVolume(np.zeros((1800, 600), np.uint8))
    plain = open_store(pred, small)
    assert type(plain) is EmbeddingStore and not plain.tiled
    assert plain.unit_name == "slices" and plain.n_units == 3
    tiled = open_store(pred, large)
    assert isinstance(tiled, TiledEmbeddingStore) and tiled.tiled and tiled.unit_name == "tiles"
    assert tiled.n_units == tiled.tiles_per_slice
    assert open_store(pred, small, tiles=True).tiled and not open_store(pred, large, tiles=False).tiled


def test_the_session_uses_the_factory_and_one_slice_mode():
    img = np.zeros((64, 80), np.uint8)
    for tiles in (False, True):
        s = Session(ImageVolume(img), make_fast_focsam(), tiles=tiles)
        assert s.tiled is s.store.tiled is tiles
        assert type(s.slices).__name__ == ("TiledSlices" if tiles else "PlaneSlices")
        assert s.tiles_in_memory() == []
