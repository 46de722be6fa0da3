"""Rules on an object's clicks and masks, shared by the click loop and its callers.

Which clicks count (:func:`object_click_count`, :func:`live_clicks`), which pixel a click
reads (:func:`click_pixel`), how well a mask honours the clicks (:func:`click_agreement`),
whether a refined mask bridged clicked pieces (:func:`joins_clicked_pieces`), the IoU
of two masks (:func:`mask_iou`), whether a mask goes the way a click asks
(:func:`follows_click`) and which candidate mask a later click keeps
(:func:`steadiest_candidate`). Pure numpy on (H, W) bool masks; no model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._clicks import Click, check_positive


def check_clicks_inside(clicks: Sequence[Click], original_size: tuple[int, int]) -> None:
    """ValueError unless every click lies on an (H, W) image; TypeError for a non-bool label."""
    H, W = original_size
    for c in clicks:
        if not (0 <= c.y < H and 0 <= c.x < W):
            raise ValueError(f"click (y={c.y}, x={c.x}) is outside the image of shape {(H, W)}")
        check_positive(c.is_positive)


def clicks_on_nothing(volume, clicks: Sequence[tuple[int, float, float, bool]], radius: int = 1) -> list[int]:
    """Indices of the positive clicks that land where the image holds no value: every pixel of the
    (2 ``radius`` + 1)\ :sup:`2` window around the click is NaN or infinite (a masked-out or
    padded region). Such a click has nothing to segment; reads only those windows.

    Parameters
    ----------
    volume : ImageVolume
        The image (its :meth:`read_region` is used).
    clicks : sequence of (z, y, x, positive)
        In full-resolution pixel coordinates.
    """
    out = []
    for i, (z, y, x, positive) in enumerate(clicks):
        if not positive:
            continue
        yi, xi = int(y), int(x)
        window = np.asarray(volume.read_region(int(z), yi - radius, yi + radius + 1, xi - radius, xi + radius + 1))
        if window.dtype.kind in "fc" and window.size and not np.isfinite(window).any():
            out.append(i)
    return out


def object_click_count(clicks: Sequence[Click]) -> int:
    """How many clicks the object has had since its first positive click (0: none yet).

    Negative clicks made before any positive one cannot segment anything, so the object's
    click count (the one the refiner is scheduled on) starts at the first positive click.
    """
    for i, c in enumerate(clicks):
        if c.is_positive:
            return len(clicks) - i
    return 0


def click_pixel(click: Click, shape: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) pixel of an (H, W) image that a click at (y, x) falls in (pixel i spans i - 0.5 .. i + 0.5)."""
    H, W = shape
    return (min(max(int(np.floor(click.y + 0.5)), 0), H - 1), min(max(int(np.floor(click.x + 0.5)), 0), W - 1))


def live_clicks(clicks: Sequence[Click], shape: tuple[int, int]) -> list[Click]:
    """The clicks without those taken back: a click followed by one of the other polarity on the
    same pixel of an (H, W) image (a positive click on a second cell, then a negative one on it).

    No mask can honour both; the prompt keeps the newer one only.
    """
    later: dict[tuple[int, int], set[bool]] = {}  # pixel -> polarities of the later clicks on it
    live = []
    for c in reversed(clicks):
        seen = later.setdefault(click_pixel(c, shape), set())
        if (not c.is_positive) not in seen:
            live.append(c)
        seen.add(bool(c.is_positive))
    return live[::-1]


def click_agreement(mask: np.ndarray, clicks: Sequence[Click]) -> int:
    """How many ``clicks`` an (H, W) bool mask agrees with: positives inside, negatives outside.

    A click at (y, x) reads the pixel it falls in (pixel i spans i - 0.5 .. i + 0.5).
    """
    return sum(bool(mask[click_pixel(c, mask.shape)]) == bool(c.is_positive) for c in clicks)


def joins_clicked_pieces(coarse: np.ndarray, fine: np.ndarray, clicks: Sequence[Click]) -> bool:
    """Whether ``fine`` joins positive clicks that lie on separate pieces of ``coarse`` into one piece.

    coarse, fine: (H, W) bool masks of the same object (8-connected pieces). Two positive
    clicks on two separate pieces of the coarse mask (two cells, say) that end up on one
    connected piece of the refined mask: the refiner bridged them. Only the bounding box of
    the two masks is labelled.
    """
    from scipy import ndimage as ndi

    pos = [c for c in clicks if c.is_positive]
    if len(pos) < 2:
        return False
    both = coarse | fine
    rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
    if rows.size == 0:
        return False
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    eight = np.ones((3, 3), bool)
    pieces_c, _ = ndi.label(coarse[y0:y1, x0:x1], structure=eight)
    pieces_f, _ = ndi.label(fine[y0:y1, x0:x1], structure=eight)
    seen: dict[int, int] = {}  # piece of the fine mask -> piece of the coarse mask
    for c in pos:
        y, x = click_pixel(c, coarse.shape)
        if not (y0 <= y < y1 and x0 <= x < x1):
            continue
        pc, pf = int(pieces_c[y - y0, x - x0]), int(pieces_f[y - y0, x - x0])
        if pc == 0 or pf == 0:
            continue
        if seen.setdefault(pf, pc) != pc:
            return True
    return False


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


#: How much of the previous mask a candidate may undo against the newest click's intent
#: (a positive click removing it, a negative one adding as much again) and still count
#: as following the click (:func:`follows_click`).
INTENT_TOLERANCE = 0.3


def follows_click(mask: np.ndarray, previous: np.ndarray, click: Click,
                  tolerance: float = INTENT_TOLERANCE) -> bool:
    """Whether ``mask`` goes the way ``click`` asks from the ``previous`` mask.

    A positive click adds to the object: a mask that lost more than ``tolerance`` of the
    previous mask's pixels goes against it (a collapse). A negative click takes away: a mask
    that gained more than ``tolerance`` times the previous area goes against it (a leak).
    mask, previous: (H, W) bool. Always True when the previous mask is empty.
    """
    area = int(np.count_nonzero(previous))
    if area == 0:
        return True
    against = (previous & ~mask) if click.is_positive else (mask & ~previous)
    return int(np.count_nonzero(against)) <= tolerance * area


def steadiest_candidate(masks: Sequence[np.ndarray], clicks: Sequence[Click], previous: np.ndarray | None) -> int:
    """Index of the candidate mask a click keeps: one that follows the newest click's intent
    (:func:`follows_click`), then the one agreeing with the most ``clicks``
    (:func:`click_agreement`), then the one closest to the ``previous`` mask (IoU), then the
    first.

    masks: (H, W) bool candidates for the same prompt; previous: the (H, W) bool mask shown
    before this click (None: no intent check, no tie-break on it). A corrective click should
    fix the error it was put on; of two masks that honour every click, the one that redraws
    less of the object is the safer answer. The intent check comes first because a mask
    collapsing after a positive click can agree with more clicks than a good one (every
    negative click is honoured by an empty mask, and boundary clicks are often missed by
    good masks).
    """
    if not masks:
        raise ValueError("no candidate mask")
    best, best_key = 0, None
    for i, m in enumerate(masks):
        if previous is None:
            key = (True, click_agreement(m, clicks), 0.0)
        else:
            key = (not clicks or follows_click(m, previous, clicks[-1]), click_agreement(m, clicks),
                   mask_iou(m, previous))
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best
