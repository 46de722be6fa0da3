"""A later click on a clicked slice of a stack, checked against the object's neighbouring sections.

The decoder's candidates are scripted (three discs of known size), so that the rule's choice is
known; the session test drives the real click loop of a small random model and replaces only
the candidates' decoding.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
from engine_helpers import make_fast_focsam  # noqa: E402

from napari_focsam.core.propagation import _context as C  # noqa: E402
from napari_focsam.core.propagation import fits_neighbours, neighbour_answer  # noqa: E402
from napari_focsam.core.prompting import Click, InteractiveObject, logits_to_mask  # noqa: E402
from napari_focsam.core.session import Session  # noqa: E402

S = 64


def disc_logits(r: float, cy: float = 32, cx: float = 32) -> torch.Tensor:
    """(1, 1, 256, 256) logits of a disc of radius ``r`` image pixels on a 64 x 64 image (4 logits
    per pixel: the image fills the canvas)."""
    yy, xx = np.mgrid[:256, :256]
    inside = ((yy + 0.5) / 4 - cy) ** 2 + ((xx + 0.5) / 4 - cx) ** 2 < r ** 2
    return torch.from_numpy(np.where(inside, 8.0, -8.0).astype(np.float32))[None, None]


def disc(r: float, cy: float = 32, cx: float = 32) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


@pytest.fixture
def candidates(monkeypatch):
    """The decoder's three candidates: discs of radius 6, 12 and 30 around the centre."""
    calls = []

    def fake(predictor, embedding, points, box=None, mask_input=None, *, multimask=False, features=None):
        calls.append(list(points))
        logits = torch.cat([disc_logits(6), disc_logits(12), disc_logits(30)], dim=1)
        return SimpleNamespace(logits=logits, iou=torch.tensor([[0.4, 0.5, 0.9]]), token=None)

    monkeypatch.setattr(C, "decoder_outputs", fake)
    return calls


def embedding():
    return SimpleNamespace(input_size=(1024, 1024), original_size=(S, S))


def test_the_band_is_half_the_smaller_to_twice_the_larger_neighbour():
    a, b = np.zeros((S, S), bool), np.zeros((S, S), bool)
    a.flat[:100], b.flat[:300] = True, True
    assert fits_neighbours(50, [a, b]) and fits_neighbours(600, [a, b])
    assert not fits_neighbours(49, [a, b]) and not fits_neighbours(601, [a, b])
    assert fits_neighbours(10_000, [])


def test_a_mask_far_larger_than_its_neighbours_is_replaced_by_the_fitting_candidate(candidates):
    clicks = [Click(32, 32, True), Click(30, 34, True)]
    neighbours = [disc(11), disc(13)]
    got = neighbour_answer(None, embedding(), clicks, disc(30), neighbours)
    assert got is not None
    mask = logits_to_mask(got, (1024, 1024), (S, S))
    assert abs(int(mask.sum()) - int(disc(12).sum())) < 40  # the radius-12 disc, not 6 (too small) or 30
    assert candidates == [[(32, 32, True), (30, 34, True)]]


def test_a_mask_that_fits_its_neighbours_is_kept_without_decoding(candidates):
    fetched = []

    def lazy():  # the slice's embedding, fetched only to decode the candidates
        fetched.append(1)
        return embedding()

    assert neighbour_answer(None, lazy, [Click(32, 32, True)], disc(12), [disc(11), disc(13)]) is None
    assert neighbour_answer(None, lazy, [Click(32, 32, True)], disc(30), [None, np.zeros((S, S), bool)]) is None
    assert candidates == [] and fetched == []
    assert neighbour_answer(None, lazy, [Click(32, 32, True)], disc(30), [disc(11), disc(13)]) is not None
    assert fetched == [1]


def test_no_candidate_that_contradicts_a_click_is_taken(candidates):
    # a negative click inside the radius-12 disc: it may not be the answer; the radius-6 disc is
    # too small for the band, so the loop's answer stays
    clicks = [Click(32, 32, True), Click(32, 41, False)]
    assert neighbour_answer(None, embedding(), clicks, disc(30), [disc(11), disc(13)]) is None


