"""The headless command line: `segment` contract, one-line errors, demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from conftest import make_tiny_focsam
from napari_focsam.cli import main
from napari_focsam.core.models import save_checkpoint


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, rng.integers(0, 4000, (60, 80), dtype=np.uint16))
    rgb = tmp_path / "rgb.png"
    import imageio.v3 as iio

    iio.imwrite(rgb, rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, rng.integers(0, 255, (5, 40, 30), dtype=np.uint8))
    return {"gray": gray, "rgb": rgb, "stack": stack}


def test_segment_2d_writes_mask_and_json(tiny_ckpt, images, tmp_path, capsys):
    out = tmp_path / "m.tif"
    rc = main(["segment", str(images["gray"]), "--click", "30,40", "--click", "5,5,-", "--model", str(tiny_ckpt),
               "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["clicks"] == 2 and len(summary["click_seconds"]) == 2 and "embedding_seconds" in summary
    mask = tifffile.imread(out)
    assert mask.shape == (60, 80) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


def test_segment_rgb_png_and_stack_slice(tiny_ckpt, images, tmp_path):
    assert main(["segment", str(images["rgb"]), "--click", "10,10", "--model", str(tiny_ckpt),
                 "--out", str(tmp_path / "r.png")]) == 0
    assert main(["segment", str(images["stack"]), "--slice", "4", "--click", "10,10", "--model", str(tiny_ckpt),
                 "--out", str(tmp_path / "s.tif")]) == 0
    assert tifffile.imread(tmp_path / "s.tif").shape == (40, 30)


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--click", "100,5"], "outside the image"),
        (["--click", "5,5", "--slice", "1"], "--slice 1 given, but the image is 2D"),
    ],
)
def test_segment_bad_clicks_and_slices(tiny_ckpt, images, tmp_path, capsys, argv_tail, message):
    rc = main(["segment", str(images["gray"]), "--model", str(tiny_ckpt), "--out", str(tmp_path / "x.tif"),
               *argv_tail])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and message in err and len(err.splitlines()) == 1


def test_segment_stack_errors(tiny_ckpt, images, tmp_path, capsys):
    base = ["segment", str(images["stack"]), "--click", "5,5", "--model", str(tiny_ckpt), "--out", str(tmp_path / "x.tif")]
    assert main(base) != 0
    assert "3D stack of 5 slices" in capsys.readouterr().err
    assert main(base + ["--slice", "7"]) != 0
    assert "--slice 7 is out of range: the stack has 5 slices" in capsys.readouterr().err


def test_segment_unreadable_inputs(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    for path in (bad, tmp_path / "missing.png"):
        rc = main(["segment", str(path), "--click", "1,1", "--model", str(tiny_ckpt), "--out", str(tmp_path / "x.tif")])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and err.startswith("napari-focsam: error: cannot read") and len(err.splitlines()) == 1


def test_segment_bad_model_file(images, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    rc = main(["segment", str(images["gray"]), "--click", "1,1", "--model", str(bad), "--out", str(tmp_path / "x.tif")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "bad.pt" in err and len(err.splitlines()) == 1


def test_click_syntax_is_validated(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.tif", "--click", "1;2", "--out", "y.tif"])
    assert "must be Y,X" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_with_real_weights(vit_t_path, tmp_path, capsys):
    assert main(["demo", "--model", str(vit_t_path), "--objects", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mean_iou"] >= 0.85 and (tmp_path / "demo_overlay.png").stat().st_size > 1000


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_segment_reports_the_refine_precision(images, tmp_path, capsys, precision):
    path = tmp_path / "tiny_focsam.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=2), path)
    rc = main(["segment", str(images["gray"]), "--click", "30,40", "--click", "10,12", "--model", str(path),
               "--refine-precision", precision, "--out", str(tmp_path / "m.tif")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["refine"] is True and summary["refine_precision"] == precision
