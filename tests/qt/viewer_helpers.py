"""Helpers for driving the dock widget in a real viewer: sample data, real clicks and keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_focsam._sample_data import SLICE_2D, SLICES_3D, VOXEL_UM, load_nuclei

WAIT_MS = 120_000
A, B = 17, 14  # two well separated nuclei of the 2D sample (labels of the ground truth)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

__all__ = ["A", "ARTIFACTS", "B", "WAIT_MS", "add_2d", "add_3d_crop", "click", "crop_3d", "dock", "interior",
           "iou", "key", "load_nuclei", "press", "qt_embedding_cache", "save_screenshot", "wait_idle", "wait_ready"]


def add_2d(viewer):
    viewer.open_sample("napari-focsam", "nuclei_2d")


def crop_3d():
    """4 slices of the stack around the 2D sample's slice, with ground truth."""
    image, gt = load_nuclei("3d")
    z = SLICE_2D - SLICES_3D[0]
    return image[z - 1 : z + 3], gt[z - 1 : z + 3]


def add_3d_crop(viewer):
    viewer.add_image(crop_3d()[0], name="stack crop", scale=VOXEL_UM)


def interior(mask):
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.unravel_index(int(d.argmax()), d.shape)


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max(1, (a | b).sum())


def wait_ready(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: widget.is_ready and not widget.is_busy(), timeout=timeout)


def wait_idle(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=timeout)


def press(layer_or_viewer, key_name):
    """Run the function bound to ``key_name`` (instance keymap, then class keymap, as napari does)."""
    from napari.utils.key_bindings import coerce_keybinding

    kb = coerce_keybinding(key_name)
    func = layer_or_viewer.keymap.get(kb) or type(layer_or_viewer).class_keymap[kb]
    func(layer_or_viewer)


def _canvas_point(viewer, layer, y, x):
    from qtpy.QtCore import QPoint

    wy, wx = layer.data_to_world((0,) * (layer.ndim - 2) + (y, x))[-2:]  # a stack: the slice in view
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    size = viewer.window._qt_viewer.canvas.native.size()
    return QPoint(round(size.width() / 2 + (wx - cx) * zoom), round(size.height() / 2 + (wy - cy) * zoom))


def click(qtbot, viewer, layer, y, x, modifier=None):
    """A real left click on the canvas at the data point (y, x) of a layer (of a stack: on the slice in view)."""
    from qtpy.QtCore import Qt

    mod = modifier if modifier is not None else Qt.KeyboardModifier.NoModifier
    native = viewer.window._qt_viewer.canvas.native
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, mod, _canvas_point(viewer, layer, y, x))


def key(qtbot, viewer, qt_key, modifier=None):
    """A real key press on the canvas."""
    from qtpy.QtCore import Qt

    mod = modifier if modifier is not None else Qt.KeyboardModifier.NoModifier
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, qt_key, mod)


def save_screenshot(viewer, name):
    """Save the whole window (canvas and dock) to test-artifacts/<name>.png."""
    import imageio.v3 as iio

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    iio.imwrite(path, viewer.screenshot(canvas_only=False, flash=False))
    return path


# --------------------------------------------------------------------------- fixtures
# (not in a tests/qt/conftest.py: a second module named "conftest" would shadow tests/conftest.py
#  for the test modules that import helpers from it)


@pytest.fixture(scope="session")
def qt_embedding_cache(tmp_path_factory):
    """One embedding cache folder for the session: each image is encoded once."""
    return tmp_path_factory.mktemp("focsam-qt-embeddings")


@pytest.fixture
def dock(make_napari_viewer, qtbot, vit_t_path, qt_embedding_cache, monkeypatch):
    """Factory: a viewer (optionally shown, with layers added first) and the docked FocSAM widget."""
    monkeypatch.setenv("NAPARI_FOCSAM_EMBEDDING_CACHE", str(qt_embedding_cache))
    monkeypatch.setenv("NAPARI_FOCSAM_THREADS", "1")  # the suite runs torch on one thread
    widgets = []

    def make(*, show: bool = False, layers=()):
        viewer = make_napari_viewer(show=show)
        if show:
            viewer.window._qt_window.resize(1280, 820)
        for add in layers:
            add(viewer)
        _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
        widgets.append(widget)
        return viewer, widget

    yield make
    for widget in widgets:  # no worker may outlive its viewer
        widget.close_session()
        qtbot.waitUntil(lambda w=widget: not w.has_running_workers(), timeout=WAIT_MS)
