"""What the z-profile of an object shows, and re-propagation after a correction.

Qt-free, for the widget: after *Segment volume* the user clicks on another slice, and
:func:`repropagate` redoes only the runs that click touched (the object's run memo, see
:meth:`~napari_focsam.core.session.SegmentedObject.propagate`) and says which slices changed, so that only those
planes are repainted; :func:`object_profile` is the per-slice area of the object with its
anchors (the slices the user clicked) and its stop slices, for a small plot of where the
object starts and ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._plain import PropagationResult

__all__ = ["ObjectProfile", "object_profile", "repropagate"]


@dataclass
class ObjectProfile:
    """The z-profile of an object.

    areas: (Z,) int64, mask pixels per slice (clicked or propagated); anchors: the slices with
    the user's clicks, sorted; stops: the anchors whose mask is empty (the object stops there);
    z_range: (first, last) slice with a mask, None for an empty object; ious: slice -> IoU with
    the slice it was propagated from (the last propagation).
    """

    areas: np.ndarray
    anchors: list[int]
    stops: list[int]
    z_range: tuple[int, int] | None
    ious: dict[int, float] = field(default_factory=dict)


def object_profile(obj: Any) -> ObjectProfile:
    """The :class:`ObjectProfile` of a :class:`~napari_focsam.core.session.SegmentedObject` (tiled images
    included: areas come from the mask regions, no full planes are made)."""
    areas = np.zeros(obj.volume.n_slices, dtype=np.int64)
    for z, region in obj.volume_regions().items():
        areas[z] = int(np.count_nonzero(region[2]))
    anchors = list(obj.slices_with_clicks)
    stops = [z for z in anchors if not areas[z]]
    nz = np.flatnonzero(areas)
    z_range = (int(nz[0]), int(nz[-1])) if nz.size else None
    prop = obj.last_propagation
    return ObjectProfile(areas, anchors, stops, z_range, dict(prop.ious) if prop is not None else {})


def repropagate(obj: Any, *, progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] | None = None,
                **options: Any) -> tuple[PropagationResult, list[int]]:
    """Propagate ``obj`` again after clicks on any of its slices; returns the result and the
    sorted slices whose mask changed (appeared, vanished or differs).

    Only the runs next to a slice whose clicks changed are decoded again; the others are
    reused. ``options`` go to :meth:`~napari_focsam.core.session.SegmentedObject.propagate` (``iou_threshold``,
    ``directions``, ...); ``progress(done, total)`` counts slices.
    """
    before = obj.volume_regions()
    result = obj.propagate(progress=progress, cancelled=cancelled, **options)
    after = obj.volume_regions()
    changed = []
    for z in sorted(set(before) | set(after)):
        a, b = before.get(z), after.get(z)
        if a is None or b is None:
            if (a is not None and a[2].any()) or (b is not None and b[2].any()):
                changed.append(z)
        elif (a[0], a[1]) != (b[0], b[1]) or a[2].shape != b[2].shape or not np.array_equal(a[2], b[2]):
            changed.append(z)
    return result, changed
