"""The command line with wrong or hostile inputs: never a plausible wrong result.

Truncated stacks, channel axes, blank images, lossy or unwritable outputs, folders and empty
files given as images, negative clicks, a complete read-only cache.
"""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import tifffile
from cli_helpers import gray, run

from napari_focsam.cli._common import join_negative_values
from napari_focsam.core.images import read_image


# --------------------------------------------------------------------------- truncated TIFF


@pytest.mark.parametrize("style", [dict(imagej=True), dict(metadata=None), dict(), dict(compression="zlib")])
def test_a_truncated_tiff_is_refused_or_read_whole(tmp_path, style):
    """At every cut of a 6-page TIFF the reader refuses the file or returns all of it: never page 1 alone."""
    stack = np.random.default_rng(1).integers(0, 255, (6, 24, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, **style)
    data = (tmp_path / "s.tif").read_bytes()
    cut_file = tmp_path / "cut.tif"
    refused = 0
    for cut in range(8, len(data), 13):
        cut_file.write_bytes(data[:cut])
        try:
            got = read_image(cut_file)
        except ValueError as exc:
            assert str(exc).startswith(f"cannot read {cut_file}: ")
            refused += 1
            continue
        np.testing.assert_array_equal(got, stack)
    assert refused > 0


def test_segment_refuses_a_truncated_multipage_tiff(tiny_ckpt, tmp_path, capsys):
    stack = np.random.default_rng(2).integers(0, 255, (6, 40, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True)
    data = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    rc, out, err = run(["segment", tmp_path / "cut.tif", "--click", "5,5", "--model", tiny_ckpt,
                        "--out", tmp_path / "m.tif"], capsys)
    assert rc == 2 and "truncated" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.tif").exists()


# --------------------------------------------------------------------------- channels


def test_a_two_channel_image_is_one_image_with_channels(tiny_ckpt, tmp_path, capsys):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.random.default_rng(3).integers(0, 4000, (40, 48, 2), dtype=np.uint16))
    rc, out, err = run(["segment", path, "--click", "20,30", "--model", tiny_ckpt, "--out", tmp_path / "m.tif"],
                       capsys)
    assert rc == 0, err
    assert json.loads(out)["shape"] == [40, 48] and tifffile.imread(tmp_path / "m.tif").shape == (40, 48)
    assert "2 channels" in err  # what was assumed is said


def test_a_two_channel_stack_propagates_with_a_3d_mask(tiny_ckpt, tmp_path, capsys):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.random.default_rng(4).integers(0, 4000, (3, 32, 36, 2), dtype=np.uint16))
    rc, out, err = run(["segment", path, "--slice", "1", "--click", "16,16", "--propagate", "--no-progress",
                        "--model", tiny_ckpt, "--out", tmp_path / "m.tif"], capsys)
    assert rc == 0, err
    assert tifffile.imread(tmp_path / "m.tif").shape == (3, 32, 36) and "2 channels" in err


@pytest.mark.parametrize("flag, vote", [([], True), (["--no-vote"], False)])
def test_the_vote_between_slices_can_be_turned_off(tiny_ckpt, tmp_path, capsys, monkeypatch, flag, vote):
    from napari_focsam.core.session import _slices

    seen, real = [], _slices.propagate
    monkeypatch.setattr(_slices, "propagate", lambda *a, **k: seen.append(k["vote"]) or real(*a, **k))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(4).integers(0, 4000, (3, 32, 36), dtype=np.uint16))
    rc, out, err = run(["segment", path, "--slice", "1", "--click", "16,16", "--propagate", "--no-progress", *flag,
                        "--model", tiny_ckpt, "--out", tmp_path / "m.tif"], capsys)
    assert rc == 0, err
    assert seen == [vote]


