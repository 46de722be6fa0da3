"""Readers for the interactive-segmentation benchmarks and for microscopy instance-label folders.

Every reader returns an :class:`EvalDataset`: an iterable of :class:`EvalSample` (one per image,
in sorted file-name order) whose image is loaded lazily by :meth:`EvalSample.load_image` and whose
objects (:class:`EvalObject`: ``gt`` bool mask, optional ``ignore`` bool mask) are read only when
the sample is reached. An image with several objects (SBD, microscopy) is one sample, so its
embedding can be computed once for all its objects.

Layouts (``root`` may be the data root such as ``../shared/data`` or the dataset folder itself):

=================  ===========================================  ==================================
name               folder (relative to the data root)           ground truth
=================  ===========================================  ==================================
``grabcut``        ``iseg/GrabCut``: ``data_GT/`` images,       binary rule (below): 255 object,
                   ``boundary_GT/<stem>.bmp``                   128 ignore band
``berkeley``       ``iseg/Berkeley``: ``images/`` + ``masks/``  binary rule
                   (RITM) or ``img/`` + ``gt/<stem>#001.png``
``davis``          ``iseg/DAVIS``: ``img/`` + ``gt/`` palette   ``(gt > 0) & (gt != 255)`` is the
                   png                                          object, nothing ignored
``coco_mval``      ``iseg/COCO_MVal``: ``img/`` + ``gt/``       binary rule (255 object)
``sbd``            ``iseg/SBD`` (or ``SBD/dataset``): ``img/``  every instance id of ``GTinst``
                   ``*.jpg``, ``inst/*.mat``, ``val.txt``       is one object; 255 ignored
``microscopy``     ``<root>``: ``images/`` + ``labels/``        every non-zero label is one object
                   with the same file names
``coelho2009_gnf`` ``micro/coelho2009_gnf`` (microscopy)        as ``microscopy``
``stardist2d``     ``micro/stardist/stardist_img2d.tif`` +      as ``microscopy``
                   ``stardist_mask2d.tif``
``chloroplasts_em`` ``micro/plant_chloroplasts_em`` stack:      every label of a slice; see
``yeast_phase``    ``micro/yeast_phase`` stack                   :mod:`.stacks` (one image per
``vnc_neurites``   ``micro/em_vnc_sstem`` + neurite labels       slice or tile, size and tile-edge
``vnc_mitochondria`` ``micro/em_vnc_sstem`` + mitochondria       filters, ids ``z08`` /
``stardist2d_halves`` the stardist 2D image, left / right half   ``z08-r1c2``)
=================  ===========================================  ==================================

Binary rule (GrabCut, Berkeley, COCO_MVal): a mask whose maximum is <= 1 takes ``== 1`` as the
object (the FocusCut copies); otherwise ``> 128`` is the object and ``== 128`` is ignored.
In paired folders a mask ``<stem>.png`` or ``<stem>#NNN.png`` belongs to image ``<stem>.*`` and
each mask file is one object. Palette PNGs are read as palette indices (not colours).

Images become (H, W, 3) uint8 RGB: grayscale is repeated to 3 channels, alpha is dropped, and
non-uint8 data (uint16, float...) is scaled linearly from its 0.5th..99.5th percentile to 0..255
and clipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.images import read_image, to_rgb_uint8 as _core_to_rgb_uint8
from .stacks import STACKS, find_stack_folder, stack_entries

__all__ = [
    "DATASET_NAMES",
    "EvalDataset",
    "EvalObject",
    "EvalSample",
    "read_dataset",
    "read_image_rgb",
    "read_mask",
    "resolve_dataset_root",
    "to_rgb_uint8",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------
@dataclass
class EvalObject:
    """One object to segment: ``gt`` (H, W) bool, optional ``ignore`` (H, W) bool."""

    gt: np.ndarray
    ignore: np.ndarray | None = None
    object_id: str = ""


@dataclass
class EvalSample:
    """One image and its objects. The image is read from disk on each :meth:`load_image`."""

    image_id: str
    image_path: Path
    objects: list[EvalObject]
    loader: Callable[[], np.ndarray] = field(repr=False, default=None)

    def load_image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB image."""
        img = self.loader() if self.loader is not None else read_image_rgb(self.image_path)
        if self.objects and img.shape[:2] != self.objects[0].gt.shape:
            raise ValueError(
                f"{self.image_id}: image shape {img.shape[:2]} differs from mask shape "
                f"{self.objects[0].gt.shape}"
            )
        return img


