"""Cached-embedding FocSAM inference: preprocessing and the per-object click loop (design §1.2-1.3).

The image encoder runs once per image (:meth:`FocSAMPredictor.embed`). Each object
is an :class:`InteractiveObject`: every click runs the light decoder on all clicks so
far plus the previous raw logits; at the object's first click, when the model has a
focus refiner, a coarse pass on the original embedding feeds the refiner once, the
refined embedding serves that click, and every later click chooses between the refined
and the original embedding (``later_clicks``). FocSAM as published refines at the 2nd
click (``refine_click=2``); refining at the 1st is this project's default, measured with
``benchmarks/bench_refine_policy.py``: the single-click mask is the one SAM gets most
often wrong (a part instead of the object), and the refined embedding fixes most of it.

This is the project's one click loop (:meth:`FocSAMPredictor.step`) and its one click
history (:class:`InteractiveObject`): the session keeps one :class:`InteractiveObject`
per clicked slice, the benchmark harness one per object. The history keeps per click
only the 256x256 logits (256 KiB) and a reference to the refined embedding (one
(1, 256, 64, 64) tensor shared by every click after the refine click), never a
full-resolution mask: the mask of the current click is cached and recomputed from its
logits after an undo (the same function on the same logits: the same mask).
"""

from __future__ import annotations

import inspect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ...modeling.focsam import FocSAM
from ...modeling.mask_resize import logits_to_mask_roi
from ..embeddings import ImageEmbedding, input_size_for, preprocess
from ..images import to_rgb_uint8
from ..models import tune_malloc
from ._boxes import Box, checked_box
from ._click_rules import check_clicks_inside, joins_clicked_pieces, live_clicks, object_click_count
from ._clicks import Click, checked_click
from ._later_clicks import LaterClickRule, later_click_rule
from ._prompts import PlanePrompts
from ._regions import OnPlane