@pytest.mark.parametrize("flag, zoomed", [([], True), (["--no-zoom"], False)])
def test_a_small_object_is_zoomed_unless_no_zoom(vit_t_path, tmp_path, capsys, monkeypatch, flag, zoomed):
    from napari_focsam.core.prompting import ZoomedObject
    from napari_focsam.core.session import _slices

    made = []

    class Spy(ZoomedObject):
        def add(self, click):
            out = super().add(click)
            made.append(self.window)
            return out

    monkeypatch.setattr(_slices, "ZoomedObject", Spy)
    img = np.random.default_rng(5).normal(90, 10, (1024, 1024)).clip(0, 255).astype(np.uint8)
    yy, xx = np.ogrid[:1024, :1024]
    cell = (yy - 600) ** 2 + (xx - 420) ** 2 <= 14 ** 2
    img[cell] = 190
    path = tmp_path / "em.tif"
    tifffile.imwrite(path, img)
    rc, out, err = run(["segment", path, "--click", "600,420", *flag, "--model", vit_t_path,
                        "--out", tmp_path / "m.tif"], capsys)
    assert rc == 0, err
    mask = tifffile.imread(tmp_path / "m.tif").astype(bool)
    assert mask[600, 420] and (mask & cell).sum() / (mask | cell).sum() > 0.7
    assert (len(made) == 1 and made[0] is not None) if zoomed else made == []


# --------------------------------------------------------------------------- blank images


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_a_blank_or_nan_image_gives_an_empty_mask_and_a_warning(tiny_ckpt, tmp_path, capsys, fill):
    path = tmp_path / "blank.tif"
    tifffile.imwrite(path, np.full((40, 48), fill, np.float32))
    rc, out, err = run(["segment", path, "--click", "20,30", "--model", tiny_ckpt, "--out", tmp_path / "m.tif"],
                       capsys)
    assert rc == 0, err
    assert json.loads(out)["mask_pixels"] == 0 and not tifffile.imread(tmp_path / "m.tif").any()
    assert "warning" in err and "blank" in err


# --------------------------------------------------------------------------- the output path


