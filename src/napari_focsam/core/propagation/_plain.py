"""Slice-by-slice propagation of an object through a stack.

Each next slice is prompted from the previous slice's result and decoded on its own cached
embedding with the plain decoder (no refiner). The prompt modes (``PROMPT_MODES``):

``point``            one positive click at the interior point of the previous mask (the maximum
                     of its distance transform, the image border counting as boundary);
``point_logits``     the same click plus the previous slice's raw 256x256 logits as mask input
                     (valid because all slices share one input size);
``point_box``        the click plus the previous mask's bounding box, enlarged by ``BOX_MARGIN``;
``point_box_logits`` all three.

``multimask=True`` decodes SAM's three candidate masks instead of the single-mask output and
keeps the one that overlaps the previous slice's mask most.

A run stops where the mask vanishes (fewer than ``MIN_MASK_PIXELS`` pixels, or a blank slice),
where its IoU with the previous slice falls below ``iou_threshold`` (the slice that fails is
not kept; the IoU of the two masks centred on each other,
:func:`~napari_focsam.core.prompting.shape_iou`: a section that only moved, as between the
slices of serial-section EM or the frames of a time-lapse, goes on; a slice that fails is first
decoded once more with the previous mask's box, :data:`SECOND_TRY`), or where the object ends:
a mask that had shrunk grows again (``END_REBOUND``). Between two clicked slices both sides
fill towards the middle and only the
vanishing test applies (the user has shown the object at both ends). The defaults were chosen
with ``benchmarks/bench_volume_quality.py`` on cells3d and the stardist 3D volume (one click on
each nucleus' middle slice, then propagation; mean 3D IoU against the labels):

=================  ========================  ==================  =====================
prompt             best threshold            cells3d (20 nuclei) stardist 3D (51)
=================  ========================  ==================  =====================
point + multimask  0.65 (default)            0.838               0.190
point              0.65                      0.820               0.169
point_logits       0.40                      0.802               0.220
point_box          0.80                      0.817               0.137
=================  ========================  ==================  =====================

(stardist 3D is limited by the first click itself: MobileSAM's mask of a nucleus in those
61x57 noisy planes has a median 2D IoU of 0.20 with its label.)

``refine=True`` passes every new slice through the focus refiner once (the slice's mask from the
prompt is the coarse mask; :func:`next_slice`). With the shipped FocSAM-T refiner it lowers the
mean 3D IoU on cells3d (20 nuclei, point + multimask): 0.726 against 0.838 at the default stop
threshold 0.65, and 0.775 against 0.842 at the best threshold of each. Keeping the
refined or the unrefined mask of a slice, whichever is closer to the previous slice, did not
help either (the first three nuclei: 0.768 / 0.861 / 0.861 against 0.802 / 0.879 / 0.904 at
threshold 0.5). So propagation does not refine by default (:data:`DEFAULT_REFINE_3D`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ...modeling.focsam import FocSAM
from ..defaults import DEFAULT_IOU_THRESHOLD  # the measured stop threshold (re-exported)
from ..defaults import DEFAULT_SLICE_VOTE
from ..prompting import mask_iou, shape_iou
from ..prompting import FocSAMPredictor, MaskRegion, logits_to_mask, region_from_plane
from ..embeddings import ImageEmbedding
from ._edges import DEFAULT_EDGE_FADE, fade_stop
from ._runs import DIRECTIONS, PropagationRun, plan_runs, run_all, walk_run
from ._vote import VOTE_MIN_OVERLAP, sections_overlap, vote_slices
from ._decode import decoder_outputs

if TYPE_CHECKING:
    from ..embeddings import EmbeddingStore

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_REFINE_3D",
    "MIN_MASK_PIXELS",
    "PROMPT_MODES",
    "PropagationResult",
    "check_propagation",
    "decode_prompt",
    "decode_prompt_token",
    "doubts_its_mask",
    "inner_depth",
    "interior_point",
    "mask_to_logits",
    "next_slice",
    "next_slice_scored",
    "propagate",
]

PROMPT_MODES = ("point", "point_logits", "point_box", "point_box_logits")
#: Prompt mode used by default: one interior click, with multimask selection (best mean 3D IoU
#: over cells3d and the stardist 3D volume; box prompts keep SAM segmenting *something* past the
#: end of a nucleus, so the IoU stop comes late).
DEFAULT_PROMPT = "point"
#: Use SAM's three candidates and keep the one most consistent with the previous slice.
DEFAULT_MULTIMASK = True
#: A mask with fewer pixels than this has vanished.
MIN_MASK_PIXELS = 10
#: Relative enlargement of the bounding-box prompt (plus 2 pixels).
BOX_MARGIN = 0.1
#: When a slice decoded from the previous mask's interior point alone fails the stop rule, it is
#: decoded once more with this prompt (the previous mask's box as well), and that mask is kept
#: if it passes. On large sections with inner structure (EM chloroplasts) the point alone can
#: give a part (object 67: 1,080 px where the chloroplast has 16,000, from a seed of IoU 0.76);
#: the box brings the whole back. Mean 3D IoU after one click (default model):
#: chloroplasts 0.615 -> 0.661, stardist 3D 0.415 -> 0.454, cells3d 0.805 -> 0.801,
#: mitochondria 0.651 -> 0.654 (``benchmarks/bench_volume_interactive.py``;
#: ``docs/microscopy``). With the box and the previous logits instead, cells3d fell to 0.34.
#: Only for a decoder with a calibrated floor (:func:`propagation_floor`): a box always gets a
#: plausible mask, and where the object has ended only the decoder's low score stops it. SAM's
#: own decoder (``vit_t``, ``focsam_t``: no floor) went on past the nuclei's ends with it
#: (cells3d 0.02-0.05 lower after clicks 2-5), so it keeps the single decoding.
SECOND_TRY = {"point": "point_box"}

#: Refine each propagated slice (:func:`next_slice`)? Measured with the shipped FocSAM-T on
#: cells3d (``benchmarks/bench_volume_quality.py --refine both``, one click per nucleus):
#: refining lowers the mean 3D IoU from 0.838 to 0.726, see the module docs.
DEFAULT_REFINE_3D = False
#: A corrected seed's logit level (``offsets``) fades by this factor per slice away from it.
#: Carried all the way at full strength, a cut at a blurred end shrank the middle slices too
#: (cells3d: 0.853 against 0.870 mean 3D IoU at the 3rd click); fading by 0.5 or 0.7 per slice
#: gave 0.872-0.876.
LEVEL_FADE = 0.5
#: Magnitude of the logits made from a binary mask (when no decoder logits exist).
MASK_LOGIT = 8.0



class PlaneMasks(dict):
    """slice -> (Y, X) bool mask of a propagation: a dict, with the region interface of the
    tiled propagation's :class:`~napari_focsam.core.propagation.RegionMasks`."""

    def region(self, z: int) -> MaskRegion:
        """Slice ``z``'s mask as a region (offset and crop around the object)."""
        return region_from_plane(self[z])

    def without(self, z: int) -> "PlaneMasks":
        """A copy without slice ``z`` (this one is left as it is)."""
        return PlaneMasks((k, m) for k, m in self.items() if k != z)


