"""The image encoders as a table: recognised by a marker key, built, and identified."""

from __future__ import annotations

import pytest
import torch

from napari_focsam.core.models import CheckpointError
from napari_focsam.core.models._checkpoint import build_model
from napari_focsam.modeling.encoders import ENCODERS, encoder_from_state_dict, identify_encoder
from napari_focsam.modeling.focsam import FocSAM
from napari_focsam.modeling.image_encoder_vit import VIT_CONFIGS, ImageEncoderViT
from napari_focsam.modeling.tiny_vit import TinyViT, TinyViTConfig


@pytest.mark.parametrize("make, kind", [(lambda: TinyViT(TinyViTConfig()), "vit_t"),
                                        (lambda: ImageEncoderViT(VIT_CONFIGS["vit_b"]), "vit_b")])
def test_each_row_recognises_builds_and_identifies_its_encoder(make, kind):
    with torch.device("meta"):
        sd = FocSAM(make()).state_dict()
        enc = encoder_from_state_dict(sd)
    assert identify_encoder(enc) == kind
    assert sum(spec.marker in sd for spec in ENCODERS) == 1  # one row claims the weights


def test_weights_of_no_known_encoder_name_every_marker():
    assert encoder_from_state_dict({"image_encoder.something": torch.zeros(1)}) is None
    with pytest.raises(CheckpointError) as err:
        build_model({"image_encoder.something": torch.zeros(1)})
    assert all(spec.marker in str(err.value) for spec in ENCODERS)
    with pytest.raises(TypeError, match="ENCODERS"):
        identify_encoder(torch.nn.Linear(2, 2))
