"""The dock's state in one evented model, the counted foreground guard and the one ``closed``."""

from __future__ import annotations

from napari_focsam._qt.jobs import SessionJobs
from napari_focsam._qt.panels import ActionPanel, SetupPanel
from napari_focsam._qt.state import Foreground, WidgetState


def test_foreground_pauses_until_the_last_hold_is_released():
    fg = Foreground()
    a, b = fg.hold(), fg.hold()
    assert fg.event.is_set() and fg.held == 2
    a()
    a()  # releasing twice changes nothing
    assert fg.event.is_set() and fg.held == 1  # another job still runs: the background stays paused
    b()
    assert not fg.event.is_set() and fg.held == 0
    c = fg.hold()
    fg.reset()  # the dock closes: every hold is void
    d = fg.hold()
    c()  # a hold from before the reset cannot release the new one
    assert fg.event.is_set() and fg.held == 1
    d()
    assert not fg.event.is_set()


def test_panels_derive_their_buttons_from_the_state(qtbot):
    state = WidgetState()
    actions, setup = ActionPanel(), SetupPanel()
    qtbot.addWidget(actions)
    qtbot.addWidget(setup)
    actions.bind(state)
    setup.bind(state)
    assert not actions.commit_button.isEnabled() and not actions.volume_button.isEnabled()
    state.update(dict(ready=True, is_3d=True))
    assert actions.commit_button.isEnabled() and actions.volume_button.isEnabled()
    state.volume_running = True
    assert not actions.volume_button.isEnabled() and actions.cancel_button.isVisibleTo(actions)
    state.has_refiner = False
    assert not setup.refine_check.isEnabled() and setup.refine_check.text() == "none in this model"
    state.has_refiner = True
    assert setup.refine_check.isEnabled()


def test_one_closed_for_every_part():
    state = WidgetState()
    jobs = SessionJobs(state)
    assert not jobs.closed
    state.closed = True
    assert jobs.closed
    other = SessionJobs()  # a part made alone has a state of its own
    assert not other.closed and jobs.interactive is jobs.foreground.event
