"""Saving a labels layer as an OME-Zarr label image from the dock: in a worker thread, one
notification (where it went, or why not), never a traceback."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
zarr = pytest.importorskip("zarr")

from napari_focsam._qt import save_labels  # noqa: E402


@pytest.fixture
def notes(monkeypatch):
    seen = []
    import napari.utils.notifications as nt

    monkeypatch.setattr(nt, "show_info", lambda m: seen.append(("info", m)))
    monkeypatch.setattr(nt, "show_error", lambda m: seen.append(("error", m)))
    return seen


def test_a_labels_layer_is_saved_off_the_gui_thread_with_a_notification(qtbot, tmp_path, notes):
    data = np.zeros((300, 200), np.int32)
    data[10:50, 20:80] = 7
    layer = SimpleNamespace(data=data, name="nuclei", multiscale=False)
    viewer = SimpleNamespace(status="")
    got = []
    worker = save_labels.save_labels_as_ome_zarr(viewer, layer, tmp_path / "nuclei.ome.zarr", got.append)
    qtbot.waitUntil(lambda: bool(got), timeout=20000)
    assert worker is not None and got == [tmp_path / "nuclei.ome.zarr"]
    group = zarr.open_group(str(got[0]), mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
    assert group.attrs["multiscales"][0]["name"] == "nuclei" and "image-label" in group.attrs
    assert notes[-1][0] == "info" and "nuclei.ome.zarr" in notes[-1][1]


def test_a_bad_path_is_one_error_notification(qtbot, tmp_path, notes):
    layer = SimpleNamespace(data=np.zeros((20, 20), np.uint8), name="x", multiscale=False)
    got = []
    save_labels.save_labels_as_ome_zarr(SimpleNamespace(), layer, tmp_path / "x.tif", got.append)
    qtbot.waitUntil(lambda: bool(got), timeout=20000)
    assert got == [None] and notes[-1][0] == "error"
    assert "ome.zarr" in notes[-1][1] and "\n" not in notes[-1][1]
