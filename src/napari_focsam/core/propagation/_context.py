"""A later click on a clicked slice of a stack, checked against the object's neighbouring sections.

On one slice the click loop is 2D: after a second click the decoder may answer with a much
larger object around the one meant. On the VNC mitochondria (``bench_volume_interactive.py``),
mitochondrion 14's start slice got a second positive click inside the mitochondrion and the
decoder drew the neurite that holds it, 20,883 px for a section of 3,514 (its neighbouring
sections 2,430 and 3,872 px); the runs from that slice then carried the neurite into the
slices around it, and the 3D IoU fell from 0.68 to 0.42. Among the decoder's three candidates
for the same two clicks the first was the mitochondrion (3,195 px, IoU 0.82 with the label),
scored lower than the neurite (0.48 against 0.77).

In a stack the object's sections on the slices next to the clicked one say how large it can
be there. :func:`neighbour_answer` checks a later click's mask against them: when its size is
outside the band that :data:`~napari_focsam.core.propagation._runs.GAP_SIZE_BAND` allows
between two sections (0.5 x the smaller neighbour's to 2 x the larger's), the decoder's three
candidates for the slice's clicks are decoded, and the one that fits the band, holds every
positive click and no negative one, and overlaps the neighbours most replaces the answer. When
none fits, the decoder's answer stays: the user may be showing an object that really changes
size there.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..embeddings import ImageEmbedding
from ..prompting import Click, FocSAMPredictor, click_agreement, live_clicks, logits_to_mask
from ._decode import decoder_outputs
from ._runs import GAP_SIZE_BAND

__all__ = ["fits_neighbours", "neighbour_answer"]


def fits_neighbours(size: int, neighbours: Sequence[np.ndarray]) -> bool:
    """Whether a section of ``size`` pixels lies in the band the (non-empty) ``neighbours``'
    sizes allow (:data:`GAP_SIZE_BAND`); True without neighbours."""
    return _fits(size, [int(np.count_nonzero(m)) for m in neighbours])


def _fits(size: int, sizes: Sequence[int]) -> bool:
    """:func:`fits_neighbours` on the neighbours' pixel counts."""
    return not sizes or GAP_SIZE_BAND[0] * min(sizes) <= size <= GAP_SIZE_BAND[1] * max(sizes)


@torch.inference_mode()
def neighbour_answer(predictor: FocSAMPredictor, embedding: ImageEmbedding | Callable[[], ImageEmbedding],
                     clicks: Sequence[Click], mask: np.ndarray, neighbours: Sequence[np.ndarray]
                     ) -> torch.Tensor | None:
    """The (1, 1, 256, 256) logits of the decoder's candidate for ``clicks`` that fits the
    object's sections on the neighbouring slices, or None to keep ``mask`` (the click loop's
    answer, (H, W) bool).

    Parameters
    ----------
    predictor : FocSAMPredictor
        Its model decodes the candidates.
    embedding : ImageEmbedding or callable
        The slice's embedding (the plain one: the candidates are the decoder's own), or a
        zero-argument callable returning it, called only when the candidates are decoded.
    clicks : sequence of Click
        The slice's clicks, image pixels (a click taken back by one of the other polarity on the
        same pixel is left out, as the click loop leaves it out).
    mask : np.ndarray
        (H, W) bool, the answer the click loop gave.
    neighbours : sequence of np.ndarray
        (H, W) bool masks of the object on the slices next to this one (empty ones are ignored).
    """
    neighbours = [np.asarray(m, bool) for m in neighbours if m is not None and np.any(m)]
    sizes = [int(np.count_nonzero(m)) for m in neighbours]
    live = live_clicks(clicks, mask.shape)  # the prompt the click loop decoded (clicks taken back left out)
    if not neighbours or not any(c.is_positive for c in live) or _fits(int(mask.sum()), sizes):
        return None
    emb = embedding() if callable(embedding) else embedding
    out = decoder_outputs(predictor, emb, [(c.y, c.x, c.is_positive) for c in live], multimask=True)
    best, best_overlap = None, -1.0
    for i in range(out.logits.shape[1]):
        logits = out.logits[:, i:i + 1]
        cand = logits_to_mask(logits, emb.input_size, emb.original_size)
        fits = cand.any() and _fits(int(cand.sum()), sizes)
        if not fits or click_agreement(cand, live) < len(live):
            continue
        overlap = float(np.mean([np.count_nonzero(cand & m) / np.count_nonzero(cand | m) for m in neighbours]))
        if overlap > best_overlap:
            best, best_overlap = logits, overlap
    return best
