"""The signed on-disk embedding cache: one zarr store per image and model.

On-disk layout (one zarr group per image and model, ``<cache_dir>/<model>-<key>.zarr``)::

    features    (Z, 256, 64, 64) float16, one chunk per slice (zstd with checksum on zarr 3)
    signatures  (Z, 20) uint8, sha1 of the pixel data each slice's features were computed from
    checksums   (Z, 20) uint8, HMAC-SHA1 with the user's key (:mod:`~napari_focsam.core.embeddings._signing`) of each slice's
                number, stored features, signature and flag
    done        (Z,) uint8, one chunk per slice: 0 = not computed, 1 = done, 2 = done (blank slice)
    attrs       format version, model_id, PREPROCESS_VERSION, image shape/dtype, volume key,
                contrast limits, input_size/original_size, feature dtype, tiling (tiled stores)
    napari_focsam_cache.json   our format marker, also readable when the zarr metadata is not
    claims/     one directory per slice being encoded right now (see :mod:`~napari_focsam.core.embeddings._claims`)

A tiled store (:mod:`~napari_focsam.core.embeddings._tiled`) has the same arrays with one entry ("unit") per
(slice, level, tile) instead of per slice: ``features`` (U, 256, 64, 64) with one chunk per slice,
level and tile, a signature per tile (of the pixels of that tile at that level), and a ``tiling``
attribute (tile size, halo, level shapes) that a store must match to be used.

A slice is written features first, then its signature and checksum, then its ``done`` flag,
each in its own chunk file, so an interrupted precompute leaves only complete slices marked done
and resumes where it stopped. A slice is used from disk only when it is marked done, its stored
signature equals the signature of the current pixels, its features are finite and their
checksum matches; otherwise it is recomputed (with a warning). The checksum is what catches a
missing chunk: zarr reads a deleted chunk as its fill value (zeros) without complaint, and zeros
never carry the checksum of real features.

A store made for another model, image, preprocessing or contrast, or a structurally damaged one,
is discarded and rebuilt (with a warning), never used -- but only when it carries our format
marker: any other folder at the store path (a user's own ``.zarr``) is refused, never moved or
deleted. A new store is built under a temporary name and renamed into place, so other processes
never see a half-created one. Several processes may fill one store at the same time: each claims
a slice (an atomic directory under ``claims/``) before encoding it, so no slice is encoded twice.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ._claims import CLAIM_TIMEOUT_S, Claims
from ._signing import entry_mac

__all__ = [
    "CACHE_FORMAT_VERSION",
    "FEATURE_SHAPE",
    "MARKER_FILE",
    "CacheUnavailable",
    "CacheWriteError",
    "DiskCache",
    "features_checksum",
]

log = logging.getLogger(__name__)

#: Version of the on-disk layout; part of every store's signature (2: per-slice checksums;
#: 3: the checksums are HMACs with the user's key, see :mod:`~napari_focsam.core.embeddings._signing`).
CACHE_FORMAT_VERSION = 3
#: Shape of one slice's image embedding.
FEATURE_SHAPE = (256, 64, 64)
#: File in the store's root that marks it as ours (with the format version).
MARKER_FILE = "napari_focsam_cache.json"
#: Free space kept on top of the estimated size of a precompute.
SPACE_MARGIN_BYTES = 64 * 2**20


class CacheUnavailable(OSError):
    """The disk cache cannot be opened or created (read-only folder, a folder that is not ours...)."""


class CacheWriteError(CacheUnavailable):
    """Writing to the disk cache failed (disk full, permissions changed) or would not fit."""


def features_checksum(z: int, features: np.ndarray, signature: bytes, flag: int) -> bytes:
    """The 20-byte authentication code of unit ``z``: an HMAC-SHA1 with the user's key (see
    :mod:`~napari_focsam.core.embeddings._signing`) of its stored features (C order), pixel signature and done flag.

    Raises OSError when the user's key cannot be read or made.
    """
    return entry_mac(z, np.ascontiguousarray(features).reshape(-1).view(np.uint8), bytes(signature),
                     bytes([int(flag)]))


def _writable(path: Path) -> bool:
    """Whether we may write into the folder ``path``.

    A folder with no write permission bit at all is treated as read-only even for root (who
    could write anyway): its owner marked it so, e.g. a shared, pre-filled cache.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _zarr():
    import zarr

    return zarr


