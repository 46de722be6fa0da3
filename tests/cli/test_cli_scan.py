"""segment-all on tiled images end to end: on a real dask LocalCluster (same objects as one
process, a second run encodes nothing), the command line's JSON line and OME-Zarr output, labels
into an input OME-Zarr's ``labels/`` group (the image untouched), and saving a labels array."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_helpers import one_line, run  # noqa: E402
from scene_helpers import HALO, TILE, oracle, scene  # noqa: E402

from napari_focsam.core.cluster import _scan as tiled_automatic  # noqa: E402
from napari_focsam.core.automatic import SegmentAllParams  # noqa: E402
from napari_focsam.core.cluster import ImageSource  # noqa: E402
from napari_focsam.evaluation.instances import match_instances  # noqa: E402

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")


def _zarr_image(path: Path, image: np.ndarray) -> Path:
    zarr.create_array(str(path), shape=image.shape, chunks=(256, 256), dtype=image.dtype, fill_value=0)[:] = image
    return path


def _ngff_image(path: Path, image: np.ndarray) -> Path:
    """An NGFF 0.4 image group (zarr v2) with two levels and a pixel scale."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    for i, a in enumerate([image, image[::2, ::2].copy()]):
        g.create_array(str(i), shape=a.shape, dtype=a.dtype, chunks=(256, 256))[...] = a
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"},
                                                          {"name": "x", "type": "space"}],
                               "datasets": [{"path": str(i), "coordinateTransformations": [
                                   {"type": "scale", "scale": [0.5 * 2 ** i, 0.5 * 2 ** i]}]} for i in range(2)]}]
    return path


def _tree_digest(root: Path, skip: str) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file() and skip not in p.relative_to(root).parts:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_a_local_cluster_finds_the_objects_one_process_finds_and_reuses_every_tile(tiny_ckpt, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setattr(tiled_automatic, "segment_all", oracle)  # the workers are threads of this process
    image, truth = scene()
    source = ImageSource(str(_zarr_image(tmp_path / "scan.zarr", image)), tiling=(TILE, HALO))
    params = SegmentAllParams(min_area=5)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        first = tiled_automatic.segment_all_scan(source, 0, params, model=str(tiny_ckpt), device="cpu",
                                                 cache_dir=tmp_path / "dist", client=client, tiles_per_task=3,
                                                 progress=False)
        again = tiled_automatic.segment_all_scan(source, 0, params, model=str(tiny_ckpt), device="cpu",
                                                 cache_dir=tmp_path / "dist", client=client, progress=False)
    assert first.info["workers"] == 2 and first.info["failed"] == []
    assert first.info["units"] == 21 and first.info["computed"] == 21
    assert again.info["computed"] == 0 and again.info["reused"] == 21
    assert first.n_objects == 6 == again.n_objects
    labels = np.zeros(truth.shape, np.int32)
    for k, o in enumerate(first.objects, start=1):
        labels[o.y0:o.box[1], o.x0:o.box[3]][o.mask] = k
    s = match_instances(truth, labels, 0.9)  # what one process finds (test_tiled_automatic.py)
    assert (s.tp, s.fp, s.fn) == (6, 0, 0)


@pytest.mark.slow
def test_the_command_line_on_a_cluster_writes_ome_zarr_labels_and_one_json_line(tiny_ckpt, tmp_path, capsys):
    image = scene()[0][:400, :400]  # level 0: 2 x 2 tiles, level 1: one
    src = _zarr_image(tmp_path / "scan.zarr", image)
    out, cache = tmp_path / "scan.ome.zarr", tmp_path / "cache"
    argv = ["segment-all", src, "--out", out, "--cache", cache, "--model", tiny_ckpt, "--tile-size", TILE,
            "--halo", HALO, "--points-per-side", 4, "--workers", 1, "--no-progress"]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    first = json.loads(stdout.strip().splitlines()[-1])
    assert {"units", "computed", "reused", "workers", "seconds", "objects"} <= set(first)
    assert first["units"] == 5 and first["computed"] == 5 and first["workers"] == 1
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["image-label"]["version"] == "0.4" and group["0"].shape == image.shape
    rc, stdout, err = run(argv, capsys)
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["computed"] == 0


def test_a_cluster_needs_a_cache(tiny_ckpt, tmp_path, capsys, loads):
    src = _zarr_image(tmp_path / "scan.zarr", scene()[0])
    rc, _, err = run(["segment-all", src, "--out", tmp_path / "l.ome.zarr", "--model", tiny_ckpt, "--workers", 1],
                     capsys)
    assert rc == 2 and loads == [] and "--cache DIR" in one_line(err)


def test_labels_go_into_the_input_images_labels_group_and_the_image_is_untouched(tiny_ckpt, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(tiled_automatic, "segment_all", oracle)
    image = scene()[0][:400, :400]
    root = _ngff_image(tmp_path / "img.ome.zarr", image)
    before = _tree_digest(root, "labels")
    argv = ["segment-all", root, "--into-input-labels", "focsam", "--model", tiny_ckpt, "--tile-size", TILE,
            "--halo", HALO, "--points-per-side", 4, "--max-level", 0, "--no-progress"]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["into"] == str(root / "labels" / "focsam")
    assert _tree_digest(root, "labels") == before
    assert json.loads(stdout.strip().splitlines()[-1])["objects"] == 2  # the two whole discs of the crop
    labels = zarr.open_group(str(root / "labels"), mode="r")
    assert list(labels.attrs["labels"]) == ["focsam"]
    meta = dict(labels["focsam"].attrs)
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert labels["focsam"]["0"].shape == image.shape
    assert run(argv, capsys)[0] == 0  # ours: replaced
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(reader.Reader(parse_url(str(root)))())
    assert any("Label" in {type(s).__name__ for s in n.specs} for n in nodes)


def test_a_foreign_label_image_of_that_name_is_refused_before_any_work(tiny_ckpt, tmp_path, capsys, loads):
    root = _ngff_image(tmp_path / "img.ome.zarr", scene()[0])
    zarr.open_group(str(root / "labels" / "cells"), mode="w", zarr_format=2).attrs["image-label"] = {}
    rc, _, err = run(["segment-all", root, "--into-input-labels", "cells", "--model", tiny_ckpt], capsys)
    assert rc == 2 and loads == [] and "not written by napari-focsam" in one_line(err)
    rc, _, err = run(["segment-all", root, "--into-input-labels", "../x", "--model", tiny_ckpt], capsys)
    assert rc == 2 and "label name" in one_line(err)


def test_a_labels_array_is_saved_as_ome_zarr_band_by_band(tmp_path):
    da = pytest.importorskip("dask.array")
    from napari_focsam.core.outputs import write_labels_data

    labels = np.zeros((1500, 1300), np.int64)
    labels[100:200, 1000:1200] = 70000
    labels[1400:, :50] = 3
    out = write_labels_data(tmp_path / "layer.ome.zarr", da.from_array(labels, chunks=512), name="cells")
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].dtype == np.uint32 and group.attrs["multiscales"][0]["name"] == "cells"
    np.testing.assert_array_equal(group["0"][:], labels)
    with pytest.raises(ValueError, match="within 0"):
        write_labels_data(tmp_path / "neg.ome.zarr", -labels)
    with pytest.raises(ValueError, match=r"\*.ome.zarr"):
        write_labels_data(tmp_path / "x.zarr", labels)
