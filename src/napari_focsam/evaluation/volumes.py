"""The 3D correction protocol: a simulated user corrects propagated objects, click after click.

For every object: one positive click at the interior point of its label on its middle slice,
then :meth:`~napari_focsam.core.session.SegmentedObject.propagate`. Then, up to ``n_clicks`` in
all, the user looks at the whole (Z, Y, X) result, picks the slice with the most wrong voxels
and clicks at the centre (the maximum of the distance transform, the plane border counting as
boundary) of that slice's larger error region: a positive click where the object is missed (its
largest missed component), a negative one where the mask leaks (its largest leak component); the
object is propagated again. Everything goes through the public API (``add_click(y, x, positive,
z=z)`` then ``propagate()``), so the same protocol measures any engine.

Reported per object: the 3D IoU after each click, the clicks, the seconds of each
(re-)propagation and, per corrective click, where it went. Per volume (:func:`summarise`): the
mean 3D IoU after 1..N clicks and 3D NoC@80/85/90.

The named volumes (:data:`VOLUME_SETS`) are the 3D sets of ``../shared/data/micro``; any stack
with a label stack of the same shape can be evaluated too (``napari-focsam evaluate-3d --image
STACK --labels LABELS``). numpy, scipy and the session API only: no napari.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ERROR_KINDS", "NOC_THRESHOLDS", "VOLUME_SETS", "VolumeSet", "annotated_block", "centre", "crop_window",
           "error_kinds", "evaluate_volume", "iou3d", "next_click_3d", "noc", "read_volume_set", "run_object",
           "seed_click", "select_objects", "summarise", "where_in_z"]

NOC_THRESHOLDS = (0.80, 0.85, 0.90)


class VolumeSet(NamedTuple):
    """A 3D evaluation set: image and label stacks (paths under the data root), how many objects
    to draw (None: all), the fewest slices an object must span, and the side of the window each
    object is segmented in (None: the whole plane); ``annotated_only``: use only the longest run
    of labelled slices (:func:`annotated_block`)."""

    image: str
    labels: str
    keep: int | None
    min_z: int
    window: int | None = None
    annotated_only: bool = False


#: The named sets. The chloroplasts' planes are 2341 x 3293: each object is segmented in a
#: 512 x 512 window around it (10 small embeddings instead of the tiles of the whole planes).
#: The VNC stack leaves slices 1, 7 and 18 unannotated, so the published components stop there
#: though the mitochondria do not: only its longest run of annotated slices (8..17) is used,
#: relabelled as 3D connected components.
VOLUME_SETS = {
    "cells3d": VolumeSet("micro/cells3d/cells3d_nuclei.tif", "micro/cells3d/cells3d_nuclei_label.tif", None, 1),
    "stardist3d": VolumeSet("micro/stardist/stardist_img3d.tif", "micro/stardist/stardist_mask3d.tif", 15, 1),
    "chloroplasts": VolumeSet("micro/plant_chloroplasts_em/chloroplasts_em.tif",
                              "micro/plant_chloroplasts_em/chloroplasts_em_label.tif", 12, 3, 512),
    "vnc_mito": VolumeSet("micro/em_vnc_sstem/vnc_em.tif", "micro/em_vnc_sstem/vnc_mitochondria_label.tif",
                          12, 3, None, True),
}


def annotated_block(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The longest run of slices that carry labels, and its labels as 3D connected components
    (a stack where every slice carries labels is returned unchanged); returns (image, labels,
    first slice of the run)."""
    has = labels.reshape(labels.shape[0], -1).any(axis=1)
    if has.all():
        return image, labels, 0
    best, start = (0, 0), None
    for z, h in enumerate([*has, False]):
        if h and start is None:
            start = z
        elif not h and start is not None:
            best = max(best, (z - start, start))
            start = None
    n, a = best
    relabelled, _ = ndi.label(labels[a:a + n] > 0)
    return image[a:a + n], relabelled.astype(labels.dtype), a


def centre(region: np.ndarray) -> tuple[int, int]:
    """(y, x) of the pixel of ``region`` (H, W) bool farthest from its boundary (the plane
    border counts as boundary)."""
    dist = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)


