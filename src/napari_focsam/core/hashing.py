"""The project's one SHA-256 helper: weights files, caches and training checkpoints use it.

Files are streamed in 1 MiB chunks into a reused buffer, so a 2.6 GB checkpoint is hashed
without holding it in memory.  Measured by ``benchmarks/bench_weights_hash.py``.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["CHUNK_SIZE", "sha256_file"]

#: Bytes read per step when streaming a file (also used for verified copies).
CHUNK_SIZE = 1 << 20


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE) -> str:
    """The SHA-256 of a file's contents, as 64 lower-case hex digits.

    Parameters
    ----------
    path : str or os.PathLike
        The file to hash (read in binary mode, streamed).
    chunk_size : int
        Bytes read per step.

    Returns
    -------
    str
        The hex digest.
    """
    h = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
