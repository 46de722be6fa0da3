"""Tests of the FocSAM FocusRefiner (design doc sections 1.4, 2 and 4.3)."""

import pytest
import torch
import torch.nn.functional as F

from napari_focsam.modeling.focus_refiner import (
    Attention, FocusRefiner, MSAModule, RefineBlock, box_to_token_mask, compute_focus_box, count_selected_windows,
    expand_box, focus_token_mask, mask_to_box, select_windows, window_partition, window_unpartition)
from napari_focsam.modeling.p_dyrelu import PixelDynamicReLU

OFFICIAL_PARAMS = 25_396_058


def assert_close(a, b, atol=1e-5, rtol=1e-5):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol), f"max abs diff {diff}"


def _coarse_with_block(b, rows, cols, size=256):
    """(b, 1, size, size) logits: +5 inside rows x cols (slices, low-res units), -5 outside."""
    c = torch.full((b, 1, size, size), -5.0)
    c[:, :, rows, cols] = 5.0
    return c


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    return FocusRefiner().eval()


# --------------------------------------------------------------------------------------
# Parameters and checkpoint key names
# --------------------------------------------------------------------------------------


def _expected_keys(depth=12):
    lin = ("weight", "bias")
    keys = {f"embed_proj.{p}" for p in lin} | {f"token_proj.{p}" for p in lin}
    for i in range(depth):
        b = f"blocks.{i}."
        for m in ("norm_q", "norm_kv", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.proj",
                  "norm", "mlp.0", "mlp.2"):
            keys |= {f"{b}img2cls.{m}.{p}" for p in lin}
        keys |= {f"{b}img2cls.gamma1", f"{b}img2cls.gamma2"}
        for m in ("cls_proj.0", "cls_proj.1", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                  "attn.proj", "norm1", "relu1.pixel_mlp.0", "relu1.pixel_mlp.2",
                  "relu1.channel_mlp.0", "relu1.channel_mlp.2", "conv2.dcn_offset", "norm2"):
            keys |= {f"{b}cls2img.{m}.{p}" for p in lin}
        keys |= {f"{b}cls2img.{n}" for n in (
            "relu1.pixel_scale", "relu1.pixel_bias", "relu1.channel_scale", "relu1.channel_bias",
            "conv2.dcn.weight", "gamma1", "gamma2")}
        if i < depth - 1:
            keys |= {f"{b}cls_scale_proj.{p}" for p in lin}
    return keys


