"""The FocSAM dock widget in a real napari viewer (under Xvfb, started by pytest-xvfb).

The tests drive the widget the way a user does: they dock it through the manifest, add
prompts by setting the points layer's data (or by real mouse clicks and key presses), wait
for the preview, and check the committed labels against the ground truth of the sample
image. All of them share one embedding cache folder, so each image is encoded once per
test session (the 2D image and a 4-slice crop of the stack) -- that keeps the file fast on
a CPU and exercises the cache at the same time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from viewer_helpers import (
    add_2d,
    add_3d_crop,
    click,
    crop_3d,
    interior,
    iou,
    key,
    load_nuclei,
    press,
    wait_idle,
    wait_ready,
)

from napari_focsam.core.defaults import PHOTO_MODEL

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
WAIT_MS = 120_000  # embedding one slice takes seconds on a busy 2-core CPU
A, B = 17, 14  # two well separated nuclei of the mid slice (labels of the ground truth)


# --------------------------------------------------------------------------- helpers


def image_layer_name(viewer):
    """The name of the (one) image layer: the output labels layer is named after it."""
    from napari.layers import Image

    (name,) = [la.name for la in viewer.layers if isinstance(la, Image)]
    return name


@pytest.fixture(scope="module")
def embedding_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("focsam-embeddings")


@pytest.fixture
def focsam(make_napari_viewer, qtbot, vit_t_path, embedding_cache, monkeypatch):
    """Factory: a viewer (optionally shown) with the FocSAM widget docked through the manifest."""
    from napari_focsam._qt.constants import EMBEDDING_CACHE_ENV

    monkeypatch.setenv(EMBEDDING_CACHE_ENV, str(embedding_cache))
    monkeypatch.setenv("NAPARI_FOCSAM_THREADS", "1")  # the suite runs torch on one thread (conftest)
    widgets = []

    def make(*, show: bool = False, layers=()):
        viewer = make_napari_viewer(show=show)
        for add in layers:
            add(viewer)
        _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
        widgets.append(widget)
        return viewer, widget

    yield make
    for widget in widgets:  # no worker may outlive its viewer
        widget.close_session()
        qtbot.waitUntil(lambda w=widget: not w.has_running_workers(), timeout=WAIT_MS)


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_click_negative_commit_undo_clear_2d(focsam, qtbot):
    viewer, widget = focsam(layers=[add_2d])
    image, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    # two separate nuclei in one object (below) is the photo model's behaviour: the default
    # microscopy model keeps one object one cell (a positive click on another cell covers a
    # third of it, docs/microscopy/README.md)
    widget.set_model(PHOTO_MODEL)
    wait_ready(qtbot, widget)
    pts = widget.prompts_layer
    assert pts is not None and pts.ndim == 2
    assert viewer.layers.selection.active is pts
    assert pts.mode == "add"
    assert widget.preview_layer.data.shape == image.shape

    # one positive click on nucleus A
    pts.data = np.array([interior(gt == A)], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == A) >= 0.8
    assert "ms" in widget.status_label.text() and widget.last_latency_ms > 0
    np.testing.assert_allclose(pts.face_color[0, :3], [0x22 / 255, 0xDD / 255, 0x44 / 255], atol=0.01)

    # a positive click on nucleus B adds it; a negative one (T toggles) removes it again
    pts.add(np.array(interior(gt == B), float))
    wait_idle(qtbot, widget)
    assert iou(widget.current_mask, (gt == A) | (gt == B)) >= 0.8
    press(pts, "T")
    assert widget.polarity_button.isChecked()
    pts.add(np.array(interior(gt == B), float))
    press(pts, "T")  # back to positive for what follows
    assert list(pts.features["positive"]) == [True, True, False]
    assert pts.face_color[2, 0] > 0.9 and pts.face_color[2, 1] < 0.3  # red
    assert [str(s.value) for s in pts.symbol] == ["disc", "disc", "cross"]
    wait_idle(qtbot, widget)
    assert (widget.current_mask & (gt == B)).sum() < 0.1 * (gt == B).sum()
    assert iou(widget.current_mask, gt == A) >= 0.8

    # fast successive edits: stale results are dropped, the preview shows the newest points
    for points in ([interior(gt == B)], [interior(gt == A)], [interior(gt == B)]):
        pts.data = np.array(points, float)
    wait_idle(qtbot, widget)
    assert iou(widget.current_mask, gt == B) >= 0.8
    pts.data = np.array([interior(gt == A), interior(gt == B), interior(gt == B)], float)
    pts.features = {"positive": [True, True, False]}
    wait_idle(qtbot, widget)
    assert iou(widget.current_mask, gt == A) >= 0.8

    # deleting the negative point (as in napari) brings B back
    pts.selected_data = {2}
    pts.remove_selected()
    wait_idle(qtbot, widget)
    assert iou(widget.current_mask, (gt == A) | (gt == B)) >= 0.8

    # commit with the key on the prompts layer: a new labels layer, id 1, points cleared
    pts.data = np.array([interior(gt == A)], float)
    wait_idle(qtbot, widget)
    press(pts, "C")
    out = viewer.layers[f"{image_layer_name(viewer)} labels"]
    assert widget.output_layer is out and out.data.shape == image.shape
    assert set(np.unique(out.data)) == {0, 1}
    assert iou(out.data == 1, gt == A) >= 0.8
    assert len(pts.data) == 0 and not widget.current_mask.any()
    assert list(viewer.layers).index(out) < list(viewer.layers).index(widget.preview_layer)

    # the same object again: everything is labelled already and nothing is overwritten
    pts.data = np.array([interior(gt == A)], float)
    wait_idle(qtbot, widget)
    assert widget.commit() is None and "existing labels" in widget.last_message
    assert set(np.unique(out.data)) == {0, 1}
    # ... unless the user asks for it
    widget.overwrite_check.setChecked(True)
    assert widget.commit() == 2
    assert iou(out.data == 2, gt == A) >= 0.8 and not (out.data == 1).any()
    widget.overwrite_check.setChecked(False)
    # napari's undo (Ctrl+Z on the labels layer) reverts a commit
    press(out, "Control-Z")
    assert set(np.unique(out.data)) == {0, 1}

    # B, committed with the viewer-level key, gets the next free id
    pts.data = np.array([interior(gt == B)], float)
    wait_idle(qtbot, widget)
    press(viewer, "C")
    assert set(np.unique(out.data)) == {0, 1, 2} and iou(out.data == 2, gt == B) >= 0.8
    out.undo()
    assert set(np.unique(out.data)) == {0, 1}

    # Clear [Shift+C] drops the object and its points
    pts.data = np.array([interior(gt == B)], float)
    wait_idle(qtbot, widget)
    assert widget.current_mask.any()
    press(pts, "Shift-C")
    assert len(pts.data) == 0 and not widget.current_mask.any()
    wait_idle(qtbot, widget)
    assert not widget.current_mask.any()
    assert widget.commit() is None  # nothing left to commit


@pytest.mark.slow
def test_stack_click_and_segment_volume(focsam, qtbot, monkeypatch):
    from napari_focsam.core.embeddings import EmbeddingStore

    order = []
    real_precompute = EmbeddingStore.precompute

    def spy(self, slices=None, *args, **kwargs):
        order.extend(slices or [])
        return real_precompute(self, slices, *args, **kwargs)

    monkeypatch.setattr(EmbeddingStore, "precompute", spy)
    image, gt = crop_3d()
    viewer, widget = focsam(layers=[add_3d_crop])
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices == image.shape[0], timeout=WAIT_MS)
    # the slice in view is embedded first, then its neighbours
    z_view = int(viewer.dims.current_step[0])
    assert order[0] == z_view and sorted(order) == list(range(image.shape[0]))
    assert abs(order[1] - z_view) == 1
    # a stack that fits the memory store stays there as well as in the cache folder: Segment
    # volume reads no slice back from the disk
    store = widget.session.store
    assert store.cache_path is not None and sorted(store.in_memory()) == list(range(image.shape[0]))
    disk_reads = store.stats["disk_hits"]
    pts = widget.prompts_layer
    assert pts.ndim == 3 and widget.volume_button.isEnabled()

    # the point carries its slice: only that slice is segmented
    y, x = interior(gt[1] == A)
    pts.data = np.array([[1, y, x]], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    mask = widget.current_mask
    assert mask.shape == image.shape
    assert iou(mask[1], gt[1] == A) >= 0.8
    assert not mask[[0, 2, 3]].any()

    # a cancelled propagation commits nothing
    widget.segment_volume()
    widget.cancel_volume()
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=WAIT_MS)
    assert "cancelled" in widget.last_message
    assert widget.output_layer is None or not widget.output_layer.data.any()

    # Segment volume [Shift+S]: propagation through the stack, shown, then C commits it into 3D labels
    press(pts, "Shift-S")
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=WAIT_MS)
    assert "volume segmented" in widget.last_message and widget.output_layer is None
    assert widget.z_profile.isVisibleTo(widget) and widget.z_profile.anchors == {1}
    assert store.stats["disk_hits"] == disk_reads
    press(pts, "C")
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=WAIT_MS)
    out = viewer.layers[f"{image_layer_name(viewer)} labels"]
    assert out.data.shape == image.shape
    assert widget.last_committed_id == 1 and not widget.z_profile.isVisibleTo(widget)
    assert iou(out.data == 1, gt == A) >= 0.8
    for z in range(image.shape[0]):
        assert iou(out.data[z] == 1, gt[z] == A) >= 0.7, z
    assert len(pts.data) == 0
    out.undo()
    assert not out.data.any()


@pytest.mark.slow
def test_switch_images_models_and_gpu_fallback(focsam, qtbot, vit_t_path, tmp_path, monkeypatch):
    viewer, widget = focsam(layers=[add_2d, add_3d_crop])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    # the last image added is selected first
    assert widget.image_combo.currentText() == "stack crop" and widget.prompts_layer.ndim == 3

    widget.set_image_layer(viewer.layers["nuclei 2D"])
    wait_ready(qtbot, widget)
    assert widget.prompts_layer.ndim == 2 and widget.preview_layer.data.shape == gt.shape
    assert len([la for la in viewer.layers if la.name == "FocSAM prompts"]) == 1

    # a checkpoint file of one's own ("Custom file...")
    custom = tmp_path / "my_model.pt"
    shutil.copyfile(vit_t_path, custom)
    widget.set_model(str(custom))
    wait_ready(qtbot, widget)
    assert "my_model.pt" in widget.status_label.text()
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == A) >= 0.8

    # back to the registry model: the points stay and are answered by the new model
    widget.set_model("vit_t")
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == A) >= 0.8

    # a model with a FocSAM focus refiner enables the Refine option (a tiny random one here)
    from conftest import make_tiny_focsam

    from napari_focsam.core.models import save_checkpoint

    tiny = tmp_path / "tiny_focsam.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=1), tiny)
    assert not widget.refine_check.isEnabled()
    widget.set_model(str(tiny))
    wait_ready(qtbot, widget)
    assert widget.refine_check.isEnabled() and widget.refine_check.isChecked()
    assert widget.session.predictor.refine
    widget.refine_check.setChecked(False)
    assert not widget.session.predictor.refine
    widget.refine_check.setChecked(True)
    widget.set_model("vit_t")
    wait_ready(qtbot, widget)
    assert not widget.refine_check.isEnabled()

    # out of GPU memory: a warning, then the same clicks on the CPU
    import torch

    from napari_focsam.core.session._objects import SegmentedObject

    real = SegmentedObject.set_clicks
    calls = []

    def oom_once(self, clicks, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, clicks, **kwargs)

    monkeypatch.setattr(SegmentedObject, "set_clicks", oom_once)
    widget.prompts_layer.add(np.array(interior(gt == B), float))
    qtbot.waitUntil(lambda: widget.device_combo.currentText() == "cpu", timeout=WAIT_MS)
    assert "switched to the CPU" in widget.last_message
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.is_busy() and iou(widget.current_mask, (gt == A) | (gt == B)) >= 0.8,
                    timeout=WAIT_MS)


def test_helpful_messages(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """No image, unsupported layers, missing weights: one-line notifications, never tracebacks."""
    from napari_focsam._qt.widget import FocSAMWidget

    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("NAPARI_FOCSAM_OFFLINE", "1")
    monkeypatch.setenv("NAPARI_FOCSAM_THREADS", "1")  # the suite runs torch on one thread (conftest)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    assert isinstance(widget, FocSAMWidget)
    assert "no image layer" in widget.last_message

    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="masks")
    widget.set_image_layer(labels)
    assert "Labels layer" in widget.last_message

    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="4d")
    qtbot.waitUntil(lambda: "4 dimensions" in widget.last_message, timeout=5000)

    # the registry model is not cached and we are offline: the exact command to fetch it
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8), name="img")
    wait_idle(qtbot, widget)
    assert "napari-focsam weights fetch vit_t" in widget.last_message
    assert not widget.is_ready

    widget.set_model(str(tmp_path / "missing.pt"))
    wait_idle(qtbot, widget)
    assert "not found" in widget.last_message and "missing.pt" in widget.last_message

    # an RGB image: prompts and preview are 2D (the colour axis is not a spatial one)
    viewer.add_image(np.zeros((48, 40, 3), np.uint8), name="rgb", rgb=True)
    widget.set_image_layer(viewer.layers["rgb"])
    wait_idle(qtbot, widget)  # the preview layer is built off the GUI thread, then added
    assert widget.prompts_layer.ndim == 2 and widget.preview_layer.data.shape == (48, 40)

    # keys do nothing harmful without a model
    widget.commit()
    widget.segment_volume()
    widget.clear()

    # closing the dock stops everything and gives the keys back to napari
    from napari.utils.key_bindings import coerce_keybinding

    assert coerce_keybinding("Shift-S") in viewer.keymap
    viewer.window.remove_dock_widget(widget)
    assert coerce_keybinding("Shift-S") not in viewer.keymap
    qtbot.waitUntil(lambda: not widget.has_running_workers(), timeout=WAIT_MS)


@pytest.mark.slow
def test_screenshot_with_widget_and_mask(focsam, qtbot):
    """A shown viewer driven by real mouse clicks and keys; a screenshot with the widget and a mask."""
    from qtpy.QtCore import Qt

    viewer, widget = focsam(show=True, layers=[add_2d])
    viewer.window._qt_window.resize(1280, 820)
    image_layer = viewer.layers["nuclei 2D"]
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    viewer.reset_view()
    qtbot.wait(100)
    pts = widget.prompts_layer

    # two nuclei committed with the C key
    for label in (A, B):
        click(qtbot, viewer, image_layer, *interior(gt == label))
        qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
        wait_idle(qtbot, widget)
        key(qtbot, viewer, Qt.Key.Key_C)
        qtbot.waitUntil(lambda: len(pts.data) == 0, timeout=WAIT_MS)
    out = widget.output_layer
    assert set(np.unique(out.data)) == {0, 1, 2}
    assert iou(out.data == 1, gt == A) >= 0.8 and iou(out.data == 2, gt == B) >= 0.8

    # the current object: a click, and a Ctrl+click that adds a negative point
    c = 12
    click(qtbot, viewer, image_layer, *interior(gt == c))
    click(qtbot, viewer, image_layer, 236, 60, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(pts.data) == 2, timeout=5000)
    assert list(pts.features["positive"]) == [True, False]
    wait_idle(qtbot, widget)
    assert iou(widget.current_mask, gt == c) >= 0.8
    qtbot.wait(200)

    canvas = viewer.screenshot(canvas_only=True, flash=False)
    full = viewer.screenshot(canvas_only=False, flash=False)
    ARTIFACTS.mkdir(exist_ok=True)
    import imageio.v3 as iio

    iio.imwrite(ARTIFACTS / "focsam_screenshot.png", full)
    iio.imwrite(ARTIFACTS / "focsam_canvas.png", canvas)
    if os.environ.get("FOCSAM_DOCS_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        iio.imwrite(REPO / "docs" / "screenshot.png", full[..., :3], optimize=True)

    rgb = canvas[..., :3].astype(int)
    assert rgb.std() > 10, "the canvas is blank"
    # the mask is on screen: hiding the preview changes a nucleus-sized area, which was yellowish
    widget.preview_layer.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    widget.preview_layer.visible = True
    changed = np.abs(rgb - hidden).sum(-1) > 30
    assert changed.sum() > 200
    r, g, b = (rgb[changed][:, i].mean() for i in range(3))
    assert r > b + 40 and g > b + 30, (r, g, b)
    assert full.shape[1] > canvas.shape[1]  # the dock widget is in the picture


def test_model_work_runs_on_one_compute_thread_with_the_dock_setting(focsam, qtbot):
    """Loading, embedding and every click run on the process's compute thread (one OpenMP pool:
    with a pool per worker thread, each click ran at sleeping pools' pace), and the dock's thread
    count reaches that thread (each thread keeps its own count)."""
    viewer, widget = focsam(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    model = widget.session.predictor.model
    seen = []

    def recording(name):
        original = getattr(model, name)

        def call(*args, **kwargs):
            import threading

            import torch

            seen.append((name, threading.current_thread().name, torch.get_num_threads()))
            return original(*args, **kwargs)
        return call

    for name in ("decode", "decode_pair", "refine"):
        setattr(model, name, recording(name))
    try:
        pts = widget.prompts_layer
        pts.data = np.array([interior(gt == A)], float)
        wait_idle(qtbot, widget)
        assert widget.current_mask.any() and seen
        assert {thread for _, thread, _ in seen} == {"napari-focsam-compute_0"}
        assert {n for _, _, n in seen} == {1}  # the suite's setting (NAPARI_FOCSAM_THREADS=1)
        seen.clear()
        widget.threads_spin.setValue(2)
        ys, xs = np.nonzero(gt == A)
        pts.add(np.array([ys[len(ys) // 3], xs[len(xs) // 3]], float))
        wait_idle(qtbot, widget)
        assert [name for name, _, _ in seen] == ["decode_pair"]
        assert seen[0][1:] == ("napari-focsam-compute_0", 2)
    finally:
        widget.threads_spin.setValue(1)
        for name in ("decode", "decode_pair", "refine"):
            del model.__dict__[name]
