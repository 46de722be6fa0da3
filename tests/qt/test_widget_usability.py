"""The widget as a new user meets it: real viewers, real clicks and keys where practical.

Each test reproduces one complaint and checks the fixed behaviour: a commit pressed while the mask
is computing, the active layer after adopting an image, the order of the widget's layers, Ctrl+Z
after a commit, a dock that appears at once, and smaller items.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from viewer_helpers import (
    A,
    B,
    WAIT_MS,
    add_2d,
    click,
    dock,  # noqa: F401  (fixture)
    interior,
    iou,
    key,
    load_nuclei,
    press,
    qt_embedding_cache,  # noqa: F401  (fixture)
    save_screenshot,
    wait_idle,
    wait_ready,
)

pytestmark = pytest.mark.gui


def slow_predictions(monkeypatch, seconds=0.6):
    """Make every prediction take at least ``seconds`` (so keys arrive while it runs)."""
    from napari_focsam.core.session._objects import SegmentedObject

    real = SegmentedObject.set_clicks

    def slow(self, clicks, **kwargs):
        time.sleep(seconds)
        return real(self, clicks, **kwargs)

    monkeypatch.setattr(SegmentedObject, "set_clicks", slow)


def test_commit_pressed_while_the_mask_is_computing(dock, qtbot, monkeypatch):
    """A pending commit fires when the newest mask arrives, exactly once."""
    viewer, widget = dock(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    slow_predictions(monkeypatch)
    pts = widget.prompts_layer
    pts.data = np.array([interior(gt == A)], float)
    assert widget.is_busy()
    press(pts, "C")  # while the mask is computing
    press(pts, "C")  # twice: still one object
    assert "committing when the current mask is ready" in widget.status_label.text()
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.output_layer is not None, timeout=5000)
    out = widget.output_layer
    assert out.name == f"{widget.sync.image.name} labels"  # named after its image
    assert set(np.unique(out.data)) == {0, 1} and iou(out.data == 1, gt == A) >= 0.8
    assert widget.last_committed_id == 1 and len(pts.data) == 0

    # newer points queued behind a running prediction: the commit takes the newest mask
    pts.data = np.array([interior(gt == A)], float)  # A again (already labelled: overwrite)
    widget.overwrite_check.setChecked(True)
    pts.data = np.array([interior(gt == B)], float)  # ... replaced by B while A is computing
    press(viewer, "C")
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.last_committed_id == 2, timeout=5000)
    assert set(np.unique(out.data)) == {0, 1, 2} and iou(out.data == 2, gt == B) >= 0.8
    qtbot.wait(300)
    assert set(np.unique(out.data)) == {0, 1, 2}  # nothing fired twice


def test_prompts_active_after_adopting_an_image(dock, qtbot):
    """Dock first, then open an image: the first click adds a point (prompts active, add mode)."""
    viewer, widget = dock(show=True)
    assert "no image layer" in widget.last_message
    add_2d(viewer)
    image_layer = viewer.layers["nuclei 2D"]
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    qtbot.wait(50)
    pts = widget.prompts_layer
    assert viewer.layers.selection.active is pts and pts.mode == "add"
    assert "no image layer" not in widget.status_label.text()
    viewer.reset_view()
    qtbot.wait(100)
    click(qtbot, viewer, image_layer, *interior(gt == A))
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == A) >= 0.8
    save_screenshot(viewer, "dock_then_image")


def test_widget_layers_stay_above_their_image(dock, qtbot):
    """Prompts, preview and output lie above the image they belong to, in that order."""
    viewer, widget = dock(layers=[add_2d])
    image, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    wait_idle(qtbot, widget)
    assert widget.commit() == 1
    out = widget.output_layer

    second = viewer.add_image(image[::-1].copy(), name="flipped")  # opened later: on top of ours
    widget.set_image_layer(second)
    wait_ready(qtbot, widget)
    qtbot.wait(50)
    names = [la.name for la in viewer.layers]
    order = [names.index(n) for n in ("flipped", "FocSAM preview", "FocSAM boxes", "FocSAM prompts")]
    assert order == sorted(order), names
    assert viewer.layers.selection.active is widget.prompts_layer
    assert widget.output_layer is None  # the first image's labels are not the flipped image's
    widget.prompts_layer.data = np.array([interior(gt[::-1] == A)], float)
    wait_idle(qtbot, widget)
    assert widget.commit() == 1 and widget.output_layer is not out
    names = [la.name for la in viewer.layers]
    order = [names.index(n) for n in ("flipped", "flipped labels", "FocSAM preview", "FocSAM prompts")]
    assert order == sorted(order), names


def test_undo_after_commit_from_anywhere(dock, qtbot):
    """Ctrl+Z after a commit undoes it (prompts or labels layer active), clicks keep working,
    the next id follows undo/redo; Enter commits and Esc clears."""
    from qtpy.QtCore import Qt

    ctrl, shift = Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.ShiftModifier
    viewer, widget = dock(show=True, layers=[add_2d])
    image_layer = viewer.layers["nuclei 2D"]
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    viewer.reset_view()
    qtbot.wait(100)
    pts = widget.prompts_layer

    click(qtbot, viewer, image_layer, *interior(gt == A))
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    wait_idle(qtbot, widget)
    key(qtbot, viewer, Qt.Key.Key_C)
    qtbot.waitUntil(lambda: len(pts.data) == 0, timeout=WAIT_MS)
    out = widget.output_layer
    assert set(np.unique(out.data)) == {0, 1} and "next id 2" in widget.status_label.text()

    key(qtbot, viewer, Qt.Key.Key_Z, ctrl)  # the prompts layer is active: undo the commit
    assert not out.data.any() and "next id 1" in widget.status_label.text()
    key(qtbot, viewer, Qt.Key.Key_Z, ctrl | shift)  # redo
    assert set(np.unique(out.data)) == {0, 1} and "next id 2" in widget.status_label.text()

    viewer.layers.selection.active = out  # the labels layer selected: undo works there too ...
    key(qtbot, viewer, Qt.Key.Key_Z, ctrl)
    assert not out.data.any() and "next id 1" in widget.status_label.text()
    assert viewer.layers.selection.active is pts and pts.mode == "add"  # ... and clicks add points
    click(qtbot, viewer, image_layer, *interior(gt == B))
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    wait_idle(qtbot, widget)
    assert iou(widget.current_mask, gt == B) >= 0.8
    key(qtbot, viewer, Qt.Key.Key_Z, ctrl)  # with points: Ctrl+Z removes the newest point
    qtbot.waitUntil(lambda: len(pts.data) == 0, timeout=5000)
    wait_idle(qtbot, widget)
    assert not widget.current_mask.any() and not out.data.any()

    click(qtbot, viewer, image_layer, *interior(gt == B))
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    wait_idle(qtbot, widget)
    key(qtbot, viewer, Qt.Key.Key_Escape)  # Esc clears
    assert len(pts.data) == 0 and not widget.current_mask.any()
    click(qtbot, viewer, image_layer, *interior(gt == B))
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    wait_idle(qtbot, widget)
    key(qtbot, viewer, Qt.Key.Key_Return)  # Enter commits
    qtbot.waitUntil(lambda: len(pts.data) == 0, timeout=WAIT_MS)
    assert set(np.unique(out.data)) == {0, 1} and iou(out.data == 1, gt == B) >= 0.8  # id follows undo
    save_screenshot(viewer, "after_undo_and_commit")


def test_dock_appears_at_once_and_says_when_ready(dock, qtbot, monkeypatch):
    """Building the dock imports no torch; the model loads in a worker with a busy bar,
    and the status says plainly when clicks are answered."""
    code = (
        "import sys, threading, time\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('napari_focsam.modeling'):\n"
        "            seen.append((name, threading.current_thread() is threading.main_thread()))\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from qtpy.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from napari.components import ViewerModel\n"
        "from napari_focsam._qt.widget import FocSAMWidget\n"
        "w = FocSAMWidget(ViewerModel())\n"
        "assert 'no image layer' in w.status_label.text()\n"
        "t0 = time.time()\n"
        "while w.has_running_workers() and time.time() - t0 < 240:\n"
        "    app.processEvents(); time.sleep(0.01)\n"
        "on_gui = sorted(name for name, main in seen if main)\n"
        "assert not on_gui, on_gui\n"
        "assert 'torch' in [name for name, _ in seen]  # imported, in the background\n"
        "assert not w.device_combo.model().item(2).isEnabled()  # cuda: none here (found in the background)\n"
        "w.close_session()\n"
    )
    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)

    import napari_focsam.core.models as models

    real = models.load_model
    release = __import__("threading").Event()

    def held(*args, **kwargs):  # a slow disk: the load waits until the test has looked
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", held)
    viewer, widget = dock(layers=[add_2d])
    bar = widget.progress_bar
    qtbot.waitUntil(widget.is_busy, timeout=5000)  # the load starts once the dock is on screen
    assert not widget.is_ready
    assert bar.isVisibleTo(widget) and bar.maximum() == 0  # a busy bar while the model loads
    assert "loading model focsam_t_micro" in widget.status_label.text()  # the default model
    release.set()
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices == 1, timeout=WAIT_MS)
    assert widget.status_label.text().startswith("ready: click on an object")


def test_deleted_prompts_layer_is_recreated(dock, qtbot):
    """Deleting the prompts (or preview) layer does not silently stop the widget."""
    viewer, widget = dock(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    viewer.layers.remove(widget.prompts_layer)
    qtbot.waitUntil(lambda: widget.prompts_layer is not None and widget.prompts_layer in viewer.layers,
                    timeout=5000)
    assert "deleted" in widget.last_message
    assert viewer.layers.selection.active is widget.prompts_layer
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == A) >= 0.8
    viewer.layers.remove(widget.preview_layer)
    qtbot.waitUntil(lambda: widget.preview_layer is not None and widget.preview_layer in viewer.layers,
                    timeout=5000)
    widget.prompts_layer.data = np.array([interior(gt == B)], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == B) >= 0.8


def test_threads_setting(dock, qtbot, monkeypatch):
    """A CPU-threads setting, applied to torch on the thread that runs the model (each thread has
    its own count); its default is the cores, at most 4."""
    import torch

    from napari_focsam._qt.constants import default_threads
    from napari_focsam.core.models import compute_thread

    monkeypatch.delenv("NAPARI_FOCSAM_THREADS", raising=False)
    assert default_threads(2) == 2 and default_threads(64) == 4 and default_threads(1) == 1
    monkeypatch.setenv("NAPARI_FOCSAM_THREADS", "3")
    assert default_threads(2) == 3
    monkeypatch.setenv("NAPARI_FOCSAM_THREADS", "1")
    viewer, widget = dock(layers=[add_2d])
    compute = compute_thread()
    before = compute.run(torch.get_num_threads)
    try:
        assert widget.threads_spin.value() == 1
        wait_ready(qtbot, widget)
        assert compute.run(torch.get_num_threads) == 1  # (a job queued after the setting's)
        widget.threads_spin.setValue(widget.threads_spin.maximum())
        assert compute.run(torch.get_num_threads) == widget.threads_spin.maximum()
    finally:
        compute.run(torch.set_num_threads, before)


FAR_FROM_A = 16  # a nucleus of the 2D sample about 100 px from A


def test_hint_for_positive_clicks_on_separate_cells(dock, qtbot):
    """Two positive clicks on two cells 100 px apart give a one-line hint that one object is one
    cell (the mask has two pieces, one under each click; for the nuclei A and B, 47 px apart, the
    default model draws one mask over both and the gap between them: no separate pieces)."""
    viewer, widget = dock(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    wait_idle(qtbot, widget)
    assert "one object is one cell" not in widget.last_message
    widget.prompts_layer.add(np.array(interior(gt == FAR_FROM_A), float))
    wait_idle(qtbot, widget)
    assert "one object is one cell" in widget.last_message


def test_closing_during_a_model_load_is_quiet(dock, qtbot, monkeypatch, capfd):
    """Closing the viewer while the model loads or the stack is embedded prints no traceback."""
    import threading

    import napari_focsam.core.models as models

    real, release = models.load_model, threading.Event()

    def held(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", held)
    viewer, widget = dock(layers=[add_2d])
    qtbot.waitUntil(widget.is_busy, timeout=5000)
    viewer.close()
    release.set()
    qtbot.waitUntil(lambda: not widget.has_running_workers(), timeout=WAIT_MS)
    qtbot.wait(200)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Error" not in out + err, out + err

    # napari quits while a job runs (a script ends, the app closes): no traceback at exit either
    code = (
        "import sys, time, numpy as np\n"
        "from qtpy.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from napari.components import ViewerModel\n"
        "from napari_focsam._qt.widget import FocSAMWidget\n"
        "v = ViewerModel()\n"
        "v.add_image(np.random.default_rng(0).integers(0, 255, (6, 64, 64), np.uint8), name='img')\n"
        "w = FocSAMWidget(v)\n"
        "t0 = time.time()\n"
        "while (sys.argv[1] == 'embedding' and not w.is_ready) and time.time() - t0 < 120:\n"
        "    app.processEvents(); time.sleep(0.01)\n"
        "assert w.has_running_workers()\n"
        "w.close()\n"
    )
    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}
    for phase in ("load", "embedding"):
        run = subprocess.run([sys.executable, "-c", code, phase], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0 and not run.stderr.strip(), (phase, run.stderr)


def test_stack_embeds_in_the_background_with_eta(dock, qtbot, monkeypatch):
    """The rest of the stack is embedded after the slice in view, nearest first, with
    "embeddings k/N" and an ETA; Segment volume says what it still waits for."""
    import threading

    from viewer_helpers import add_3d_crop, crop_3d

    from napari_focsam.core.embeddings import EmbeddingStore

    gate, order = threading.Event(), []
    real = EmbeddingStore.precompute

    def gated(self, slices=None, *args, **kwargs):
        if order:  # the slice in view goes through; the others wait for the test
            gate.wait(60)
        order.extend(slices or [])
        return real(self, slices, *args, **kwargs)

    monkeypatch.setattr(EmbeddingStore, "precompute", gated)
    image, gt = crop_3d()
    viewer, widget = dock(layers=[add_3d_crop])
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices == 1, timeout=WAIT_MS)
    text = widget.status_label.text()
    assert "embeddings 1/4" in text and "left)" in text, text
    assert "left" in widget.progress_bar.format()
    y, x = interior(gt[1] == A)
    widget.prompts_layer.data = np.array([[1, y, x]], float)
    gate.set()
    widget.segment_volume()
    assert "slices embedded" in widget.status_label.text()
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.embedded_slices == 4 or not widget.has_running_workers(), timeout=WAIT_MS)
    z_view = order[0]
    assert abs(order[1] - z_view) == 1
    assert "volume segmented" in widget.last_message
    widget.commit()
    assert widget.last_committed_id == 1


def test_switching_to_a_model_with_the_same_encoder_reuses_the_embedding(dock, qtbot):
    """vit_t -> focsam_t (same encoder + refiner) re-encodes nothing; the click still works."""
    viewer, widget = dock(layers=[add_2d])
    _, gt = load_nuclei("2d")
    wait_ready(qtbot, widget)
    widget.set_model("vit_t")
    wait_ready(qtbot, widget)
    widget.session.store.get(0)  # the slice in view is embedded
    widget.set_model("focsam_t")
    wait_ready(qtbot, widget)
    store = widget.session.store
    assert widget.session.predictor.model.has_refiner
    store.get(0)
    assert store.stats["computed"] == 0, store.stats  # from memory (adopted) or from the shared disk cache
    widget.prompts_layer.data = np.array([interior(gt == A)], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert iou(widget.current_mask, gt == A) >= 0.8
    assert store.stats["computed"] == 0


def test_docking_leaves_the_event_loop_free(dock, qtbot):
    """The GUI thread is never held by all of the widget's start-up at once: no torch import runs
    while napari lays out the dock (the device probe starts from the event loop afterwards), and the
    preview, prompts and boxes layers arrive in separate event-loop turns (napari draws each new
    layer before the next one comes)."""
    from qtpy.QtCore import QTimer

    from napari_focsam._qt.box_prompts import BOXES_NAME
    from napari_focsam._qt.constants import PREVIEW_NAME, PROMPTS_NAME

    turns = [0]
    ticker = QTimer()
    ticker.setInterval(0)
    ticker.timeout.connect(lambda: turns.__setitem__(0, turns[0] + 1))
    ticker.start()
    viewer, widget = dock(show=True, layers=[add_2d])
    # constructed and docked, nothing has run in the event loop yet: the probe is only scheduled
    assert widget.jobs._probe_worker is None and widget.has_running_workers()
    inserted = {}
    viewer.layers.events.inserted.connect(lambda e: inserted.setdefault(e.value.name, turns[0]))
    wait_ready(qtbot, widget)
    ticker.stop()
    ours = [inserted[name] for name in (PREVIEW_NAME, PROMPTS_NAME, BOXES_NAME)]
    assert len(set(ours)) == 3, inserted
    assert widget.prompts_layer is viewer.layers.selection.active  # ready for clicks at the end


def test_dock_scrolls_on_a_small_screen_instead_of_drawing_rows_over_each_other(dock, qtbot):
    """On a laptop screen the dock's panels, the z-profile of a volume included, are taller than
    the window: they keep their size in a scroll area (the rows were squeezed over each other)."""
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QScrollArea

    viewer, widget = dock(show=True, layers=[add_2d])
    wait_ready(qtbot, widget)
    viewer.window._qt_window.resize(1100, 560)
    widget.z_profile.show_profile(40, {z: 100 + z for z in range(10, 30)}, [20], 20)
    qtbot.wait(300)

    def rect(w):  # the widget's rectangle in the dock
        return QRect(w.mapTo(widget, QPoint(0, 0)), w.size())

    panel = widget.modes.panel
    rows = [panel.points_spin, panel.tiles_spin, panel.segment_all_button, widget.actions.commit_button,
            widget.z_profile, widget.status_label]
    for upper, lower in zip(rows, rows[1:]):
        assert rect(upper).bottom() < rect(lower).top(), (upper, rect(upper), lower, rect(lower))
    scroll = widget.findChild(QScrollArea, "focsam_dock_scroll")
    assert scroll is not None and scroll.verticalScrollBar().maximum() > 0
    inner = scroll.widget()  # nothing cut sideways: the visible part is as wide as the panels need
    assert scroll.viewport().width() >= inner.minimumSizeHint().width() and inner.width() <= scroll.viewport().width()
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    qtbot.wait(50)
    assert not widget.status_label.visibleRegion().isEmpty()  # the last panel scrolls into view
