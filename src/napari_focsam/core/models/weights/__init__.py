"""Model weights: known checkpoints, a per-user cache and verified downloads.

Users must get a working model on first start and must never be stuck by a firewall or
by a half-downloaded file.  This package is the single place that turns "a model" (a
registry name such as ``"vit_t"`` or a checkpoint path) into a local file that is known
to be complete and intact.  Its rooms, from the bottom up (each imports only those
above it):

* :mod:`._archive` -- verified streaming copies, archive members, the ``TransferError``;
* :mod:`._sources` -- where a file can come from (URL, package index via pip, the wheel);
* :mod:`._registry` -- :class:`ModelWeights` and :func:`register` (no I/O);
* :mod:`._verify` -- structure and architecture checks of files without a pinned hash;
* :mod:`._cache` -- the cache folder, its stamps, the once-per-process SHA-256 check, listing;
* :mod:`._errors` -- :class:`WeightsUnavailableError` with the manual step;
* :mod:`._resolve` -- :func:`resolve_weights`, :func:`fetch`, :func:`import_weights`;
* :mod:`._catalog` -- the built-in entries (registered on import).

Everything public is re-exported here, so ``from napari_focsam.core.models.weights import X``
works for all of them.
"""

from __future__ import annotations

from ...defaults import DEFAULT_MODEL, REFINE_PRECISIONS
from ._archive import TransferError, format_size
from ._cache import (
    CACHE_ENV, OFFLINE_ENV, STALE_PARTIAL_SECONDS, WeightsInfo, cache_dir, cache_root, cached_path, forget_verified,
    is_offline, list_weights, meta_path, read_meta, verify_cached)
from ._errors import WeightsUnavailableError
from ._registry import ModelWeights, PathLike, find_weights, get_weights, known_names, register, registered, unregister
from ._resolve import fetch, import_weights, resolve_weights
from ._sources import HTTP_TIMEOUT, PIP_TIMEOUT, PackageDataSource, PipSdistSource, Source, UrlSource
from ._verify import check_architecture, check_checkpoint, check_checkpoint_structure

from . import _catalog  # noqa: E402,F401  (registers the built-in entries)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "HTTP_TIMEOUT",
    "OFFLINE_ENV",
    "PIP_TIMEOUT",
    "REFINE_PRECISIONS",
    "STALE_PARTIAL_SECONDS",
    "ModelWeights",
    "PackageDataSource",
    "PathLike",
    "PipSdistSource",
    "Source",
    "TransferError",
    "UrlSource",
    "WeightsInfo",
    "WeightsUnavailableError",
    "cache_dir",
    "cache_root",
    "cached_path",
    "check_architecture",
    "check_checkpoint",
    "check_checkpoint_structure",
    "fetch",
    "find_weights",
    "forget_verified",
    "format_size",
    "get_weights",
    "import_weights",
    "is_offline",
    "known_names",
    "list_weights",
    "meta_path",
    "read_meta",
    "register",
    "registered",
    "resolve_weights",
    "unregister",
    "verify_cached",
]