@pytest.mark.parametrize("name, extra, message", [
    ("m.jpg", [], "lossy"),
    ("m.JPEG", [], "lossy"),
    ("m.webp", [], "lossy"),
    ("m.xyz", [], "unknown mask format"),
    ("mask", [], "no file suffix"),
    ("missing/m.tif", [], "does not exist"),
    ("m.png", ["--propagate", "--slice", "1"], "2D masks only"),
])
def test_bad_outputs_are_refused_before_any_work(tiny_ckpt, tmp_path, capsys, loads, name, extra, message):
    image = tmp_path / "stack.tif" if extra else gray(tmp_path)
    if extra:
        tifffile.imwrite(image, np.zeros((3, 32, 32), np.uint8))
    rc, _, err = run(["segment", image, "--click", "5,5", "--model", tiny_ckpt, "--out", tmp_path / name, *extra],
                     capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert loads == []  # refused before the model was loaded
    assert not any(p.name.startswith("m.") for p in tmp_path.iterdir())


def test_outputs_that_are_a_folder_a_read_only_folder_or_the_input(tiny_ckpt, tmp_path, capsys, loads):
    image = gray(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for out, message in [(tmp_path, "is a directory"), (ro / "m.tif", "read-only"), (image, "input image")]:
            rc, _, err = run(["segment", image, "--click", "5,5", "--model", tiny_ckpt, "--out", out], capsys)
            assert rc == 2 and message in err, err
    finally:
        ro.chmod(stat.S_IRWXU)
    assert loads == []


@pytest.mark.parametrize("suffix", [".npy", ".tiff", ".png", ".zarr"])
def test_lossless_outputs_hold_the_exact_mask(tiny_ckpt, tmp_path, capsys, suffix):
    out = tmp_path / f"m{suffix}"
    rc, stdout, err = run(["segment", gray(tmp_path), "--click", "20,20", "--model", tiny_ckpt, "--out", out],
                          capsys)
    assert rc == 0, err
    if suffix == ".zarr":
        import zarr

        mask = zarr.open_array(str(out), mode="r")[:]
    else:
        mask = np.load(out) if suffix == ".npy" else read_image(out)
    assert mask.shape == (40, 48) and mask.dtype == np.uint8 and int(mask.sum()) == json.loads(stdout)["mask_pixels"]


# --------------------------------------------------------------------------- poor messages


def test_a_folder_given_as_the_image_is_named_a_folder(tiny_ckpt, tmp_path, capsys):
    rc, _, err = run(["segment", tmp_path, "--click", "1,1", "--model", tiny_ckpt, "--out", tmp_path / "m.tif"],
                     capsys)
    assert rc == 2 and "is a directory" in err and "no such file" not in err


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "PNG")])
def test_an_empty_or_corrupt_png_says_so(tiny_ckpt, tmp_path, capsys, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    rc, _, err = run(["segment", path, "--click", "1,1", "--model", tiny_ckpt, "--out", tmp_path / "m.tif"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "plugin" not in err and "pip install" not in err


@pytest.mark.parametrize("click", [["--click", "-1,39"], ["--click=-1,39"], ["--click", "5,-3.5"],
                                   ["--click", "-.5,-2,-"]])
def test_negative_clicks_reach_the_image_check(tiny_ckpt, tmp_path, capsys, loads, click):
    rc, _, err = run(["segment", gray(tmp_path), *click, "--model", tiny_ckpt, "--out", tmp_path / "m.tif"], capsys)
    assert rc == 2 and "outside the image of 40x48 pixels" in err
    assert loads == []


def test_negative_values_are_joined_to_their_option_only():
    assert join_negative_values(["--click", "-1,3", "--slice", "-1", "--contrast-limits", "-5,10"]) == [
        "--click=-1,3", "--slice", "-1", "--contrast-limits=-5,10"]
    assert join_negative_values(["--click", "--out"]) == ["--click", "--out"]
    assert join_negative_values(["--", "--click", "-1,3"]) == ["--", "--click", "-1,3"]


def test_precompute_on_a_complete_read_only_cache_has_nothing_to_do(tiny_ckpt, tmp_path, capsys):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.random.default_rng(5).integers(0, 255, (3, 32, 32), dtype=np.uint8))
    cache = tmp_path / "cache"
    argv = ["precompute", stack, "--cache", cache, "--model", tiny_ckpt, "--no-progress"]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    first = json.loads(out)
    modes = {p: p.stat().st_mode for p in [cache, *cache.rglob("*")]}
    for p in sorted(modes, key=lambda p: -len(p.parts)):
        p.chmod(stat.S_IMODE(modes[p]) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        rc, out, err = run(argv, capsys)
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))
    assert rc == 0, err
    info = json.loads(out)
    assert (info["computed"], info["reused"], info["cache"]) == (0, 3, first["cache"])
    assert "nothing to do" in err


def test_2d_segment_runs_through_the_session_with_its_cache(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """The 2D path is the engine's Session (one click loop): its embedding cache works for 2D too."""
    from napari_focsam.core.session import _session as S

    made = []
    real_new_object = S.Session.new_object

    def spy(self):
        made.append(self)
        return real_new_object(self)

    monkeypatch.setattr(S.Session, "new_object", spy)
    argv = ["segment", gray(tmp_path), "--click", "20,20", "--click", "5,5,-", "--model", tiny_ckpt,
            "--cache", tmp_path / "cache", "--out", tmp_path / "m.tif"]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert len(made) == 1 and made[0].store.stats["computed"] == 1
    assert len(list((tmp_path / "cache").glob("*.zarr"))) == 1
    rc, out2, err = run(argv, capsys)  # the second run reads the embedding from the cache
    assert rc == 0 and made[1].store.stats["computed"] == 0
    assert json.loads(out2)["mask_pixels"] == json.loads(out)["mask_pixels"]
