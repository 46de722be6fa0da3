"""napari-focsam: click-based FocSAM segmentation for napari.

The napari-free core lives in :mod:`napari_focsam.modeling` (the networks),
:mod:`napari_focsam.core` (checkpoints, weights, predictor, embedding cache,
interactive sessions, volume propagation), :mod:`napari_focsam.evaluation` and
:mod:`napari_focsam.training`. Only ``_qt`` (the dock widget) and ``_sample_data`` import napari.
"""

__version__ = "0.1.0"
