"""The napari-free engine of napari-focsam: usable from a script, a notebook or another GUI.

The concept packages, bottom to top (each imports only those below it):

* :mod:`.images` -- image volumes, pyramids, encoder tiles, reading, contrast;
* :mod:`.models` -- checkpoints, the weights registry (:mod:`.models.weights`), device, loading;
* :mod:`.outputs` -- masks and labels images written losslessly (TIFF, PNG, NumPy, zarr, OME-Zarr);
* :mod:`.embeddings` -- the encoder hand-off and the embedding stores (memory, disk, tiles);
* :mod:`.prompting` -- clicks and boxes, the click loop, its rules, masks as regions;
* :mod:`.propagation`, :mod:`.automatic`, :mod:`.editing` -- objects through a stack, segment
  all, the widget's Qt-free rules;
* :mod:`.session` -- :class:`Session`, its objects, stacks in time;
* :mod:`.cluster` -- the same work on a dask.distributed cluster.

The names below are the API of the README and the user guide; every other public name lives
in its package's face (``from napari_focsam.core.prompting import Click``). Names load lazily
(SPEC 1, ``lazy_loader``): ``import napari_focsam.core`` imports neither torch nor a package.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=["automatic", "cluster", "editing", "embeddings", "images", "models", "outputs", "prompting",
                "propagation", "session"],
    submod_attrs={
        "automatic": ["SegmentAllParams", "segment_all"],
        "cluster": ["ImageSource", "connect", "segment_all_scan", "segment_all_tiled", "write_scan_labels"],
        "images": ["ImageVolume"],
        "models": ["load_model"],
        "outputs": ["write_labels_data"],
        "propagation": ["object_profile", "repropagate"],
        "session": ["SegmentedObject", "Session", "TimeLapse", "tracks_table", "write_tracks_csv"],
    },
)
