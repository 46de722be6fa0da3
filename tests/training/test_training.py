"""Fast tests of the FocSAM-T training code (napari_focsam.training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_focsam.evaluation.datasets import EvalObject
from napari_focsam.training.augment import augment_sample
from napari_focsam.training.cache import TrainingCache, pack_mask, unpack_mask, write_item
from napari_focsam.training.config import config_from_dict, load_config
from napari_focsam.training.data import check_split, natural_key, select_ids
from napari_focsam.training.export import build_refiner, export_refiner
from napari_focsam.training.losses import NormalizedFocalLoss, click_loss, normalized_focal_loss
from napari_focsam.training.sampler import BatchSampler
from napari_focsam.training.schedule import WarmupPolyLR
from napari_focsam.training.simulate import geometric_probabilities, sample_geometric, simulate_clicks
from napari_focsam.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
COELHO_IDS = [f"dna-{i}" for i in range(50) if i not in (31, 43)]  # the folder's 48 images


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# ----------------------------------------------------------------------------- losses


def test_nfl_uniform_prediction_is_alpha_log2():
    logits = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2] = 1
    target[1, 0, 1, 1] = 1
    # p_t = 0.5 everywhere -> equal focal weights -> loss = alpha * log 2
    assert normalized_focal_loss(logits, target).item() == pytest.approx(0.5 * math.log(2), rel=1e-6)


def _nfl_by_hand(z, y, alpha=0.5, gamma=2.0):
    """Value and gradient of the NFL of one sample, with the normaliser held constant."""
    pt = [sigmoid(zi) if yi else 1 - sigmoid(zi) for zi, yi in zip(z, y)]
    at = [alpha if yi else 1 - alpha for yi in y]
    beta = [(1 - p) ** gamma for p in pt]
    norm = len(z) / sum(beta)
    value = sum(a * norm * b * -math.log(p) for a, b, p in zip(at, beta, pt)) / len(z)
    grad = []
    for zi, yi, p, a, b in zip(z, y, pt, at, beta):
        s = 1.0 if yi else -1.0
        dpt = s * p * (1 - p)  # d p_t / d z
        dbeta = -gamma * (1 - p) ** (gamma - 1) * dpt
        dlog = -dpt / p  # d(-log p_t)/dz
        grad.append(a * norm * (dbeta * -math.log(p) + b * dlog) / len(z))
    return value, grad


def test_nfl_known_values_and_detached_normaliser():
    z = [2.0, 1.0, -0.5, 3.0]
    y = [1, 0, 0, 1]
    logits = torch.tensor(z, dtype=torch.float64).view(1, 1, 2, 2).requires_grad_(True)
    target = torch.tensor(y).view(1, 1, 2, 2)
    loss = NormalizedFocalLoss(alpha=0.5, gamma=2.0)(logits, target)
    value, grad = _nfl_by_hand(z, y)
    assert loss.item() == pytest.approx(value, rel=1e-6)
    loss.backward()
    # the gradient does not flow through the normaliser
    assert logits.grad.flatten().tolist() == pytest.approx(grad, rel=1e-5)


def test_nfl_valid_mask_and_batch_mean():
    z1, y1 = [2.0, 1.0, -0.5, 3.0], [1, 0, 0, 1]
    z2, y2 = [0.3, -2.0, 0.0, 0.0], [1, 0, 1, 1]
    logits = torch.tensor([z1, z2]).view(2, 1, 2, 2)
    target = torch.tensor([y1, y2]).view(2, 1, 2, 2)
    valid = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    valid[1, 0, 1] = False  # the last two pixels of sample 2 are ignored
    v1, _ = _nfl_by_hand(z1, y1)
    v2, _ = _nfl_by_hand(z2[:2], y2[:2])
    expected = (v1 * 4 + v2 * 2) / 6  # mean over all valid pixels of the batch
    assert normalized_focal_loss(logits, target, valid).item() == pytest.approx(expected, rel=1e-5)


def test_nfl_is_stable_for_large_logits():
    logits = torch.tensor([100.0, -100.0, -100.0, 100.0]).view(1, 1, 2, 2).requires_grad_(True)
    target = torch.tensor([1, 0, 1, 0]).view(1, 1, 2, 2)
    loss = normalized_focal_loss(logits, target)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(0.5 * 100, rel=1e-3)  # two pixels 100 nats wrong, weight 1


def test_click_loss_known_values():
    logits = torch.zeros(1, 1, 8, 8)
    logits[0, 0, 3, 4] = 50.0  # sigmoid ~ 1
    logits[0, 0, 6, 1] = -50.0  # sigmoid ~ 0
    pts = torch.tensor([[[3, 4], [0, 0], [1, 1], [6, 1]]])
    labels = torch.tensor([[1, 0, -1, 1]])
    # errors: 0, 0.25 (sigmoid(0) vs 0), padding ignored, 1 (0 vs 1) -> mean 1.25 / 3
    assert click_loss(logits, pts, labels).item() == pytest.approx(1.25 / 3, rel=1e-6)
    assert click_loss(logits, pts, torch.full((1, 4), -1)).item() == 0.0


# ----------------------------------------------------------------------------- sampler


def test_geometric_sampler_distribution():
    p = geometric_probabilities(0.6, 20)
    assert p.sum() == pytest.approx(1.0)
    assert np.allclose(p[1:] / p[:-1], 0.6)
    rng = np.random.default_rng(0)
    draws = np.array([sample_geometric(rng, 0.6, 20) for _ in range(20000)])
    freq = np.bincount(draws, minlength=21) / draws.size
    assert np.abs(freq - p).max() < 0.01
    assert draws.mean() == pytest.approx((np.arange(21) * p).sum(), abs=0.05)
    assert sample_geometric(rng, 0.0, 20) == 0
    assert sample_geometric(rng, 0.9, 0) == 0
    a = [sample_geometric(np.random.default_rng(5), 0.35, k) for k in range(10)]
    b = [sample_geometric(np.random.default_rng(5), 0.35, k) for k in range(10)]
    assert a == b


def test_warmup_poly_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    s = WarmupPolyLR(opt, total_iters=100, warmup_iters=10, warmup_factor=1e-6, power=1.0)
    s.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 1e-6)
    s.step(10)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.9)
    s.step(100)
    assert opt.param_groups[0]["lr"] == 0.0
    lrs = [s.lr_at(i, 1e-3) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# ----------------------------------------------------------------------------- splits


def test_natural_order_and_coelho_split():
    ids = sorted(COELHO_IDS)  # lexicographic, as the folder listing
    train = select_ids(ids, "first:32")
    val = select_ids(ids, "last:16")
    assert train[:3] == ["dna-0", "dna-1", "dna-2"] and train[-1] == "dna-32"
    assert val[0] == "dna-33" and val[-1] == "dna-49" and len(val) == 16
    assert not set(train) & set(val) and len(set(train) | set(val)) == 48
    assert select_ids(ids, "range:2:4") == ["dna-2", "dna-3"]
    assert sorted(["a10", "a2", "a1"], key=natural_key) == ["a1", "a2", "a10"]
    with pytest.raises(ValueError):
        select_ids(ids, "first")
    with pytest.raises(ValueError):
        select_ids(ids, ["dna-31"])


def _micro_folder(root: Path, names):
    from PIL import Image

    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        img = np.full((40, 50), 10 * (i + 1), np.uint8)
        lab = np.zeros((40, 50), np.uint8)
        lab[5:15, 5:15] = 1
        Image.fromarray(img).save(root / "images" / f"{n}.png")
        Image.fromarray(lab).save(root / "labels" / f"{n}.png")


def test_check_split_rejects_overlap(tmp_path):
    _micro_folder(tmp_path / "micro" / "coelho2009_gnf", [f"dna-{i}" for i in range(6)])
    ok = config_from_dict({"data": {"root": str(tmp_path),
                                    "train": [{"dataset": "coelho2009_gnf", "images": "first:4", "group": "micro"}],
                                    "val": [{"dataset": "coelho2009_gnf", "images": "last:2"}]}})
    ids = check_split(ok)
    assert {i for _, i in ids["train"]} == {"dna-0", "dna-1", "dna-2", "dna-3"}
    assert not ids["train"] & ids["val"]
    bad = config_from_dict({"data": {"root": str(tmp_path),
                                     "train": [{"dataset": "coelho2009_gnf", "images": "first:5", "group": "micro"}],
                                     "val": [{"dataset": "coelho2009_gnf", "images": "last:2"}]}})
    with pytest.raises(ValueError, match="also selected for training"):
        check_split(bad)


@pytest.mark.parametrize("name", ["focsam_t.json", "focsam_t_cpu_smoke.json", "focsam_t_micro_r5_cpu.json",
                                  "focsam_t_micro_r8_cpu.json"])
def test_shipped_configs_never_train_on_validation_images(name, shared_data):
    cfg = load_config(REPO / "configs" / name, {"data.root": str(shared_data)})
    ids = check_split(cfg)
    assert ids["train"] and ids["val"]
    assert not ids["train"] & ids["val"]
    assert not {i for d, i in ids["train"] if d == "grabcut"}
    coelho_val = {i for d, i in ids["val"] if d == "coelho2009_gnf"}
    coelho_train = {i for d, i in ids["train"] if d == "coelho2009_gnf"}
    assert not coelho_val & coelho_train
    if name in ("focsam_t.json", "focsam_t_micro_r8_cpu.json"):  # every Coelho image but the 16 held out
        assert len(coelho_train) == 32 and len(coelho_val) == 16
        assert len({i for d, i in ids["val"] if d == "grabcut"}) == 50


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"train": {"iterz": 3}})


# ----------------------------------------------------------------------------- cache / augmentation


def test_augmentation_moves_image_and_masks_together():
    rng = np.random.default_rng(0)
    img = np.zeros((60, 80, 3), np.uint8)
    gt = np.zeros((60, 80), bool)
    gt[10:30, 50:70] = True
    img[gt] = 255
    from napari_focsam.training.config import AugmentConfig

    aug = AugmentConfig(hflip=1.0, vflip=1.0, rot90=1.0, crop_prob=1.0, crop_scale=(0.6, 0.9))
    for _ in range(10):
        out = augment_sample(img, [EvalObject(gt, None, "o")], aug, rng)
        assert out.params["hflip"] and out.params["vflip"] and out.params["rot90"]
        for o in out.objects:
            assert np.array_equal(o.gt, out.image[..., 0] == 255)
            assert o.gt.sum() >= 0.5 * gt.sum()


def test_pack_roundtrip():
    m = np.random.default_rng(1).random((37, 53)) > 0.5
    assert np.array_equal(unpack_mask(pack_mask(m), m.shape), m)


# ----------------------------------------------------------------------------- tiny model + cache


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_narrow_focsam(width: int = 64, seed: int = 0):
    """FocSAM from the real classes with a small ViT encoder and a ``width``-channel prompt
    encoder / decoder / embedding (SAM: 256), so that training steps are fast on a CPU."""
    from napari_focsam.modeling.focsam import FocSAM
    from napari_focsam.modeling.image_encoder_vit import ImageEncoderViT, ViTConfig
    from napari_focsam.modeling.mask_decoder import MaskDecoder
    from napari_focsam.modeling.prompt_encoder import PromptEncoder

    torch.manual_seed(seed)
    enc = ImageEncoderViT(ViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), out_chans=width))
    return FocSAM(enc, PromptEncoder(embed_dim=width), MaskDecoder(transformer_dim=width),
                  model_type="tiny_test").eval()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny FocSAM (real classes, small ViT, 64 channels) and a 4-item cache of its embeddings."""
    model = make_narrow_focsam()
    root = tmp_path_factory.mktemp("cache")
    g = torch.Generator().manual_seed(0)
    sizes = [(768, 1024), (1024, 1024), (1024, 640), (800, 1024)]
    for k, (h, w) in enumerate(sizes):
        x = torch.zeros(1, 3, 1024, 1024)
        x[..., :h, :w] = torch.randn(1, 3, h, w, generator=g)
        objs = []
        for j, (cy, cx, r) in enumerate([(120 + 10 * k, 140, 50), (300, 160 + 20 * k, 35)]):
            m = _disc(h, w, cy, cx, r)
            x[0, :, :h, :w][:, m] += 2.0
            objs.append(EvalObject(m, None, f"img{k}#{j}"))
        with torch.no_grad():
            emb = model.encode(x)
        write_item(root / "train" / "synthetic" / f"img{k}__a00.npz", emb, (h, w), objs,
                   {"dataset": "synthetic", "image_id": f"img{k}", "group": "natural", "copy": 0})
    return model, root


