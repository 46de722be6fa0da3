"""Parameters of automatic segmentation ("segment all"), torch-free.

They live apart from :mod:`~napari_focsam.core.automatic._segment_all` so that the command line and the widget can build their
options without importing torch. The defaults were chosen with
``benchmarks/bench_segment_all.py`` on fluorescence nuclei (MobileSAM vit_t, CPU, 2 threads on
a shared 2-core machine; F1 at IoU 0.5 / mean matched IoU / seconds):

=============================  =====================  ==============================
parameters                     stardist 2D (125)      Coelho dna-33, 34, 35 (mean)
=============================  =====================  ==============================
32 points, 1 tile, all points  0.718 / 0.772 / 446 s  -
32 points, 1 tile              0.694 / 0.781 / 88 s   -
48 points, 1 tile, no split    0.750 / 0.782 / 59 s   0.947 / 0.901 / 53 s
48 points, 1 tile (default)    0.756 / 0.782 / 149 s  0.947 / 0.901 / 95 s
48 points, 2 tiles, no split   0.773 / 0.837 / 114 s  0.924 / 0.900 / 73 s
48 points, 2 tiles             0.788 / 0.839 / 212 s  0.940 / 0.900 / 192 s
=============================  =====================  ==============================

"all points" decodes every grid point (``skip_background=False``): 5x the time for +0.02 F1
at 32 points. 48 points per side leave no nucleus of the stardist image without a point on
it. Two tiles (each crop magnified 2x) give better masks of small nuclei (mean IoU +0.05 on
stardist) but cut some large Coelho nuclei at tile edges, for twice the time: an option.
Thresholds: F1 on stardist moved by less than 0.01 over predicted IoU 0.6-0.88, stability
0.8-0.95 and NMS IoU 0.3-0.7; most misses are touching nuclei that the decoder returns as
one mask with a high predicted IoU; splitting clumps (the default) recovers a few. Timings
varied 2-3x with the load of the shared machine (the split runs ran under a heavier load; the
split itself adds one decoder batch per clump). These seconds predate the decoder passes of 8
points and the deepest-first order (2-3.5x faster on nuclei): current figures are in
``docs/performance.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["DEFAULT_PRED_IOU_THRESH", "DEFAULT_STABILITY_THRESH", "SegmentAllParams"]

#: SAM's decoders (and ``focsam_t``, which keeps MobileSAM's): the predicted-IoU threshold
DEFAULT_PRED_IOU_THRESH = 0.8
#: SAM's decoders: the stability-score threshold
DEFAULT_STABILITY_THRESH = 0.9


@dataclass(frozen=True)
class SegmentAllParams:
    """What :func:`~napari_focsam.core.automatic._segment_all.segment_all` does, and how strictly it filters.

    Attributes
    ----------
    points_per_side : int
        The grid of point prompts has this many points along each side of the image (spread
        over the tiles when ``tiles`` > 1). Objects smaller than the grid spacing can be missed.
    points_per_batch : int
        Point prompts decoded at once (memory: about 12 MiB per point on the CPU).
    pred_iou_thresh : float or None
        Candidate masks whose IoU predicted by the decoder is below this are dropped. None: the
        model's own calibration (:meth:`for_model`), :data:`DEFAULT_PRED_IOU_THRESH` for SAM's
        decoders.
    stability_thresh : float or None
        Candidate masks whose stability score (area at logit > +offset / area at logit >
        -offset) is below this are dropped. None: the model's own calibration,
        :data:`DEFAULT_STABILITY_THRESH` for SAM's decoders.
    stability_offset : float
        The logit offset of the stability score.
    nms_iou_thresh : float
        Of two masks overlapping with a mask IoU above this, the lower-scoring one is dropped.
    min_area : int
        Objects with fewer pixels (after overlaps are resolved) are dropped.
    max_area_fraction : float
        Masks covering more than this fraction of the image (or tile) are dropped: on
        fluorescence images these are the background or clumps of many cells.
    skip_background : bool
        On fluorescence-like images (bright objects on a dark background, detected by Otsu's
        threshold: the bright class covers less than half of the image), points on the dark
        background are not decoded; and on any image, a point inside a mask already found is
        not decoded again. Several times faster; False decodes every grid point.
    split_clumps : bool
        A kept mask whose shape shows several objects with a neck between them (touching
        nuclei, see :mod:`~napari_focsam.core.automatic._clumps`) is decoded again once per object, from its centre with the
        other centres as negative points; the parts replace it when they all pass the filters.
    tiles : int
        The image is cut into ``tiles`` x ``tiles`` overlapping crops, each encoded on its own
        1024x1024 canvas, so that objects appear ``tiles`` times larger to the model
        (FocSAM's idea of focusing); 1 encodes the whole image once.
    upscale_window : int or None
        Each point's low-resolution logits are upscaled on a block of this many tokens around
        the point (None: the measured default of :mod:`~napari_focsam.core.automatic._point_decode`; 0: the whole map, the
        slower way kept for comparisons).
    """

    points_per_side: int = 48
    points_per_batch: int = 32
    pred_iou_thresh: float | None = None
    stability_thresh: float | None = None
    stability_offset: float = 1.0
    nms_iou_thresh: float = 0.5
    min_area: int = 15
    max_area_fraction: float = 0.1
    skip_background: bool = True
    split_clumps: bool = True
    tiles: int = 1
    upscale_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch", "tiles"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.points_per_side > 256:
            raise ValueError(f"points_per_side {self.points_per_side} is too many: at most 256")
        if self.tiles > 8:
            raise ValueError(f"tiles {self.tiles} is too many: at most 8 per side")
        for name in ("pred_iou_thresh", "stability_thresh", "nms_iou_thresh"):
            v = getattr(self, name)
            if v is None and name != "nms_iou_thresh":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {v!r}")
        if not 0.0 < self.max_area_fraction <= 1.0:
            raise ValueError(f"max_area_fraction must be within (0, 1], got {self.max_area_fraction!r}")
        if not (isinstance(self.stability_offset, (int, float)) and math.isfinite(self.stability_offset)
                and self.stability_offset >= 0):
            raise ValueError(f"stability_offset must be a finite number >= 0, got {self.stability_offset!r}")
        w = self.upscale_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"upscale_window must be None or an integer >= 0, got {w!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 0:
            raise ValueError(f"min_area must be an integer >= 0, got {self.min_area!r}")

    def for_model(self, model: Any) -> "SegmentAllParams":
        """These parameters with the thresholds left at None filled in for ``model``.

        A decoder fine-tuned by this project (``focsam_t_micro``) predicts IoUs calibrated on
        real IoUs and gives softer logits than SAM's, so SAM's thresholds drop most of its
        masks; its file carries its own (``model.segment_all_thresholds``, read from the
        checkpoint's metadata). Other models get :data:`DEFAULT_PRED_IOU_THRESH` and
        :data:`DEFAULT_STABILITY_THRESH`.
        """
        own = getattr(model, "segment_all_thresholds", None) or {}
        iou = self.pred_iou_thresh if self.pred_iou_thresh is not None else own.get(
            "pred_iou_thresh", DEFAULT_PRED_IOU_THRESH)
        stab = self.stability_thresh if self.stability_thresh is not None else own.get(
            "stability_thresh", DEFAULT_STABILITY_THRESH)
        return replace(self, pred_iou_thresh=float(iou), stability_thresh=float(stab))

    def as_dict(self) -> dict:
        """The parameters as a plain dict (for JSON summaries)."""
        return asdict(self)
