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


def test_dic_relief_shows_the_derivative_along_the_shear():
    """A bright disc becomes lit on one side and shadowed on the other, on a grey background,
    and turning the shear by 180 degrees swaps the two sides."""
    import numpy as np

    from napari_focsam.training.augment import dic_relief

    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 100).astype(np.float32) * 200.0
    img = np.repeat(disc[..., None], 3, axis=-1)
    out = dic_relief(img, 0.0, 40.0)
    assert out.shape == img.shape and out.dtype == np.float32
    left, right, bg = out[32, 22, 0], out[32, 42, 0], out[5, 5, 0]
    assert abs(bg - 128) < 1 and left > 140 and right < 116  # rising edge bright, falling edge dark
    flipped = dic_relief(img, np.pi, 40.0)
    assert flipped[32, 22, 0] < 116 and flipped[32, 42, 0] > 140
    assert abs(float(out[..., 0].mean()) - 128) < 2  # zero-mean relief on grey


def test_relief_is_drawn_only_when_configured():
    import numpy as np

    from napari_focsam.training.augment import microscopy_photometric
    from napari_focsam.training.config import AugmentConfig

    x = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    p: dict = {}
    microscopy_photometric(x.copy(), AugmentConfig(), np.random.default_rng(1), p)
    assert "relief" not in p
    p = {}
    microscopy_photometric(x.copy(), AugmentConfig(relief=1.0), np.random.default_rng(1), p)
    assert len(p["relief"]) == 3


def test_zoom_copies_always_crop_to_the_zoom_scale():
    import numpy as np

    from napari_focsam.evaluation.datasets import EvalObject
    from napari_focsam.training.augment import augment_sample
    from napari_focsam.training.config import AugmentConfig

    img = np.zeros((400, 400, 3), np.uint8)
    gt = np.zeros((400, 400), bool)
    gt[190:210, 190:210] = True
    aug = AugmentConfig(copies=4, crop_prob=0.0, zoom_from=2, zoom_scale=(0.2, 0.3))
    assert not aug.is_zoom_copy(1) and aug.is_zoom_copy(2) and aug.is_zoom_copy(3)
    assert not AugmentConfig().is_zoom_copy(5)
    for seed in range(5):
        out = augment_sample(img, [EvalObject(gt, None, "a")], aug, np.random.default_rng(seed), zoom=True)
        y0, x0, ch, cw = out.params["crop"]
        assert 80 <= ch <= 120 and 80 <= cw <= 120 and out.objects[0].gt.sum() == 400
        plain = augment_sample(img, [EvalObject(gt, None, "a")], aug, np.random.default_rng(seed))
        assert plain.params["crop"] is None  # crop_prob 0: only the zoom copies crop


def _cells_image():
    """(96, 128, 3) uint8: grey discs on a dark, slightly noisy background, and their masks."""
    rng = np.random.default_rng(3)
    img = rng.normal(30, 4, (96, 128)).clip(0, 255)
    yy, xx = np.mgrid[:96, :128]
    discs = [(30, 30), (60, 90), (70, 40)]
    masks = []
    for cy, cx in discs:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2
        img[m] = 180 + rng.normal(0, 5, m.sum())
        masks.append(m)
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=-1), masks


def test_dynamic_range_draws_a_dim_8_bit_image_or_a_stretched_16_bit_one_with_outliers():
    from napari_focsam.core.images import to_rgb_uint8
    from napari_focsam.training.augment import DIM_BLACK, DIM_LEVELS, dynamic_range

    img, masks = _cells_image()
    kinds = set()
    for seed in range(12):
        out, params = dynamic_range(img, np.random.default_rng(seed))
        again, _ = dynamic_range(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)  # seeded
        assert out.dtype == np.uint8 and out.shape == img.shape
        kinds.add(params[0])
        inside, outside = out[masks[0], 0].astype(float), out[~np.any(masks, axis=0), 0].astype(float)
        if params[0] == "dim8":
            black, span = params[1], params[2]
            # used as is by the product: few grey levels above a black level, objects still brighter
            assert out.min() >= np.floor(black) and out.max() <= np.ceil(black + span) <= DIM_BLACK + DIM_LEVELS[1] + 1
            assert len(np.unique(out)) <= span + 2
            assert np.median(inside) > np.median(outside)
        else:
            # the product's own stretch of a 16-bit image whose brightest pixels are the outliers:
            # full range, the blobs white, the cells below them but above the background
            assert params[0] == "outliers16" and out.max() == 255 and out.min() == 0
            assert np.median(inside) > np.median(outside)
            assert np.median(inside) < 255
    assert kinds == {"dim8", "outliers16"}
    # the 16-bit branch goes through the product's conversion (not a copy of it)
    raw = np.zeros((64, 64), np.uint16)
    raw[20:40, 20:40] = 1000
    np.testing.assert_array_equal(to_rgb_uint8(raw)[..., 0], (raw > 0) * 255)


def test_range_copies_follow_range_from_and_are_not_zoom_copies():
    from napari_focsam.evaluation.datasets import EvalObject
    from napari_focsam.training.augment import augment_sample

    aug = AugmentConfig(copies=6, zoom_from=3, range_from=5, photometric_prob=0.0)
    assert [aug.is_range_copy(k) for k in range(6)] == [False] * 5 + [True]
    assert [aug.is_zoom_copy(k) for k in range(6)] == [False, False, False, True, True, False]
    assert not AugmentConfig(copies=3).is_range_copy(2)
    img, masks = _cells_image()
    objs = [EvalObject(m, None, str(i)) for i, m in enumerate(masks)]
    out = augment_sample(img, objs, aug, np.random.default_rng(0), dynamic=True)
    assert out.params["range"][0] in ("dim8", "outliers16")
    plain = augment_sample(img, objs, aug, np.random.default_rng(0))
    assert "range" not in plain.params
    # the geometry is drawn before the range: the same seed gives the same flips and crop
    assert {k: out.params[k] for k in ("hflip", "vflip", "rot90", "crop")} == \
        {k: plain.params[k] for k in ("hflip", "vflip", "rot90", "crop")}
    with pytest.raises(ValueError, match="range_from"):
        config_from_dict({"data": {"root": ".", "train": [{"dataset": "x", "augment": {"range_from": 0}}]}})