def _tiny_cfg(work_dir, **train):
    return config_from_dict({
        "work_dir": str(work_dir),
        "model": {"depth": 2, "mlp_ratio": 1.0},
        "sim": {"max_num_clicks": 3},
        "optim": {"lr": 1e-3, "warmup_iters": 0, "grad_clip": None},
        "train": {"iters": 10, "batch_size": 2, "seed": 7, "log_every": 1, "ckpt_every": 0, "deterministic": False,
                  "device": "cpu", **train},
    })


def _trainer(tiny_setup, work_dir, **train):
    import copy

    model, root = tiny_setup
    return Trainer(_tiny_cfg(work_dir, **train), model=copy.deepcopy(model),
                   train_cache=TrainingCache(root / "train"), device="cpu", log=None)


def test_cache_roundtrip(tiny_setup):
    _, root = tiny_setup
    cache = TrainingCache(root / "train")
    assert len(cache) == 4
    s = cache.load(0, 1)
    assert s.embedding.shape == (64, 64, 64) and s.embedding.dtype == torch.float32
    assert s.input_size == (768, 1024) and s.gt.shape == (1024, 1024)
    assert np.array_equal(s.gt[:768, :1024], s.gt_crop)
    assert np.array_equal(s.gt_crop, _disc(768, 1024, 300, 160, 35))
    assert not s.valid[768:].any() and s.valid[:768].all()
    with np.load(root / "train" / cache.items[0]["file"]) as z:
        assert z["embedding"].dtype == np.float16
    a = BatchSampler(cache, 3, 4).sample(11)
    b = BatchSampler(cache, 3, 4).sample(11)
    assert a == b


