"""Zoom in the dock: a small cell of a large 2D image clicked with the mouse is decoded on an
enlarged crop; unticking *Zoom* answers the same click on the whole image; a stack never zooms
(and greys the option out)."""

from __future__ import annotations

import numpy as np
import pytest

from viewer_helpers import (  # noqa: F401 (the fixtures dock and qt_embedding_cache)
    WAIT_MS, click, dock, iou, qt_embedding_cache, wait_idle, wait_ready)

pytestmark = pytest.mark.gui


def small_cells(n: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like 2D image: small bright cells (radius 12-15) with dark membranes on grey noise."""
    rng = np.random.default_rng(3)
    img = 90 + 12 * rng.standard_normal((n, n))
    truth = np.zeros((n, n), np.int32)
    yy, xx = np.ogrid[:n, :n]
    for i, (cy, cx, r) in enumerate([(300, 280, 14), (330, 318, 12), (700, 650, 15)], start=1):
        d = np.hypot(yy - cy, xx - cx)
        img[(d > r) & (d <= r + 2)] = 25
        img[d <= r] = 185
        truth[d <= r] = i
    return np.clip(img, 0, 255).astype(np.uint8), truth


def test_a_small_cell_is_decoded_on_a_crop_and_unticking_zoom_answers_it_whole(dock, qtbot):  # noqa: F811
    from qtpy.QtCore import Qt

    from napari_focsam.core.prompting import InteractiveObject, ZoomedObject

    image, truth = small_cells()
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(image, name="em")])
    layer = viewer.layers["em"]
    wait_ready(qtbot, widget)
    viewer.reset_view()
    qtbot.wait(100)
    assert widget.zoom_check.isChecked() and widget.zoom_check.isEnabled() and widget.session.zoom
    previews = []
    # (connected after the dock's own slot: runs once the preview layer shows the masks)
    widget.jobs.zoom_preview.connect(lambda ticket, masks: previews.append((masks, widget.current_mask.copy())))
    click(qtbot, viewer, layer, 700, 650)
    qtbot.waitUntil(lambda: len(widget.prompts_layer.data) == 1, timeout=5000)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    hist = widget.session.objects[-1].history(0)
    assert isinstance(hist, ZoomedObject) and hist.window is not None
    y0, y1, x0, x1 = hist.window
    assert y0 < 700 < y1 and x0 < 650 < x1 and y1 - y0 == 512
    zoomed = widget.current_mask.copy()
    assert iou(zoomed, truth == 3) > 0.8
    # while the crop was encoded, the whole image's answer was shown (one preview, slice 0)
    assert len(previews) == 1 and list(previews[0][0]) == [0] and previews[0][0][0].crop.any()
    shown = previews[0][1]
    assert shown[700, 650] and shown.sum() != zoomed.sum()  # the whole image's mask, then the crop's

    qtbot.mouseClick(widget.zoom_check, Qt.MouseButton.LeftButton)  # the user unticks Zoom
    assert not widget.session.zoom
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    hist = widget.session.objects[-1].history(0)
    assert isinstance(hist, InteractiveObject)  # the same click again, on the whole image
    assert widget.current_mask[700, 650] and iou(widget.current_mask, truth == 3) > 0.5
    assert len(widget.prompts_layer.data) == 1  # the clicks stay


def test_a_stack_never_zooms(dock, qtbot):  # noqa: F811
    from napari_focsam.core.prompting import InteractiveObject

    image, truth = small_cells(800)
    stack = np.stack([image, image])
    viewer, widget = dock(show=False, layers=[lambda v: v.add_image(stack, name="em stack")])
    wait_ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.embedded_slices >= 1, timeout=WAIT_MS)
    widget.prompts_layer.data = np.array([[0, 300, 280]], float)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.current_mask.any(), timeout=WAIT_MS)
    assert widget.session.zoom and type(widget.session.objects[-1].history(0)) is InteractiveObject
    # the option is greyed out where it does not apply, the user's choice kept
    assert not widget.zoom_check.isEnabled() and widget.zoom_check.isChecked()
    assert "only 2D" in widget.zoom_check.text()


def test_a_cell_shown_small_answered_with_its_colony_is_looked_at_again(dock, qtbot, shared_data):  # noqa: F811
    """Phase-contrast yeast, two frames side by side (cells about 16 canvas pixels across): the
    whole image answers a click on a cell with its colony (shown at once), the crop with the cell,
    as the cell's own frame does."""
    import tifffile
    from scipy import ndimage as ndi

    from napari_focsam.core.prompting import InteractiveObject, ZoomedObject

    d = shared_data / "micro" / "yeast_phase"
    if not (d / "yeast_phase.tif").is_file():
        pytest.skip("yeast_phase absent")
    frames, labels = tifffile.imread(d / "yeast_phase.tif")[8:10], tifffile.imread(d / "yeast_phase_label.tif")[8:10]
    image, lab = np.concatenate(list(frames), axis=1), np.concatenate(list(labels), axis=1)
    cells = [i for i in np.unique(lab[:, 100:600]) if i and 250 <= (lab == i).sum() <= 600]
    gt = lab == cells[1]  # (the first such cell's crop answer scores lower: it stays whole)
    y, x = np.unravel_index(int(np.argmax(ndi.distance_transform_edt(gt))), gt.shape)
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(image, name="yeast")])
    layer = viewer.layers["yeast"]
    wait_ready(qtbot, widget)
    viewer.reset_view()
    qtbot.wait(100)
    previews = []
    widget.jobs.zoom_preview.connect(lambda ticket, masks: previews.append(widget.current_mask.copy()))
    click(qtbot, viewer, layer, y, x)
    qtbot.waitUntil(lambda: len(widget.prompts_layer.data) == 1, timeout=5000)
    qtbot.waitUntil(lambda: not widget.is_busy() and len(previews) == 1 and widget.current_mask.sum()
                    < previews[0].sum(), timeout=WAIT_MS)
    hist = widget.session.objects[-1].history(0)
    assert isinstance(hist, ZoomedObject) and hist.window is not None
    assert previews[0].sum() > 4000  # the colony, shown while the crop was encoded
    # the cell's answer on its own frame, where the cells are 33 canvas pixels across
    pred = widget.session.predictor  # (the frame's pixels mapped to 8 bits as the dock maps them)
    own = InteractiveObject(pred, pred.embed(widget.session.volume.rgb_region(0, 0, 520, 0, 692)))
    single = np.zeros_like(gt)
    single[:, :692] = own.add_click(y, x)
    assert widget.current_mask[y, x] and iou(widget.current_mask, single) > 0.8
