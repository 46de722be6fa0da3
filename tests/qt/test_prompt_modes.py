"""Prompts beyond clicks in the dock widget: boxes, many objects at once, Segment all.

Real viewers under Xvfb; the prompts are given as a user gives them (a rectangle in the boxes
layer, points in the prompts layer, the panel's checkbox and buttons, C and Ctrl+Z).
"""

from __future__ import annotations

import numpy as np
import pytest
from viewer_helpers import (
    A,
    B,
    WAIT_MS,
    add_2d,
    add_3d_crop,
    crop_3d,
    dock,  # noqa: F401  (fixture)
    interior,
    iou,
    load_nuclei,
    press,
    qt_embedding_cache,  # noqa: F401  (fixture)
    save_screenshot,
    wait_idle,
    wait_ready,
)

pytestmark = pytest.mark.gui


def bbox(mask, pad=3):
    ys, xs = np.nonzero(mask)
    return [[ys.min() - pad, xs.min() - pad], [ys.max() + pad, xs.max() + pad]]


def draw_box(layer, corners, z=None):
    """A rectangle as the rectangle tool leaves it (corners in the layer's data coordinates)."""
    (y0, x0), (y1, x1) = corners
    rect = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
    if z is not None:
        rect = np.column_stack([np.full(4, z, float), rect])
    layer.add_rectangles(rect)


def canvas_point(viewer, layer, y, x):
    from qtpy.QtCore import QPointF

    wy, wx = layer.data_to_world((y, x))
    cy, cx = viewer.camera.center[-2:]
    size = viewer.window._qt_viewer.canvas.native.size()
    zoom = viewer.camera.zoom
    return QPointF(size.width() / 2 + (wx - cx) * zoom, size.height() / 2 + (wy - cy) * zoom)


def drag_rectangle(qtbot, viewer, layer, corners):
    """Draw a rectangle with the mouse: the rectangle tool of ``layer``, press, drag, release."""
    from qtpy.QtCore import QEvent, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    viewer.layers.selection.active = layer
    layer.mode = "add_rectangle"
    native = viewer.window._qt_viewer.canvas.native
    (y0, x0), (y1, x1) = corners
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    mods = Qt.KeyboardModifier.NoModifier

    def send(kind, y, x, button, buttons):
        pos = canvas_point(viewer, layer, y, x)
        QApplication.sendEvent(native, QMouseEvent(kind, pos, native.mapToGlobal(pos), button, buttons, mods))
        qtbot.wait(10)

    send(QEvent.Type.MouseButtonPress, y0, x0, left, left)
    for t in np.linspace(0.1, 1.0, 8):
        send(QEvent.Type.MouseMove, y0 + t * (y1 - y0), x0 + t * (x1 - x0), none, left)
    send(QEvent.Type.MouseButtonRelease, y1, x1, left, none)


def test_box_starts_an_object_and_clicks_refine_it(dock, qtbot):
    viewer, widget = dock(show=True, layers=[add_2d])
    wait_ready(qtbot, widget)
    boxes = viewer.layers["FocSAM boxes"]
    assert boxes is widget.modes.boxes.layer
    _, gt = load_nuclei("2d")
    viewer.camera.center = tuple(boxes.data_to_world(np.mean(np.nonzero(gt == A), axis=1)))
    drag_rectangle(qtbot, viewer, boxes, bbox(gt == A))
    assert len(boxes.data) == 1
    np.testing.assert_allclose(np.sort(boxes.data[0], axis=0)[[0, -1]], bbox(gt == A), atol=1.0)
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.current_mask is not None and widget.current_mask.any(), timeout=WAIT_MS)
    box_iou = iou(widget.current_mask, gt == A)
    print(f"box (bounding box + 3 px) IoU {box_iou:.3f}")
    assert box_iou >= 0.85, box_iou
    # the rectangle hands the clicks back to the prompts layer; a click refines the boxed object
    assert viewer.layers.selection.active is widget.prompts_layer
    assert widget.prompts_layer.mode == "add"
    y, x = interior(gt == A)
    widget.prompts_layer.add([y, x])
    wait_idle(qtbot, widget)
    ctx = widget.jobs.context
    assert ctx.obj.box is not None and len(ctx.obj.clicks) == 1  # the box stays a prompt
    print(f"box + 1 click IoU {iou(widget.current_mask, gt == A):.3f}")
    assert iou(widget.current_mask, gt == A) >= 0.85
    save_screenshot(viewer, "prompt_modes_box")
    press(viewer, "C")
    out = widget.output_layer
    assert out is not None and iou(out.data == 1, gt == A) >= 0.85
    assert len(boxes.data) == 0 and widget.prompts_layer.data.shape[0] == 0  # next object starts clean


