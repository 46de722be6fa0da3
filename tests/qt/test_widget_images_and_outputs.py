"""Several images in one viewer: each gets its own output labels layer, the widget's layers follow
the chosen image, and a commit pressed before the model is ready is not lost."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from viewer_helpers import (
    A,
    B,
    WAIT_MS,
    add_2d,
    add_3d_crop,
    dock,  # noqa: F401 (fixture)
    interior,
    iou,
    load_nuclei,
    press,
    qt_embedding_cache,  # noqa: F401 (fixture)
    save_screenshot,
    wait_idle,
    wait_ready,
)

pytestmark = pytest.mark.gui


def _two_images(viewer):
    image, _ = load_nuclei("2d")
    viewer.add_image(image, name="dna-1")
    viewer.add_image(image.copy(), name="dna-2")  # same shape (same pixels: one embedding for both)


def _commit_click(qtbot, viewer, widget, point):
    widget.prompts_layer.data = np.array([point], float)
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.current_mask is not None and widget.current_mask.any(), timeout=WAIT_MS)
    press(viewer, "C")
    wait_idle(qtbot, widget)


def test_each_image_gets_its_own_labels_layer_chosen_again_with_the_image(dock, qtbot):  # noqa: F811
    viewer, widget = dock(show=True, layers=[_two_images])
    _, gt = load_nuclei("2d")
    one, two = viewer.layers["dna-1"], viewer.layers["dna-2"]
    widget.set_image_layer(one)
    wait_ready(qtbot, widget)
    _commit_click(qtbot, viewer, widget, interior(gt == A))
    out1 = widget.output_layer
    assert out1.name == "dna-1 labels" and iou(out1.data == 1, gt == A) >= 0.8

    widget.image_combo.setCurrentIndex(widget.image_combo.findText("dna-2"))  # as a user does
    wait_ready(qtbot, widget)
    assert widget.output_layer is None  # "New labels layer": never dna-1's
    _commit_click(qtbot, viewer, widget, interior(gt == B))
    out2 = widget.output_layer
    assert out2 is not out1 and out2.name == "dna-2 labels"
    assert set(np.unique(out1.data)) == {0, 1} and iou(out1.data == 1, gt == A) >= 0.8  # dna-1 untouched
    assert set(np.unique(out2.data)) == {0, 1} and iou(out2.data == 1, gt == B) >= 0.8

    # every layer of the widget is above the chosen (upper) image, the boxes layer too
    names = [la.name for la in viewer.layers]
    for ours in ("dna-2 labels", "FocSAM preview", "FocSAM boxes", "FocSAM prompts"):
        assert names.index(ours) > names.index("dna-2"), names
    save_screenshot(viewer, "two_images_own_labels")

    widget.image_combo.setCurrentIndex(widget.image_combo.findText("dna-1"))
    wait_ready(qtbot, widget)
    assert widget.output_layer is out1  # chosen again with its image

    # dna-1's layer chosen by hand for dna-2: written, but with a warning that names both
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("dna-2"))
    wait_ready(qtbot, widget)
    assert widget.output_layer is out2
    combo = widget.output_combo
    combo.setCurrentIndex(combo.findText("dna-1 labels"))
    combo.activated.emit(combo.currentIndex())
    other = next(i for i in np.unique(gt) if i not in (0, A, B) and (gt == i).sum() > 300)
    _commit_click(qtbot, viewer, widget, interior(gt == other))
    assert set(np.unique(out1.data)) == {0, 1, 2}
    assert "holds the objects of image 'dna-1'" in widget.last_message


def test_a_commit_pressed_while_the_model_loads_fires_when_the_mask_arrives(dock, qtbot, monkeypatch):  # noqa: F811
    import napari_focsam.core.models as models

    real, release = models.load_model, threading.Event()

    def held(*args, **kwargs):  # a slow disk: the model still loads when the user commits
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", held)
    viewer, widget = dock(layers=[lambda v: v.add_image(load_nuclei("2d")[0], name="dna-1")])
    _, gt = load_nuclei("2d")
    qtbot.waitUntil(lambda: widget.jobs.loading and widget.prompts_layer is not None, timeout=10_000)
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    press(widget.prompts_layer, "C")
    assert not widget.is_ready and "committing once the model is loaded" in widget.status_label.text()
    release.set()
    qtbot.waitUntil(lambda: widget.output_layer is not None and widget.output_layer.data.any(), timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    out = widget.output_layer
    assert set(np.unique(out.data)) == {0, 1} and iou(out.data == 1, gt == A) >= 0.8
    assert len(widget.prompts_layer.data) == 0 and widget.last_committed_id == 1


def test_the_preview_layer_is_built_off_the_gui_thread(dock, qtbot, monkeypatch):  # noqa: F811
    """The first labels layer of a session costs napari ~0.6 s (feature table, default colours):
    built in a worker, only added to the viewer on the GUI thread (the window never freezes)."""
    from napari.layers import Labels

    from napari_focsam._qt.constants import PREVIEW_NAME

    built_on = []
    real = Labels.__init__

    def spy(self, *args, **kwargs):
        if kwargs.get("name") == PREVIEW_NAME:
            built_on.append(threading.current_thread() is threading.main_thread())
        real(self, *args, **kwargs)

    monkeypatch.setattr(Labels, "__init__", spy)
    viewer, widget = dock(layers=[lambda v: v.add_image(load_nuclei("2d")[0], name="dna-1")])
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=WAIT_MS)
    assert built_on == [False]
    assert widget.preview_layer in viewer.layers


def test_save_output_labels_as_ome_zarr_from_the_dock(dock, qtbot, tmp_path, monkeypatch):  # noqa: F811
    """Output > Save as OME-Zarr: the chosen labels layer goes to an NGFF label image, written in
    a worker (the dialog answered by the test); with no labels yet, a message and no dialog."""
    import zarr
    from qtpy.QtCore import Qt

    from napari_focsam._qt import widget as widget_module

    import napari.utils.notifications as nt

    asked, notes = [], []
    monkeypatch.setattr(nt, "show_info", notes.append)
    target = tmp_path / "my nuclei.ome.zarr"
    monkeypatch.setattr(widget_module, "ask_ome_zarr_path", lambda parent, start: asked.append(start) or target)
    viewer, widget = dock(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    qtbot.mouseClick(widget.output.save_button, Qt.MouseButton.LeftButton)
    assert "nothing to save" in widget.last_message and not asked
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    wait_idle(qtbot, widget)
    press(viewer, "C")
    out = widget.output_layer
    assert out is not None and (out.data == 1).any()
    qtbot.mouseClick(widget.output.save_button, Qt.MouseButton.LeftButton)
    assert asked == [f"{out.name}.ome.zarr"]
    qtbot.waitUntil(lambda: any("saved the labels" in m for m in notes), timeout=WAIT_MS)
    group = zarr.open_group(str(target), mode="r")
    np.testing.assert_array_equal(group["0"][:], np.asarray(out.data))
    assert group.attrs["multiscales"][0]["name"] == out.name


def test_choosing_a_stack_while_a_2d_click_is_shown(dock, qtbot, monkeypatch):  # noqa: F811
    """A 2D image with a clicked object, then a stack chosen under Image: the model for the stack
    may be ready before the stack's own prompts layer is in the viewer; the 2D points are not read
    as clicks on the stack (this aborted Python: a 2D/3D transform comparison raised in a slot)."""
    from napari_focsam._qt.prompt_layers import PromptLayers

    viewer, widget = dock(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    wait_idle(qtbot, widget)
    gate, real = threading.Event(), PromptLayers.new_prompts
    monkeypatch.setattr(PromptLayers, "new_prompts", lambda image: gate.wait(60) and real(image))
    widget.jobs.loaded.connect(lambda *_: gate.set())  # the layers come after the model is ready
    add_3d_crop(viewer)
    widget.set_image_layer(viewer.layers["stack crop"])
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.prompts_layer is not None and widget.prompts_layer.ndim == 3, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    assert len(widget.prompts_layer.data) == 0 and not widget.current_mask.any()
