"""Napari-free training of FocSAM-T, a small FocSAM focus refiner on top of MobileSAM.

Modules: :mod:`.config` (dataclass configs from JSON / YAML), :mod:`.data` (image selection and
train/validation splits), :mod:`.augment` (geometric augmentation), :mod:`.cache` (the float16
training cache), :mod:`.sampler` (deterministic batches), :mod:`.losses` (normalised focal loss,
click loss), :mod:`.simulate` (stage-2 click simulation), :mod:`.schedule` (warm-up + poly
learning rate), :mod:`.rng` (seeding, saved RNG states), :mod:`.export` (refiner construction and
float16 export), :mod:`.validate` (the fast 20-click monitor) and :mod:`.trainer` (the AdamW loop
and its checkpoints). The ``train`` / ``train-cache`` commands live in :mod:`napari_focsam.cli`.
Nothing is imported eagerly.
"""