@dataclass
class _Entry:
    image_id: str
    image_path: Path
    load_objects: Callable[[], list[EvalObject]]
    load_image: Callable[[], np.ndarray]
    #: content key when the file is shared by several images (stack slices); "" = the file's
    digest: str = ""


def natural_key(text: str):
    """Sort key that orders embedded numbers by value (``dna-2`` < ``dna-10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def select_ids(ids: Iterable[str], spec: Any) -> list[str]:
    """Apply an image selection (``"all"``, ``"first:N"``, ``"last:N"``, ``"range:A:B"``, list)
    to ids, in natural order.  A list keeps its own order and must name existing ids."""
    ordered = sorted(set(ids), key=natural_key)
    if spec is None or spec == "all":
        return ordered
    if isinstance(spec, (list, tuple)):
        missing = [s for s in spec if s not in set(ordered)]
        if missing:
            raise ValueError(f"unknown image id(s): {', '.join(map(str, missing[:5]))}")
        return [str(s) for s in spec]
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        try:
            if kind == "first":
                return ordered[: int(rest)]
            if kind == "last":
                n = int(rest)
                return ordered[-n:] if n > 0 else []
            if kind == "range":
                a, _, b = rest.partition(":")
                return ordered[int(a) if a else None : int(b) if b else None]
        except ValueError:
            pass
    raise ValueError(f"bad image selection {spec!r}: use all, first:N, last:N, range:A:B or a list")


class EvalDataset:
    """Lazy, ordered collection of samples; ``max_objects`` caps the total number of objects."""

    def __init__(self, name: str, root: Path, entries: list[_Entry], max_objects: int | None = None):
        if max_objects is not None and max_objects < 1:
            raise ValueError("max_objects must be >= 1 or None")
        self.name = name
        self.root = Path(root)
        self._entries = entries
        self.max_objects = max_objects

    def __len__(self) -> int:
        """Number of images (iteration may stop earlier when ``max_objects`` is set)."""
        return len(self._entries)

    @property
    def image_ids(self) -> list[str]:
        return [e.image_id for e in self._entries]

    def subset(self, image_ids: Sequence[str]) -> "EvalDataset":
        """A copy holding only ``image_ids``, in that order (e.g. a validation split)."""
        by_id = {e.image_id: e for e in self._entries}
        missing = [i for i in image_ids if i not in by_id]
        if missing:
            raise ValueError(f"{self.name}: unknown image id(s) {missing[:5]}")
        return EvalDataset(self.name, self.root, [by_id[i] for i in image_ids], self.max_objects)

    def select(self, spec) -> "EvalDataset":
        """Images chosen by ``all``, ``first:N``, ``last:N``, ``range:A:B`` or a list (:func:`select_ids`)."""
        return self.subset(select_ids(self.image_ids, spec))

    def sample_objects(self, n: int, seed: int = 0) -> "EvalDataset":
        """A copy yielding ``n`` objects drawn without replacement from all images (a fixed
        ``seed`` gives the same objects every time), in image order; all objects when there
        are at most ``n``. Reads every mask once to count the objects."""
        if n < 1:
            raise ValueError("n must be >= 1")
        counts = [sum(1 for o in e.load_objects() if o.gt.any()) for e in self._entries]
        total = sum(counts)
        chosen = set(range(total)) if total <= n else set(
            np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())
        entries, start = [], 0
        for e, c in zip(self._entries, counts):
            keep = {i - start for i in range(start, start + c) if i in chosen}
            start += c
            if not keep:
                continue

            def load(e=e, keep=keep):
                objs = [o for o in e.load_objects() if o.gt.any()]
                return [o for i, o in enumerate(objs) if i in keep]

            entries.append(_Entry(e.image_id, e.image_path, load, e.load_image, e.digest))
        return EvalDataset(self.name, self.root, entries, self.max_objects)

    def __iter__(self) -> Iterator[EvalSample]:
        remaining = self.max_objects
        for e in self._entries:
            if remaining is not None and remaining <= 0:
                return
            objs = [o for o in e.load_objects() if o.gt.any()]
            if remaining is not None:
                objs = objs[:remaining]
                remaining -= len(objs)
            if not objs:
                continue
            yield EvalSample(e.image_id, e.image_path, objs, e.load_image)

    def count_objects(self) -> int:
        """Number of objects that iteration yields (reads every mask, not the images)."""
        return sum(len(s.objects) for s in self)

    def __repr__(self) -> str:
        return f"EvalDataset({self.name!r}, root={str(self.root)!r}, images={len(self)})"


# --------------------------------------------------------------------------------------------
# image / mask I/O
# --------------------------------------------------------------------------------------------
def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert a 2D / (H, W, C) / (C, H, W) image of any dtype to (H, W, 3) uint8 RGB.

    Channel-first arrays are moved to channel-last; the intensity mapping is the engine's
    (:func:`napari_focsam.core.images._contrast.to_rgb_uint8`: uint8 as is, robust percentiles otherwise).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"unsupported image shape {arr.shape}; expected 2D, RGB or RGBA")
    return _core_to_rgb_uint8(arr)


def read_image_rgb(path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see :func:`to_rgb_uint8`)."""
    return to_rgb_uint8(read_image(path, palette_indices=False))


