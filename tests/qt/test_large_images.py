"""The widget on large, multiscale and lazy images (issue 14), driven with real clicks and keys.

Synthetic images (a flat background with a few bright discs) keep these tests small: the checks
are about what is read and written, and where, not about segmentation quality.
"""

from __future__ import annotations

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
    wait_idle,
    wait_ready,
)

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
    """Each answer writes the object's box into the preview's one array (kept for the image), and a
    commit clears only that box; the label lands where the disc is."""
    img, discs = disc_image(2048)
    viewer, widget = dock(show=True, layers=[lambda v: v.add_image(img, name="discs 2048")])
    layer = viewer.layers["discs 2048"]
    wait_ready(qtbot, widget)
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