def seed_click(gt: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x): the middle slice of the object's z extent (its largest section when that
    slice is empty), at the interior point of its section there."""
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    z = int((zs[0] + zs[-1]) // 2)
    if not gt[z].any():
        z = int(np.argmax(gt.sum(axis=(1, 2))))
    y, x = centre(gt[z])
    return z, y, x


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))


def next_click_3d(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, bool] | None:
    """The simulated user's next click on (Z, Y, X) ``pred`` against ``gt``: (z, y, x, positive)
    on the slice with the most wrong voxels, at the centre of its larger error region; None
    when nothing is wrong."""
    missed, leak = gt & ~pred, pred & ~gt
    wrong = (missed | leak).sum(axis=(1, 2))
    if not wrong.any():
        return None
    z = int(np.argmax(wrong))
    fn = _largest_component(missed[z]) if missed[z].any() else missed[z]
    fp = _largest_component(leak[z]) if leak[z].any() else leak[z]
    positive = int(fn.sum()) >= int(fp.sum())
    y, x = centre(fn if positive else fp)
    return z, y, x, positive


def iou3d(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else 1.0


#: The kinds of wrong voxels :func:`error_kinds` counts.
ERROR_KINDS = ("outline_missed", "outline_leaked", "extent_missed", "extent_leaked")


def error_kinds(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Wrong voxels of a (Z, Y, X) bool result ``pred`` against the bool label ``gt``, by kind.

    ``outline_*``: on the slices where both the label and the result have pixels (an outline
    drawn too small or too large, a leak into a neighbour); ``extent_*``: on the slices where
    only one of them has (``extent_missed``: label slices the object does not reach,
    ``extent_leaked``: slices past the label's ends). The four add up to ``(pred ^ gt).sum()``.
    """
    both = pred.any(axis=(1, 2)) & gt.any(axis=(1, 2))
    missed = (gt & ~pred).sum(axis=(1, 2))
    leaked = (pred & ~gt).sum(axis=(1, 2))
    return {"outline_missed": int(missed[both].sum()), "outline_leaked": int(leaked[both].sum()),
            "extent_missed": int(missed[~both].sum()), "extent_leaked": int(leaked[~both].sum())}


def noc(ious: list[float], thr: float) -> int:
    """The first click count whose IoU reaches ``thr``; the number of clicks when never."""
    for i, v in enumerate(ious):
        if v >= thr:
            return i + 1
    return len(ious)


def where_in_z(z: int, gt: np.ndarray) -> str:
    """'outside' the label's z extent, at its 'end' (first/last two slices) or 'inside'."""
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    if z < zs[0] or z > zs[-1]:
        return "outside"
    return "end" if z - zs[0] < 2 or zs[-1] - z < 2 else "inside"


def select_objects(labels: np.ndarray, keep: int | None, min_z: int, seed: int = 0) -> list[int]:
    """Label ids spanning at least ``min_z`` slices; ``keep`` of them chosen with ``seed``
    (all when None), sorted."""
    ids = [i for i, sl in enumerate(ndi.find_objects(labels), start=1)
           if sl is not None and sl[0].stop - sl[0].start >= min_z]
    if keep is not None and len(ids) > keep:
        ids = sorted(np.random.default_rng(seed).choice(ids, keep, replace=False).tolist())
    return ids


