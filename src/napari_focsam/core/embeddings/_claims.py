"""Work claims on a shared folder: one atomic directory per unit of work.

Several processes (on one machine, or on several machines sharing a file system) fill the same
embedding cache. Before a process encodes a slice it *claims* it by creating the directory
``<folder>/<unit>``: ``mkdir`` is atomic on local file systems and on NFS, so exactly one
process succeeds, and no lock daemon or cross-machine lock is needed. The winner writes an
``owner.json`` (host, pid, token, time) into it and removes the directory when the slice is
written. The others skip the unit, do other work, and come back to it later.

A claim is *stale*, and may be broken, when its holder is known to be dead (same host, process
gone) or when it is older than ``timeout_s`` (a holder on another machine that died). Breaking
renames the directory to a unique name first, so that two processes cannot both break it and
both claim the unit.

Claims only save work: correctness never depends on them. In the rare races they leave open
(a claim broken just as its holder finishes) two processes encode the same unit, and the
per-slice checksums of :mod:`~napari_focsam.core.embeddings._disk` catch any mix of their writes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["CLAIM_TIMEOUT_S", "Claims"]

#: A claim older than this (seconds) whose holder cannot be checked is taken as abandoned.
CLAIM_TIMEOUT_S = 600.0

_HOST = socket.gethostname()


def _read_owner(path: Path) -> dict | None:
    """The ``owner.json`` of a claim directory as a dict, or None when unreadable."""
    try:
        owner = json.loads((path / "owner.json").read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: assume alive)
    return True


class Claims:
    """Exclusive claims on units of work (``int`` or ``str`` names) under one folder.

    Parameters
    ----------
    folder : str or Path
        Where the claim directories live (created on first use).
    timeout_s : float
        Age after which a claim whose holder cannot be checked (another host) is broken.

    Notes
    -----
    Thread-safe. Claims are re-entrant within one ``Claims`` object: a unit already held by
    this object counts as held again (a count), and is released with the last :meth:`release`.
    Two ``Claims`` objects in one process are two different holders.
    """

    def __init__(self, folder: str | Path, timeout_s: float = CLAIM_TIMEOUT_S) -> None:
        self.folder = Path(folder)
        self.timeout_s = float(timeout_s)
        self.token = uuid.uuid4().hex
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def _dir(self, unit: int | str) -> Path:
        return self.folder / str(unit)

    def acquire(self, unit: int | str) -> bool:
        """Claim ``unit``; True when this object now holds it, False when a live holder has it.

        Raises OSError when the claim folder cannot be written.
        """
        key = str(unit)
        with self._lock:
            if key in self._held:
                self._held[key] += 1
                return True
        path = self._dir(unit)
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                path.mkdir()
            except FileExistsError:
                if not self._break_if_stale(path):
                    return False
                continue  # broken: try once more (another process may win the race)
            try:
                (path / "owner.json").write_text(json.dumps(
                    {"host": _HOST, "pid": os.getpid(), "token": self.token, "time": time.time()}))
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                raise
            with self._lock:
                self._held[key] = 1
            return True
        return False

    def release(self, unit: int | str) -> None:
        """Give up one hold of ``unit``; the claim directory goes with the last one."""
        key = str(unit)
        with self._lock:
            count = self._held.get(key, 0)
            if count > 1:
                self._held[key] = count - 1
                return
            self._held.pop(key, None)
        if count:
            shutil.rmtree(self._dir(unit), ignore_errors=True)

    @contextmanager
    def hold(self, unit: int | str) -> Iterator[bool]:
        """``with claims.hold(z) as mine:`` -- ``mine`` is :meth:`acquire`'s answer; released on exit."""
        mine = self.acquire(unit)
        try:
            yield mine
        finally:
            if mine:
                self.release(unit)

    def is_claimed(self, unit: int | str) -> bool:
        """Whether another live holder has ``unit`` now (stale claims do not count)."""
        with self._lock:
            if str(unit) in self._held:
                return False
        path = self._dir(unit)
        return path.exists() and not self._is_stale(path)

    def describe_holder(self, unit: int | str) -> str | None:
        """Whose claim holds ``unit`` and until when it counts, in words (None: not claimed)."""
        path = self._dir(unit)
        try:
            since = path.stat().st_mtime
        except FileNotFoundError:
            return None
        owner = _read_owner(path) or {}
        who = f"host {owner.get('host', '?')}, process {owner.get('pid', '?')}"
        fmt = "%Y-%m-%d %H:%M:%S"
        return (f"{who}, since {time.strftime(fmt, time.localtime(since))}; taken over at "
                f"{time.strftime(fmt, time.localtime(since + self.timeout_s))} if that process stops")

    def _is_stale(self, path: Path) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        owner = _read_owner(path)  # None: being written just now, or its holder died in between
        if owner is not None and owner.get("host") == _HOST and isinstance(owner.get("pid"), int):
            if owner.get("token") != self.token and not _pid_alive(owner["pid"]):
                return True
        return age > self.timeout_s

    def _break_if_stale(self, path: Path) -> bool:
        if not self._is_stale(path):
            return False
        aside = path.with_name(f"{path.name}.broken-{self.token}")
        try:
            os.rename(path, aside)  # atomic: only one breaker gets it
        except FileNotFoundError:
            return True  # released or broken by someone else meanwhile
        except OSError:
            return False
        shutil.rmtree(aside, ignore_errors=True)
        return True
