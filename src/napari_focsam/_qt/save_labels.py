"""Save a labels layer as an OME-Zarr label image from the dock, off the GUI thread.

The copy (band by band, :func:`napari_focsam.core.outputs._ome_labels.write_labels_data`) runs in a napari
worker thread, so a large labels layer (a lazy dask or zarr array of a whole scan) never freezes
the viewer; the outcome is one napari notification: where the labels went, or why they did not
(one line, never a traceback). The widget hooks :func:`save_labels_as_ome_zarr` to a button or
menu entry; this module has no state of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

__all__ = ["ask_ome_zarr_path", "save_labels_as_ome_zarr"]


def save_labels_as_ome_zarr(viewer: Any, layer: Any, path: str | Path,
                            on_done: Callable[[Path | None], None] | None = None) -> Any:
    """Write ``layer.data`` to ``path`` (``*.ome.zarr``) in a worker thread; notify when done.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer (its status line shows that the save runs).
    layer : napari.layers.Labels
        The labels to save: ``data`` of shape (Y, X) or (Z, Y, X), numpy, dask or zarr; the
        multiscale's name is the layer's name. A multiscale layer saves its level 0.
    path : str or Path
        The output folder, ``*.ome.zarr`` (an existing one only when napari-focsam wrote it).
    on_done : callable, optional
        ``on_done(path)`` on success, ``on_done(None)`` on failure (on the GUI thread).

    Returns
    -------
    napari.qt.threading.FunctionWorker
        The started worker.
    """
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error, show_info

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    name = str(layer.name)

    def save() -> tuple[Path | None, str | None]:
        """Runs in the worker thread; catches its own errors (a worker's error would be re-raised
        on the GUI thread as a traceback)."""
        from ..core.outputs import write_labels_data

        try:
            return write_labels_data(path, data, name=name), None
        except (ValueError, OSError) as exc:  # a bad path or array, a read-only or full disk
            return None, " ".join(str(exc).split()) or type(exc).__name__

    def done(outcome: tuple[Path | None, str | None]) -> None:
        written, why = outcome
        if written is not None:
            show_info(f"FocSAM: saved the labels '{name}' as an OME-Zarr label image: {written}")
        else:
            show_error(f"FocSAM: could not save the labels '{name}': {why}")
        if on_done is not None:
            on_done(written)

    worker = create_worker(save, _start_thread=False)
    worker.returned.connect(done)
    try:
        viewer.status = f"FocSAM: saving the labels '{name}' to {path} ..."
    except Exception:  # a viewer without a status line (tests, headless)
        pass
    worker.start()
    return worker


def ask_ome_zarr_path(parent: Any = None, start: str | Path = "") -> Path | None:
    """A save dialog for ``*.ome.zarr``; None when cancelled (``.ome.zarr`` is appended if missing)."""
    from qtpy.QtWidgets import QFileDialog

    name, _ = QFileDialog.getSaveFileName(parent, "Save labels as OME-Zarr", str(start),
                                          "OME-Zarr (*.ome.zarr)")
    if not name:
        return None
    return Path(name if name.lower().endswith(".ome.zarr") else name + ".ome.zarr")
