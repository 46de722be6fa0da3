"""``--out labels.ome.zarr``: an NGFF 0.4 label image with a pyramid, written without a
full-size array, replaced only when this tool wrote it, read back by the product and by the
OME-Zarr reference reader (ome-zarr-py, when installed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from cli_helpers import ome_zarr, one_line, run  # noqa: E402

from napari_focsam.core.cluster._distributed import ObjectResult, paint_objects  # noqa: E402
from napari_focsam.core.images import ImageVolume  # noqa: E402
from napari_focsam.core.outputs import write_labels_array, write_object_labels  # noqa: E402

zarr = pytest.importorskip("zarr")


def _objects():
    return [ObjectResult(0, (0, 100, 200), np.ones((1, 50, 60), bool)),
            ObjectResult(1, (0, 2500, 3000), np.ones((1, 30, 30), bool)),
            ObjectResult(2, (0, 120, 230), np.ones((1, 10, 10), bool))]  # overlaps 0: the smaller wins


def test_an_ome_zarr_label_image_with_its_pyramid(tmp_path):
    out = tmp_path / "labels.ome.zarr"
    shape = (3000, 4100)
    write_object_labels(out, shape, _objects())
    group = zarr.open_group(str(out), mode="r")
    attrs = dict(group.attrs)
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert attrs["image-label"]["version"] == "0.4"
    paths = [d["path"] for d in ms["datasets"]]
    assert paths == ["0", "1", "2", "3"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]][-1] == [8.0, 8.0]
    expected = paint_objects(shape, _objects())
    np.testing.assert_array_equal(group["0"][:], expected)
    np.testing.assert_array_equal(group["2"][:], expected[::4, ::4])  # nearest: ids never averaged
    vol = ImageVolume(zarr.open_group(str(out), mode="r"))  # the product opens it as a pyramid
    assert vol.n_levels == 4 and vol.shape == shape
    write_object_labels(out, shape, _objects()[:1])  # ours: replaced
    assert set(np.unique(zarr.open_group(str(out), mode="r")["0"][:])) == {0, 1}


def test_the_reference_reader_sees_labels(tmp_path):
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    out = tmp_path / "labels.ome.zarr"
    write_labels_array(out, np.arange(12, dtype=np.uint16).reshape(3, 4).repeat(500, 0).repeat(500, 1))
    (node,) = list(reader.Reader(parse_url(str(out)))())
    assert {type(s).__name__ for s in node.specs} >= {"Label", "Multiscales"} and len(node.data) == 2


def test_an_ome_zarr_image_given_as_output_is_never_replaced(tiny_ckpt, tmp_path, capsys, loads):
    base = np.zeros((2, 64, 64), np.uint8)
    image = ome_zarr(tmp_path / "image.ome.zarr", [base, base[:, ::2, ::2].copy()])
    other = ome_zarr(tmp_path / "other.ome.zarr", [base, base[:, ::2, ::2].copy()])
    before = json.dumps(dict(zarr.open_group(str(other), mode="r").attrs), sort_keys=True)
    rc, out, err = run(["segment-all", image, "--slice", "1", "--model", tiny_ckpt, "--out", other], capsys)
    assert rc == 2 and loads == [] and "it is a zarr group" in one_line(err)
    assert json.dumps(dict(zarr.open_group(str(other), mode="r").attrs), sort_keys=True) == before
