"""Large images on a dask cluster: every tile of every level is a unit, filled into the same signed
tiled store that a single process (or the widget) uses; a second run computes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from lazy_helpers import make_large_zarr  # noqa: E402
from cli_helpers import run  # noqa: E402

pytest.importorskip("distributed")


@pytest.mark.slow
def test_precompute_of_a_large_image_on_a_local_cluster_fills_the_tiled_store(tiny_ckpt, tmp_path, capsys):
    image = tmp_path / "scan.zarr"
    make_large_zarr(image, shape=(1, 2048, 2048), chunks=(1, 512, 512), discs=((0, 900, 1000, 60),))
    cache = tmp_path / "cache"
    rc, out, err = run(["precompute", image, "--cache", cache, "--model", tiny_ckpt, "--workers", "2",
                        "--no-progress"], capsys)
    assert rc == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["units"] > 4 and first["computed"] == first["units"] and first["failed"] == []
    assert "large image" in err
    # the single process sees the same store complete: nothing to compute
    rc, out, err = run(["precompute", image, "--cache", cache, "--model", tiny_ckpt, "--no-progress"], capsys)
    single = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and single["computed"] == 0 and single["units"] == first["units"]
    # and a second cluster run reuses every tile
    rc, out, err = run(["precompute", image, "--cache", cache, "--model", tiny_ckpt, "--workers", "1",
                        "--no-progress"], capsys)
    again = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and again["computed"] == 0 and again["reused"] == first["units"]
