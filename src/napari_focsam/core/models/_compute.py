"""One thread for all of a process's model work, when the work comes from several threads.

PyTorch's CPU builds parallelise each operation with OpenMP, and GNU OpenMP (libgomp, used by
the PyPI wheels on Linux) keeps one pool of worker threads *per thread that starts parallel
work*. Its workers spin for a while after each parallel region, so the next of a decoder's
few hundred short operations starts at once, but only while the process has no more OpenMP
threads than CPUs; past that, every pool's workers go to sleep after each region and each
operation pays for waking them up. A GUI that loads the model in one worker thread, embeds
in a second and answers clicks in a third therefore has two or three pools, and on a 2-core
machine with 2 torch threads every click ran at the sleeping pools' pace: the ``steady``
later click's batched decoder pass took 124-155 ms in a second thread of a process whose
model was loaded elsewhere, against 65-92 ms when one thread did everything (1030x1349 nuclei
sample, 2 threads; ``benchmarks/bench_widget.py`` reports the widget's figures).

:class:`ComputeThread` runs callables on one long-lived thread, so the process keeps a
single pool whatever thread asks. :func:`compute_thread` is the process's shared one; the
napari widget sends every job that touches the model through it (loading, embedding,
clicks, propagation, segment-all). A script that calls the engine from one thread needs none
of this.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

__all__ = ["ComputeThread", "compute_thread"]

T = TypeVar("T")


class ComputeThread:
    """Runs callables one at a time on a single long-lived thread (see the module docs).

    Parameters
    ----------
    name : str
        The thread's name (as ``threading`` shows it).

    Notes
    -----
    A callable that itself calls :meth:`run` runs inline (no deadlock). Jobs run in the order
    they were submitted; a long job delays the next one, so long jobs should check a cancel flag.
    The thread is a ``concurrent.futures`` worker: at interpreter exit Python waits for the
    job in progress to end.
    """

    def __init__(self, name: str = "napari-focsam-compute") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._ident: int | None = None

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        self._ident = threading.get_ident()
        return fn(*args, **kwargs)

    @property
    def is_current(self) -> bool:
        """Whether the calling code runs on this thread."""
        return self._ident == threading.get_ident()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; returns its future (runs inline, already done, when
        called from this thread)."""
        if self.is_current:
            future: Future = Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller through the future, as the executor does
                future.set_exception(exc)
            return future
        return self._executor.submit(self._call, fn, args, kwargs)

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on this thread; waits for it and returns its result (or raises
        its exception)."""
        return self.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        """Let the job in progress and the queued ones end, then stop the thread."""
        self._executor.shutdown(wait=True)


@functools.cache
def compute_thread() -> ComputeThread:
    """The process's shared :class:`ComputeThread` (made on first use)."""
    return ComputeThread()
