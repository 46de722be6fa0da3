"""The per-user weights cache: its folder, verification stamps and the once-per-process check.

*Why platformdirs.*  Checkpoints are large, re-creatable downloads: they belong in the
per-user cache folder of the operating system (``~/.cache`` on Linux,
``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows), not next to the code
(site-packages may be read-only or wiped on upgrade).  ``NAPARI_FOCSAM_CACHE``
overrides the root (shared cluster storage, a read-only pre-filled folder, tests).
Weights live in ``<root>/weights``; fetches and imports work in ``<root>/weights/.partial``.

*Why every process hashes each file once.*  Bit rot or a faulty copy can change a file's
bytes while keeping its size and modification time, so a size/mtime stamp cannot prove
a file intact.  The first time a process resolves a cached file it re-computes the
SHA-256 (:func:`verify_cached`); the result is remembered under
``(path, size, mtime_ns, inode)`` so later loads in the same process are free, and a
replaced or touched file is checked again.  Measured with
``benchmarks/bench_weights_hash.py`` (2 CPU cores shared with other jobs, load ~6): the
40.7 MB default ``vit_t`` file takes 92 ms (median of 5 runs, 61-95 ms; about 440 MB/s
from the page cache).  The 2.56 GB ViT-H files get the same full check: about 6 s at
that rate (extrapolated; a faster idle core or a cold disk moves it either way).  That
is of the order of loading ViT-H itself, once per process (the widget loads models in
a background worker), and it is the only check that finds silent corruption: a partial
or size/mtime check was rejected because it passes exactly the damage it is meant to
find.  Files fetched or imported in this process were hashed while they were copied
and are not hashed again.

*Why a sidecar stamp anyway.*  ``<file>.meta.json`` records the SHA-256 of files that
have no published hash (the official FocSAM release; recorded at import), the file's
origin, and lets ``weights list`` say "cached" without hashing.  It is never a reason
to skip the once-per-process check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...defaults import DEFAULT_MODEL
from ...hashing import sha256_file
from ._archive import format_size
from ._registry import ModelWeights, get_weights, registered
from ._verify import check_checkpoint

__all__ = [
    "CACHE_ENV",
    "CacheFolderError",
    "OFFLINE_ENV",
    "STALE_PARTIAL_SECONDS",
    "WeightsInfo",
    "cache_dir",
    "cache_root",
    "cached_path",
    "clean_stale_partials",
    "discard",
    "ensure_partial_root",
    "forget_verified",
    "is_offline",
    "list_weights",
    "make_readable",
    "meta_path",
    "partial_root",
    "read_meta",
    "verify_cached",
    "write_meta",
]

log = logging.getLogger(__name__)

#: Environment variable that overrides the cache root (weights go to ``<root>/weights``).
CACHE_ENV = "NAPARI_FOCSAM_CACHE"
#: Environment variable; when true-ish, network sources are skipped entirely.
OFFLINE_ENV = "NAPARI_FOCSAM_OFFLINE"
#: Work folders under ``.partial`` older than this are leftovers of killed runs.
STALE_PARTIAL_SECONDS = 24 * 3600
#: Files larger than this get a log line while they are verified.
_ANNOUNCE_BYTES = 200_000_000

# Files hashed in this process: (path, size, mtime_ns, inode) -> verified SHA-256.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def cache_root() -> Path:
    """The napari-focsam cache root: ``$NAPARI_FOCSAM_CACHE`` or the platformdirs user cache."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-focsam", appauthor=False))


def cache_dir() -> Path:
    """Folder holding the weights files: ``cache_root() / "weights"`` (not created here)."""
    return cache_root() / "weights"


def cached_path(name_or_entry: str | ModelWeights) -> Path:
    """Where the file of a registry entry lives in the cache (it may not exist)."""
    entry = name_or_entry if isinstance(name_or_entry, ModelWeights) else get_weights(name_or_entry)
    return cache_dir() / entry.filename


