"""The microscopy stack datasets of ``evaluation.stacks`` on small synthetic stacks."""

from __future__ import annotations

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

from napari_focsam.evaluation.datasets import DATASET_NAMES, read_dataset  # noqa: E402
from napari_focsam.evaluation.stacks import slice_objects, tile_boxes  # noqa: E402
from napari_focsam.training.data import entry_digest  # noqa: E402


def test_tile_boxes_cover_the_plane_without_overlap():
    boxes = tile_boxes((7, 10), (2, 3))
    cover = np.zeros((7, 10), int)
    for y0, y1, x0, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert len(boxes) == 6 and (cover == 1).all()


def test_slice_objects_filters_small_large_and_cut_objects():
    lab = np.zeros((40, 40), np.uint16)
    lab[10:20, 10:20] = 1  # 100 px: kept
    lab[30:33, 30:33] = 2  # 9 px: too small
    lab[0:12, 25:37] = 3  # touches the top edge
    kept = [i for i, _ in slice_objects(lab, 100, 1.0, (True, False, False, False))]
    assert kept == [1]
    assert [i for i, _ in slice_objects(lab, 100, 1.0)] == [1, 3]
    assert slice_objects(lab, 100, 0.05) == []  # 100 / 1600 > 5 %


def _write_yeast(root, frames=3):
    folder = root / "micro" / "yeast_phase"
    folder.mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 4000, (frames, 32, 48), dtype=np.uint16)
    lab = np.zeros((frames, 32, 48), np.uint16)
    for z in range(frames):
        lab[z, 5:17, 5:17] = 7  # 144 px
        lab[z, 20:30, 30:44] = 9  # 140 px
        lab[z, 0:3, 0:3] = 4  # 9 px: left out
    tifffile.imwrite(folder / "yeast_phase.tif", img)
    tifffile.imwrite(folder / "yeast_phase_label.tif", lab)


def test_stack_dataset_gives_one_image_per_slice_and_splits_by_slice(tmp_path):
    _write_yeast(tmp_path)
    assert "yeast_phase" in DATASET_NAMES
    ds = read_dataset("yeast_phase", tmp_path)
    assert ds.image_ids == ["z00", "z01", "z02"]
    val = ds.select("last:1")
    samples = list(val)
    assert [s.image_id for s in samples] == ["z02"]
    assert [o.object_id for o in samples[0].objects] == ["z02#7", "z02#9"]
    image = samples[0].load_image()
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    # slices share one file: each entry has its own content key (train / val checks)
    digests = {entry_digest(e) for e in ds._entries}
    assert len(digests) == 3
    sub = ds.sample_objects(1, seed=0)
    assert sub.count_objects() == 1 and all(entry_digest(e) in digests for e in sub._entries)


def test_tiled_stack_leaves_out_objects_cut_by_a_tile(tmp_path):
    folder = tmp_path / "plant_chloroplasts_em"
    folder.mkdir()
    img = np.full((1, 80, 120), 120, np.uint8)
    lab = np.zeros((1, 80, 120), np.uint16)
    lab[0, 2:14, 2:14] = 1  # inside tile r0c0 (40 x 40)
    lab[0, 2:14, 34:46] = 2  # across the cut between r0c0 and r0c1
    tifffile.imwrite(folder / "chloroplasts_em.tif", img)
    tifffile.imwrite(folder / "chloroplasts_em_label.tif", lab)
    ds = read_dataset("chloroplasts_em", tmp_path)
    assert ds.image_ids[:3] == ["z00-r0c0", "z00-r0c1", "z00-r0c2"] and len(ds) == 6
    objs = {s.image_id: [o.object_id for o in s.objects] for s in ds}
    assert objs == {"z00-r0c0": ["z00-r0c0#1"]}
    # uint8 planes are used as they are (the product's conversion)
    assert next(iter(ds)).load_image().max() == 120
