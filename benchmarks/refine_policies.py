"""The click policies compared by ``bench_refine_policy.py``: the product's (``plain``,
``steady``, ``pick``, ``reuse``) and the experimental ones (kept here, out of the product).

See ``bench_refine_policy.py``'s docstring for what each policy does.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def build_predictor(model, policy: str):
    """A FocSAMPredictor running ``policy`` (see the module docstring)."""
    from napari_focsam.core.prompting import (
        FocSAMPredictor, StepResult, click_agreement, logits_to_mask, mask_iou, object_click_count)
    from napari_focsam.modeling.focus_region import focus_token_mask

    if policy == "plain":
        return FocSAMPredictor(model, refine=False)
    if policy == "steady":
        return FocSAMPredictor(model)
    if policy.startswith("steady_k"):
        return close_coarse_predictor(model, int(policy[len("steady_k"):]) / 100)
    if policy.startswith("steady_grow"):  # steady_growF (x10) / steady_growFk: coarse when F/10 x larger
        spec = policy[len("steady_grow"):]
        return grow_gated_predictor(model, int(spec.rstrip("k")) / 10, keep_refined=spec.endswith("k"))
    if policy.startswith("steady_g1"):
        return first_click_gated_predictor(model, int(policy[len("steady_g1"):] or 0) / 100)
    if policy == "steady2":
        return FocSAMPredictor(model, refine_click=2)
    if policy in ("steady_nocheck", "steady_nocheck_r1"):
        return ranked_predictor(model, agreement_then_closeness, 2 if policy == "steady_nocheck" else 1)
    if policy in ("steady_noE1", "steady_nomean"):
        return ranked_predictor(model, without_candidate(0 if policy.endswith("E1") else 2), 1)
    if policy == "steady_e1":
        return ranked_predictor(model, refined_unless_against_click, 1)
    if policy == "steady_nocheck_r12":
        return twice_refining_predictor(model)
    if policy.startswith("steadypm"):
        return merging_predictor(model, int(policy[len("steadypm"):]))
    if policy == "steadyrr":
        return rerefining_predictor(model)
    if policy in ("pick", "reuse"):
        return FocSAMPredictor(model, later_clicks=policy, refine_click=2)
    if policy == "pick_nogate":
        return FocSAMPredictor(model, later_clicks="pick", refine_gate=False, refine_click=2)
    if policy == "pick_any":
        policy = "pick_far101"  # the IoU condition always holds

    class PolicyPredictor(FocSAMPredictor):
        """The experimental policies (kept out of the product)."""

        focus: dict[int, torch.Tensor] = {}
        chains: dict[int, tuple] = {}

        @torch.inference_mode()
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            n = object_click_count(clicks)
            if n == 0:
                return StepResult(np.zeros(embedding.original_size, dtype=bool), None, refined, 0.0)
            pts, lab = self._prompts(embedding, clicks)
            e0 = embedding.features.to(self.device)
            t0 = time.perf_counter()
            refine_s = 0.0

            def to_mask(lg):
                return logits_to_mask(lg, embedding.input_size, embedding.original_size)

            def do_refine(src_logits, token):
                nonlocal refine_s
                t1 = time.perf_counter()
                out = self.model.refine(e0, src_logits, token)
                refine_s += time.perf_counter() - t1
                self.focus[id(out)] = focus_token_mask(src_logits)[0]
                return out

            if refined is None and n < self.refine_click:
                out = self.model.decode(e0, pts, lab, prev_logits)
                logits, mask = out.logits, to_mask(out.logits)
            elif refined is None and n == self.refine_click:
                coarse = self.model.decode(e0, pts, lab, prev_logits)
                refined = do_refine(coarse.logits, coarse.token)
                fine = self.model.decode(refined, pts, lab, prev_logits)
                logits, mask = fine.logits, to_mask(fine.logits)
                if policy.startswith("dual"):
                    self.chains[id(logits)] = (logits, fine.logits, coarse.logits)
                if policy.startswith("avg2"):
                    w = int(policy[4:] or 50) / 100
                    logits = w * fine.logits + (1 - w) * coarse.logits
                    mask = to_mask(logits)
                if policy == "gate":
                    cmask = to_mask(coarse.logits)
                    ca, fa = click_agreement(cmask, clicks), click_agreement(mask, clicks)
                    if ca > fa or (ca == fa and float(coarse.iou[0, 0]) > float(fine.iou[0, 0])):
                        logits, mask = coarse.logits, cmask
            elif refined is None:  # refiner off / object started earlier without it
                out = self.model.decode(e0, pts, lab, prev_logits)
                logits, mask = out.logits, to_mask(out.logits)
            else:
                if policy.startswith("dual"):  # two decoder chains, each fed its own previous logits
                    w = 0.5
                    _, pa, pb = self.chains.get(id(prev_logits), (None, prev_logits, prev_logits))
                    a = self.model.decode(refined, pts, lab, pa)
                    b = self.model.decode(e0, pts, lab, pb)
                    logits = w * a.logits + (1 - w) * b.logits
                    mask = to_mask(logits)
                    if policy in ("dualE0", "dualE1"):  # one chain's mask: more clicks agreed, ties as named
                        ma, mb = to_mask(a.logits), to_mask(b.logits)
                        sa, sb = click_agreement(ma, clicks), click_agreement(mb, clicks)
                        take_b = sb > sa or (sb == sa and policy == "dualE0")
                        logits, mask = (b.logits.clone(), mb) if take_b else (a.logits.clone(), ma)
                    if policy == "dualag":  # the blend unless one chain agrees with more clicks
                        ma, mb = to_mask(a.logits), to_mask(b.logits)
                        sa, sb, sm = (click_agreement(m, clicks) for m in (ma, mb, mask))
                        if sa > sm and sa >= sb:
                            logits, mask = a.logits.clone(), ma
                        elif sb > sm and sb > sa:
                            logits, mask = b.logits.clone(), mb
                    self.chains[id(logits)] = (logits, a.logits, b.logits)
                elif policy.startswith("local"):  # rank by (clicks agreed, IoU with the previous mask)
                    a = self.model.decode(refined, pts, lab, prev_logits)
                    b = self.model.decode(e0, pts, lab, prev_logits)
                    cands = [a.logits, b.logits]
                    if policy == "local3":
                        cands.append((a.logits + b.logits) / 2)
                    if policy == "local4":  # and both without the previous logits as mask input
                        cands += [self.model.decode(refined, pts, lab, None).logits,
                                  self.model.decode(e0, pts, lab, None).logits]
                    prev = to_mask(prev_logits)
                    best = None
                    for i, lg in enumerate(cands):
                        m = to_mask(lg)
                        key = (click_agreement(m, clicks), mask_iou(m, prev), -i)
                        if best is None or key > best[0]:
                            best = (key, lg, m)
                    _, logits, mask = best
                elif policy.startswith("agavg"):  # more clicks agreed wins; a tie averages the two
                    a = self.model.decode(refined, pts, lab, prev_logits)
                    b = self.model.decode(e0, pts, lab, prev_logits)
                    ma, mb = to_mask(a.logits), to_mask(b.logits)
                    sa, sb = click_agreement(ma, clicks), click_agreement(mb, clicks)
                    if sa > sb:
                        logits, mask = a.logits, ma
                    elif sb > sa:
                        logits, mask = b.logits, mb
                    else:
                        logits = (a.logits + b.logits) / 2
                        mask = to_mask(logits)
                        if click_agreement(mask, clicks) < sa:
                            logits, mask = a.logits, ma
                elif policy.startswith(("avg2", "avgL")):
                    w = int(policy[4:] or 50) / 100
                    a = self.model.decode(refined, pts, lab, prev_logits)
                    b = self.model.decode(e0, pts, lab, prev_logits)
                    logits = w * a.logits + (1 - w) * b.logits
                    mask = to_mask(logits)
                elif policy.startswith("fallback"):
                    use = refined if n <= int(policy[len("fallback"):]) else e0
                    out = self.model.decode(use, pts, lab, prev_logits)
                    logits, mask = out.logits, to_mask(out.logits)
                elif policy == "every":
                    coarse = self.model.decode(e0, pts, lab, prev_logits)
                    refined = do_refine(coarse.logits, coarse.token)
                    out = self.model.decode(refined, pts, lab, prev_logits)
                    logits, mask = out.logits, to_mask(out.logits)
                elif policy == "rerefine":
                    out = self.model.decode(refined, pts, lab, prev_logits)
                    inside = self.focus.get(id(refined))
                    now = focus_token_mask(out.logits)[0]
                    if inside is not None and bool((now & ~inside).any()):
                        coarse = self.model.decode(e0, pts, lab, prev_logits)
                        refined = do_refine(coarse.logits, coarse.token)
                        out = self.model.decode(refined, pts, lab, prev_logits)
                    logits, mask = out.logits, to_mask(out.logits)
                elif policy.startswith("pick_far"):  # pick, only where the two masks differ much
                    a = self.model.decode(refined, pts, lab, prev_logits)
                    logits, mask = a.logits, to_mask(a.logits)
                    agree = click_agreement(mask, clicks)
                    if agree < len(clicks):
                        b = self.model.decode(e0, pts, lab, prev_logits)
                        mb = to_mask(b.logits)
                        inter, union = np.count_nonzero(mb & mask), np.count_nonzero(mb | mask)
                        far = union and inter / union < int(policy[len("pick_far"):]) / 100
                        if far and click_agreement(mb, clicks) > agree:
                            logits, mask = b.logits, mb
                elif policy in ("pick_iou", "pick_e0", "gate"):
                    a = self.model.decode(refined, pts, lab, prev_logits)
                    b = self.model.decode(e0, pts, lab, prev_logits)
                    ma, mb = to_mask(a.logits), to_mask(b.logits)
                    sa, sb = click_agreement(ma, clicks), click_agreement(mb, clicks)
                    if policy == "pick_iou":
                        take_b = sb > sa or (sb == sa and float(b.iou[0, 0]) > float(a.iou[0, 0]))
                    elif policy == "pick_e0":
                        take_b = sb >= sa
                    else:
                        take_b = sb > sa
                    logits, mask = (b.logits, mb) if take_b else (a.logits, ma)
                else:
                    raise ValueError(f"unknown policy {policy!r}")
            total = time.perf_counter() - t0
            return StepResult(mask, logits, refined, total - refine_s, refine_s)

    return PolicyPredictor(model, refine_click=2)


def merging_predictor(model, from_click: int):
    """``steady``, then from click ``from_click`` on a progressive merge (after FocalClick): of
    the change between the previous logits and the new ones (signs on the 256 x 256 grid),
    only the connected piece holding the newest click is kept; the rest of the previous mask
    stays. A click the new logits do not change at its cell takes the new logits whole."""
    from scipy import ndimage as ndi

    from napari_focsam.core.prompting import FocSAMPredictor, StepResult, logits_to_mask, object_click_count

    class Merging(FocSAMPredictor):
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            res = super().step(embedding, clicks, prev_logits, refined, box=box)
            if prev_logits is None or res.logits is None or object_click_count(clicks) < from_click:
                return res
            new, old = res.logits[0, 0], prev_logits[0, 0]
            change = ((new > 0) != (old > 0)).numpy()
            H, W = embedding.original_size
            h, w = embedding.input_size
            c = clicks[-1]
            cy = min(int(c.y * h / H / 4), 255)
            cx = min(int(c.x * w / W / 4), 255)
            pieces, _ = ndi.label(change, structure=np.ones((3, 3), bool))
            near = pieces[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2]
            ids = np.unique(near[near > 0])
            if ids.size == 0:
                return res
            keep = torch.from_numpy(np.isin(pieces, ids))
            merged = torch.where(keep, new, old)[None, None].clone()
            mask = logits_to_mask(merged, embedding.input_size, embedding.original_size)
            return StepResult(mask, merged, res.refined, res.decoder_seconds, res.refine_seconds)

    return Merging(model, refine_click=2)


def rerefining_predictor(model):
    """``steady``, and the refine run again (from the original embedding's decode of the click)
    when the previous mask reaches tokens outside the focus region of the refined embedding."""
    from napari_focsam.core.prompting import FocSAMPredictor
    from napari_focsam.modeling.focus_region import focus_token_mask

    class Rerefining(FocSAMPredictor):
        focus: dict[int, tuple] = {}

        @torch.inference_mode()
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            extra = 0.0
            if refined is not None and prev_logits is not None:
                inside = self.focus.get(id(refined), (None, None))[1]
                if inside is not None and bool((focus_token_mask(prev_logits)[0] & ~inside).any()):
                    e0 = embedding.features
                    pts, lab = self._prompts(embedding, clicks)
                    t0 = time.perf_counter()
                    coarse = self.model.decode(e0, pts, lab, prev_logits)
                    refined = self.model.refine(e0, coarse.logits, coarse.token)
                    extra = time.perf_counter() - t0
                    self.focus[id(refined)] = (refined, focus_token_mask(coarse.logits)[0])
            res = super().step(embedding, clicks, prev_logits, refined, box=box)
            if res.refined is not None and id(res.refined) not in self.focus and res.logits is not None:
                self.focus[id(res.refined)] = (res.refined, focus_token_mask(res.logits)[0])
            res.refine_seconds += extra
            return res

    return Rerefining(model, refine_click=2)


def twice_refining_predictor(model):
    """``steady`` refining at click 1 and again at click 2 (from the 2-click coarse mask)."""
    from napari_focsam.core.prompting import FocSAMPredictor, object_click_count

    class TwiceRefining(FocSAMPredictor):
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            if box is None and refined is not None and object_click_count(clicks) == 2:
                self.refine_click = 2
                try:
                    return super().step(embedding, clicks, prev_logits, None)
                finally:
                    self.refine_click = 1
            return super().step(embedding, clicks, prev_logits, refined, box=box)

    return TwiceRefining(model, refine_click=1)


def agreement_then_closeness(masks, clicks, previous):
    """The ``steady`` rule without the newest-click check: the most clicks agreed, then the closest to the
    previous mask, then the first (no check of the newest click's intent)."""
    from napari_focsam.core.prompting import click_agreement, mask_iou

    keys = [(click_agreement(m, clicks), mask_iou(m, previous) if previous is not None else 0.0) for m in masks]
    return max(range(len(masks)), key=lambda i: (keys[i], -i))


def refined_unless_against_click(masks, clicks, previous):
    """E1's candidate whenever it follows the newest click; otherwise the shipped rule's order
    (follows the click, clicks agreed, closeness to the previous mask)."""
    from napari_focsam.core.prompting import click_agreement, follows_click, mask_iou

    def key(i):
        m = masks[i]
        if previous is None:
            return (True, i == 0, click_agreement(m, clicks), 0.0)
        return (follows_click(m, previous, clicks[-1]), i == 0, click_agreement(m, clicks), mask_iou(m, previous))

    return max(range(len(masks)), key=lambda i: (key(i), -i))


def without_candidate(left_out: int):
    """The shipped rule with one of the three later-click candidates left out (0: the
    refined embedding's, 2: the mean)."""
    from napari_focsam.core.prompting import steadiest_candidate

    def rank(masks, clicks, previous):
        idx = [i for i in range(len(masks)) if i != left_out] if len(masks) == 3 else list(range(len(masks)))
        return idx[steadiest_candidate([masks[i] for i in idx], clicks, previous)]

    return rank


def ranked_predictor(model, rank, refine_click: int):
    """The shipped predictor with ``rank`` in place of ``steadiest_candidate`` (same signature)."""
    from napari_focsam.core.prompting import FocSAMPredictor, SteadyRule

    return FocSAMPredictor(model, later_clicks=SteadyRule(rank=rank), refine_click=refine_click)


def box_refining_predictor(model):
    """The shipped predictor, and a box step refined from its own mask (the shipped one
    refines at the first click after a box)."""
    from napari_focsam.core.prompting import FocSAMPredictor, StepResult, logits_to_mask

    class BoxRefining(FocSAMPredictor):
        @torch.inference_mode()
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            res = super().step(embedding, clicks, prev_logits, refined, box=box)
            if box is None or clicks or res.logits is None or not self.refine:
                return res
            pts, lab = self._prompts(embedding, clicks, box)
            t0 = time.perf_counter()
            coarse = self.model.decode(embedding.features, pts, lab, None)
            refined = self.model.refine(embedding.features, coarse.logits, coarse.token)
            out = self.model.decode(refined, pts, lab, None)
            mask = logits_to_mask(out.logits, embedding.input_size, embedding.original_size)
            return StepResult(mask, out.logits, refined, res.decoder_seconds, time.perf_counter() - t0)

    return BoxRefining(model)


def first_click_gated_predictor(model, margin: float = 0.0):
    """The shipped predictor, but at the refine click (the 1st) the coarse mask is kept when
    the decoder predicts a higher IoU for it than for the refined one (by more than
    ``margin``); the refined embedding is kept for the later clicks either way."""
    from napari_focsam.core.prompting import FocSAMPredictor, StepResult, logits_to_mask, object_click_count

    class Gated(FocSAMPredictor):
        @torch.inference_mode()
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            res = super().step(embedding, clicks, prev_logits, refined, box=box)
            if box is not None or refined is not None or res.refined is None or object_click_count(clicks) != 1:
                return res
            pts, lab = self._prompts(embedding, clicks)
            coarse = self.model.decode(embedding.features, pts, lab, None)
            fine = self.model.decode(res.refined, pts, lab, None)
            if float(coarse.iou[0, 0]) > float(fine.iou[0, 0]) + margin:
                mask = logits_to_mask(coarse.logits, embedding.input_size, embedding.original_size)
                return StepResult(mask, coarse.logits, res.refined, res.decoder_seconds, res.refine_seconds)
            return res

    return Gated(model)


def close_coarse_predictor(model, threshold: float):
    """The shipped predictor, but at the refine click (the 1st) the coarse mask is kept when
    the refined one overlaps it with an IoU of at least ``threshold`` (the refiner only moved
    the boundary); the refined embedding is kept for the later clicks either way."""
    from napari_focsam.core.prompting import FocSAMPredictor, StepResult, logits_to_mask, mask_iou, object_click_count

    class CloseCoarse(FocSAMPredictor):
        @torch.inference_mode()
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            res = super().step(embedding, clicks, prev_logits, refined, box=box)
            if box is not None or refined is not None or res.refined is None or object_click_count(clicks) != 1:
                return res
            pts, lab = self._prompts(embedding, clicks)
            coarse = self.model.decode(embedding.features, pts, lab, None)
            mask = logits_to_mask(coarse.logits, embedding.input_size, embedding.original_size)
            if mask_iou(mask, res.mask) >= threshold:
                return StepResult(mask, coarse.logits, res.refined, res.decoder_seconds, res.refine_seconds)
            return res

    return CloseCoarse(model)


def grow_gated_predictor(model, factor: float, keep_refined: bool = False):
    """The shipped predictor, but at the refine click (the 1st) the coarse mask is kept when the
    refined one is more than ``factor`` times larger (the refiner jumped from the clicked cell to
    the cluster around it, as on phase-contrast colonies). ``keep_refined``: the refined embedding still serves the
    later clicks; otherwise it is dropped and the refine is tried again at the next click (the
    refine gate's rule)."""
    from napari_focsam.core.prompting import FocSAMPredictor, StepResult, logits_to_mask, object_click_count

    class GrowGated(FocSAMPredictor):
        @torch.inference_mode()
        def step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
            res = super().step(embedding, clicks, prev_logits, refined, box=box)
            if box is not None or refined is not None or res.refined is None or object_click_count(clicks) != 1:
                return res
            pts, lab = self._prompts(embedding, clicks)
            coarse = self.model.decode(embedding.features, pts, lab, None)
            mask = logits_to_mask(coarse.logits, embedding.input_size, embedding.original_size)
            if np.count_nonzero(res.mask) > factor * max(1, np.count_nonzero(mask)):
                return StepResult(mask, coarse.logits, res.refined if keep_refined else None,
                                  res.decoder_seconds, res.refine_seconds)
            return res

    return GrowGated(model)