def read_mask(path) -> np.ndarray:
    """Read a mask / label image as a 2D integer array (palette PNGs give palette indices).

    A colour mask keeps its first channel when all channels are equal, else the per-pixel max.
    """
    arr = read_image(path, palette_indices=True)
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[-1])):
            arr = arr[..., 0]
        else:
            arr = arr.max(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2D mask, got shape {arr.shape}")
    return arr


def _binary_objects(mask: np.ndarray, object_id: str) -> list[EvalObject]:
    if mask.max(initial=0) <= 1:
        return [EvalObject(mask == 1, None, object_id)]
    ignore = mask == 128
    return [EvalObject(mask > 128, ignore if ignore.any() else None, object_id)]


def _davis_objects(mask: np.ndarray, object_id: str) -> list[EvalObject]:
    # RITM convention: every non-zero id except 255 (void) is the object; nothing is ignored.
    return [EvalObject((mask > 0) & (mask != 255), None, object_id)]


def _instance_objects(labels: np.ndarray, image_id: str, void: int | None = None) -> list[EvalObject]:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{image_id}: expected a 2D label image, got shape {labels.shape}")
    ids = np.unique(labels)
    ignore = None
    if void is not None and np.any(ids == void):
        ignore = labels == void
        ids = ids[ids != void]
    ids = ids[ids != 0]
    return [EvalObject(labels == i, ignore, f"{image_id}#{int(i)}") for i in ids]


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------
def _list_images(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS),
        key=lambda p: p.name,
    )


def _paired_entries(root: Path, img_dir: str, mask_dir: str, rule: str) -> list[_Entry]:
    masks: dict[str, list[Path]] = {}
    for m in _list_images(root / mask_dir):
        masks.setdefault(m.stem.split("#")[0], []).append(m)
    to_objects = _davis_objects if rule == "davis" else _binary_objects
    entries, seen = [], set()
    for img in _list_images(root / img_dir):
        if img.stem in seen or img.stem not in masks:
            continue
        seen.add(img.stem)
        mask_files = masks[img.stem]

        def load_objects(mask_files=mask_files):
            out = []
            for mf in mask_files:
                out.extend(to_objects(read_mask(mf), mf.stem))
            return out

        entries.append(_Entry(img.stem, img, load_objects, lambda p=img: read_image_rgb(p)))
    return entries