def test_identity_init_returns_the_input():
    from napari_focsam.training.config import ModelConfig

    torch.manual_seed(0)
    ref = build_refiner(ModelConfig(depth=2, mlp_ratio=1.0))
    e = torch.randn(1, 256, 64, 64)
    coarse = torch.full((1, 1, 256, 256), -5.0)
    coarse[..., 40:90, 40:90] = 5.0
    with torch.no_grad():
        out = ref(e, coarse, torch.randn(1, 1, 256))
    assert torch.allclose(out, e, atol=1e-5)


def test_simulation_shapes_and_clicks(tiny_setup, tmp_path):
    tr = _trainer(tiny_setup, tmp_path)
    group, samples = tr._load_batch(0)
    e0, gt, valid = tr.to_device(samples)
    rng = np.random.default_rng(0)
    sim = simulate_clicks(tr.model, e0, samples, n_clicks=3, refine_step=1, rng=rng)
    assert sim.points.shape == (2, 4, 2) and sim.labels.shape == (2, 4)
    assert sim.coarse_logits.shape == (2, 1, 256, 256) and sim.coarse_token.shape == (2, 1, 64)
    assert sim.refine_points.shape[1] == 2  # refine after one simulated click: 2 clicks
    assert sim.prev_logits.shape == (2, 1, 256, 256)
    for b, s in enumerate(samples):
        y, x = sim.points_yx[b, 0].tolist()
        assert s.gt_crop[y, x] and sim.labels[b, 0] == 1  # first click inside the object
        for (y, x), lab in zip(sim.points_yx[b].tolist(), sim.labels[b].tolist()):
            if lab >= 0:
                assert 0 <= y < s.input_size[0] and 0 <= x < s.input_size[1]
                assert bool(s.gt_crop[y, x]) == bool(lab)  # positive clicks in FN, negative in FP
    sim0 = simulate_clicks(tr.model, e0, samples, n_clicks=0, refine_step=0, rng=rng)
    assert sim0.points.shape[1] == 1 and sim0.prev_logits is None and sim0.coarse_logits is not None
    tr.close()


