# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Training data: image selection and splits, the float16 embedding cache, batch sampling.

Splits
------
Sources name a dataset of :func:`napari_focsam.evaluation.datasets.read_dataset` and a
selection of its image ids (``"all"``, ``"first:N"``, ``"last:N"``, ``"range:A:B"`` or a list),
taken from the ids in **natural order** (:func:`natural_key`).  :func:`check_split` refuses a
config whose training and validation selections share an ``(dataset, image id)`` pair, and
the cache builder also refuses training images whose *file content* equals a validation
image (SHA-1 of the bytes), whatever the dataset.

Training-only datasets
----------------------
Besides the evaluation datasets, sources may name ``cells3d_slices``: 2D slices cut from
``micro/cells3d/cells3d_nuclei.tif`` and its 3D instance labels ``cells3d_nuclei_label.tif``
(every ``CELLS3D_STEP``-th z slice, ids ``z00``, ``z03``...; each 3D label's cross-section of at
least ``CELLS3D_MIN_AREA`` pixels is one object; the image is scaled to uint8 with the whole
volume's 0.5..99.5 percentiles, as a viewer shows the stack).  Its slices share one file, so
each entry carries its own content ``digest`` (:func:`entry_digest`).

``synthetic_cells`` are drawn, not read (:mod:`~napari_focsam.training.synthetic`): packed cells
in EM, phase-contrast rods, DIC and cytoplasm-stained cells, for the modalities that no
licence-clean set here shows; ``synthetic_organelles`` are drawn mitochondria in EM and
``synthetic_neuropil`` drawn nervous tissue in EM (small and large cell profiles together),
``synthetic_mitoses`` drawn fluorescent nuclei, some in division.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..core.images import read_image, to_rgb_uint8
from ..evaluation.datasets import EvalDataset, EvalObject, canonical_name, natural_key, read_dataset, select_ids
from .config import SourceConfig, TrainingConfig
from .entries import SliceEntry
from .synthetic import synthetic_cells, synthetic_mitoses, synthetic_neuropil, synthetic_organelles

__all__ = [
    "CANVAS",
    "CELLS3D_MIN_AREA",
    "CELLS3D_STEP",
    "RESEARCH_ONLY",
    "SliceEntry",
    "cells3d_slices",
    "entry_digest",
    "read_training_dataset",
    "training_dataset_name",
    "check_licences",
    "check_split",
    "file_sha1",
    "natural_key",
    "select_ids",
    "source_dataset",
    "source_image_ids",
    "split_ids",
]

#: Side of the square canvas the encoder sees; masks and losses live on it.
CANVAS = 1024

#: cells3d_slices: every CELLS3D_STEP-th z slice; objects need this many pixels in the slice
CELLS3D_STEP = 3
CELLS3D_MIN_AREA = 150

#: datasets whose licence allows research use only (``../shared/data/README.md``): the VNC ssTEM
#: stack is CC BY-NC-SA 3.0. A model trained on them is a research model, never a shipped one:
#: a config names them only with ``data.research_only: true``, and its export says so.
RESEARCH_ONLY = {"vnc_neurites": "CC BY-NC-SA 3.0", "vnc_mitochondria": "CC BY-NC-SA 3.0"}

#: The drawn training sets (:mod:`~napari_focsam.training.synthetic`), by name.
_DRAWN = {"synthetic_cells": synthetic_cells, "synthetic_organelles": synthetic_organelles,
          "synthetic_neuropil": synthetic_neuropil, "synthetic_mitoses": synthetic_mitoses}
_TRAINING_ONLY = {"cells3d_slices": "micro/cells3d/cells3d_nuclei.tif with cells3d_nuclei_label.tif",
                  **dict.fromkeys(_DRAWN, "drawn by training/synthetic.py (no file)")}


def entry_digest(entry) -> str:
    """Content key of a dataset entry: its own ``digest`` if it has one, else the file's SHA-1."""
    digest = getattr(entry, "digest", None)
    return digest if digest else file_sha1(entry.image_path)


def training_dataset_name(name: str) -> str:
    """Canonical name of an evaluation dataset or of a training-only one (``cells3d_slices``)."""
    key = name.strip().lower().replace("-", "_")
    return key if key in _TRAINING_ONLY else canonical_name(name)


def cells3d_slices(root: str | Path, step: int = CELLS3D_STEP, min_area: int = CELLS3D_MIN_AREA) -> EvalDataset:
    """The ``cells3d_slices`` training dataset (see the module docstring).

    Parameters
    ----------
    root : str or Path
        The data root (``.../data``), its ``micro`` folder or the ``cells3d`` folder itself.
    step : int
        Keep z slices ``0, step, 2 * step, ...``.
    min_area : int
        Smallest cross-section (pixels of the slice) that counts as an object.

    Returns
    -------
    EvalDataset
        One entry per kept slice that has an object; images (256, 256, 3) uint8.
    """
    root = Path(root)
    folder = next((d for d in (root, root / "cells3d", root / "micro" / "cells3d")
                   if (d / "cells3d_nuclei.tif").is_file() and (d / "cells3d_nuclei_label.tif").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"dataset 'cells3d_slices' not found under {str(root)!r}: expected "
                                f"{_TRAINING_ONLY['cells3d_slices']}")
    img_path, lab_path = folder / "cells3d_nuclei.tif", folder / "cells3d_nuclei_label.tif"
    volume = np.asarray(read_image(img_path))
    labels = np.asarray(read_image(lab_path))
    if volume.ndim != 3 or labels.shape != volume.shape:
        raise ValueError(f"cells3d_slices: expected a (Z, Y, X) volume and labels of the same shape, got "
                         f"{volume.shape} and {labels.shape}")
    limits = tuple(float(v) for v in np.percentile(volume, (0.5, 99.5)))
    entries = []
    for z in range(0, volume.shape[0], max(int(step), 1)):
        lab = labels[z]
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        keep = [int(i) for i, c in zip(ids, counts) if c >= min_area]
        if not keep:
            continue
        image_id = f"z{z:02d}"

        def objects(lab=lab, keep=keep, image_id=image_id) -> list[EvalObject]:
            return [EvalObject(lab == i, None, f"{image_id}#{i}") for i in keep]

        def image(z=z) -> np.ndarray:
            return to_rgb_uint8(volume[z], limits)

        digest = hashlib.sha1(volume[z].tobytes() + lab.tobytes()).hexdigest()
        entries.append(SliceEntry(image_id, img_path, objects, image, digest))
    return EvalDataset("cells3d_slices", folder, entries)


def read_training_dataset(name: str, root: str | Path) -> EvalDataset:
    """An evaluation dataset (:func:`~napari_focsam.evaluation.datasets.read_dataset`) or a
    training-only one (``cells3d_slices`` or a drawn set of :mod:`~napari_focsam.training.synthetic`)."""
    key = training_dataset_name(name)
    if key == "cells3d_slices":
        return cells3d_slices(root)
    if key in _DRAWN:
        return _DRAWN[key]()
    return read_dataset(name, root)


def source_dataset(src: SourceConfig, root: Path) -> EvalDataset:
    """The source's dataset restricted to its selected images (natural order)."""
    ds = read_training_dataset(src.dataset, root)
    keep = select_ids(ds.image_ids, src.images)
    return ds.subset(keep)


def source_image_ids(src: SourceConfig, root: Path) -> list[str]:
    return select_ids(read_training_dataset(src.dataset, root).image_ids, src.images)


def split_ids(cfg: TrainingConfig, root: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """``{"train": {(dataset, image_id)}, "val": {...}}`` of a config (canonical dataset names)."""
    root = cfg.data_root if root is None else Path(root)
    out: dict[str, set[tuple[str, str]]] = {"train": set(), "val": set()}
    for split, sources in (("train", cfg.data.train), ("val", cfg.data.val)):
        for src in sources:
            name = training_dataset_name(src.dataset)
            out[split] |= {(name, i) for i in source_image_ids(src, root)}
    return out


def check_licences(cfg: TrainingConfig) -> None:
    """Raise ``ValueError`` when a research-only dataset (:data:`RESEARCH_ONLY`) would train a
    model not marked ``data.research_only``."""
    restricted = sorted({training_dataset_name(s.dataset) for s in cfg.data.train} & set(RESEARCH_ONLY))
    if restricted and not cfg.data.research_only:
        names = ", ".join(f"{d} ({RESEARCH_ONLY[d]})" for d in restricted)
        raise ValueError(f"training data licensed for research only: {names}. A model trained on it may not ship "
                         "with the package; set data.research_only: true to train a research model anyway")


def check_split(cfg: TrainingConfig, root: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """Raise ``ValueError`` when a validation image is selected for training (and as
    :func:`check_licences`)."""
    check_licences(cfg)
    ids = split_ids(cfg, root)
    both = sorted(ids["train"] & ids["val"])
    if both:
        shown = ", ".join(f"{d}/{i}" for d, i in both[:5])
        raise ValueError(f"{len(both)} validation image(s) are also selected for training: {shown}")
    return ids


def file_sha1(path: Path) -> str:
    """SHA-1 of a file's bytes (used to keep validation images out of training, whatever their name)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()
