"""Automatic instance segmentation ("segment all") from a grid of point prompts.

A regular grid of single positive points covers the image; each point is decoded (SAM's three
candidate masks, in batches, from the cached image embedding with the plain decoder, the
logits upscaled around the point only: :mod:`~napari_focsam.core.automatic._point_decode`); a
candidate is kept when the decoder's predicted IoU and its stability score (the ratio of its
areas at logit > +offset and logit > -offset) are high enough and its area is plausible; among
candidates that overlap by more than ``nms_iou_thresh`` (mask IoU) only the best-scoring one
stays (non-maximum suppression). The survivors are written into one labels image.

Overlap rule: no pixel belongs to two objects. Objects are painted in decreasing score order
(predicted IoU x stability) and a pixel keeps the first (best-scoring) object that claims it;
an object left with fewer than ``min_area`` pixels, or with less than half of its own mask, is
dropped. Ids are 1..n in that order.

Points worth decoding: on fluorescence-like images the points on the dark background are
skipped (Otsu's threshold, :func:`foreground_mask`), and a point inside a mask already found
(the smallest kept mask of each earlier point) is skipped too: 5x fewer decoder passes on the
stardist image. There the foreground points are decoded deepest first (:func:`deepest_first`):
the first point of an object is near its centre, where its masks are best, and they cover the
object's other points; 2-3x fewer points than in grid order (MobileSAM, 2 threads: Coelho
dna-33 112 against 348 points, 2.8 s against 9.7 s; the same F1; see ``docs/performance.md``).
(Visiting a coarse grid first decodes 2-3.5x fewer points but loses F1 on the stardist
image: 0.721-0.726 against 0.756.) Clumps: a kept mask whose shape shows touching objects (:mod:`~napari_focsam.core.automatic._clumps`) is decoded
again per object, from its centre with the other centres as negative points.

Tiles (``tiles`` > 1): the image is cut into overlapping crops, each encoded on its own 1024
canvas, so that small objects get more pixels in the model (FocSAM's focusing); a mask that
touches a crop edge inside the image is left to the neighbouring crop, which sees it whole.

Masks are computed from the 256x256 low-resolution logits with the same two bilinear resizes
as the interactive path (:func:`~napari_focsam.core.prompting._predictor.logits_to_mask`), written as
small matrix products over each mask's bounding box only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ...modeling.focsam import FocSAM
from ...modeling.mask_resize import logits_read, outputs_reading, resize_matrix, support_ranges
from ..embeddings import ImageEmbedding
from ..images import to_rgb_uint8
from ..prompting import FocSAMPredictor
from ._clumps import clump_centres
from ._params import SegmentAllParams
from ._point_decode import decode_points

__all__ = [
    "MaskCandidate",
    "MaskUpscaler",
    "SegmentAllResult",
    "deepest_first",
    "foreground_mask",
    "grid_points",
    "nms_masks",
    "paint_labels",
    "segment_all",
    "tile_spans",
]

LOW = FocSAM.image_size // 4  # side of the decoder's low-resolution logits (256)
#: Overlap of neighbouring tiles, as a fraction of the tile size.
TILE_OVERLAP = 0.25
#: An object that keeps less than this fraction of its mask after overlaps are resolved is dropped.
MIN_KEPT_FRACTION = 0.5
#: Points decoded in one pass of the decoder. Each point carries (4096, 256) image tokens
#: through the decoder's layers; past a few points these tensors leave the CPU's caches and
#: the pass becomes memory-bound (per point on 2 threads: 20 ms in passes of 32, 15-16 in
#: passes of 4-8; ``benchmarks/bench_segment_all_speed.py``). Which points are skipped is still
#: decided per ``points_per_batch``, so the result does not depend on this.
DECODE_CHUNK = 8


@dataclass
class SegmentAllResult:
    """Outcome of :func:`segment_all`.

    labels: (H, W) int32, 0 = background, objects 1..n (no overlaps);
    scores: (n,) predicted IoU x stability of object i+1; n_points: point prompts decoded;
    n_candidates: masks that passed the score and area filters; seconds: wall time;
    cancelled: the run was cancelled (then ``labels`` is empty); message: why the result is
    empty (a blank image, nothing found, cancelled) or None.
    """

    labels: np.ndarray
    scores: np.ndarray
    n_points: int = 0
    n_candidates: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    message: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return int(self.scores.size)


@dataclass
class MaskCandidate:
    """A candidate object: ``mask`` is the bool crop of its full-resolution mask, whose top-left
    pixel is (y0, x0) in the image; ``score`` orders candidates (higher is better)."""

    score: float
    y0: int
    x0: int
    mask: np.ndarray  # bool crop of the full-resolution mask, at (y0, x0) in the image
    tile: int = 0  # index of the canvas (tile) it was decoded on

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def grid_points(n: int | tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """(ny*nx, 2) (y, x) pixel coordinates of the cell centres of an ny x nx grid (``n`` = ny = nx,
    or ``(ny, nx)``) over an (H, W) image, row by row."""
    ny, nx = (n, n) if isinstance(n, int) else n
    H, W = shape
    ys = (np.arange(ny) + 0.5) * H / ny - 0.5
    xs = (np.arange(nx) + 0.5) * W / nx - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def tile_spans(size: int, n: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int]]:
    """``n`` overlapping [start, stop) spans covering ``range(size)``, each of equal length."""
    if n <= 1:
        return [(0, size)]
    length = int(np.ceil(size / (n - (n - 1) * overlap)))
    length = min(size, length)
    starts = np.linspace(0, size - length, n).round().astype(int)
    return [(int(s), int(s) + length) for s in starts]


class MaskUpscaler:
    """Full-resolution masks of one canvas from low-res logits, over a mask's bounding box only
    (the interactive path's resize: :func:`~napari_focsam.modeling.mask_resize.resize_matrix`)."""

    def __init__(self, input_size: tuple[int, int], original_size: tuple[int, int]) -> None:
        args = [(LOW, FocSAM.image_size, int(i), int(o)) for i, o in zip(input_size, original_size)]
        self.ay, self.ax = (resize_matrix(*a).numpy() for a in args)  # (H, 256), (W, 256)
        self.sy, self.sx = (support_ranges(*a) for a in args)

    def mask(self, logits: np.ndarray) -> tuple[int, int, np.ndarray] | None:
        """(256, 256) logits -> (y0, x0, bool crop) of the mask, None when it is empty."""
        pos = logits > 0
        rows = np.flatnonzero(pos.any(axis=1))
        cols = np.flatnonzero(pos.any(axis=0))
        if rows.size == 0:
            return None
        y0, y1 = outputs_reading(self.sy, rows[0], rows[-1] + 1)
        x0, x1 = outputs_reading(self.sx, cols[0], cols[-1] + 1)
        if y1 <= y0 or x1 <= x0:
            return None
        (r0, r1), (c0, c1) = logits_read(self.sy, y0, y1), logits_read(self.sx, x0, x1)
        crop = self.ay[y0:y1, r0:r1] @ logits[r0:r1, c0:c1] @ self.ax[x0:x1, c0:c1].T
        m = crop > 0
        if not m.any():
            return None
        ry = np.flatnonzero(m.any(axis=1))
        rx = np.flatnonzero(m.any(axis=0))
        m = m[ry[0]:ry[-1] + 1, rx[0]:rx[-1] + 1]
        return int(y0 + ry[0]), int(x0 + rx[0]), m


def _box_iou_candidates(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Indices of ``boxes`` (K, 4) [y0, x0, y1, x1) that intersect ``box``."""
    if boxes.size == 0:
        return np.zeros(0, dtype=int)
    inter = ((boxes[:, 0] < box[2]) & (box[0] < boxes[:, 2]) & (boxes[:, 1] < box[3]) & (box[1] < boxes[:, 3]))
    return np.flatnonzero(inter)


def _mask_iou(a: MaskCandidate, b: MaskCandidate) -> float:
    y0, x0 = max(a.y0, b.y0), max(a.x0, b.x0)
    y1 = min(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    x1 = min(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0.0
    ia = a.mask[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
    ib = b.mask[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
    inter = np.count_nonzero(ia & ib)
    return inter / (a.area + b.area - inter) if inter else 0.0


def nms_masks(cands: list[MaskCandidate], thresh: float) -> list[MaskCandidate]:
    """Greedy mask non-maximum suppression: best score first; drop a candidate whose IoU with a kept one exceeds ``thresh``."""
    order = sorted(cands, key=lambda c: -c.score)
    kept: list[MaskCandidate] = []
    boxes = np.zeros((0, 4), dtype=int)
    for c in order:
        box = np.array([c.y0, c.x0, c.y0 + c.mask.shape[0], c.x0 + c.mask.shape[1]])
        if any(_mask_iou(c, kept[i]) > thresh for i in _box_iou_candidates(boxes, box)):
            continue
        kept.append(c)
        boxes = np.vstack([boxes, box[None]])
    return kept


def paint_labels(cands: list[MaskCandidate], shape: tuple[int, int], min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) int32 and the scores of the objects written, by the module's overlap rule.

    Best score first; a pixel keeps the first object that claims it; an object left with fewer
    than ``min_area`` pixels (at least 1) or less than ``MIN_KEPT_FRACTION`` of its mask is
    dropped; ids are 1..n in the order written.
    """
    labels = np.zeros(shape, dtype=np.int32)
    scores = []
    for c in sorted(cands, key=lambda c: -c.score):
        h, w = c.mask.shape
        region = labels[c.y0:c.y0 + h, c.x0:c.x0 + w]
        free = c.mask & (region == 0)
        n_free = int(np.count_nonzero(free))
        if n_free < max(min_area, 1) or n_free < MIN_KEPT_FRACTION * c.area:
            continue
        scores.append(c.score)
        region[free] = len(scores)
    return labels, np.asarray(scores, dtype=np.float32)


@torch.inference_mode()
def _decode_canvas(
    predictor: FocSAMPredictor,
    embedding: ImageEmbedding,
    points: np.ndarray,
    params: SegmentAllParams,
    inner_edges: tuple[bool, bool, bool, bool],
    covered: np.ndarray,
    tick: Callable[[int], bool],
    timings: dict[str, float],
    counts: dict[str, int],
) -> list[MaskCandidate] | None:
    """Candidates of one canvas (image or tile) from ``points`` (N, 2) (y, x) in its pixels.

    ``inner_edges`` (top, left, bottom, right): which canvas edges lie inside the image (masks
    touching them are dropped). ``covered``: (H, W) bool view of the canvas's pixels; a point
    on a covered pixel is not decoded, and the smallest kept mask of each decoded point marks
    its pixels. ``tick(n)`` reports ``n`` more points done; returns None when it says the run
    was cancelled. Candidates are in canvas pixels.
    """
    model = predictor.model
    dev = predictor.device
    H, W = embedding.original_size
    h, w = embedding.input_size
    lh, lw = -(-h * LOW // FocSAM.image_size), -(-w * LOW // FocSAM.image_size)
    features = embedding.features.to(dev)
    up = MaskUpscaler((h, w), (H, W))
    max_area = params.max_area_fraction * H * W
    low_max = params.max_area_fraction * lh * lw
    off = params.stability_offset
    cands: list[MaskCandidate] = []
    pix = np.clip(np.rint(points).astype(int), 0, [H - 1, W - 1])
    todo = 0
    while todo < len(points):
        batch: list[int] = []
        skipped = 0
        while todo < len(points) and len(batch) < params.points_per_batch:
            if covered[pix[todo, 0], pix[todo, 1]]:
                skipped += 1
            else:
                batch.append(todo)
            todo += 1
        if not batch:
            if not tick(skipped):
                return None
            continue
        t0 = time.perf_counter()
        counts["points"] = counts.get("points", 0) + len(batch)
        chunk = points[batch]
        # canvas (x, y) as the interactive path maps clicks (FocSAMPredictor's prompts)
        xy = np.stack([chunk[:, 1] * (w / W), chunk[:, 0] * (h / H)], axis=1)
        pts = torch.tensor(xy, dtype=torch.float32, device=dev)[:, None]
        sel_parts, score_parts, idx = [], [], []
        for s0 in range(0, len(batch), DECODE_CHUNK):  # the skip rule above still sees whole batches
            out, iou = decode_points(model, features, pts[s0:s0 + DECODE_CHUNK], -off, min_iou=params.pred_iou_thresh,
                                     max_area=low_max, valid=(lh, lw), window=params.upscale_window)
            logits = out[..., :lh, :lw].float().flatten(0, 1)  # (b*3, lh, lw), upscaled around each point
            iou = iou.float().flatten()
            hi = (logits > off).sum(dim=(1, 2))
            lo = (logits > -off).sum(dim=(1, 2))
            area = (logits > 0).sum(dim=(1, 2))
            stab = torch.where(lo > 0, hi.float() / lo.clamp(min=1).float(), torch.zeros_like(iou))
            ok = ((iou >= params.pred_iou_thresh) & (stab >= params.stability_thresh) & (area > 0)
                  & (area <= low_max))
            got = torch.nonzero(ok).flatten()
            sel_parts.append(logits[got].cpu().numpy())
            score_parts.append((iou * stab).cpu().numpy())
            idx.extend((got + 3 * s0).tolist())
        sel = np.concatenate(sel_parts)
        scores = np.concatenate(score_parts)
        t1 = time.perf_counter()
        timings["decode"] = timings.get("decode", 0.0) + (t1 - t0)
        smallest: dict[int, MaskCandidate] = {}  # point -> its smallest kept mask
        full = np.zeros((LOW, LOW), dtype=np.float32)
        for k, i in enumerate(idx):
            if k % 8 == 7 and not tick(0):  # up to 3 full-size masks per point: stop within a batch
                return None
            full[:lh, :lw] = sel[k]
            got = up.mask(full)
            if got is None:
                continue
            y0, x0, m = got
            area_px = int(np.count_nonzero(m))
            if area_px < params.min_area or area_px > max_area:
                continue
            if ((inner_edges[0] and y0 == 0) or (inner_edges[1] and x0 == 0)
                    or (inner_edges[2] and y0 + m.shape[0] >= H) or (inner_edges[3] and x0 + m.shape[1] >= W)):
                continue
            c = MaskCandidate(float(scores[i]), y0, x0, m)
            cands.append(c)
            point = i // 3
            if point not in smallest or c.area < smallest[point].area:
                smallest[point] = c
        for c in smallest.values():
            covered[c.y0:c.y0 + c.mask.shape[0], c.x0:c.x0 + c.mask.shape[1]] |= c.mask
        timings["masks"] = timings.get("masks", 0.0) + (time.perf_counter() - t1)
        if not tick(len(batch) + skipped):
            return None
    return cands


@torch.inference_mode()
def _split_clump(
    predictor: FocSAMPredictor,
    embedding: ImageEmbedding,
    cand: MaskCandidate,
    offset: tuple[int, int],
    params: SegmentAllParams,
    up: MaskUpscaler,
) -> list[MaskCandidate] | None:
    """The parts of a clump mask, each decoded from its centre with the other centres as
    negative points; None when the mask is one object or a part fails the filters."""
    centres = clump_centres(cand.mask)
    if len(centres) < 2:
        return None
    H, W = embedding.original_size
    h, w = embedding.input_size
    lh, lw = -(-h * LOW // FocSAM.image_size), -(-w * LOW // FocSAM.image_size)
    yx = centres + np.array([cand.y0 - offset[0], cand.x0 - offset[1]])  # canvas pixels
    xy = np.stack([yx[:, 1] * (w / W), yx[:, 0] * (h / H)], axis=1)
    k = len(yx)
    dev = predictor.device
    pts = torch.tensor(np.repeat(xy[None], k, axis=0), dtype=torch.float32, device=dev)  # (K, K, 2)
    lab = torch.eye(k, dtype=torch.int64, device=dev)  # part i: centre i positive, the others negative
    out = predictor.model.decode(embedding.features.to(dev), pts, lab, None, multimask_output=False)
    logits = out.logits[:, 0, :lh, :lw].float()
    off = params.stability_offset
    stab = (logits > off).sum(dim=(1, 2)).float() / (logits > -off).sum(dim=(1, 2)).clamp(min=1).float()
    iou = out.iou[:, 0].float()
    parts = []
    full = np.zeros((LOW, LOW), dtype=np.float32)
    for i in range(k):
        if iou[i] < params.pred_iou_thresh or stab[i] < params.stability_thresh:
            return None
        full[:lh, :lw] = logits[i].cpu().numpy()
        got = up.mask(full)
        if got is None or int(np.count_nonzero(got[2])) < params.min_area:
            return None
        y0, x0, m = got
        cy, cx = yx[i, 0] - y0, yx[i, 1] - x0
        if not (0 <= cy < m.shape[0] and 0 <= cx < m.shape[1] and m[cy, cx]):
            return None  # the part does not hold its own centre
        parts.append(MaskCandidate(float(iou[i] * stab[i]), y0 + offset[0], x0 + offset[1], m, cand.tile))
    return parts


def foreground_mask(rgb: np.ndarray, sigma: float = 2.0) -> np.ndarray | None:
    """Where grid points are worth decoding on a fluorescence-like image, else None.

    The gray image is smoothed (Gaussian, ``sigma`` pixels) and split by Otsu's threshold;
    when the bright class covers less than half of the image (bright objects on a dark
    background) it is returned as an (H, W) bool mask; otherwise (a bright background, as in
    bright-field or histology) None: every point is decoded.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    gray = ndi.gaussian_filter(rgb.astype(np.float32).mean(axis=-1), sigma)
    if gray.max() <= gray.min():
        return None
    fg = gray > threshold_otsu(gray)
    return fg if fg.mean() < 0.5 else None


def deepest_first(points: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """The order in which to decode ``points`` (N, 2) (y, x) on a fluorescence-like image:
    deepest inside the foreground ``fg`` (H, W) bool first (Euclidean distance to the
    background; ties in grid order), so that the first point decoded in an object is near its
    centre and its mask covers the object's other points."""
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(fg)
    pix = np.clip(np.rint(points).astype(int), 0, np.array(fg.shape) - 1)
    return np.argsort(-depth[pix[:, 0], pix[:, 1]], kind="stable")


def segment_all(
    predictor: FocSAMPredictor | None,
    image: np.ndarray,
    params: SegmentAllParams | None = None,
    *,
    embedding: ImageEmbedding | None = None,
    contrast_limits: tuple[float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> SegmentAllResult:
    """Segment every object of a 2D image from a grid of point prompts.

    Parameters
    ----------
    predictor : FocSAMPredictor or None
        The model; the decoder runs without the focus refiner (there is no click to focus on).
        None is accepted for a blank image only (nothing is decoded).
    image : numpy.ndarray
        (H, W) gray or (H, W, C) colour image of any dtype (mapped to 8-bit RGB as the
        interactive path does, through ``contrast_limits`` or robust percentiles).
    params : SegmentAllParams, optional
        The grid, the filters and the tiling (defaults suit fluorescence nuclei and cells).
    embedding : ImageEmbedding, optional
        The image's embedding when it is already computed (used with ``tiles`` = 1 only).
    progress : callable, optional
        ``progress(done, total)`` after each batch of points (and each tile encoded).
    cancelled : callable, optional
        Checked between batches; when it returns True the run stops and returns an empty
        result with ``cancelled=True``.

    Returns
    -------
    SegmentAllResult
        ``labels`` (H, W) int32 with objects 1..n and no overlaps (see the module docstring).
    """
    params = (params or SegmentAllParams()).for_model(predictor.model if predictor is not None else None)
    t_start = time.perf_counter()
    rgb = to_rgb_uint8(image, contrast_limits)
    H, W = rgb.shape[:2]

    def empty(message: str, **kw) -> SegmentAllResult:
        return SegmentAllResult(np.zeros((H, W), np.int32), np.zeros(0, np.float32), message=message,
                                seconds=time.perf_counter() - t_start, **kw)

    if rgb.min() == rgb.max():
        return empty("the image is blank (constant after contrast mapping): nothing to segment")
    if predictor is None:
        raise ValueError("segment_all needs a predictor for an image that is not blank")
    n = params.tiles
    ys, xs = tile_spans(H, n), tile_spans(W, n)
    tiles = [(i, j) for i in range(n) for j in range(n)]
    grids = {(i, j): grid_points((max(1, int(np.ceil(params.points_per_side * (ys[i][1] - ys[i][0]) / H))),
                                   max(1, int(np.ceil(params.points_per_side * (xs[j][1] - xs[j][0]) / W)))),
                                  (ys[i][1] - ys[i][0], xs[j][1] - xs[j][0])) for i, j in tiles}
    encodes = len(tiles) if n > 1 or embedding is None else 0
    total = sum(len(g) for g in grids.values()) + encodes
    state = {"done": 0}
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}

    def tick(k: int) -> bool:
        state["done"] += k
        if progress is not None:
            progress(state["done"], total)
        return not (cancelled is not None and cancelled())

    if cancelled is not None and cancelled():
        return empty("cancelled", cancelled=True)
    # points on pixels marked here are not decoded: the dark background of fluorescence
    # images, then every object already found (see _decode_canvas)
    covered = np.zeros((H, W), dtype=bool)
    fg = None
    if params.skip_background:
        fg = foreground_mask(rgb)
        if fg is not None:
            covered = ~fg
    cands: list[MaskCandidate] = []
    canvases: list[tuple[ImageEmbedding, tuple[int, int]]] = []
    for t, (i, j) in enumerate(tiles):
        (y0, y1), (x0, x1) = ys[i], xs[j]
        if n == 1 and embedding is not None:
            emb = embedding
        else:
            t0 = time.perf_counter()
            emb = predictor.embed(rgb[y0:y1, x0:x1])
            timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t0
            if not tick(1):
                return empty("cancelled", cancelled=True)
        if tuple(emb.original_size) != (y1 - y0, x1 - x0):
            raise ValueError(f"the embedding is of a {emb.original_size} image, not of this {(H, W)} image")
        pts = grids[i, j]
        if fg is not None:
            pts = pts[deepest_first(pts, fg[y0:y1, x0:x1])]
        edges = (y0 > 0, x0 > 0, y1 < H, x1 < W)
        got = _decode_canvas(predictor, emb, pts, params, edges, covered[y0:y1, x0:x1], tick, timings, counts)
        if got is None:
            return empty("cancelled", cancelled=True)
        for c in got:
            c.y0 += y0
            c.x0 += x0
            c.tile = t
        cands.extend(got)
        canvases.append((emb, (y0, x0)))
    t0 = time.perf_counter()
    kept = nms_masks(cands, params.nms_iou_thresh)
    timings["nms"] = time.perf_counter() - t0
    if params.split_clumps:
        t0 = time.perf_counter()
        ups = {}
        split: list[MaskCandidate] = []
        for c in kept:
            emb, offset = canvases[c.tile]
            if c.tile not in ups:
                ups[c.tile] = MaskUpscaler(emb.input_size, emb.original_size)
            parts = _split_clump(predictor, emb, c, offset, params, ups[c.tile])
            split.extend(parts if parts is not None else [c])
            counts["clumps_split"] = counts.get("clumps_split", 0) + (parts is not None)
            if cancelled is not None and cancelled():
                return empty("cancelled", cancelled=True)
        kept = split
        timings["clumps"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels, scores = paint_labels(kept, (H, W), params.min_area)
    timings["paint"] = time.perf_counter() - t0
    res = SegmentAllResult(labels, scores, counts.get("points", 0), len(cands), time.perf_counter() - t_start,
                           timings={k: round(v, 3) for k, v in timings.items()})
    if not res.n_objects:
        res.message = "no object passed the filters (try lower thresholds or more points per side)"
    return res