def test_training_steps_decrease_loss_on_a_fixed_batch(tiny_setup, tmp_path):
    tr = _trainer(tiny_setup, tmp_path)
    tr._setup_stage(2)
    group, samples = tr._load_batch(0)
    e0, gt, valid = tr.to_device(samples)
    sim, ratio = tr.simulate(1, group, samples, e0)
    losses = []
    for _ in range(5):
        out = tr.forward_loss(e0, gt, valid, sim, ratio)
        tr.optimizer_step(out["loss"])
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses
    assert all(math.isfinite(v) for v in losses)
    # only the refiner is trained; the decoder and prompt encoder stay frozen
    assert all(not p.requires_grad for p in tr.model.mask_decoder.parameters())
    assert all(p.requires_grad for p in tr.model.focus_refiner.parameters())
    tr.close()


def test_checkpoint_resume_reproduces_the_next_step(tiny_setup, tmp_path):
    a = _trainer(tiny_setup, tmp_path / "a", ckpt_every=2)
    a.run(max_iters=2, resume=False)
    ck = a.latest_checkpoint()
    assert ck is not None and ck.name == "ckpt_0000002.pt"
    next_a = a.train_step(2)
    a.close()

    b = _trainer(tiny_setup, tmp_path / "b")
    b.load_checkpoint(ck)
    assert b.iteration == 2
    next_b = b.train_step(2)
    b.close()
    assert next_b["loss"] == next_a["loss"]
    assert next_b["n_clicks"] == next_a["n_clicks"] and next_b["lr"] == next_a["lr"]
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [0, 1]