@dataclass
class PropagationResult:
    """Outcome of :meth:`SegmentedObject.propagate`.

    masks: slice -> (Y, X) bool mask, for the clicked slices and every slice reached;
    z_range: (first, last) slice with a non-empty mask, inclusive;
    stopped_reason: for "down" (towards slice 0) and "up", why that run ended, e.g.
    ``"border"``, ``"iou 0.31 < 0.50 at z=41"``, ``"vanished at z=12"``, ``"cancelled"``,
    ``"not requested"``;
    cancelled: the run was cancelled (masks hold what was finished);
    ious: slice -> IoU with the slice it was propagated from (also for the slice that failed);
    seconds: wall time.
    """

    masks: dict[int, np.ndarray]
    z_range: tuple[int, int]
    stopped_reason: dict[str, str]
    cancelled: bool = False
    ious: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------- prompts


def inner_depth(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(y0, x0, depth): each pixel's distance to the nearest pixel outside the (H, W) bool
    ``mask`` (the image border counts as outside), on the mask's bounding box, whose top-left
    is (y0, x0); (0, 0, a (0, 0) array) for an empty mask.

    The distance transform runs on the bounding box with a one-pixel background ring: the
    nearest background pixel of any mask pixel is on that ring or inside it (the ring's pixel
    nearest to a farther one is nearer still), so the distances are those of the whole image,
    at the cost of the box rather than the plane.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0, 0, np.zeros((0, 0))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, x0 = int(rows[0]), int(cols[0])
    crop = np.pad(mask[y0:rows[-1] + 1, x0:cols[-1] + 1], 1)
    return y0, x0, ndi.distance_transform_edt(crop)[1:-1, 1:-1]


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(y, x) of the pixel farthest from the mask's boundary (the image border counts as
    boundary; the first in raster order, as on the whole image: :func:`inner_depth`). (0, 0)
    for an empty mask.
    """
    y0, x0, dist = inner_depth(mask)
    if not dist.size:
        return 0, 0
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return y0 + int(y), x0 + int(x)


def mask_box(mask: np.ndarray, margin: float = BOX_MARGIN) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the mask's bounding box, enlarged by ``margin`` (+2 px), clipped."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    H, W = mask.shape
    y0, y1, x0, x1 = ys[0], ys[-1], xs[0], xs[-1]
    my = margin * (y1 - y0 + 1) + 2
    mx = margin * (x1 - x0 + 1) + 2
    return (float(max(0, x0 - mx)), float(max(0, y0 - my)), float(min(W - 1, x1 + mx)),
            float(min(H - 1, y1 + my)))


def mask_to_logits(mask: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """A binary (H, W) mask as (1, 1, 256, 256) decoder-style logits (+-MASK_LOGIT)."""
    low = FocSAM.image_size // 4
    h, w = (max(1, round(s * low / FocSAM.image_size)) for s in input_size)
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, low - w, 0, low - h))
    return (m * 2 - 1) * MASK_LOGIT


@torch.inference_mode()
def decode_prompt(
    predictor: FocSAMPredictor,
    embedding: ImageEmbedding,
    points: Iterable[tuple[float, float, bool]] = (),
    box: tuple[float, float, float, float] | None = None,
    mask_input: torch.Tensor | None = None,
    *,
    multimask: bool = False,
    reference: np.ndarray | None = None,
    features: torch.Tensor | None = None,
    offset: float = 0.0,
) -> tuple[np.ndarray, torch.Tensor]:
    """Decode clicks ``(y, x, positive)``, an optional box (x0, y0, x1, y1) and optional logits.

    Returns the (H, W) bool mask and its (1, 1, 256, 256) logits. With ``multimask`` the
    candidate with the highest IoU with ``reference`` (else the best predicted IoU) is kept.
    ``features``: (1, 256, 64, 64) decoded instead of ``embedding.features`` (a refined
    embedding of the same slice). ``offset``: the mask is where the logits exceed it (the
    logits returned are shifted by it, so their mask is still ``> 0``).
    """
    mask, logits, _, _ = decode_prompt_token(predictor, embedding, points, box, mask_input, multimask=multimask,
                                          reference=reference, features=features, offset=offset)
    return mask, logits


@torch.inference_mode()
def decode_prompt_token(
    predictor: FocSAMPredictor,
    embedding: ImageEmbedding,
    points: Iterable[tuple[float, float, bool]] = (),
    box: tuple[float, float, float, float] | None = None,
    mask_input: torch.Tensor | None = None,
    *,
    multimask: bool = False,
    reference: np.ndarray | None = None,
    features: torch.Tensor | None = None,
    offset: float = 0.0,
    around: np.ndarray | None = None,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, float]:
    """:func:`decode_prompt`, also returning the decoder's (1, 1, 256) mask-#0 output token
    (the focus refiner's click-fused query) and its predicted IoU of the mask returned.
    ``around``: the logits are upscaled around this (H, W) bool mask only (see
    :func:`~napari_focsam.core.propagation._decode.decoder_outputs`)."""
    out = decoder_outputs(predictor, embedding, points, box, mask_input, multimask=multimask, features=features,
                          around=around, level=offset)
    all_logits = out.logits - offset if offset else out.logits
    if not multimask:
        logits = all_logits[:, :1]
        mask = logits_to_mask(logits, embedding.input_size, embedding.original_size)
        return mask, logits, out.token, float(out.iou[0, 0])
    best, best_score, best_mask = 0, -1.0, None
    for i in range(all_logits.shape[1]):
        m = logits_to_mask(all_logits[:, i : i + 1], embedding.input_size, embedding.original_size)
        score = mask_iou(m, reference) if reference is not None else float(out.iou[0, i])
        if score > best_score:
            best, best_score, best_mask = i, score, m
    return best_mask, all_logits[:, best : best + 1], out.token, float(out.iou[0, best])


def propagation_floor(model: object) -> float | None:
    """The model's floor for a propagated slice's predicted IoU (``propagation_thresholds
    ["min_pred_iou"]``), None without one. Only a decoder whose IoU head is calibrated gives a
    floor (from its checkpoint); SAM's own heads score background near 1.0 and give none."""
    return (getattr(model, "propagation_thresholds", None) or {}).get("min_pred_iou")


def doubts_its_mask(model: object, score: float, confidence: float | None = None) -> bool:
    """Whether a propagated slice's mask, scored ``score`` by the decoder, ends the object: the
    score is below the model's floor (:func:`propagation_floor`).

    confidence: how sure the decoder is of the object (:func:`object_confidence`). The floor was
    set for objects the decoder is sure of (a real cell scores :data:`CONFIDENT_SEED` or more);
    on an object it is less sure of even on the clicked slices (noisy, tiny planes: stardist 3D
    seeds score 0.37-0.67) the floor falls in proportion, so the object's own slices are not
    taken for its end."""
    floor = propagation_floor(model)
    if floor is None:
        return False
    if confidence is not None:
        floor *= min(1.0, confidence / CONFIDENT_SEED)
    return score < floor


#: The decoder's score of a seed slice for which the propagation floor holds as it stands.
CONFIDENT_SEED = 0.9


def object_confidence(store: "EmbeddingStore", masks: Mapping[int, np.ndarray],
                      multimask: bool = DEFAULT_MULTIMASK, tokens: Mapping[int, Hashable] | None = None,
                      known: Mapping | None = None) -> tuple[float | None, dict]:
    """How sure the decoder is of the object: the best :func:`seed_score` of its seed slices
    (``masks``: slice -> non-empty mask). One score for the whole object, so that a correction
    at a blurred end (a seed the decoder is unsure of) does not lower the floor of its runs.

    tokens/known: a seed whose ``tokens`` entry has a score in ``known`` (a propagation memo)
    is not decoded again. Returns the confidence (None without a floor) and the scores by key,
    for the memo.

    A run keeps the floor it was decoded with while its seed is unchanged (the confidence is not
    part of its memo key): with it in the key, a correction that raised the confidence
    re-decoded every run, and an EM chloroplast lost its upper half to a correction three
    slices below (3D IoU 0.878 -> 0.551). Leaving it out, 3D protocol with the default model:
    the chloroplasts +0.014 to +0.020 at clicks 2-5 and 8 (+0.006 at 7, -0.002 at 6), the
    other volumes the same (stardist +0.002 at the 8th click), and re-propagation 15-29 %
    faster (fewer runs decoded again).
    """
    if propagation_floor(store.predictor.model) is None:
        return None, {}
    values, scored = [], {}
    for z, mask in masks.items():
        key = ("seed score", z, tokens[z]) if tokens is not None and z in tokens else None
        if key is not None and known is not None and key in known:
            value = known[key]
        else:
            emb = store.get(z)
            value = None if getattr(emb, "blank", False) else seed_score(store.predictor, emb, mask, multimask)
        if key is not None:
            scored[key] = value
        if value is not None:
            values.append(value)
    return (round(max(values), 3) if values else None), scored


def seed_score(predictor: FocSAMPredictor, embedding: ImageEmbedding, mask: np.ndarray,
               multimask: bool = DEFAULT_MULTIMASK) -> float | None:
    """The decoder's score of a seed slice's ``mask``, decoded as a propagated slice is (its
    interior point, the candidate closest to it); None for an empty mask."""
    if not np.any(mask):
        return None
    y, x = interior_point(mask)
    return float(decode_prompt_token(predictor, embedding, [(y, x, True)], multimask=multimask,
                                     reference=mask)[3])


def next_slice(*args: Any, **kwargs: Any) -> tuple[np.ndarray, torch.Tensor]:
    """Segment a slice from the previous slice's mask (and logits): :func:`next_slice_scored`
    (same arguments) without the score, i.e. the (H, W) bool mask and its (1, 1, 256, 256)
    logits."""
    mask, logits, _ = next_slice_scored(*args, **kwargs)
    return mask, logits


def next_slice_scored(
    predictor: FocSAMPredictor,
    embedding: ImageEmbedding,
    prev_mask: np.ndarray,
    prev_logits: torch.Tensor | None,
    prompt: str = DEFAULT_PROMPT,
    multimask: bool = DEFAULT_MULTIMASK,
    *,
    refine: bool = False,
    offset: float = 0.0,
    confidence: float | None = None,
) -> tuple[np.ndarray, torch.Tensor, float]:
    """Segment ``embedding``'s slice from the previous slice's mask (and logits); returns the
    (H, W) bool mask, its (1, 1, 256, 256) logits and the decoder's predicted IoU of it.

    confidence: the object's confidence, for the floor (:func:`doubts_its_mask`).

    offset: the slice's mask is where its logits exceed this level instead of 0 (the level a
    correction on the run's seed slice set, see
    :class:`~napari_focsam.core.propagation.AnchorHistory`).

    refine: when the predictor's model has a focus refiner, the slice's mask from the prompt
    is the coarse mask of one refine step: the refiner rewrites the slice's embedding around
    it (with the decoder's output token) and the same prompt is decoded again on the refined
    embedding (as at the refine click of a 2D object).
    """
    if prompt not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {prompt!r}: expected one of {PROMPT_MODES}")
    y, x = interior_point(prev_mask)
    box = mask_box(prev_mask) if "box" in prompt else None
    mask_input = None
    if "logits" in prompt:
        mask_input = prev_logits if prev_logits is not None else mask_to_logits(prev_mask, embedding.input_size)
    # the logits serve again only as a mask prompt ("logits" modes) or the refiner's coarse mask;
    # otherwise they are upscaled around the previous mask only (the same mask, :mod:`._decode`)
    around = prev_mask if "logits" not in prompt and not refine else None
    mask, logits, token, score = decode_prompt_token(predictor, embedding, [(y, x, True)], box, mask_input,
                                                     multimask=multimask, reference=prev_mask, offset=offset,
                                                     around=around)
    if doubts_its_mask(predictor.model, score, confidence):
        return np.zeros_like(mask), logits, score
    if not (refine and predictor.model.has_refiner):
        return mask, logits, score
    with torch.inference_mode():
        refined = predictor.model.refine(embedding.features.to(predictor.device), logits + offset, token)
    mask, logits, _, score = decode_prompt_token(predictor, embedding, [(y, x, True)], box, mask_input,
                                                 multimask=multimask, reference=prev_mask, features=refined,
                                                 offset=offset)
    return mask, logits, score


# --------------------------------------------------------------------------- propagation


def check_propagation(seeds: Mapping[int, Any], directions: Iterable[str], iou_threshold: float,
                      prompt: str, edge_fade: float | None = None) -> tuple[str, ...]:
    """Validate the arguments shared by :func:`propagate` and the tiled propagation; returns
    ``directions`` as a tuple. ValueError with the valid values otherwise."""
    directions = tuple(directions)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"unknown direction(s) {bad}: expected 'down' (towards slice 0) and/or 'up'")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be within [0, 1], got {iou_threshold}")
    if edge_fade is not None and not 0.0 <= edge_fade < 1.0:
        raise ValueError(f"edge_fade must be within [0, 1) (or None: never), got {edge_fade}")
    if prompt not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {prompt!r}: expected one of {PROMPT_MODES}")
    if not seeds:
        raise ValueError("nothing to propagate from: add a click first")
    return directions