def _create_array(group, name: str, shape, chunks, dtype, *, compress: bool):
    if hasattr(group, "create_array"):  # zarr >= 3
        kwargs: dict[str, Any] = dict(name=name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        if compress:
            from zarr.codecs import ZstdCodec

            kwargs["compressors"] = [ZstdCodec(level=1, checksum=True)]
        else:
            kwargs["compressors"] = None
        return group.create_array(**kwargs)
    kwargs = dict(shape=shape, chunks=chunks, dtype=dtype, fill_value=0)  # zarr 2: default Blosc
    if not compress:
        kwargs["compressor"] = None
    return group.create_dataset(name, **kwargs)


class DiskCache:
    """One zarr store holding the embeddings of one volume for one model (see module docs).

    Parameters
    ----------
    path : str or Path
        The store (a ``.zarr`` folder).
    meta : dict
        The signature the store must carry (written at creation, compared on open).
    n_slices : int
        Number of slices Z.
    feature_dtype : numpy dtype
        float16 or float32.
    claim_timeout_s : float
        Age after which another machine's claim on a slice is taken as abandoned.

    Raises
    ------
    CacheUnavailable
        When the store can neither be used nor (re)created, or the path holds something that is
        not ours.

    Notes
    -----
    Thread-safe: every array access holds an internal lock.
    """

    MARKER = "napari_focsam_embeddings"
    #: attrs compared on open, with what a mismatch means
    CHECKED = {
        "model_id": "another model",
        "preprocess_version": "another preprocessing version",
        "image_shape": "an image of another shape",
        "image_dtype": "an image of another dtype",
        "volume_key": "another image",
        "contrast_limits": "other contrast limits",
        "input_size": "another input size",
        "original_size": "another image size",
        "feature_dtype": "another feature dtype",
        "tiling": "another tiling",
    }

    def __init__(self, path: str | Path, meta: dict[str, Any], n_slices: int, feature_dtype: np.dtype,
                 *, claim_timeout_s: float = CLAIM_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.meta = {self.MARKER: CACHE_FORMAT_VERSION, **json.loads(json.dumps(meta))}
        self.n_slices = int(n_slices)
        self.feature_dtype = np.dtype(feature_dtype)
        self._lock = threading.RLock()
        self.rebuilt_because: str | None = None
        self.read_only = False
        self._open()
        self.claims = Claims(self.path / "claims", timeout_s=claim_timeout_s)

    @property
    def slice_bytes(self) -> int:
        """Uncompressed size of one slice's features (an upper bound of its size on disk)."""
        return int(np.prod(FEATURE_SHAPE)) * self.feature_dtype.itemsize + 64

    # -- opening
    def _open(self, retry: bool = True) -> None:
        path = self.path
        parent = path.parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheUnavailable(f"cannot create the cache folder {parent}: {exc}") from exc
        self.read_only = not _writable(parent) or (path.exists() and not _writable(path))
        if not self.read_only:
            self._sweep_leftovers()
        if not self.read_only and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            try:
                path.rmdir()  # an empty folder made for the cache: nothing to keep
            except OSError:
                pass
        if path.exists() or path.is_symlink():
            group, problem = None, None
            ours = self._has_marker_file()
            try:
                group = _zarr().open_group(str(path), mode="r" if self.read_only else "r+")
                attrs = dict(group.attrs)
                ours = ours or attrs.get(self.MARKER) is not None
                problem = self._validate(group, attrs)
            except Exception as exc:  # unreadable metadata, not a zarr store, ...
                problem = f"is unreadable ({type(exc).__name__}: {exc})"
            if problem is None:
                self._bind(group)
                return
            if not ours:
                raise CacheUnavailable(
                    f"{path} exists and is not a napari-focsam embedding cache: refusing to touch it; "
                    "give a cache folder (or a new .zarr path) instead")
            if self.read_only:
                raise CacheUnavailable(f"the embedding cache {path} {problem}, and its folder is read-only")
            log.warning("embedding cache %s %s: rebuilding it", path, problem)
            self.rebuilt_because = problem
            self._discard()
        if self.read_only:
            raise CacheUnavailable(f"the cache folder {parent} is read-only")
        try:
            created = self._create()
        except OSError as exc:
            raise CacheUnavailable(f"cannot create the embedding cache {path}: {exc}") from exc
        if not created:  # another process created it at the same moment: use theirs
            if not retry:
                raise CacheUnavailable(f"the embedding cache {path} keeps changing under us: retry")
            self._open(retry=False)

    def _sweep_leftovers(self, min_age_s: float = 3600.0) -> None:
        """Delete our own hidden leftovers next to the store (``.<name>.tmp-*``, ``.<name>.stale-*``)
        of processes killed while creating or discarding it, once they are an hour old."""
        now = time.time()
        for pattern in (f".{self.path.name}.tmp-*", f".{self.path.name}.stale-*"):
            for old in self.path.parent.glob(pattern):
                try:
                    if now - old.stat().st_mtime > min_age_s and old.is_dir() and not old.is_symlink():
                        shutil.rmtree(old, ignore_errors=True)
                except OSError:
                    pass

    def _has_marker_file(self) -> bool:
        try:
            marker = json.loads((self.path / MARKER_FILE).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and self.MARKER in marker

    def _validate(self, group, attrs: dict) -> str | None:
        if attrs.get(self.MARKER) != CACHE_FORMAT_VERSION:
            if self.MARKER in attrs:
                return f"has cache format {attrs.get(self.MARKER)} (expected {CACHE_FORMAT_VERSION})"
            return "is not a napari-focsam embedding cache"
        diffs = [why for key, why in self.CHECKED.items() if attrs.get(key) != self.meta.get(key)]
        if diffs:
            return "was made for " + ", ".join(diffs)
        Z = self.n_slices
        expect = {"features": ((Z, *FEATURE_SHAPE), self.feature_dtype),
                  "signatures": ((Z, 20), np.dtype(np.uint8)), "checksums": ((Z, 20), np.dtype(np.uint8)),
                  "done": ((Z,), np.dtype(np.uint8))}
        for name, (shape, dtype) in expect.items():
            try:
                arr = group[name]
            except Exception:
                return f"is damaged (array {name!r} is missing)"
            if tuple(arr.shape) != shape or np.dtype(arr.dtype) != dtype:
                return (f"is damaged (array {name!r} is {tuple(arr.shape)} {arr.dtype}, expected "
                        f"{shape} {dtype})")
        return None

    def _discard(self) -> None:
        """Delete a store of ours: rename it aside first (atomic), then delete it."""
        path = self.path
        aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return  # another process discarded it first
        except OSError as exc:
            raise CacheUnavailable(f"cannot replace the unusable cache {path}: {exc}") from exc
        try:
            shutil.rmtree(aside)
        except OSError as exc:
            log.warning("cannot delete the stale cache %s (%s): you may delete it", aside, exc)

    def _create(self) -> bool:
        """Build an empty store under a temporary name and rename it into place.

        Returns False when another process put a store there first (theirs is kept).
        """
        zarr = _zarr()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            group = zarr.open_group(str(tmp), mode="w")
            group.attrs.update(self.meta)
            Z = self.n_slices
            _create_array(group, "features", (Z, *FEATURE_SHAPE), (1, *FEATURE_SHAPE), self.feature_dtype,
                          compress=True)
            for name in ("signatures", "checksums"):
                _create_array(group, name, (Z, 20), (1, 20), np.uint8, compress=False)
            _create_array(group, "done", (Z,), (1,), np.uint8, compress=False)
            (tmp / MARKER_FILE).write_text(json.dumps({self.MARKER: CACHE_FORMAT_VERSION}))
            try:
                os.rename(tmp, self.path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or self.path.exists():
                    return False
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._bind(zarr.open_group(str(self.path), mode="r+"))
        return True

    def _bind(self, group) -> None:
        self._group = group
        self._features = group["features"]
        self._signatures = group["signatures"]
        self._checksums = group["checksums"]
        self._done = group["done"]

    # -- slices
    def _flag(self, z: int) -> int:
        try:
            return int(np.asarray(self._done[z]))
        except Exception as exc:
            log.warning("embedding cache %s: slice %d has an unreadable done marker (%s): recomputing it",
                        self.path, z, exc)
            return 0

    def _stored(self, name: str, z: int) -> bytes | None:
        try:
            return bytes(np.asarray(getattr(self, name)[z], dtype=np.uint8))
        except Exception:
            return None

    def is_done(self, z: int, signature: str) -> bool:
        """Slice ``z`` is marked complete and was computed from pixels with this signature.

        Cheap (reads no features): :meth:`read` or :meth:`verify` check the features too.
        """
        with self._lock:
            return self._flag(z) != 0 and self._stored("_signatures", z) == bytes.fromhex(signature)

    def verify(self, z: int, signature: str) -> bool:
        """Whether :meth:`read` would return slice ``z`` (reads and checks its features)."""
        return self.read(z, signature) is not None

    def read(self, z: int, signature: str) -> tuple[np.ndarray, bool] | None:
        """``(features (256, 64, 64), blank)`` of a complete, matching, intact slice, else None."""
        with self._lock:
            flag = self._flag(z)
            if flag == 0:
                return None
            sig = bytes.fromhex(signature)
            if self._stored("_signatures", z) != sig:
                log.warning("embedding cache %s: slice %d was computed from different pixel data: "
                            "recomputing it", self.path, z)
                return None
            try:
                feats = np.asarray(self._features[z])
            except Exception as exc:
                log.warning("embedding cache %s: slice %d is unreadable (%s): recomputing it", self.path, z, exc)
                return None
            stored_sum = self._stored("_checksums", z)
        if feats.shape != FEATURE_SHAPE or not np.isfinite(feats).all():
            log.warning("embedding cache %s: slice %d holds invalid values (NaN/inf): recomputing it",
                        self.path, z)
            return None
        try:
            expected = features_checksum(z, feats.astype(self.feature_dtype, copy=False), sig, flag)
        except OSError as exc:
            log.warning("embedding cache %s: cannot check slice %d (%s): recomputing it", self.path, z, exc)
            return None
        if stored_sum != expected:
            log.warning("embedding cache %s: slice %d is damaged, incomplete or not written by this user "
                        "(its signature does not match, e.g. a missing chunk or an entry copied from another "
                        "slice): recomputing it", self.path, z)
            return None
        return feats, flag == 2

    def write(self, z: int, features: np.ndarray, blank: bool, signature: str) -> None:
        """Store one slice: features, signature, checksum, then the done flag.

        Raises :class:`CacheWriteError` on failure; a slice that failed is never marked done.
        """
        if self.read_only:
            raise CacheWriteError(f"the embedding cache {self.path} is read-only")
        feats = np.ascontiguousarray(features, dtype=self.feature_dtype)
        sig = bytes.fromhex(signature)
        flag = 2 if blank else 1
        with self._lock:
            try:
                self._write_arrays(z, feats, flag, np.frombuffer(sig, dtype=np.uint8),
                                   np.frombuffer(features_checksum(z, feats, sig, flag), dtype=np.uint8))
            except Exception as exc:
                self._unmark(z)
                raise CacheWriteError(f"cannot write slice {z} to {self.path}: {_why(exc)}") from exc

    def _write_arrays(self, z: int, features: np.ndarray, flag: int, signature: np.ndarray,
                      checksum: np.ndarray) -> None:
        if self._flag(z) != 0:  # rewriting a slice: it must not look done while half written
            self._done[z] = 0
        self._features[z] = features
        self._signatures[z] = signature
        self._checksums[z] = checksum
        self._done[z] = flag

    def _unmark(self, z: int) -> None:
        try:
            if self._flag(z) != 0:
                self._done[z] = 0
        except Exception:  # the checksum still keeps a half-written slice from being used
            pass

    def done_slices(self) -> list[int]:
        """Slices marked done (not verified)."""
        with self._lock:
            try:
                flags = np.asarray(self._done[:])
            except Exception:
                return [z for z in range(self.n_slices) if self._flag(z)]
        return [int(z) for z in np.flatnonzero(flags)]

    def check_space(self, n_slices: int) -> None:
        """Raise :class:`CacheWriteError` when ``n_slices`` more slices would not fit on the disk."""
        if n_slices <= 0 or self.read_only:
            return
        need = n_slices * self.slice_bytes + SPACE_MARGIN_BYTES
        try:
            free = shutil.disk_usage(self.path).free
        except OSError:
            return  # cannot tell: the first failed write will stop the run
        if free < need:
            raise CacheWriteError(
                f"not enough free space for the embedding cache in {self.path.parent}: {n_slices} slices need "
                f"about {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free; free some space or choose "
                "another cache folder")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk is full ({exc})"
    return f"{type(exc).__name__}: {exc}"