def test_export_loads_as_refiner_only_file(tmp_path):
    from conftest import make_tiny_focsam

    from napari_focsam.core.models import load_checkpoint, save_checkpoint
    from napari_focsam.training.config import ModelConfig

    m = make_tiny_focsam()  # SAM widths (256), which the checkpoint loader expects
    base = tmp_path / "base.pt"
    save_checkpoint(m, base)
    mc = ModelConfig(depth=2, mlp_ratio=1.0)
    m.focus_refiner = build_refiner(mc)
    with torch.no_grad():
        for p in m.focus_refiner.parameters():
            p.add_(0.01 * torch.randn_like(p))
    info = export_refiner(m, tmp_path / "ref.pt", mc, base_model="tiny")
    sha = (tmp_path / "ref.pt.sha256").read_text().split()[0]
    assert sha == info["sha256"] and len(sha) == 64
    loaded = load_checkpoint(base, refiner=tmp_path / "ref.pt")
    assert loaded.has_refiner and loaded.focus_refiner.depth == 2
    for k, v in m.focus_refiner.state_dict().items():
        assert torch.allclose(loaded.focus_refiner.state_dict()[k], v.half().float())


def test_the_configs_calibrated_thresholds_travel_in_the_export_to_the_loaded_model(tiny_setup, tmp_path):
    from conftest import make_tiny_focsam

    from napari_focsam.core.models import load_checkpoint, save_checkpoint

    _, root = tiny_setup
    base = tmp_path / "base.pt"  # SAM widths (256), which the checkpoint loader expects
    save_checkpoint(make_tiny_focsam(), base)
    data = {"work_dir": str(tmp_path / "run"), "model": {"depth": 1, "mlp_ratio": 1.0},
            "train": {"iters": 0, "device": "cpu", "deterministic": False},
            "export": {"segment_all": {"pred_iou_thresh": 0.6, "stability_thresh": 0.7},
                       "propagation": {"min_pred_iou": 0.55}}}
    for name, cfg in (("tuned.pt", data), ("plain.pt", {k: v for k, v in data.items() if k != "export"})):
        tr = Trainer(config_from_dict(cfg), model=make_tiny_focsam(), train_cache=TrainingCache(root / "train"),
                     device="cpu", log=None)
        tr.export(tmp_path / name)
        tr.close()
    tuned = load_checkpoint(base, refiner=tmp_path / "tuned.pt")
    assert tuned.segment_all_thresholds == {"pred_iou_thresh": 0.6, "stability_thresh": 0.7}
    assert tuned.propagation_thresholds == {"min_pred_iou": 0.55}
    plain = load_checkpoint(base, refiner=tmp_path / "plain.pt")
    assert plain.segment_all_thresholds is None and plain.propagation_thresholds is None
    with pytest.raises(ValueError, match="export.segment_all: unknown threshold 'pred_iou'"):
        config_from_dict({**data, "export": {"segment_all": {"pred_iou": 0.6}}})
    with pytest.raises(ValueError, match=r"export.propagation.min_pred_iou must be a number in \[0, 1\], got 5"):
        config_from_dict({**data, "export": {"propagation": {"min_pred_iou": 5}}})
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({**data, "export": {"tiles": {}}})