def crop_window(gt: np.ndarray, size: int) -> tuple[slice, slice]:
    """A ``size`` x ``size`` window (clipped to the plane) centred on the object's bounding box."""
    _, ys, xs = ndi.find_objects(gt.astype(np.uint8))[0]
    out = []
    for s, n in ((ys, gt.shape[1]), (xs, gt.shape[2])):
        a = int(np.clip((s.start + s.stop) // 2 - size // 2, 0, max(0, n - size)))
        out.append(slice(a, min(n, a + size)))
    return out[0], out[1]


def run_object(session: Any, gt: np.ndarray, n_clicks: int, propagate_kwargs: dict | None = None) -> dict:
    """The protocol on one object of ``session``'s stack; ``gt`` its (Z, Y, X) bool label.

    Returns ``ious`` (3D IoU after each click), ``clicks`` ((z, y, x, positive) each), ``times``
    (seconds of each propagation), ``notes`` (per corrective click: where it went, whether its
    slice came out empty, the IoU change, the z range and the stop reasons), ``errors`` (wrong
    voxels per slice after each click), ``kinds`` (the wrong voxels by kind after each click,
    :func:`error_kinds`), ``gt_z`` and ``voxels``.
    """
    obj = session.new_object()
    z, y, x = seed_click(gt)
    clicks = [(z, y, x, True)]
    ious, times, notes, errors, kinds = [], [], [], [], []
    try:
        for k in range(n_clicks):
            cz, cy, cx, pos = clicks[-1]
            obj.add_click(cy, cx, pos, z=cz)
            t0 = time.perf_counter()
            res = obj.propagate(**(propagate_kwargs or {}))
            times.append(time.perf_counter() - t0)
            pred = obj.volume_mask()
            ious.append(iou3d(pred, gt))
            errors.append((pred ^ gt).sum(axis=(1, 2)).astype(int).tolist())
            kinds.append(error_kinds(pred, gt))
            if k:
                notes.append({"click": k + 1, "z": cz, "positive": pos, "where": where_in_z(cz, gt),
                              "slice_empty": not pred[cz].any(), "label_there": bool(gt[cz].any()),
                              "delta": ious[-1] - ious[-2], "z_range": list(res.z_range),
                              "reasons": dict(res.stopped_reason)})
            if k + 1 < n_clicks:
                nxt = next_click_3d(pred, gt)
                if nxt is None:  # perfect: the curve stays
                    ious += [ious[-1]] * (n_clicks - k - 1)
                    kinds += [kinds[-1]] * (n_clicks - k - 1)
                    break
                clicks.append(nxt)
    finally:
        session.remove_object(obj)
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    return {"ious": ious, "clicks": clicks, "times": times, "notes": notes, "errors": errors, "kinds": kinds,
            "gt_z": [int(zs[0]), int(zs[-1])], "voxels": int(gt.sum())}


def read_volume_set(name: str, root: str | Path) -> tuple[np.ndarray, np.ndarray, VolumeSet]:
    """The image and label stacks of the named set under ``root`` (e.g. ``../shared/data``),
    reduced to its annotated slices where it says so. FileNotFoundError naming the missing file."""
    import tifffile

    spec = VOLUME_SETS[name]
    paths = [Path(root) / spec.image, Path(root) / spec.labels]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{name}: {p} is missing (is --data-root the folder that holds micro/?)")
    image, labels = (tifffile.imread(p) for p in paths)
    if spec.annotated_only:
        image, labels, _ = annotated_block(image, labels)
    return image, labels, spec


def evaluate_volume(image: np.ndarray, labels: np.ndarray, model: Any, *, ids: list[int], n_clicks: int = 8,
                    window: int | None = None, cache_dir: str | Path | None = None,
                    propagate_kwargs: dict | None = None, progress=None, fit_neighbours: bool = True) -> list[dict]:
    """:func:`run_object` on each label id of ``ids``; ``progress(row)`` after each object.

    ``fit_neighbours``: the sessions' :attr:`~napari_focsam.core.session.Session.fit_neighbours`
    (False: a later click's mask on a started slice is never checked against its neighbours).

    ``window``: each object in its own ``window`` x ``window`` crop of the planes (its own
    session); None: one session on the whole stack, every slice embedded first. ``model``: a
    loaded model or a registry name, as :class:`~napari_focsam.core.session.Session` takes.
    """
    from ..core.session import Session

    rows = []
    session = None if window else Session(image, model, cache_dir=cache_dir)
    try:
        if session is not None:
            session.fit_neighbours = fit_neighbours
            session.store.precompute()
        for i in ids:
            gt, s, row_window = labels == i, session, None
            if window:
                wy, wx = crop_window(gt, window)
                gt = gt[:, wy, wx]
                s = Session(np.ascontiguousarray(image[:, wy, wx]), model, cache_dir=cache_dir)
                s.fit_neighbours = fit_neighbours
                row_window = [wy.start, wx.start, window]
            try:
                row = run_object(s, gt, n_clicks, propagate_kwargs)
            finally:
                if window:
                    s.close()
            row["label"] = int(i)
            if row_window:
                row["window"] = row_window
            rows.append(row)
            if progress is not None:
                progress(row)
    finally:
        if session is not None:
            session.close()
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per volume: ``n``, ``mean_iou`` after each click, ``noc`` and ``failures`` (objects that
    never reach it) at :data:`NOC_THRESHOLDS`, the seconds of the first propagation (mean) and
    of the re-propagations (mean and median), and per kind of corrective click (polarity and
    place) the count and mean IoU change; ``error_kinds``: per kind of wrong voxel
    (:data:`ERROR_KINDS`), its share of all wrong voxels of the volume after each click."""
    mean = np.array([r["ious"] for r in rows]).mean(axis=0)
    later = [t for r in rows for t in r["times"][1:]]
    groups: dict[str, list[float]] = {}
    for n in (n for r in rows for n in r["notes"]):
        groups.setdefault(f"{'+' if n['positive'] else '-'} {n['where']}", []).append(n["delta"])
    return {"n": len(rows), "mean_iou": mean.tolist(),
            "noc": {f"{t:.2f}": float(np.mean([noc(r["ious"], t) for r in rows])) for t in NOC_THRESHOLDS},
            "failures": {f"{t:.2f}": int(sum(max(r["ious"]) < t for r in rows)) for t in NOC_THRESHOLDS},
            "seconds_first": float(np.mean([r["times"][0] for r in rows])),
            "seconds_repropagate": float(np.mean(later)) if later else None,
            "seconds_repropagate_median": float(np.median(later)) if later else None,
            "click_groups": {k: [len(v), float(np.mean(v))] for k, v in sorted(groups.items())},
            "emptied": sum(n["slice_empty"] and n["label_there"] for r in rows for n in r["notes"]),
            "error_kinds": _kind_shares(rows)}


def _kind_shares(rows: list[dict]) -> dict[str, list[float]]:
    """Per kind of wrong voxel, its share of the volume's wrong voxels after each click (rows
    without ``kinds``, from older runs, give none)."""
    if not rows or not all(r.get("kinds") for r in rows):
        return {}
    n = min(len(r["kinds"]) for r in rows)
    totals = {k: np.array([sum(r["kinds"][i][k] for r in rows) for i in range(n)], float) for k in ERROR_KINDS}
    wrong = np.maximum(sum(totals.values()), 1.0)
    return {k: (v / wrong).round(4).tolist() for k, v in totals.items()}
