"""Box + clicks on a session object, one object per positive click, and writing many new ids."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import blobs_stack, make_fast_focsam  # noqa: E402

from napari_focsam.core.editing import PasteError  # noqa: E402
from napari_focsam.core.editing import batch_groups, plan_new_labels, set_prompts  # noqa: E402
from napari_focsam.core.editing._paste_many import plan_many
from napari_focsam.core.session import Session  # noqa: E402


def test_batch_groups_share_negatives_per_slice():
    clicks = [(0, 1, 1, True), (0, 5, 5, False), (1, 2, 2, True), (0, 9, 9, True), (1, 7, 7, False)]
    assert batch_groups(clicks) == [
        [(0, 1, 1, True), (0, 5, 5, False)],
        [(1, 2, 2, True), (1, 7, 7, False)],
        [(0, 9, 9, True), (0, 5, 5, False)],
    ]
    assert batch_groups([(0, 1, 1, False)]) == []


def test_plan_many_consecutive_ids_background_only():
    labels = np.zeros((6, 6), np.uint16)
    labels[0, 0] = 4
    a, b, c = (np.zeros((6, 6), bool) for _ in range(3))
    a[0, :2] = True          # one pixel already labelled
    b[0, 1] = b[3, 3] = True  # overlaps a: a keeps (0, 1)
    c[0, 0] = True            # entirely on a label: no id
    paste = plan_many(labels, [a, b, c])
    assert paste.ids == (5, 6) and paste.label == 6
    out = labels.copy()
    out[paste.index] = paste.values
    assert out[0, 0] == 4 and out[0, 1] == 5 and out[3, 3] == 6
    with pytest.raises(PasteError, match="entirely on existing labels"):
        plan_many(labels, [c])
    full = plan_many(labels, [c], overwrite=True)
    assert full.ids == (5,)


def test_plan_new_labels_on_a_slice_above_the_stack_maximum():
    labels = np.zeros((3, 5, 5), np.uint32)
    labels[2, 4, 4] = 9
    labels[1, 0, 0] = 2
    new = np.zeros((5, 5), np.int32)
    new[0, 0] = 7   # on the existing label 2: skipped
    new[2, 2] = 3
    new[3, 3] = 30
    paste = plan_new_labels(labels, new, z=1)
    out = labels.copy()
    out[paste.index] = paste.values
    assert paste.ids == (10, 11)
    assert out[1, 0, 0] == 2 and out[1, 2, 2] == 10 and out[1, 3, 3] == 11 and out[2, 4, 4] == 9
    with pytest.raises(PasteError, match="no object"):
        plan_new_labels(labels, np.zeros((5, 5), int), z=0)
    with pytest.raises(PasteError, match="shape"):
        plan_new_labels(labels, np.zeros((4, 5), int), z=0)


def test_set_prompts_box_then_clicks_and_wrong_slice():
    session = Session(blobs_stack(3), make_fast_focsam())
    obj = session.new_object()
    changed = set_prompts(obj, [], (1, (10, 10, 30, 30)))
    assert set(changed) == {1} and obj.box[0] == 1
    steps = len(obj.history(1))
    set_prompts(obj, [(1, 20.0, 20.0, True)], (1, (10, 10, 30, 30)))
    assert obj.box is not None and len(obj.history(1)) == steps + 1  # the box kept, one click added
    with pytest.raises(ValueError, match="belong to one slice"):
        set_prompts(obj, [(2, 20.0, 20.0, True)], (1, (10, 10, 30, 30)))
    assert obj.box is not None and len(obj.clicks) == 1  # nothing changed by the refused call
    with pytest.raises(ValueError, match="zero area"):
        set_prompts(obj, [], (1, (10, 10, 10, 30)))
    assert obj.box is not None and len(obj.clicks) == 1
    changed = set_prompts(obj, [(2, 20.0, 20.0, True)], None)  # box removed: clicks only
    assert obj.box is None and obj.slices_with_clicks == [2] and 1 in changed


def test_set_prompts_region_gives_regions_equal_to_the_planes():
    from napari_focsam.core.prompting import MaskRegion, region_to_plane

    session = Session(blobs_stack(3), make_fast_focsam())
    obj = session.new_object()
    changed = set_prompts(obj, [(1, 20.0, 20.0, True)], (1, (10, 10, 30, 30)), region=True)
    assert set(changed) == {1} and isinstance(changed[1], MaskRegion)
    shape = obj.volume.plane_shape
    np.testing.assert_array_equal(region_to_plane(changed[1], shape), obj.mask(1))
    changed = set_prompts(obj, [(2, 20.0, 20.0, True)], None, region=True)  # box removed: slice 1 emptied
    assert set(changed) == {1, 2} and all(isinstance(r, MaskRegion) for r in changed.values())
    assert not region_to_plane(changed[1], shape).any()
    np.testing.assert_array_equal(region_to_plane(changed[2], shape), obj.mask(2))