def is_offline() -> bool:
    """True when ``NAPARI_FOCSAM_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def partial_root() -> Path:
    """The work folder of fetches and imports (on the cache's file system, for atomic moves)."""
    return cache_dir() / ".partial"


class CacheFolderError(OSError):
    """The weights cache folder cannot be used (a file in its place, read-only, ...)."""


def ensure_partial_root() -> Path:
    """Create the weights folder and its work folder (:func:`partial_root`) and check that they
    can be written; returns the work folder.

    Raises
    ------
    CacheFolderError
        One line that names the folder, what is wrong with it, and what to do.
    """
    root = cache_root()
    where = f"the cache folder {root}" + (f" (from ${CACHE_ENV})" if os.environ.get(CACHE_ENV, "").strip() else "")
    fix = f"set {CACHE_ENV} to a writable folder"
    for p in (root, *root.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is a file" if p == root else f"lies under {p}, which is a file"
                raise CacheFolderError(f"{where} {what}, not a folder: {fix}")
            break
    partial = partial_root()
    try:
        partial.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=partial):
            pass
    except OSError as exc:
        why = "is read-only" if isinstance(exc, PermissionError) or exc.errno == 30 else f"cannot be written ({exc})"
        raise CacheFolderError(f"{where} {why}: {fix}") from None
    return partial


def clean_stale_partials(root: Path) -> None:
    """Delete work folders and files under ``root`` older than :data:`STALE_PARTIAL_SECONDS`."""
    now = time.time()
    try:
        children = list(root.iterdir())
    except OSError:
        return
    for child in children:
        try:
            if now - child.stat().st_mtime > STALE_PARTIAL_SECONDS:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------- process memo
def _key(path: Path, st: os.stat_result) -> tuple[str, int, int, int]:
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def forget_verified(path: Path | None = None) -> None:
    """Forget that ``path`` (or every file, with ``None``) was verified in this process."""
    if path is None:
        _VERIFIED.clear()
        return
    for key in [k for k in _VERIFIED if k[0] == str(path)]:
        _VERIFIED.pop(key, None)


# --------------------------------------------------------------------------- sidecar stamps
def meta_path(path: Path) -> Path:
    """The sidecar stamp of a cached file: ``<file>.meta.json``."""
    return path.with_name(path.name + ".meta.json")


def read_meta(path: Path) -> dict[str, Any] | None:
    """The sidecar stamp of ``path`` as a dict, or ``None`` if missing or unreadable."""
    try:
        data = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def make_readable(path: Path) -> None:
    """Give cached files the usual 0644 mode (temporary files start as 0600).

    Weights are public files; a shared ``NAPARI_FOCSAM_CACHE`` must be readable
    by other users.
    """
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def write_meta(path: Path, sha256: str, origin: str, entry: ModelWeights) -> None:
    """Record that ``path`` has been hashed to ``sha256`` (stamp and process memo).

    Call it only with a hash computed from the file's bytes in this process.  A read-only
    cache keeps no stamp; the process memo still spares a second hash.
    """
    st = path.stat()
    _VERIFIED[_key(path, st)] = sha256
    data = {
        "name": entry.name,
        "filename": path.name,
        "sha256": sha256,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "origin": origin,
        "hash_from_registry": entry.sha256 is not None,
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta = meta_path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=meta.parent, prefix=".meta-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        make_readable(Path(tmp))
        os.replace(tmp, meta)
    except OSError as exc:  # read-only cache: the in-process memo still helps
        log.debug("could not write %s: %s", meta, exc)


def _stamp_digest(path: Path, meta: dict[str, Any] | None) -> str | None:
    """The recorded hash if this process verified the file or the stamp matches size and mtime."""
    st = path.stat()
    memo = _VERIFIED.get(_key(path, st))
    if memo:
        return memo
    if meta and meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns:
        sha = meta.get("sha256")
        return sha if isinstance(sha, str) else None
    return None


def _invalidate_stamp(path: Path, *, keep_hash: bool) -> None:
    """Make the next check re-hash ``path``; keep a recorded (import-time) hash if asked."""
    meta = meta_path(path)
    try:
        if keep_hash:
            data = read_meta(path) or {}
            data["mtime_ns"] = None
            meta.write_text(json.dumps(data, indent=1), encoding="utf-8")
        else:
            meta.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("could not update %s: %s", meta, exc)


def discard(path: Path) -> None:
    """Delete a cached file and its stamp (best effort) and forget it was verified."""
    for p in (path, meta_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # read-only cache: the file is not used anyway
            log.warning("could not delete %s: %s", p, exc)
    forget_verified(path)


# --------------------------------------------------------------------------- verification
def verify_cached(
    entry: ModelWeights, path: Path, *, trust_stamp: bool = True
) -> tuple[bool, str]:
    """Check a cached file against its entry; return ``(ok, reason)``.

    The SHA-256 is computed unless this process already verified the same file (same
    path, size, mtime and inode) and ``trust_stamp`` is true; a sidecar stamp alone is
    never trusted.  A file with neither a published nor a recorded hash (copied into the
    cache by hand) must pass :func:`~.verify.check_checkpoint`; its hash is then recorded.
    """
    st = path.stat()
    if entry.size is not None and st.st_size != entry.size:
        return False, f"its size is {st.st_size} bytes, expected {entry.size}"
    meta = read_meta(path)
    expected = entry.sha256 or (meta or {}).get("sha256")
    if trust_stamp and expected is not None and _VERIFIED.get(_key(path, st)) == expected:
        return True, ""  # hashed earlier in this process and unchanged since
    if expected is None:
        # No published hash and no record (file copied by hand): check that it is a
        # checkpoint of this model, then record its hash (trust on first use).
        why = check_checkpoint(entry, path)
        if why:
            return False, why
        log.warning(
            "%s has no known SHA-256; recording the hash of %s for future checks", entry.name, path
        )
        write_meta(path, sha256_file(path), "found in cache (hash recorded on first use)", entry)
        return True, ""
    if st.st_size > _ANNOUNCE_BYTES:
        log.info("verifying %s (%s)...", path, format_size(st.st_size))
    digest = sha256_file(path)
    if digest != expected:
        _invalidate_stamp(path, keep_hash=entry.sha256 is None)
        forget_verified(path)
        return False, f"its SHA-256 is {digest}, expected {expected}"
    if _stamp_digest(path, meta) == digest and meta is not None:
        _VERIFIED[_key(path, st)] = digest  # the stamp is current: no need to rewrite it
    else:
        write_meta(path, digest, (meta or {}).get("origin", "verified in cache"), entry)
    return True, ""


# --------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class WeightsInfo:
    """One row of :func:`list_weights`."""

    name: str
    filename: str
    size: int | None
    cached: bool
    status: str
    path: Path
    description: str
    model_type: str
    default: bool
    downloadable: bool


def list_weights(*, verify: bool = False) -> list[WeightsInfo]:
    """Registry rows with cache status; with ``verify`` every cached file is re-hashed.

    ``status`` is one of ``"cached"`` (verified stamp), ``"cached (not verified yet)"``,
    ``"incomplete"`` (wrong size; replaced on next use), ``"corrupt"`` (only
    with ``verify``), ``"not cached"`` or ``"manual download"``.
    """
    rows = []
    for entry in registered().values():
        path = cached_path(entry)
        cached = False
        if path.is_file():
            st = path.stat()
            if entry.size is not None and st.st_size != entry.size:
                status = "incomplete"
            elif verify:
                ok, _ = verify_cached(entry, path, trust_stamp=False)
                status, cached = ("cached", True) if ok else ("corrupt", False)
            else:
                meta = read_meta(path)
                expected = entry.sha256 or (meta or {}).get("sha256")
                stamp = _stamp_digest(path, meta)
                cached = True
                status = "cached" if expected and stamp == expected else "cached (not verified yet)"
        else:
            status = "not cached" if entry.downloadable else "manual download"
        rows.append(
            WeightsInfo(
                name=entry.name,
                filename=entry.filename,
                size=entry.size if entry.size is not None or not cached else path.stat().st_size,
                cached=cached,
                status=status,
                path=path,
                description=entry.description,
                model_type=entry.model_type,
                default=entry.name == DEFAULT_MODEL,
                downloadable=entry.downloadable,
            )
        )
    return rows
