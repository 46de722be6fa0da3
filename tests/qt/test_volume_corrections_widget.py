"""3D corrections in the widget: after Segment volume the object stays open; a click on another
slice corrects that slice and the object is propagated again by itself; the z-profile shows where
the object is and which slices were clicked; C commits the corrected object."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from viewer_helpers import (
    A,
    WAIT_MS,
    add_3d_crop,
    click,
    crop_3d,
    dock,  # noqa: F401 (fixture)
    interior,
    iou,
    key,
    qt_embedding_cache,  # noqa: F401 (fixture)
    save_screenshot,
    wait_idle,
    wait_ready,
)

pytestmark = pytest.mark.gui


def centre(mask):
    """The pixel farthest from the mask's border (where a negative click means "stop here")."""
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.unravel_index(int(d.argmax()), d.shape)


def test_a_click_on_another_slice_propagates_again_and_c_commits(dock, qtbot):  # noqa: F811
    from qtpy.QtCore import Qt

    ctrl = Qt.KeyboardModifier.ControlModifier
    viewer, widget = dock(show=True, layers=[add_3d_crop])
    image, gt = crop_3d()
    layer = viewer.layers["stack crop"]
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices == image.shape[0], timeout=WAIT_MS)
    viewer.dims.set_current_step(0, 1)
    viewer.reset_view()
    qtbot.wait(100)
    pts = widget.prompts_layer
    click(qtbot, viewer, layer, *interior(gt[1] == A))
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    wait_idle(qtbot, widget)

    key(qtbot, viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)  # Segment volume
    qtbot.waitUntil(lambda: "volume segmented" in widget.last_message, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    first = widget.current_mask.copy()
    on = [z for z in range(image.shape[0]) if first[z].any()]
    assert len(on) >= 3 and widget.output_layer is None  # shown, not committed
    prof = widget.z_profile
    assert prof.isVisibleTo(widget) and prof.anchors == {1} and prof.extent() == (on[0], on[-1])
    assert prof.view_z == 1

    # "stop here": a negative click at the centre of the propagated mask on the last slice
    z_end = on[-1]
    viewer.dims.set_current_step(0, z_end)
    qtbot.waitUntil(lambda: prof.view_z == z_end, timeout=5000)
    click(qtbot, viewer, layer, *centre(first[z_end]), modifier=ctrl)
    qtbot.waitUntil(lambda: len(pts.data) == 2, timeout=5000)
    qtbot.waitUntil(lambda: widget.volume.repropagations == 1, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    corrected = widget.current_mask
    assert not corrected[z_end].any()  # the object ends before that slice now
    assert all(corrected[z].any() for z in on if z < z_end)
    assert prof.anchors == {1, z_end} and prof.extent()[1] < z_end
    assert widget.output_layer is None
    save_screenshot(viewer, "volume_correction_stop_here")

    # Ctrl+Z takes the correction back: propagated again, the slice is back
    key(qtbot, viewer, Qt.Key.Key_Z, ctrl)
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    qtbot.waitUntil(lambda: widget.volume.repropagations == 2, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    assert widget.current_mask[z_end].any() and prof.anchors == {1}

    # a positive correction on another slice, then C commits the whole object
    z_fix = on[0]
    viewer.dims.set_current_step(0, z_fix)
    click(qtbot, viewer, layer, *interior(gt[z_fix] == A))
    qtbot.waitUntil(lambda: widget.volume.repropagations == 3, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    shown = widget.current_mask.copy()
    key(qtbot, viewer, Qt.Key.Key_C)
    qtbot.waitUntil(lambda: widget.last_committed_id == 1, timeout=WAIT_MS)
    out = np.asarray(widget.output_layer.data)
    assert np.array_equal(out == 1, shown)
    assert iou(out == 1, gt == A) >= 0.75
    assert len(pts.data) == 0 and not prof.isVisibleTo(widget) and not widget.volume.is_open()


def movie():
    """(8, 160, 160) frames: cell 1 moves right 4 px per frame; cell 2 appears at frame 4."""
    T, S = 8, 160
    yy, xx = np.mgrid[:S, :S]
    frames = np.random.default_rng(0).normal(40, 4, (T, S, S))
    truth = np.zeros((T, S, S), np.uint8)
    for t in range(T):
        truth[t][(yy - 50) ** 2 + (xx - (40 + 4 * t)) ** 2 < 18 ** 2] = 1
        if t >= 4:
            truth[t][(yy - 115) ** 2 + (xx - 110) ** 2 < 15 ** 2] = 2
    frames[truth > 0] = 200
    return frames.clip(0, 255).astype(np.uint8), truth


def test_a_time_lapse_keeps_ids_through_time_and_takes_new_cells_later(dock, qtbot):  # noqa: F811
    """A (T, Y, X) layer (napari axis labels t, y, x): a cell clicked on the first frame is followed
    through every frame with one id; a cell that appears later is clicked on its first frame and
    gets the next id on its frames only; the two never overlap."""
    from qtpy.QtCore import Qt

    frames, truth = movie()
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(frames, name="movie", axis_labels=("t", "y", "x"))])
    layer = viewer.layers["movie"]
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices == len(frames), timeout=WAIT_MS)
    viewer.reset_view()
    qtbot.wait(100)
    # frames in time: no vote between neighbouring frames (a cell moves from one to the next)
    assert widget.vote_check.isChecked() and widget.volume.hooks.stops()["vote"] is False
    for cell, t0 in ((1, 0), (2, 4)):
        viewer.dims.set_current_step(0, t0)
        qtbot.waitUntil(lambda t0=t0: widget.sync.view_z == t0, timeout=5000)
        click(qtbot, viewer, layer, *interior(truth[t0] == cell))
        wait_idle(qtbot, widget)
        key(qtbot, viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)  # follow it through time
        qtbot.waitUntil(lambda: "volume segmented" in widget.last_message, timeout=WAIT_MS)
        wait_idle(qtbot, widget)
        key(qtbot, viewer, Qt.Key.Key_C)
        qtbot.waitUntil(lambda cell=cell: widget.last_committed_id == cell, timeout=WAIT_MS)
    out = np.asarray(widget.output_layer.data)
    assert out.shape == frames.shape
    for t in range(len(frames)):
        assert iou(out[t] == 1, truth[t] == 1) >= 0.8, t
        if t >= 4:
            assert iou(out[t] == 2, truth[t] == 2) >= 0.8, t
        else:
            assert not (out[t] == 2).any(), t  # no cell 2 before it appears


def defocused_stack():
    """(10, 96, 96): a bright round cell, sharp on slices 3-6; on the others its light out of
    focus, dimmer and blurred (as past the ends of a nucleus in a fluorescence stack)."""
    Z, S = 10, 96
    yy, xx = np.mgrid[:S, :S]
    cell = ((yy - 48) ** 2 + (xx - 48) ** 2 < 20 ** 2).astype(np.float32)
    rng = np.random.default_rng(0)
    stack = np.empty((Z, S, S), np.float32)
    for z in range(Z):
        plane = 180 * cell if 3 <= z <= 6 else ndi.gaussian_filter(110 * cell, 5 + abs(z - 4.5))
        stack[z] = plane + 30 + rng.normal(0, 2, (S, S))
    return stack.clip(0, 255).astype(np.uint8)


def test_the_object_ends_where_it_goes_out_of_focus_and_the_stop_can_be_turned_off(dock, qtbot):  # noqa: F811
    from qtpy.QtCore import Qt

    stack = defocused_stack()
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(stack, name="defocus")])
    layer = viewer.layers["defocus"]
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices == len(stack), timeout=WAIT_MS)
    viewer.dims.set_current_step(0, 4)
    viewer.reset_view()
    qtbot.waitUntil(lambda: widget.sync.view_z == 4, timeout=5000)
    click(qtbot, viewer, layer, 48, 48)
    wait_idle(qtbot, widget)
    assert widget.edge_spin.value() == pytest.approx(0.2) and widget.edge_spin.isEnabled()
    assert widget.volume.hooks.stops()["vote"] is True  # slices in z are voted with their neighbours
    assert widget.vote_check.isChecked() and widget.vote_check.isEnabled()
    qtbot.mouseClick(widget.vote_check, Qt.MouseButton.LeftButton)  # the user unticks it: no vote
    assert widget.volume.hooks.stops()["vote"] is False
    qtbot.mouseClick(widget.vote_check, Qt.MouseButton.LeftButton)
    assert widget.volume.hooks.stops()["vote"] is True

    key(qtbot, viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)  # Segment volume
    qtbot.waitUntil(lambda: "volume segmented" in widget.last_message, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    assert "faded at z=2" in widget.last_message and "faded at z=7" in widget.last_message
    assert widget.z_profile.extent() == (3, 6)
    save_screenshot(viewer, "volume_stops_out_of_focus")

    # the stop off (down arrow to 0, shown as "off"): Shift+S again follows the blur further
    widget.edge_spin.setFocus()
    for _ in range(4):
        qtbot.keyClick(widget.edge_spin, Qt.Key.Key_Down)
    assert widget.edge_spin.value() == 0 and widget.edge_spin.text() == "off"
    widget.volume_button.click()
    qtbot.waitUntil(lambda: "volume segmented" in widget.last_message and "faded" not in widget.last_message,
                    timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    lo, hi = widget.z_profile.extent()
    assert lo < 3 and hi > 6
