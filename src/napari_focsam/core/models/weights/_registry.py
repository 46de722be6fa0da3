"""The registry of known checkpoints: names, files, sizes, hashes and sources.  No I/O.

:func:`register` is the extension point for the project's own trained weights (URL
sources, a SHA-256, or small files shipped in the wheel under
``napari_focsam/weights_data/``).  The built-in entries are in :mod:`.catalog`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from ...defaults import DEFAULT_MODEL
from ._sources import Source, as_source

__all__ = [
    "ModelWeights",
    "PathLike",
    "find_weights",
    "get_weights",
    "is_registered_name",
    "known_names",
    "register",
    "registered",
    "unregister",
]

#: A registry name or a file path.
PathLike = str | os.PathLike[str]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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
        object.__setattr__(self, "sources", tuple(as_source(s) for s in self.sources))
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

    @property
    def fetch_command(self) -> str:
        """The command that downloads the file again (for entries with automatic sources)."""
        return f"napari-focsam weights fetch {self.name} --force"


_REGISTRY: dict[str, ModelWeights] = {}
_LOCK = threading.RLock()


def _all_names() -> dict[str, str]:
    """Every name and alias -> the entry's name (call with ``_LOCK`` held)."""
    out: dict[str, str] = {}
    for e in _REGISTRY.values():
        out[e.name] = e.name
        for a in e.aliases:
            out[a] = e.name
    return out


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


def is_registered_name(value: str) -> bool:
    """Whether ``value`` (or its lower-case form) is a registry name or alias."""
    with _LOCK:
        names = _all_names()
    return value in names or value.lower() in names


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