def _load_sbd_instances(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    mat = loadmat(path)
    if "GTinst" not in mat:
        raise KeyError(f"{path}: no 'GTinst' variable")
    st = mat["GTinst"]
    if st.dtype.names and "Segmentation" in st.dtype.names:
        seg = st["Segmentation"].flat[0]  # (1, 1) struct -> its Segmentation field
    elif st.dtype == object:
        seg = st.flat[0]
    else:
        seg = st
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"{path}: GTinst.Segmentation is not a 2D array (shape {seg.shape})")
    return seg.astype(np.int32)


def _sbd_entries(root: Path) -> list[_Entry]:
    split = root / "val.txt"
    if split.is_file():
        stems = sorted({s.strip() for s in split.read_text().splitlines() if s.strip()})
    else:
        stems = sorted(p.stem for p in (root / "inst").glob("*.mat"))
    img_dir = root / "img"
    entries = []
    for stem in stems:
        mat = root / "inst" / f"{stem}.mat"
        cands = [img_dir / f"{stem}{ext}" for ext in (".jpg", ".jpeg", ".png", ".JPG")]
        img = next((c for c in cands if c.is_file()), None)
        if img is None or not mat.is_file():
            continue
        entries.append(
            _Entry(
                stem,
                img,
                lambda m=mat, s=stem: _instance_objects(_load_sbd_instances(m), s, void=255),
                lambda p=img: read_image_rgb(p),
            )
        )
    return entries


def _microscopy_entries(root: Path) -> list[_Entry]:
    labels_dir = root / "labels"
    by_name = {p.name: p for p in _list_images(labels_dir)}
    by_stem: dict[str, Path] = {}
    for p in by_name.values():
        by_stem.setdefault(p.stem, p)
    entries = []
    for img in _list_images(root / "images"):
        lab = by_name.get(img.name) or by_stem.get(img.stem)
        if lab is None:
            continue
        entries.append(
            _Entry(
                img.stem,
                img,
                lambda lp=lab, s=img.stem: _instance_objects(read_mask(lp), s),
                lambda p=img: read_image_rgb(p),
            )
        )
    return entries


def _stardist2d_entries(root: Path) -> list[_Entry]:
    img, lab = root / "stardist_img2d.tif", root / "stardist_mask2d.tif"
    return [
        _Entry(
            "stardist_img2d",
            img,
            lambda: _instance_objects(read_mask(lab), "stardist_img2d"),
            lambda: read_image_rgb(img),
        )
    ]


def _stack_entry(e) -> _Entry:
    def load_objects(e=e):
        return [EvalObject(m, None, f"{e.image_id}#{i}") for i, m in e.load_objects()]

    return _Entry(e.image_id, e.path, load_objects, e.load_image, e.digest)


# name -> (sub-folders tried below the data root, layout check, entries factory, layout text)
def _has(*rel):
    return lambda d: all((d / r).exists() for r in rel)


_PAIRED = {
    "grabcut": ([("data_GT", "boundary_GT")], "binary"),
    "berkeley": ([("images", "masks"), ("img", "gt")], "binary"),
    "davis": ([("img", "gt")], "davis"),
    "coco_mval": ([("img", "gt")], "binary"),
}

_SUBDIRS = {
    "grabcut": ["GrabCut", "iseg/GrabCut"],
    "berkeley": ["Berkeley", "iseg/Berkeley"],
    "davis": ["DAVIS", "iseg/DAVIS"],
    "coco_mval": ["COCO_MVal", "iseg/COCO_MVal"],
    "sbd": ["dataset", "SBD", "SBD/dataset", "iseg/SBD", "iseg/SBD/dataset"],
    "microscopy": [],
    "coelho2009_gnf": ["coelho2009_gnf", "micro/coelho2009_gnf"],
    "stardist2d": ["stardist", "micro/stardist"],
}

