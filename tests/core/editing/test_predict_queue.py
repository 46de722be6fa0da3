"""The Qt-free scheduling of the widget's predictions (core.interaction.PredictQueue)."""

from __future__ import annotations

import doctest

import numpy as np

import pytest

from napari_focsam.core.editing import PredictQueue, _predict_queue as interaction
from napari_focsam.core.editing._predict_queue import Outcome


def test_module_example():
    assert doctest.testmod(interaction).failed == 0


def test_one_in_flight_newest_points_win():
    q = PredictQueue()
    assert q.points_changed() and q.busy and not q.running
    t1 = q.start()
    assert q.running and not q.dirty
    with pytest.raises(RuntimeError, match="already in flight"):
        q.start()
    # three edits while t1 runs: none starts, all are sent together afterwards
    assert [q.points_changed() for _ in range(3)] == [False, False, False]
    assert not q.is_current(t1)
    assert q.finish(t1) == Outcome(start_next=True)  # stale result dropped
    t2 = q.start()
    assert q.is_current(t2)
    assert q.finish(t2) == Outcome(show=True)
    assert not q.busy
    assert q.finish(t2) == Outcome()  # a second report of the same job is ignored


def test_pending_commit_fires_once_on_the_newest_mask():
    q = PredictQueue()
    q.points_changed()
    t = q.start()
    assert not q.request_commit() and q.commit_pending
    assert not q.request_commit()  # asking twice still commits once
    assert q.finish(t) == Outcome(show=True, commit=True)
    assert not q.commit_pending
    # nothing runs: a commit runs at once
    assert q.request_commit() and not q.commit_pending


def test_pending_commit_waits_for_queued_points():
    q = PredictQueue()
    q.points_changed()
    t1 = q.start()
    q.points_changed()  # newer points wait
    assert not q.request_commit()
    assert q.finish(t1) == Outcome(start_next=True)
    assert q.commit_pending
    assert q.finish(q.start()) == Outcome(show=True, commit=True)


def test_commit_pending_before_the_first_start():
    q = PredictQueue()
    q.points_changed()  # queued, not started yet (e.g. model loading)
    assert not q.request_commit()
    assert q.finish(q.start()) == Outcome(show=True, commit=True)


def test_failure_and_clear_drop_the_pending_commit():
    q = PredictQueue()
    q.points_changed()
    t = q.start()
    q.request_commit()
    assert q.finish(t, ok=False) == Outcome()
    assert not q.commit_pending and not q.busy

    q.points_changed()
    t = q.start()
    q.request_commit()
    q.new_object()  # clear or commit meanwhile
    assert not q.commit_pending
    assert q.finish(t) == Outcome()  # belongs to the old object: not shown


def test_nothing_to_predict_releases_a_pending_commit():
    q = PredictQueue()
    q.points_changed()
    q.request_commit()
    assert q.nothing_to_predict() is True
    assert not q.busy and not q.commit_pending
    q.points_changed()
    assert q.nothing_to_predict() is False


def test_rerun_and_supersede_make_running_results_stale():
    q = PredictQueue()
    q.points_changed()
    t = q.start()
    assert not q.rerun()  # a setting changed: same points on a fresh object, after t
    assert q.finish(t) == Outcome(start_next=True)
    t2 = q.start()
    job = q.supersede()  # a volume propagation takes the points
    assert q.is_current(job) and not q.is_current(t2)
    assert q.finish(t2) == Outcome()


def test_split_objects_finds_positive_clicks_on_separate_pieces():
    from napari_focsam.core.editing import split_objects

    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True
    mask[12:18, 12:18] = True
    two = [(0, 3, 3, True), (0, 15, 15, True)]
    assert split_objects(two, {0: mask}) == [0]
    assert split_objects([(0, 3, 3, True), (0, 4, 4, True)], {0: mask}) == []  # one piece
    assert split_objects([(0, 3, 3, True), (0, 15, 15, False)], {0: mask}) == []  # a negative click
    joined = mask.copy()
    joined[5:13, 4] = True
    joined[12, 4:13] = True
    assert split_objects(two, {0: joined}) == []  # one connected object
    assert split_objects([(1, 3, 3, True), (1, 15, 15, True)], {0: mask, 1: mask}) == [1]


def test_eta_from_the_mean_step_time():
    from napari_focsam.core.editing import Eta

    eta = Eta(60, now=100.0)
    assert eta.update(0, now=101.0) is None and Eta.text(None) == ""
    assert eta.update(10, now=120.0) == 100.0
    assert Eta.text(100.0) == "about 2 min left" and Eta.text(12.4) == "about 12 s left"
    assert eta.update(60, now=200.0) == 0.0
