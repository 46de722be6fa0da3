"""Byte-level handling of weights files: verified streaming copies and archive members.

Nothing here knows the registry: callers pass the expected size and SHA-256.  Every
copy is streamed (the 2.6 GB ViT-H file is never held in memory), hashed on the way
and deleted again if it does not match, so a destination name never holds unverified
data.  Member paths inside archives are only compared, never used as output paths,
so a hostile archive cannot write outside the work folder.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ...hashing import CHUNK_SIZE

__all__ = [
    "TransferError",
    "copy_verified",
    "extract_member",
    "format_size",
    "is_torch_zip",
]


class TransferError(Exception):
    """One source or one import failed; the message is a short reason shown to the user."""


def format_size(n: int | None) -> str:
    """A byte count for people (``"40.7 MB"``); ``"?"`` when unknown."""
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    if n < 1_000_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB"


def is_torch_zip(path: Path) -> bool:
    """Whether the zip archive ``path`` is a ``torch.save`` file (it has a ``data.pkl``)."""
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("data.pkl") for n in zf.namelist())


def copy_verified(fh: IO[bytes], dest: Path, size: int | None, sha256: str | None) -> str:
    """Stream ``fh`` to ``dest`` while hashing; check size and hash; return the hex SHA-256.

    On a mismatch (or any error while writing) ``dest`` is deleted; a mismatch raises
    :class:`TransferError`.
    """
    h = hashlib.sha256()
    n = 0
    try:
        with open(dest, "wb") as out:
            while chunk := fh.read(CHUNK_SIZE):
                n += len(chunk)
                if size is not None and n > size:  # stop at once: a decompression bomb, a wrong file
                    raise TransferError(f"the data does not match the registry: more than {size} bytes "
                                        "(the expected size); stopped reading")
                h.update(chunk)
                out.write(chunk)
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
        raise TransferError("the data does not match the registry: " + ", ".join(problems))
    return digest


def _norm(member: str) -> str:
    member = member.replace("\\", "/")
    while member.startswith("./"):
        member = member[2:]
    return member


def extract_member(
    archive: Path,
    names: Iterable[str],
    dest: Path,
    size: int | None,
    sha256: str | None,
    *,
    exact: bool,
) -> str:
    """Stream one member out of a zip or tar archive into ``dest`` (verified); return its hash.

    With ``exact`` the member path must equal one of ``names``; otherwise a member whose
    base name is in ``names`` matches.  Several matches in a zip, or none, raise
    :class:`TransferError`.
    """
    names = set(names)
    bases = {Path(n).name for n in names}
    wanted = {_norm(n) for n in names}

    def matches(member: str) -> bool:
        member = _norm(member)
        if exact:
            return member in wanted
        return member.rsplit("/", 1)[-1] in bases

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            hits = [i for i in zf.infolist() if not i.is_dir() and matches(i.filename)]
            if not hits:
                raise TransferError(f"{archive.name} does not contain {' or '.join(sorted(bases))}")
            if len(hits) > 1:
                listed = ", ".join(i.filename for i in hits)
                raise TransferError(f"{archive.name} contains several candidates: {listed}")
            with zf.open(hits[0]) as fh:
                return copy_verified(fh, dest, size, sha256)
    # Stream mode: one sequential pass, no seeking in the (compressed) tarball.
    with tarfile.open(archive, mode="r|*") as tf:
        for member in tf:
            if member.isfile() and matches(member.name):
                fh = tf.extractfile(member)
                if fh is None:  # pragma: no cover - isfile() guarantees a stream
                    break
                with fh:
                    return copy_verified(fh, dest, size, sha256)
    wanted_text = " or ".join(sorted(names if exact else bases))
    raise TransferError(f"{archive.name} does not contain {wanted_text}")
