"""Tests of the plain-PyTorch modulated deformable convolution (DCNv2, mmcv layout)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_focsam.modeling.deform_conv import (
    ModulatedDeformConv2d,
    ModulatedDeformConvPack,
    modulated_deform_conv2d,
)


def assert_close(a, b, atol=1e-5, rtol=1e-5):
    """Light-weight stand-in for torch.testing.assert_close (whose first call is slow)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol), f"max abs diff {diff}"


def _bilinear_mmcv(img, y, x):
    """mmcv's DCNv2 bilinear rule for one channel map img (H, W) at (y, x)."""
    h, w = img.shape
    if not (y > -1 and x > -1 and y < h and x < w):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                val += wy * wx * float(img[yy, xx])
    return val


def _naive_dcn(x, offset, mask, weight, bias=None, stride=1, padding=1, dilation=1):
    """Loop reference: offset[:, 2k] = dy, offset[:, 2k+1] = dx, tap k = i*kw + j."""
    x, offset, mask, weight = (t.detach().double().numpy() for t in (x, offset, mask, weight))
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        dy, dx = offset[b, 2 * k, oy, ox], offset[b, 2 * k + 1, oy, ox]
                        y = oy * stride - padding + i * dilation + float(dy)
                        xx = ox * stride - padding + j * dilation + float(dx)
                        m = float(mask[b, k, oy, ox])
                        for ci in range(c):
                            v = _bilinear_mmcv(x[b, ci], y, xx) * m
                            if v:
                                out[b, :, oy, ox] += weight[:, ci, i, j] * v
    if bias is not None:
        out += bias.detach().double().numpy().reshape(1, -1, 1, 1)
    return torch.from_numpy(out)


def test_zero_offset_unit_mask_equals_conv2d():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16)
    w = torch.randn(5, 8, 3, 3)
    b = torch.randn(5)
    off = torch.zeros(2, 18, 16, 16)
    mask = torch.ones(2, 9, 16, 16)
    out = modulated_deform_conv2d(x, off, mask, w, b, padding=1)
    assert_close(out, F.conv2d(x, w, b, padding=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride,padding,dilation", [(2, 1, 1), (1, 2, 2), (1, 0, 1)])
def test_zero_offset_general_geometry(stride, padding, dilation):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 11, 9)
    w = torch.randn(3, 4, 3, 3)
    ref = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    ho, wo = ref.shape[-2:]
    out = modulated_deform_conv2d(
        x, torch.zeros(1, 18, ho, wo), torch.ones(1, 9, ho, wo), w,
        stride=stride, padding=padding, dilation=dilation,
    )
    assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dy,dx", [(1, -2), (-3, 0), (2, 5)])
def test_integer_offsets_equal_shifted_conv(dy, dx):
    torch.manual_seed(2)
    x = torch.randn(2, 6, 16, 16)
    w = torch.randn(7, 6, 3, 3)
    off = torch.zeros(2, 9, 2, 16, 16)
    off[:, :, 0] = dy
    off[:, :, 1] = dx
    mask = torch.ones(2, 9, 16, 16)
    out = modulated_deform_conv2d(x, off.view(2, 18, 16, 16), mask, w, padding=1)
    # Reference: zero-extend the input by P, run a valid conv, then crop at the shift.
    p = 8
    full = F.conv2d(F.pad(x, (p, p, p, p)), w)
    ref = full[:, :, p - 1 + dy : p - 1 + dy + 16, p - 1 + dx : p - 1 + dx + 16]
    assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_hand_computed_fractional_offsets():
    # One channel, 3x3 input, weight that only keeps the centre tap (k = 4).
    x = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1.0
    off = torch.zeros(1, 18, 3, 3)
    mask = torch.ones(1, 9, 3, 3)
    # Output (0, 0): centre tap samples (0 + 0.5, 0 + 0.25) -> bilinear:
    # 0.5*0.75*x00 + 0.5*0.25*x01 + 0.5*0.75*x10 + 0.5*0.25*x11 = 0.125 + 1.125 + 0.5 = 1.75
    off[0, 8, 0, 0], off[0, 9, 0, 0] = 0.5, 0.25
    # Output (1, 1): sample (1 - 1.5, 1) = (-0.5, 1): only the row-0 neighbour is inside,
    # weight 0.5 -> 0.5 * x01 = 0.5; then the mask 0.5 halves it -> 0.25.
    off[0, 8, 1, 1] = -1.5
    mask[0, 4, 1, 1] = 0.5
    # Output (2, 2): sample (2, 2 + 1.0) = (2, 3): right outside (x >= W) -> 0.
    off[0, 9, 2, 2] = 1.0
    out = modulated_deform_conv2d(x, off, mask, w, padding=1)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.75, abs=1e-6)
    assert out[0, 0, 1, 1].item() == pytest.approx(0.25, abs=1e-6)
    assert out[0, 0, 2, 2].item() == pytest.approx(0.0, abs=1e-6)
    # Untouched pixels stay the plain (centre-tap) conv = the input itself.
    assert out[0, 0, 0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0, 2, 1].item() == pytest.approx(7.0, abs=1e-6)


