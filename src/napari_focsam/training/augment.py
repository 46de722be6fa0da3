# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Augmentation of training images and their masks, and the mask resize it uses.

Augmentations (``AugmentConfig``) are drawn from ``default_rng([cache_seed,
crc32(dataset/image_id), copy])`` (independent of build order), and applied identically to the
image and its masks: horizontal / vertical flips, quarter turns, and a zoom-in crop.  As SAM
always resizes the longest side to 1024, a crop *is* the scale augmentation.  Photometric
changes (contrast, brightness, gamma; :func:`photometric`) then alter the image only; they are
drawn after the geometric ones, so a config without them gives the same copies as before.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.datasets import EvalObject
from .config import AugmentConfig

__all__ = ["AugmentedSample", "augment_sample", "dic_relief", "dynamic_range", "item_rng", "microscopy_photometric",
           "photometric", "resize_mask"]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-weighted (antialiased bilinear) resize of a binary mask, thresholded at 0.5."""
    if tuple(mask.shape) == tuple(size):
        return np.asarray(mask, dtype=bool)
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    down = size[0] < mask.shape[0] or size[1] < mask.shape[1]
    r = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=down)
    return (r[0, 0] >= 0.5).numpy()


@dataclass
class AugmentedSample:
    image: np.ndarray  # (H', W', 3) uint8
    objects: list[EvalObject]
    params: dict


def photometric(image: np.ndarray, aug: AugmentConfig, rng: np.random.Generator,
                dynamic: bool = False) -> tuple[np.ndarray, dict]:
    """Random contrast / brightness / gamma of an (H, W, 3) uint8 image (see :class:`AugmentConfig`).

    Each change is applied with probability ``aug.photometric_prob`` (drawn in that order).
    Contrast scales the intensities about the image mean by ``exp(U(-contrast, contrast))``,
    brightness adds ``U(-brightness, brightness) * 255``, gamma maps ``x / 255 -> (x / 255) ** g``
    with ``log g ~ U(log lo, log hi)``; the result is clipped to 0..255.  ``dynamic``: then the
    input's dynamic range (:func:`dynamic_range`, a range copy).  Returns the (H, W, 3) uint8
    image and the drawn parameters (``None`` for the changes not applied).
    """
    p = float(aug.photometric_prob)
    params: dict[str, Any] = {"contrast": None, "brightness": None, "gamma": None}
    if p <= 0 and not dynamic:
        return image, params
    x = image.astype(np.float32)
    if rng.random() < p and aug.contrast > 0:
        c = float(np.exp(rng.uniform(-aug.contrast, aug.contrast)))
        m = float(x.mean())
        x = (x - m) * c + m
        params["contrast"] = round(c, 4)
    if rng.random() < p and aug.brightness > 0:
        b = float(rng.uniform(-aug.brightness, aug.brightness)) * 255.0
        x = x + b
        params["brightness"] = round(b, 2)
    lo, hi = aug.gamma_range
    if rng.random() < p and (lo != 1.0 or hi != 1.0):
        g = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        x = 255.0 * np.power(np.clip(x, 0, 255) / 255.0, g)
        params["gamma"] = round(g, 4)
    x = microscopy_photometric(x, aug, rng, params)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if dynamic:
        out, params["range"] = dynamic_range(out, rng)
    return out, params


#: :func:`dynamic_range`: a dim 8-bit image spans this many grey levels (drawn uniformly) ...
DIM_LEVELS = (16, 96)
#: ... from a black level drawn in 0..this
DIM_BLACK = 48
#: a 16-bit image's bright outliers cover this fraction of the pixels (drawn log-uniformly)
OUTLIER_FRACTION = (0.002, 0.015)
#: ... and are this many times as bright as the brightest object pixel
OUTLIER_GAIN = (1.5, 8.0)


def dynamic_range(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """An (H, W, 3) uint8 image as the product would see it from a file of another dynamic range.

    The product feeds uint8 data to the encoder as it is, and stretches any other data from its
    0.5th to its 99.5th percentile (:func:`~napari_focsam.core.images.to_rgb_uint8`). So a
    microscopist's file reaches the model in one of two shapes this draws with equal odds:

    - ``"dim8"``: an 8-bit acquisition that uses a fraction of its range: the image squeezed
      into :data:`DIM_LEVELS` grey levels above a black level in ``0..DIM_BLACK``, rounded
      (the banding of so few levels included);
    - ``"outliers16"``: a 16-bit (or float) acquisition with bright outliers (hot pixels,
      debris, a dead cell): the image scaled to a random 16-bit gain and offset, square blobs
      (3-13 pixels a side) covering :data:`OUTLIER_FRACTION` of the pixels set :data:`OUTLIER_GAIN` times brighter
      than the image's maximum, then stretched by the product's own conversion. When the
      blobs cover more than 0.5 % of the pixels, the upper percentile lands on them and the
      objects come out dim, as they do in the product.

    Returns the (H, W, 3) uint8 image and the drawn parameters (for the cache's item record).
    """
    from scipy.ndimage import binary_dilation

    from ..core.images import to_rgb_uint8

    x = image.astype(np.float32)
    if rng.random() < 0.5:
        span = float(rng.uniform(*DIM_LEVELS))
        black = float(rng.uniform(0, DIM_BLACK))
        out = np.rint(black + x * (span / 255.0))
        return np.clip(out, 0, 255).astype(np.uint8), ["dim8", round(black, 1), round(span, 1)]
    gain, offset = float(rng.uniform(8.0, 60.0)), float(rng.uniform(50.0, 2000.0))
    raw = x.mean(axis=-1) * gain + offset
    H, W = raw.shape
    frac = float(np.exp(rng.uniform(np.log(OUTLIER_FRACTION[0]), np.log(OUTLIER_FRACTION[1]))))
    side = 2 * int(rng.integers(1, 7)) + 1  # square blobs of 3 .. 13 pixels a side
    seeds = rng.random((H, W)) < frac / side**2
    blobs = binary_dilation(seeds, np.ones((side, side), bool))
    level = float(raw.max()) * float(rng.uniform(*OUTLIER_GAIN))
    raw[blobs] = level
    raw16 = np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
    return to_rgb_uint8(raw16), ["outliers16", round(gain, 2), round(offset, 1), round(frac, 4), side]


def microscopy_photometric(x: np.ndarray, aug: AugmentConfig, rng: np.random.Generator,
                           params: dict[str, Any]) -> np.ndarray:
    """Inversion, blur and noise of an (H, W, 3) float32 image in 0..255 (see :class:`AugmentConfig`).

    Each is drawn only when configured (``invert > 0``, ``blur_sigma[1] > 0``, ``noise_std > 0``),
    so configs without them consume no random numbers here. Writes the drawn values into
    ``params`` (``invert``, ``blur``, ``noise``) and returns the (H, W, 3) float32 image.
    """
    if aug.invert > 0 and rng.random() < aug.invert:
        x = 255.0 - np.clip(x, 0, 255)
        params["invert"] = True
    lo, hi = aug.blur_sigma
    if hi > 0 and rng.random() < aug.photometric_prob:
        from scipy.ndimage import gaussian_filter

        s = float(rng.uniform(lo, hi))
        x = gaussian_filter(x, sigma=(s, s, 0))
        params["blur"] = round(s, 3)
    if aug.noise_std > 0 and rng.random() < aug.photometric_prob:
        sd = float(rng.uniform(0, aug.noise_std)) * 255.0
        x = x + rng.normal(0.0, sd, size=x.shape[:2])[..., None].astype(np.float32)
        params["noise"] = round(sd, 2)
    if aug.relief > 0 and rng.random() < aug.relief:
        angle, gain, keep = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(25, 50)), float(rng.uniform(0, 0.3))
        x = dic_relief(x, angle, gain, keep)
        params["relief"] = [round(angle, 3), round(gain, 1), round(keep, 3)]
    return x


def dic_relief(x: np.ndarray, angle: float, gain: float, keep: float = 0.0) -> np.ndarray:
    """A DIC-like (Nomarski) view of an (H, W, 3) float image in 0..255.

    DIC shows the derivative of the optical path along its shear direction: objects look lit
    from one side and shadowed on the other, on a grey background. Here the grey image
    (smoothed with sigma 1) is differentiated along ``angle`` (radians), the derivative is
    scaled to a standard deviation of ``gain`` grey levels about 128, and ``keep`` times the
    image's own contrast (about its mean) is added back (DIC keeps a little absorption).

    Returns:
      (H, W, 3) float32.
    """
    from scipy.ndimage import gaussian_filter, sobel

    g = gaussian_filter(x.mean(axis=-1).astype(np.float32), 1.0)
    d = np.cos(angle) * sobel(g, axis=1) + np.sin(angle) * sobel(g, axis=0)
    d = d / (float(d.std()) + 1e-6) * gain
    out = 128.0 + d + keep * (g - float(g.mean()))
    return np.repeat(out[..., None], 3, axis=-1).astype(np.float32)


def _window_on_object(objs, areas, ch: int, cw: int, rng: np.random.Generator,
                      fallback: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a ``ch`` x ``cw`` window that holds a random object's bounding box
    when it fits (anywhere along the room left), else centred on the object; ``fallback`` when
    there is no object."""
    alive = [i for i, a in enumerate(areas) if a]
    if not alive:
        return fallback
    gt = objs[alive[int(rng.integers(len(alive)))]].gt
    H, W = gt.shape
    ys, xs = np.nonzero(gt)

    def corner(lo: int, hi: int, size: int, n: int) -> int:
        a, b = max(0, hi + 1 - size), min(lo, n - size)
        if a > b:  # larger than the window: centre it on the object
            return int(min(max((lo + hi + 1 - size) // 2, 0), n - size))
        return int(rng.integers(a, b + 1))

    return corner(int(ys.min()), int(ys.max()), ch, H), corner(int(xs.min()), int(xs.max()), cw, W)


def item_rng(seed: int, dataset: str, image_id: str, copy: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(f"{dataset}/{image_id}".encode()), int(copy)])


def augment_sample(
    image: np.ndarray,
    objects: Sequence[EvalObject],
    aug: AugmentConfig,
    rng: np.random.Generator,
    identity: bool = False,
    zoom: bool = False,
    dynamic: bool = False,
) -> AugmentedSample:
    """Flip / rotate / crop an image and its masks identically, then change the image's
    intensities (:func:`photometric`; see :class:`AugmentConfig`).

    Objects that keep less than ``aug.min_keep_fraction`` of their area after the crop are
    dropped; a crop that would drop every object is redrawn (10 tries, then no crop).  The
    flips / turn / crop decisions are redrawn until at least one applies, so an augmented copy
    is never the plain image again (unless every probability is 0).  ``zoom``: always crop, with
    sides from ``aug.zoom_scale`` (a zoom copy, see :attr:`AugmentConfig.zoom_from`).
    ``dynamic``: the image ends in another dynamic range (:func:`dynamic_range`; a range copy,
    see :attr:`AugmentConfig.range_from`).
    """
    params: dict[str, Any] = {"hflip": False, "vflip": False, "rot90": 0, "crop": None}
    if identity:
        return AugmentedSample(image, list(objects), params)

    def geo(a: np.ndarray) -> np.ndarray:
        if params["hflip"]:
            a = a[:, ::-1]
        if params["vflip"]:
            a = a[::-1]
        if params["rot90"]:
            a = np.rot90(a, params["rot90"])
        return a

    # an augmented copy must differ from copy 0: redraw until some transformation is drawn
    for _ in range(20):
        params["hflip"] = bool(rng.random() < aug.hflip)
        params["vflip"] = bool(rng.random() < aug.vflip)
        params["rot90"] = int(rng.integers(1, 4)) if rng.random() < aug.rot90 else 0
        do_crop = bool(rng.random() < aug.crop_prob)
        if do_crop or params["hflip"] or params["vflip"] or params["rot90"]:
            break
    else:
        do_crop = aug.crop_scale[0] < 1.0
    img = geo(image)
    objs = [EvalObject(geo(o.gt), None if o.ignore is None else geo(o.ignore), o.object_id) for o in objects]
    H, W = img.shape[:2]
    areas = [int(o.gt.sum()) for o in objs]
    if zoom:
        do_crop = True
    if do_crop:
        lo, hi = aug.zoom_scale if zoom else aug.crop_scale
        for _ in range(10):
            ch = max(16, int(round(rng.uniform(lo, hi) * H)))
            cw = max(16, int(round(rng.uniform(lo, hi) * W)))
            y0 = int(rng.integers(0, H - ch + 1))
            x0 = int(rng.integers(0, W - cw + 1))
            if zoom:  # a window around a random object (a small window rarely holds one by chance)
                y0, x0 = _window_on_object(objs, areas, ch, cw, rng, (y0, x0))
            kept = [
                i for i, o in enumerate(objs)
                if areas[i] and o.gt[y0 : y0 + ch, x0 : x0 + cw].sum() >= aug.min_keep_fraction * areas[i]
            ]
            if kept:
                params["crop"] = [y0, x0, ch, cw]
                img = img[y0 : y0 + ch, x0 : x0 + cw]
                objs = [
                    EvalObject(
                        objs[i].gt[y0 : y0 + ch, x0 : x0 + cw],
                        None if objs[i].ignore is None else objs[i].ignore[y0 : y0 + ch, x0 : x0 + cw],
                        objs[i].object_id,
                    )
                    for i in kept
                ]
                break
    img, photo = photometric(np.ascontiguousarray(img), aug, rng, dynamic=dynamic)
    params.update({k: v for k, v in photo.items() if v is not None})
    img = np.ascontiguousarray(img)
    objs = [
        EvalObject(np.ascontiguousarray(o.gt),
                   None if o.ignore is None else np.ascontiguousarray(o.ignore), o.object_id)
        for o in objs
    ]
    return AugmentedSample(img, objs, params)
