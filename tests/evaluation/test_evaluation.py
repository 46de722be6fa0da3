"""Tests of the napari-free benchmark harness: click simulator, metrics, readers, protocol."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_focsam.evaluation.clicker import Click, ClickSimulator, next_click
from napari_focsam.evaluation.datasets import read_dataset, to_rgb_uint8
from napari_focsam.evaluation.metrics import Timings, iou, miou_curve, noc, summarize
from napari_focsam.evaluation.protocol import evaluate_dataset, plot_miou_curves, run_object, write_results


def square(shape, y0, y1, x0, x1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------------------------
# click simulator
# --------------------------------------------------------------------------------------------
def test_first_click_is_centre_of_square():
    gt = square((21, 21), 6, 15, 6, 15)  # 9x9, centre (10, 10)
    assert next_click(gt, np.zeros_like(gt)) == Click(10, 10, True)


def test_negative_click_in_deepest_false_positive():
    gt = square((30, 30), 2, 11, 2, 11)
    pred = gt | square((30, 30), 15, 26, 15, 26)  # extra 11x11 blob, centre (20, 20)
    pred[2, 2] = False  # a tiny FN (depth 1) must lose against the deep FP
    c = next_click(gt, pred)
    assert c == Click(20, 20, False)


def test_tie_between_fn_and_fp_is_negative():
    gt = square((20, 20), 2, 7, 2, 7)  # 5x5 missed
    pred = square((20, 20), 10, 15, 10, 15)  # 5x5 false positive, same depth
    c = next_click(gt, pred)
    assert c == Click(12, 12, False)


def test_border_counts_as_boundary():
    gt = square((30, 30), 0, 9, 0, 9)  # touches the top-left image corner
    c = next_click(gt, np.zeros_like(gt))
    assert c == Click(4, 4, True)  # not (0, 0), which an unpadded EDT would give


def test_clicked_pixels_are_excluded():
    gt = square((21, 21), 6, 15, 6, 15)
    c1 = next_click(gt, np.zeros_like(gt))
    c2 = next_click(gt, np.zeros_like(gt), clicked=[c1])
    assert c2.is_positive and c2 != c1 and gt[c2.y, c2.x]
    # also accepted as a mask; the same pixel is never clicked again
    mask = np.zeros_like(gt)
    mask[c1.y, c1.x] = True
    assert next_click(gt, np.zeros_like(gt), clicked=mask) == c2


def test_ignore_pixels_never_clicked_and_not_in_iou():
    gt = square((21, 21), 4, 17, 4, 17)
    ignore = square((21, 21), 8, 13, 8, 13)  # the deep centre is ignored
    c = next_click(gt, np.zeros_like(gt), ignore=ignore)
    assert c.is_positive and gt[c.y, c.x] and not ignore[c.y, c.x]
    # the whole error inside the ignore region: nothing to click
    pred = gt & ~ignore
    assert next_click(gt, pred, ignore=ignore) is None
    assert iou(gt, pred, ignore) == 1.0
    assert iou(gt, pred) < 1.0


def test_perfect_prediction_gives_none_and_determinism():
    gt = square((16, 16), 2, 8, 2, 14)  # many tied arg-max pixels
    assert next_click(gt, gt) is None
    a = [next_click(gt, np.zeros_like(gt)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    # ties are drawn with the fixed seed, not a global state
    np.random.seed(0)
    assert next_click(gt, np.zeros_like(gt)) == a[0]


def test_click_simulator_inner_k():
    gt = square((41, 41), 5, 36, 5, 36)
    sim = ClickSimulator(inner_k=1.0)
    assert sim.first_click(gt) == Click(20, 20, True)
    sim = ClickSimulator(inner_k=1.7, seed=0)
    clicks = {sim.next(gt, np.zeros_like(gt)).coords for _ in range(30)}
    assert len(clicks) > 1  # random inside the deep region
    for y, x in clicks:  # DT > max/1.7: away from the edges
        assert 5 + 8 <= y <= 35 - 8 and 5 + 8 <= x <= 35 - 8
    with pytest.raises(ValueError):
        ClickSimulator(inner_k=0.5)


# --------------------------------------------------------------------------------------------
# metrics and protocol
# --------------------------------------------------------------------------------------------
def test_iou_and_noc():
    a = square((10, 10), 0, 4, 0, 4)
    b = square((10, 10), 0, 4, 0, 2)
    assert iou(a, b) == pytest.approx(0.5)
    assert iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert noc([0.5, 0.86, 0.95], 0.85) == 2
    assert noc([0.5, 0.86, 0.95], 0.95) == 3
    assert noc([0.1] * 20, 0.85) == 20
    assert noc([0.1] * 5, 0.85) == 20
    assert miou_curve([[0.5, 1.0], [1.0]], max_clicks=3) == [0.75, 1.0, 1.0]


def test_perfect_and_empty_predictors():
    gt = square((32, 32), 5, 20, 8, 25)
    ious_p, clicks_p = run_object(lambda clicks: gt.copy(), gt)
    assert ious_p == [1.0] * 20 and len(clicks_p) == 1 and clicks_p[0].is_positive
    ious_e, clicks_e = run_object(lambda clicks: np.zeros_like(gt), gt)
    assert ious_e == [0.0] * 20 and len(clicks_e) == 20
    assert len({c.coords for c in clicks_e}) == 20  # clicked pixels are excluded

    s = summarize([ious_p, ious_p])
    assert (s["noc85"], s["noc90"], s["noc95"]) == (1, 1, 1)
    assert s["miou"] == [1.0] * 20
    s = summarize([ious_e])
    assert (s["noc85"], s["noc90"], s["noc95"]) == (20, 20, 20)
    s = summarize([ious_p, ious_e], {"embedding": 4.0, "decoder": 2.0, "refine": 0.0})
    assert s["noc90"] == pytest.approx(10.5)
    assert s["n_objects"] == 2 and len(s["miou"]) == 20
    assert s["spc"]["total"] == pytest.approx(6.0 / 40)
    assert s["spc"]["embedding"] == pytest.approx(0.1)
    assert set(s["spc"]) >= {"total", "embedding", "decoder", "refine"}


def test_run_object_third_click_and_stop():
    gt = square((20, 20), 3, 12, 3, 12)

    def predict(clicks):
        return gt.copy() if len(clicks) >= 3 else square((20, 20), 3, 12, 3, 3 + 3 * len(clicks))

    ious, clicks = run_object(predict, gt)
    assert noc(ious, 0.9) == 3 and len(ious) == 20
    # the clicks after the first are positive (the prediction is inside the GT)
    assert all(c.is_positive for c in clicks)
    ious, _ = run_object(predict, gt, stop_iou=0.9)
    assert len(ious) == 3


def test_timings_accumulator():
    t = Timings()
    with t.measure("decoder"):
        pass
    t.add("embedding", 1.0)
    t.add_clicks(4)
    s = summarize([[1.0] * 20], t)
    assert s["n_clicks"] == 4 and s["spc"]["embedding"] == pytest.approx(0.25)


def test_write_results(tmp_path):
    per = [{"image_id": "a", "object_id": "a", "ious": [0.5] * 19 + [0.9], "clicks": [[1, 2, True]]}]
    summ = summarize([p["ious"] for p in per], {"embedding": 1.0, "decoder": 1.0, "refine": 0.5})
    summ["dataset"] = "toy"
    paths = write_results(tmp_path / "out", per, summ)
    for k in ("per_object_ious.json", "summary.json", "summary.csv", "miou_curve.png"):
        assert (tmp_path / "out" / k).is_file()
    js = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"noc85", "noc90", "noc95", "miou", "spc", "n_objects"} <= set(js)
    assert js["noc90"] == 20 and js["n_objects"] == 1
    assert json.loads(paths["per_object"].read_text())[0]["ious"][-1] == 0.9
    with paths["summary_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["noc85"]) == 20.0 and "miou_20" in rows[0]
    assert "spc_refine" in rows[0]
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    p = plot_miou_curves({"refine": [0.5] * 20, "no-refine": [0.4] * 20}, tmp_path / "two.png")
    assert p.stat().st_size > 0


# --------------------------------------------------------------------------------------------
# readers on tiny generated folders
# --------------------------------------------------------------------------------------------
H, W = 24, 32


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _save(path: Path, arr, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)


def test_grabcut_reader_with_ignore_band(tmp_path):
    root = tmp_path / "iseg" / "GrabCut"
    for i, (stem, ext) in enumerate([("b", ".bmp"), ("a", ".jpg")]):
        _save(root / "data_GT" / f"{stem}{ext}", _rgb(i))
        m = np.zeros((H, W), np.uint8)
        m[4:20, 4:28] = 128
        m[6:18, 6:26] = 255
        _save(root / "boundary_GT" / f"{stem}.bmp", m)
    ds = read_dataset("grabcut", tmp_path)  # data root: resolves iseg/GrabCut
    samples = list(ds)
    assert [s.image_id for s in samples] == ["a", "b"]
    obj = samples[0].objects[0]
    assert obj.gt.sum() == 12 * 20 and obj.ignore.sum() == 16 * 24 - 12 * 20
    img = samples[0].load_image()
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert read_dataset("GrabCut", root).count_objects() == 2  # dataset folder itself
    assert read_dataset("grabcut", tmp_path, max_objects=1).count_objects() == 1


def test_davis_reader_palette_ids_and_void(tmp_path):
    root = tmp_path / "DAVIS"
    _save(root / "img" / "000.jpg", _rgb())
    m = np.zeros((H, W), np.uint8)
    m[2:10, 2:10] = 1
    m[12:20, 12:20] = 3
    m[0, :] = 255
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (3 * 251) + [224, 224, 192]
    _save(root / "gt" / "000.png", m, "P", pal)
    assert Image.open(root / "gt" / "000.png").mode == "P"
    (s,) = list(read_dataset("davis", tmp_path))
    (obj,) = s.objects
    assert obj.ignore is None
    assert obj.gt.sum() == 2 * 64 and not obj.gt[0].any()


def test_coco_mval_reader(tmp_path):
    root = tmp_path / "COCO_MVal"
    for stem in ("dog01_1", "cat00_2"):
        _save(root / "img" / f"{stem}.jpg", _rgb())
        m = np.zeros((H, W), np.uint8)
        m[5:15, 5:15] = 255
        _save(root / "gt" / f"{stem}.png", m)
    ds = read_dataset("coco_mval", root)
    assert ds.image_ids == ["cat00_2", "dog01_1"]
    objs = [o for s in ds for o in s.objects]
    assert len(objs) == 2 and all(o.gt.sum() == 100 and o.ignore is None for o in objs)


def test_berkeley_reader_both_layouts(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[3:9, 3:9] = 255
    ritm = tmp_path / "Berkeley"
    _save(ritm / "images" / "1.jpg", _rgb())
    _save(ritm / "masks" / "1.png", m)
    (s,) = list(read_dataset("berkeley", tmp_path))
    assert s.objects[0].gt.sum() == 36
    focsam = tmp_path / "b2"
    _save(focsam / "img" / "7.jpg", _rgb())
    _save(focsam / "gt" / "7#001.png", (m > 0).astype(np.uint8))  # 0/1 mask
    _save(focsam / "gt" / "7#002.png", m)
    (s,) = list(read_dataset("berkeley", focsam))
    assert [o.object_id for o in s.objects] == ["7#001", "7#002"]
    assert all(o.gt.sum() == 36 for o in s.objects)


def test_sbd_reader_mat(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "SBD"
    seg = np.zeros((H, W), np.uint8)
    seg[1:5, 1:5] = 1
    seg[10:20, 10:20] = 2
    seg[0, 20:] = 255
    for stem in ("2008_000002", "2008_000001", "2009_000003"):
        _save(root / "img" / f"{stem}.jpg", _rgb())
        gtinst = {"Segmentation": seg, "Boundaries": np.zeros((2, 1), object), "Categories": np.array([[15], [7]])}
        (root / "inst").mkdir(exist_ok=True)
        savemat(str(root / "inst" / f"{stem}.mat"), {"GTinst": gtinst})
    (root / "val.txt").write_text("2008_000002\n2008_000001\n")
    ds = read_dataset("sbd", tmp_path)
    samples = list(ds)
    assert [s.image_id for s in samples] == ["2008_000001", "2008_000002"]
    objs = samples[0].objects
    assert [o.gt.sum() for o in objs] == [16, 100]
    assert objs[0].ignore is not None and objs[0].ignore.sum() == W - 20
    assert ds.count_objects() == 4


def test_microscopy_reader_uint16_instances_lazy(tmp_path):
    import tifffile

    root = tmp_path / "my_cells"
    img = np.full((H, W), 1000, np.uint16)
    img[0, 0] = 0  # outliers beyond the 0.5/99.5 percentiles are clipped
    img[0, 1] = 65535
    img[5:10, 5:10] = 3000
    lab = np.zeros((H, W), np.uint16)
    lab[5:10, 5:10] = 7
    lab[12:20, 2:6] = 2
    lab[12:20, 20:30] = 300
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    tifffile.imwrite(root / "images" / "c1.tif", img)
    tifffile.imwrite(root / "labels" / "c1.tif", lab)
    _save(root / "images" / "c0.png", (img // 256).astype(np.uint8))
    _save(root / "labels" / "c0.png", (lab > 0).astype(np.uint8))
    ds = read_dataset("microscopy", root)
    assert ds.image_ids == ["c0", "c1"]
    samples = list(ds)
    s = samples[1]
    assert [o.object_id for o in s.objects] == ["c1#2", "c1#7", "c1#300"]
    assert [int(o.gt.sum()) for o in s.objects] == [32, 25, 80]
    rgb = s.load_image()
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb[7, 7, 0] == 255 and rgb[0, 0, 0] == 0 and rgb[15, 15, 0] == 0
    assert read_dataset("microscopy", root, max_objects=2).count_objects() == 2
    # images are read only on demand
    (root / "images" / "c1.tif").unlink()
    assert [len(x.objects) for x in ds] == [1, 3]
    with pytest.raises(FileNotFoundError):
        list(ds)[1].load_image()


def test_named_microscopy_sets_and_missing(tmp_path):
    import tifffile

    d = tmp_path / "micro" / "stardist"
    d.mkdir(parents=True)
    lab = np.zeros((H, W), np.uint16)
    lab[1:4, 1:4] = 1
    lab[6:9, 6:9] = 2
    tifffile.imwrite(d / "stardist_img2d.tif", np.arange(H * W, dtype=np.uint16).reshape(H, W))
    tifffile.imwrite(d / "stardist_mask2d.tif", lab)
    assert read_dataset("stardist2d", tmp_path).count_objects() == 2
    c = tmp_path / "micro" / "coelho2009_gnf"
    _save(c / "images" / "dna-0.png", _rgb()[..., 0])
    _save(c / "labels" / "dna-0.png", (lab > 0).astype(np.uint8) * 5)
    assert read_dataset("coelho2009_gnf", tmp_path).count_objects() == 1
    with pytest.raises(FileNotFoundError, match="data_GT"):
        read_dataset("grabcut", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        read_dataset("nope", tmp_path)


def test_to_rgb_uint8_variants():
    assert to_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.zeros((3, 4, 5), np.float32)).shape == (4, 5, 3)
    ramp = to_rgb_uint8(np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 100))
    assert ramp.min() == 0 and ramp.max() == 255


def test_evaluate_dataset_with_oracle(tmp_path):
    root = tmp_path / "COCO_MVal"
    m = np.zeros((H, W), np.uint8)
    m[5:15, 5:15] = 255
    for stem in ("x", "y"):
        _save(root / "img" / f"{stem}.jpg", _rgb())
        _save(root / "gt" / f"{stem}.png", m)

    class Oracle:
        def __init__(self):
            self.timings = Timings()

        def set_image(self, image):
            assert image.shape == (H, W, 3)
            self.timings.add("embedding", 0.5)

        def predict(self, clicks):
            self.timings.add_clicks()
            return m > 0

    per, summ = evaluate_dataset(read_dataset("coco_mval", tmp_path), Oracle())
    assert summ["noc90"] == 1 and summ["n_objects"] == 2
    assert summ["spc"]["embedding"] == pytest.approx(0.5)  # 1 s over 2 clicks
    (y, x, pos), = per[0]["clicks"]
    assert pos is True and 9 <= y <= 10 and 9 <= x <= 10  # one of the four tied centre pixels


# --------------------------------------------------------------------------------------------
# real data (optional)
# --------------------------------------------------------------------------------------------
def _data_root() -> Path | None:
    env = os.environ.get("FOCSAM_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.mark.slow
def test_real_datasets_counts():
    root = _data_root()
    if root is None:
        pytest.skip("no dataset folder (set FOCSAM_DATA)")
    expected = {"grabcut": 50, "davis": 345, "coco_mval": 400}
    for name, n in expected.items():
        try:
            ds = read_dataset(name, root)
        except FileNotFoundError:
            pytest.skip(f"{name} absent under {root}")
        assert ds.count_objects() == n, name
    gc = list(read_dataset("grabcut", root))
    assert sum(s.objects[0].ignore is not None for s in gc) > 40  # the 128 band
    assert gc[0].load_image().shape[:2] == gc[0].objects[0].gt.shape
    try:
        coelho = read_dataset("coelho2009_gnf", root)
    except FileNotFoundError:
        pytest.skip("coelho2009_gnf absent")
    first = next(iter(coelho))
    assert 20 <= len(first.objects) <= 70  # README: ~25-40 nuclei per image (dna-0 has 43)
    img = first.load_image()
    assert img.shape == first.objects[0].gt.shape + (3,) and img.dtype == np.uint8
    assert len(coelho) == 48


def test_evaluate_command_smoke(tmp_path, capsys):
    """`napari-focsam evaluate --compare` end to end on a tiny GrabCut-layout folder and a tiny FocSAM."""
    import json

    from conftest import make_tiny_focsam
    from napari_focsam.cli import main
    from napari_focsam.core.models import save_checkpoint

    ckpt = tmp_path / "tiny_focsam.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=1), ckpt)
    root = tmp_path / "iseg" / "GrabCut"
    for i, stem in enumerate(["a", "b"]):
        _save(root / "data_GT" / f"{stem}.jpg", _rgb(i))
        m = np.zeros((H, W), np.uint8)
        m[6:18, 6:26] = 255
        _save(root / "boundary_GT" / f"{stem}.bmp", m)
    out = tmp_path / "out"
    rc = main(["evaluate", "--dataset", "grabcut", "--data-root", str(tmp_path), "--model", str(ckpt),
               "--compare", "--max-objects", "2", "--max-clicks", "3", "--quiet", "--out", str(out)])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert {x["run"] for x in lines} == {"focsam", "no_refine"}
    for run in ("focsam", "no_refine"):
        summary = json.loads((out / run / "summary.json").read_text())
        assert {"noc85", "noc90", "noc95", "miou", "spc", "n_objects"} <= set(summary)
        assert summary["n_objects"] == 2 and len(summary["miou"]) == 3
        assert (out / run / "summary.csv").exists() and (out / run / "per_object_ious.json").exists()
    focsam = json.loads((out / "focsam" / "summary.json").read_text())
    assert focsam["refine"] is True and focsam["spc"]["refine"] > 0
    assert focsam["zoom"] is True and all(x["zoom"] is True for x in lines)  # as the widget, by default
    assert (out / "miou_curve.png").stat().st_size > 1000
    rc = main(["evaluate", "--dataset", "grabcut", "--data-root", str(tmp_path), "--model", str(ckpt), "--no-zoom",
               "--max-objects", "1", "--max-clicks", "2", "--quiet", "--out", str(tmp_path / "out2")])
    assert rc == 0 and json.loads(capsys.readouterr().out)["zoom"] is False
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["zoom"] is False


def test_image_selection_in_natural_order(tmp_path):
    root = tmp_path / "micro" / "coelho2009_gnf"
    for i in (1, 2, 10):
        _save(root / "images" / f"dna-{i}.png", _rgb(i)[..., 0])
        lab = np.zeros((H, W), np.uint8)
        lab[3:9, 3:9] = 1
        _save(root / "labels" / f"dna-{i}.png", lab)
    ds = read_dataset("coelho2009_gnf", tmp_path)
    assert ds.select("last:2").image_ids == ["dna-2", "dna-10"]
    assert ds.select("first:1").image_ids == ["dna-1"]
    with pytest.raises(ValueError, match="bad image selection"):
        ds.select("middle:3")


def test_clicked_mask_takes_sub_pixel_clicks():
    """Clicks from napari are floats: each marks the pixel it falls in."""
    from napari_focsam.core.prompting import Click
    from napari_focsam.evaluation.clicker import clicked_mask

    mask = clicked_mask([Click(2.4, 3.6, True), (0.4, 0.49), Click(9.7, 1.0, False)], (5, 6))
    assert sorted(zip(*np.nonzero(mask))) == [(0, 0), (2, 4)]  # (9.7, 1) rounds to row 10: outside


def test_sample_objects_draws_a_fixed_subset_across_images(tmp_path):
    root = tmp_path / "cells"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(3):
        lab = np.zeros((H, W), np.uint8)
        for j in range(4):
            lab[2 + 4 * j : 5 + 4 * j, 2 + 5 * k : 6 + 5 * k] = j + 1
        _save(root / "images" / f"c{k}.png", np.full((H, W), 100, np.uint8))
        _save(root / "labels" / f"c{k}.png", lab)
    ds = read_dataset("microscopy", root)
    ids = lambda d: [o.object_id for s in d for o in s.objects]  # noqa: E731
    every = ids(ds)
    assert len(every) == 12
    picked = ids(ds.sample_objects(5, seed=3))
    assert len(picked) == 5 and set(picked) <= set(every)
    assert picked == sorted(picked, key=every.index)  # image order is kept
    assert picked == ids(ds.sample_objects(5, seed=3)) != ids(ds.sample_objects(5, seed=4))
    assert ids(ds.sample_objects(50)) == every
    with pytest.raises(ValueError):
        ds.sample_objects(0)


def test_adapter_keeps_embeddings_on_disk(tmp_path):
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from engine_helpers import make_fast_focsam

    from napari_focsam.core.prompting import FocSAMPredictor
    from napari_focsam.evaluation.runner import PredictorAdapter

    model = make_fast_focsam()
    image = _rgb()
    first = PredictorAdapter(FocSAMPredictor(model), cache_dir=tmp_path)
    first.set_image(image)
    assert model.image_encoder.calls == 1 and len(list(tmp_path.rglob("*.pt"))) == 1
    again = PredictorAdapter(FocSAMPredictor(model), cache_dir=tmp_path)
    again.set_image(image)
    assert model.image_encoder.calls == 1  # read back, not encoded
    torch.testing.assert_close(again.embedding.features, first.embedding.features, rtol=0, atol=0)
    assert again.embedding.input_size == first.embedding.input_size
    assert again.embedding.original_size == first.embedding.original_size
    again.set_image(image[::-1].copy())  # another image: encoded
    assert model.image_encoder.calls == 2
