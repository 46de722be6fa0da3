"""TinyViT's inference path (folded BatchNorm, fused kernels, channels-last) equals the plain one."""

from __future__ import annotations

import pytest
import torch

from napari_focsam.modeling import fast_ops
from napari_focsam.modeling.tiny_vit import TinyViT, TinyViTConfig, add_windows, partition_windows

# 256-pixel input: stage resolutions 64 / 32 / 32, every stage pads its windows
SMALL = TinyViTConfig(img_size=256)


def randomised_tinyvit(seed: int = 0) -> TinyViT:
    """A TinyViT whose BatchNorms and attention biases are far from their identity init."""
    torch.manual_seed(seed)
    model = TinyViT(SMALL)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_(0, 1.0)
    return model.eval()


def plain_and_fast(model: TinyViT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        model.fast_inference = False
        plain = model(x)
        model.fast_inference = True
        fast = model(x)
    return plain, fast


@pytest.mark.parametrize("fused", ["1", "0"])
def test_fast_encoder_equals_plain_encoder(fused, monkeypatch):
    """With and without oneDNN fusion; batch of two images."""
    monkeypatch.setenv("NAPARI_FOCSAM_FUSED_OPS", fused)
    model = randomised_tinyvit()
    x = torch.randn(2, 3, 256, 256)
    plain, fast = plain_and_fast(model, x)
    assert fast.shape == plain.shape == (2, 256, 16, 16) and fast.is_contiguous()
    assert plain.abs().mean() > 0.1  # not a degenerate output
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    with torch.inference_mode():  # images in a batch do not influence each other
        torch.testing.assert_close(model(x[1:]), fast[1:], rtol=0, atol=1e-4)


def test_every_stage_fast_equals_plain():
    """Stage by stage, so that an error in an early stage cannot hide behind later ones."""
    model = randomised_tinyvit()
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        plain, fast = model.patch_embed(x), model.patch_embed.forward_fast(x)
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
        for layer in model.layers:
            plain, fast = layer(plain), layer.forward_fast(fast)
            assert plain.abs().mean() > 0.05
            torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())


def first_stage(model: TinyViT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        y = model.patch_embed(x)
        return model.layers[0](y), model.layers[0].forward_fast(y)


def test_folded_tensors_follow_weight_changes():
    """A second state dict, or an in-place change of one statistic, is used by the next fast forward."""
    model = randomised_tinyvit(0)
    x = torch.randn(1, 3, 256, 256)
    first_stage(model, x)  # builds the folded tensors
    model.load_state_dict(randomised_tinyvit(1).state_dict())
    plain, fast = first_stage(model, x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.layers[0].blocks[0].conv2.bn.running_mean.add_(1.0)
    plain2, fast2 = first_stage(model, x)
    assert (plain2 - plain).abs().max() > 1e-2
    torch.testing.assert_close(fast2, plain2, rtol=1e-4, atol=1e-4)
    model.fast_inference = False  # the whole model: same figures either way
    plain_all, fast_all = plain_and_fast(model, x)
    torch.testing.assert_close(fast_all, plain_all, rtol=0, atol=1e-4)


def test_state_dict_and_autograd_untouched_by_the_fast_path():
    model = randomised_tinyvit()
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 256, 256)
    plain_and_fast(model, x)
    assert list(model.state_dict()) == keys
    out = model(x)  # eval mode with autograd on: the plain, differentiable path
    out.square().mean().backward()
    assert model.layers[0].blocks[0].conv2.bn.weight.grad is not None


def test_fold_batchnorm_matches_conv_then_batchnorm():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 8, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 4)
    w, b = fast_ops.fold_batchnorm(conv.weight, bn, conv.bias)
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("res,ws", [(14, 7), (16, 7), (7, 7), (5, 7), (32, 14)])
def test_window_partition_and_merge_match_pad_and_reshape(res, ws):
    torch.manual_seed(0)
    B, C = 2, 3
    x = torch.randn(B, res * res, C)
    pad = (ws - res % ws) % ws
    n = (res + pad) // ws
    padded = torch.nn.functional.pad(x.view(B, res, res, C), (0, 0, 0, pad, 0, pad))
    want = padded.view(B, n, ws, n, ws, C).transpose(2, 3).reshape(B * n * n, ws * ws, C)
    windows = partition_windows(x, res, ws)
    assert torch.equal(windows, want)
    merged = add_windows(x, windows * 2, res, ws)
    assert torch.equal(merged, 3 * x)


def test_bf16_products_stay_close_to_float32():
    """bf16 matrix products (float32 accumulation, norms, attention and sums): own tolerance."""
    model = randomised_tinyvit()
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        want = model(x)
        model.set_matmul_dtype(torch.bfloat16)
        got = model(x)
        model.set_matmul_dtype(None)
        again = model(x)
    assert got.dtype == torch.float32
    assert 0 < (got - want).abs().max() < 0.1 and (got - want).abs().mean() < 0.01
    torch.testing.assert_close(again, want, rtol=0, atol=0)  # float32 weights are back
    with pytest.raises(ValueError, match="bfloat16"):
        model.set_matmul_dtype(torch.float16)


@pytest.mark.slow
def test_bf16_encoder_masks_agree_with_float32_on_real_images(mobile_sam, shared_data):
    """One-click masks from the bf16 embedding match the float32 ones (IoU >= 0.99 on
    average, >= 0.95 each) on real nuclei (coelho2009) and photos (GrabCut)."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    from napari_focsam.core.prompting import Click, FocSAMPredictor

    micro = shared_data / "micro" / "coelho2009_gnf"
    grab = shared_data / "iseg" / "GrabCut"
    cases = []
    nuclei = np.asarray(Image.open(micro / "images" / "dna-1.png").convert("L"))
    labels = np.asarray(Image.open(micro / "labels" / "dna-1.png"))
    cases.append((nuclei, [labels == i for i in np.unique(labels)[1:13]]))
    for name in ("124080", "153077"):
        gt = np.asarray(Image.open(grab / "boundary_GT" / f"{name}.bmp").convert("L"))
        cases.append((np.asarray(Image.open(grab / "data_GT" / f"{name}.jpg").convert("RGB")), [gt == 255]))

    def deepest(obj):
        dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        return np.unravel_index(np.argmax(dist), dist.shape)

    pred = FocSAMPredictor(mobile_sam)
    ious = []
    try:
        for image, objects in cases:
            mobile_sam.image_encoder.set_matmul_dtype(None)
            e32 = pred.embed(image)
            mobile_sam.image_encoder.set_matmul_dtype(torch.bfloat16)
            e16 = pred.embed(image)
            assert (e16.features - e32.features).abs().mean() < 0.01
            for obj in objects:
                click = [Click(*deepest(obj), True)]
                a, b = pred.step(e32, click).mask, pred.step(e16, click).mask
                ious.append((a & b).sum() / max((a | b).sum(), 1))
    finally:
        mobile_sam.image_encoder.set_matmul_dtype(None)
    assert len(ious) == 14
    assert np.mean(ious) >= 0.99 and min(ious) >= 0.95, ious
