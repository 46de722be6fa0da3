"""Progress of long jobs reaches the GUI thread at a bounded rate (each report repaints and may
re-lay out the window), always with the final count."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")

from napari_focsam._qt.jobs import throttled  # noqa: E402


def test_progress_is_throttled_but_the_last_report_always_comes():
    seen = []
    report = throttled(lambda d, t: seen.append((d, t)), interval=3600.0)
    for done in range(1, 29):
        report(done, 28)
    assert seen == [(1, 28), (28, 28)]
    every = []
    report = throttled(lambda d, t: every.append(d), interval=0.0)
    for done in range(1, 5):
        report(done, 4)
    assert every == [1, 2, 3, 4]
