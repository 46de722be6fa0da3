"""The evaluation harness on large images: tiled, through the Session's object-adaptive scale."""

from __future__ import annotations

import numpy as np

from napari_focsam.core.prompting import Click, FocSAMPredictor
from napari_focsam.evaluation.runner import PredictorAdapter
from napari_focsam.evaluation.tiled import LargeImageAdapter


def test_large_images_are_tiled_and_small_ones_go_to_the_plain_adapter(mobile_sam):
    adapter = LargeImageAdapter(PredictorAdapter(FocSAMPredictor(mobile_sam)))
    yy, xx = np.ogrid[:2048, :1600]
    truth = (yy - 1500) ** 2 + (xx - 300) ** 2 < 28 ** 2
    img = np.random.default_rng(0).normal(30, 4, truth.shape).clip(0, 255).astype(np.uint8)
    img[truth] = 200
    adapter.set_image(img)
    adapter.reset()
    mask = adapter.predict([Click(1500.0, 300.0, True)])
    assert mask.shape == truth.shape
    assert np.count_nonzero(mask & truth) / np.count_nonzero(mask | truth) > 0.85
    assert adapter.stats == {"tiled_images": 1, "tiles_embedded": 1}
    assert adapter.timings.seconds["embedding"] > 0 and adapter.timings.seconds["decoder"] > 0
    small = img[1400:1600, 200:400]
    adapter.set_image(small)
    adapter.reset()
    assert adapter.session is None and adapter.predict([Click(100.0, 100.0, True)]).shape == (200, 200)
    assert adapter.stats["tiled_images"] == 1