def logits_to_mask(logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """(1, 1, 256, 256) raw logits -> (H, W) bool mask at the original resolution.

    The same mask as resizing the logits to the canvas, cropping ``input_size`` and resizing
    to ``original_size``, but computed only around the object
    (:func:`~napari_focsam.modeling.mask_resize.logits_to_mask_roi`): a small object on a
    4096x4096 image costs 3.5 ms instead of 87 ms (1 thread).
    """
    return logits_to_mask_roi(logits, tuple(input_size), tuple(original_size), FocSAM.image_size)


@dataclass
class StepResult:
    """Outcome of one click.

    mask: (H, W) bool; logits: (1, 1, 256, 256) raw logits, None when the decoder did not run
    (no positive click yet, or a blank image); refined: the refined embedding
    (1, 256, 64, 64) or None; timings in seconds; score: the decoder's predicted IoU of the
    mask where one decoding gave it (None when the decoder did not run, and after the
    refine click, where the later-click rule chooses between decodings).
    """

    mask: np.ndarray
    logits: torch.Tensor | None
    refined: torch.Tensor | None
    decoder_seconds: float
    refine_seconds: float = 0.0
    score: float | None = None


class FocSAMPredictor:
    """Runs a :class:`FocSAM` model on images and clicks.

    refine: use the focus refiner at the ``refine_click``-th click when the model has
    one (False runs the plain SAM loop with the same weights).

    refine_click: the click of an object that refines (counted from its first positive
    click). 1 (default): the coarse mask of the first click sets the focus region and the
    first click is decoded again on the refined embedding; on four held-out splits this
    raises the mean IoU after one click by 0.04 (nuclei) to 0.30 (DAVIS) and lowers NoC@90 on
    every split (``docs/focsam_t/README.md``). 2: FocSAM as published.

    later_clicks: what serves the clicks after the refine click. ``"steady"`` (default)
    decodes every later click on both embeddings and chooses among three candidates, the
    refined embedding's logits, the original embedding's and their mean
    (:func:`steadiest_candidate`): one that goes the way the newest click asks (a positive
    click does not remove much of the mask, a negative one does not add much), then the one
    that agrees with the most clicks, then the one that changes the previous mask least. A
    corrective click is meant to fix the error it was placed on, not to redraw the object;
    the refined embedding serves the region around the refine click's mask, the original one
    the rest, and their mean is often better than either on natural images. Measured with
    ``benchmarks/bench_refine_policy.py`` on four held-out splits (no ground truth is used):
    it keeps the refiner's gains on nuclei and halves the later-click losses of ``"pick"`` on
    natural images. Both embeddings are decoded at every later click, in one batched decoder
    call (:meth:`FocSAM.decode_pair`). ``"reuse"`` is the published loop: the refined
    embedding alone. ``"pick"`` keeps the refined embedding's mask unless it disagrees with one of the object's clicks
    (:func:`click_agreement`: positives inside, negatives outside); then the same prompt is
    decoded on the original embedding too, and its mask is taken when it differs
    substantially from the refined one (IoU below :data:`PICK_BELOW_IOU`) and agrees better
    with the clicks: first with the newest click (the user's correction), then with more
    clicks in all. The refined embedding is trained for the region around the mask of the
    refine click; a refined prediction that later collapses or ignores a correction is replaced
    by the original embedding's. The second decoder pass runs only on such clicks. Measured
    with ``benchmarks/bench_refine_policy.py`` (no ground truth is used). The rules are objects
    (:class:`~napari_focsam.core.prompting.SteadyRule`, ``PickRule``, ``ReuseRule``); any object
    with a ``name`` and a ``decide`` method may be given instead of a name.

    refine_gate: a refined mask is shown only when it keeps apart positive clicks that the
    original embedding's mask (same prompts) has on separate pieces
    (:func:`joins_clicked_pieces`): the refiner focuses on one object, and a focus region
    around two clicked cells makes it bridge them. At the refine click the coarse mask is
    then kept (the widget hints that one object is one cell), no refined embedding is kept,
    and the refine is tried again at the next click (after a negative click took the second
    cell back, say). This matters for ``refine_click=2``: with one click nothing can be
    bridged. (Leaving bridging candidates out of later ``"steady"`` clicks too was measured:
    no change on the two-cells sequence, 0.004-0.011 mean IoU lost at clicks 2-3 on natural
    images, whose objects have several pieces.) False: the refine is taken as it is, at the
    ``refine_click``-th click only.
    """

    def __init__(self, model: FocSAM, *, refine: bool = True, refine_click: int = 1,
                 channel_order: str | None = None, later_clicks: str | LaterClickRule = "steady",
                 refine_gate: bool = True) -> None:
        tune_malloc()  # per-click tensors of several MiB: avoid a page fault per 4 KiB
        if isinstance(refine_click, bool) or not isinstance(refine_click, int) or refine_click < 1:
            raise ValueError(f"refine_click must be a click number >= 1, got {refine_click!r}")
        self.later_rule = later_click_rule(later_clicks)
        self.model = model.eval()
        self.refine = refine and model.has_refiner
        self.refine_click = refine_click
        #: the name of the later-click rule (``self.later_rule``)
        self.later_clicks = self.later_rule.name
        self.refine_gate = refine_gate
        self.channel_order = channel_order or model.channel_order

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Encode a 2D image ((H, W) or (H, W, C), any dtype) -> :class:`ImageEmbedding`."""
        rgb = to_rgb_uint8(image)
        x, input_size = preprocess(rgb, self.channel_order, self.device)
        features = self.model.encode(x)
        return ImageEmbedding(features, input_size, tuple(rgb.shape[:2]))

    def _prompts(self, embedding: ImageEmbedding, clicks: Sequence[Click], box: Box | None = None):
        """(1, N, 2) canvas (x, y) and (1, N) labels (:meth:`PlanePrompts.tokens`) on this device."""
        return PlanePrompts(tuple(clicks), box).tokens(embedding.original_size, embedding.input_size, self.device)

    @torch.inference_mode()
    def step(
        self,
        embedding: ImageEmbedding,
        clicks: Sequence[Click] | PlanePrompts,
        prev_logits: torch.Tensor | None = None,
        refined: torch.Tensor | None = None,
        *,
        box: Box | None = None,
        prev_mask: np.ndarray | None = None,
    ) -> StepResult:
        """One click of the FocSAM loop. ``clicks`` are all clicks so far (>= 1, or >= 0 with a box).

        prev_logits: (1, 1, 256, 256) logits of the previous click (None at the first);
        refined: the refined embedding once there is one. The refiner runs when the object
        reaches its ``refine_click``-th click (counted from its first positive click, see
        :func:`object_click_count`) and has no refined embedding yet, or at a later click
        without a refined embedding when ``refine_gate`` is on. Without any positive
        click the mask is empty and the decoder does not run (``logits`` is None).

        A click followed by one of the other polarity on the same pixel is left out of the prompt
        (:func:`live_clicks`: the user took it back, e.g. a negative click on a cell clicked
        positive by mistake); the mask is empty when no positive click is left.

        box: a box prompt (image pixels, see :mod:`~napari_focsam.core.prompting._boxes`) kept with every click; it is the
        object's first prompt, so the clicks count from 2 and the refiner runs at the first
        click after the box (its focus region comes from the box step's mask), also with
        ``refine_click=1``: a box already bounds the object, and refining the box step's
        own mask lost mean IoU at the box and at the next click on GrabCut (0.957 / 0.966
        against 0.961 / 0.976 without, ``benchmarks/bench_refine_policy.py --boxes``).

        prev_mask: the (H, W) mask of ``prev_logits`` when the caller has it (the later-click
        rule compares the candidates with it; it is not computed again).
        """
        if isinstance(clicks, PlanePrompts):  # the prompts as one value
            clicks, box = clicks.clicks, clicks.box
        if not clicks and box is None:
            raise ValueError("at least one click is needed")
        check_clicks_inside(clicks, embedding.original_size)
        n = object_click_count(clicks) if box is None else len(clicks) + 1
        clicks = live_clicks(clicks, embedding.original_size)
        if n == 0 or (box is None and object_click_count(clicks) == 0):  # no positive click (left)
            return StepResult(np.zeros(embedding.original_size, dtype=bool), None, refined, 0.0)
        pts, lab = self._prompts(embedding, clicks, box)
        features = embedding.features.to(self.device)
        refine_s = 0.0
        t0 = time.perf_counter()
        later = refined is not None
        coarse = None
        at = self.refine_click if box is None else max(self.refine_click, 2)  # a box: its next click
        due = n == at or (self.refine_gate and n > at)
        if refined is None and self.refine and due:
            coarse = self.model.decode(features, pts, lab, prev_logits)
            t1 = time.perf_counter()
            refined = self.model.refine(features, coarse.logits, coarse.token)
            refine_s = time.perf_counter() - t1
        def to_mask(lg: torch.Tensor) -> np.ndarray:
            if lg is prev_logits and prev_mask is not None:
                return prev_mask
            return logits_to_mask(lg, embedding.input_size, embedding.original_size)

        score = None
        if later:  # a click after the refine: the later-click rule decides
            logits, mask = self.later_rule.decide(self.model, refined, features, pts, lab, prev_logits, clicks,
                                                  to_mask)
        else:
            out = self.model.decode(refined if refined is not None else features, pts, lab, prev_logits)
            logits, score = out.logits, float(out.iou[0, 0])
            mask = to_mask(logits)
            if coarse is not None and self.refine_gate:
                coarse_mask = to_mask(coarse.logits)
                if joins_clicked_pieces(coarse_mask, mask, clicks):  # bridged: not one object's refine
                    logits, mask, refined = coarse.logits, coarse_mask, None
                    score = float(coarse.iou[0, 0])
        total = time.perf_counter() - t0
        return StepResult(mask, logits, refined, total - refine_s, refine_s, score)


_SERIAL = itertools.count(1)


@dataclass(frozen=True)
class ClickState:
    """One step of a click history: the click and what the decoder left after it.

    ``click`` is None for the box step of an object started from a box (see
    :meth:`InteractiveObject.set_box`).

    logits: (1, 1, 256, 256), None when the decoder did not run (blank image, or no positive
    click yet); refined: (1, 256, 64, 64) or None, one tensor shared by all the steps from
    the refine click on; score: the decoder's predicted IoU of the step's mask
    (:attr:`StepResult.score`, None where unknown); serial: a process-wide unique id of this
    state (a change token).
    """

    click: Click | None
    logits: torch.Tensor | None
    refined: torch.Tensor | None
    score: float | None = None
    serial: int = field(default_factory=lambda: next(_SERIAL))


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False
    return mask


def _takes_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name`` (a wrapped or older ``step`` may not)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _compact(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` itself, or a copy when it is a view into a larger buffer (held for the whole history)."""
    if t is None:
        return None
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone()
    return t


def tensor_bytes(*items: Any) -> int:
    """Bytes of the distinct tensor storages and numpy buffers among ``items`` (None ignored)."""
    seen: dict[tuple[str, int], int] = {}
    for v in items:
        if isinstance(v, torch.Tensor):
            st = v.untyped_storage()
            seen[("t", st.data_ptr())] = st.nbytes()
        elif isinstance(v, np.ndarray):
            base = v
            while isinstance(base.base, np.ndarray):
                base = base.base
            seen[("a", base.__array_interface__["data"][0])] = base.nbytes
    return sum(seen.values())


class InteractiveObject(OnPlane):
    """One object being segmented by clicks on one image embedding: the click history.

    Keeps the history of steps (:class:`ClickState`) so that :meth:`undo` restores the exact
    previous state (logits and refined embedding), as if the last click had never happened.
    The (H, W) mask is kept for the current step only and recomputed from the logits after
    an undo; returned masks are read-only.

    Parameters
    ----------
    predictor : FocSAMPredictor
        Runs the decoder steps (its ``refine`` setting is read at each click).
    embedding : ImageEmbedding or callable
        The image's embedding, or a zero-argument callable returning it, called once per
        decoder step (a session passes its store's getter, so that the features stay in the
        store's bounded cache instead of in every object).
    original_size : (H, W), optional
        The image size; needed (only) when ``embedding`` is a callable.
    skip_blank : bool
        When the embedding is marked ``blank`` (a constant image, see ``SliceEmbedding``),
        every click gives an empty mask and the decoder does not run.
    """

    offset = 0.0  # the propagation cuts its runs from this slice at 0 (no level cut)

    def __init__(self, predictor: FocSAMPredictor, embedding: ImageEmbedding | Callable[[], ImageEmbedding], *,
                 original_size: tuple[int, int] | None = None, skip_blank: bool = True) -> None:
        self.predictor = predictor
        if callable(embedding):
            if original_size is None:
                raise ValueError("original_size (H, W) is needed when the embedding is a callable")
            self._source = embedding
        else:
            self._source = lambda emb=embedding: emb
            original_size = embedding.original_size
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = input_size_for(self.original_size)
        self.skip_blank = skip_blank
        #: the embedding was marked blank at the last click (its mask is then empty)
        self.blank = False
        self._states: list[ClickState] = []
        #: the box prompt, kept with every click (see :meth:`set_box`); _base is its decoder step
        self.box: Box | None = None
        self._base: ClickState | None = None
        self._mask: np.ndarray | None = None  # mask of the state with serial self._mask_serial
        self._mask_serial = 0

    def __repr__(self) -> str:
        return f"InteractiveObject(clicks={len(self._states)}, size={self.original_size})"

    def __len__(self) -> int:
        return len(self._states)

    @property
    def embedding(self) -> ImageEmbedding:
        return self._source()

    # -- state
    @property
    def states(self) -> tuple[ClickState, ...]:
        return tuple(self._states)

    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self._states]

    @property
    def _last(self) -> ClickState | None:
        """The current state: the last click's, else the box step's, else None."""
        return self._states[-1] if self._states else self._base

    @property
    def logits(self) -> torch.Tensor | None:
        return self._last.logits if self._last is not None else None

    @property
    def refined(self) -> torch.Tensor | None:
        return self._last.refined if self._last is not None else None

    @property
    def score(self) -> float | None:
        """The decoder's score of the current state's mask (see :attr:`StepResult.score`)."""
        return self._last.score if self._last is not None else None

    @property
    def token(self) -> int | None:
        """Identifies the current state (changes with every click, box, undo or reset); None when empty."""
        return self._last.serial if self._last is not None else None

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, read-only: the mask after the last click (empty without clicks)."""
        last = self._last
        if last is None:
            return _frozen(np.zeros(self.original_size, dtype=bool))
        if self._mask is None or self._mask_serial != last.serial:
            if last.logits is None:
                mask = np.zeros(self.original_size, dtype=bool)
            else:
                with torch.inference_mode():
                    mask = logits_to_mask(last.logits, self.input_size, self.original_size)
            self._mask, self._mask_serial = _frozen(mask), last.serial
        return self._mask

    def nbytes(self) -> int:
        """Bytes of the arrays this object holds: the history's logits and refined embedding,
        plus the cached mask of the current step."""
        states = self._states + ([self._base] if self._base is not None else [])
        items = [s.logits for s in states] + [s.refined for s in states]
        return tensor_bytes(*items, self._mask)

    # -- editing
    def add_click(self, y: float, x: float, positive: bool = True) -> np.ndarray:
        """Add a click (image coordinates) and return the new (H, W) bool mask.

        napari's pixel convention is accepted at the border (see :func:`~napari_focsam.core.prompting.checked_click`);
        ``positive`` must be a bool.
        """
        return self.add(checked_click(y, x, positive, self.original_size)).mask

    def add(self, click: Click) -> StepResult:
        """Add a click and return the full :class:`StepResult` (with timings)."""
        clicks = self.clicks + [click]
        emb = self._source()
        self.blank = bool(getattr(emb, "blank", False))
        if self.skip_blank and self.blank:
            check_clicks_inside(clicks, self.original_size)
            res = StepResult(np.zeros(self.original_size, dtype=bool), None, None, 0.0)
        else:
            extra = {"box": self.box} if self.box is not None else {}  # older step() signatures stay valid
            if self.logits is not None and _takes_keyword(self.predictor.step, "prev_mask"):
                extra["prev_mask"] = self.mask  # the mask shown now (cached): not computed again
            res = self.predictor.step(emb, clicks, self.logits, self.refined, **extra)
        refined = res.refined if res.refined is self.refined else _compact(res.refined)  # shared, not copied
        state = ClickState(click, _compact(res.logits), refined, getattr(res, "score", None))
        self._states.append(state)
        self._mask, self._mask_serial = _frozen(res.mask), state.serial
        return res

    def replace_last(self, logits: torch.Tensor) -> np.ndarray:
        """Replace the last click's (1, 1, 256, 256) logits (an answer chosen by the caller, such
        as another of the decoder's candidates); the refined embedding stays. Undo removes the
        click as usual. Returns the new mask; ValueError without a click."""
        if not self._states:
            raise ValueError("no click to replace the answer of")
        last = self._states[-1]
        state = ClickState(last.click, _compact(logits), last.refined)
        self._states[-1] = state
        with torch.inference_mode():
            mask = logits_to_mask(state.logits, self.input_size, self.original_size)
        self._mask, self._mask_serial = _frozen(mask), state.serial
        return self._mask

    def set_box(self, box: Sequence[float] | None) -> np.ndarray:
        """Start the object from a box (y0, x0, y1, x1) in image pixels, or remove it (None).

        The clicks made so far are replayed on top of the new box (or without it), so the box
        is always the object's first prompt. ValueError for a degenerate box (zero area, off
        the image; see :func:`~napari_focsam.core.prompting.checked_box`). Returns the new mask.
        """
        new = checked_box(box, self.original_size) if box is not None else None
        clicks = self.clicks
        self._states.clear()
        self._base, self.box, self._mask = None, new, None
        if new is not None:
            emb = self._source()
            self.blank = bool(getattr(emb, "blank", False))
            if self.skip_blank and self.blank:
                res = StepResult(np.zeros(self.original_size, dtype=bool), None, None, 0.0)
            else:
                res = self.predictor.step(emb, [], None, None, box=new)
            self._base = ClickState(None, _compact(res.logits), None, getattr(res, "score", None))
            self._mask, self._mask_serial = _frozen(res.mask), self._base.serial
        for c in clicks:
            self.add(c)
        return self.mask

    def undo(self) -> np.ndarray:
        """Remove the last click; returns the previous mask (the box's mask, or empty, when no
        click is left; the box stays until :meth:`set_box` (None) or :meth:`reset`)."""
        if self._states:
            self._states.pop()
        return self.mask

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` clicks only (as ``len - n`` undos)."""
        del self._states[max(0, n):]

    def reset(self) -> None:
        self._states.clear()
        self._base, self.box, self._mask = None, None, None
