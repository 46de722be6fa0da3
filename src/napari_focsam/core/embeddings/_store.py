"""Per-slice image embeddings of an image volume: memory LRU, disk cache, encoder.

:class:`EmbeddingStore` gives the encoder output of a slice on demand: from a memory LRU
bounded in bytes, else from a signed on-disk zarr cache (optional, :mod:`~napari_focsam.core.embeddings._disk`), else by
running the encoder (once per slice even when several threads ask at the same time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..images import ImageReadError, ImageVolume
from ._disk import CACHE_FORMAT_VERSION, CacheUnavailable, CacheWriteError, DiskCache
from ._encode import PREPROCESS_VERSION, Encoder, ImageEmbedding, input_size_for, preprocess

__all__ = [
    "EmbeddingStore",
    "SliceEmbedding",
    "model_id",
]

log = logging.getLogger(__name__)
#: Seconds between two notes that a precompute waits for units claimed by another process.
WAIT_NOTE_S = 30.0


# --------------------------------------------------------------------------- model identity

_MODEL_IDS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, str]]" = weakref.WeakKeyDictionary()
_MODEL_ID_LOCK = threading.Lock()


def model_id(predictor: Encoder) -> str:
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
        # the encoder's type: "focsam_vit_t" and "vit_t" share one encoder, hence one cache
        "cache_format": CACHE_FORMAT_VERSION,
        "model_type": str(getattr(model, "model_type", "?")).removeprefix("focsam_"),
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


# --------------------------------------------------------------------------- the store


@dataclass
class SliceEmbedding(ImageEmbedding):
    """An :class:`ImageEmbedding` of one slice; ``blank``: the encoder input was constant."""

    z: int = 0
    blank: bool = False


def channels_last(features: torch.Tensor) -> torch.Tensor:
    """(C, h, w) features -> the same values with the channels last in memory (strides
    (1, w C, C)): the mask decoder reads an embedding as (h w, C) tokens, which are then a
    view of it (each decoding of a slice otherwise copies it into that order first)."""
    return features.permute(1, 2, 0).contiguous().permute(2, 0, 1)


@dataclass
class _Entry:
    features: torch.Tensor  # (256, 64, 64) on the CPU, in the store's feature dtype, channels last (above)
    blank: bool

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.numel()


def _fill_pending(units: list[int], fill_one: Callable[..., str | None], disk: DiskCache | None,
                  info: dict[str, Any], progress: Callable[[int, int], None] | None,
                  cancelled: Callable[[], bool] | None, poll_s: float) -> bool:
    """Visit ``units`` until each is cached (``fill_one(z, disk, filling, waited=...)`` says how,
    or None while another process holds it); counts go to ``info``. False when cancelled."""
    filling = disk is not None and not disk.read_only
    pending = list(units)
    first_pass = True
    said_at = -math.inf  # when the wait for another process's claims was last said
    while pending:
        progressed = False
        for z in list(pending):
            if cancelled is not None and cancelled():
                return False
            outcome = fill_one(z, disk, filling, waited=not first_pass)
            if outcome is None:
                continue  # another process is encoding it: come back later
            pending.remove(z)
            info[outcome] += 1
            progressed = True
            if progress is not None:
                progress(info["total"] - len(pending), info["total"])
        first_pass = False
        if pending and not progressed:
            if time.monotonic() >= said_at + WAIT_NOTE_S and disk is not None:
                said_at = time.monotonic()
                log.warning("%s: waiting for %d unit(s) that another process is computing (unit %s: %s)",
                            disk.path, len(pending), pending[0],
                            disk.claims.describe_holder(pending[0]) or "released just now")
            time.sleep(poll_s)
    return True


class EmbeddingStore:
    """Per-slice image embeddings of an :class:`ImageVolume`, computed on demand and cached.

    Lookup order: memory LRU (bounded by ``max_memory_bytes``), the disk cache under
    ``cache_dir`` (if given), the encoder. Embeddings are kept as float16 (``feature_dtype``):
    half the memory and disk of float32, with no measurable effect on the masks
    (``benchmarks/bench_engine.py`` checks it).

    cache_dir: a folder holding one ``<model>-<key>.zarr`` store per (image, model), or a
    path ending in ``.zarr`` used as the store itself (refused when it holds anything but one
    of our stores). A read-only folder, a refused path or a full disk makes the store warn
    once and continue in memory (``disk_error`` says why), except that :meth:`precompute`
    stops at the first failed write; a read-only folder with a valid store is still read.

    Thread-safe: any thread may call :meth:`get` while another runs :meth:`precompute`; a
    slice is never encoded twice at the same time, and the encoder runs one slice at a time.
    """

    #: One embedding per slice (a :class:`TiledEmbeddingStore` holds tiles); the unit of work.
    tiled = False
    unit_name = "slices"

    def __init__(self, predictor: Encoder, vol: ImageVolume, *,
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
        self._write_error: str | None = None  # the first failed write, as the OS said it
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
            **self._extra_meta(),
        }

    # -- the units of work: one per slice here; a tiled store (:mod:`~napari_focsam.core.embeddings._tiled`) has one
    #    per (slice, level, tile) and overrides these hooks
    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _unit_count(self) -> int:
        return self.volume.n_slices

    def _check_unit(self, u: Any) -> int:
        return self.volume.check_z(u)

    @property
    def n_units(self) -> int:
        """How many units of work the image has (slices here; tiles of every level when tiled)."""
        return len(self._all_units())

    def _all_units(self) -> list[int]:
        return list(range(self.volume.n_slices))

    def _unit_signature(self, u: int) -> str:
        return self.volume.slice_signature(u)

    def _unit_name(self, u: int) -> str:
        return f"slice {u}"

    def _encoder_input(self, u: int) -> tuple[np.ndarray, bool]:
        """(H, W, 3) uint8 encoder input of unit ``u`` and whether it is blank (constant)."""
        rgb = self.volume.rgb_plane(u)
        return rgb, bool(rgb.min() == rgb.max())

    def _announce(self, u: int, state: str) -> None:
        """Unit ``u`` starts being encoded (``"embedding"``) or is available (``"ready"``: in memory,
        or written to the disk cache by :meth:`precompute`)."""

    def _store_path(self) -> Path:
        assert self.cache_dir is not None
        if self.cache_dir.suffix == ".zarr":
            return self.cache_dir
        key = hashlib.sha1((self.volume.volume_key() + self.model_id).encode()).hexdigest()[:20]
        mtype = "".join(c if c.isalnum() or c in "_-" else "_" for c in
                        str(getattr(self.predictor.model, "model_type", "model")))
        tag = self._extra_meta().get("tiling")
        if tag:  # tiled embeddings live in their own store
            key = hashlib.sha1((key + json.dumps(tag, sort_keys=True)).encode()).hexdigest()[:20]
            return self.cache_dir / f"{mtype}-tiles-{key}.zarr"
        return self.cache_dir / f"{mtype}-{key}.zarr"

    def _ensure_disk(self) -> DiskCache | None:
        if self._disk_opened:
            return self._disk
        with self._lock:
            if not self._disk_opened:
                try:
                    self._disk = DiskCache(self._store_path(), self._meta(), self._unit_count(),
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

    def adopt(self, other: "EmbeddingStore") -> int:
        """Take over the in-memory embeddings of ``other`` when they are valid here.

        They are when both stores see the same image (:meth:`ImageVolume.volume_key` and
        contrast limits) through the same encoder (:attr:`model_id`): switching between models
        that share an encoder (``vit_t`` and ``focsam_t``) then re-encodes nothing.

        Parameters
        ----------
        other : EmbeddingStore
            The store being replaced.

        Returns
        -------
        int
            How many slices were taken over (0 when the embeddings do not apply here).
        """
        if other is self or other.model_id != self.model_id or other.feature_dtype != self.feature_dtype:
            return 0
        if type(other) is not type(self) or other._extra_meta() != self._extra_meta():
            return 0  # units of another kind (slices vs tiles) or another tiling
        if (other.volume.volume_key() != self.volume.volume_key()
                or other.volume.contrast_limits != self.volume.contrast_limits):
            return 0
        with other._lock:
            entries = list(other._mem.items())
        with self._lock:
            for z, entry in entries:
                self._mem.setdefault(z, entry)
                self._mem.move_to_end(z)
            self._evict()
            return sum(1 for z, _ in entries if z in self._mem)

    # -- lookup
    def has(self, z: int = 0) -> bool:
        """Whether slice ``z`` is available without running the encoder (memory or valid on disk)."""
        z = self._check_unit(z)
        with self._lock:
            if z in self._mem:
                return True
        disk = self._ensure_disk()
        return disk is not None and disk.verify(z, self._unit_signature(z))

    def done_units(self) -> list[int]:
        """The units marked complete in the disk cache (not verified; empty without a cache)."""
        disk = self._ensure_disk()
        return [] if disk is None else disk.done_slices()

    def missing(self, slices: Iterable[int] | None = None) -> list[int]:
        """The slices (default: all) that :meth:`precompute` would still have to encode.

        With a disk cache: the slices it does not hold intact (each one is read and checked);
        without one: the slices not in memory. An empty list means there is nothing to do,
        even when the cache is read-only.
        """
        zs = [self._check_unit(z) for z in (self._all_units() if slices is None else slices)]
        disk = self._ensure_disk()
        if disk is None:
            with self._lock:
                return [z for z in zs if z not in self._mem]
        return [z for z in zs if not disk.verify(z, self._unit_signature(z))]

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
                self._announce(z, "embedding")
                entry = self._compute(z)
                self._save_disk(z, entry)
            if memorize:
                self._remember(z, entry)
            self._announce(z, "ready")  # in memory, or (a precompute with a disk cache) on disk
            return entry, source
        finally:
            with self._lock:
                self._inflight.pop(z, None)
            event.set()

    def _load_disk(self, z: int) -> _Entry | None:
        disk = self._ensure_disk()
        if disk is None:
            return None
        got = disk.read(z, self._unit_signature(z))
        if got is None:
            return None
        feats, blank = got
        with self._lock:
            self.stats["disk_hits"] += 1
        return _Entry(channels_last(torch.from_numpy(np.asarray(feats, dtype=self.feature_dtype))), blank)

    def _remember(self, z: int, entry: _Entry) -> None:
        """Slice ``z`` into the memory LRU as the newest; the oldest go while it is over its bound."""
        with self._lock:
            self._mem[z] = entry
            self._mem.move_to_end(z)
            self._evict()

    def _save_disk(self, z: int, entry: _Entry) -> bool:
        """Write slice ``z`` to disk; False when not written (no disk, another process has the
        slice, or the write failed: then the disk turns read-only and :attr:`disk_error` says why)."""
        disk = self._disk
        if disk is None or disk.read_only:
            return False
        try:
            with disk.claims.hold(z) as mine:
                if not mine:
                    return False  # another process is encoding this slice and will write it
                disk.write(z, entry.features.numpy(), entry.blank, self._unit_signature(z))
        except OSError as exc:  # full disk, permissions changed, ...
            disk.read_only = True
            self._write_error = self._write_error or str(exc)
            self._warn_disk(f"{exc}: new embeddings are kept in memory only")
            return False
        return True

    def _compute(self, z: int) -> _Entry:
        rgb, blank = self._encoder_input(z)
        model = self.predictor.model
        with self._encode_lock, torch.inference_mode():
            x, _ = preprocess(rgb, self.predictor.channel_order, self.predictor.device)
            features = model.encode(x)[0]
        if not torch.isfinite(features).all():
            raise RuntimeError(f"the image encoder produced NaN/inf for {self._unit_name(z)}")
        feats = channels_last(features.to("cpu", self._torch_dtype))
        if not torch.isfinite(feats).all():
            raise RuntimeError(f"the embedding of {self._unit_name(z)} overflows float16: use feature_dtype='float32'")
        with self._lock:
            self.stats["computed"] += 1
        return _Entry(feats, blank)

    # -- bulk
    def precompute(self, slices: Iterable[int] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None, *, poll_s: float = 0.2,
                   memorize: bool = False) -> int:
        """Make sure the given slices (default: all) are cached; returns how many were encoded here.

        With a writable disk cache the embeddings go to disk only (the memory LRU keeps the
        slices in use); without one they go to memory (bounded). ``memorize``: with a disk
        cache, also keep each slice in the memory LRU (still bounded by ``max_memory_bytes``;
        a slice already on disk is read into it), for a session that decodes them next: a
        slice read back from disk costs 11-14 ms (zarr, checksum), about half a propagated
        slice's decoding. Several processes may fill
        one store at once: a slice another process is encoding is skipped, and reused once it
        is written (``by_others``); a process that died leaves claims that expire (see
        :mod:`~napari_focsam.core.embeddings._claims`). ``progress(done, total)`` is called after each slice, ``cancelled()``
        before each; a cancelled or interrupted run keeps what it finished.

        :attr:`last_precompute` holds the counts: ``total``, ``computed`` (encoded here),
        ``reused`` (already cached), ``by_others`` (written by another process meanwhile),
        ``cancelled``, ``seconds``, ``error`` (None or why the run stopped).

        Raises
        ------
        CacheWriteError
            Before any work when the missing slices would not fit on the disk, and at the first
            failed write (full disk, ...): the run stops at once, and every slice written so
            far stays valid and is reused next time.
        """
        zs = [self._check_unit(z) for z in (self._all_units() if slices is None else slices)]
        info: dict[str, Any] = {"total": len(zs), "computed": 0, "reused": 0, "by_others": 0,
                                "cancelled": False, "seconds": 0.0, "error": None}
        self.last_precompute = info
        t0 = time.perf_counter()
        disk = self._ensure_disk()
        filling = disk is not None and not disk.read_only
        try:
            if filling:
                assert disk is not None
                # units not marked done: no pixel is read or hashed before the work starts (a unit's
                # signature is computed when the unit is visited)
                done = set(disk.done_slices())
                disk.check_space(sum(z not in done for z in zs))
            if not _fill_pending(zs, partial(_fill_unit, self, memorize=memorize), disk, info, progress, cancelled,
                                 poll_s):
                info["cancelled"] = True
            return info["computed"]
        except CacheWriteError as exc:
            info["error"] = str(exc)
            raise
        finally:
            info["seconds"] = time.perf_counter() - t0


def _memorize_from_disk(store: "EmbeddingStore", z: int) -> bool:
    """Slice ``z`` of ``store`` into its memory LRU from the disk cache (one read, checked as
    :meth:`EmbeddingStore.get`'s); False when the disk does not hold it intact (nothing is computed;
    a slice only in memory is not on disk either: the caller writes it)."""
    entry = store._load_disk(z)
    if entry is None:
        return False
    store._remember(z, entry)
    return True


def _fill_unit(store: "EmbeddingStore", z: int, disk: DiskCache | None, filling: bool, waited: bool, *,
               memorize: bool = False) -> str | None:
    """Cache unit ``z`` of ``store``: "computed", "reused", "by_others", or None when another process has it.
    ``memorize``: keep it in the memory LRU too (see :meth:`EmbeddingStore.precompute`)."""
    if not filling:
        with store._lock:
            if z in store._mem:
                return "reused"
        if disk is not None and disk.verify(z, store._unit_signature(z)):
            return "reused"  # a read-only cache that holds it
        _, source = store._obtain(z, memorize=True)
        return "computed" if source == "computed" else "reused"
    assert disk is not None
    sig = store._unit_signature(z)
    # on disk already (``memorize``: read once, into the memory LRU, instead of checked)
    on_disk = partial(_memorize_from_disk, store) if memorize else partial(disk.verify, signature=sig)
    if not waited and on_disk(z):
        return "reused"
    with store._lock:
        entry = store._mem.get(z)
    try:
        with disk.claims.hold(z) as mine:
            if not mine:
                return None
            if waited and on_disk(z):
                return "by_others"
            if entry is not None:  # computed before the cache existed
                store._save_disk(z, entry)
                source = "reused"
            else:
                _, source = store._obtain(z, memorize=memorize)
    except (CacheUnavailable, ImageReadError):  # the input failed, not the cache: said as it is
        raise
    except OSError as exc:  # the claim itself could not be written (full disk, ...)
        disk.read_only = True
        store._write_error = store._write_error or f"cannot write to {disk.path}: {exc}"
        store._warn_disk(f"{store._write_error}: new embeddings are kept in memory only")
    if disk.read_only:  # a write failed (here or in another thread): stop at once
        why = store._write_error or f"the embedding cache {disk.path} became read-only"
        raise CacheWriteError(f"{why}; stopped: the slices written before are complete and will be reused")
    return "computed" if source == "computed" else "reused"
