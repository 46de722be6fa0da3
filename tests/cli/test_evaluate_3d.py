"""``napari-focsam evaluate-3d`` and the 3D correction protocol it runs
(:mod:`napari_focsam.evaluation.volumes`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_focsam.cli import evaluate_3d, main
from napari_focsam.evaluation import volumes as V

tifffile = pytest.importorskip("tifffile")


def balls(shape=(7, 40, 40)):
    """Two balls: label 1 on slices 1-5, label 2 on slices 2-4; bright on a dark background."""
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.uint16)
    labels[((zz - 3) / 2.2) ** 2 + ((yy - 12) / 7) ** 2 + ((xx - 12) / 7) ** 2 < 1] = 1
    labels[((zz - 3) / 1.2) ** 2 + ((yy - 28) / 6) ** 2 + ((xx - 27) / 6) ** 2 < 1] = 2
    image = np.where(labels > 0, 200, 30).astype(np.uint8)
    return image, labels


def test_the_simulated_user_clicks_where_most_is_wrong():
    gt = np.zeros((3, 20, 20), bool)
    gt[:, 5:15, 5:15] = True
    pred = gt.copy()
    pred[1, 5:15, 5:9] = False  # slice 1 misses a band: a positive click in it, away from its edges
    z, y, x, positive = V.next_click_3d(pred, gt)
    assert (z, positive) == (1, True) and 5 < y < 14 and x in (6, 7)
    pred = gt.copy()
    pred[2, 0:5, 0:20] = True  # slice 2 leaks: a negative click in the leak
    z, y, x, positive = V.next_click_3d(pred, gt)
    assert (z, positive) == (2, False) and y < 5
    assert V.next_click_3d(gt, gt) is None
    assert V.noc([0.7, 0.86, 0.95], 0.85) == 2 and V.noc([0.7, 0.8], 0.9) == 2
    z, y, x = V.seed_click(gt)
    assert z == 1 and 8 <= y <= 10 and 8 <= x <= 10  # the middle slice, the centre of its section


def test_wrong_voxels_are_split_into_outline_and_extent_errors():
    gt = np.zeros((5, 10, 10), bool)
    gt[1:4, 2:8, 2:8] = True  # slices 1-3, 36 px each
    pred = np.zeros_like(gt)
    pred[2:5, 2:8, 2:9] = True  # misses slice 1, leaks onto slice 4, one column too wide on 2-3
    pred[2, 2, 2:8] = False  # and misses a row of slice 2
    kinds = V.error_kinds(pred, gt)
    assert kinds == {"outline_missed": 6, "outline_leaked": 6 + 6, "extent_missed": 36, "extent_leaked": 42}
    assert sum(kinds.values()) == int((pred ^ gt).sum())
    assert V.error_kinds(gt, gt) == dict.fromkeys(V.ERROR_KINDS, 0)
    # the volume's shares after each click: all wrong voxels of all objects, by kind
    rows = [{"ious": [0.5, 0.6], "times": [1.0, 0.5], "notes": [], "kinds": [kinds, V.error_kinds(gt, gt)]},
            {"ious": [0.7, 0.8], "times": [1.0, 0.5], "notes": [], "kinds": [V.error_kinds(gt, gt)] * 2}]
    shares = V.summarise(rows)["error_kinds"]
    assert shares["extent_leaked"] == [round(42 / 96, 4), 0.0] and shares["outline_missed"][0] == round(6 / 96, 4)
    assert V.summarise([{**r, "kinds": []} for r in rows])["error_kinds"] == {}  # runs from before the split


def test_the_longest_annotated_run_is_kept_and_relabelled():
    labels = np.zeros((6, 8, 8), np.uint16)
    labels[[0, 2, 3, 4], 2:5, 2:5] = 7  # slice 1 and 5 unannotated: the run 2-4 is kept
    image = np.arange(6)[:, None, None] * np.ones((6, 8, 8))
    img, lab, first = V.annotated_block(image, labels)
    assert first == 2 and img.shape[0] == lab.shape[0] == 3 and img[0, 0, 0] == 2
    assert set(np.unique(lab)) == {0, 1}


def test_evaluate_3d_on_ones_own_stack_writes_every_objects_curve(tiny_ckpt, tmp_path, capsys, monkeypatch):
    seen = []
    real = V.evaluate_volume
    monkeypatch.setattr(V, "evaluate_volume", lambda *a, **k: seen.append(k["fit_neighbours"]) or real(*a, **k))
    image, labels = balls()
    tifffile.imwrite(tmp_path / "s.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    rc = main(["evaluate-3d", "--image", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
               "--clicks", "3", "--model", str(tiny_ckpt), "--out", str(tmp_path / "res"), "--quiet"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["objects"] == 2 and len(line["mean_iou"]) == 3 and set(line["noc"]) == {"0.80", "0.85", "0.90"}
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert saved["edge_fade"] == 0.2 and saved["iou_threshold"] == 0.65 and saved["vote"] is True
    assert saved["fit_neighbours"] is True
    rows = saved["objects"]
    assert [r["label"] for r in rows] == [1, 2] and all(len(r["ious"]) == len(r["kinds"]) == 3 for r in rows)
    assert set(saved["summary"]["error_kinds"]) == set(V.ERROR_KINDS)
    assert rows[0]["clicks"][0][:3] == list(V.seed_click(labels == 1))  # the middle slice's centre
    assert rows[1]["gt_z"] == [2, 4] and saved["summary"]["mean_iou"] == pytest.approx(
        np.mean([r["ious"] for r in rows], axis=0).tolist())
    rc = main(["evaluate-3d", "--image", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"), "--no-vote",
               "--no-fit-neighbours", "--clicks", "1", "--model", str(tiny_ckpt), "--out", str(tmp_path / "raw"),
               "--quiet"])
    raw = json.loads((tmp_path / "raw" / "results.json").read_text())
    assert rc == 0 and raw["vote"] is False and raw["fit_neighbours"] is False
    assert seen == [True, False]  # the sessions get it


@pytest.mark.parametrize("argv, message", [
    (["--image", "{s}"], "--image needs --labels"),
    (["--image", "{s}", "--labels", "{bad}"], "expected one (Z, Y, X) stack and labels of the same shape"),
    (["--image", "{s}", "--labels", "{float}"], "expected integer instance ids"),
    (["--image", "{s}", "--labels", "{l}", "--min-slices", "9"], "no object spans 9 slice(s)"),
    (["--volume", "cells3d"], "--volume needs --data-root"),
    (["--volume", "cells3d", "--data-root", "{tmp}"], "is missing"),
    (["--image", "{s}", "--labels", "{l}", "--edge-fade", "1"], "--edge-fade 1 is out of range: it must be within [0, 1)"),
])
def test_evaluate_3d_refuses_what_it_cannot_score_before_any_work(tmp_path, capsys, argv, message):
    image, labels = balls()
    files = {"s": tmp_path / "s.tif", "l": tmp_path / "l.tif", "bad": tmp_path / "bad.tif",
             "float": tmp_path / "f.tif", "tmp": tmp_path}
    tifffile.imwrite(files["s"], image)
    tifffile.imwrite(files["l"], labels)
    tifffile.imwrite(files["bad"], labels[:3])
    tifffile.imwrite(files["float"], labels.astype(np.float32))
    argv = [a.format(**files) for a in argv]
    rc = main(["evaluate-3d", *argv, "--model", "no-such-model", "--out", str(tmp_path / "o")])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_the_named_sets_of_the_command_are_those_of_the_protocol():
    assert evaluate_3d.VOLUME_NAMES == tuple(V.VOLUME_SETS)
