"""The widget on large, multiscale and lazy images, driven with real clicks and keys.

Synthetic images (a flat background with a few bright discs) keep these tests small: the checks
are about what is read and written, and where, not about segmentation quality.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from qtpy.QtCore import Qt
from viewer_helpers import (
    WAIT_MS,
    click,
    dock,  # noqa: F401  (fixture)
    iou,
    key,
    qt_embedding_cache,  # noqa: F401  (fixture)
    save_screenshot,
    wait_idle,
    wait_ready,
)

from napari_focsam.core.defaults import PHOTO_MODEL

pytestmark = pytest.mark.gui

#: (cy, cx, radius) of the discs of a 2048x2048 image (scaled with the image size)
DISCS_2048 = ((420, 520, 44), (1500, 700, 60), (900, 1600, 36))


def disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def disc_image(n, dtype=np.uint16):
    """An (n, n) image: a dim background with a little texture and the scaled discs of DISCS_2048."""
    f = n / 2048
    yy, xx = np.ogrid[:n, :n]
    img = (800 + 60 * np.sin(yy / 37.0) * np.cos(xx / 53.0)).astype(np.float32)
    discs = [(round(cy * f), round(cx * f), round(r * f)) for cy, cx, r in DISCS_2048]
    for cy, cx, r in discs:
        img[disc((n, n), cy, cx, r)] = 9000
    return img.astype(dtype), discs


class WriteSpy(np.ndarray):
    """A numpy array that records the number of elements of every region written into it."""

    def __array_finalize__(self, obj):
        if not hasattr(self, "writes"):
            self.writes = []

    def __setitem__(self, key, value):
        self.writes.append(np.broadcast_to(np.zeros((), bool), self.shape)[key].size)
        super().__setitem__(key, value)


def test_preview_writes_only_the_object_box(dock, qtbot):
    """On a lazy (dask) 2048x2048 layer: each answer writes the object's box into the preview's one
    array (kept for the image), a commit clears only that box and the label lands on the disc; the
    session gets the lazy array as is and never reads a whole plane of it."""
    import dask.array as da

    img, discs = disc_image(2048)
    lazy = ThreadSpy(da.from_array(img, chunks=512))
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(lazy, name="discs 2048")])
    layer = viewer.layers["discs 2048"]
    wait_ready(qtbot, widget)
    assert widget.session.volume.data is lazy and widget.session.tiled
    viewer.reset_view()
    qtbot.wait(100)
    preview = widget.preview_layer
    spy = np.zeros(img.shape, np.uint8).view(WriteSpy)
    preview.data = spy
    assert preview.data is spy
    pts = widget.prompts_layer

    for n, (cy, cx, r) in enumerate(discs[:2], start=1):
        spy.writes.clear()
        click(qtbot, viewer, layer, cy, cx)
        qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
        wait_idle(qtbot, widget)
        truth = disc(img.shape, cy, cx, r)
        assert iou(widget.current_mask, truth) >= 0.8
        assert preview.data is spy and spy.writes  # the same array, written in place
        box = (2 * r + 8) ** 2  # the disc's box (and the cleared box of the object before)
        assert max(spy.writes) <= 4 * box < img.size // 50, spy.writes
        key(qtbot, viewer, Qt.Key.Key_C)
        qtbot.waitUntil(lambda: len(pts.data) == 0, timeout=WAIT_MS)
        out = widget.output_layer
        assert iou(np.asarray(out.data) == n, truth) >= 0.8
        assert not widget.current_mask.any() and not spy.any()  # the commit cleared the box
        assert max(spy.writes) <= 4 * box
    assert lazy.worker_reads and lazy.whole_plane_reads() == []


class ThreadSpy:
    """A lazy array level that records each read request and whether the GUI thread made it
    (napari's own display reads) or a worker (the widget's session)."""

    def __init__(self, arr):
        self.arr = arr
        self.shape, self.dtype, self.ndim, self.size = arr.shape, arr.dtype, arr.ndim, arr.size
        self.worker_reads: list[tuple[tuple[int, int], ...]] = []

    def __array__(self, dtype=None, copy=None):  # a whole read
        self[...]
        return np.asarray(self.arr, dtype)

    def __getitem__(self, key):
        import threading

        if key is Ellipsis:
            key = ()
        if threading.current_thread() is not threading.main_thread():
            keys = key if isinstance(key, tuple) else (key,)
            keys = keys + (slice(None),) * (self.ndim - len(keys))
            self.worker_reads.append(tuple(
                k.indices(n)[:2] if isinstance(k, slice) else (int(k), int(k) + 1) for k, n in zip(keys, self.shape)))
        return np.asarray(self.arr[key])

    def whole_plane_reads(self) -> list:
        h, w = self.shape[-2:]
        return [r for r in self.worker_reads if r[-2] == (0, h) and r[-1] == (0, w)]

    def largest_worker_read(self) -> int:
        return max((int(np.prod([b - a for a, b in r])) for r in self.worker_reads), default=0)


def test_multiscale_lazy_layer_tiles_click_commit_cancel(dock, qtbot):
    """A 3-level multiscale layer of a 4096x4096 image, each level a lazy array: the session gets the
    levels, reads only tile-sized regions (never a whole level-0 plane), shows the outline of each
    tile it embeds (with 'embedding tile k of N'), answers a real click in level-0 coordinates,
    commits by region; Cancel stops the background embedding."""
    img, discs = disc_image(4096)
    levels = [ThreadSpy(img), ThreadSpy(img[::2, ::2].copy()), ThreadSpy(img[::4, ::4].copy())]
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(levels, multiscale=True, name="pyramid")])
    layer = viewer.layers["pyramid"]
    assert layer.multiscale
    wait_ready(qtbot, widget)
    assert widget.session.tiled and widget.session.volume.n_levels == 3
    tiles_layer = widget.tiles.layer
    assert tiles_layer is not None and tiles_layer in viewer.layers
    assert viewer.layers.selection.active is widget.prompts_layer  # clicks still add points
    viewer.reset_view()
    qtbot.waitUntil(lambda: len(tiles_layer.data) > 0, timeout=WAIT_MS)  # the background at work
    qtbot.wait(200)
    save_screenshot(viewer, "tile_being_embedded")
    # the outlines stay a few screen pixels wide at every zoom (here 1 data pixel = 1 world unit)
    from napari_focsam._qt.tile_view import OUTLINE_SCREEN_PX

    for factor in (1, 16):
        viewer.camera.zoom *= factor
        qtbot.waitUntil(lambda: len(tiles_layer.data) > 0, timeout=WAIT_MS)
        on_screen = np.asarray(tiles_layer.edge_width, float) * viewer.camera.zoom
        assert np.allclose(on_screen, OUTLINE_SCREEN_PX, rtol=0.05), (factor, on_screen)
    viewer.reset_view()
    pts = widget.prompts_layer

    cy, cx, r = discs[0]
    click(qtbot, viewer, layer, cy, cx)
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    y, x = pts.data[0]
    assert abs(y - cy) <= 8 and abs(x - cx) <= 8  # the points layer speaks level-0 pixels
    wait_idle(qtbot, widget)
    truth = disc(img.shape, cy, cx, r)
    assert iou(widget.current_mask, truth) >= 0.8
    shown = widget.tiles.outlines_shown
    assert any(y0 <= cy < y1 and x0 <= cx < x1 for _, _, (y0, y1, x0, x1) in shown), shown
    assert any(re.match(r"embedding tile \d+ of \d+ \(level \d, tile \d+,\d+\)", t) for t in widget.tiles.texts)

    key(qtbot, viewer, Qt.Key.Key_C)
    qtbot.waitUntil(lambda: len(pts.data) == 0, timeout=WAIT_MS)
    out = widget.output_layer
    assert iou(np.asarray(out.data) == 1, truth) >= 0.8
    save_screenshot(viewer, "committed_on_pyramid")

    # Cancel stops the background embedding of the tiles in view; outlines are removed when ready
    assert widget.tiles.running  # 26 tiles: the background is still at work
    assert not widget.cancel_button.isHidden()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.jobs.embedding, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: len(tiles_layer.data) == 0, timeout=WAIT_MS)
    assert widget.tiles.cancelled and "tile embedding stopped" in widget.tiles.last_text
    assert widget.cancel_button.isHidden()
    viewer.camera.zoom *= 2  # a new view does not restart it
    qtbot.wait(600)
    assert not widget.jobs.embedding

    # no whole plane of any level was read by the session, only tile-sized regions
    assert levels[0].whole_plane_reads() == [] and levels[1].whole_plane_reads() == []
    assert levels[0].worker_reads and levels[0].largest_worker_read() <= 1024 * 1024


def test_tiled_stack_click_segment_volume_commit(dock, qtbot):
    """A (3, 2048, 2048) stack is tiled: the outline of the tile being embedded is drawn on the
    slice it belongs to, Segment volume propagates through the tiles and commits every slice by
    region."""
    img, discs = disc_image(2048)
    stack = np.stack([img, img, img])
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(stack, name="stack 2048")])
    widget.jobs.background_embedding = False  # only the tiles the clicks and the propagation need
    layer = viewer.layers["stack 2048"]
    viewer.dims.set_current_step(0, 1)
    wait_ready(qtbot, widget)
    assert widget.session.tiled and widget.session.volume.is_3d
    viewer.reset_view()
    qtbot.wait(100)
    pts = widget.prompts_layer
    cy, cx, r = discs[1]
    click(qtbot, viewer, layer, cy, cx)
    qtbot.waitUntil(lambda: len(pts.data) == 1, timeout=5000)
    assert int(round(pts.data[0][0])) == 1
    wait_idle(qtbot, widget)
    truth = disc(img.shape, cy, cx, r)
    assert iou(widget.current_mask[1], truth) >= 0.8 and not widget.current_mask[0].any()
    assert any(z == 1 for z, _, _ in widget.tiles.outlines_shown)
    assert widget.tiles.layer.ndim == 3

    key(qtbot, viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)  # Segment volume
    qtbot.waitUntil(lambda: "volume segmented" in widget.last_message, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    key(qtbot, viewer, Qt.Key.Key_C)  # commit
    qtbot.waitUntil(lambda: widget.last_committed_id == 1, timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    out = np.asarray(widget.output_layer.data)
    assert all(iou(out[z] == 1, truth) >= 0.8 for z in range(3))
    assert {z for z, _, _ in widget.tiles.outlines_shown} == {0, 1, 2}  # each slice's tile, on its slice
    assert not widget.current_mask.any() and len(widget.tiles.layer.data) == 0


#: (cy, cx, radius) of the discs of a 1600x1600 image (tiled: 4 tiles of 1024 at level 0, one at
#: level 1): across the right edge of tile (0, 0), the top edge of tile (1, 0), the corner of
#: tile (0, 0), in all four tiles, and in one tile only
SEAM_DISCS = ((300, 1024, 46), (576, 300, 46), (1024, 1024, 46), (800, 800, 56), (1300, 1250, 50))


def test_segment_all_on_a_tiled_image(dock, qtbot, monkeypatch):
    """The panel's Segment all on a tiled 1600x1600 image: each disc (those across tile borders
    too) is written once, with ids after the existing labels, which are kept; Ctrl+Z undoes it.
    Above the undo limit the objects are written box by box and the message says Ctrl+Z cannot."""
    from napari_focsam._qt import segment_all_job as prompt_modes

    monkeypatch.setattr(prompt_modes, "SEGMENT_ALL_MAX_PIXELS", 1024 * 1024)  # one canvas refuses this image
    n = 1600
    yy, xx = np.ogrid[:n, :n]
    img = (800 + 60 * np.sin(yy / 37.0) * np.cos(xx / 53.0)).astype(np.float32)
    truths = [disc((n, n), cy, cx, r) for cy, cx, r in SEAM_DISCS]
    for t in truths:
        img[t] = 9000
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(img.astype(np.uint16), name="seams")])
    widget.jobs.background_embedding = False  # only the scan encodes tiles
    wait_ready(qtbot, widget)
    # the seams and ids are what is tested, on SAM's decoder: the default microscopy model, with
    # its lower thresholds, also writes one object on this synthetic sine background (each disc
    # is still found once; docs/microscopy/README.md, segment all)
    widget.set_model(PHOTO_MODEL)
    wait_ready(qtbot, widget)
    assert widget.session.tiled
    out = widget.sync.output_layer(create=True)
    out.data[100:140, 1400:1480] = 5  # an existing label, on the background
    out.refresh()
    before = np.array(out.data)
    panel = widget.modes.panel
    panel.points_spin.setValue(16)  # 64 px apart on a tile: a point on each disc
    # Cancel is answered at once; the worker stops after its tile, writing nothing
    qtbot.mouseClick(panel.segment_all_button, Qt.MouseButton.LeftButton)
    assert widget.modes.all_running and panel.cancel_button.isVisibleTo(widget)
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert not widget.modes.busy() and "cancelled" in widget.last_message
    qtbot.waitUntil(lambda: not widget.modes.running(), timeout=WAIT_MS)
    np.testing.assert_array_equal(widget.output_layer.data, before)

    def segment_all():
        qtbot.mouseClick(panel.segment_all_button, Qt.MouseButton.LeftButton)
        assert widget.modes.all_running
        qtbot.waitUntil(lambda: not widget.modes.busy() and not widget.modes.running(), timeout=10 * WAIT_MS)
        labels = np.asarray(widget.output_layer.data)
        np.testing.assert_array_equal(labels[before > 0], before[before > 0])  # existing labels kept
        for t in truths:
            ids = set(np.unique(labels[t])) - {0}
            assert len(ids) == 1 and min(ids) > 5, (ids, widget.last_message)  # once, not split in two ids
            assert iou(labels == min(ids), t) >= 0.8, widget.last_message
        assert set(np.unique(labels)) - {0, 5} == set(range(6, 6 + len(truths))), widget.last_message
        assert re.search(r"Segment all: 5 objects .* ids 6-10 .* from 5 tiles on 2 levels", widget.last_message)
        return labels

    segment_all()
    assert "Ctrl+Z undoes it" in widget.last_message
    key(qtbot, viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # one undo step
    np.testing.assert_array_equal(widget.output_layer.data, before)

    monkeypatch.setattr(prompt_modes, "SEGMENT_ALL_UNDO_PIXELS", 1000)
    segment_all()  # the tiles are encoded already: only the decoder runs
    assert "Ctrl+Z cannot undo it" in widget.last_message and "0 tiles encoded" in widget.last_message
