"""Large and lazy images on the command line: zarr and OME-Zarr inputs read lazily, tiles, masks
written by region, and bad input (tiling nonsense, a pyramid whose levels disagree, a store that disappears
mid-run): one-line errors, and an existing output is never lost to a failed run.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_helpers import ome_zarr, one_line, run  # noqa: E402
from lazy_helpers import make_large_zarr  # noqa: E402

import napari_focsam.core.models as models  # noqa: E402
from napari_focsam.core.images import read_image  # noqa: E402
from napari_focsam.core.outputs import write_mask, write_mask_regions

zarr = pytest.importorskip("zarr")

#: (Z, Y, X) of the "large" test stack: above the 1536 tiling threshold, 5 tiles per slice.
SHAPE = (2, 1600, 1700)
DISC = (1, 800, 900, 60)


@pytest.fixture
def big(tmp_path):
    make_large_zarr(tmp_path / "big.zarr", shape=SHAPE, chunks=(1, 512, 512), discs=(DISC,))
    return tmp_path / "big.zarr"


# --------------------------------------------------------------------------- tiling options


@pytest.mark.parametrize("options, message", [
    (["--tile-size", "100"], r"--tile-size 100 makes no sense: use a multiple of 16 within \[256, 4096\]"),
    (["--tile-size", "1000"], "--tile-size 1000 makes no sense"),
    (["--tile-size", "8192"], "--tile-size 8192 makes no sense"),
    (["--halo", "-1"], r"--halo -1 makes no sense for --tile-size 1024: use 0 <= --halo < 512"),
    (["--tile-size", "512", "--halo", "256"], "--halo 256 makes no sense for --tile-size 512"),
])
@pytest.mark.parametrize("command", ["segment", "precompute"])
def test_tiling_nonsense_is_refused_before_the_model_loads(tiny_ckpt, big, tmp_path, capsys, loads, options,
                                                           message, command):
    tail = (["--click", "800,900", "--slice", "1", "--out", tmp_path / "m.zarr"] if command == "segment"
            else ["--cache", tmp_path / "cache"])
    rc, out, err = run([command, big, "--model", tiny_ckpt, *options, *tail], capsys)
    assert rc == 2 and out == "" and loads == []
    assert re.search(message, one_line(err)), err


def test_tile_options_on_a_small_image_are_said_to_be_ignored(tiny_ckpt, tmp_path, capsys):
    img = tmp_path / "small.tif"
    tifffile.imwrite(img, np.random.default_rng(0).integers(0, 4000, (40, 48), dtype=np.uint16))
    rc, out, err = run(["segment", img, "--click", "20,20", "--model", tiny_ckpt, "--tile-size", "512",
                        "--out", tmp_path / "m.tif"], capsys)
    assert rc == 0, err
    assert "--tile-size/--halo ignored" in err and "tiling" not in json.loads(out)


# --------------------------------------------------------------------------- large zarr inputs


@pytest.mark.parametrize("prompt", [["--click", "800,900"], ["--box", "700,800,900,1000", "--click", "800,900"]])
def test_segment_a_large_zarr_slice_writes_a_zarr_mask_by_region(tiny_ckpt, big, tmp_path, capsys, prompt):
    out_path = tmp_path / "mask.zarr"
    rc, out, err = run(["segment", big, "--slice", "1", *prompt, "--model", tiny_ckpt,
                        "--out", out_path], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert info["tiling"] == {"tile_size": 1024, "halo": 256, "levels": 1} and info["shape"] == [1600, 1700]
    assert "large image (1600x1700 per slice)" in err
    mask = zarr.open_array(str(out_path), mode="r")
    assert mask.shape == (1600, 1700) and mask.dtype == np.uint8 and mask.chunks == (1024, 1024)
    assert int(np.count_nonzero(mask[:])) == info["mask_pixels"]
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


@pytest.mark.parametrize("suffix", [".tif", ".zarr", ".npy"])
def test_segment_propagate_on_a_large_zarr_writes_a_3d_mask(tiny_ckpt, big, tmp_path, capsys, suffix):
    out_path = tmp_path / f"vol{suffix}"
    rc, out, err = run(["segment", big, "--slice", "1", "--click", "800,900", "--propagate", "--no-progress",
                        "--model", tiny_ckpt, "--out", out_path], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert info["shape"] == list(SHAPE)
    if suffix == ".zarr":
        mask = zarr.open_array(str(out_path), mode="r")[:]
    elif suffix == ".npy":
        mask = np.load(out_path)
    else:
        mask = read_image(out_path)
        with tifffile.TiffFile(out_path) as tif:
            assert tif.pages[0].is_tiled
    assert mask.shape == SHAPE and int(mask.sum()) == info["mask_voxels"]
    assert int(mask.any(axis=(1, 2)).sum()) == info["slices_with_mask"]


def test_segment_propagate_reads_the_zarr_by_bounded_regions(tiny_ckpt, big, tmp_path, capsys, monkeypatch):
    from lazy_helpers import SpyArray

    import napari_focsam.core.cluster as distributed
    from napari_focsam.core.images import _pyramid as pyramid

    spies = []
    real = distributed.open_image

    def spied(path, level=None):
        spies.append(SpyArray(real(path, level)))
        return spies[-1]

    monkeypatch.setattr(distributed, "open_image", spied)
    rc, out, err = run(["segment", big, "--slice", "1", "--click", "800,900", "--propagate", "--no-progress",
                        "--model", tiny_ckpt, "--out", tmp_path / "m.tif"], capsys)
    assert rc == 0, err
    (spy,) = spies
    assert spy.requests and all(r[0][1] - r[0][0] == 1 for r in spy.requests)  # one slice per read
    assert spy.largest_request() <= pyramid.VIRTUAL_BAND_PIXELS  # tiles and bands, never more
    assert spy.whole_slice_requests() == []


def test_precompute_a_large_zarr_tile_by_tile_and_resume(tiny_ckpt, big, tmp_path, capsys):
    argv = ["precompute", big, "--cache", tmp_path / "cache", "--model", tiny_ckpt, "--no-progress"]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    first = json.loads(out)
    assert first["slices"] == 2 and first["units"] == 2 * 5 and first["computed"] == 10
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert (json.loads(out)["computed"], json.loads(out)["reused"]) == (0, 10)


def test_an_ome_zarr_pyramid_and_one_of_its_levels(tiny_ckpt, tmp_path, capsys):
    base = np.full((2, 1600, 1700), 100, np.uint16)
    base[1, 700:900, 800:1000] = 4000
    path = ome_zarr(tmp_path / "img.ome.zarr", [base, base[:, ::2, ::2].copy()])
    rc, out, err = run(["segment", path, "--slice", "1", "--click", "800,900", "--model", tiny_ckpt,
                        "--out", tmp_path / "full.tif"], capsys)
    assert rc == 0, err
    assert json.loads(out)["tiling"]["levels"] == 2 and read_image(tmp_path / "full.tif").shape == (1600, 1700)
    rc, out, err = run(["segment", path, "--level", "1", "--slice", "1", "--click", "400,450", "--model", tiny_ckpt,
                        "--out", tmp_path / "half.tif"], capsys)
    assert rc == 0, err
    assert "tiling" not in json.loads(out) and read_image(tmp_path / "half.tif").shape == (800, 850)
    rc, out, err = run(["segment", path / "1", "--slice", "1", "--click", "400,450", "--model", tiny_ckpt,
                        "--out", tmp_path / "inside.tif"], capsys)  # an array inside the group
    assert rc == 0, err
    np.testing.assert_array_equal(read_image(tmp_path / "inside.tif"), read_image(tmp_path / "half.tif"))


@pytest.mark.parametrize("make, extra, message", [
    ("bad_pyramid", [], r"pyramid level 1 has shape \(2, 800, 425\), level 0 \(2, 1600, 1700\): y shrinks by 2 "
                        r"and x by 4"),
    ("big", ["--level", "1"], "--level 1 given, but .*big.zarr is one zarr array"),
    ("pyramid", ["--level", "2"], r"--level 2 is out of range: .* has 2 levels \(0..1\)"),
    ("plain_group", [], "is a zarr group without OME-Zarr 'multiscales' metadata: name the array inside it"),
    ("plain_folder", [], "is a directory, not an image file nor a zarr array"),
    ("out_inside", [], r"--out .*ok.zarr/old.zarr is part of the input .*ok.zarr: choose a new name"),
])
def test_bad_zarr_inputs_are_one_line_errors_before_the_model_loads(tiny_ckpt, big, tmp_path, capsys, loads,
                                                                    make, extra, message):
    base = np.zeros((2, 1600, 1700), np.uint8)
    if make == "bad_pyramid":
        path = ome_zarr(tmp_path / "bad.zarr", [base, base[:, ::2, ::4].copy()])
    elif make in ("pyramid", "out_inside"):
        path = ome_zarr(tmp_path / "ok.zarr", [base, base[:, ::2, ::2].copy()])
    elif make == "plain_group":
        path = tmp_path / "g.zarr"
        zarr.open_group(str(path), mode="w").create_array("raw", shape=(8, 8), dtype="uint8")
    elif make == "plain_folder":
        path = tmp_path / "folder"
        path.mkdir()
    else:
        path = big
    out_path = tmp_path / "m.tif"
    if make == "out_inside":  # an array inside the input group, with a mask's name
        out_path = path / "old.zarr"
        zarr.create_array(str(out_path), shape=(8, 8), dtype="uint8")
    rc, out, err = run(["segment", path, *extra, "--slice", "1", "--click", "10,10", "--model", tiny_ckpt,
                        "--out", out_path], capsys)
    assert rc == 2 and out == "" and loads == []
    assert re.search(message, one_line(err)), err


def test_a_zarr_that_disappears_mid_run_fails_clearly_and_keeps_the_old_output(tiny_ckpt, big, tmp_path, capsys,
                                                                                monkeypatch):
    out_path = tmp_path / "mask.tif"
    write_mask(out_path, np.full((1600, 1700), 7, np.uint8))
    before = out_path.read_bytes()
    real = models.load_model

    def load_then_delete(*args, **kwargs):  # the store goes away after the checks, before the tiles are read
        model = real(*args, **kwargs)
        shutil.rmtree(big)
        return model

    monkeypatch.setattr(models, "load_model", load_then_delete)
    rc, out, err = run(["segment", big, "--slice", "1", "--click", "800,900", "--model", tiny_ckpt,
                        "--out", out_path], capsys)
    assert rc == 1 and out == ""
    line = one_line(err)
    assert "big.zarr has disappeared" in line and "slice 1, level" in line, line
    assert out_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]


def test_chunk_files_deleted_between_two_reads_fail_clearly_and_keep_the_old_output(tiny_ckpt, big, tmp_path,
                                                                                     capsys, monkeypatch):
    from napari_focsam.core.images import ImageVolume

    out_path = tmp_path / "vol.zarr"
    write_mask(out_path, np.ones(SHAPE, np.uint8))
    real = ImageVolume.read_region
    calls = []

    def read_then_delete(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if not calls:
            shutil.rmtree(big / "c")  # every chunk file goes after the first read; the metadata stays
        calls.append(args)
        return out

    monkeypatch.setattr(ImageVolume, "read_region", read_then_delete)
    rc, out, err = run(["segment", big, "--slice", "1", "--click", "800,900", "--propagate", "--no-progress",
                        "--model", tiny_ckpt, "--out", out_path], capsys)
    assert rc == 1 and out == ""
    assert re.search(r"the chunk file .*big.zarr/c/1/1/1 has disappeared since it was last seen", one_line(err)), err
    assert int(zarr.open_array(str(out_path), mode="r")[:].min()) == 1  # the old mask, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr", "vol.zarr"]


# --------------------------------------------------------------------------- writing masks by region


def test_a_failed_region_write_keeps_the_old_mask(tmp_path):
    for name in ("m.tif", "m.zarr", "m.npy"):
        path = tmp_path / name
        write_mask(path, np.ones((3, 40, 50), np.uint8))

        def broken(z):
            if z == 2:
                raise OSError("disk gone")
            return 5, 5, np.ones((4, 4), bool)

        with pytest.raises(OSError, match="disk gone"):
            write_mask_regions(path, (3, 40, 50), broken)
        got = zarr.open_array(str(path), mode="r")[:] if name.endswith(".zarr") else (
            np.load(path) if name.endswith(".npy") else read_image(path))
        assert got.sum() == 3 * 40 * 50, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "m.tif", "m.zarr"]


def test_region_writes_match_the_full_mask(tmp_path):
    crop = np.zeros((30, 40), bool)
    crop[3:20, 5:38] = True
    full = np.zeros((2, 300, 517), np.uint8)
    full[1, 280:300, 490:517] = crop[:20, :27]  # clipped at the border
    for name in ("a.tif", "a.zarr", "a.npy"):
        n = write_mask_regions(tmp_path / name, full.shape, lambda z: (280, 490, crop) if z == 1 else None)
        got = zarr.open_array(str(tmp_path / name), mode="r")[:] if name.endswith(".zarr") else (
            np.load(tmp_path / name) if name.endswith(".npy") else read_image(tmp_path / name))
        np.testing.assert_array_equal(got, full)
        assert n == int(full.sum())
    write_mask_regions(tmp_path / "b.png", (300, 517), lambda z: (280, 490, crop))
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), full[1])


def test_a_zarr_output_never_replaces_a_folder_that_is_not_a_zarr_array(tmp_path):
    (tmp_path / "keep.zarr").mkdir()
    (tmp_path / "keep.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="the folder exists and is not a zarr array"):
        write_mask_regions(tmp_path / "keep.zarr", (8, 8), lambda z: None)
    assert (tmp_path / "keep.zarr" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- large TIFF files


def test_a_large_tiff_is_opened_lazily_and_checked(tiny_ckpt, tmp_path, capsys, monkeypatch):
    from napari_focsam.cli import _common

    data = np.full(SHAPE, 100, np.uint16)
    data[1, 740:860, 840:960] = 4000
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib")

    def no_whole_read(p):
        raise AssertionError(f"{p} read whole")

    monkeypatch.setattr(_common, "read_input", no_whole_read)
    rc, out, err = run(["segment", path, "--slice", "1", "--click", "800,900", "--model", tiny_ckpt,
                        "--out", tmp_path / "m.zarr"], capsys)
    assert rc == 0, err
    assert json.loads(out)["tiling"]["tile_size"] == 1024
    monkeypatch.undo()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rc, out, err = run(["segment", cut, "--slice", "1", "--click", "800,900", "--model", tiny_ckpt,
                        "--out", tmp_path / "m2.zarr"], capsys)
    assert rc == 2 and "cut.tif" in one_line(err) and ("truncated" in err or "damaged" in err)
    assert len(err.strip().splitlines()) == 1, err