def test_official_parameter_count_and_keys(official):
    assert sum(p.numel() for p in official.parameters()) == OFFICIAL_PARAMS
    sd = official.state_dict()
    assert set(sd) == _expected_keys(12)
    shapes = {
        "embed_proj.weight": (256, 256, 1, 1),
        "token_proj.weight": (256, 256),
        "blocks.0.img2cls.gamma1": (256,),
        "blocks.0.img2cls.mlp.0.weight": (1024, 256),
        "blocks.0.img2cls.mlp.2.weight": (256, 1024),
        "blocks.3.cls2img.gamma1": (1, 256, 1, 1),
        "blocks.3.cls2img.gamma2": (1, 256, 1, 1),
        "blocks.5.cls2img.conv2.dcn_offset.weight": (27, 256, 3, 3),
        "blocks.5.cls2img.conv2.dcn_offset.bias": (27,),
        "blocks.5.cls2img.conv2.dcn.weight": (256, 256, 3, 3),
        "blocks.7.cls2img.relu1.pixel_scale": (512,),
        "blocks.7.cls2img.relu1.pixel_mlp.0.weight": (256, 1),
        "blocks.7.cls2img.relu1.pixel_mlp.2.weight": (512, 256),
        "blocks.7.cls2img.relu1.channel_mlp.0.weight": (256, 256),
        "blocks.7.cls2img.norm2.weight": (256,),
        "blocks.10.cls_scale_proj.weight": (1, 1),
        "blocks.10.cls_scale_proj.bias": (1,),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert [i for i in range(12) if f"blocks.{i}.cls_scale_proj.weight" in sd] == list(range(11))
    assert isinstance(official.blocks[2].cls2img.norm2, torch.nn.GroupNorm)
    assert official.blocks[2].cls2img.norm2.num_groups == 1
    # Initial values from the spec.
    blk = official.blocks[0]
    assert torch.all(blk.cls_scale_proj.weight == 1) and torch.all(blk.cls_scale_proj.bias == 0)
    assert torch.all(blk.cls2img.gamma1 == 1) and torch.all(blk.img2cls.gamma2 == 1)
    assert torch.all(blk.cls2img.relu1.pixel_scale == 0)
    assert torch.all(blk.cls2img.conv2.dcn_offset.weight == 0)
    assert [b.shift_size for b in official.blocks] == [0, 8] * 6


def test_strict_load_with_prefix_stripped(official):
    # The checkpoint stores the keys under "refine_head."; the loader strips the prefix.
    ckpt = {f"refine_head.{k}": v for k, v in official.state_dict().items()}
    stripped = {k[len("refine_head."):]: v for k, v in ckpt.items()}
    result = official.load_state_dict(stripped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_configurable_size():
    small = FocusRefiner(depth=4, num_heads=4, mlp_ratio=2.0)
    assert len(small.blocks) == 4
    assert small.blocks[0].img2cls.mlp[0].out_features == 512
    assert small.blocks[0].cls2img.attn.num_heads == 4
    assert small.blocks[3].cls_scale_proj is None and small.blocks[2].cls_scale_proj is not None


# --------------------------------------------------------------------------------------
# Focus box and token mask
# --------------------------------------------------------------------------------------


def test_mask_to_box_hand_made():
    m = torch.zeros(3, 40, 50, dtype=torch.bool)
    m[0, 10:20, 30:41] = True
    m[1, 0, 0] = True
    m[1, 39, 49] = True
    boxes = mask_to_box(m)
    assert boxes.tolist() == [[30, 10, 41, 20], [0, 0, 50, 40], [0, 0, 50, 40]]  # [2] empty


def test_expand_box_centre_scaling_rounding_and_clipping():
    boxes = torch.tensor([[100, 200, 300, 260], [11, 11, 12, 12], [1000, 1000, 1024, 1024]])
    out = expand_box(boxes, 1.4, 1.4, 1024, 1024)
    # xc=200: 200 -/+ 1.4*100 -> 60, 340; yc=230: 230 -/+ 1.4*30 -> 188, 272.
    assert out[0].tolist() == [60, 188, 340, 272]
    # Clipped to the canvas: c=1012, 1012 -/+ 16.8 -> 995 (995.2), 1024 (1028.8 clipped).
    assert out[2].tolist() == [995, 995, 1024, 1024]
    # Round half to even: c=11.5, ratio 2 -> sides 10.5 and 12.5 -> 10 and 12.
    assert expand_box(boxes[1:2], 2.0, 2.0, 1024, 1024)[0].tolist() == [10, 10, 12, 12]
    # Independent h/w ratios (h for top/bottom, w for left/right).
    assert expand_box(boxes[:1], 1.0, 1.2, 1024, 1024)[0].tolist() == [80, 200, 320, 260]


def test_compute_focus_box_from_logits():
    # Low-res block rows 64..127, cols 32..95 -> exactly rows [256, 512), cols [128, 384)
    # after bilinear x4 upsampling and thresholding at 0.
    coarse = _coarse_with_block(1, slice(64, 128), slice(32, 96))
    assert compute_focus_box(coarse, 1.0).tolist() == [[128, 256, 384, 512]]
    # 1.4x: xc=256 -> 256 -/+ 179.2 -> 77 (76.8), 435 (435.2); yc=384 -> 204.8, 563.2.
    assert compute_focus_box(coarse, 1.4).tolist() == [[77, 205, 435, 563]]
    assert compute_focus_box(coarse, (1.0, 1.4)).tolist() == [[77, 256, 435, 512]]
    # Empty mask -> whole canvas (also after expansion, by clipping).
    empty = torch.full((2, 1, 256, 256), -1.0)
    assert compute_focus_box(empty, 1.4).tolist() == [[0, 0, 1024, 1024]] * 2


def test_box_to_token_mask_matches_raster_maxpool():
    torch.manual_seed(0)
    for canvas, grid in ((1024, 64), (100, 7), ((90, 120), (8, 11))):
        ch, cw = (canvas, canvas) if isinstance(canvas, int) else canvas
        boxes = []
        for _ in range(20):
            x0, x1 = sorted(torch.randint(0, cw + 1, (2,)).tolist())
            y0, y1 = sorted(torch.randint(0, ch + 1, (2,)).tolist())
            boxes.append([x0, y0, x1, y1])
        boxes.append([0, 0, cw, ch])
        boxes = torch.tensor(boxes)
        raster = torch.zeros(len(boxes), 1, ch, cw)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            raster[i, 0, y0:y1, x0:x1] = 1.0
        ref = F.adaptive_max_pool2d(raster, grid)[:, 0] > 0
        assert torch.equal(box_to_token_mask(boxes, canvas, grid), ref)


def test_focus_token_mask_shapes():
    coarse = _coarse_with_block(1, slice(64, 128), slice(32, 96))
    tm = focus_token_mask(coarse, 1.4)
    assert tm.shape == (1, 64, 64) and tm.dtype == torch.bool
    # Box [77, 205, 435, 563) -> tokens cols 4..27, rows 12..35.
    ys, xs = tm[0].nonzero(as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (12, 35, 4, 27)


# --------------------------------------------------------------------------------------
# Window selection and refinement
# --------------------------------------------------------------------------------------


def _processed_union(token_mask, depth, ws=16, shift=8):
    """(B, H, W) bool union over blocks of the tokens of all processed windows."""
    b, h, w = token_mask.shape
    union = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(depth):
        s = 0 if i % 2 == 0 else shift
        sel = select_windows(token_mask, ws, s).view(b, h // ws, w // ws)
        cover = sel.repeat_interleave(ws, 1).repeat_interleave(ws, 2)  # rolled coordinates
        union |= torch.roll(cover, shifts=(s, s), dims=(1, 2))
    return union


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 3, 20, 13)
    wins, pad_hw = window_partition(x, 8)
    assert wins.shape == (2 * 3 * 2, 3, 8, 8) and pad_hw == (24, 16)
    assert torch.equal(window_unpartition(wins, 8, pad_hw, (20, 13)), x)
    # Window (1, 0) of image 0 is rows 8..15, cols 0..7.
    assert torch.equal(wins[2], x[0, :, 8:16, 0:8])


def test_select_windows_plain_and_shifted():
    tm = torch.zeros(1, 64, 64, dtype=torch.bool)
    tm[0, 20, 20] = True
    assert select_windows(tm, 16, 0)[0].nonzero().flatten().tolist() == [1 * 4 + 1]
    # Rolled by -8: token (20, 20) -> (12, 12) -> window (0, 0).
    assert select_windows(tm, 16, 8)[0].nonzero().flatten().tolist() == [0]
    tm[0, 4, 60] = True  # rolled -> (60, 52): window (3, 3); plain: window (0, 3)
    assert select_windows(tm, 16, 0)[0].nonzero().flatten().tolist() == [3, 5]
    assert select_windows(tm, 16, 8)[0].nonzero().flatten().tolist() == [0, 15]
    assert count_selected_windows(tm, depth=4).tolist() == [[2, 2, 2, 2]]


def test_output_is_embed_proj_outside_processed_windows(official):
    torch.manual_seed(1)
    emb = torch.randn(1, 256, 64, 64)
    tok = torch.randn(1, 1, 256)
    # Small object near a window corner: plain and shifted blocks select different windows.
    coarse = _coarse_with_block(1, slice(70, 80), slice(120, 130))
    tm = focus_token_mask(coarse, 1.4)
    counts = count_selected_windows(tm, 12)
    assert counts[0, 0] != counts[0, 1]
    union = _processed_union(tm, 12)
    assert 0 < union.sum() < 64 * 64
    with torch.inference_mode():
        out = official(emb, coarse, tok)
        base = official.embed_proj(emb)
    outside = ~union[0]
    assert torch.equal(out[0][:, outside], base[0][:, outside])
    assert not torch.allclose(out[0][:, union[0]], base[0][:, union[0]])
    # Windows processed only by shifted blocks also change (union is needed).
    plain_only = _processed_union(tm, 1)[0]
    assert (union[0] & ~plain_only).any()
    changed = (out[0] != base[0]).any(dim=0)
    assert torch.equal(changed, union[0])


def test_full_canvas_processes_all_windows():
    torch.manual_seed(2)
    empty = torch.full((1, 1, 256, 256), -3.0)
    tm = focus_token_mask(empty, 1.4)
    assert tm.all()
    assert count_selected_windows(tm, 12).tolist() == [[16] * 12]
    model = FocusRefiner(embed_dim=32, depth=2, num_heads=4).eval()  # small: selection only
    seen = []
    for blk in model.blocks:
        blk.img2cls.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
        blk.cls2img.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    assert model.selected_windows_per_block(tm).tolist() == [[16, 16]]
    with torch.inference_mode():
        out = model(torch.randn(1, 32, 64, 64), empty, torch.randn(1, 32))
    assert seen == [16, 16, 16, 16]
    assert out.shape == (1, 32, 64, 64) and torch.isfinite(out).all()


def test_batch_equals_separate_runs():
    torch.manual_seed(3)
    model = FocusRefiner(embed_dim=64, depth=3, num_heads=4).eval()
    emb = torch.randn(2, 64, 64, 64)
    tok = torch.randn(2, 1, 64)
    coarse = torch.cat([
        _coarse_with_block(1, slice(70, 80), slice(120, 130)),
        _coarse_with_block(1, slice(150, 200), slice(5, 60)),
    ])
    tm = focus_token_mask(coarse)
    assert not torch.equal(tm[0], tm[1])
    with torch.inference_mode():
        both = model(emb, coarse, tok)
        one = model(emb[:1], coarse[:1], tok[:1])
        two = model(emb[1:], coarse[1:], tok[1:])
    assert_close(both[:1], one, atol=1e-4, rtol=1e-4)
    assert_close(both[1:], two, atol=1e-4, rtol=1e-4)


def test_gradients_flow_in_training_mode():
    torch.manual_seed(4)
    model = FocusRefiner(embed_dim=64, depth=2, num_heads=4).train()
    emb = torch.randn(1, 64, 64, 64, requires_grad=True)
    tok = torch.randn(1, 1, 64, requires_grad=True)
    coarse = _coarse_with_block(1, slice(100, 140), slice(100, 150))
    out = model(emb, coarse, tok)
    assert model.last_expand_ratio is not None
    assert all(1.0 <= r <= 1.4 for r in model.last_expand_ratio)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert emb.grad.abs().sum() > 0 and tok.grad.abs().sum() > 0


def test_expand_ratio_control():
    model = FocusRefiner(depth=1)
    coarse = _coarse_with_block(1, slice(64, 128), slice(32, 96))
    model.eval()
    model.focus_mask(coarse)
    assert model.last_expand_ratio == (1.4, 1.4)
    model.train()
    torch.manual_seed(0)
    model.focus_mask(coarse)
    r1 = model.last_expand_ratio
    model.focus_mask(coarse)
    r2 = model.last_expand_ratio
    assert r1 != r2 and all(1.0 <= r <= 1.4 for r in r1 + r2)
    torch.manual_seed(0)
    model.focus_mask(coarse)
    assert model.last_expand_ratio == r1  # reproducible under torch.manual_seed
    model.focus_mask(coarse, expand_ratio=1.1)  # explicit ratio wins in training too
    assert model.last_expand_ratio == (1.1, 1.1)
    assert torch.equal(
        model.focus_mask(coarse, expand_ratio=(1.0, 1.4)),
        box_to_token_mask(compute_focus_box(coarse, (1.0, 1.4))),
    )


def test_token_mask_override_and_token_shapes():
    torch.manual_seed(5)
    model = FocusRefiner(embed_dim=64, depth=2, num_heads=4).eval()
    emb = torch.randn(1, 64, 64, 64)
    tok = torch.randn(1, 1, 64)
    coarse = _coarse_with_block(1, slice(64, 128), slice(32, 96))
    with torch.inference_mode():
        a = model(emb, coarse, tok)
        b = model(emb, None, tok[:, 0], token_mask=focus_token_mask(coarse))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        model(emb, None, tok)


# --------------------------------------------------------------------------------------
# Layer-level semantics
# --------------------------------------------------------------------------------------


def test_attention_null_slot():
    torch.manual_seed(6)
    attn = Attention(16, num_heads=2)
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    out = attn(q, kv, kv)
    qh = attn.q_proj(q).view(3, 5, 2, 8).transpose(1, 2)
    kh = attn.k_proj(kv).view(3, 7, 2, 8).transpose(1, 2)
    vh = attn.v_proj(kv).view(3, 7, 2, 8).transpose(1, 2)
    logits = torch.cat([qh @ kh.transpose(-1, -2) * 8**-0.5, torch.zeros(3, 2, 5, 1)], dim=-1)
    vals = torch.cat([vh, torch.zeros(3, 2, 1, 8)], dim=2)
    ref = attn.proj((logits.softmax(-1) @ vals).transpose(1, 2).reshape(3, 5, 16))
    assert_close(out, ref)


def test_p_dyrelu_formula_and_layout():
    torch.manual_seed(7)
    act = PixelDynamicReLU(8)
    with torch.no_grad():
        for p in (act.pixel_scale, act.pixel_bias, act.channel_scale, act.channel_bias):
            p.normal_(0, 0.5)
    x, q = torch.randn(2, 6, 8), torch.randn(2, 1, 8)
    s = (x * q).sum(-1, keepdim=True)
    hp = torch.tanh(act.pixel_mlp[2](torch.relu(act.pixel_mlp[0](s))))
    hp = hp * act.pixel_scale.exp() + act.pixel_bias
    hc = torch.tanh(act.channel_mlp[2](torch.relu(act.channel_mlp[0](x.mean(1, keepdim=True)))))
    hc = hc * act.channel_scale.exp() + act.channel_bias
    ref = torch.maximum(hp[..., :8] * x + hp[..., 8:], hc[..., :8] * x + hc[..., 8:])
    assert_close(act(x, q), ref)


def test_msa_second_residual_uses_block_input():
    torch.manual_seed(8)
    msa = MSAModule(32, num_heads=4)
    x, c = torch.randn(2, 32, 4, 4), torch.randn(2, 1, 32)
    with torch.no_grad():
        msa.gamma2.zero_()
    assert torch.equal(msa(x, c), x)  # gamma1 branch (Y) does not reach the output


def test_token_update_is_mean_over_selected_windows_at_init():
    torch.manual_seed(9)
    blk = RefineBlock(32, 4, 2.0, window_size=4, shift_size=0, cls_scale=True).eval()
    x, cls = torch.randn(1, 8, 8, 32), torch.randn(1, 1, 32)  # channel-last map
    tm = torch.zeros(1, 8, 8, dtype=torch.bool)
    tm[0, 1, 1] = tm[0, 5, 6] = True  # windows 0 and 3 of 4
    outs = []
    blk.img2cls.register_forward_hook(lambda m, a, o: outs.append(o))
    _, new_cls = blk(x, cls, tm)
    assert outs[0].shape[0] == 2
    assert_close(new_cls, outs[0].mean(0, keepdim=True))
    # Last-block variant (no cls_scale_proj): plain mean over all windows.
    last = RefineBlock(32, 4, 2.0, window_size=4, shift_size=0, cls_scale=False).eval()
    last.load_state_dict(blk.state_dict(), strict=False)
    _, mean_cls = last(x, cls, tm)
    assert_close(mean_cls, (outs[0].sum(0, keepdim=True) + 2 * cls) / 4)


def _reference_refine(model, emb, tok, token_mask):
    """Literal transcription of the spec: pad, roll, partition, select, process, undo."""
    x = model.embed_proj(emb)
    cls = model.token_proj(tok)
    b, c, h, w = x.shape
    for blk in model.blocks:
        ws, s = blk.window_size, blk.shift_size
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        xp = F.pad(x, (0, pw, 0, ph))
        mp = F.pad(token_mask[:, None].float(), (0, pw, 0, ph))
        xp = torch.roll(xp, (-s, -s), (2, 3))
        mp = torch.roll(mp, (-s, -s), (2, 3))
        wins, pad_hw = window_partition(xp, ws)
        sel = window_partition(mp, ws)[0].flatten(1).amax(1) > 0
        nw = wins.shape[0] // b
        cls_w = cls.repeat_interleave(nw, 0).clone()
        wins = wins.clone()
        idx = sel.nonzero().flatten()
        c_sel = blk.img2cls(cls_w[idx], wins[idx].flatten(2).transpose(1, 2))
        wins[idx] = blk.cls2img(wins[idx], c_sel)
        cls_w[idx] = c_sel
        xp = torch.roll(window_unpartition(wins, ws, pad_hw, pad_hw), (s, s), (2, 3))
        x = xp[:, :, :h, :w]
        mean = cls_w.view(b, nw, 1, c).mean(1)
        if blk.cls_scale_proj is not None:
            r = sel.view(b, nw).float().mean(1).clamp(min=0.01).view(b, 1, 1)
            cls = blk.cls_scale_proj(-r.log()).exp() * (mean - cls) + cls
        else:
            cls = mean
    return x


@pytest.mark.parametrize("grid,ws,shift", [(64, 16, 8), (20, 8, 4), (13, 4, 2)])
def test_gather_scatter_matches_literal_roll_partition(grid, ws, shift):
    torch.manual_seed(10)
    model = FocusRefiner(embed_dim=16, depth=4, num_heads=2, mlp_ratio=2.0,
                         window_size=ws, shift_size=shift).eval()
    with torch.no_grad():  # non-trivial offsets so the DCN window padding matters
        for blk in model.blocks:
            blk.cls2img.conv2.dcn_offset.weight.normal_(0, 0.05)
            blk.cls2img.conv2.dcn_offset.bias.normal_(0, 0.5)
    emb = torch.randn(2, 16, grid, grid)
    tok = torch.randn(2, 1, 16)
    tm = torch.zeros(2, grid, grid, dtype=torch.bool)
    tm[0, grid // 3, grid - 2] = True
    tm[1, 1 : grid // 2, 2:5] = True
    with torch.no_grad():
        out = model(emb, None, tok, token_mask=tm)
        ref = _reference_refine(model, emb, tok, tm)
    assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gradcheck_tiny_refiner():
    torch.manual_seed(11)
    model = FocusRefiner(embed_dim=8, depth=2, num_heads=2, mlp_ratio=1.0,
                         window_size=4, shift_size=2).double()
    with torch.no_grad():  # keep DCN samples off the integer grid (bilinear kinks)
        for blk in model.blocks:
            blk.cls2img.conv2.dcn_offset.bias.fill_(0.3)
    tm = torch.zeros(1, 8, 8, dtype=torch.bool)
    tm[0, 1:3, 5] = True
    emb = torch.randn(1, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    tok = torch.randn(1, 1, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda e, t: model(e, None, t, token_mask=tm), (emb, tok), atol=1e-5, fast_mode=True
    )


def test_bf16_matmuls_keep_float32_io_and_stay_close():
    """The refiner's bf16 mode changes only its matrix products: float32 in and out, the
    update within a few per mille of the float32 one, and off again with None."""
    torch.manual_seed(0)
    ref = FocusRefiner(depth=2).eval()
    with torch.no_grad():  # non-zero P-DyReLU and LayerScale paths
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    emb = torch.randn(1, 256, 64, 64)
    coarse = torch.full((1, 1, 256, 256), -8.0)
    coarse[..., 100:160, 90:150] = 8.0
    tok = torch.randn(1, 1, 256)
    with torch.inference_mode():
        full = ref(emb, coarse, tok)
        ref.set_matmul_dtype(torch.bfloat16)
        assert ref.matmul_dtype is torch.bfloat16
        half = ref(emb, coarse, tok)
        ref.set_matmul_dtype(None)
        again = ref(emb, coarse, tok)
    assert half.dtype == torch.float32
    update = (full - emb).norm()
    assert update > 0
    assert 0 < (half - full).norm() / update < 0.02
    torch.testing.assert_close(again, full, rtol=0, atol=0)


def test_refine_precision_policy(monkeypatch):
    from napari_focsam.core.models import _load as models

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("NAPARI_FOCSAM_REFINE_PRECISION", raising=False)
    assert models.refine_matmul_dtype("fp32", cpu) is None
    assert models.refine_matmul_dtype("bf16", cpu) is torch.bfloat16
    assert models.refine_matmul_dtype("auto", cuda) is None  # GPUs keep float32
    monkeypatch.setattr(models, "native_bf16_cpu", lambda: True)
    assert models.refine_matmul_dtype(None, cpu) is torch.bfloat16
    monkeypatch.setattr(models, "native_bf16_cpu", lambda: False)
    assert models.refine_matmul_dtype("auto", cpu) is None
    monkeypatch.setenv("NAPARI_FOCSAM_REFINE_PRECISION", "BF16")
    assert models.refine_matmul_dtype(None, cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp32"):
        models.refine_matmul_dtype("half", cpu)


def test_load_model_applies_the_refine_precision(tmp_path):
    from conftest import make_tiny_focsam
    from napari_focsam.core.models import load_model, save_checkpoint

    path = tmp_path / "tiny_focsam.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=2), path)
    assert load_model(path, "cpu", refine_precision="bf16").focus_refiner.matmul_dtype is torch.bfloat16
    assert load_model(path, "cpu", refine_precision="fp32").focus_refiner.matmul_dtype is None
