"""Training additions: photometric augmentation, cells3d slices, the click schedule
that trains the product's refine click and later clicks, and fine-tuning from a refiner file."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_focsam.core.models import CheckpointError
from napari_focsam.evaluation.datasets import EvalObject
from napari_focsam.training.augment import augment_sample, photometric
from napari_focsam.training.config import AugmentConfig, ModelConfig, SimConfig, config_from_dict
from napari_focsam.training.data import cells3d_slices, entry_digest, read_training_dataset
from napari_focsam.training.export import build_refiner, export_refiner
from napari_focsam.training.simulate import sample_geometric
from napari_focsam.training.trainer import draw_click_schedule, load_refiner_weights

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- augmentation


def _image_and_object():
    img = np.zeros((60, 80, 3), np.uint8)
    img[...] = 100
    gt = np.zeros((60, 80), bool)
    gt[10:30, 50:70] = True
    img[gt] = 200
    return img, gt


def test_photometric_off_leaves_the_image_alone():
    img, _ = _image_and_object()
    out, params = photometric(img, AugmentConfig(), np.random.default_rng(0))
    assert out is img and params == {"contrast": None, "brightness": None, "gamma": None}


def test_photometric_changes_intensities_only_and_is_seeded():
    img, _ = _image_and_object()
    aug = AugmentConfig(photometric_prob=1.0, brightness=0.1, contrast=0.4, gamma_range=(0.5, 2.0))
    a, pa = photometric(img, aug, np.random.default_rng(3))
    b, pb = photometric(img, aug, np.random.default_rng(3))
    assert np.array_equal(a, b) and pa == pb
    assert all(v is not None for v in pa.values())
    assert a.dtype == np.uint8 and a.shape == img.shape and not np.array_equal(a, img)
    # a monotone intensity map: the object stays brighter than the background
    assert a[15, 55, 0] > a[40, 10, 0]


def test_photometric_draws_come_after_the_geometric_ones():
    """Adding photometric changes keeps the flips / turns / crops of every copy."""
    img, gt = _image_and_object()
    geo = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, crop_prob=0.7, crop_scale=(0.6, 1.0))
    both = copy.deepcopy(geo)
    both.photometric_prob, both.gamma_range, both.contrast = 1.0, (0.5, 2.0), 0.3
    for seed in range(5):
        a = augment_sample(img, [EvalObject(gt, None, "o")], geo, np.random.default_rng(seed))
        b = augment_sample(img, [EvalObject(gt, None, "o")], both, np.random.default_rng(seed))
        for k in ("hflip", "vflip", "rot90", "crop"):
            assert a.params[k] == b.params[k]
        assert "gamma" in b.params and "gamma" not in a.params
        assert np.array_equal(a.objects[0].gt, b.objects[0].gt)
        assert not np.array_equal(a.image, b.image)


def test_config_checks_new_fields():
    with pytest.raises(ValueError, match="gamma_range"):
        config_from_dict({"data": {"train": [{"dataset": "davis", "augment": {"gamma_range": [0, 1]}}]}})
    with pytest.raises(ValueError, match="second_click_prob"):
        config_from_dict({"sim": {"second_click_prob": 1.5}})
    with pytest.raises(ValueError, match="<= 1"):
        config_from_dict({"sim": {"second_click_prob": 0.6, "refine_at_click2_prob": 0.6}})


# ----------------------------------------------------------------------------- click schedule


def test_click_schedule_cases():
    rng = np.random.default_rng(0)
    sc = SimConfig(second_click_prob=1.0)
    assert {draw_click_schedule(rng, sc, "natural", 2) for _ in range(20)} == {(1, 1)}
    sc = SimConfig(refine_at_click2_prob=1.0, gamma={"natural": 0.8})
    draws = [draw_click_schedule(rng, sc, "natural", 2) for _ in range(200)]
    assert all(r == 1 and n >= 1 for n, r in draws)
    assert max(n for n, _ in draws) >= 5  # later clicks on the refined embedding are trained
    # stage 1 never refines
    assert draw_click_schedule(rng, sc, "natural", 1)[1] is None


def test_click_schedule_without_new_options_draws_as_before():
    sc = SimConfig()
    for seed in range(20):
        a = draw_click_schedule(np.random.default_rng(seed), sc, "micro", 2)
        rng = np.random.default_rng(seed)
        n = sample_geometric(rng, sc.gamma["micro"], sc.max_num_clicks)
        assert a == (n, sample_geometric(rng, sc.gamma_refine["micro"], n))


# ----------------------------------------------------------------------------- fine-tuning


def test_load_refiner_weights_round_trip_and_mismatch(tmp_path):
    from conftest import make_tiny_focsam

    m = make_tiny_focsam()
    mc = ModelConfig(depth=2, mlp_ratio=1.0)
    m.focus_refiner = build_refiner(mc)
    with torch.no_grad():
        for p in m.focus_refiner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "ref.pt"
    export_refiner(m, path, mc)
    fresh = build_refiner(mc)
    load_refiner_weights(fresh, path)
    for k, v in m.focus_refiner.state_dict().items():
        assert fresh.state_dict()[k].dtype == torch.float32
        assert torch.equal(fresh.state_dict()[k], v.half().float())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_refiner_weights(build_refiner(ModelConfig(depth=1, mlp_ratio=1.0)), path)
    bad = tmp_path / "bad.pt"
    torch.save({"iteration": 3}, bad)
    with pytest.raises(CheckpointError):
        load_refiner_weights(fresh, bad)


def test_a_head_file_initialises_the_decoder_too(tmp_path):
    """Fine-tuning from a head file (refiner + decoder) starts from its decoder; a refiner-only
    file leaves the decoder alone; a head file whose decoder does not fit is refused."""
    from conftest import make_tiny_focsam

    m = make_tiny_focsam()
    mc = ModelConfig(depth=2, mlp_ratio=1.0)
    m.focus_refiner = build_refiner(mc)
    with torch.no_grad():
        for p in list(m.focus_refiner.parameters()) + list(m.mask_decoder.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    head, ref_only = tmp_path / "head.pt", tmp_path / "ref.pt"
    export_refiner(m, head, mc, with_decoder=True)
    export_refiner(m, ref_only, mc)

    target = make_tiny_focsam()
    before = copy.deepcopy(target.mask_decoder.state_dict())
    assert load_refiner_weights(build_refiner(mc), ref_only, target.mask_decoder) is False
    assert all(torch.equal(v, before[k]) for k, v in target.mask_decoder.state_dict().items())
    assert load_refiner_weights(build_refiner(mc), head, target.mask_decoder) is True
    for k, v in m.mask_decoder.state_dict().items():
        assert torch.equal(target.mask_decoder.state_dict()[k], v.half().float()), k

    from napari_focsam.core.hashing import sha256_file
    from napari_focsam.training.trainer import export_metadata, init_provenance

    cfg = config_from_dict({"model": {"init_from": str(head)}})
    meta = export_metadata(cfg, 7, None, init_provenance(head))
    assert meta["init_sha256"] == sha256_file(head) and meta["trained_iters"] == 7
    assert meta["training_data"] == [] and meta["research_only"] is False
    assert export_metadata(config_from_dict({}), 7, None)["init_sha256"] is None
    # a fine-tune inherits its starting file's provenance: a research-only start stays research-only
    research = tmp_path / "research.pt"
    export_refiner(m, research, mc, with_decoder=True, training_data=["vnc_neurites"], research_only=True)
    meta = export_metadata(config_from_dict({"model": {"init_from": str(research)}}), 7, None,
                           init_provenance(research))
    assert meta["training_data"] == ["vnc_neurites"] and meta["research_only"] is True

    sd = torch.load(head, weights_only=True)
    key = next(k for k in sd["state_dict"] if k.startswith("mask_decoder."))
    sd["state_dict"][key] = torch.zeros(3, 3, dtype=torch.float16)
    torch.save(sd, tmp_path / "bad_head.pt")
    with pytest.raises(CheckpointError, match="mask decoder"):
        load_refiner_weights(build_refiner(mc), tmp_path / "bad_head.pt", make_tiny_focsam().mask_decoder)


# ----------------------------------------------------------------------------- cells3d slices


def _write_volume(folder: Path):
    import tifffile

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, size=(7, 40, 50)).astype(np.uint16)
    lab = np.zeros((7, 40, 50), np.uint32)
    lab[1:6, 5:25, 5:25] = 1  # a big nucleus
    lab[0:7, 30:33, 40:43] = 2  # 9 px per slice: too small
    lab[3, 30:38, 10:30] = 3  # in slice 3 only
    vol[lab > 0] += 3000
    tifffile.imwrite(folder / "cells3d_nuclei.tif", vol)
    tifffile.imwrite(folder / "cells3d_nuclei_label.tif", lab)
    return vol, lab


def test_cells3d_slices_synthetic(tmp_path):
    vol, lab = _write_volume(tmp_path / "micro" / "cells3d")
    ds = cells3d_slices(tmp_path, step=3, min_area=50)
    assert ds.name == "cells3d_slices" and ds.image_ids == ["z03"]  # z00 / z06 hold only tiny objects
    sample = next(iter(ds))
    assert sample.load_image().shape == (40, 50, 3) and sample.load_image().dtype == np.uint8
    assert sorted(o.object_id for o in sample.objects) == ["z03#1", "z03#3"]
    assert np.array_equal(sample.objects[0].gt, lab[3] == 1)
    ds2 = cells3d_slices(tmp_path, step=1, min_area=50)
    assert ds2.image_ids == ["z01", "z02", "z03", "z04", "z05"]
    assert len({entry_digest(e) for e in ds2._entries}) == 5  # one file, five contents
    assert read_training_dataset("cells3d-slices", tmp_path).image_ids == ds.image_ids
    with pytest.raises(FileNotFoundError, match="cells3d_slices"):
        cells3d_slices(tmp_path / "nowhere")


def test_v2_config_training_data(shared_data):
    from napari_focsam.training.config import load_config
    from napari_focsam.training.data import check_split

    cfg = load_config(REPO / "configs" / "focsam_t_cpu_v2.json", {"data.root": str(shared_data)})
    ids = check_split(cfg)
    datasets = {d for d, _ in ids["train"]}
    assert datasets == {"coco_mval", "davis", "coelho2009_gnf", "stardist2d", "cells3d_slices"}
    assert not {i for d, i in ids["train"] if d == "grabcut"}
    assert len({i for d, i in ids["train"] if d == "coco_mval"}) == 400
    assert len({i for d, i in ids["train"] if d == "davis"}) == 345
    coelho_train = {i for d, i in ids["train"] if d == "coelho2009_gnf"}
    coelho_val = {i for d, i in ids["val"] if d == "coelho2009_gnf"}
    assert len(coelho_train) == 32 and len(coelho_val) == 16 and not coelho_train & coelho_val
    ds = read_training_dataset("cells3d_slices", shared_data)
    assert len(ds) >= 10
    for s in ds:
        assert all(o.gt.sum() >= 150 for o in s.objects)


# ----------------------------------------------------------------------------- comparison / report


def test_chosen_objects_are_a_seeded_sample(tmp_path):
    from PIL import Image

    from napari_focsam.evaluation.datasets import read_dataset
    from napari_focsam.training.compare import ChosenObjects, markdown_table, sample_objects

    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for k in range(3):
        lab = np.zeros((20, 30), np.uint8)
        for j in range(4):
            lab[2 + 4 * j : 5 + 4 * j, 2 + 5 * k : 6 + 5 * k] = j + 1
        Image.fromarray(lab).save(tmp_path / "labels" / f"im-{k}.png")
        Image.fromarray((lab > 0).astype(np.uint8) * 200).save(tmp_path / "images" / f"im-{k}.png")
    ds = read_dataset("microscopy", tmp_path)
    a = sample_objects(ds, 5, seed=1)
    assert a == sample_objects(ds, 5, seed=1) and sum(map(len, a.values())) == 5
    assert sum(map(len, sample_objects(ds, None, seed=1).values())) == 12
    chosen = ChosenObjects(ds, a)
    got = [(s.image_id, o.object_id) for s in chosen for o in s.objects]
    assert len(got) == len(chosen) == 5
    full = {s.image_id: [o.object_id for o in s.objects] for s in ds}
    assert got == [(i, full[i][j]) for i in a for j in a[i]]
    summary = {"n_objects": 5, "noc85": 1.2, "noc90": 2.0, "noc95": 3.5, "miou": [0.5] * 20}
    table = markdown_table({"val": {"plain": summary}}, "abc")
    assert "| val | plain | 5 | 1.20 | 2.00 | 3.50 |" in table and "abc" in table


def test_training_log_plot(tmp_path):
    import json

    from napari_focsam.training.report import plot_training_log, read_log

    log = tmp_path / "log.jsonl"
    lines = [{"iter": i, "loss": 1.0 / (i + 1), "nfl": 0.5, "click": 0.1, "iou": 0.8, "plain_iou": 0.7, "lr": 1e-4}
             for i in range(0, 60, 10)]
    lines.insert(3, {"event": "resumed", "iteration": 20})
    lines.append({"iter": 50, "loss": 9.0, "nfl": 0.5, "click": 0.1, "iou": 0.8, "plain_iou": None, "lr": 1e-4})
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    recs = read_log(log)
    assert [r["iter"] for r in recs] == [0, 10, 20, 30, 40, 50] and recs[-1]["loss"] == 9.0
    png = plot_training_log(log, tmp_path / "curves.png")
    assert png.stat().st_size > 1000


def test_resume_with_more_iterations_replans_the_schedule(tmp_path):
    import test_training as tt

    model = tt.make_narrow_focsam()
    root = tmp_path / "cache"
    g = torch.Generator().manual_seed(0)
    m = tt._disc(512, 512, 200, 200, 60)
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, 1024, 1024, generator=g))
    tt.write_item(root / "train" / "s" / "a__a00.npz", emb, (512, 512), [EvalObject(m, None, "a#1")],
                  {"dataset": "s", "image_id": "a", "group": "natural", "copy": 0})
    setup = (model, root)
    a = tt._trainer(setup, tmp_path / "w", iters=4, ckpt_every=2)
    a.run(max_iters=2, resume=False)
    a.close()
    b = tt._trainer(setup, tmp_path / "w", iters=40)
    b.run(max_iters=1, resume=True)
    b.close()
    assert b.replanned == (4, 40) and b.scheduler.total == 40
    assert b.scheduler.get_last_lr()[0] == pytest.approx(b.scheduler.lr_at(2, b.scheduler.base_lrs[0]))
    log = (tmp_path / "w" / "log.jsonl").read_text()
    assert "schedule re-planned" in log


def test_a_second_round_continues_another_runs_checkpoint_then_its_own(tmp_path):
    import test_training as tt

    model = tt.make_narrow_focsam()
    root = tmp_path / "cache"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, 1024, 1024, generator=g))
    tt.write_item(root / "train" / "s" / "a__a00.npz", emb, (512, 512),
                  [EvalObject(tt._disc(512, 512, 200, 200, 60), None, "a#1")],
                  {"dataset": "s", "image_id": "a", "group": "natural", "copy": 0})
    setup = (model, root)
    first = tt._trainer(setup, tmp_path / "round1", iters=4, ckpt_every=2)
    first.run(resume=False)
    first.close()
    ck = tmp_path / "round1" / "ckpt_0000004.pt"
    assert ck.is_file()
    second = tt._trainer(setup, tmp_path / "round2", iters=8, ckpt_every=2)
    second.run(max_iters=2, resume=ck)  # a fresh work folder: from round 1's checkpoint
    second.close()
    assert second.iteration == 6 and second.replanned == (4, 8)
    assert (tmp_path / "round2" / "config.json").is_file()  # the round's own config is kept
    again = tt._trainer(setup, tmp_path / "round2", iters=8, ckpt_every=2)
    again.run(max_iters=1, resume=ck)  # interrupted: its own latest checkpoint wins
    again.close()
    assert again.iteration == 7
    with pytest.raises(FileNotFoundError, match="no checkpoint to continue from"):
        tt._trainer(setup, tmp_path / "round3", iters=8).run(resume=tmp_path / "missing.pt")


def test_train_command_refuses_resume_from_with_no_resume(capsys):
    from napari_focsam.cli import main

    assert main(["train", "no-such-config.json", "--resume-from", "x.pt", "--no-resume"]) != 0
    assert "--resume-from continues a training run" in capsys.readouterr().err


def test_a_fine_tune_from_a_head_file_starts_from_its_decoder_and_names_it(tmp_path):
    """Trainer end to end: round 1 trains the decoder and exports a head file; round 2 starts
    from it (``model.init_from``), so its decoder is round 1's, and its export names the file."""
    import test_training as tt

    from napari_focsam.core.hashing import sha256_file
    from napari_focsam.core.models import read_checkpoint
    from napari_focsam.training.cache import TrainingCache
    from napari_focsam.training.trainer import Trainer

    model = tt.make_narrow_focsam()
    root = tmp_path / "cache"
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)))
    tt.write_item(root / "train" / "s" / "a__a00.npz", emb, (512, 512),
                  [EvalObject(tt._disc(512, 512, 200, 200, 60), None, "a#1")],
                  {"dataset": "s", "image_id": "a", "group": "natural", "copy": 0})
    first = tt._trainer((model, root), tmp_path / "round1", iters=2, decoder_lr=1e-3)
    first.run(resume=False)
    first.close()
    head = tmp_path / "round1" / "focsam_t_refiner.pt"
    assert any(k.startswith("mask_decoder.") for k in read_checkpoint(head)["state_dict"])

    cfg = tt._tiny_cfg(tmp_path / "round2", iters=1)
    cfg.model.init_from = str(head)
    second = Trainer(cfg, model=copy.deepcopy(model), train_cache=TrainingCache(root / "train"), device="cpu",
                     log=None)
    for k, v in first.model.mask_decoder.state_dict().items():  # round 1's decoder, not the base's
        assert torch.equal(second.model.mask_decoder.state_dict()[k], v.half().float()), k
    second.run(resume=False)
    second.close()
    meta = read_checkpoint(tmp_path / "round2" / "focsam_t_refiner.pt")["napari_focsam"]
    assert meta["init_sha256"] == sha256_file(head)
