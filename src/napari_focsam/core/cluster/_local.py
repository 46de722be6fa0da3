"""The local dask cluster: loopback only, TLS made for this run, started again once if it misses
its start-up window."""

from __future__ import annotations

import logging
from typing import Any, Mapping

__all__ = ["LOCAL_START_TRIES", "local_cluster", "local_security"]

log = logging.getLogger("napari_focsam.core.cluster")

#: How many times a local cluster is started before giving up: distributed gives its event loop
#: thread 10 s to start, which a loaded 2-core machine has missed (an ``AssertionError`` from
#: deep inside ``LocalCluster``, seen once in CI); a second start then succeeds.
LOCAL_START_TRIES = 2


def local_security() -> Any:
    """TLS with a key and certificate made for this run only (dask's ``Security.temporary``):
    the scheduler and workers of a local cluster accept only clients holding them, so another
    local process cannot connect and run code on the workers (plain dask accepts any).

    Raises
    ------
    ValueError
        The ``cryptography`` package that makes the certificate is missing.
    """
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError:
        raise ValueError("a local cluster runs with TLS and needs the 'cryptography' package: "
                         "pip install cryptography") from None


def local_cluster(workers: int, env: Mapping[str, str], tries: int = LOCAL_START_TRIES) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` processes (one task thread each, ``env`` set
    in them) on 127.0.0.1, without a dashboard, secured by :func:`local_security`.

    Raises
    ------
    ConnectionError
        The cluster did not start in ``tries`` attempts (the last error is chained; an
        ``OSError``, which the command line reports in one line).
    """
    from distributed import LocalCluster

    for attempt in range(1, tries + 1):
        try:
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, silence_logs=40, env=dict(env),
                                security=local_security())
        except (ValueError, MemoryError):
            raise  # no cryptography, or no memory: a second start would not help
        except Exception as exc:  # its event loop or a worker did not start in time
            why = " ".join(str(exc).split()) or type(exc).__name__
            if attempt == tries:
                raise ConnectionError(f"the local dask cluster of {workers} worker(s) did not start ({why[:200]}); "
                                   "is the machine overloaded? try fewer --workers") from exc
            log.warning("the local dask cluster did not start (%s): starting it again", why[:200])
    raise AssertionError("unreachable")
