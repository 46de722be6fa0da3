"""Sample data: shapes, ground truth, and the manifest wiring (File > Open Sample > FocSAM)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam._sample_data import SLICE_2D, SLICES_3D, load_nuclei, nuclei_2d, nuclei_3d


def test_nuclei_2d_layer_data():
    [(data, kwargs, kind)] = nuclei_2d()
    assert kind == "image"
    assert data.shape == (256, 256) and data.dtype == np.uint16
    assert kwargs["name"] == "nuclei 2D"
    lo, hi = kwargs["contrast_limits"]
    assert data.min() <= lo < hi <= data.max()
    assert len(kwargs["scale"]) == 2
    image, gt = load_nuclei("2d")
    np.testing.assert_array_equal(image, data)
    assert gt.shape == data.shape
    assert len(np.unique(gt)) > 15  # ~20 labelled nuclei in the mid slice
    assert kwargs["metadata"]["slice"] == SLICE_2D


def test_nuclei_3d_layer_data():
    [(data, kwargs, kind)] = nuclei_3d()
    assert kind == "image"
    assert data.shape == (SLICES_3D[1] - SLICES_3D[0], 256, 256)
    assert len(kwargs["scale"]) == 3
    image, gt = load_nuclei("3d")
    assert gt.shape == image.shape == data.shape
    # the 2D sample is a slice of the stack
    np.testing.assert_array_equal(image[SLICE_2D - SLICES_3D[0]], load_nuclei("2d")[0])
    # objects end inside the stack: the first and last slices hold (almost) no nuclei
    assert (gt[0] > 0).mean() < 0.05 and (gt[-1] > 0).mean() < 0.05
    with pytest.raises(ValueError):
        load_nuclei("4d")


def test_samples_are_copies():
    a, _ = load_nuclei("2d")
    a[:] = 0
    assert load_nuclei("2d")[0].any()


@pytest.mark.gui
def test_open_sample_from_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-focsam", "nuclei_2d")
    viewer.open_sample("napari-focsam", "nuclei_3d")
    assert [layer.name for layer in viewer.layers] == ["nuclei 2D", "nuclei 3D"]
    assert viewer.layers["nuclei 3D"].ndim == 3


@pytest.mark.gui
def test_widget_in_plugins_and_segment_menus(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    menus = get_app_model().menus
    for menu_id in ("napari/plugins", "napari/layers/segment"):
        ids = [getattr(getattr(item, "command", None), "id", None) for item in menus.get_menu(menu_id)]
        assert "napari-focsam.make_focsam_widget" in ids, menu_id