def test_bad_boxes_give_messages_and_keep_commits(dock, qtbot):
    viewer, widget = dock(layers=[add_3d_crop])
    wait_ready(qtbot, widget)
    boxes = widget.modes.boxes.layer
    _, gt = crop_3d()
    z = 1  # the crop's slice of the 2D sample
    viewer.dims.set_current_step(0, z)
    draw_box(boxes, bbox(gt[z] == A), z=z)
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.current_mask[z].any(), timeout=WAIT_MS)
    assert iou(widget.current_mask[z], gt[z] == A) >= 0.85
    press(viewer, "C")
    committed = widget.output_layer.data.copy()
    assert (committed > 0).sum() > 50
    # a box of zero area: a message, no traceback, nothing committed lost
    draw_box(boxes, [[40, 40], [40, 60]], z=z)
    qtbot.waitUntil(lambda: "zero area" in widget.last_message, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    assert len(boxes.data) == 0
    # a box outside the image
    draw_box(boxes, [[-90, -90], [-60, -60]], z=z)
    qtbot.waitUntil(lambda: "outside the image" in widget.last_message, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    # a box on one slice and a click on another
    draw_box(boxes, bbox(gt[z] == B), z=z)
    wait_idle(qtbot, widget)
    y, x = interior(gt[z + 1] == B)
    widget.prompts_layer.add([z + 1, y, x])
    qtbot.waitUntil(lambda: "belong to one slice" in widget.last_message, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(widget.output_layer.data, committed)
    # the click removed (Ctrl+Z), Segment volume works from the box of its slice
    press(viewer, "Control-Z")
    wait_idle(qtbot, widget)
    widget.segment_volume()
    qtbot.waitUntil(lambda: not widget.jobs.volume_running, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(widget.output_layer.data, committed)  # shown, not yet committed
    press(viewer, "C")
    wait_idle(qtbot, widget)
    out = widget.output_layer.data
    new = out == committed.max() + 1
    assert new[z].any() and sum(new[k].any() for k in range(out.shape[0])) >= 2, widget.last_message
    assert iou(new[z], gt[z] == B) >= 0.8
    np.testing.assert_array_equal(out[committed > 0], committed[committed > 0])


def test_many_objects_commit_and_undo(dock, qtbot):
    viewer, widget = dock(show=True, layers=[add_2d])
    wait_ready(qtbot, widget)
    _, gt = load_nuclei("2d")
    check = widget.modes.panel.batch_check
    check.click()  # as a user ticks it
    assert widget.modes.batch
    pts = widget.prompts_layer
    for lab in (A, B):
        pts.add(list(interior(gt == lab)))
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.modes.n_objects == 2, timeout=WAIT_MS)
    mask = widget.current_mask
    assert iou(mask & (gt == A), gt == A) >= 0.8 and iou(mask & (gt == B), gt == B) >= 0.8
    save_screenshot(viewer, "prompt_modes_many_objects")
    press(viewer, "C")
    out = widget.output_layer.data
    ids = set(np.unique(out)) - {0}
    assert len(ids) == 2, ids
    got = {int(np.bincount(out[gt == lab]).argmax()) for lab in (A, B)}
    assert got == ids  # one id per nucleus
    for lab in (A, B):
        k = np.bincount(out[gt == lab]).argmax()
        assert iou(out == k, gt == lab) >= 0.8
    assert "2 objects" in widget.status_label.text()
    press(viewer, "Control-Z")  # one undo step removes both
    assert not widget.output_layer.data.any()
    press(viewer, "Control-Shift-Z")
    assert set(np.unique(widget.output_layer.data)) - {0} == ids


def test_segment_all_cancel_then_run_keeps_committed_labels(dock, qtbot):
    viewer, widget = dock(show=True, layers=[add_2d])
    wait_ready(qtbot, widget)
    _, gt = load_nuclei("2d")
    panel = widget.modes.panel
    panel.points_spin.setValue(16)  # a coarse grid: quick on a CPU
    # Cancel right after the start: nothing is written
    panel.segment_all_button.click()
    assert panel.cancel_button.isVisible() or widget.modes.all_running
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.modes.busy() and not widget.modes.running(), timeout=WAIT_MS)
    assert "cancelled" in widget.last_message
    assert widget.output_layer is None or not widget.output_layer.data.any()
    # one committed object first (a box), then Segment all around it
    draw_box(widget.modes.boxes.layer, bbox(gt == A))
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.current_mask.any(), timeout=WAIT_MS)
    press(viewer, "C")
    before = widget.output_layer.data.copy()
    panel.segment_all_button.click()
    qtbot.waitUntil(lambda: panel.progress_bar.isVisible(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.modes.busy() and not widget.modes.running(), timeout=10 * WAIT_MS)
    out = widget.output_layer.data
    np.testing.assert_array_equal(out[before > 0], before[before > 0])  # committed labels untouched
    new_ids = set(np.unique(out[before == 0])) - {0}
    assert len(new_ids) >= 10, widget.last_message
    assert min(new_ids) == before.max() + 1
    save_screenshot(viewer, "prompt_modes_segment_all")
    press(viewer, "Control-Z")  # one undo step
    np.testing.assert_array_equal(widget.output_layer.data, before)


def test_many_objects_segment_volume_with_cancel(dock, qtbot):
    viewer, widget = dock(layers=[add_3d_crop])
    wait_ready(qtbot, widget)
    _, gt = crop_3d()
    z = 1
    viewer.dims.set_current_step(0, z)
    widget.modes.panel.batch_check.click()
    for lab in (A, B):
        widget.prompts_layer.add([z, *interior(gt[z] == lab)])
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.modes.n_objects == 2, timeout=WAIT_MS)
    panel = widget.modes.panel
    # Cancel at once: nothing is committed, the points stay
    widget.segment_volume()
    assert widget.modes.volume_running and panel.cancel_button.isVisibleTo(widget)
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.modes.volume_running, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    assert "cancelled" in widget.last_message
    assert widget.output_layer is None or not widget.output_layer.data.any()
    assert len(widget.prompts_layer.data) == 2
    # the whole run: both objects through the stack, committed with their own ids
    seen = []
    widget.modes.progress.connect(lambda d, t, f: seen.append((d, t)))
    widget.segment_volume()
    qtbot.waitUntil(lambda: not widget.modes.volume_running, timeout=5 * WAIT_MS)
    wait_idle(qtbot, widget)
    out = widget.output_layer.data
    ids = sorted(set(np.unique(out)) - {0})
    assert len(ids) == 2, widget.last_message
    for k in ids:
        assert sum((out[s] == k).any() for s in range(out.shape[0])) >= 2  # propagated beyond slice z
    for lab in (A, B):
        k = np.bincount(out[z][gt[z] == lab]).argmax()
        assert k in ids and iou(out[z] == k, gt[z] == lab) >= 0.8
    assert seen and seen[-1][0] == seen[-1][1]  # progress over both objects, to the end
    press(viewer, "Control-Z")  # one undo step removes both
    assert not widget.output_layer.data.any()


def test_segment_all_on_a_blank_image_says_so(dock, qtbot):
    viewer, widget = dock(layers=[lambda v: v.add_image(np.full((96, 128), 7, np.uint16), name="blank")])
    wait_ready(qtbot, widget)
    widget.modes.panel.segment_all_button.click()
    qtbot.waitUntil(lambda: not widget.modes.busy() and not widget.modes.running(), timeout=WAIT_MS)
    assert "blank" in widget.last_message, widget.last_message
    assert widget.output_layer is None or not widget.output_layer.data.any()


def test_a_new_rectangle_replaces_the_box(dock, qtbot):
    viewer, widget = dock(layers=[add_2d])
    wait_ready(qtbot, widget)
    boxes = widget.modes.boxes.layer
    _, gt = load_nuclei("2d")
    draw_box(boxes, bbox(gt == A))
    wait_idle(qtbot, widget)
    draw_box(boxes, bbox(gt == B))
    qtbot.waitUntil(lambda: len(boxes.data) == 1, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: iou(widget.current_mask, gt == B) >= 0.85, timeout=WAIT_MS)
    press(viewer, "Control-Z")  # no points: Ctrl+Z removes the box, and the object with it
    assert len(boxes.data) == 0
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.current_mask.any(), timeout=WAIT_MS)
    assert widget.output_layer is None or not widget.output_layer.data.any()
    viewer.layers.remove(boxes)  # a deleted boxes layer comes back
    qtbot.waitUntil(lambda: "FocSAM boxes" in viewer.layers, timeout=WAIT_MS)
    assert widget.modes.boxes.layer is viewer.layers["FocSAM boxes"]