def test_stage1_then_stage2_and_export(tiny_setup, tmp_path):
    tr = _trainer(tiny_setup, tmp_path, iters=1, stage1_iters=1, ckpt_every=1)
    dec0 = {k: v.clone() for k, v in tr.model.mask_decoder.state_dict().items()}
    ref0 = {k: v.clone() for k, v in tr.model.focus_refiner.state_dict().items()}
    tr.run(resume=False)
    tr.close()
    stages = [json.loads(line).get("stage") for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert stages[:2] == [1, 2]
    dec1 = tr.model.mask_decoder.state_dict()
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)  # stage 1 tuned the decoder
    ref1 = tr.model.focus_refiner.state_dict()
    assert any(not torch.equal(ref0[k], ref1[k]) for k in ref0)  # stage 2 trained the refiner
    assert (tmp_path / "focsam_t_refiner.pt").is_file()
    from napari_focsam.core.models import read_checkpoint

    keys = read_checkpoint(tmp_path / "focsam_t_refiner.pt")["state_dict"]
    assert any(k.startswith("mask_decoder.") for k in keys)  # the refiner ships with its tuned decoder
    assert tr.latest_checkpoint().name == "ckpt_0000002.pt"


def test_evaluate_cached_runs_the_engine_loop_and_refines_once_per_object(tiny_setup):
    """The fast monitor clicks through InteractiveObject: the refiner runs at the 2nd click only."""
    from napari_focsam.training.validate import evaluate_cached

    import copy

    from napari_focsam.training.config import ModelConfig

    base, root = tiny_setup
    model = copy.deepcopy(base)
    model.focus_refiner = build_refiner(ModelConfig(depth=1, mlp_ratio=1.0), embed_dim=64).eval()
    cache = TrainingCache(root / "train")
    calls = []
    handle = model.focus_refiner.register_forward_hook(lambda *a: calls.append(1))
    try:
        res = evaluate_cached(model, cache, "cpu", max_objects=3, max_clicks=4)
    finally:
        handle.remove()
    (ds,) = res
    plain, refine = res[ds]["plain"], res[ds]["refine"]
    assert plain["n_objects"] == refine["n_objects"] == 3
    assert len(plain["miou"]) == len(refine["miou"]) == 4
    assert all(0.0 <= v <= 1.0 for v in plain["miou"] + refine["miou"])
    # one refine per object that got a 2nd click (none in plain mode)
    assert 1 <= len(calls) <= 3


def test_joint_decoder_training_with_plain_loss_and_bf16(tiny_setup, tmp_path):
    """``train.decoder_lr``: stage 2 trains the decoder with the refiner; ``loss.plain_weight``
    adds the NFL of the decoder on the original embedding; the export is a head file."""
    from napari_focsam.core.models import read_checkpoint

    import copy

    cfg = _tiny_cfg(tmp_path, iters=2, decoder_lr=1e-3, autocast="bf16")
    cfg.loss.plain_weight, cfg.loss.multimask_weight, cfg.loss.iou_weight = 0.5, 0.3, 0.2
    model, root = tiny_setup
    tr = Trainer(cfg, model=copy.deepcopy(model), train_cache=TrainingCache(root / "train"), device="cpu", log=None)
    dec0 = {k: v.clone() for k, v in tr.model.mask_decoder.state_dict().items()}
    tr._setup_stage(2)
    assert all(p.requires_grad for p in tr.model.mask_decoder.parameters())
    assert {g["lr"] for g in tr.optimizer.param_groups} == {1e-3}  # refiner lr 1e-3 (tiny cfg), decoder 1e-3
    group, samples = tr._load_batch(0)
    e0, gt, valid = tr.to_device(samples)
    sim, ratio = tr.simulate(0, group, samples, e0)
    out = tr.forward_loss(e0, gt, valid, sim, ratio)
    assert all(out[k] is not None and torch.isfinite(out[k]) for k in ("plain", "multimask", "iou_head"))
    assert torch.allclose(out["loss"], out["nfl"] + out["click"] + 0.5 * out["plain"] + 0.3 * out["multimask"]
                          + 0.2 * out["iou_head"])
    out["loss"].backward()
    head = tr.model.mask_decoder
    assert head.iou_prediction_head.layers[-1].weight.grad.abs().sum() > 0  # the IoU head learns
    assert all(head.output_hypernetworks_mlps[k].layers[-1].weight.grad is not None for k in range(4))
    tr.optimizer.zero_grad()
    tr.run(resume=False)
    tr.close()
    dec1 = tr.model.mask_decoder.state_dict()
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)
    keys = read_checkpoint(tmp_path / "focsam_t_refiner.pt")["state_dict"]
    assert any(k.startswith("mask_decoder.") for k in keys) and any(k.startswith("focus_refiner.") for k in keys)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r.get("plain_loss") is not None and r.get("iou_head_loss") is not None for r in log if "loss" in r)


