"""``napari-focsam segment-all``: labels image + one JSON line; blank image; bad options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from scene_helpers import discs
from napari_focsam.cli import main
from napari_focsam.evaluation.instances import match_instances


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_blank_image_gives_empty_labels_and_a_warning(tmp_path, capsys):
    img = tmp_path / "blank.tif"
    tifffile.imwrite(img, np.full((40, 50), 3, np.uint16))
    out = tmp_path / "labels.tif"
    assert main(["segment-all", str(img), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["objects"] == 0 and summary["shape"] == [40, 50]
    assert "blank" in captured.err and "empty" in captured.err
    labels = tifffile.imread(out)
    assert labels.shape == (40, 50) and not labels.any()


@pytest.mark.parametrize("option, value, message", [
    ("--points-per-side", "0", "points_per_side must be a positive integer"),
    ("--pred-iou-thresh", "1.5", "pred_iou_thresh must be within [0, 1]"),
    ("--tiles", "20", "tiles 20 is too many"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, option, value, message):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, discs()[0])
    rc = main(["segment-all", str(img), "--out", str(tmp_path / "l.tif"), option, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "l.tif").exists()


def test_stack_needs_a_slice_and_tiny_model_runs(tmp_path, capsys, tiny_ckpt):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([discs()[0]] * 3))
    assert main(["segment-all", str(stack), "--out", str(tmp_path / "l.tif")]) == 2
    assert "pass --slice Z" in capsys.readouterr().err
    out = tmp_path / "l.npy"
    assert main(["segment-all", str(stack), "--slice", "1", "--points-per-side", "4", "--model", str(tiny_ckpt),
                 "--out", str(out), "--no-progress"]) == 0
    summary = _summary(capsys)
    assert summary["slice"] == 1 and summary["params"]["points_per_side"] == 4
    assert np.load(out).shape == discs()[0].shape


def test_real_model_writes_one_label_per_nucleus(tmp_path, capsys, vit_t_path):
    img, truth = discs()
    path = tmp_path / "discs.tif"
    tifffile.imwrite(path, img)
    out = tmp_path / "labels.tif"
    assert main(["segment-all", str(path), "--out", str(out), "--points-per-side", "12", "--model", str(vit_t_path),
                 "--no-progress"]) == 0
    summary = _summary(capsys)
    labels = tifffile.imread(out)
    assert summary["objects"] == 4 == labels.max() and labels.dtype == np.uint16
    assert match_instances(truth, labels).tp == 4
