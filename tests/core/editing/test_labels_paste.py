"""The commit arithmetic (core.labels.plan_paste): next id, dtype limit, overwrite rule, z-range."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.core.editing import PasteError, label_limit, next_label
from napari_focsam.core.editing._paste import plan_paste


def apply(labels, paste):
    out = labels.copy()
    out[paste.index] = paste.label
    return out


def test_next_label_and_limit():
    assert next_label(np.zeros((3, 3), np.uint8)) == 1
    assert next_label(np.array([[0, 7], [2, 0]], np.uint16)) == 8
    assert next_label(np.zeros((0, 3), np.uint8)) == 1
    assert label_limit(np.uint8) == 255 and label_limit(np.int32) == 2**31 - 1
    assert label_limit(np.float32) == 2**31


def test_only_background_unless_overwrite():
    labels = np.zeros((4, 4), np.uint32)
    labels[0, :2] = 3
    mask = np.zeros((4, 4), bool)
    mask[0, :] = True
    p = plan_paste(labels, mask)
    assert p.label == 4 and p.size == 2
    out = apply(labels, p)
    assert out[0].tolist() == [3, 3, 4, 4]
    p = plan_paste(labels, mask, overwrite=True)
    assert apply(labels, p)[0].tolist() == [4, 4, 4, 4]
    labels[0, :] = 3
    with pytest.raises(PasteError) as err:
        plan_paste(labels, mask)
    assert err.value.reason == "occupied"


def test_refusals():
    with pytest.raises(PasteError) as err:
        plan_paste(np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool))
    assert err.value.reason == "empty"
    with pytest.raises(PasteError) as err:
        plan_paste(np.zeros((4, 5), np.uint8), np.ones((4, 4), bool))
    assert err.value.reason == "shape" and "(4, 5)" in str(err.value)
    full = np.zeros((4, 4), np.uint8)
    full[0, 0] = 255
    with pytest.raises(PasteError) as err:
        plan_paste(full, np.ones((4, 4), bool))
    assert err.value.reason == "full" and "uint8" in str(err.value)


def test_z_range_limits_a_3d_commit():
    labels = np.zeros((5, 3, 3), np.uint16)
    mask = np.ones((5, 3, 3), bool)
    p = plan_paste(labels, mask, z_range=(1, 2))
    out = apply(labels, p)
    assert out[[1, 2]].all() and not out[[0, 3, 4]].any()
    with pytest.raises(PasteError) as err:
        plan_paste(labels, np.zeros_like(mask), z_range=(0, 4))
    assert err.value.reason == "empty"
