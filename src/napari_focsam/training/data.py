# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Training data: image selection and splits, the float16 embedding cache, batch sampling.

Splits
------
Sources name a dataset of :func:`napari_focsam.evaluation.datasets.read_dataset` and a
selection of its image ids (``"all"``, ``"first:N"``, ``"last:N"``, ``"range:A:B"`` or a list),
taken from the ids in **natural order** (:func:`natural_key`).  :func:`check_split` refuses a
config whose training and validation selections share an ``(dataset, image id)`` pair, and
the cache builder also refuses training images whose *file content* equals a validation
image (SHA-1 of the bytes), whatever the dataset.

Cache layout (one folder per split, one ``.npz`` per augmented image)
-------------------------------------------------------------------
``<cache_dir>/cache_info.json``
    base weights (SHA-256), model type, colour order, preprocessing version; a cache built
    with other weights is refused.
``<cache_dir>/<split>/<dataset>/<image_id>__a<KK>.npz``
    ``embedding``: float16 (256, 64, 64), the frozen encoder's output for augmented copy KK;
    ``input_size``: int32 (h, w), the image's size on the 1024 canvas;
    ``mask_<i>`` (and ``ignore_<i>`` where the dataset has an ignore band): the object masks
    **at the canvas resolution of the valid area** (h, w), bit-packed with ``np.packbits``
    (row-major, ``h * w`` bits); ``meta``: a JSON string (source, image id, augmentation, object
    ids and areas).  Copy 0 is the un-augmented image.
``<cache_dir>/<split>/index.json``
    the list of item metadata, rewritten at the end of each build (and rebuilt by scanning
    the ``.npz`` files when missing).

The build is resumable: an item whose ``.npz`` exists is skipped, and files are written to a
temporary name and renamed, so an interrupted build never leaves a truncated item.  Images
with identical bytes inside one dataset (COCO_MVal has 19 such groups) are encoded once with
all their objects.

Why canvas-resolution masks: FocSAM's loss is computed on the logits upsampled to the 1024
canvas (design §5.1), and the click simulator needs the true object shape; nuclei of the
microscopy set are only ~5 px wide on SAM's 256x256 logit grid.

Augmentations (``AugmentConfig``) are geometric only, drawn from ``default_rng([cache_seed,
crc32(dataset/image_id), copy])`` (independent of build order), and applied identically to the
image and its masks: horizontal / vertical flips, quarter turns, and a zoom-in crop.  As SAM
always resizes the longest side to 1024, a crop *is* the scale augmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.datasets import EvalDataset, EvalObject, natural_key, read_dataset, select_ids
from .config import AugmentConfig, SourceConfig, TrainingConfig

__all__ = [
    "CANVAS",
    "BatchSampler",
    "CacheItem",
    "EmbeddingCache",
    "augment_sample",
    "build_cache",
    "check_split",
    "natural_key",
    "pack_mask",
    "select_ids",
    "source_image_ids",
    "source_dataset",
    "split_ids",
    "unpack_mask",
    "write_item",
]

CANVAS = 1024
CACHE_FORMAT = 1


# --------------------------------------------------------------------------- selection / splits


def source_dataset(src: SourceConfig, root: Path) -> EvalDataset:
    """The source's dataset restricted to its selected images (natural order)."""
    ds = read_dataset(src.dataset, root)
    keep = select_ids(ds.image_ids, src.images)
    return ds.subset(keep)


def source_image_ids(src: SourceConfig, root: Path) -> list[str]:
    return select_ids(read_dataset(src.dataset, root).image_ids, src.images)


