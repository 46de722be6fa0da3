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

A level cut: a first negative click on the *halo* of a propagated mask (where the
propagation's own logits are low, at most :data:`LEVEL_HALO` of the centre's) moves the whole
outline in, to a level a little above the logits at the clicked pixel, instead of asking the
decoder to remove the part around the click. At the blurred ends of a fluorescent nucleus SAM
only offers a speck or the whole blur (cells3d: candidates of ~20 px or 700-1300 px where the
label has 170-530), but its logits fall steadily across the blur, so a higher level finds the
label's outline (IoU 0.59 -> 0.89 on one such slice). The runs from the slice carry the level,
fading with the distance (``offsets`` and ``LEVEL_FADE`` of
:func:`~napari_focsam.core.propagation.propagate`), so the slices next to a corrected end
shrink too. A click where the logits are high (a sharp edge, a neighbour the mask spilled
into) is left to the decoder.

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

from ...modeling.mask_resize import logit_at
from ..embeddings import ImageEmbedding, input_size_for
from ..prompting import Click, ClickState, FocSAMPredictor, OnPlane, click_pixel, logits_to_mask, tensor_bytes
from ._plain import decode_prompt, inner_depth, mask_to_logits

__all__ = ["AnchorHistory", "STOP_DISC", "inside", "prior_prompt", "rejects_mask"]

#: A negative click within this fraction of the largest inscribed disc's radius from the
#: disc's centre (the propagated prompt's point) rejects the whole propagated mask.
STOP_DISC = 0.3
#: Level cuts (:meth:`AnchorHistory.level_cut`): the new level lies this fraction of the way
#: from the clicked pixel's logit to the centre's (0: the outline through the click). Chosen with
#: ``benchmarks/bench_volume_interactive.py`` (cells3d, stardist 3D, chloroplasts, VNC): 0, 0.3
#: and 0.5 differed by less than 0.004 mean 3D IoU at every click on cells3d.
LEVEL_STEP = 0.3
#: ... only on a halo: where the clicked pixel's logit is at most this fraction of the centre's.
#: Without it, cuts through the sharp edges of EM objects (a leak into a neighbour) cost the
#: chloroplasts 0.045 mean 3D IoU at the 8th click.
LEVEL_HALO = 0.5
#: ... and only when the cut keeps at least this fraction of the propagated mask.
LEVEL_MIN_KEEP = 0.2
#: ... and only when it removes nothing deeper inside the propagated mask than this many times
#: the clicked pixel's own depth (its distance to the mask's outline), plus 2 pixels: the click
#: says the outline lies inside of *there*, so a cut that takes the mask's inner part too is not
#: what was asked. A cut at a blurred end removes a band as deep as the click; on an EM
#: chloroplast a click 7 px inside its edge cut away 63 % of the section, 39 px deep.
LEVEL_MAX_DEPTH = 2.0


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
    y0, x0, dist = inner_depth(mask)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(float(y0 + y), float(x0 + x), True), float(dist[y, x])


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
    #: read a first negative click on a halo as a level cut (:meth:`level_cut`)
    level_cuts = True

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
        self._graded: tuple[np.ndarray, torch.Tensor] | None = None
        self._offsets: list[float] = []
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
    def offset(self) -> float:
        """The logit level this slice's runs cut their masks at (0 unless a level cut moved it)."""
        return self._offsets[-1] if self._offsets else 0.0

    def graded(self, emb: ImageEmbedding) -> tuple[np.ndarray, torch.Tensor]:
        """The propagation's own decoding of this slice (its prompt: the prior's interior point,
        three candidates, the one closest to the prior): mask and graded (1, 1, 256, 256) logits."""
        if self._graded is None:
            c = self.prior_click
            self._graded = decode_prompt(self.predictor, emb, [(c.y, c.x, True)], multimask=True,
                                         reference=self.prior)
        return self._graded

    def level_cut(self, emb: ImageEmbedding, click: Click) -> tuple[torch.Tensor, np.ndarray, float] | None:
        """A negative click on the halo of the propagated mask, read as "the outline lies inside
        of here": the mask where the propagation's own (graded) logits exceed a level a little
        above theirs at the clicked pixel (:data:`LEVEL_STEP`), so the whole outline moves in.

        Returns the logits shifted to the new level (their mask is ``> 0``), the mask and the
        level; None for a positive click, a click off the mask, a click whose logit is above
        :data:`LEVEL_HALO` of the centre's (a sharp edge: the decoder edits the mask instead),
        or a cut that loses the centre, keeps less than :data:`LEVEL_MIN_KEEP` of the mask or
        removes pixels deeper inside it than :data:`LEVEL_MAX_DEPTH` times the click's depth.
        """
        _, logits = self.graded(emb)
        iy, ix = click_pixel(click, self.original_size)
        cy, cx = click_pixel(self.prior_click, self.original_size)
        v = logit_at(logits, self.input_size, self.original_size, iy, ix)
        vc = logit_at(logits, self.input_size, self.original_size, cy, cx)
        if click.is_positive or v <= 0 or v > LEVEL_HALO * vc:
            return None
        level = v + LEVEL_STEP * (vc - v) + 1e-3
        shifted = logits - level
        with torch.inference_mode():
            mask = logits_to_mask(shifted, self.input_size, self.original_size)
        if not mask[cy, cx] or mask[iy, ix] or mask.sum() < LEVEL_MIN_KEEP * self.prior.sum():
            return None
        y0, x0, depth = inner_depth(self.prior)  # on the prior's box: the cut only removes from it
        box = (slice(y0, y0 + depth.shape[0]), slice(x0, x0 + depth.shape[1]))
        removed = self.prior[box] & ~mask[box]
        inside_box = 0 <= iy - y0 < depth.shape[0] and 0 <= ix - x0 < depth.shape[1]
        at_click = float(depth[iy - y0, ix - x0]) if inside_box else 0.0
        if removed.any() and depth[removed].max() > LEVEL_MAX_DEPTH * at_click + 2.0:
            return None
        return shifted, mask, level

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
        graded = self._graded or (None, None)
        return tensor_bytes(*items, self._mask, self.prior, self.prior_logits, *graded)

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
        cut = None
        if (self.level_cuts and not self._states and not self.context and not self.blank
                and self.prior_click in prompt):
            cut = self.level_cut(emb, click)
        offset = self.offset
        if cut is not None:
            shifted, mask, offset = cut
            state = ClickState(click, shifted, None)
            mask = np.array(mask, dtype=bool)
        elif self.blank or not any(c.is_positive for c in prompt):
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
        self._offsets.append(offset)
        self._mask, self._mask_serial = mask, state.serial

    def set_box(self, box: Sequence[float] | None) -> np.ndarray:
        """Refused: a box starts an object, an anchor corrects one."""
        raise ValueError("this slice corrects a propagated mask: a box starts an object on one slice; "
                         "start a new object for a box")

    def undo(self) -> np.ndarray:
        """Remove the last click; returns the previous mask."""
        if self._states:
            self._states.pop()
            self._offsets.pop()
        return self.mask

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` clicks only."""
        del self._states[max(0, n):]
        del self._offsets[max(0, n):]

    def reset(self) -> None:
        self._states.clear()
        self._offsets.clear()
        self._mask = None
