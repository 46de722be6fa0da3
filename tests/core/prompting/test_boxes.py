"""Box prompts: the Box type and its checks, SAM's box tokens, boxes in the click history and the
session (refined by clicks, undo, errors), and real nuclei through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine_helpers import blobs_stack, make_fast_focsam
from napari_focsam.cli import main
from napari_focsam.core.prompting import Box, FocSAMPredictor, InteractiveObject, checked_box, parse_box
from napari_focsam.core.session import Session


# --------------------------------------------------------------------------- the type


def test_checked_box_sorts_clips_and_refuses_degenerate_boxes():
    assert checked_box((10, 20, 5, 2), (50, 60)) == Box(5.0, 2.0, 10.0, 20.0)
    assert checked_box((-9, -9, 70, 80), (50, 60)) == Box(-0.5, -0.5, 49.5, 59.5)
    with pytest.raises(ValueError, match="zero area"):
        checked_box((5, 5, 5, 20), (50, 60))
    with pytest.raises(ValueError, match="outside the image of 50x60"):
        checked_box((60, 0, 70, 10), (50, 60))
    with pytest.raises(ValueError, match="outside the image"):
        checked_box((-20, -20, -1, -1), (50, 60))
    with pytest.raises(ValueError, match="finite numbers"):
        checked_box((0, 0, float("nan"), 3), (50, 60))
    with pytest.raises(ValueError, match=r"\(y0, x0, y1, x1\)"):
        checked_box((1, 2, 3), (50, 60))
    assert parse_box(" 1,2, 30.5,40") == Box(1.0, 2.0, 30.5, 40.0)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,inf"):
        with pytest.raises(ValueError, match="Y0,X0,Y1,X1"):
            parse_box(bad)


def test_box_corners_are_sam_box_tokens_without_padding():
    """Points then the two corners (labels 2, 3): no padding token, corner embeddings added."""
    pe = make_fast_focsam().prompt_encoder
    pts = torch.tensor([[[100.0, 200.0], [10.0, 20.0], [300.0, 400.0]]])
    lab = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        sparse, _ = pe((pts, lab))
        assert sparse.shape == (1, 3, 256)  # no "not a point" token with a box
        corners = pe.pe_layer.forward_with_coords(pts[:, 1:] + 0.5, pe.input_image_size)
        want = corners + torch.cat([pe.point_embeddings[2].weight, pe.point_embeddings[3].weight])[None]
        torch.testing.assert_close(sparse[:, 1:], want)
        assert pe((pts[:, :1], lab[:, :1]))[0].shape == (1, 2, 256)  # points only: padded


# --------------------------------------------------------------------------- history and session


@pytest.fixture
def fast_model():
    return make_fast_focsam()


def test_box_starts_the_object_and_clicks_refine_it_with_the_refiner_after_the_box():
    model = make_fast_focsam(refiner_depth=1)
    pred = FocSAMPredictor(model)
    emb = pred.embed(blobs_stack(1, size=48)[0])
    obj = InteractiveObject(pred, emb)
    box_mask = obj.set_box((10, 10, 38, 38)).copy()
    assert obj.box == Box(10.0, 10.0, 38.0, 38.0) and len(obj) == 0 and obj.logits is not None
    assert obj.refined is None
    obj.add_click(24, 24, True)
    assert obj.refined is not None  # the first click after the box is the object's 2nd prompt
    plain = InteractiveObject(pred, emb)
    plain.add_click(24, 24, True)
    assert plain.refined is not None  # without a box the 1st click refines
    # the box stays a prompt: the same click without the box decodes differently
    assert not torch.equal(obj.logits, plain.logits)
    np.testing.assert_array_equal(obj.undo(), box_mask)  # undo goes back to the box's mask
    assert obj.box is not None and obj.refined is None
    obj.set_box(None)
    assert obj.box is None and not obj.mask.any()


def test_a_new_box_replays_the_clicks_on_top_of_it(fast_model):
    pred = FocSAMPredictor(fast_model)
    emb = pred.embed(blobs_stack(1, size=48)[0])
    obj = InteractiveObject(pred, emb)
    obj.add_click(20, 20, True)
    obj.add_click(5, 5, False)
    before = obj.logits.clone()
    obj.set_box((8, 8, 40, 40))
    assert [c.y for c in obj.clicks] == [20, 5] and len(obj) == 2
    assert not torch.equal(before, obj.logits)


def test_session_box_errors_and_slices(fast_model):
    s = Session(blobs_stack(6, size=40), fast_model)
    obj = s.new_object()
    with pytest.raises(ValueError, match="pass the slice z"):
        obj.set_box((5, 5, 30, 30))
    with pytest.raises(ValueError, match="zero area"):
        obj.set_box((5, 5, 30, 5), z=2)
    with pytest.raises(ValueError, match="outside the image of 40x40"):
        obj.set_box((50, 50, 60, 60), z=2)
    assert obj.box is None and obj.clicks == []  # nothing changed by the refused boxes
    m = obj.set_box((8, 8, 32, 32), z=2)
    assert obj.box == (2, Box(8.0, 8.0, 32.0, 32.0)) and m.shape == (40, 40)
    with pytest.raises(ValueError, match="box is on slice 2; a click on slice 4"):
        obj.add_click(20, 20, True, z=4)
    with pytest.raises(ValueError, match="box is on slice 2"):
        obj.set_clicks([(4, 20, 20, True)])
    obj.add_click(20, 20, True, z=2)
    assert obj.clicks == [(2, 20, 20, True)]
    obj.undo()
    assert obj.box is not None and obj.slices_with_clicks == [2]  # the box's slice stays a seed
    other = s.new_object()
    other.add_click(20, 20, True, z=1)
    with pytest.raises(ValueError, match=r"prompts on slice\(s\) \[1\]"):
        other.set_box((8, 8, 32, 32), z=3)
    result = obj.propagate()
    assert 2 in result.masks


# --------------------------------------------------------------------------- real nuclei


def _coelho(shared_data, name="dna-33"):
    import imageio.v3 as iio

    root = shared_data / "micro" / "coelho2009_gnf"
    return iio.imread(root / "images" / f"{name}.png"), iio.imread(root / "labels" / f"{name}.png")


def _nucleus_boxes(labels, n=5, margin=3):
    out = []
    for i in np.unique(labels)[1:]:
        ys, xs = np.nonzero(labels == i)
        if ys.min() < margin or xs.min() < margin or ys.max() + margin >= labels.shape[0] \
                or xs.max() + margin >= labels.shape[1]:
            continue
        out.append((int(i), (ys.min() - margin, xs.min() - margin, ys.max() + margin, xs.max() + margin)))
    return out[:: max(1, len(out) // n)][:n]


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_real_nuclei_box_plus_3px_gives_iou_085(mobile_sam, shared_data):
    img, labels = _coelho(shared_data)
    s = Session(img, mobile_sam)
    ious = []
    for i, box in _nucleus_boxes(labels):
        obj = s.new_object()
        ious.append(_iou(obj.set_box(box), labels == i))
        # a click in the middle keeps the box as a prompt and the object whole
        ys, xs = np.nonzero(labels == i)
        refined = obj.add_click(float(np.median(ys)), float(np.median(xs)), True)
        assert _iou(refined, labels == i) >= 0.8
    assert min(ious) >= 0.85, ious


def test_cli_box_on_a_real_nucleus(shared_data, tmp_path, capsys, vit_t_path):
    import tifffile

    img, labels = _coelho(shared_data, "dna-34")
    path = tmp_path / "dna.tif"
    tifffile.imwrite(path, img)
    i, (y0, x0, y1, x1) = _nucleus_boxes(labels, n=1)[0]
    out = tmp_path / "m.tif"
    assert main(["segment", str(path), "--box", f"{y0},{x0},{y1},{x1}", "--model", str(vit_t_path),
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["box"] == [y0, x0, y1, x1] and summary["clicks"] == 0
    assert _iou(tifffile.imread(out) > 0, labels == i) >= 0.85


@pytest.mark.parametrize("argv_tail, message", [
    (["--box", "5,5,5,20"], "zero area"),
    (["--box", "100,100,120,120"], "outside the image of 60x80"),
    ([], "give at least one --click Y,X or a --box"),
])
def test_cli_box_errors(tmp_path, capsys, argv_tail, message):
    import tifffile

    path = tmp_path / "g.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 4000, (60, 80), dtype=np.uint16))
    rc = main(["segment", str(path), "--out", str(tmp_path / "m.tif"), *argv_tail])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
