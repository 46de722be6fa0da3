"""The runs of a propagation: which slices each run covers, the walk of one run with its stop
rules, and running them with progress, Cancel and reuse of unchanged runs.

Shared by the plain and the tiled propagation (:mod:`._plain`, :mod:`._tiled`); nothing here
decodes: the caller's ``next_mask`` does.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple

__all__ = ["CANCELLED", "DIRECTIONS", "END_REBOUND", "END_SHRINK", "GAP_MARGIN", "PropagationRun", "hand_over",
           "keep_better_outer", "merge_gap", "plan_runs", "previous_outer", "reuse_prefix", "run_all", "walk_run"]

DIRECTIONS = ("down", "up")  # down: towards slice 0; up: towards the last slice
#: The end of an object (outer runs): once a run's mask has shrunk below ``END_SHRINK`` times
#: its seed's area, a slice whose mask is more than ``1 + END_REBOUND`` times the smallest mask
#: of the run so far is not the object any more (SAM grabbed the blur past its end, or a
#: neighbour) and the run stops there. Chosen from the per-slice areas of one-click runs on
#: cells3d (20 nuclei) and the stardist 3D volume (15) with the IoU stop at 0.65: cells3d
#: 0.826 -> 0.831, stardist 0.253 unchanged (an oracle stop that knows the labels: 0.869 / 0.287).
END_SHRINK = 0.8
END_REBOUND = 0.2


class PropagationRun(NamedTuple):
    """One run of a propagation: from seed slice ``start`` in steps of ``step`` (-1 down, +1 up)
    up to ``limit`` (exclusive); ``outer`` is "down"/"up" for the runs beyond the outermost
    seeds, None inside a gap between seeds."""

    start: int
    step: int
    limit: int
    outer: str | None

    @property
    def n_slices(self) -> int:
        """The slices this run may decode (its seed excluded)."""
        return max(0, (self.limit - self.start) * self.step - 1)


def plan_runs(seeds: list[int], empty: set[int], n_slices: int,
              directions: tuple[str, ...], full_gaps: bool = False) -> list[PropagationRun]:
    """The runs: outward from the outermost seeds, and through each gap between seeds (an empty
    seed only stops). When both ends of a gap may propagate, the gap is split in the middle
    (see :func:`hand_over` for a half that loses the object), or, with ``full_gaps``, each end
    runs through the whole gap and every slice keeps the better of the two masks
    (:func:`merge_gap`). Used by the plain and the tiled propagation."""
    down, up = "down" in directions, "up" in directions
    runs = []
    if down:
        runs.append(PropagationRun(seeds[0], -1, -1, "down"))
    for a, b in zip(seeds, seeds[1:]):
        if b - a <= 1:
            continue
        from_a, from_b = up and a not in empty, down and b not in empty
        if from_a and from_b and full_gaps:
            runs.append(PropagationRun(a, +1, b, None))
            runs.append(PropagationRun(b, -1, a, None))
        elif from_a and from_b:
            mid = (a + b) // 2
            runs.append(PropagationRun(a, +1, mid + 1, None))
            runs.append(PropagationRun(b, -1, mid, None))
        elif from_a:
            runs.append(PropagationRun(a, +1, b, None))
        elif from_b:
            runs.append(PropagationRun(b, -1, a, None))
    if up:
        runs.append(PropagationRun(seeds[-1], +1, n_slices, "up"))
    return runs


#: The reason of a run stopped by the caller's ``cancelled``.
CANCELLED = "cancelled"


def hand_over(run: PropagationRun, masks: Mapping, runs: list[PropagationRun]) -> tuple[PropagationRun, list[int]] | None:
    """The run that takes over the slices a half-gap ``run`` left empty, or None.

    Between two seeds the object cannot end: a half of a gap that stopped before the middle
    (the decoder lost the object, or doubted its mask: a seed corrected at a blurred end often
    gives masks too small for the slices inward of it) would leave a hole in the object. The
    other seed's run then goes through the whole gap, and its masks fill the hole (its masks on
    its own half are the ones its half-run drew: the same decoding). Returns (that run, the
    slices of the hole); None for an outer run, a run that reached its limit, or a gap whose
    other seed does not propagate into it.
    """
    if run.outer is not None:
        return None
    hole = [z for z in range(run.start + run.step, run.limit, run.step) if z not in masks]
    if not hole:
        return None
    for other in runs:  # the other half of the gap: the two halves meet in the middle
        if other.outer is None and other.step == -run.step and other.limit == run.limit - run.step:
            return PropagationRun(other.start, other.step, run.start, None), hole
    return None


#: :func:`merge_gap`: the run from the farther seed wins a slice only when the decoder scores
#: its mask this much higher than the nearer seed's.
GAP_MARGIN = 0.05


#: :func:`merge_gap`: between two clicked slices a mask is *plausible* when its size lies
#: within (this[0] x the smaller seed's, this[1] x the larger seed's): the user showed the
#: object at both ends, so a section a fraction of both (a part with inner structure, which the
#: decoder scores high) or a multiple of both (a neighbour) is not the object.
GAP_SIZE_BAND = (0.5, 2.0)


def merge_gap(first: PropagationRun, got_first: tuple, second: PropagationRun, got_second: tuple,
              size: Callable[[Any], int] | None = None, seed_sizes: Mapping[int, int] | None = None,
              ) -> tuple[dict, dict]:
    """Per slice of a gap run through from both ends (``plan_runs(full_gaps=True)``), the mask
    of the nearer seed's run, unless the decoder scores the other run's mask at least
    :data:`GAP_MARGIN` higher, or the nearer run has none there (it lost the object).

    ``got_*``: (masks, ious, reason, scores by slice) of each run; a run without scores is
    never outscored. A correction at a blurred end of a nucleus gives a small mask, and a run
    inward from it keeps that size while the object grows (the decoder scores those masks
    0.3-0.75, the other seed's 0.9 and more): the nearer-seed rule alone (the gap split in the
    middle) shrank half the gap. With ``size`` (mask -> pixels) and ``seed_sizes`` (seed slice ->
    its mask's pixels), where one run's mask is plausible (:data:`GAP_SIZE_BAND`) and the other's
    is not, the plausible one is kept whatever the scores: on an EM chloroplast the run from a
    corrected seed drew an inner part of ~800 px on four slices between sections of 12,000 and
    14,000 px, scored above the other run's whole sections. Returns (masks, ious) of the gap's
    slices.
    """
    masks, ious = {}, {}
    runs = ((first, got_first), (second, got_second))
    lo, hi = sorted((first.start, second.start))
    band = None
    if size is not None and seed_sizes is not None and lo in seed_sizes and hi in seed_sizes:
        small, large = sorted((seed_sizes[lo], seed_sizes[hi]))
        band = (GAP_SIZE_BAND[0] * small, GAP_SIZE_BAND[1] * large)
    for z in range(lo + 1, hi):
        have = [(run, got) for run, got in runs if z in got[0]]
        if not have:
            continue
        have.sort(key=lambda rg: (abs(z - rg[0].start), -rg[0].step))  # nearer seed first (the lower on ties)
        pick = have[0]
        if len(have) == 2:
            near, far = (got[3].get(z) if len(got) > 3 else None for _, got in have)
            fits = [band is None or band[0] <= size(got[0][z]) <= band[1] for _, got in have]
            if fits[0] != fits[1]:
                pick = have[0] if fits[0] else have[1]
            elif near is not None and far is not None and far >= near + GAP_MARGIN:
                pick = have[1]
        masks[z] = pick[1][0][z]
        if z in pick[1][1]:
            ious[z] = pick[1][1][z]
    return masks, ious


def reuse_prefix(run: PropagationRun, key: tuple, memo: Mapping) -> tuple | None:
    """The result of the between-seeds ``run`` (memo ``key``) cut from a longer run of the
    previous call, or None.

    A run decodes its slices one after the other from its seed, and a run between seeds stops
    only where the object vanishes, so its slices are the first ones of any earlier run from the
    same seed state in the same direction with the same parameters (between seeds or outward)
    that went at least as far; or, when an earlier run between seeds vanished inside this run's
    extent, this run vanishes there too. A click inside a gap (a new seed) thus re-decodes only
    the runs from the new seed: the runs from the old seeds towards it are the first slices of
    their runs through the whole gap (or outward, for a click beyond the outermost seed).
    """
    if run.outer is not None:
        return None
    want = range(run.start + run.step, run.limit, run.step)
    for k, got in memo.items():
        if not (isinstance(k, tuple) and len(k) == len(key) and k[:2] == key[:2] and k[4] == key[4]
                and k[6:] == key[6:]):  # same seed, direction, seed state and decoding parameters
            continue
        masks, ious, reason = got[:3]
        missing = [z for z in want if z not in masks]
        if missing and (k[3] is not None or reason in ("border", CANCELLED)):
            continue  # it stopped short of this run's extent, or by a rule this run does not apply
        cut = set(want if not missing else range(run.start + run.step, missing[0], run.step))
        out = ({z: m for z, m in masks.items() if z in cut}, {z: v for z, v in ious.items() if z in want},
               reason if missing else "border")
        return (*out, {z: v for z, v in got[3].items() if z in want}) if len(got) > 3 else out
    return None


def keep_better_outer(run: PropagationRun, new: tuple, old: tuple) -> tuple:
    """An outer ``run`` redone from a corrected seed, slice by slice against the previous call's
    run from the same seed slice (``new``, ``old``: (masks, ious, reason, scores by slice)).

    A click on the outermost clicked slice changes that slice's mask and so every slice of the
    run beyond it. Where the decoder scores the previous run's mask at least
    :data:`GAP_MARGIN` higher than the new one, the previous mask stays (the rule of
    :func:`merge_gap`, with the fresh run as the nearer seed), and where the new run stops
    while the previous one was kept at the slice before (or outscores the new run's rejected
    mask there), the previous run goes on to its own end. Seen on an EM chloroplast: a positive
    click on its clicked slice (that slice's error 815 -> 691 px) made the run below score
    0.3-0.5 and stop two slices early, 3D IoU 0.880 -> 0.629. A run without scores is returned
    as it is; :func:`run_all` applies this only for a decoder whose scores are calibrated (as
    :func:`merge_gap`), with the run :func:`previous_outer` finds. (Measured with the default
    model on the four volumes of the 3D protocol: the chloroplasts gain 0.02 from the 4th click
    on and rise at every click; the VNC mitochondria and the stardist volume lose up to 0.005
    (three objects whose previous masks scored higher and were worse); cells3d is unchanged. A
    margin of 0.15 left every curve as it was.)
    """
    if len(new) < 4 or len(old) < 4 or new[2] == CANCELLED:
        return new
    (nm, ni, nreason, ns), (om, oi, oreason, os_) = new[:4], old[:4]
    masks, ious, scores = {}, {}, {}
    reason, from_old = "border", False
    for z in range(run.start + run.step, run.limit, run.step):
        # scored on both sides (the new run's score also where its stop rules rejected the mask)
        better_old = z in om and ns.get(z) is not None and os_.get(z) is not None and os_[z] >= ns[z] + GAP_MARGIN
        if z in nm and z in om:
            from_old = better_old
        elif z in nm:
            from_old = False  # the previous run ended before: the new one goes on
        elif z in om and (from_old or better_old):
            from_old = True  # the new run ends here, the previous one goes on
        else:
            reason = oreason if from_old else nreason
            break
        src_m, src_i, src_s = (om, oi, os_) if from_old else (nm, ni, ns)
        masks[z] = src_m[z]
        if z in src_i:
            ious[z] = src_i[z]
        if z in src_s:
            scores[z] = src_s[z]
    return masks, ious, reason, scores


def previous_outer(key: tuple, memo: Mapping) -> tuple | None:
    """The previous call's result of the outer run with memo ``key`` from an older state of its
    seed, or None: the same extent and stop rules (the decoding parameters may differ: the
    outline's reference moves with the seed slices),
    and a state made before this one (a click added; after an undo the runs of the clicks left
    are decoded as they were)."""
    for k, got in memo.items():
        if (isinstance(k, tuple) and len(k) == len(key) and k[:4] == key[:4] and k[5][:2] == key[5][:2]
                and _newer(key[4], k[4])):
            return got
    return None


def _newer(token: Any, than: Any) -> bool:
    """Whether seed state ``token`` came after ``than`` (states are numbered in the order they
    were made; other tokens, such as a propagated mask taken as a seed, are not ordered)."""
    ints = all(isinstance(t, int) and not isinstance(t, bool) for t in (token, than))
    return ints and token > than


def run_all(runs: Iterable[PropagationRun], run_one: Callable, *, iou_threshold: float, params: tuple,
            tokens: Mapping[int, Hashable] | None, memo: dict | None,
            progress: Callable[[int, int], None] | None, outer_params: tuple = (),
            keep_better: bool = False, size: Callable[[Any], int] | None = None,
            seed_sizes: Mapping[int, int] | None = None) -> tuple[dict, dict, dict, bool]:
    """Execute propagation ``runs`` in order, reusing the finished runs kept in ``memo``.

    run_one(run, tick) -> (results by slice, IoU with the previous slice by slice, reason the
    run ended); it calls ``tick()`` once per slice kept and returns the reason
    :data:`CANCELLED` when it was cancelled, which skips the runs left; it may return the
    decoder's scores by slice as a fourth item. A half of a gap that stops early hands its
    slices over to the other seed (:func:`hand_over`); a gap run through from both ends keeps
    the better mask per slice (:func:`merge_gap`, given ``size`` and ``seed_sizes``); with
    ``keep_better`` (a decoder whose scores are calibrated), an outer run redone from a
    corrected seed keeps the previous call's masks where they score better
    (:func:`keep_better_outer`). A run's memo key is its extent, its
    seed's ``tokens`` entry (no key without one), ``iou_threshold`` and ``outer_params`` for the
    outer runs (the stops only they apply) and ``params`` (the decoding parameters the caller
    keys runs on; the plain propagation leaves the object's confidence out, so that a run from an
    unchanged seed is kept when a click elsewhere moves it);
    a run between seeds may also be cut from a longer one (:func:`reuse_prefix`); ``memo`` is
    replaced by this call's runs unless it was cancelled (see
    :func:`~napari_focsam.core.propagation.propagate`). Returns (results, ious, reasons per
    direction, cancelled).
    """
    runs = list(runs)
    total = sum(r.n_slices for r in runs)
    results: dict = {}
    ious: dict[int, float] = {}
    reasons = {d: "not requested" for d in DIRECTIONS}
    new_memo: dict = {}
    done, was_cancelled = 0, False

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    def execute(run: PropagationRun):
        nonlocal was_cancelled
        key = None
        if tokens is not None and run.start in tokens:
            key = (*run, tokens[run.start], (iou_threshold, *outer_params) if run.outer else None, *params)
        if memo is not None and key is not None and key in memo:
            got = memo[key]
            tick(len(got[0]))
        elif memo is not None and key is not None and (got := reuse_prefix(run, key, memo)) is not None:
            tick(len(got[0]))
        else:
            got = run_one(run, tick)
            was_cancelled = got[2] == CANCELLED
            before = previous_outer(key, memo) if keep_better and run.outer and memo is not None else None
            if before is not None and not was_cancelled:
                got = keep_better_outer(run, got, before)
        if key is not None and not was_cancelled:
            new_memo[key] = got
        return got

    takeovers, both_ways = [], {}
    for run in runs:
        if was_cancelled:
            if run.outer:
                reasons[run.outer] = CANCELLED
            continue
        got = execute(run)
        if run.outer is None and PropagationRun(run.limit, -run.step, run.start, None) in runs:
            both_ways[run] = got  # a gap run through from both ends: merged below
            continue
        results.update(got[0])
        ious.update(got[1])
        if run.outer:
            reasons[run.outer] = got[2]
        elif not was_cancelled:
            takeovers.append(hand_over(run, got[0], runs))
    for run, got in both_ways.items():
        back = PropagationRun(run.limit, -run.step, run.start, None)
        if run.step > 0 and back in both_ways:
            gap_masks, gap_ious = merge_gap(run, got, back, both_ways[back], size, seed_sizes)
            results.update(gap_masks)
            ious.update(gap_ious)
    for fill, hole in filter(None, takeovers):
        if was_cancelled:
            break
        got = execute(fill)
        results.update({z: got[0][z] for z in hole if z in got[0]})
        ious.update({z: got[1][z] for z in hole if z in got[1]})
    if memo is not None and not was_cancelled:
        memo.clear()
        memo.update(new_memo)
    if progress is not None and not was_cancelled:
        progress(total, total)
    return results, ious, reasons, was_cancelled


def walk_run(run: PropagationRun, seed: Any, state: Any, next_mask: Callable, pixels: Callable, overlap: Callable,
             *, iou_threshold: float, min_pixels: int, tick: Callable[[], None],
             cancelled: Callable[[], bool] | None,
             rebound: float | None = END_REBOUND,
             first_reference: Any = None,
             faded: Callable[[int, Any], str | None] | None = None) -> tuple[dict, dict[int, float], str]:
    """Walk one run from its seed slice, one slice at a time, until a stop rule ends it.

    seed: the seed slice's mask (any type ``pixels`` and ``overlap`` take: an (H, W) bool
    array, a mask region); state: what the decoder carries from slice to slice (logits, a
    tile). next_mask(z, previous mask, state) -> (mask, state, blank) decodes slice ``z``.
    The run stops at the border, on a blank slice, when the mask has fewer than
    ``min_pixels`` pixels, when its IoU with the previous slice (``overlap``) falls below
    ``iou_threshold`` (outer runs only), where the object ends (outer runs only: the mask grows
    again by more than ``rebound`` after the run shrank below :data:`END_SHRINK` of its seed;
    None turns this off), where ``faded(z, mask)`` gives a reason (outer runs only: the object
    went out of focus, see :mod:`._edges`) or when ``cancelled()`` (reason :data:`CANCELLED`).
    first_reference: a second mask the first slice may match instead of the seed (the IoU kept
    is the larger; see ``restyled`` in :func:`~napari_focsam.core.propagation.propagate`); the end rule's shrinking is measured
    from the smaller of the two (a seed the user enlarged is larger than the masks the decoder
    draws next to it, which is no sign of an end).
    Returns (mask by slice, IoU with the previous slice by slice, reason the run ended).
    """
    masks: dict = {}
    ious: dict[int, float] = {}
    if not pixels(seed):
        return masks, ious, f"the clicked slice {run.start} has an empty mask"
    prev = seed
    seed_area = pixels(seed)
    if first_reference is not None and pixels(first_reference):
        # a corrected seed is not in the decoder's style: the run shrinks from the style's area
        seed_area = min(seed_area, pixels(first_reference))
    smallest = seed_area
    z = run.start + run.step
    while z != run.limit:
        if cancelled is not None and cancelled():
            return masks, ious, CANCELLED
        mask, state, blank = next_mask(z, prev, state)
        if blank:
            return masks, ious, f"vanished at z={z} (blank slice)"
        if pixels(mask) < min_pixels:
            return masks, ious, f"vanished at z={z}"
        iou = overlap(prev, mask)
        if first_reference is not None and prev is seed:
            iou = max(iou, overlap(first_reference, mask))
        ious[z] = iou
        if run.outer and iou < iou_threshold:
            return masks, ious, f"iou {iou:.2f} < {iou_threshold:.2f} at z={z}"
        area = pixels(mask)
        if (run.outer and rebound is not None and smallest < END_SHRINK * seed_area
                and area > (1 + rebound) * smallest):
            return masks, ious, f"ends at z={z - run.step}: the mask grows again at z={z} ({area} > {smallest} px)"
        why = faded(z, mask) if run.outer and faded is not None else None
        if why:
            return masks, ious, why
        smallest = min(smallest, area)
        masks[z] = mask
        prev = mask
        tick()
        z += run.step
    return masks, ious, "border"
