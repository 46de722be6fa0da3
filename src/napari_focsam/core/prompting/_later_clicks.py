"""What serves the clicks after the refine click: small rule objects the click loop plugs in.

:class:`~napari_focsam.core.prompting.FocSAMPredictor` takes one of these as ``later_clicks``
(by name, :data:`LATER_CLICK_RULES`, or as an object). A rule gets the decoder, both
embeddings and the prompts of a click made after the refine, and returns that click's logits
and mask. A new rule (for a benchmark, say) is a class with a ``name`` and a ``decide`` method;
the click loop itself is not forked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ._click_rules import click_agreement, mask_iou, steadiest_candidate
from ._clicks import Click

__all__ = ["LATER_CLICK_RULES", "LaterClickRule", "PICK_BELOW_IOU", "PickRule", "ReuseRule", "SteadyRule",
           "later_click_rule"]

#: "pick" takes the original embedding's mask only where it overlaps the refined one less than
#: this (IoU): masks that differ by a boundary strip are not worth a switch, as late boundary
#: clicks are missed by a pixel or two by either. Measured (bench_refine_policy.py, nuclei):
#: switching on every click count difference lost up to 0.004 mean IoU at clicks 11-20.
PICK_BELOW_IOU = 0.8

#: ``(1, 1, 256, 256)`` logits -> ``(H, W)`` bool mask at the image's resolution.
ToMask = Callable[[torch.Tensor], np.ndarray]


class LaterClickRule(Protocol):
    """A rule for the clicks after the refine click.

    Attributes
    ----------
    name : str
        How it is called in the command line, the benchmarks and ``FocSAMPredictor.later_clicks``.
    """

    name: str

    def decide(self, model, refined: torch.Tensor, features: torch.Tensor, points: torch.Tensor,
               labels: torch.Tensor, prev_logits: torch.Tensor | None, clicks: Sequence[Click],
               to_mask: ToMask) -> tuple[torch.Tensor, np.ndarray]:
        """The logits ``(1, 1, 256, 256)`` and mask ``(H, W)`` of a later click.

        ``model`` is the :class:`~napari_focsam.modeling.focsam.FocSAM`; ``refined`` and
        ``features`` the refined and the original embedding ``(1, 256, 64, 64)``; ``points``
        ``(1, N, 2)`` and ``labels`` ``(1, N)`` the prompt; ``clicks`` the object's live clicks.
        """


@dataclass(frozen=True)
class ReuseRule:
    """The published loop: the refined embedding alone."""

    name: str = "reuse"

    def decide(self, model, refined, features, points, labels, prev_logits, clicks, to_mask):
        out = model.decode(refined, points, labels, prev_logits)
        return out.logits, to_mask(out.logits)


@dataclass(frozen=True)
class SteadyRule:
    """Decode on both embeddings (one batched decoder call) and keep, among the refined
    embedding's logits, the original's and their mean, the candidate ``rank`` chooses
    (:func:`~napari_focsam.core.prompting.steadiest_candidate`: the one that goes the way the
    newest click asks, then agrees with the most clicks, then changes the previous mask least)."""

    rank: Callable[[list, Sequence[Click], np.ndarray | None], int] = steadiest_candidate
    name: str = "steady"

    def decide(self, model, refined, features, points, labels, prev_logits, clicks, to_mask):
        out, plain = model.decode_pair(refined, features, points, labels, prev_logits)
        candidates = [out.logits, plain.logits, (out.logits + plain.logits) / 2]
        masks = [to_mask(c) for c in candidates]
        previous = None if prev_logits is None else to_mask(prev_logits)
        best = self.rank(masks, clicks, previous)
        return candidates[best], masks[best]


@dataclass(frozen=True)
class PickRule:
    """The refined embedding's mask unless it misses one of the clicks; then the original
    embedding's, when it differs substantially (IoU below ``below_iou``) and agrees better with
    the newest click first, then with more clicks. The second pass runs on such clicks only."""

    below_iou: float = PICK_BELOW_IOU
    name: str = "pick"

    def decide(self, model, refined, features, points, labels, prev_logits, clicks, to_mask):
        out = model.decode(refined, points, labels, prev_logits)
        logits, mask = out.logits, to_mask(out.logits)
        agree = click_agreement(mask, clicks)
        if agree < len(clicks):  # the refined mask misses a click: is the original better?
            plain = model.decode(features, points, labels, prev_logits)
            plain_mask = to_mask(plain.logits)
            if mask_iou(plain_mask, mask) < self.below_iou:
                newest = clicks[-1:]
                rank_refined = (click_agreement(mask, newest), agree)
                rank_plain = (click_agreement(plain_mask, newest), click_agreement(plain_mask, clicks))
                if rank_plain > rank_refined:
                    logits, mask = plain.logits, plain_mask
        return logits, mask


#: The product's later-click rules, by name.
LATER_CLICK_RULES: dict[str, type] = {"steady": SteadyRule, "pick": PickRule, "reuse": ReuseRule}


def later_click_rule(rule: str | LaterClickRule) -> LaterClickRule:
    """A rule object from its name (:data:`LATER_CLICK_RULES`), or the rule given."""
    if isinstance(rule, str):
        if rule not in LATER_CLICK_RULES:
            raise ValueError(f"later_clicks must be one of {', '.join(LATER_CLICK_RULES)}, got {rule!r}")
        return LATER_CLICK_RULES[rule]()
    if not callable(getattr(rule, "decide", None)) or not isinstance(getattr(rule, "name", None), str):
        raise TypeError(f"later_clicks must be a rule name or an object with a name and decide(), got {rule!r}")
    return rule
