# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""The training cache: float16 embeddings and bit-packed canvas masks of augmented images.

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
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.hashing import sha256_file
from ..evaluation.datasets import EvalObject, natural_key
from .augment import augment_sample, item_rng, resize_mask
from .config import TrainingConfig
from .data import CANVAS, check_split, entry_digest, source_dataset

__all__ = [
    "CACHE_FORMAT",
    "TrainingCache",
    "TrainingItem",
    "build_cache",
    "check_cache_info",
    "pack_mask",
    "unpack_mask",
    "write_index",
    "write_item",
]

CACHE_FORMAT = 1


def pack_mask(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, dtype=bool).ravel())


def unpack_mask(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    n = int(shape[0]) * int(shape[1])
    return np.unpackbits(packed, count=n).astype(bool).reshape(shape)


def atomic_savez(path: Path, arrays: dict) -> None:
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
    atomic_savez(Path(path), arrays)
    return meta


def item_name(image_id: str, copy: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._#-]+", "_", image_id)
    return f"{safe}__a{copy:02d}.npz"


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
    from ..core.embeddings import PREPROCESS_VERSION, preprocess
    from ..core.models import resolve_device

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
        from ..core.models import load_checkpoint
        from ..core.models.weights import resolve_weights

        wpath = resolve_weights(cfg.model.base)
        model = load_checkpoint(wpath, device=resolve_device(cfg.data.cache_device))
        info["base_sha256"] = sha256_file(wpath)
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
                val_hashes[entry_digest(e)] = f"{ds.name}/{e.image_id}"

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
                digest = entry_digest(e)
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
                names = [item_name(lead.image_id, k) for k in range(copies)]
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
                    rng = item_rng(cfg.data.cache_seed, ds.name, lead.image_id, k)
                    aug = augment_sample(image, objects, src.augment, rng, identity=(k == 0),
                                         zoom=src.augment.is_zoom_copy(k), dynamic=src.augment.is_range_copy(k))
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


def read_meta(path: Path) -> dict:
    with np.load(path) as z:
        return json.loads(str(z["meta"]))


def write_index(split_dir: Path) -> list[dict]:
    """Scan ``split_dir`` for items and write ``index.json`` (sorted, relative file names)."""
    items = []
    if split_dir.is_dir():
        for p in sorted(split_dir.rglob("*.npz"), key=lambda p: natural_key(str(p.relative_to(split_dir)))):
            if p.name.startswith("."):
                continue
            meta = read_meta(p)
            meta["file"] = str(p.relative_to(split_dir))
            items.append(meta)
        (split_dir / "index.json").write_text(json.dumps(items))
    return items


@dataclass
class TrainingItem:
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


class TrainingCache:
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

    def load(self, item: int, obj: int) -> TrainingItem:
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
        return TrainingItem(emb, canvas_gt, valid, gt, ign, (h, w), f"{meta['file']}#{obj}")
