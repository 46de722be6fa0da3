"""Slice-by-slice propagation through a tiled stack, with masks kept as regions.

The same rule as :mod:`~napari_focsam.core.propagation._plain` (one interior click of the previous slice's mask, optional box
and logits, multimask selection against the previous mask, the IoU and vanishing stops, seeds
and gaps filled from both ends), with the object-adaptive scale of :mod:`~napari_focsam.core.prompting._tiled_history`: each
next slice is decoded in the tile, at the level, that holds the previous slice's mask best; when
the new mask reaches an inner tile edge it moves to another tile or a coarser level and that
slice is decoded again there.

Memory: the tile embeddings in use (the store's LRU, bounded by its ``max_memory_bytes``),
a few tile-sized arrays for the current slice (the previous mask at the tile's resolution,
the decoder's masks: about 4 MiB for 1024 x 1024 tiles), and per slice reached the mask region
(the object's bounding box at full resolution): nothing of the size of a plane unless the object
is that large. :class:`RegionMasks` gives planes one at a time on request.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Iterable, Iterator, Mapping

import numpy as np
import torch

from ..defaults import DEFAULT_IOU_THRESHOLD, DEFAULT_SLICE_VOTE
from ..embeddings import TiledEmbeddingStore
from ..images import EDGE_MARGIN, TileKey
from ..prompting import (
    MAX_MOVES, MaskRegion, box_at_level, downsample_region, next_placement, region_bbox, region_pixels, region_shape_iou,
    region_to_plane, tile_logits_values, values_bbox, values_to_region)
from ._plain import (
    DEFAULT_MULTIMASK, DEFAULT_PROMPT, MIN_MASK_PIXELS, PropagationResult, check_propagation, decode_prompt_token,
    doubts_its_mask, interior_point, mask_box, mask_to_logits)
from ._edges import DEFAULT_EDGE_FADE, fade_stop
from ._runs import DIRECTIONS, plan_runs, run_all, walk_run
from ._vote import VOTE_MIN_OVERLAP, regions_overlap, vote_regions

__all__ = ["RegionMasks", "propagate_tiled"]


class RegionMasks(Mapping):
    """slice -> (Y, X) bool mask, stored as :class:`MaskRegion` s and materialised on access.

    ``region(z)`` gives the region itself; iterating over ``items()`` makes one plane at a time.
    """

    def __init__(self, regions: Mapping[int, MaskRegion], plane_shape: tuple[int, int]) -> None:
        self.regions = dict(sorted(regions.items()))
        self.plane_shape = tuple(plane_shape)

    def __repr__(self) -> str:
        return f"RegionMasks(slices={list(self.regions)}, plane={self.plane_shape})"

    def __getitem__(self, z: int) -> np.ndarray:
        return region_to_plane(self.regions[z], self.plane_shape)

    def __iter__(self) -> Iterator[int]:
        return iter(self.regions)

    def __len__(self) -> int:
        return len(self.regions)

    def __contains__(self, z: object) -> bool:
        return z in self.regions

    def region(self, z: int) -> MaskRegion:
        return self.regions[z]

    def pop(self, z: int, default=None):
        return self.regions.pop(z, default)

    def without(self, z: int) -> "RegionMasks":
        return RegionMasks({k: r for k, r in self.regions.items() if k != z}, self.plane_shape)


def _first_key(store: TiledEmbeddingStore, region: MaskRegion, level: int) -> TileKey:
    """The best tile holding ``region`` (full resolution) at ``level`` or the first coarser level."""
    box = region_bbox(region)
    for lv in range(level, store.top_level + 1):
        lbox = box_at_level(store, box, 0, lv, EDGE_MARGIN)
        best = store.grid(lv).tiles_for_box(lbox)
        if best:
            return best[0]
    return TileKey(store.top_level, 0, 0)


def next_slice_tiled(store: TiledEmbeddingStore, z: int, prev: MaskRegion, prev_key: TileKey | None,
                     prev_logits: torch.Tensor | None, prompt: str,
                     multimask: bool) -> tuple[MaskRegion, TileKey, torch.Tensor | None, bool]:
    """Decode slice ``z`` from the previous slice's region: ``(region, tile, logits, blank)``."""
    key = _first_key(store, prev, prev_key.level if prev_key is not None else 0)
    visited = {key}
    region, logits = None, None
    for _ in range(MAX_MOVES):
        emb = store.get_tile(z, key)
        if emb.blank:
            return MaskRegion(0, 0, np.zeros((0, 0), bool)), key, None, True
        window = store.grid(key.level).window(key)
        ref = downsample_region(prev, window, store.factor(key.level))
        if not ref.any():  # the previous mask is smaller than a pixel of this level
            return MaskRegion(0, 0, np.zeros((0, 0), bool)), key, None, False
        y, x = interior_point(ref)
        box = None
        if "box" in prompt:
            bx0, by0, bx1, by1 = mask_box(ref)
            box = (bx0, by0, bx1, by1)
        mask_input = None
        if "logits" in prompt:
            mask_input = prev_logits if (prev_logits is not None and key == prev_key) else \
                mask_to_logits(ref, emb.input_size)
        # the logits upscaled around the previous mask only, unless they serve again as a mask prompt
        around = ref if "logits" not in prompt else None
        _, logits, _, score = decode_prompt_token(store.predictor, emb, [(y, x, True)], box, mask_input,
                                                  multimask=multimask, reference=ref, around=around)
        if doubts_its_mask(store.predictor.model, score):  # the object has ended, as in the plain path
            return MaskRegion(0, 0, np.zeros((0, 0), bool)), key, logits, False
        got = tile_logits_values(logits, emb.input_size, emb.original_size)
        if got is None:
            return MaskRegion(0, 0, np.zeros((0, 0), bool)), key, logits, False
        ty0, _, tx0, _ = window
        bbox = values_bbox(*got)
        region = values_to_region(*got, (ty0, tx0), store.factor(key.level), store.volume.plane_shape)
        if bbox is None:
            return region, key, logits, False
        lbox = (bbox[0] + ty0, bbox[1] + ty0, bbox[2] + tx0, bbox[3] + tx0)
        pbox = region_bbox(prev)
        nxt = next_placement(store, key, lbox, lambda lv: box_at_level(store, pbox, 0, lv), visited)
        if nxt is None:
            break
        visited.add(nxt)
        key = nxt
    return region, key, logits, False


