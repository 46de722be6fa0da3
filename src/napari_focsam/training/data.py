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
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..evaluation.datasets import EvalDataset, natural_key, read_dataset, select_ids
from .config import SourceConfig, TrainingConfig

__all__ = [
    "CANVAS",
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


def source_dataset(src: SourceConfig, root: Path) -> EvalDataset:
    """The source's dataset restricted to its selected images (natural order)."""
    ds = read_dataset(src.dataset, root)
    keep = select_ids(ds.image_ids, src.images)
    return ds.subset(keep)


def source_image_ids(src: SourceConfig, root: Path) -> list[str]:
    return select_ids(read_dataset(src.dataset, root).image_ids, src.images)


def split_ids(cfg: TrainingConfig, root: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """``{"train": {(dataset, image_id)}, "val": {...}}`` of a config (canonical dataset names)."""
    root = cfg.data_root if root is None else Path(root)
    out: dict[str, set[tuple[str, str]]] = {"train": set(), "val": set()}
    for split, sources in (("train", cfg.data.train), ("val", cfg.data.val)):
        for src in sources:
            name = read_dataset(src.dataset, root).name
            out[split] |= {(name, i) for i in source_image_ids(src, root)}
    return out


def check_split(cfg: TrainingConfig, root: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """Raise ``ValueError`` when a validation image is selected for training."""
    ids = split_ids(cfg, root)
    both = sorted(ids["train"] & ids["val"])
    if both:
        shown = ", ".join(f"{d}/{i}" for d, i in both[:5])
        raise ValueError(f"{len(both)} validation image(s) are also selected for training: {shown}")
    return ids


def file_sha1(path: Path) -> str:
    """SHA-1 of a file's bytes (used to keep validation images out of training, whatever their name)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()
