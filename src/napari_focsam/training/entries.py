# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""The entry of a training-only dataset (an image that is not a file of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..evaluation.datasets import EvalObject

__all__ = ["SliceEntry"]


@dataclass
class SliceEntry:
    """One image of a training-only dataset: the fields of an evaluation entry plus a content
    ``digest`` (stack slices share a file and drawn images have none, so a file's hash cannot
    tell them apart)."""

    image_id: str
    image_path: Path
    load_objects: Callable[[], list[EvalObject]]
    load_image: Callable[[], np.ndarray]
    digest: str
