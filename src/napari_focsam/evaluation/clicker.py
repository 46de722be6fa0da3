"""Deterministic click simulator of the FocSAM / RITM benchmark protocol.

The rule (``../shared/design/focsam.md`` §5.2), reimplemented from its description:

* ``FN = gt & ~pred`` (missed object) and ``FP = pred & ~gt`` (false positive), both restricted
  to non-ignored pixels and with the already-clicked pixels removed (a clicked pixel becomes a
  hole, i.e. boundary, in both error maps).
* Each error map gets an exact Euclidean distance transform
  (:func:`scipy.ndimage.distance_transform_edt`) computed on the map padded with a one-pixel
  zero border, so that the image border counts as boundary. (The map is first cropped to its
  bounding box; the result is identical and faster.)
* The click is positive iff ``max DT(FN) > max DT(FP)``; ties, including ``0 == 0``, are
  negative. When both maps are empty the prediction is perfect and no click is returned.
* Candidates: with ``inner_k == 1`` (test protocol) only the pixels where the chosen distance map
  reaches its maximum; with ``inner_k > 1`` (training) every pixel whose distance exceeds
  ``max / inner_k``.
* Tie breaking: the candidates are listed in raster (row-major) order and one is drawn with
  ``rng.choice``. :func:`next_click` uses a *fresh* ``np.random.default_rng(seed)`` per call
  (default seed 42) unless an explicit generator is passed, so a click depends only on
  ``(gt, pred, ignore, clicked)`` and never on how many objects were evaluated before it.
  When a single pixel is the maximum (the usual case) there is no randomness at all.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from ..core.prompting import Click  # one click type for the engine, the harness and training

__all__ = [
    "DEFAULT_SEED",
    "Click",
    "ClickSimulator",
    "clicked_mask",
    "error_distance_map",
    "next_click",
]

DEFAULT_SEED = 42


def _as_bool(mask, shape=None, name="mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2D, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    return arr.astype(bool, copy=False)


def clicked_mask(clicked, shape) -> np.ndarray:
    """Boolean mask of already-clicked pixels.

    ``clicked`` may be ``None``, a boolean mask of ``shape``, or an iterable of :class:`Click`
    objects or ``(y, x[, ...])`` tuples. Out-of-image clicks are ignored.
    """
    out = np.zeros(shape, dtype=bool)
    if clicked is None:
        return out
    if isinstance(clicked, np.ndarray) and clicked.ndim == 2:
        return _as_bool(clicked, shape, "clicked")
    for c in clicked:
        # sub-pixel clicks (napari's) mark the pixel they fall in (pixel i spans i +- 0.5)
        y, x = (c.y, c.x) if isinstance(c, Click) else (c[0], c[1])
        y, x = int(np.floor(float(y) + 0.5)), int(np.floor(float(x) + 0.5))
        if 0 <= y < shape[0] and 0 <= x < shape[1]:
            out[y, x] = True
    return out


def error_distance_map(error: np.ndarray) -> tuple[np.ndarray, tuple[int, int], float]:
    """Exact EDT of a boolean error map with the image border counted as boundary.

    Returns ``(dt, (y0, x0), max)`` where ``dt`` covers the bounding box of ``error`` whose top-left
    corner is ``(y0, x0)`` in image coordinates. An empty map gives an empty ``dt`` and max 0.
    Equivalent to ``distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]`` restricted to the box.
    """
    rows = np.flatnonzero(error.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 0)), (0, 0), 0.0
    cols = np.flatnonzero(error.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    crop = np.pad(error[y0:y1, x0:x1], 1, mode="constant", constant_values=False)
    dt = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    return dt, (y0, x0), float(dt.max())


def next_click(
    gt,
    pred,
    ignore=None,
    clicked=None,
    *,
    inner_k: float = 1.0,
    rng: np.random.Generator | None = None,
    seed: int = DEFAULT_SEED,
) -> Click | None:
    """Next simulated click for prediction ``pred`` of ground truth ``gt`` (§5.2).

    Parameters
    ----------
    gt, pred : (H, W) array-like, interpreted as bool.
    ignore : optional (H, W) bool mask of pixels never clicked (e.g. GrabCut's 128 band).
    clicked : previous clicks (list of :class:`Click` / ``(y, x)``) or a bool mask; these pixels
        are removed from both error maps.
    inner_k : 1.0 at test time (arg-max pixels only); > 1 draws any pixel with
        ``DT > max / inner_k`` (training).
    rng : generator used for the draw; when None a fresh ``default_rng(seed)`` is used, which
        makes the result a pure function of the inputs.

    Returns
    -------
    The :class:`Click`, or ``None`` when there is no error pixel left (perfect prediction).
    """
    if inner_k < 1.0:
        raise ValueError(f"inner_k must be >= 1, got {inner_k}")
    gt = _as_bool(gt, name="gt")
    pred = _as_bool(pred, gt.shape, "pred")
    valid = ~clicked_mask(clicked, gt.shape)
    if ignore is not None:
        valid &= ~_as_bool(ignore, gt.shape, "ignore")

    fn = gt & ~pred & valid
    fp = pred & ~gt & valid
    fn_dt, fn_off, fn_max = error_distance_map(fn)
    fp_dt, fp_off, fp_max = error_distance_map(fp)
    if fn_max == 0.0 and fp_max == 0.0:
        return None

    is_positive = fn_max > fp_max  # ties -> negative
    dt, (y0, x0), dmax = (fn_dt, fn_off, fn_max) if is_positive else (fp_dt, fp_off, fp_max)
    if inner_k == 1.0:
        cand = dt >= dmax
    else:
        cand = dt > dmax / inner_k
    ys, xs = np.nonzero(cand)  # raster order
    if ys.size == 1:
        i = 0
    else:
        gen = rng if rng is not None else np.random.default_rng(seed)
        i = int(gen.integers(ys.size))
    return Click(int(ys[i]) + y0, int(xs[i]) + x0, bool(is_positive))


class ClickSimulator:
    """Stateful click generator for evaluation and training.

    ``first_click`` places a click inside the GT with ``first_inner_k`` (1.0: the deepest interior
    point, as in both training and test); ``next`` applies :func:`next_click` with ``inner_k``
    (1.0 at test, 1.7 in FocSAM training). Draws use one generator seeded once with ``seed``;
    call :meth:`reset` to restart the stream.
    """

    def __init__(self, inner_k: float = 1.0, first_inner_k: float = 1.0, seed: int = DEFAULT_SEED):
        if inner_k < 1.0 or first_inner_k < 1.0:
            raise ValueError("inner_k values must be >= 1")
        self.inner_k = float(inner_k)
        self.first_inner_k = float(first_inner_k)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.seed = seed
        self.rng = np.random.default_rng(self.seed)

    def first_click(self, gt, ignore=None) -> Click | None:
        gt = _as_bool(gt, name="gt")
        return next_click(
            gt, np.zeros_like(gt), ignore, None, inner_k=self.first_inner_k, rng=self.rng
        )

    def next(self, gt, pred, ignore=None, clicked: Iterable | np.ndarray | None = None) -> Click | None:
        return next_click(gt, pred, ignore, clicked, inner_k=self.inner_k, rng=self.rng)
