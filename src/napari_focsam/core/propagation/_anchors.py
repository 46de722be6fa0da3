"""Corrections on propagated slices: a click there starts from the propagated mask.

After a propagation, a click on a slice without clicks of its own is a *correction* of the
mask the propagation left there, not the first click of a new 2D object. The first version
did the latter: a positive click redrew the slice from that click alone (the propagated part
the user was happy with could vanish), and a negative click, with no positive click on its
slice, emptied the slice, so it became a stop slice and every slice behind it was lost. With
the 3D correction protocol on cells3d (``benchmarks/bench_volume_interactive.py``) this is why
corrections stalled and then made objects worse.

An :class:`AnchorHistory` is the click history of such a slice. Its prompt is the prompt the
propagation used there, one positive click at the interior point of the propagated mask
(:func:`~napari_focsam.core.propagation.interior_point`), with the propagated mask as the decoder's mask input, plus
the user's clicks: the correction edits the propagated mask. The slice then becomes an anchor
of the object (a seed of the next propagation, as every clicked slice).

"Stop here": a negative click inside the disc the propagated mask's interior point is the
centre of (the largest disc inside the mask) rejects the mask as a whole, the propagated
prompt is taken back, the slice comes out empty and the propagation stops there. A negative
click elsewhere in the mask (a leak at its side, a neighbour it spilled into) only removes
that part.

A positive click on a slice next to the object where the propagation left nothing (it
stopped one slice too early, or the user stopped it there) is decoded with the neighbouring
slice's mask as the decoder's mask input (``context=True``): a fresh single click at a blurred
object end otherwise often grabbed a large blob, and the outer run from it leaked through the
following slices.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from ..embeddings import ImageEmbedding, input_size_for
from ..prompting import Click, ClickState, FocSAMPredictor, OnPlane, click_pixel, logits_to_mask, tensor_bytes
from ._plain import mask_to_logits

__all__ = ["AnchorHistory", "STOP_DISC", "inside", "prior_prompt", "rejects_mask"]

#: A negative click within this fraction of the largest inscribed disc's radius from the
#: disc's centre (the propagated prompt's point) rejects the whole propagated mask.
STOP_DISC = 0.3


def inside(mask: np.ndarray, click: Click) -> bool:
    """Whether ``click`` falls on a pixel of the (H, W) bool ``mask`` (pixel i spans i +- 0.5)."""
    return bool(mask[click_pixel(click, mask.shape)])


def prior_prompt(mask: np.ndarray) -> tuple[Click, float]:
    """The propagation's prompt for an (H, W) bool ``mask``: a positive click at its interior
    point (the pixel farthest from the boundary, the plane border counting as boundary), and
    that distance (the radius of the largest disc inside the mask).

    Raises
    ------
    ValueError
        When ``mask`` is empty.
    """
    if not np.any(mask):
        raise ValueError("an anchor needs a non-empty propagated mask")
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(float(y), float(x), True), float(dist[y, x])


def rejects_mask(click: Click, centre: Click, radius: float, disc: float = STOP_DISC) -> bool:
    """Whether ``click`` (a negative click) lies within ``disc * radius`` of ``centre``, the
    propagated prompt's point: the user rejects the whole mask there ("stop here")."""
    if click.is_positive:
        return False
    return float(np.hypot(click.y - centre.y, click.x - centre.x)) <= disc * max(radius, 1.0)