def test_replace_last_swaps_the_answer_and_undo_still_removes_the_click():
    model = make_fast_focsam()
    from napari_focsam.core.prompting import FocSAMPredictor

    pred = FocSAMPredictor(model)
    obj = InteractiveObject(pred, pred.embed(np.random.default_rng(0).random((S, S)).astype(np.float32)))
    with pytest.raises(ValueError, match="no click"):
        obj.replace_last(disc_logits(5))
    obj.add(Click(32, 32, True))
    first = obj.mask.copy()
    obj.add(Click(20, 20, True))
    token = obj.token
    mask = obj.replace_last(disc_logits(10))
    assert np.array_equal(mask, obj.mask) and abs(int(mask.sum()) - int(disc(10).sum())) < 40
    assert obj.token != token and len(obj) == 2 and torch.equal(obj.logits, disc_logits(10))
    obj.undo()
    assert np.array_equal(obj.mask, first)


@pytest.fixture
def session():
    s = Session(np.random.default_rng(1).random((5, S, S)).astype(np.float32), make_fast_focsam())
    yield s
    s.close()


@pytest.fixture
def loop_answers(monkeypatch):
    """The click loop answers each click with a disc of the next radius in the list."""
    radii = []
    real_add = InteractiveObject.add

    def add(self, click):
        res = real_add(self, click)
        self.replace_last(disc_logits(radii.pop(0)))
        return res

    monkeypatch.setattr(InteractiveObject, "add", add)
    return radii


def test_a_later_click_is_fitted_to_the_sections_clicked_next_to_it(session, candidates, loop_answers, caplog):
    obj = session.new_object()
    loop_answers += [11, 13, 11, 30]  # slices 1 and 3, then slice 2 twice: the second answer jumps
    obj.add_click(32, 32, True, z=1)
    obj.add_click(32, 32, True, z=3)
    obj.add_click(32, 32, True, z=2)
    assert candidates == []  # a first click is the loop's
    with caplog.at_level("INFO", logger="napari_focsam.core.session"):
        mask = obj.add_click(30, 34, True, z=2)
    assert abs(int(mask.sum()) - int(disc(12).sum())) < 40  # the radius-12 candidate, not the loop's 30
    assert "slice 2" in caplog.text and "candidate that fits" in caplog.text
    assert len(candidates) == 1 and len(obj.history(2)) == 2
    assert abs(int(obj.undo(z=2).sum()) - int(disc(11).sum())) < 40
    # on the stack's last slice (no slice above it)
    loop_answers += [11, 30]
    obj.add_click(32, 32, True, z=4)
    assert abs(int(obj.add_click(30, 34, True, z=4).sum()) - int(disc(12).sum())) < 40  # slice 3 is clicked
    # with the rule off the loop's answer stays
    session.fit_neighbours = False
    loop_answers.append(30)
    assert int(obj.add_click(30, 34, True, z=2).sum()) > 2 * int(disc(12).sum())


def test_propagated_neighbours_do_not_hold_a_growing_object_back(session, candidates, loop_answers, monkeypatch):
    # one click gave a part; the propagation repeated it on the slices around; a second click on
    # the same slice grows it to the whole object: kept (the neighbours echo the old answer)
    obj = session.new_object()
    loop_answers += [8]
    obj.add_click(32, 32, True, z=2)
    obj.propagate()
    for z in (1, 3):  # the part, as the propagation repeats it next to its slice
        monkeypatch.setitem(obj.last_propagation.masks, z, disc(8))
    assert obj.slice_mask(1).sum() == disc(8).sum()
    loop_answers.append(30)
    assert int(obj.add_click(20, 32, True, z=2).sum()) > 2 * int(disc(12).sum())
    assert candidates == []


def test_a_2d_image_is_never_fitted(candidates):
    with Session(np.random.default_rng(1).random((S, S)).astype(np.float32), make_fast_focsam(), zoom=False) as s:
        obj = s.new_object()
        obj.add_click(32, 32, True)
        obj.add_click(30, 34, True)
    assert candidates == []


def test_clicks_taken_back_are_left_out_of_the_candidates_prompt(candidates):
    # a positive click on a second structure, then a negative one on the same pixel: taken back
    clicks = [Click(32, 32, True), Click(10, 10, True), Click(10.2, 9.9, False), Click(30, 34, True)]
    got = neighbour_answer(None, embedding(), clicks, disc(30), [disc(11), disc(13)])
    assert got is not None
    assert candidates == [[(32, 32, True), (10.2, 9.9, False), (30, 34, True)]]
    # nothing positive left: the loop's (empty) answer stays, nothing decoded
    assert neighbour_answer(None, embedding(), [Click(32, 32, True), Click(32, 32, False)], disc(0),
                            [disc(11)]) is None
    assert len(candidates) == 1
