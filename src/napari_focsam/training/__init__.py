"""Napari-free training of FocSAM-T, a small FocSAM focus refiner on top of MobileSAM.

Modules: :mod:`.config` (dataclass configs from JSON / YAML), :mod:`.data` (splits, the float16
embedding cache, batch sampling), :mod:`.losses` (normalised focal loss, click loss),
:mod:`.simulate` (stage-2 click simulation), :mod:`.trainer` (AdamW loop, checkpoints, export)
and :mod:`.cli` (``napari-focsam train`` / ``train-cache``).  Nothing is imported eagerly.
"""
