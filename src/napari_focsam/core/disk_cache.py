"""The signed on-disk embedding cache: one zarr store per image and model.

On-disk layout (one zarr group per image and model, ``<cache_dir>/<model>-<key>.zarr``)::

    features    (Z, 256, 64, 64) float16, one chunk per slice (zstd with checksum on zarr 3)
    signatures  (Z, 20) uint8, sha1 of the pixel data each slice's features were computed from
    done        (Z,) uint8, one chunk per slice: 0 = not computed, 1 = done, 2 = done (blank slice)
    attrs       format version, model_id, PREPROCESS_VERSION, image shape/dtype, volume key,
                contrast limits, input_size/original_size, feature dtype

A slice is written features first, then its signature, then its ``done`` flag, each in its own
chunk file, so an interrupted precompute leaves only complete slices marked done and resumes
where it stopped. A slice is used from disk only when it is marked done, its stored signature
equals the signature of the current pixels, and its features are finite; otherwise it is
recomputed (with a warning). A store made for another model, image, preprocessing or contrast,
or a structurally damaged one, is discarded and rebuilt (with a warning), never used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_FORMAT_VERSION", "FEATURE_SHAPE", "CacheUnavailable", "DiskCache"]

log = logging.getLogger(__name__)

#: Version of the on-disk layout; part of every store's signature.
CACHE_FORMAT_VERSION = 1
#: Shape of one slice's image embedding.
FEATURE_SHAPE = (256, 64, 64)


class CacheUnavailable(OSError):
    """The disk cache cannot be opened or created (read-only folder, stale store we may not replace...)."""


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

    meta: the signature the store must carry (written at creation, compared on open).
    Raises :class:`CacheUnavailable` when the store can neither be used nor (re)created.
    Thread-safe: every access holds an internal lock.
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
    }

    def __init__(self, path: str | Path, meta: dict[str, Any], n_slices: int, feature_dtype: np.dtype) -> None:
        self.path = Path(path)
        self.meta = {self.MARKER: CACHE_FORMAT_VERSION, **json.loads(json.dumps(meta))}
        self.n_slices = int(n_slices)
        self.feature_dtype = np.dtype(feature_dtype)
        self._lock = threading.RLock()
        self.rebuilt_because: str | None = None
        self.read_only = False
        self._open()

    # -- opening
    def _open(self) -> None:
        zarr = _zarr()
        path = self.path
        parent = path.parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheUnavailable(f"cannot create the cache folder {parent}: {exc}") from exc
        self.read_only = not _writable(parent) or (path.exists() and not _writable(path))
        if path.exists():
            group, ours, problem = None, False, None
            try:
                group = zarr.open_group(str(path), mode="r" if self.read_only else "r+")
                attrs = dict(group.attrs)
                ours = attrs.get(self.MARKER) is not None
                problem = self._validate(group, attrs)
            except Exception as exc:  # unreadable metadata, not a zarr store, ...
                problem = f"is unreadable ({type(exc).__name__}: {exc})"
            if problem is None:
                self._bind(group)
                return
            if self.read_only:
                raise CacheUnavailable(f"the embedding cache {path} {problem}, and its folder is read-only")
            log.warning("embedding cache %s %s: rebuilding it", path, problem)
            self.rebuilt_because = problem
            self._discard(ours)
        if self.read_only:
            raise CacheUnavailable(f"the cache folder {parent} is read-only")
        try:
            self._create()
        except OSError as exc:
            raise CacheUnavailable(f"cannot create the embedding cache {path}: {exc}") from exc

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
                  "signatures": ((Z, 20), np.dtype(np.uint8)), "done": ((Z,), np.dtype(np.uint8))}
        for name, (shape, dtype) in expect.items():
            try:
                arr = group[name]
            except Exception:
                return f"is damaged (array {name!r} is missing)"
            if tuple(arr.shape) != shape or np.dtype(arr.dtype) != dtype:
                return (f"is damaged (array {name!r} is {tuple(arr.shape)} {arr.dtype}, expected "
                        f"{shape} {dtype})")
        return None

    def _discard(self, ours: bool) -> None:
        """Delete a store of ours; move anything else aside (never delete what we did not write)."""
        path = self.path
        if ours:
            try:
                shutil.rmtree(path)
                return
            except OSError as exc:
                log.warning("cannot delete the stale cache %s (%s): moving it aside", path, exc)
        aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(path, aside)
            log.warning("moved the unusable cache %s aside to %s (you may delete it)", path, aside)
        except OSError as exc:
            raise CacheUnavailable(f"cannot replace the unusable cache {path}: {exc}") from exc

    def _create(self) -> None:
        zarr = _zarr()
        group = zarr.open_group(str(self.path), mode="w")
        group.attrs.update(self.meta)  # first: a store interrupted while being created is still ours
        Z = self.n_slices
        _create_array(group, "features", (Z, *FEATURE_SHAPE), (1, *FEATURE_SHAPE), self.feature_dtype,
                      compress=True)
        _create_array(group, "signatures", (Z, 20), (1, 20), np.uint8, compress=False)
        _create_array(group, "done", (Z,), (1,), np.uint8, compress=False)
        self._bind(group)

    def _bind(self, group) -> None:
        self._group = group
        self._features = group["features"]
        self._signatures = group["signatures"]
        self._done = group["done"]

    # -- slices
    def _flag(self, z: int) -> int:
        try:
            return int(np.asarray(self._done[z]))
        except Exception as exc:
            log.warning("embedding cache %s: slice %d has an unreadable done marker (%s): recomputing it",
                        self.path, z, exc)
            return 0

    def _signature_matches(self, z: int, signature: str) -> bool:
        try:
            stored = bytes(np.asarray(self._signatures[z], dtype=np.uint8))
        except Exception:
            return False
        return stored == bytes.fromhex(signature)

    def is_done(self, z: int, signature: str) -> bool:
        """Slice ``z`` is complete and was computed from pixels with this signature."""
        with self._lock:
            return self._flag(z) != 0 and self._signature_matches(z, signature)

    def read(self, z: int, signature: str) -> tuple[np.ndarray, bool] | None:
        """``(features (256, 64, 64), blank)`` of a complete, matching, finite slice, else None."""
        with self._lock:
            flag = self._flag(z)
            if flag == 0:
                return None
            if not self._signature_matches(z, signature):
                log.warning("embedding cache %s: slice %d was computed from different pixel data: "
                            "recomputing it", self.path, z)
                return None
            try:
                feats = np.asarray(self._features[z])
            except Exception as exc:
                log.warning("embedding cache %s: slice %d is unreadable (%s): recomputing it", self.path, z, exc)
                return None
        if feats.shape != FEATURE_SHAPE or not np.isfinite(feats).all():
            log.warning("embedding cache %s: slice %d holds invalid values (NaN/inf): recomputing it",
                        self.path, z)
            return None
        return feats, flag == 2

    def write(self, z: int, features: np.ndarray, blank: bool, signature: str) -> None:
        """Store one slice: features, then signature, then the done flag (raises OSError on failure)."""
        if self.read_only:
            raise CacheUnavailable(f"the embedding cache {self.path} is read-only")
        with self._lock:
            self._write_arrays(z, np.asarray(features, dtype=self.feature_dtype), blank,
                               np.frombuffer(bytes.fromhex(signature), dtype=np.uint8))

    def _write_arrays(self, z: int, features: np.ndarray, blank: bool, signature: np.ndarray) -> None:
        if self._flag(z) != 0:  # rewriting a slice: it must not look done while half written
            self._done[z] = 0
        self._features[z] = features
        self._signatures[z] = signature
        self._done[z] = 2 if blank else 1

    def done_slices(self) -> list[int]:
        with self._lock:
            try:
                flags = np.asarray(self._done[:])
            except Exception:
                return [z for z in range(self.n_slices) if self._flag(z)]
        return [int(z) for z in np.flatnonzero(flags)]