class AnchorHistory(OnPlane):
    """The click history of a propagated slice the user corrects (see the module docs).

    Same interface as the predictor's ``InteractiveObject`` as far as a
    :class:`~napari_focsam.core.session.SegmentedObject` uses it (``add``, ``undo``, ``truncate``, ``clicks``,
    ``mask``, ``logits``, ``token``, ``blank``, ``box``, ``nbytes``).

    Parameters
    ----------
    predictor : FocSAMPredictor
        Runs the decoder steps (the object's click loop, refine included).
    embedding : callable
        Zero-argument callable returning the slice's :class:`ImageEmbedding`.
    original_size : (H, W)
        The plane size.
    prior : (H, W) bool array
        The propagated mask of the slice (non-empty).
    prior_logits : (1, 1, 256, 256) tensor, optional
        The propagation's logits of the slice; made from ``prior`` when None.
    context : bool
        ``prior`` is a neighbouring slice's mask (the slice itself has none: the user extends
        the object beyond where the propagation stopped): it is the decoder's mask input for
        the first click, but its prompt point is not kept, and there is no "stop here".
    """

    box = None  # an anchor never holds the object's box

    def __init__(self, predictor: FocSAMPredictor, embedding: Callable[[], ImageEmbedding],
                 original_size: tuple[int, int], prior: np.ndarray,
                 prior_logits: torch.Tensor | None = None, *, context: bool = False) -> None:
        self.predictor = predictor
        self._source = embedding
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = input_size_for(self.original_size)
        self.prior = np.array(prior, dtype=bool)
        self.prior.flags.writeable = False
        self.prior_click, self.prior_radius = prior_prompt(self.prior)
        self.prior_logits = (prior_logits if prior_logits is not None
                             else mask_to_logits(self.prior, self.input_size))
        self.context = bool(context)
        self.blank = False
        self._states: list[ClickState] = []
        self._mask: np.ndarray | None = None
        self._mask_serial = 0

    def __repr__(self) -> str:
        return f"AnchorHistory(clicks={len(self._states)}, prior={int(self.prior.sum())} px)"

    def __len__(self) -> int:
        return len(self._states)

    @property
    def clicks(self) -> list[Click]:
        """The user's clicks on the slice (the propagated prompt is not one of them)."""
        return [s.click for s in self._states]

    @property
    def states(self) -> tuple[ClickState, ...]:
        return tuple(self._states)

    @property
    def logits(self) -> torch.Tensor | None:
        """(1, 1, 256, 256) logits after the last click (None when the slice is empty)."""
        return self._states[-1].logits if self._states else self.prior_logits

    @property
    def refined(self) -> torch.Tensor | None:
        return self._states[-1].refined if self._states else None

    @property
    def token(self) -> int | None:
        return self._states[-1].serial if self._states else None

    @property
    def stopped(self) -> bool:
        """The user rejected the propagated mask here (a "stop here" slice)."""
        return not self.context and any(rejects_mask(c, self.prior_click, self.prior_radius) for c in self.clicks)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, read-only: the slice's mask after the last click (the prior without clicks)."""
        if not self._states:
            return np.zeros(self.original_size, dtype=bool) if self.context else self.prior
        last = self._states[-1]
        if self._mask is None or self._mask_serial != last.serial:
            if last.logits is None:
                mask = np.zeros(self.original_size, dtype=bool)
            else:
                with torch.inference_mode():
                    mask = logits_to_mask(last.logits, self.input_size, self.original_size)
            mask.flags.writeable = False
            self._mask, self._mask_serial = mask, last.serial
        return self._mask

    def nbytes(self) -> int:
        items = [s.logits for s in self._states] + [s.refined for s in self._states]
        return tensor_bytes(*items, self._mask, self.prior, self.prior_logits)

    def prompt(self, clicks: Sequence[Click]) -> list[Click]:
        """The decoder's clicks for the user's ``clicks``: the propagated prompt first, unless a
        negative click rejects the mask (then the user's clicks alone)."""
        if self.context or any(rejects_mask(c, self.prior_click, self.prior_radius) for c in clicks):
            return list(clicks)
        return [self.prior_click, *clicks]

    def add(self, click: Click) -> None:
        """Add a user click and decode the slice again."""
        clicks = self.clicks + [click]
        emb = self._source()
        self.blank = bool(getattr(emb, "blank", False))
        prompt = self.prompt(clicks)
        if self.blank or not any(c.is_positive for c in prompt):
            state = ClickState(click, None, None)
            mask = np.zeros(self.original_size, dtype=bool)
        else:
            prev = self._states[-1].logits if self._states else self.prior_logits
            refined = self._states[-1].refined if self._states else None
            res = self.predictor.step(emb, prompt, prev, refined)
            state = ClickState(click, res.logits, res.refined)
            mask = np.array(res.mask, dtype=bool)
        mask.flags.writeable = False
        self._states.append(state)
        self._mask, self._mask_serial = mask, state.serial

    def set_box(self, box: Sequence[float] | None) -> np.ndarray:
        """Refused: a box starts an object, an anchor corrects one."""
        raise ValueError("this slice corrects a propagated mask: a box starts an object on one slice; "
                         "start a new object for a box")

    def undo(self) -> np.ndarray:
        """Remove the last click; returns the previous mask."""
        if self._states:
            self._states.pop()
        return self.mask

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` clicks only."""
        del self._states[max(0, n):]

    def reset(self) -> None:
        self._states.clear()
        self._mask = None