def test_interleaved_layout_per_tap():
    # Moving only tap k=1 (top-centre) by dx=+1 must equal a conv whose top-centre weight
    # moved to the top-right position (for interior pixels).
    torch.manual_seed(3)
    x = torch.randn(1, 2, 8, 8)
    w = torch.zeros(1, 2, 3, 3)
    w[0, :, 0, 1] = torch.tensor([1.0, -2.0])
    off = torch.zeros(1, 18, 8, 8)
    off[0, 2 * 1 + 1] = 1.0  # dx of tap 1
    out = modulated_deform_conv2d(x, off, torch.ones(1, 9, 8, 8), w, padding=1)
    w_moved = torch.zeros_like(w)
    w_moved[0, :, 0, 2] = w[0, :, 0, 1]
    ref = F.conv2d(x, w_moved, padding=1)
    assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_matches_naive_reference_random():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 6, 5)
    w = torch.randn(4, 3, 3, 3)
    b = torch.randn(4)
    off = torch.randn(2, 18, 6, 5) * 1.7  # includes samples far outside the input
    mask = torch.rand(2, 9, 6, 5)
    out = modulated_deform_conv2d(x, off, mask, w, b, padding=1)
    ref = _naive_dcn(x, off, mask, w, b)
    assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_gradcheck():
    torch.manual_seed(5)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    # Keep samples away from integer grid lines, where bilinear is not differentiable.
    off = (torch.rand(1, 18, 4, 4, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    mask = torch.rand(1, 9, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, padding=1),
        (x, off, mask, w),
        atol=1e-6,
        fast_mode=True,
    )


def test_pack_names_shapes_and_init():
    torch.manual_seed(6)
    pack = ModulatedDeformConvPack(256, 256)
    sd = pack.state_dict()
    assert set(sd) == {"dcn_offset.weight", "dcn_offset.bias", "dcn.weight"}
    assert sd["dcn_offset.weight"].shape == (27, 256, 3, 3)
    assert sd["dcn.weight"].shape == (256, 256, 3, 3)
    # Zero-initialised offsets: offset 0, mask sigmoid(0) = 0.5 -> 0.5 * plain conv.
    y = torch.randn(3, 256, 16, 16)
    assert_close(
        pack(y), 0.5 * F.conv2d(y, pack.dcn.weight, padding=1), atol=1e-4, rtol=1e-4
    )


def test_pack_offset_split():
    # Channels 0..8 (o1) and 9..17 (o2) of dcn_offset form the 18-channel offset as is;
    # channels 18..26 are the mask logits.
    torch.manual_seed(7)
    pack = ModulatedDeformConvPack(4, 3)
    with torch.no_grad():
        pack.dcn_offset.weight.normal_(0, 0.3)
        pack.dcn_offset.bias.normal_(0, 0.3)
    y = torch.randn(2, 4, 7, 7)
    raw = pack.dcn_offset(y)
    offset, mask = pack.offsets_and_mask(y)
    assert_close(offset, raw[:, :18])
    assert_close(mask, torch.sigmoid(raw[:, 18:]))
    ref = _naive_dcn(y, offset, mask, pack.dcn.weight)
    assert_close(pack(y).double(), ref, atol=1e-4, rtol=1e-4)


def test_module_no_bias_default():
    conv = ModulatedDeformConv2d(4, 4)
    assert conv.bias is None and list(dict(conv.named_parameters())) == ["weight"]
