"""Helpers of the command-line tests: run a sub-command in-process, read its one error line,
make test inputs (a gray TIFF, an OME-Zarr pyramid)."""

from __future__ import annotations

import numpy as np
import tifffile
import zarr

from napari_focsam.cli import main


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("napari-focsam: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def ome_zarr(path, levels):
    g = zarr.open_group(str(path), mode="w")
    for i, a in enumerate(levels):
        g.create_array(str(i), shape=a.shape, dtype=a.dtype, chunks=(1, 512, 512))[...] = a
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "zyx"],
                               "datasets": [{"path": str(i)} for i in range(len(levels))]}]
    return path


def gray(tmp_path, name="gray.tif", shape=(40, 48)):
    path = tmp_path / name
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 4000, shape, dtype=np.uint16))
    return path