def test_plain_weight_needs_a_trained_decoder(tmp_path):
    for k in ("plain_weight", "multimask_weight", "iou_weight"):
        with pytest.raises(ValueError, match="decoder_lr"):
            config_from_dict({"work_dir": str(tmp_path), "loss": {k: 0.5}})
    with pytest.raises(ValueError, match="autocast"):
        config_from_dict({"work_dir": str(tmp_path), "train": {"autocast": "fp8"}})


def test_head_file_replaces_the_base_decoder_and_nothing_else(tmp_path):
    from conftest import make_tiny_focsam

    from napari_focsam.core.models import CheckpointError, load_checkpoint, save_checkpoint
    from napari_focsam.training.config import ModelConfig

    m = make_tiny_focsam()
    base = tmp_path / "base.pt"
    save_checkpoint(m, base)
    mc = ModelConfig(depth=1, mlp_ratio=1.0)
    m.focus_refiner = build_refiner(mc)
    with torch.no_grad():
        for p in m.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_refiner(m, tmp_path / "head.pt", mc, with_decoder=True)
    loaded = load_checkpoint(base, refiner=tmp_path / "head.pt")
    for k, v in m.mask_decoder.state_dict().items():
        assert torch.allclose(loaded.mask_decoder.state_dict()[k], v.half().float())
    for k, v in m.image_encoder.state_dict().items():
        assert torch.equal(loaded.image_encoder.state_dict()[k], v)
    plain = load_checkpoint(base)  # the base file alone keeps its own decoder
    k = next(iter(plain.mask_decoder.state_dict()))
    assert not torch.allclose(plain.mask_decoder.state_dict()[k], loaded.mask_decoder.state_dict()[k])
    # a "refiner" carrying encoder weights is refused, and so is a decoder without a refiner
    sd = {f"image_encoder.{k}": v for k, v in m.image_encoder.state_dict().items()}
    sd.update({f"focus_refiner.{k}": v for k, v in m.focus_refiner.state_dict().items()})
    torch.save({"state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a refiner file"):
        load_checkpoint(base, refiner=tmp_path / "bad.pt")
    torch.save({"state_dict": {f"mask_decoder.{k}": v for k, v in m.mask_decoder.state_dict().items()}},
               tmp_path / "dec.pt")
    with pytest.raises(CheckpointError, match="no focus_refiner"):
        load_checkpoint(base, refiner=tmp_path / "dec.pt")


def test_multimask_loss_takes_the_best_candidate_and_iou_targets_are_real_ious():
    from napari_focsam.training.losses import mask_iou_targets, min_candidate_loss, normalized_focal_loss

    gt = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt[0, 8:24, 8:24] = True
    valid = torch.ones_like(gt)
    good = torch.where(gt, 6.0, -6.0)[0]
    half = good.clone()
    half[:, 16:] = -6.0
    bad = -good
    cands = torch.stack([bad, half, good])[None]  # (1, 3, 32, 32)
    best = normalized_focal_loss(good[None, None], gt[:, None], valid[:, None])
    assert torch.allclose(min_candidate_loss(cands, gt, valid), best)
    ious = mask_iou_targets(cands, gt, valid)[0]
    assert torch.allclose(ious, torch.tensor([0.0, 0.5, 1.0]))
