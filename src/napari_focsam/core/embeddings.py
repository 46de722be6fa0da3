"""Images as stacks of planes, and their per-slice image embeddings.

:class:`ImageVolume` wraps a numpy or dask array -- 2D ``(Y, X)``, colour ``(Y, X, C)``,
a stack ``(Z, Y, X)`` or a colour stack ``(Z, Y, X, C)`` -- and materialises one plane at a
time: the encoder input (8-bit RGB through fixed contrast limits), a content signature per
slice, and a cheap key for the whole volume. Nothing here ever loads a whole lazy volume.

:class:`EmbeddingStore` gives the encoder output of a slice on demand: from a memory LRU
bounded in bytes, else from a signed on-disk zarr cache (optional), else by running the
encoder (once per slice even when several threads ask at the same time).

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

import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .image import DEFAULT_PERCENTILES, robust_limits, to_rgb_uint8
from .predictor import PREPROCESS_VERSION, FocSAMPredictor, ImageEmbedding, input_size_for, preprocess

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheUnavailable",
    "DiskCache",
    "EmbeddingStore",
    "ImageVolume",
    "SliceEmbedding",
    "model_id",
]

log = logging.getLogger(__name__)

#: Version of the on-disk layout; part of every store's signature.
CACHE_FORMAT_VERSION = 1
#: Shape of one slice's image embedding.
FEATURE_SHAPE = (256, 64, 64)
#: Smallest accepted height/width of a plane.
MIN_PLANE_SIZE = 2
#: Number of slices sampled (evenly spaced) for default contrast limits of a stack.
CONTRAST_SAMPLE_SLICES = 9
#: At most this many finite pixels per sampled slice enter the percentile computation.
CONTRAST_SAMPLE_PIXELS = 250_000


# --------------------------------------------------------------------------- image volumes


def _channel_axis(shape: tuple[int, ...], rgb: bool | None) -> bool:
    """Whether the last axis of ``shape`` holds channels; raises ValueError on unsupported layouts."""
    nd = len(shape)
    last = shape[-1]
    supported = ("napari-focsam takes a 2D image (Y, X), a colour image (Y, X, C), a 3D stack (Z, Y, X) "
                 "or a colour stack (Z, Y, X, C), with C = 1 to 4 channels (gray, two channels, RGB, RGBA)")
    # a short trailing axis next to a much longer one looks like channels, not like pixels
    looks_like_channels = nd >= 3 and last <= 16 and shape[-2] >= 4 * last
    if nd < 2:
        raise ValueError(f"expected an image with at least two axes (Y, X), got shape {shape}")
    if nd > 4:
        raise ValueError(f"{nd}D data of shape {shape} is not supported: {supported}. "
                         "Select one time point / channel first (e.g. data[t, :, c])")
    if rgb is True:
        if nd == 2:
            raise ValueError(f"rgb=True, but the data of shape {shape} has no channel axis")
        if not 1 <= last <= 4:
            raise ValueError(f"wrong channel count: the last axis of shape {shape} has {last} channels; "
                             f"{supported}")
        return True
    if rgb is False:
        if nd == 4:
            raise ValueError(f"4D data of shape {shape} without a colour axis (rgb=False) is not supported: "
                             f"{supported}. Select one channel or time point first")
        return False
    if nd == 2:
        return False
    if nd == 3:
        if last in (3, 4) and shape[-2] > 4:
            return True
        if looks_like_channels:
            if last <= 2:
                return True
            raise ValueError(f"wrong channel count: the last axis of shape {shape} looks like {last} "
                             f"channels; {supported}. Select channels first, or pass rgb=False if this "
                             f"really is a stack of {shape[0]} images of {shape[1]}x{shape[2]} pixels")
        return False
    # nd == 4
    if 1 <= last <= 4:
        return True
    if looks_like_channels:
        raise ValueError(f"wrong channel count: the last axis of shape {shape} looks like {last} channels; "
                         f"{supported}")
    raise ValueError(f"4D data of shape {shape} is not supported: {supported}. "
                     "Select one channel or time point first (e.g. data[0])")


def _is_lazy(data: Any) -> bool:
    return hasattr(data, "compute") or not isinstance(data, np.ndarray)


class ImageVolume:
    """A 2D image or a 3D stack, read one plane at a time.

    data: numpy or dask array (or any array-like with ``shape``, ``dtype`` and indexing),
    ``(Y, X)``, ``(Y, X, C)``, ``(Z, Y, X)`` or ``(Z, Y, X, C)`` with C in 1..4 (C = 3/4 is
    detected automatically; ``rgb=True`` forces a channel axis, ``rgb=False`` forbids one).
    contrast_limits: the intensities mapped to 0 and 255 for the encoder. Default: uint8 data
    is used as is; other dtypes use robust percentiles (0.5 %, 99.5 %) of the finite pixels,
    for a stack computed once from a few evenly spaced slices (so that all slices share the
    same mapping and dim end slices are not stretched to noise).

    The data is treated as immutable: signatures and limits are computed once.
    """

    def __init__(self, data: Any, *, rgb: bool | None = None,
                 contrast_limits: tuple[float, float] | None = None) -> None:
        if not (hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__")):
            data = np.asarray(data)
        shape = tuple(int(s) for s in data.shape)
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"unsupported pixel type {dtype}: expected integers, floats or booleans")
        channels = _channel_axis(shape, rgb)
        spatial = shape[:-1] if channels else shape
        if 0 in shape:
            raise ValueError(f"the image is empty (shape {shape})")
        if min(spatial[-2:]) < MIN_PLANE_SIZE:
            raise ValueError(f"the image planes are {spatial[-2]}x{spatial[-1]} pixels: at least "
                             f"{MIN_PLANE_SIZE}x{MIN_PLANE_SIZE} are needed")
        self.data = data
        self.shape = shape
        self.dtype = dtype
        self.has_channels = channels
        self.is_3d = len(spatial) == 3
        self.n_slices = spatial[0] if self.is_3d else 1
        self.plane_shape: tuple[int, int] = (spatial[-2], spatial[-1])
        self.n_channels = shape[-1] if channels else 1
        if contrast_limits is not None:
            lo, hi = (float(v) for v in contrast_limits)
            if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
                raise ValueError(f"contrast limits must be two finite numbers low <= high, got {contrast_limits}")
            contrast_limits = (lo, hi)
        self._given_limits = contrast_limits
        self._limits: tuple[float, float] | None = contrast_limits
        self._limits_done = contrast_limits is not None or dtype == np.uint8
        self._signatures: dict[int, str] = {}
        self._key: str | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        kind = "stack" if self.is_3d else "image"
        return f"ImageVolume({kind}, shape={self.shape}, dtype={self.dtype}, channels={self.has_channels})"

    # -- planes
    def check_z(self, z: Any = 0) -> int:
        """``z`` as a valid slice index (ValueError with the valid range otherwise)."""
        if z is None:
            z = 0
        try:
            zf = float(z)
        except (TypeError, ValueError):
            raise ValueError(f"slice index must be a number, got {z!r}") from None
        zi = int(round(zf)) if np.isfinite(zf) else -1
        if not np.isfinite(zf) or abs(zf - zi) > 1e-6 or not 0 <= zi < self.n_slices:
            if self.is_3d:
                raise ValueError(f"slice {z} is out of range: the stack has {self.n_slices} slices "
                                 f"(0..{self.n_slices - 1})")
            raise ValueError(f"slice {z} requested, but the image is 2D (only slice 0)")
        return zi

    def plane(self, z: int = 0) -> np.ndarray:
        """One materialised plane, (Y, X) or (Y, X, C)."""
        z = self.check_z(z)
        arr = self.data[z] if self.is_3d else self.data
        if hasattr(arr, "compute"):
            arr = arr.compute()
        return np.asarray(arr)

    @property
    def contrast_limits(self) -> tuple[float, float] | None:
        """The (low, high) limits mapped to 0-255, or None for uint8 data used as is."""
        if not self._limits_done:
            with self._lock:
                if not self._limits_done:
                    self._limits = self._auto_limits()
                    self._limits_done = True
        return self._limits

    def _auto_limits(self) -> tuple[float, float]:
        if not self.is_3d:
            return robust_limits(self.plane(0))
        n = min(self.n_slices, CONTRAST_SAMPLE_SLICES)
        picks = np.unique(np.linspace(0, self.n_slices - 1, n).round().astype(int))
        parts = []
        for z in picks:
            v = np.asarray(self.plane(int(z)), dtype=np.float32).reshape(-1)
            v = v[np.isfinite(v)]
            if v.size > CONTRAST_SAMPLE_PIXELS:
                v = v[:: int(np.ceil(v.size / CONTRAST_SAMPLE_PIXELS))]
            parts.append(v)
        values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if values.size == 0:
            return 0.0, 1.0
        lo, hi = np.percentile(values, DEFAULT_PERCENTILES)
        return float(lo), float(hi)

    def rgb_plane(self, z: int = 0) -> np.ndarray:
        """The encoder input of slice ``z``: (Y, X, 3) uint8 through :attr:`contrast_limits`."""
        return to_rgb_uint8(self.plane(z), self.contrast_limits, rgb=self.has_channels)

    # -- signatures
    def slice_signature(self, z: int = 0) -> str:
        """sha1 (hex) of slice ``z``'s dtype, shape and bytes; reads that slice only."""
        z = self.check_z(z)
        sig = self._signatures.get(z)
        if sig is None:
            arr = np.ascontiguousarray(self.plane(z))
            h = hashlib.sha1(f"{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.reshape(-1).view(np.uint8))
            sig = h.hexdigest()
            self._signatures[z] = sig
        return sig

    def volume_key(self) -> str:
        """A cheap identity of the whole volume: shape, dtype, layout and the signatures of
        its first, middle and last slices (every other slice is checked when it is used)."""
        if self._key is None:
            picks = sorted({0, self.n_slices // 2, self.n_slices - 1})
            payload = json.dumps([self.shape, self.dtype.str, self.has_channels,
                                  [self.slice_signature(z) for z in picks]])
            self._key = hashlib.sha1(payload.encode()).hexdigest()
        return self._key


# --------------------------------------------------------------------------- model identity

_MODEL_IDS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, str]]" = weakref.WeakKeyDictionary()
_MODEL_ID_LOCK = threading.Lock()


def model_id(predictor: FocSAMPredictor) -> str:
    """sha1 of the model type, channel order, PREPROCESS_VERSION and a digest of the encoder weights.

    The digest hashes every encoder tensor's name, shape and 256 evenly strided values, which is
    fast even for ViT-H and changes with any fine-tuning. Only the encoder matters for
    embeddings, so decoder or refiner changes keep the cache valid. Computed once per model.
    """
    model = predictor.model
    order = predictor.channel_order
    with _MODEL_ID_LOCK:
        known = _MODEL_IDS.setdefault(model, {})
        if order in known:
            return known[order]
    h = hashlib.sha1(json.dumps({
        "cache_format": CACHE_FORMAT_VERSION, "model_type": getattr(model, "model_type", "?"),
        "channel_order": order, "preprocess_version": PREPROCESS_VERSION,
        "encoder": type(model.image_encoder).__name__,
    }, sort_keys=True).encode())
    with torch.no_grad():
        for name, t in model.image_encoder.state_dict().items():
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            sample = flat[::step][:256].to("cpu", torch.float32).numpy()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(sample.tobytes())
    digest = h.hexdigest()
    with _MODEL_ID_LOCK:
        _MODEL_IDS.setdefault(model, {})[order] = digest
    return digest


# --------------------------------------------------------------------------- on-disk cache


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


# --------------------------------------------------------------------------- the store


@dataclass
class SliceEmbedding(ImageEmbedding):
    """An :class:`ImageEmbedding` of one slice; ``blank``: the encoder input was constant."""

    z: int = 0
    blank: bool = False


@dataclass
class _Entry:
    features: torch.Tensor  # (256, 64, 64) on the CPU, in the store's feature dtype
    blank: bool

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.numel()


class EmbeddingStore:
    """Per-slice image embeddings of an :class:`ImageVolume`, computed on demand and cached.

    Lookup order: memory LRU (bounded by ``max_memory_bytes``), the disk cache under
    ``cache_dir`` (if given), the encoder. Embeddings are kept as float16 (``feature_dtype``):
    half the memory and disk of float32, with no measurable effect on the masks
    (``benchmarks/bench_engine.py`` checks it).

    cache_dir: a folder holding one ``<model>-<key>.zarr`` store per (image, model), or a
    path ending in ``.zarr`` used as the store itself. A read-only or full folder makes the
    store warn once and continue in memory (``disk_error`` says why); a read-only folder with
    a valid store is still read.

    Thread-safe: any thread may call :meth:`get` while another runs :meth:`precompute`; a
    slice is never encoded twice at the same time, and the encoder runs one slice at a time.
    """

    def __init__(self, predictor: FocSAMPredictor, vol: ImageVolume, *,
                 cache_dir: str | Path | None = None, max_memory_bytes: int = 512 * 2**20,
                 feature_dtype: str | np.dtype = "float16") -> None:
        if not isinstance(vol, ImageVolume):
            raise TypeError(f"expected an ImageVolume, got {type(vol).__name__}")
        if max_memory_bytes < 0:
            raise ValueError("max_memory_bytes must be >= 0")
        self.feature_dtype = np.dtype(feature_dtype)
        if self.feature_dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"feature_dtype must be float16 or float32, got {feature_dtype}")
        self._torch_dtype = torch.float16 if self.feature_dtype == np.float16 else torch.float32
        self.predictor = predictor
        self.volume = vol
        self.max_memory_bytes = int(max_memory_bytes)
        self.original_size = vol.plane_shape
        self.input_size = input_size_for(vol.plane_shape)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.stats = {"computed": 0, "disk_hits": 0, "memory_hits": 0}
        self.disk_error: str | None = None
        self.last_precompute: dict[str, Any] = {}
        self._mem: OrderedDict[int, _Entry] = OrderedDict()
        self._hot: tuple[int, SliceEmbedding] | None = None  # float32 copy of the last slice served
        self._lock = threading.RLock()
        self._encode_lock = threading.Lock()
        self._inflight: dict[int, threading.Event] = {}
        self._disk: DiskCache | None = None
        self._disk_opened = cache_dir is None
        self._model_id: str | None = None

    # -- identity and disk
    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = model_id(self.predictor)
        return self._model_id

    def _meta(self) -> dict[str, Any]:
        vol = self.volume
        lim = vol.contrast_limits
        return {
            "model_id": self.model_id,
            "model_type": getattr(self.predictor.model, "model_type", "?"),
            "channel_order": self.predictor.channel_order,
            "preprocess_version": PREPROCESS_VERSION,
            "image_shape": list(vol.shape),
            "image_dtype": vol.dtype.str,
            "volume_key": vol.volume_key(),
            "contrast_limits": None if lim is None else [float(lim[0]), float(lim[1])],
            "input_size": list(self.input_size),
            "original_size": list(self.original_size),
            "feature_dtype": self.feature_dtype.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _store_path(self) -> Path:
        assert self.cache_dir is not None
        if self.cache_dir.suffix == ".zarr":
            return self.cache_dir
        key = hashlib.sha1((self.volume.volume_key() + self.model_id).encode()).hexdigest()[:20]
        mtype = "".join(c if c.isalnum() or c in "_-" else "_" for c in
                        str(getattr(self.predictor.model, "model_type", "model")))
        return self.cache_dir / f"{mtype}-{key}.zarr"

    def _ensure_disk(self) -> DiskCache | None:
        if self._disk_opened:
            return self._disk
        with self._lock:
            if not self._disk_opened:
                try:
                    self._disk = DiskCache(self._store_path(), self._meta(), self.volume.n_slices,
                                           self.feature_dtype)
                    if self._disk.read_only:
                        self._warn_disk(f"the cache folder is read-only: using {self._disk.path} for reading only")
                except (CacheUnavailable, OSError) as exc:
                    self._disk = None
                    self._warn_disk(f"{exc}: embeddings are kept in memory only")
                self._disk_opened = True
        return self._disk

    def _warn_disk(self, message: str) -> None:
        if self.disk_error is None:
            log.warning("embedding cache: %s", message)
        self.disk_error = message

    @property
    def cache_path(self) -> Path | None:
        """The zarr store in use (None without a usable disk cache)."""
        disk = self._ensure_disk()
        return disk.path if disk is not None else None

    @property
    def disk_writable(self) -> bool:
        """True when new embeddings are written to disk."""
        disk = self._ensure_disk()
        return disk is not None and not disk.read_only

    # -- memory
    @property
    def memory_bytes(self) -> int:
        with self._lock:
            hot = self._hot[1].features.numel() * 4 if self._hot is not None else 0
            return sum(e.nbytes for e in self._mem.values()) + hot

    def _evict(self) -> None:
        while self._mem and self.memory_bytes > self.max_memory_bytes:
            z, _ = self._mem.popitem(last=False)
            if self._hot is not None and self._hot[0] == z:
                self._hot = None
        if self.memory_bytes > self.max_memory_bytes:
            self._hot = None

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()
            self._hot = None

    def in_memory(self) -> list[int]:
        with self._lock:
            return list(self._mem)

    # -- lookup
    def has(self, z: int = 0) -> bool:
        """Whether slice ``z`` is available without running the encoder (memory or valid on disk)."""
        z = self.volume.check_z(z)
        with self._lock:
            if z in self._mem:
                return True
        disk = self._ensure_disk()
        return disk is not None and disk.is_done(z, self.volume.slice_signature(z))

    def get(self, z: int = 0) -> SliceEmbedding:
        """The embedding of slice ``z`` (computed on demand); features (1, 256, 64, 64) float32."""
        z = self.volume.check_z(z)
        with self._lock:
            if self._hot is not None and self._hot[0] == z and z in self._mem:
                self._mem.move_to_end(z)
                self.stats["memory_hits"] += 1
                return self._hot[1]
        entry, _ = self._obtain(z, memorize=True)
        emb = SliceEmbedding(entry.features.float()[None], self.input_size, self.original_size, z, entry.blank)
        if self._torch_dtype != torch.float32:
            with self._lock:
                if z in self._mem:
                    self._hot = (z, emb)
                    self._evict()
        return emb

    def _obtain(self, z: int, *, memorize: bool) -> tuple[_Entry, str]:
        """(entry, source) with source in memory/disk/computed; one owner per slice at a time."""
        while True:
            with self._lock:
                entry = self._mem.get(z)
                if entry is not None:
                    self._mem.move_to_end(z)
                    self.stats["memory_hits"] += 1
                    return entry, "memory"
                event = self._inflight.get(z)
                if event is None:
                    event = self._inflight[z] = threading.Event()
                    break
            event.wait()  # another thread is producing slice z: then look again
        try:
            source = "disk"
            entry = self._load_disk(z)
            if entry is None:
                source = "computed"
                entry = self._compute(z)
                self._save_disk(z, entry)
            if memorize:
                with self._lock:
                    self._mem[z] = entry
                    self._mem.move_to_end(z)
                    self._evict()
            return entry, source
        finally:
            with self._lock:
                self._inflight.pop(z, None)
            event.set()

    def _load_disk(self, z: int) -> _Entry | None:
        disk = self._ensure_disk()
        if disk is None:
            return None
        got = disk.read(z, self.volume.slice_signature(z))
        if got is None:
            return None
        feats, blank = got
        with self._lock:
            self.stats["disk_hits"] += 1
        return _Entry(torch.from_numpy(np.array(feats, dtype=self.feature_dtype)), blank)

    def _save_disk(self, z: int, entry: _Entry) -> None:
        disk = self._disk
        if disk is None or disk.read_only:
            return
        try:
            disk.write(z, entry.features.numpy(), entry.blank, self.volume.slice_signature(z))
        except Exception as exc:  # full disk, permissions changed, ...
            disk.read_only = True
            self._warn_disk(f"cannot write to {disk.path} ({type(exc).__name__}: {exc}): new embeddings "
                            "are kept in memory only")

    def _compute(self, z: int) -> _Entry:
        rgb = self.volume.rgb_plane(z)
        blank = bool(rgb.min() == rgb.max())
        model = self.predictor.model
        with self._encode_lock, torch.inference_mode():
            x, _ = preprocess(rgb, self.predictor.channel_order, self.predictor.device)
            features = model.encode(x)[0]
        if not torch.isfinite(features).all():
            raise RuntimeError(f"the image encoder produced NaN/inf for slice {z}")
        feats = features.to("cpu", self._torch_dtype).contiguous()
        if not torch.isfinite(feats).all():
            raise RuntimeError(f"the embedding of slice {z} overflows float16: use feature_dtype='float32'")
        with self._lock:
            self.stats["computed"] += 1
        return _Entry(feats, blank)

    # -- bulk
    def precompute(self, slices: Iterable[int] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None) -> int:
        """Make sure the given slices (default: all) are cached; returns how many were encoded.

        With a writable disk cache the embeddings go to disk only (the memory LRU keeps the
        slices in use); without one they go to memory (bounded). ``progress(done, total)`` is
        called after each slice, ``cancelled()`` before each; a cancelled or interrupted run
        keeps what it finished. :attr:`last_precompute` holds the counts.
        """
        zs = [self.volume.check_z(z) for z in (range(self.volume.n_slices) if slices is None else slices)]
        total = len(zs)
        computed = reused = 0
        was_cancelled = False
        t0 = time.perf_counter()
        disk = self._ensure_disk()
        for i, z in enumerate(zs):
            if cancelled is not None and cancelled():
                was_cancelled = True
                break
            with self._lock:
                in_mem = z in self._mem
            if in_mem and (disk is None or disk.read_only):
                reused += 1
            elif disk is not None and disk.is_done(z, self.volume.slice_signature(z)):
                reused += 1
            else:
                with self._lock:
                    in_mem = self._mem.get(z)
                if in_mem is not None and disk is not None and not disk.read_only:
                    self._save_disk(z, in_mem)  # computed before the cache existed
                    reused += 1
                else:
                    _, source = self._obtain(z, memorize=disk is None or disk.read_only)
                    computed += source == "computed"
                    reused += source != "computed"
            if progress is not None:
                progress(i + 1, total)
        self.last_precompute = {"computed": computed, "reused": reused, "cancelled": was_cancelled,
                                "seconds": time.perf_counter() - t0}
        return computed
