"""Fixtures for the viewer tests of the dock widget (real napari viewers under Xvfb)."""

from __future__ import annotations

import pytest

WAIT_MS = 120_000  # embedding one slice takes seconds on a busy 2-core CPU


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