def propagate(
    store: "EmbeddingStore",
    seeds: Mapping[int, tuple[np.ndarray, torch.Tensor | None]],
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    directions: Iterable[str] = DIRECTIONS,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    prompt: str = DEFAULT_PROMPT,
    multimask: bool = DEFAULT_MULTIMASK,
    min_pixels: int = MIN_MASK_PIXELS,
    tokens: Mapping[int, Hashable] | None = None,
    memo: dict | None = None,
    refine: bool = DEFAULT_REFINE_3D,
    restyled: Iterable[int] = (),
    offsets: Mapping[int, float] | None = None,
    edge_fade: float | None = DEFAULT_EDGE_FADE,
    outline_from: Iterable[int] | None = None,
    vote: bool = DEFAULT_SLICE_VOTE,
) -> PropagationResult:
    """Propagate from seed slices (slice -> (mask, logits or None)) through ``store``'s volume.

    edge_fade: an outer run stops where the object's outline has faded below this fraction of
    its strongest seed's (the object went out of focus, :mod:`._edges`); None or 0: never.
    outline_from: the seeds whose outline is the object's reference for ``edge_fade`` (default
    all): the slices where the object was started, not the corrections of propagated slices
    (made where a run went wrong, often at a blurred end; and so a correction does not move
    the reference of every run).
    vote: the propagated slices' masks voted with their neighbours' where the object's sections
    overlap enough (:mod:`._vote`; the seeds keep their masks). False for stacks whose slices
    are frames in time.

    offsets: seed slice -> the logit level its runs' masks are cut at (default 0; a correction
    that moved its slice's level, see :class:`~napari_focsam.core.propagation.AnchorHistory`).
    Part of the seed's state: its ``tokens`` entry must change with it.

    A seed with an empty mask blocks propagation (a "stop" slice). See the module docs.

    tokens/memo: re-propagation after an edit. ``tokens[z]`` identifies the state of seed
    ``z`` (it changes whenever that slice's clicks change); ``memo`` (a dict owned by the
    caller, updated in place to hold this call's runs) keeps the finished runs of the
    previous call, and a run whose seed, extent and parameters are unchanged is reused
    instead of decoded again. So a click on one slice only re-propagates the runs next to it.

    refine: pass each new slice through the focus refiner once (see :func:`next_slice`; only
    with a model that has one). Off by default (:data:`DEFAULT_REFINE_3D`, measured).

    restyled: seeds whose mask the user corrected with further clicks on the slice where the
    object was started. The first slice of a run from such a seed passes the IoU stop when it
    matches either the seed's mask or the propagation's own decoding of the seed slice (one
    decoder step more per run): a corrected mask is not in the decoder's style (tighter, or
    looser), and compared with it alone the next slice, decoded as the propagation always
    decodes, fails the stop at once and the object lost everything beyond its first slice
    (seen on VNC mitochondria). The runs from corrections of propagated slices (anchors)
    keep the plain test: there the stop after a correction is what the user asked for.
    """
    t0 = time.perf_counter()
    directions = check_propagation(seeds, directions, iou_threshold, prompt, edge_fade)
    n_slices = store.volume.n_slices
    refine = bool(refine) and store.predictor.model.has_refiner
    order = sorted(seeds)
    masks = {z: np.asarray(m, dtype=bool) for z, (m, _) in seeds.items() if np.any(m)}
    empty = {z for z, (m, _) in seeds.items() if not np.any(m)}
    # a calibrated decoder (one with a floor) runs gaps through from both ends and its scores
    # pick each slice's mask; the second decoding only where its score can still end the object
    calibrated = propagation_floor(store.predictor.model) is not None
    runs = plan_runs(order, empty, n_slices, directions, full_gaps=calibrated)
    second_try = SECOND_TRY.get(prompt) if calibrated else None

    def next_mask(z: int, prev: np.ndarray, logits: torch.Tensor | None, offset: float = 0.0,
                  floor_confidence: float | None = None):
        """(mask, logits, blank, score) of slice ``z``."""
        emb = store.get(z)
        if getattr(emb, "blank", False):
            return None, logits, True, None
        mask, logits, score = next_slice_scored(store.predictor, emb, prev, logits, prompt, multimask,
                                                refine=refine, offset=offset, confidence=floor_confidence)
        if second_try and mask.any() and shape_iou(prev, mask) < iou_threshold:
            # the click alone lost the object's section: once more with the previous mask's box
            again, again_logits, again_score = next_slice_scored(
                store.predictor, emb, prev, logits, second_try, multimask, refine=refine, offset=offset,
                confidence=floor_confidence)
            if again.any() and shape_iou(prev, again) >= iou_threshold:
                return again, again_logits, False, again_score
        return mask, logits, False, score

    restyled = set(restyled)
    offsets = dict(offsets or {})

    def run_one(run: PropagationRun, tick: Callable[[], None]):
        seed_mask, seed_logits = seeds[run.start]
        seed = np.asarray(seed_mask, dtype=bool)
        level = float(offsets.get(run.start, 0.0))
        styled = None
        if run.start in restyled and seed.any() and run.n_slices:
            styled, _, blank, _ = next_mask(run.start, seed, None)
            styled = None if blank else styled
        scores: dict[int, float] = {}

        def step(z, prev, logits):  # a seed's level fades with the distance from it
            mask, logits, blank, scores[z] = next_mask(z, prev, logits, level * LEVEL_FADE ** abs(z - run.start),
                                                       confidence)
            return mask, logits, blank

        got = walk_run(run, seed, seed_logits, step, np.count_nonzero, shape_iou,
                       iou_threshold=iou_threshold, min_pixels=min_pixels, tick=tick, cancelled=cancelled,
                       first_reference=styled, faded=faded)
        return (*got, scores)

    confidence, scored = object_confidence(store, masks, multimask, tokens, memo)
    outline, faded = fade_stop(store.volume, masks, outline_from, edge_fade)
    run_masks, ious, reasons, was_cancelled = run_all(
        runs, run_one, iou_threshold=iou_threshold, outer_params=(edge_fade, outline),
        # the second decoding's test uses the threshold inside gaps too. The object's confidence
        # is left out of the key: a click that moves it (a new seed scored higher) re-decodes
        # the runs next to that slice only, not the unchanged seeds' runs under a new floor
        params=(prompt, multimask, min_pixels, refine, iou_threshold if second_try else None),
        tokens=tokens, memo=memo, progress=progress, keep_better=calibrated,
        size=np.count_nonzero, seed_sizes={z: int(np.count_nonzero(m)) for z, m in masks.items()})
    if memo is not None and not was_cancelled:
        memo.update(scored)
    masks.update(run_masks)
    if vote and sections_overlap(masks) >= VOTE_MIN_OVERLAP:
        masks = vote_slices(masks, keep=seeds)
    nonempty = [z for z, m in masks.items() if m.any()]
    z_range = (min(nonempty), max(nonempty)) if nonempty else (order[0], order[0])
    return PropagationResult(PlaneMasks(sorted(masks.items())), z_range, reasons, was_cancelled, ious,
                             time.perf_counter() - t0)