def split_ids(cfg: TrainingConfig, root: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """``{"train": {(dataset, image_id)}, "val": {...}}`` of a config (canonical dataset names)."""
    root = cfg.data_root if root is None else Path(root)
    out: dict[str, set[tuple[str, str]]] = {"train": set(), "val": set()}
    for split, sources in (("train", cfg.data.train), ("val", cfg.data.val)):
        for src in sources:
            name = read_dataset(src.dataset, root).name
            out[split] |= {(name, i) for i in source_image_ids(src, root)}
    return out


def check_split(cfg: TrainingConfig, root: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """Raise ``ValueError`` when a validation image is selected for training."""
    ids = split_ids(cfg, root)
    both = sorted(ids["train"] & ids["val"])
    if both:
        shown = ", ".join(f"{d}/{i}" for d, i in both[:5])
        raise ValueError(f"{len(both)} validation image(s) are also selected for training: {shown}")
    return ids


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- masks


def pack_mask(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, dtype=bool).ravel())


def unpack_mask(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    n = int(shape[0]) * int(shape[1])
    return np.unpackbits(packed, count=n).astype(bool).reshape(shape)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-weighted (antialiased bilinear) resize of a binary mask, thresholded at 0.5."""
    if tuple(mask.shape) == tuple(size):
        return np.asarray(mask, dtype=bool)
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    down = size[0] < mask.shape[0] or size[1] < mask.shape[1]
    r = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=down)
    return (r[0, 0] >= 0.5).numpy()


# --------------------------------------------------------------------------- augmentation


@dataclass
class AugmentedSample:
    image: np.ndarray  # (H', W', 3) uint8
    objects: list[EvalObject]
    params: dict


def _item_rng(seed: int, dataset: str, image_id: str, copy: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(f"{dataset}/{image_id}".encode()), int(copy)])


def augment_sample(
    image: np.ndarray,
    objects: Sequence[EvalObject],
    aug: AugmentConfig,
    rng: np.random.Generator,
    identity: bool = False,
) -> AugmentedSample:
    """Flip / rotate / crop an image and its masks identically (see :class:`AugmentConfig`).

    Objects that keep less than ``aug.min_keep_fraction`` of their area after the crop are
    dropped; a crop that would drop every object is redrawn (10 tries, then no crop).  The
    flips / turn / crop decisions are redrawn until at least one applies, so an augmented copy
    is never the plain image again (unless every probability is 0).
    """
    params: dict[str, Any] = {"hflip": False, "vflip": False, "rot90": 0, "crop": None}
    if identity:
        return AugmentedSample(image, list(objects), params)

    def geo(a: np.ndarray) -> np.ndarray:
        if params["hflip"]:
            a = a[:, ::-1]
        if params["vflip"]:
            a = a[::-1]
        if params["rot90"]:
            a = np.rot90(a, params["rot90"])
        return a

    # an augmented copy must differ from copy 0: redraw until some transformation is drawn
    for _ in range(20):
        params["hflip"] = bool(rng.random() < aug.hflip)
        params["vflip"] = bool(rng.random() < aug.vflip)
        params["rot90"] = int(rng.integers(1, 4)) if rng.random() < aug.rot90 else 0
        do_crop = bool(rng.random() < aug.crop_prob)
        if do_crop or params["hflip"] or params["vflip"] or params["rot90"]:
            break
    else:
        do_crop = aug.crop_scale[0] < 1.0
    img = geo(image)
    objs = [EvalObject(geo(o.gt), None if o.ignore is None else geo(o.ignore), o.object_id) for o in objects]
    H, W = img.shape[:2]
    areas = [int(o.gt.sum()) for o in objs]
    if do_crop:
        lo, hi = aug.crop_scale
        for _ in range(10):
            ch = max(16, int(round(rng.uniform(lo, hi) * H)))
            cw = max(16, int(round(rng.uniform(lo, hi) * W)))
            y0 = int(rng.integers(0, H - ch + 1))
            x0 = int(rng.integers(0, W - cw + 1))
            kept = [
                i for i, o in enumerate(objs)
                if areas[i] and o.gt[y0 : y0 + ch, x0 : x0 + cw].sum() >= aug.min_keep_fraction * areas[i]
            ]
            if kept:
                params["crop"] = [y0, x0, ch, cw]
                img = img[y0 : y0 + ch, x0 : x0 + cw]
                objs = [
                    EvalObject(
                        objs[i].gt[y0 : y0 + ch, x0 : x0 + cw],
                        None if objs[i].ignore is None else objs[i].ignore[y0 : y0 + ch, x0 : x0 + cw],
                        objs[i].object_id,
                    )
                    for i in kept
                ]
                break
    img = np.ascontiguousarray(img)
    objs = [
        EvalObject(np.ascontiguousarray(o.gt),
                   None if o.ignore is None else np.ascontiguousarray(o.ignore), o.object_id)
        for o in objs
    ]
    return AugmentedSample(img, objs, params)


# --------------------------------------------------------------------------- writing items


def _atomic_savez(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def write_item(
    path: Path,
    embedding: np.ndarray | torch.Tensor,
    input_size: tuple[int, int],
    objects: Sequence[EvalObject],
    meta: dict,
) -> dict:
    """Write one cache item; ``objects`` hold canvas-resolution (h, w) masks.  Returns meta."""
    emb = embedding.detach().cpu().numpy() if isinstance(embedding, torch.Tensor) else np.asarray(embedding)
    emb = emb.reshape(emb.shape[-3:]).astype(np.float16)
    h, w = (int(v) for v in input_size)
    arrays: dict[str, np.ndarray] = {"embedding": emb, "input_size": np.array([h, w], dtype=np.int32)}
    obj_meta = []
    for i, o in enumerate(objects):
        if o.gt.shape != (h, w):
            raise ValueError(f"object mask {o.gt.shape} does not match input_size {(h, w)}")
        arrays[f"mask_{i}"] = pack_mask(o.gt)
        has_ignore = o.ignore is not None and bool(o.ignore.any())
        if has_ignore:
            arrays[f"ignore_{i}"] = pack_mask(o.ignore)
        obj_meta.append({"id": o.object_id, "area": int(o.gt.sum()), "ignore": has_ignore})
    meta = dict(meta, input_size=[h, w], objects=obj_meta, format=CACHE_FORMAT)
    arrays["meta"] = np.array(json.dumps(meta))
    _atomic_savez(Path(path), arrays)
    return meta


def _item_name(image_id: str, copy: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._#-]+", "_", image_id)
    return f"{safe}__a{copy:02d}.npz"


# --------------------------------------------------------------------------- cache builder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_cache_info(cache_dir: Path, info: dict) -> None:
    """Write ``cache_info.json`` or check that an existing cache was built the same way."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "cache_info.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in info.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"the cache {cache_dir} was built differently: "
                + "; ".join(f"{k}: cache {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                + " (use another cache_dir)"
            )
    else:
        path.write_text(json.dumps(info, indent=2))


def build_cache(
    cfg: TrainingConfig,
    splits: Sequence[str] = ("train", "val"),
    *,
    model=None,
    limit: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Build (or complete) the embedding cache of a config.  Returns timing statistics.

    ``model``: a loaded FocSAM (default: ``cfg.model.base`` on ``cfg.data.cache_device``).
    ``limit``: at most this many images per source (smoke runs).
    Validation sources are cached with copy 0 only (no augmentation).
    """
    from ..core.predictor import PREPROCESS_VERSION, preprocess, resolve_device

    root = cfg.data_root
    ids = check_split(cfg, root)
    info = {
        "format": CACHE_FORMAT,
        "preprocess_version": PREPROCESS_VERSION,
        "embedding_dtype": "float16",
        "mask_resolution": "1024-canvas, valid area (h, w)",
        "cache_seed": int(cfg.data.cache_seed),
    }
    if model is None:
        from ..core.checkpoint import load_checkpoint
        from ..core.weights import resolve_weights

        wpath = resolve_weights(cfg.model.base)
        model = load_checkpoint(wpath, device=resolve_device(cfg.data.cache_device))
        info["base_sha256"] = _sha256(wpath)
    info["model_type"] = model.model_type
    info["channel_order"] = model.channel_order
    cache_dir = cfg.cache_path
    check_cache_info(cache_dir, info)
    model.eval()
    device = model.device

    # content hashes of the validation images: training must not see them under any name
    val_hashes: dict[str, str] = {}
    if "train" in splits:
        for src in cfg.data.val:
            ds = source_dataset(src, root)
            for e in ds._entries:
                val_hashes[_file_sha1(e.image_path)] = f"{ds.name}/{e.image_id}"

    stats = {"images": 0, "items_written": 0, "items_skipped": 0, "encode_seconds": 0.0,
             "prep_seconds": 0.0, "write_seconds": 0.0, "objects": 0}
    t_start = time.perf_counter()
    for split in splits:
        sources = cfg.data.train if split == "train" else cfg.data.val
        split_dir = cache_dir / split
        for src in sources:
            ds = source_dataset(src, root)
            # group identical images (same bytes) so each is encoded once with all its objects
            groups: dict[str, list] = {}
            for e in ds._entries:
                digest = _file_sha1(e.image_path)
                if split == "train" and digest in val_hashes:
                    raise ValueError(
                        f"training image {ds.name}/{e.image_id} has the same content as validation "
                        f"image {val_hashes[digest]}"
                    )
                groups.setdefault(digest, []).append(e)
            group_list = list(groups.values())
            if limit is not None:
                group_list = group_list[:limit]
            copies = src.augment.copies if split == "train" else 1
            for entries in group_list:
                lead = entries[0]
                names = [_item_name(lead.image_id, k) for k in range(copies)]
                todo = [k for k in range(copies) if not (split_dir / ds.name / names[k]).is_file()]
                stats["items_skipped"] += copies - len(todo)
                if not todo:
                    continue
                t0 = time.perf_counter()
                image = lead.load_image()
                objects: list[EvalObject] = []
                for e in entries:
                    objects.extend(o for o in e.load_objects() if o.gt.any())
                if src.max_objects_per_image is not None:
                    objects = objects[: src.max_objects_per_image]
                stats["prep_seconds"] += time.perf_counter() - t0
                stats["images"] += 1
                for k in todo:
                    t0 = time.perf_counter()
                    rng = _item_rng(cfg.data.cache_seed, ds.name, lead.image_id, k)
                    aug = augment_sample(image, objects, src.augment, rng, identity=(k == 0))
                    x, input_size = preprocess(aug.image, model.channel_order, device)
                    canvas_objs = []
                    for o in aug.objects:
                        gt = resize_mask(o.gt, input_size)
                        if gt.sum() < src.min_object_pixels:
                            continue
                        ign = None if o.ignore is None else resize_mask(o.ignore, input_size)
                        canvas_objs.append(EvalObject(gt, ign, o.object_id))
                    t1 = time.perf_counter()
                    stats["prep_seconds"] += t1 - t0
                    if not canvas_objs:
                        # nothing usable left: write an empty marker so resume skips it
                        emb = np.zeros((256, 64, 64), np.float16)
                    else:
                        with torch.inference_mode():
                            emb = model.encode(x)
                    t2 = time.perf_counter()
                    stats["encode_seconds"] += t2 - t1
                    meta = {
                        "dataset": ds.name, "image_id": lead.image_id,
                        "image_ids": [e.image_id for e in entries], "group": src.group,
                        "split": split, "copy": k, "augment": aug.params,
                        "original_size": list(image.shape[:2]),
                    }
                    write_item(split_dir / ds.name / names[k], emb, input_size, canvas_objs, meta)
                    stats["write_seconds"] += time.perf_counter() - t2
                    stats["items_written"] += 1
                    stats["objects"] += len(canvas_objs)
                if log is not None:
                    done = stats["items_written"]
                    el = time.perf_counter() - t_start
                    log(json.dumps({"split": split, "dataset": ds.name, "image": lead.image_id,
                                    "items_written": done, "elapsed_s": round(el, 1)}))
        write_index(split_dir)
    stats["seconds"] = time.perf_counter() - t_start
    n = max(stats["items_written"], 1)
    stats["seconds_per_item"] = stats["seconds"] / n
    stats["encode_seconds_per_item"] = stats["encode_seconds"] / n
    stats["train_images"] = len(ids["train"])
    stats["val_images"] = len(ids["val"])
    return stats


def _read_meta(path: Path) -> dict:
    with np.load(path) as z:
        return json.loads(str(z["meta"]))


def write_index(split_dir: Path) -> list[dict]:
    """Scan ``split_dir`` for items and write ``index.json`` (sorted, relative file names)."""
    items = []
    if split_dir.is_dir():
        for p in sorted(split_dir.rglob("*.npz"), key=lambda p: natural_key(str(p.relative_to(split_dir)))):
            if p.name.startswith("."):
                continue
            meta = _read_meta(p)
            meta["file"] = str(p.relative_to(split_dir))
            items.append(meta)
        (split_dir / "index.json").write_text(json.dumps(items))
    return items


# --------------------------------------------------------------------------- reading


@dataclass
class CacheItem:
    """One training object on its augmented image.

    embedding: (256, 64, 64) float32 tensor; gt / valid: (1024, 1024) bool arrays on the
    canvas (``valid`` is the image area minus ignored pixels); gt_crop / ignore_crop: the
    (h, w) valid-area masks the click simulator works on; input_size (h, w).
    """

    embedding: torch.Tensor
    gt: np.ndarray
    valid: np.ndarray
    gt_crop: np.ndarray
    ignore_crop: np.ndarray | None
    input_size: tuple[int, int]
    key: str


class EmbeddingCache:
    """Read access to one split of the cache (``<cache_dir>/<split>``)."""

    def __init__(self, split_dir: str | Path) -> None:
        self.dir = Path(split_dir)
        index = self.dir / "index.json"
        items = json.loads(index.read_text()) if index.is_file() else write_index(self.dir)
        self.items = [m for m in items if m.get("objects")]
        if not self.items:
            raise FileNotFoundError(f"no cached item with objects in {self.dir} (run `napari-focsam train-cache`)")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def image_keys(self) -> set[tuple[str, str]]:
        """``(dataset, image_id)`` of every cached image (all ids of grouped duplicates)."""
        out = set()
        for m in self.items:
            for i in m.get("image_ids", [m["image_id"]]):
                out.add((m["dataset"], i))
        return out

    def load(self, item: int, obj: int) -> CacheItem:
        meta = self.items[item]
        with np.load(self.dir / meta["file"]) as z:
            emb = torch.from_numpy(z["embedding"].astype(np.float32))
            h, w = (int(v) for v in z["input_size"])
            gt = unpack_mask(z[f"mask_{obj}"], (h, w))
            ign = unpack_mask(z[f"ignore_{obj}"], (h, w)) if f"ignore_{obj}" in z.files else None
        canvas_gt = np.zeros((CANVAS, CANVAS), bool)
        canvas_gt[:h, :w] = gt
        valid = np.zeros((CANVAS, CANVAS), bool)
        valid[:h, :w] = True if ign is None else ~ign
        return CacheItem(emb, canvas_gt, valid, gt, ign, (h, w), f"{meta['file']}#{obj}")


class BatchSampler:
    """Deterministic batches: iteration ``it`` uses ``default_rng([seed, it, 1])`` only.

    A batch comes from one group (drawn with ``group_weights``), as FocSAM simulates clicks per
    source dataset; inside the group, a source is drawn with its weight, then an item of the
    source uniformly, then one of the item's objects uniformly.
    """

    def __init__(self, cache: EmbeddingCache, seed: int, batch_size: int,
                 group_weights: dict[str, float] | None = None,
                 source_weights: dict[str, float] | None = None) -> None:
        self.cache = cache
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        by_group: dict[str, dict[str, list[int]]] = {}
        for i, m in enumerate(cache.items):
            by_group.setdefault(m.get("group", "natural"), {}).setdefault(m["dataset"], []).append(i)
        self.groups = sorted(by_group)
        self.by_group = by_group
        gw = np.array([float((group_weights or {}).get(g, 1.0)) for g in self.groups])
        if gw.sum() <= 0:
            raise ValueError("group weights must not all be zero")
        self.group_p = gw / gw.sum()
        self.source_weights = source_weights or {}

    def sample(self, iteration: int) -> tuple[str, list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, int(iteration), 1])
        g = self.groups[int(rng.choice(len(self.groups), p=self.group_p))]
        sources = sorted(self.by_group[g])
        sw = np.array([float(self.source_weights.get(s, 1.0)) for s in sources])
        picks = []
        for _ in range(self.batch_size):
            s = sources[int(rng.choice(len(sources), p=sw / sw.sum()))]
            items = self.by_group[g][s]
            it = items[int(rng.integers(len(items)))]
            n_obj = len(self.cache.items[it]["objects"])
            picks.append((it, int(rng.integers(n_obj))))
        return g, picks
