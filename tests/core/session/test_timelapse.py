"""Stacks in time: ids through frames, objects added later, a division in one click,
the labels stack and the tracks table; the z-profile and re-propagation API for the widget.

The decoder is scripted: a frame's mask is the union of its true cells that overlap the
previous frame's mask, and a click selects the true cell under it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import make_fast_focsam  # noqa: E402

from napari_focsam.core.session import _timelapse as TL  # noqa: E402
from napari_focsam.core.propagation import _plain as V  # noqa: E402
from napari_focsam.core.prompting import FocSAMPredictor, StepResult  # noqa: E402
from napari_focsam.core.propagation._profile import object_profile  # noqa: E402
from napari_focsam.core.propagation import repropagate
from napari_focsam.core.session import Session  # noqa: E402
from napari_focsam.core.session import TimeLapse, check_axes, tracks_table, write_tracks_csv  # noqa: E402

T, S = 6, 32


def disc(r, cy, cx):
    yy, xx = np.mgrid[:S, :S]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


def movie_truth():
    """Frame -> list of true cells: A in frames 0-2 divides into two daughters in frames 3-5;
    B appears in frame 2."""
    truth = {}
    for t in range(T):
        cells = [disc(7, 16, 16)] if t < 3 else [disc(5, 22, 9), disc(5, 22, 23)]
        if t >= 2:
            cells.append(disc(4, 6, 26))
        truth[t] = cells
    return truth


@pytest.fixture(scope="module")
def fast_model():
    return make_fast_focsam()


@pytest.fixture
def scripted(monkeypatch):
    truth = movie_truth()

    def fake_next_slice(predictor, emb, prev_mask, prev_logits, prompt=None, multimask=None, refine=False,
                        offset=0.0, confidence=None):
        out = np.zeros((S, S), bool)
        for cell in truth[emb.z]:
            if (cell & prev_mask).any():
                out |= cell
        return out, torch.zeros(1, 1, 256, 256)

    def fake_step(self, embedding, clicks, prev_logits=None, refined=None, *, box=None):
        out = np.zeros((S, S), bool)
        for c in clicks:
            for cell in truth[embedding.z]:
                if cell[int(round(c.y)), int(round(c.x))]:
                    out = out | cell if c.is_positive else out & ~cell
        logits = torch.ones(1, 1, 256, 256) if out.any() else None
        return StepResult(out, logits, refined, 0.0)

    monkeypatch.setattr(V, "next_slice_scored", lambda *a, **k: (*fake_next_slice(*a, **k), 0.9))
    monkeypatch.setattr(TL, "next_slice", fake_next_slice)
    monkeypatch.setattr(FocSAMPredictor, "step", fake_step)
    return truth


@pytest.fixture
def movie(fast_model):
    return TimeLapse(np.random.default_rng(0).random((T, S, S)).astype(np.float32), fast_model, axes="tyx")


def test_axes_are_checked():
    assert check_axes("TYX", (3, 8, 8)) == "tyx"
    with pytest.raises(ValueError, match="needs a 4D image"):
        check_axes("tzyx", (3, 8, 8))
    with pytest.raises(ValueError, match="not a time-lapse order"):
        check_axes("zyx", (3, 8, 8))


def test_ids_are_kept_through_time_and_objects_can_be_added_later(movie, scripted):
    a = movie.add_object(0, 16, 16)
    assert movie.propagate() == {a: (0, 2)}  # the division changes the shape: the track stops
    assert movie.propagate(iou_threshold=0.0) == {a: (0, 5)}  # or, told so, follows both daughters
    b = movie.add_object(4, 6, 26)  # a new cell, clicked on a later frame
    spans = movie.propagate([b])
    assert spans == {b: (2, 5)}  # followed backwards to where it appears
    labels = movie.labels()
    assert labels.shape == (T, S, S) and labels.dtype == np.uint32
    assert all((labels[t] == b).sum() == scripted[t][-1].sum() for t in range(2, T))
    assert set(np.unique(labels[0])) == {0, a}


def test_a_division_is_split_with_one_click(movie, scripted, tmp_path):
    a = movie.add_object(0, 16, 16)
    movie.propagate()
    assert movie.propagate(iou_threshold=0.0)[a] == (0, 5)
    d1, d2 = movie.split(a, 3, 22, 9)  # one click on the left daughter
    spans = movie.propagate()
    assert spans[a] == (0, 2)  # the parent ends before the division
    assert spans[d1] == (3, 5) and spans[d2] == (3, 5)  # followed forwards only
    assert movie.tracks[d1].parent == a and movie.tracks[d2].parent == a
    labels = movie.labels()
    assert (labels[4] == d1).sum() == scripted[4][0].sum() and (labels[4] == d2).sum() == scripted[4][1].sum()
    rows = tracks_table(labels, {i: tr.parent for i, tr in movie.tracks.items()})
    assert {(r["object_id"], r["t"]) for r in rows} == {(a, 0), (a, 1), (a, 2), (d1, 3), (d1, 4), (d1, 5),
                                                        (d2, 3), (d2, 4), (d2, 5)}
    row = next(r for r in rows if r["object_id"] == d1 and r["t"] == 3)
    assert row["parent_id"] == a and row["z"] is None
    assert abs(row["y"] - 22) < 0.5 and abs(row["x"] - 9) < 0.5
    path = write_tracks_csv(tmp_path / "tracks.csv", rows)
    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["object_id", "t", "y", "x", "area", "parent_id"] and len(table) == 10


def test_a_split_needs_a_click_on_the_object(movie, scripted):
    a = movie.add_object(0, 16, 16)
    movie.propagate()
    with pytest.raises(ValueError, match="not on object"):
        movie.split(a, 3, 2, 2)
    with pytest.raises(ValueError, match="later frame"):
        movie.split(a, 0, 16, 16)


def test_labels_never_overlap(movie, scripted):
    a = movie.add_object(3, 22, 9)
    b = movie.add_object(3, 22, 9)  # the same cell twice: the first id keeps it
    movie.propagate()
    labels = movie.labels()
    assert (labels[3] == a).sum() == scripted[3][0].sum() and not (labels == b).any()


def test_a_4d_movie_is_followed_frame_by_frame(fast_model, scripted, monkeypatch):
    image = np.random.default_rng(0).random((3, 4, S, S)).astype(np.float32)
    image[2] = 0.0  # a blank frame: the object ends before it
    truth = {z: [disc(6, 16, 16)] for z in range(4)}
    scripted.clear()
    scripted.update(truth)
    movie = TimeLapse(image, fast_model, axes="tzyx")
    with pytest.raises(ValueError, match="slice z"):
        movie.add_object(0, 16, 16)
    a = movie.add_object(0, 16, 16, z=1)
    assert movie.propagate() == {a: (0, 1)}
    labels = movie.labels()
    assert labels.shape == image.shape and (labels[1] == a).sum() == 4 * truth[0][0].sum()
    rows = tracks_table(labels)
    assert [r["t"] for r in rows] == [0, 1] and rows[0]["z"] == pytest.approx(1.5)


# --------------------------------------------------------------------------- widget-facing API


def test_profile_and_repropagate_report_anchors_stops_and_changed_slices(fast_model, scripted):
    session = Session(np.random.default_rng(1).random((T, S, S)).astype(np.float32), fast_model)
    obj = session.new_object()
    obj.add_click(16, 16, z=0)
    result, changed = repropagate(obj, iou_threshold=0.0)
    assert changed == [1, 2, 3, 4, 5] and result.z_range == (0, 5)  # the clicked slice is unchanged
    prof = object_profile(obj)
    assert prof.anchors == [0] and prof.stops == [] and prof.z_range == (0, 5)
    assert prof.areas[0] == scripted[0][0].sum() and prof.areas[4] == scripted[4][0].sum() + scripted[4][1].sum()
    centre = V.interior_point(obj.mask(3))
    obj.add_click(*centre, False, z=3)  # stop here
    _, changed = repropagate(obj, iou_threshold=0.0)
    assert changed == [4, 5]  # slice 3 emptied at the click itself
    prof = object_profile(obj)
    assert prof.anchors == [0, 3] and prof.stops == [3] and prof.z_range == (0, 2)
    assert list(prof.areas[3:]) == [0, 0, 0]
    assert ndi.label(obj.volume_mask())[1] == 1


# --------------------------------------------------------------------------- command line


def test_track_command_writes_labels_and_tracks(scripted, tiny_ckpt, tmp_path, capsys):
    import json

    import tifffile

    from napari_focsam.cli import main

    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, np.random.default_rng(0).random((T, S, S)).astype(np.float32))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("index,axis-0,axis-1,axis-2\n0,0,16,16\n1,4,6,26\n")
    divide = tmp_path / "divide.csv"
    divide.write_text("index,axis-0,axis-1,axis-2\n0,3,22,9\n")
    out, tracks = tmp_path / "labels.tif", tmp_path / "tracks.csv"
    rc = main(["track", str(movie), "--axes", "TYX", "--points", str(seeds), "--divide", str(divide),
               "--out", str(out), "--tracks", str(tracks), "--model", str(tiny_ckpt), "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["objects"] == 4 and summary["divisions"] == 1
    labels = tifffile.imread(out)
    assert labels.shape == (T, S, S)
    frames = {i: sorted({int(t) for t in np.flatnonzero((labels == i).any(axis=(1, 2)))}) for i in (1, 2, 3, 4)}
    assert frames == {1: [0, 1, 2], 2: [2, 3, 4, 5], 3: [3, 4, 5], 4: [3, 4, 5]}
    with open(tracks, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["parent_id"] for r in rows if r["object_id"] in ("3", "4")} == {"1"}
    assert len(rows) == 3 + 4 + 3 + 3


def test_track_command_checks_the_axes(tiny_ckpt, tmp_path, capsys):
    import tifffile

    from napari_focsam.cli import main

    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, np.zeros((T, S, S), np.float32))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("index,axis-0,axis-1,axis-2\n0,0,16,16\n")
    rc = main(["track", str(movie), "--axes", "tzyx", "--points", str(seeds), "--out", str(tmp_path / "l.tif"),
               "--model", str(tiny_ckpt)])
    assert rc == 2 and "needs a 4D image" in capsys.readouterr().err


def test_the_stop_settings_reach_every_propagation_of_a_movie(fast_model, scripted, tiny_ckpt, tmp_path, capsys,
                                                               monkeypatch):
    """``edge_fade`` (the out-of-focus stop) goes with ``iou_threshold`` to every propagation: along
    t in a (T, Y, X) movie, along z in each frame and from frame to frame in a (T, Z, Y, X) one,
    and from the ``track`` command; out of range, the command refuses it."""
    import tifffile

    from napari_focsam.cli import main
    from napari_focsam.core.session._objects import SegmentedObject

    seen = []
    real = SegmentedObject.propagate
    monkeypatch.setattr(SegmentedObject, "propagate",
                        lambda self, *a, **k: seen.append((k.get("iou_threshold"), k.get("edge_fade"))) or
                        real(self, *a, **k))
    image = np.random.default_rng(0).random((3, 4, S, S)).astype(np.float32)
    scripted.clear()
    scripted.update({z: [disc(6, 16, 16)] for z in range(4)})
    movie = TimeLapse(image, fast_model, axes="tzyx")
    movie.add_object(0, 16, 16, z=1)
    movie.propagate(iou_threshold=0.4, edge_fade=0.3)
    assert len(seen) == 3 and set(seen) == {(0.4, 0.3)}  # frame 0 along z, then frames 1 and 2
    seen.clear()
    scripted.clear()
    scripted.update(movie_truth())
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((T, S, S)).astype(np.float32))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("index,axis-0,axis-1,axis-2\n0,0,16,16\n")
    base = ["track", str(path), "--axes", "TYX", "--points", str(seeds), "--out", str(tmp_path / "l.tif"),
            "--model", str(tiny_ckpt), "--no-progress"]
    assert main(base + ["--edge-fade", "0"]) == 0 and set(seen) == {(0.65, 0.0)}
    assert main(base + ["--edge-fade", "1"]) == 2 and "--edge-fade 1 is out of range: it must be within [0, 1)" in capsys.readouterr().err


def test_frames_in_time_are_not_voted_with_their_neighbours(movie, scripted, monkeypatch):
    """Objects move between frames: a (T, Y, X) movie is propagated along t without the vote
    between slices that a z-stack gets."""
    from napari_focsam.core.session import _slices

    seen = []
    real = _slices.propagate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("vote"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_slices, "propagate", spy)
    a = movie.add_object(0, 16, 16)
    assert movie.propagate(iou_threshold=0.0)[a] == (0, 5)
    assert seen == [False]
