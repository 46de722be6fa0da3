"""The compute thread: every job on one long-lived thread, in order, results and errors passed back."""

from __future__ import annotations

import threading

import pytest

from napari_focsam.core.models import ComputeThread, compute_thread


def test_jobs_run_on_one_thread_in_order_from_any_thread():
    ct = ComputeThread(name="test-compute")
    try:
        seen: list[tuple[int, str]] = []

        def job(i):
            seen.append((i, threading.current_thread().name))
            return i * i

        results = []
        callers = [threading.Thread(target=lambda i=i: results.append(ct.run(job, i))) for i in range(6)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert sorted(results) == [i * i for i in range(6)]
        names = {name for _, name in seen}
        assert len(names) == 1 and next(iter(names)).startswith("test-compute")
        assert not ct.is_current  # the test's own thread is not it
        assert ct.run(lambda: ct.is_current)
    finally:
        ct.shutdown()


def test_nested_calls_run_inline_and_errors_reach_the_caller():
    ct = ComputeThread()
    try:
        # a job that asks the compute thread again must not wait for itself
        assert ct.run(lambda: ct.run(lambda: threading.get_ident())) == ct.run(threading.get_ident)
        with pytest.raises(ZeroDivisionError):
            ct.run(lambda: 1 / 0)
        nested = ct.run(lambda: ct.submit(lambda: 1 / 0))  # inline submit: the error is in the future
        assert isinstance(nested.exception(), ZeroDivisionError)
        assert ct.run(len, [1, 2, 3]) == 3  # the thread survives a failed job
    finally:
        ct.shutdown()


def test_the_process_has_one_shared_compute_thread():
    assert compute_thread() is compute_thread()
    assert compute_thread().run(lambda: threading.current_thread().name).startswith("napari-focsam-compute")
