"""The runs of a propagation: which slices each run covers, the walk of one run with its stop
rules, and running them with progress, Cancel and reuse of unchanged runs.

Shared by the plain and the tiled propagation (:mod:`._plain`, :mod:`._tiled`); nothing here
decodes: the caller's ``next_mask`` does.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple

__all__ = ["CANCELLED", "DIRECTIONS", "END_REBOUND", "END_SHRINK", "PropagationRun", "plan_runs", "run_all",
           "walk_run"]

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
              directions: tuple[str, ...]) -> list[PropagationRun]:
    """The runs: outward from the outermost seeds, and through each gap between seeds (split in
    the middle when both ends may propagate; an empty seed only stops). Used by the plain and
    the tiled propagation."""
    down, up = "down" in directions, "up" in directions
    runs = []
    if down:
        runs.append(PropagationRun(seeds[0], -1, -1, "down"))
    for a, b in zip(seeds, seeds[1:]):
        if b - a <= 1:
            continue
        from_a, from_b = up and a not in empty, down and b not in empty
        if from_a and from_b:
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


def run_all(runs: Iterable[PropagationRun], run_one: Callable, *, iou_threshold: float, params: tuple,
            tokens: Mapping[int, Hashable] | None, memo: dict | None,
            progress: Callable[[int, int], None] | None, outer_params: tuple = ()) -> tuple[dict, dict, dict, bool]:
    """Execute propagation ``runs`` in order, reusing the finished runs kept in ``memo``.

    run_one(run, tick) -> (results by slice, IoU with the previous slice by slice, reason the
    run ended); it calls ``tick()`` once per slice kept and returns the reason
    :data:`CANCELLED` when it was cancelled, which skips the runs left. A run's memo key is its
    extent, its seed's ``tokens`` entry (no key without one), ``iou_threshold`` and
    ``outer_params`` for the outer runs (the stops only they apply) and ``params``; ``memo`` is
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

    for run in runs:
        if was_cancelled:
            if run.outer:
                reasons[run.outer] = CANCELLED
            continue
        key = None
        if tokens is not None and run.start in tokens:
            key = (*run, tokens[run.start], (iou_threshold, *outer_params) if run.outer else None, *params)
        if memo is not None and key is not None and key in memo:
            got = memo[key]
            tick(len(got[0]))
        else:
            got = run_one(run, tick)
            was_cancelled = got[2] == CANCELLED
        if key is not None and not was_cancelled:
            new_memo[key] = got
        results.update(got[0])
        ious.update(got[1])
        if run.outer:
            reasons[run.outer] = got[2]
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
