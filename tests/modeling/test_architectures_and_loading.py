"""Model core: architectures, strict checkpoint loading, detection, the per-object loop."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

from conftest import make_tiny_focsam
from napari_focsam.core.embeddings import input_size_for, preprocess
from napari_focsam.core.models import CheckpointError, load_checkpoint, save_checkpoint
from napari_focsam.core.prompting import Click, FocSAMPredictor, InteractiveObject
from napari_focsam.modeling.focsam import FocSAM
from napari_focsam.modeling.focus_refiner import FocusRefiner
from napari_focsam.modeling.image_encoder_vit import VIT_CONFIGS, ImageEncoderViT, ViTConfig, vit_config_from_state_dict
from napari_focsam.modeling.tiny_vit import TinyViT

SMALL_VIT = ViTConfig(embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(1, 3))


def _sam_state_dict(encoder, seed=0):
    torch.manual_seed(seed)
    model = FocSAM(encoder)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model, model.state_dict()


def _to_mmengine(sd):
    """Rename our keys to the official FocSAM (mmseg) names, design §4.2-4.3."""
    out = {}
    for k, v in sd.items():
        k = k.replace("image_encoder.", "backbone.", 1) if k.startswith("image_encoder.") else k
        k = k.replace("prompt_encoder.pe_layer.", "neck.pos_embed_layer.", 1)
        k = k.replace("prompt_encoder.point_embeddings.", "neck.point_embeds.", 1)
        k = k.replace("prompt_encoder.", "neck.", 1) if k.startswith("prompt_encoder.") else k
        k = k.replace("mask_decoder.", "decode_head.", 1) if k.startswith("mask_decoder.") else k
        k = k.replace("focus_refiner.", "refine_head.", 1) if k.startswith("focus_refiner.") else k
        out[k] = v
    return out


def test_official_vit_configs_are_detected_from_shapes():
    for name, cfg in VIT_CONFIGS.items():
        with torch.device("meta"):
            enc = ImageEncoderViT(cfg)
        sd = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
        assert vit_config_from_state_dict(sd) == cfg, name


def test_vit_b_key_names_and_shapes_match_official():
    with torch.device("meta"):
        sd = FocSAM(ImageEncoderViT(VIT_CONFIGS["vit_b"])).state_dict()
    assert sd["image_encoder.pos_embed"].shape == (1, 64, 64, 768)
    assert sd["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)
    assert sd["image_encoder.blocks.2.attn.rel_pos_h"].shape == (127, 64)
    assert sd["image_encoder.neck.0.weight"].shape == (256, 768, 1, 1)
    assert sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape == (2, 128)
    assert sd["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape == (128, 256)
    assert sd["mask_decoder.iou_prediction_head.layers.2.weight"].shape == (4, 256)
    assert sd["mask_decoder.mask_tokens.weight"].shape == (4, 256)


def test_refiner_has_official_parameter_count():
    refiner = FocusRefiner()
    assert sum(p.numel() for p in refiner.parameters()) == 25_396_058


def test_sam_layout_roundtrip_is_strict_and_exact(tmp_path):
    model, sd = _sam_state_dict(ImageEncoderViT(SMALL_VIT))
    path = tmp_path / "sam_small.pth"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert loaded.model_type == "vit_custom"
    assert loaded.image_encoder.config == SMALL_VIT
    assert not loaded.has_refiner
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_mobile_sam_layout_is_detected(tmp_path):
    model, sd = _sam_state_dict(TinyViT())
    path = tmp_path / "mobile_sam.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert loaded.model_type == "vit_t"
    assert isinstance(loaded.image_encoder, TinyViT)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        assert torch.allclose(loaded.encode(x), model.eval().encode(x), atol=1e-5)


def test_official_focsam_mmengine_checkpoint_loads(tmp_path):
    """mmengine wrapper with foreign classes (message hub), official key names, real refiner shapes."""
    torch.manual_seed(0)
    model = FocSAM(ImageEncoderViT(SMALL_VIT), focus_refiner=FocusRefiner())
    sd = _to_mmengine(model.state_dict())
    assert "neck.pos_embed_layer.positional_encoding_gaussian_matrix" in sd
    assert "refine_head.blocks.11.cls2img.conv2.dcn_offset.weight" in sd
    assert sd["refine_head.blocks.0.cls2img.gamma1"].shape == (1, 256, 1, 1)

    names = ("mmengine", "mmengine.logging", "mmengine.logging.message_hub")
    fakes = {name: types.ModuleType(name) for name in names}

    class MessageHub:  # stands for a class of a package we do not install
        def __init__(self):
            self.log = {"loss": [1.0, 0.5]}

    MessageHub.__module__ = "mmengine.logging.message_hub"
    MessageHub.__qualname__ = "MessageHub"
    fakes["mmengine.logging.message_hub"].MessageHub = MessageHub
    sys.modules.update(fakes)
    try:
        path = tmp_path / "iter_160000.pth"
        torch.save({"meta": {"iter": 160000}, "state_dict": sd, "message_hub": MessageHub()}, path)
    finally:
        for name in names:
            del sys.modules[name]
    loaded = load_checkpoint(path)
    assert loaded.model_type == "focsam_vit_custom"
    assert loaded.channel_order == "bgr"  # the official weights were trained on BGR input (design §1.2)
    assert len(loaded.focus_refiner.blocks) == 12
    assert torch.equal(loaded.state_dict()["focus_refiner.embed_proj.weight"], sd["refine_head.embed_proj.weight"])


def test_truncated_file_names_the_file(tmp_path):
    _, sd = _sam_state_dict(ImageEncoderViT(SMALL_VIT))
    path = tmp_path / "half.pth"
    torch.save(sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half.pth.*truncated"):
        load_checkpoint(path)


def test_missing_unexpected_and_misshaped_keys_are_reported(tmp_path):
    _, sd = _sam_state_dict(ImageEncoderViT(SMALL_VIT))
    bad = dict(sd)
    del bad["mask_decoder.iou_token.weight"]
    bad["mask_decoder.extra.weight"] = torch.zeros(3)
    bad["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "bad.pth" in msg
    assert "missing 1 keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected 1 keys: mask_decoder.extra.weight" in msg
    assert "prompt_encoder.no_mask_embed.weight: file (1, 128) vs model (1, 256)" in msg


def test_unknown_and_missing_files(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="resnet.pth is not a SAM, MobileSAM or FocSAM checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pth"):
        load_checkpoint(tmp_path / "text.pth")


def test_refiner_only_file_combines_with_base(tmp_path):
    torch.manual_seed(1)
    base, sd = _sam_state_dict(ImageEncoderViT(SMALL_VIT))
    torch.save(sd, tmp_path / "base.pth")
    full = FocSAM(ImageEncoderViT(SMALL_VIT), focus_refiner=FocusRefiner(depth=2, num_heads=4, mlp_ratio=2.0))
    save_checkpoint(full, tmp_path / "refiner.pt", only_refiner=True,
                    refiner_config={"depth": 2, "num_heads": 4, "mlp_ratio": 2.0})
    loaded = load_checkpoint(tmp_path / "base.pth", refiner=tmp_path / "refiner.pt")
    assert loaded.has_refiner and len(loaded.focus_refiner.blocks) == 2
    with pytest.raises(CheckpointError, match="not a refiner file"):
        load_checkpoint(tmp_path / "base.pth", refiner=tmp_path / "base.pth")


def test_preprocess_sizes_and_padding():
    img = np.full((300, 500, 3), 255, np.uint8)
    x, (h, w) = preprocess(img)
    assert (h, w) == input_size_for((300, 500)) == (614, 1024)
    assert x.shape == (1, 3, 1024, 1024)
    assert torch.all(x[..., h:, :] == 0) and torch.all(x[..., :h, :w] > 2)
    xb, _ = preprocess(np.dstack([np.zeros((8, 8)), np.zeros((8, 8)), np.full((8, 8), 255)]).astype(np.uint8), "bgr")
    # blue is channel 0 in BGR order, normalised with the red statistics (design §1.2)
    assert xb[0, 0, 0, 0] == pytest.approx((255 - 123.675) / 58.395, rel=1e-5)


@pytest.mark.parametrize("refine_click", [1, 2])
def test_object_loop_refines_once_at_its_refine_click(refine_click):
    torch.manual_seed(0)
    model = make_tiny_focsam(refiner_depth=2)
    calls = []
    original = model.focus_refiner.forward
    model.focus_refiner.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    pred = FocSAMPredictor(model, refine_click=refine_click)
    emb = pred.embed(np.random.default_rng(0).integers(0, 255, (120, 200), dtype=np.uint8))
    obj = InteractiveObject(pred, emb)
    m1 = obj.add_click(60, 100)
    assert m1.shape == (120, 200) and (obj.refined is None) == (refine_click == 2)
    r2 = obj.add(Click(10, 10, False))
    assert len(calls) == 1 and obj.refined is not None and (r2.refine_seconds > 0) == (refine_click == 2)
    obj.add_click(50, 50)
    obj.add_click(70, 150, False)
    assert len(calls) == 1  # later clicks reuse the refined embedding
    obj.undo()
    obj.undo()
    obj.undo()
    assert (obj.refined is None) == (refine_click == 2) and len(obj.clicks) == 1
    assert np.array_equal(obj.mask, m1)
    obj.add_click(10, 10, False)
    assert len(calls) == refine_click  # refined again only when the refine click was replaced
    obj.undo()
    obj.undo()
    obj.add_click(60, 100)
    assert len(calls) == 2 and np.array_equal(obj.mask, m1)  # the same click, the same mask
    with pytest.raises(ValueError, match="outside the image"):
        obj.add_click(120, 5)


def test_no_refine_runs_plain_loop():
    model = make_tiny_focsam(refiner_depth=2)
    pred = FocSAMPredictor(model, refine=False)
    emb = pred.embed(np.zeros((64, 64), np.uint8))
    obj = InteractiveObject(pred, emb)
    obj.add_click(5, 5)
    obj.add_click(30, 30)
    assert obj.refined is None


@pytest.mark.slow
def test_mobile_sam_matches_reference_figures(mobile_sam):
    """Embedding and decoder logits agree with the reference MobileSAM within 1e-4 (tests/data/README.md)."""
    import skimage.data

    from pathlib import Path

    g = np.load(Path(__file__).parents[1] / "data" / "mobilesam_golden.npz")
    img = skimage.data.astronaut().repeat(2, axis=0).repeat(2, axis=1)
    with torch.inference_mode():
        x, _ = preprocess(img, "rgb")
        emb = mobile_sam.encode(x)
        assert np.abs(emb[0, :, ::8, ::8].numpy() - g["embedding_rgb_sub"]).max() < 1e-4
        xb, _ = preprocess(img, "bgr")
        assert np.abs(mobile_sam.encode(xb)[0, :, ::8, ::8].numpy() - g["embedding_bgr_sub"]).max() < 1e-4
        pts, lab = torch.tensor([[[520.0, 300.0]]]), torch.tensor([[1]])
        a = mobile_sam.decode(emb, pts, lab)
        assert np.abs(a.logits[0, 0, ::8, ::8].numpy() - g["a_single_logits_sub"]).max() < 1e-4
        assert np.abs(a.iou.numpy() - g["a_single_iou"]).max() < 1e-4
        assert np.abs(a.token[:, 0].numpy() - g["a_token0"]).max() < 1e-4
        am = mobile_sam.decode(emb, pts, lab, multimask_output=True)
        assert np.abs(am.logits[0, :, ::8, ::8].numpy() - g["a_multi_logits_sub"]).max() < 1e-4
        assert np.abs(am.iou.numpy() - g["a_multi_iou"]).max() < 1e-4
        b = mobile_sam.decode(emb, torch.from_numpy(g["b_points"])[None].float(),
                              torch.from_numpy(g["b_labels"])[None].long(), a.logits)
        assert np.abs(b.logits[0, 0, ::8, ::8].numpy() - g["b_single_logits_sub"]).max() < 1e-4
        assert np.abs(b.token[:, 0].numpy() - g["b_token0"]).max() < 1e-4


@pytest.mark.slow
def test_one_click_segments_a_real_nucleus(mobile_sam):
    """A click in the middle of a well separated nucleus (cells3d sample) gives IoU >= 0.85."""
    from napari_focsam._demo import pick_separated_objects
    from napari_focsam._sample_data import load_nuclei
    from napari_focsam.core.propagation import interior_point
    from napari_focsam.evaluation.metrics import iou

    image, gt = load_nuclei("2d")
    labels = pick_separated_objects(gt, 3)
    assert labels, "the sample must hold well separated nuclei"
    pred = FocSAMPredictor(mobile_sam)
    emb = pred.embed(image)
    for label in labels:
        obj = InteractiveObject(pred, emb)
        mask = obj.add_click(*interior_point(gt == label))
        assert iou(gt == label, mask) >= 0.85, label


def test_patch_conv_transpose_matches_torch_conv_transpose():
    from napari_focsam.modeling.mask_decoder import PatchConvTranspose2d

    torch.manual_seed(0)
    ours = PatchConvTranspose2d(16, 8)
    ref = torch.nn.ConvTranspose2d(16, 8, kernel_size=2, stride=2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_fused_mask_upscaling_matches_the_layered_definition(multimask):
    """The patch-order upscaling equals SAM's ConvT -> LayerNorm2d -> GELU -> ConvT -> GELU -> dot."""
    from napari_focsam.modeling.common import LayerNorm2d
    from napari_focsam.modeling.mask_decoder import MaskDecoder

    torch.manual_seed(0)
    dec = MaskDecoder().eval()
    with torch.no_grad():  # non-trivial norm parameters
        dec.output_upscaling[1].weight.normal_()
        dec.output_upscaling[1].bias.normal_()
    up1, norm, _, up2, _ = dec.output_upscaling
    ref1 = torch.nn.ConvTranspose2d(256, 64, 2, 2)
    ref1.load_state_dict(up1.state_dict())
    ref2 = torch.nn.ConvTranspose2d(64, 32, 2, 2)
    ref2.load_state_dict(up2.state_dict())
    ref_norm = LayerNorm2d(64)
    ref_norm.load_state_dict(norm.state_dict())
    B, h, w, M = 2, 6, 5, 3 if multimask else 1
    src = torch.randn(B, h * w, 256)
    hyper = torch.randn(B, M, 32)
    with torch.inference_mode():
        got = dec.upscale_masks(src, hyper, (h, w))
        img = src.transpose(1, 2).reshape(B, 256, h, w)
        up = torch.nn.functional.gelu(ref2(torch.nn.functional.gelu(ref_norm(ref1(img)))))
        want = (hyper @ up.flatten(2)).view(B, M, 4 * h, 4 * w)
    assert got.shape == (B, M, 4 * h, 4 * w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_malloc_tuning_applies_once_and_can_be_switched_off():
    import subprocess

    code = "from napari_focsam.core.models._allocator import tune_malloc; print(tune_malloc(), tune_malloc())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    env = {**os.environ, "NAPARI_FOCSAM_MALLOC_TUNING": "0"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    if sys.platform.startswith("linux"):
        assert on.stdout.split() == ["True", "True"]  # glibc accepts the thresholds
    assert off.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("n_tokens", [7, 15, 40])
def test_folded_attention_equals_projected_attention(n_tokens):
    """Both directions of the decoder's token<->image attention, folded or not, match the
    textbook projections (the fold is used only while tokens x heads < inner dim)."""
    from napari_focsam.modeling.transformer import TokenAttention

    torch.manual_seed(0)
    att = TokenAttention(256, 8, downsample_rate=2).eval()
    tokens, image = torch.randn(2, n_tokens, 256), torch.randn(2, 4096, 256)
    image_k = image + torch.randn(1, 4096, 256)
    with torch.inference_mode():
        for q, k, v in ((tokens, image_k, image), (image_k, tokens, tokens)):
            torch.testing.assert_close(att(q, k, v), att._projected(q, k, v), rtol=1e-4, atol=2e-5)
            residual = torch.randn_like(q)  # summed inside the product where the form allows
            torch.testing.assert_close(att(q, k, v, residual=residual), residual + att._projected(q, k, v),
                                       rtol=1e-4, atol=4e-5)
    assert 7 * 8 < 128 <= 40 * 8  # 7 and 15 tokens take the folded forms, 40 the textbook one


def test_image_tokens_given_once_for_many_prompts_equal_per_prompt_copies():
    """Segment all decodes many point prompts on one image: the image side (1, N, C) is given
    once and must give what B copies of it give, in both attention directions and through
    the whole decoder (whose cached image tokens then hold one copy, not B)."""
    from napari_focsam.modeling.mask_decoder import MaskDecoder
    from napari_focsam.modeling.prompt_encoder import PromptEncoder
    from napari_focsam.modeling.transformer import TokenAttention

    torch.manual_seed(0)
    att = TokenAttention(256, 8, downsample_rate=2).eval()
    tokens, image = torch.randn(5, 7, 256), torch.randn(1, 4096, 256)
    copies = image.expand(5, -1, -1).contiguous()
    dec, pe = MaskDecoder().eval(), PromptEncoder(256, (64, 64), (1024, 1024), 16)
    with torch.inference_mode():
        torch.testing.assert_close(att(tokens, image, image), att(tokens, copies, copies), rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(att(image, tokens, tokens, residual=image),
                                   att(copies, tokens, tokens, residual=copies), rtol=1e-4, atol=4e-5)
        feats = torch.randn(1, 256, 64, 64)
        sparse, dense = pe((torch.rand(5, 1, 2) * 1024, torch.ones(5, 1, dtype=torch.int64)), None)
        shared = dec(feats, pe.get_dense_pe(), sparse, dense, True)
        assert dec._tokens_cache[1][0].shape == (1, 4096, 256)
        own = dec(feats.expand(5, -1, -1, -1).contiguous(), pe.get_dense_pe(), sparse, dense.contiguous(), True)
    torch.testing.assert_close(shared.logits, own.logits, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(shared.iou, own.iou, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["focsam_t", "focsam_t_micro"])
def test_shipped_focsam_t_refines_real_nuclei(mobile_sam, name):
    """The packaged FocSAM-T models (registry names, hash-checked; focsam_t_micro with its own
    decoder, trained without these nuclei) load on vit_t, refine at the 1st click and keep real
    nuclei segmented (IoU >= 0.85 after one and after two protocol clicks)."""
    from napari_focsam._demo import pick_separated_objects
    from napari_focsam._sample_data import load_nuclei
    from napari_focsam.core.models import load_model
    from napari_focsam.core.propagation import interior_point
    from napari_focsam.evaluation.clicker import next_click
    from napari_focsam.evaluation.metrics import iou

    model = load_model(name, "cpu", refine_precision="fp32")
    assert model.has_refiner and len(model.focus_refiner.blocks) == 2
    image, gt = load_nuclei("2d")
    pred = FocSAMPredictor(model)
    emb = pred.embed(image)
    for label in pick_separated_objects(gt, 3):
        obj = InteractiveObject(pred, emb)
        target = gt == label
        res = obj.add(Click(*interior_point(target), True))
        assert res.refine_seconds > 0 and obj.refined is not None  # the focus refiner ran
        assert iou(target, res.mask) >= 0.85, label
        res = obj.add(next_click(target, res.mask, clicked=obj.clicks))
        assert res.refine_seconds == 0 and iou(target, obj.mask) >= 0.85, label


def test_decoder_reuses_image_tokens_only_for_the_same_image():
    """Without a mask prompt the decoder keeps the image-side tokens of the last embedding;
    another embedding, an in-place change or a mask prompt must not be served from it."""
    torch.manual_seed(0)
    model = make_tiny_focsam()
    emb, other = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
    pts, lab = torch.tensor([[[100.0, 200.0]]]), torch.tensor([[1]])

    def fresh(e, mask=None):
        model.mask_decoder._tokens_cache = None
        return model.decode(e, pts, lab, mask).logits

    with torch.no_grad():
        a = model.decode(emb, pts, lab).logits
        assert model.mask_decoder._tokens_cache is not None
        assert torch.equal(model.decode(emb, pts, lab).logits, a)  # served from the cache
        torch.testing.assert_close(model.decode(other, pts, lab).logits, fresh(other), rtol=0, atol=0)
        emb.mul_(2.0)  # same tensor, new values
        torch.testing.assert_close(model.decode(emb, pts, lab).logits, fresh(emb), rtol=0, atol=0)
        mask = torch.randn(1, 1, 256, 256)
        torch.testing.assert_close(model.decode(emb, pts, lab, mask).logits, fresh(emb, mask), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(1030, 1349), (321, 481), (1024, 1024), (100, 3000)])
def test_region_mask_resize_equals_logits_to_mask(size):
    """The region-only full-resolution mask equals SAM's post-processing (resize to the 1024
    canvas, crop, resize to the image, threshold), for a small object and a cell filling about
    a third of the image (region path: only the outline's pixels computed), noise (plain
    path), one reaching the canvas's padding and no object."""
    import torch.nn.functional as F

    from napari_focsam.core.prompting import logits_to_mask
    from napari_focsam.modeling.mask_resize import logits_to_mask_roi, sign_fill, support_table

    def sam_postprocess(low, input_size):
        x = F.interpolate(low[None, None], size=(1024, 1024), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        return (F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    blob = 8 - ((yy - 20) ** 2 + (xx - 30) ** 2).sqrt() / 2 + 0.3 * torch.randn(256, 256, generator=g)
    cell = 3 - ((yy - 110) ** 2 + (xx - 120) ** 2).sqrt() / 25 + 0.05 * torch.randn(256, 256, generator=g)
    cases = {"small": blob, "cell": cell, "large": torch.randn(256, 256, generator=g), "none": -blob.abs() - 1,
             "to the padding": torch.full((256, 256), 2.0) + 0.5 * torch.randn(256, 256, generator=g)}
    input_size = input_size_for(size)
    for name, low in cases.items():
        want = sam_postprocess(low, input_size)
        got = logits_to_mask_roi(low[None, None], input_size, size)
        assert got.shape == size and got.dtype == bool
        assert np.array_equal(got, want), name
        assert np.array_equal(logits_to_mask(low[None, None], input_size, size), want), name
    # the cell through the outline-only computation itself, over the whole image and a part of it
    ty, tx = (support_table(256, 1024, i, o) for i, o in zip(input_size, size))
    H, W = size
    np.testing.assert_array_equal(sign_fill(cell.numpy(), ty, tx, 0, H, 0, W), sam_postprocess(cell, input_size))
    part = sign_fill(cell.numpy(), ty, tx, H // 4, H // 2, W // 3, W // 2)
    np.testing.assert_array_equal(part, sam_postprocess(cell, input_size)[H // 4:H // 2, W // 3:W // 2])
    assert sign_fill(torch.randn(256, 256, generator=g).numpy(), ty, tx, 0, H, 0, W, max_outline=H * W // 50) is None


def test_decode_pair_is_two_decodes_in_one_call():
    """The steady rule's two passes (refined and original embedding, same prompts) in one
    batched decoder call: the same logits, IoUs and tokens as two decode calls (float rounding)."""
    torch.manual_seed(0)
    model = FocSAM(torch.nn.Identity()).eval()
    a, b = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
    pts, lab = torch.tensor([[[300.0, 200.0], [500.0, 700.0]]]), torch.tensor([[1, 0]])
    with torch.inference_mode():
        for mask in (None, torch.randn(1, 1, 256, 256)):
            pair = model.decode_pair(a, b, pts, lab, mask)
            for got, emb in zip(pair, (a, b)):
                want = model.decode(emb, pts, lab, mask)
                assert got.logits.shape == (1, 1, 256, 256)
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(300, 500), (64, 64)])
def test_logit_at_is_the_value_the_mask_thresholds(size):
    """``logit_at`` reads one pixel of the resized logits: positive exactly where the mask is set,
    and equal to the plainly resized plane."""
    import torch.nn.functional as F

    from napari_focsam.modeling.mask_resize import logit_at, logits_to_mask_roi

    g = torch.Generator().manual_seed(1)
    low = torch.randn(1, 1, 256, 256, generator=g) * 4
    input_size = input_size_for(size)
    plane = F.interpolate(low, size=(1024, 1024), mode="bilinear", align_corners=False)
    plane = F.interpolate(plane[..., : input_size[0], : input_size[1]], size=size, mode="bilinear",
                          align_corners=False)[0, 0]
    mask = logits_to_mask_roi(low, input_size, size)
    rng = np.random.default_rng(0)
    for y, x in zip(rng.integers(0, size[0], 40), rng.integers(0, size[1], 40)):
        v = logit_at(low, input_size, size, y, x)
        assert v == pytest.approx(float(plane[y, x]), abs=1e-4)
        assert (v > 0) == mask[y, x] or abs(v) < 1e-5
