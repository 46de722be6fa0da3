"""FocSAM-T micro: the microscopy model (MobileSAM encoder, fine-tuned decoder + refiner) ships
with the package, is hash-checked, shares its embeddings with vit_t / focsam_t and carries its
own thresholds (its nuclei test is ``test_shipped_focsam_t_refines_real_nuclei``)."""

from __future__ import annotations

import torch

from napari_focsam.core.models import weights as W


def test_micro_entry_ships_with_the_package_and_is_hash_checked():
    entry = W.find_weights("focsam_t_micro")
    assert entry.base == "vit_t" and entry.model_type == "focsam_vit_t"
    assert [type(s).__name__ for s in entry.sources] == ["PackageDataSource"]
    assert entry.sha256 and len(entry.sha256) == 64 and entry.size > 8_000_000
    path = W.resolve_weights("focsam_t_micro")  # verifies size and SHA-256
    assert W.check_checkpoint(entry, path) is None  # a refiner and its decoder, nothing else


def test_the_shipped_micro_model_was_trained_on_no_research_only_data():
    """Its metadata names its training sets: none licensed for research only (the VNC ssTEM
    stack, CC BY-NC-SA), the drawn cells among them."""
    from napari_focsam.training.data import RESEARCH_ONLY

    meta = torch.load(W.resolve_weights("focsam_t_micro"), map_location="cpu", weights_only=True)["napari_focsam"]
    assert meta["research_only"] is False
    assert meta["training_data"] and not set(meta["training_data"]) & set(RESEARCH_ONLY)
    assert {"synthetic_cells", "synthetic_organelles", "synthetic_neuropil"} <= set(meta["training_data"])


def test_micro_model_replaces_the_decoder_and_keeps_the_encoder(mobile_sam):
    from napari_focsam.core.embeddings import model_id
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    micro = load_model("focsam_t_micro", "cpu", refine_precision="fp32")
    plain = load_model("vit_t", "cpu")
    assert micro is not plain and micro.has_refiner and not plain.has_refiner
    for k, v in plain.image_encoder.state_dict().items():
        assert torch.equal(micro.image_encoder.state_dict()[k], v)
    changed = [k for k, v in plain.mask_decoder.state_dict().items()
               if not torch.allclose(micro.mask_decoder.state_dict()[k], v)]
    assert len(changed) > 10  # the fine-tuned decoder, not MobileSAM's
    # vit_t is untouched by loading the micro model (no module shared between the two)
    for k, v in mobile_sam.mask_decoder.state_dict().items():
        assert torch.equal(plain.mask_decoder.state_dict()[k], v)
    assert model_id(FocSAMPredictor(micro)) == model_id(FocSAMPredictor(plain))  # one embedding cache


def test_micro_model_carries_its_calibrated_thresholds():
    """Its IoU head is trained on real IoUs: segment-all and the propagation read its own
    thresholds from the file; focsam_t and vit_t keep SAM's (none in their files)."""
    from napari_focsam.core.automatic import SegmentAllParams
    from napari_focsam.core.models import load_model

    micro = load_model("focsam_t_micro", "cpu")
    assert micro.segment_all_thresholds == {"pred_iou_thresh": 0.6, "stability_thresh": 0.7}
    assert micro.propagation_thresholds == {"min_pred_iou": 0.55}
    assert SegmentAllParams().for_model(micro).stability_thresh == 0.7
    photo = load_model("focsam_t", "cpu")
    assert photo.segment_all_thresholds is None and photo.propagation_thresholds is None