_LAYOUTS = {
    "grabcut": "GrabCut/data_GT/<stem>.(jpg|bmp) with GrabCut/boundary_GT/<stem>.bmp",
    "berkeley": "Berkeley/images/<stem>.jpg with Berkeley/masks/<stem>.png (or img/ + gt/)",
    "davis": "DAVIS/img/<stem>.jpg with DAVIS/gt/<stem>.png",
    "coco_mval": "COCO_MVal/img/<stem>.jpg with COCO_MVal/gt/<stem>.png",
    "sbd": "SBD/img/<stem>.jpg, SBD/inst/<stem>.mat (GTinst) and SBD/val.txt",
    "microscopy": "<root>/images/<name> with <root>/labels/<name> (instance labels)",
    "coelho2009_gnf": "micro/coelho2009_gnf/images/dna-N.png with labels/dna-N.png",
    "stardist2d": "micro/stardist/stardist_img2d.tif with stardist_mask2d.tif",
}

_ALIASES = {
    "cocomval": "coco_mval",
    "coco_mval": "coco_mval",
    "coelho": "coelho2009_gnf",
    "coelho2009": "coelho2009_gnf",
    "stardist": "stardist2d",
    "stardist_2d": "stardist2d",
    "sbd_val": "sbd",
}

DATASET_NAMES = tuple(_SUBDIRS) + tuple(STACKS)


def canonical_name(name: str) -> str:
    """The canonical dataset name for ``name`` (case, dashes and aliases ignored); ValueError if unknown."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _SUBDIRS and key not in STACKS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    return key


def _layout_ok(name: str, d: Path) -> bool:
    if not d.is_dir():
        return False
    if name in _PAIRED:
        return any(_has(a, b)(d) for a, b in _PAIRED[name][0])
    if name == "sbd":
        return _has("img", "inst")(d)
    if name in ("microscopy", "coelho2009_gnf"):
        return _has("images", "labels")(d)
    if name == "stardist2d":
        return _has("stardist_img2d.tif", "stardist_mask2d.tif")(d)
    return False


def resolve_dataset_root(name: str, root) -> Path:
    """Folder of dataset ``name``: ``root`` itself or one of its known sub-folders."""
    key = canonical_name(name)
    root = Path(os.fspath(root)).expanduser()
    if key in STACKS:
        return find_stack_folder(key, root)
    tried = [root] + [root / s for s in _SUBDIRS[key]]
    for d in tried:
        if _layout_ok(key, d):
            return d
    raise FileNotFoundError(
        f"dataset {key!r} not found under {str(root)!r}: expected {_LAYOUTS[key]} "
        f"(looked in: {', '.join(str(t) for t in tried)})"
    )


def read_dataset(name: str, root, max_objects: int | None = None) -> EvalDataset:
    """Open dataset ``name`` (see the module docstring) below ``root``; nothing is read yet
    except the file listings."""
    key = canonical_name(name)
    d = resolve_dataset_root(key, root)
    if key in STACKS:
        return EvalDataset(key, d, [_stack_entry(e) for e in stack_entries(key, root)], max_objects)
    if key in _PAIRED:
        pairs, rule = _PAIRED[key]
        img_dir, mask_dir = next((a, b) for a, b in pairs if _has(a, b)(d))
        entries = _paired_entries(d, img_dir, mask_dir, rule)
    elif key == "sbd":
        entries = _sbd_entries(d)
    elif key == "stardist2d":
        entries = _stardist2d_entries(d)
    else:
        entries = _microscopy_entries(d)
    if not entries:
        raise FileNotFoundError(
            f"dataset {key!r} at {str(d)!r} has no image with a matching mask; "
            f"expected {_LAYOUTS[key]}"
        )
    return EvalDataset(key, d, entries, max_objects)
