"""Training additions: microscopy photometric augmentation (inversion, blur, noise)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.training.augment import photometric
from napari_focsam.training.config import AugmentConfig, config_from_dict


def _image():
    return np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_inversion_maps_x_to_255_minus_x():
    img = _image()
    out, params = photometric(img, AugmentConfig(photometric_prob=1.0, invert=1.0), np.random.default_rng(0))
    assert params["invert"] is True
    np.testing.assert_array_equal(out, 255 - img)


def test_blur_and_noise_are_seeded_and_change_the_image():
    img = _image()
    aug = AugmentConfig(photometric_prob=1.0, blur_sigma=(1.0, 2.0), noise_std=0.05)
    a, pa = photometric(img, aug, np.random.default_rng(5))
    b, pb = photometric(img, aug, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert pa == pb and 1.0 <= pa["blur"] <= 2.0 and pa["noise"] > 0
    assert a.dtype == np.uint8 and a.shape == img.shape and not np.array_equal(a, img)
    # blur lowers the pixel-to-pixel variation of a noise image
    blurred, _ = photometric(img, AugmentConfig(photometric_prob=1.0, blur_sigma=(2.0, 2.0)), np.random.default_rng(0))
    assert np.abs(np.diff(blurred.astype(float), axis=1)).mean() < np.abs(np.diff(img.astype(float), axis=1)).mean()


def test_configs_without_them_draw_the_same_numbers_as_before():
    img = _image()
    old = AugmentConfig(photometric_prob=0.7, brightness=0.1, contrast=0.4, gamma_range=(0.5, 2.0))
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    photometric(img, old, rng_a)
    photometric(img, old, rng_b)
    assert rng_a.random() == rng_b.random()
    out, params = photometric(img, old, np.random.default_rng(9))
    assert "invert" not in params and "blur" not in params and "noise" not in params


def test_config_reads_and_checks_the_new_keys():
    src = {"dataset": "yeast_phase", "augment": {"invert": 0.3, "blur_sigma": [0.5, 2.0], "noise_std": 0.04}}
    cfg = config_from_dict({"data": {"train": [src]}, "sim": {"gamma": {"natural": 0.8},
                                                              "gamma_refine": {"natural": 0.6}}})
    assert cfg.data.train[0].augment.blur_sigma == (0.5, 2.0)
    bad = {"dataset": "yeast_phase", "augment": {"blur_sigma": [2.0, 1.0]}}
    with pytest.raises(ValueError, match="blur_sigma"):
        config_from_dict({"data": {"train": [bad]}, "sim": {"gamma": {"natural": 0.8},
                                                            "gamma_refine": {"natural": 0.6}}})