def propagate_tiled(
    store: TiledEmbeddingStore,
    seeds: Mapping[int, tuple[MaskRegion, TileKey | None, torch.Tensor | None]],
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
    edge_fade: float | None = DEFAULT_EDGE_FADE,
    outline_from: Iterable[int] | None = None,
    vote: bool = DEFAULT_SLICE_VOTE,
) -> PropagationResult:
    """Propagate from seed slices (slice -> (region, tile or None, logits or None)) through a
    tiled stack; the result's ``masks`` is a :class:`RegionMasks`. See :func:`~napari_focsam.core.propagation.propagate`
    for the parameters, ``tokens`` and ``memo`` included (a run whose seed, extent and parameters
    did not change since the last call is reused, not decoded again)."""
    t0 = time.perf_counter()
    directions = check_propagation(seeds, directions, iou_threshold, prompt, edge_fade)
    n_slices = store.volume.n_slices
    order = sorted(seeds)
    regions = {z: r for z, (r, _, _) in seeds.items() if region_pixels(r)}
    empty = {z for z, (r, _, _) in seeds.items() if not region_pixels(r)}
    runs = plan_runs(order, empty, n_slices, directions)

    def next_region(z: int, prev: MaskRegion, state: tuple):
        region, key, logits, blank = next_slice_tiled(store, z, prev, *state, prompt, multimask)
        return region, (key, logits), blank

    outline, faded = fade_stop(store.volume, regions, outline_from, edge_fade)

    def run_one(run, tick: Callable[[], None]):
        prev, key, logits = seeds[run.start]
        return walk_run(run, prev, (key, logits), next_region, region_pixels, region_shape_iou,
                        iou_threshold=iou_threshold, min_pixels=min_pixels, tick=tick, cancelled=cancelled,
                        faded=faded)

    run_regions, ious, reasons, was_cancelled = run_all(
        runs, run_one, iou_threshold=iou_threshold, params=(prompt, multimask, min_pixels), outer_params=(edge_fade, outline),
        tokens=tokens, memo=memo, progress=progress)
    regions.update(run_regions)
    if vote and regions_overlap(regions) >= VOTE_MIN_OVERLAP:
        regions = vote_regions(regions, keep=seeds)
    nonempty = [z for z, r in regions.items() if region_pixels(r)]
    z_range = (min(nonempty), max(nonempty)) if nonempty else (order[0], order[0])
    return PropagationResult(RegionMasks(regions, store.volume.plane_shape), z_range, reasons, was_cancelled, ious,
                             time.perf_counter() - t0)
