"""Keep large CPU tensors out of fresh ``mmap`` pages (glibc only).

PyTorch's CPU allocator calls ``malloc``/``free`` for every tensor. glibc serves blocks
above its mmap threshold (128 KiB at first, raised dynamically to at most 32 MiB) with
fresh ``mmap`` pages and returns them on ``free``, so every per-click activation of a
few MiB pays one page fault per 4 KiB page when it is first written. On the virtual
machines we measured, that was a third of a decoder pass (decoder 79 -> 61 ms median at
one thread, a 8 MiB copy 8.1 -> 0.9 ms; see ``benchmarks/bench_model.py``).

:func:`tune_malloc` fixes the thresholds once per process: blocks up to 32 MiB come from
the heap and freed memory is kept until more than 256 MiB sits unused at the heap's top.
Results are identical; peak memory is unchanged, memory held after a large job can be
up to that margin higher. Set ``NAPARI_FOCSAM_MALLOC_TUNING=0`` to leave malloc alone.

:func:`release_memory` gives memory freed in the middle of the heap back to the system
(``malloc_trim(0)``): glibc only returns the heap's top on its own, so after a long
interactive session (hundreds of clicks' temporaries, then a reset) the freed pages would
stay in the process. The session calls it at the points where much was just freed: an
object reset or removed, many clicks dropped at once, the session closed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: the largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
TOP_PAD = 16 * 1024 * 1024

_state: dict[str, bool] = {}
_libc: list = []  # [the C library or None], looked up once


def _glibc():
    if not _libc:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.mallopt, lib.malloc_trim  # noqa: B018  (musl has neither)
            except (OSError, AttributeError):
                lib = None
        _libc.append(lib)
    return _libc[0]


def tune_malloc() -> bool:
    """Apply the thresholds above once; True when glibc accepted them.

    A no-op (False) off Linux, without glibc, or with ``NAPARI_FOCSAM_MALLOC_TUNING=0``.
    """
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if sys.platform.startswith("linux") and os.environ.get("NAPARI_FOCSAM_MALLOC_TUNING", "1") != "0":
        libc = _glibc()
        mallopt = libc.mallopt if libc is not None else None
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            applied = all(
                mallopt(param, value) == 1
                for param, value in (
                    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                    (_M_TOP_PAD, TOP_PAD),
                )
            )
    _state["applied"] = applied
    return applied


def release_memory() -> bool | None:
    """Return the freed parts of the heap to the operating system (glibc ``malloc_trim(0)``).

    Returns glibc's answer (True: some memory was released), or None where this is not
    possible (off Linux, without glibc, or ``NAPARI_FOCSAM_MALLOC_TUNING=0``). Measured cost:
    13 ms when 100 MiB are released, 30 ms for 400 MiB, under 1 ms when there is little to
    release; so it is called after large frees, not per click.
    """
    if os.environ.get("NAPARI_FOCSAM_MALLOC_TUNING", "1") == "0":
        return None
    libc = _glibc()
    if libc is None:
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc.malloc_trim(0) == 1
