"""Labels images written object by object (segment-batch): the same labels as painting in
memory, in every format, and a batch on a huge lazy image without any full-size array."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).parents[2]))
from lazy_helpers import make_large_zarr  # noqa: E402
from cli_helpers import one_line, run  # noqa: E402

from napari_focsam.core.cluster._distributed import ObjectResult, paint_objects, regions_to_crop  # noqa: E402
from napari_focsam.core.outputs import write_object_labels  # noqa: E402

zarr = pytest.importorskip("zarr")


def _objects(shape, n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dz = 1 if len(shape) == 2 else int(rng.integers(1, 3))
        z = 0 if len(shape) == 2 else int(rng.integers(0, shape[0] - dz + 1))
        h, w = int(rng.integers(5, 90)), int(rng.integers(5, 90))
        y, x = int(rng.integers(0, shape[-2] - h)), int(rng.integers(0, shape[-1] - w))
        out.append(ObjectResult(i, (z, y, x), rng.random((dz, h, w)) > 0.3))
    return [*out, ObjectResult(n, (0, 0, 0), None)]


@pytest.mark.parametrize("shape", [(300, 520), (3, 300, 520)])
def test_every_format_holds_the_labels_painted_in_memory(tmp_path, shape):
    objects = _objects(shape)
    expected = paint_objects(shape, objects)
    suffixes = [".zarr", ".npy", ".tif"] + ([".png"] if len(shape) == 2 else [])
    for suffix in suffixes:
        assert write_object_labels(tmp_path / f"l{suffix}", shape, objects) == len(objects) - 1
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[:]), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l.tif"), expected)
    if len(shape) == 2:
        from PIL import Image

        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.png")), expected)


def test_regions_to_crop_is_the_objects_box():
    regions = {3: (10, 20, np.ones((2, 3), bool)), 5: (11, 18, np.ones((4, 1), bool)), 4: (0, 0, np.zeros((0, 0), bool))}
    (z, y, x), crop = regions_to_crop(regions)
    assert (z, y, x) == (3, 10, 18) and crop.shape == (3, 5, 5)
    assert crop.sum() == 6 + 4 and not crop[1].any()


def test_a_tiff_too_large_to_compress_is_refused_before_the_model_loads(tiny_ckpt, tmp_path, capsys, loads):
    big = tmp_path / "scan.zarr"
    zarr.create_array(str(big), shape=(50_000, 90_000), chunks=(4096, 4096), dtype="uint8")
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("index,axis-0,axis-1\n0,100,100\n")
    rc, out, err = run(["segment-batch", big, "--points", seeds, "--model", tiny_ckpt, "--out", tmp_path / "l.tif"],
                       capsys)
    assert rc == 2 and loads == []
    assert "write .zarr, the format for masks of this size" in one_line(err)


@pytest.mark.slow
def test_segment_batch_on_a_huge_lazy_image_allocates_no_full_plane(vit_t_path, tmp_path, capsys):
    shape, disc = (1, 24_000, 24_000), (0, 12_000, 15_000, 60)
    make_large_zarr(tmp_path / "scan.zarr", shape=shape, chunks=(1, 2048, 2048), discs=(disc,))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(f"index,axis-0,axis-1,axis-2\n0,0,{disc[1]},{disc[2]}\n")
    tracemalloc.start()
    try:
        rc, out, err = run(["segment-batch", tmp_path / "scan.zarr", "--points", seeds, "--model", "vit_t",
                            "--out", tmp_path / "labels.zarr", "--no-progress"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 0, err
    plane = shape[1] * shape[2]  # one bool plane: 576 MB
    assert peak < plane / 4, peak
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert labels.shape == shape and labels.dtype == np.uint16
    window = np.asarray(labels[0, 11_800:12_200, 14_800:15_200])
    yy, xx = np.mgrid[11_800:12_200, 14_800:15_200]
    disc_mask = (yy - disc[1]) ** 2 + (xx - disc[2]) ** 2 <= disc[3] ** 2
    iou = ((window == 1) & disc_mask).sum() / ((window == 1) | disc_mask).sum()
    assert iou > 0.8 and (window == 1).sum() == (np.asarray(labels[0, 11_000:13_000, 14_000:16_000]) == 1).sum()


def test_segment_to_a_tiff_too_large_to_compress_is_refused_before_the_model_loads(tiny_ckpt, tmp_path, capsys,
                                                                                    loads):
    big = tmp_path / "scan.zarr"
    zarr.create_array(str(big), shape=(50_000, 90_000), chunks=(4096, 4096), dtype="uint8")
    rc, out, err = run(["segment", big, "--click", "100,100", "--model", tiny_ckpt, "--out", tmp_path / "m.tif"],
                       capsys)
    assert rc == 2 and loads == [] and "write .zarr, the format for masks of this size" in one_line(err)
