"""segment-all on a dask cluster of processes survives a worker killed mid-scan.

A worker plugin (applied by the scheduler to every worker process, restarted ones included) makes
the per-tile segmenter the oracle of ``scene_helpers.py`` (so the objects are exact) and
makes the first worker that reaches its second tile of a task kill its own process (SIGKILL, a
marker file makes it happen once): the tiles it encoded are on disk, its task's result is lost.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))
from scene_helpers import HALO, TILE, oracle, scene  # noqa: E402

from napari_focsam.core.cluster import _scan as tiled_automatic  # noqa: E402
from napari_focsam.core.automatic import SegmentAllParams  # noqa: E402
from napari_focsam.core.cluster import ImageSource, connect  # noqa: E402
from napari_focsam.evaluation.instances import match_instances  # noqa: E402

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

KILL_AFTER = 2  # tiles a task encodes before its worker dies


class OracleAndOneKill(distributed.WorkerPlugin):
    """On each worker: the oracle segments tiles; with ``marker`` set, the first task to finish
    its ``KILL_AFTER``-th tile (the tiles are cached by then) kills its worker process."""

    name = "focsam-test-oracle"

    def __init__(self, marker: str | None) -> None:
        self.marker = marker

    def setup(self, worker) -> None:
        from napari_focsam.core.cluster import _scan as ta

        real = getattr(ta.tile_objects, "real", ta.tile_objects)
        marker = self.marker
        seen = {"tiles": 0}

        def tile_objects(*args, **kwargs):
            out = real(*args, **kwargs)
            seen["tiles"] += 1
            if marker is not None and seen["tiles"] == KILL_AFTER:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return out  # someone died already
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        tile_objects.real = real
        ta.segment_all = oracle
        ta.tile_objects = tile_objects


def _labels(result, shape):
    out = np.zeros(shape, np.int32)
    for k, o in enumerate(result.objects, start=1):
        out[o.y0:o.box[1], o.x0:o.box[3]][o.mask] = k
    return out


@pytest.mark.slow
def test_a_worker_killed_mid_scan_loses_nothing(tiny_ckpt, tmp_path):
    image, truth = scene()
    path = tmp_path / "scan.zarr"
    zarr.create_array(str(path), shape=image.shape, chunks=(256, 256), dtype=image.dtype, fill_value=0)[:] = image
    source = ImageSource(str(path), tiling=(TILE, HALO))
    params = SegmentAllParams(min_area=5)
    marker = tmp_path / "a-worker-died"
    kw = dict(model=str(tiny_ckpt), device="cpu", client=None, tiles_per_task=3, progress=False)
    with connect(workers=2, threads_per_worker=1) as client:
        kw["client"] = client
        client.register_plugin(OracleAndOneKill(None))
        calm = tiled_automatic.segment_all_scan(source, 0, params, cache_dir=tmp_path / "calm", **kw)
        client.register_plugin(OracleAndOneKill(str(marker)))  # replaces the first (same name)
        killed = tiled_automatic.segment_all_scan(source, 0, params, cache_dir=tmp_path / "killed", **kw)
        again = tiled_automatic.segment_all_scan(source, 0, params, cache_dir=tmp_path / "killed", **kw)
    assert marker.is_file()  # a worker did die mid-scan
    assert calm.info["failed"] == [] and calm.info["lost_workers"] == 0 and calm.info["retried"] == 0
    # the run finished, with every tile's objects: those of the undisturbed run
    assert killed.info["failed"] == [] and killed.info["errors"] == []
    assert [o.box for o in killed.objects] == [o.box for o in calm.objects]
    assert all((a.mask == b.mask).all() for a, b in zip(killed.objects, calm.objects))
    s = match_instances(truth, _labels(killed, truth.shape), 0.9)
    assert (s.tp, s.fp, s.fn) == (6, 0, 0)
    # the tiles the dead worker encoded were reused by the re-run task: only the rest were encoded
    assert killed.info["units"] == 21
    assert killed.info["computed"] == 21 - KILL_AFTER and killed.info["reused"] == KILL_AFTER
    # and the summary says what happened
    assert killed.info["lost_workers"] == 1 and killed.info["retried"] >= 1
    assert again.info["computed"] == 0 and again.info["lost_workers"] == 0 and again.info["retried"] == 0
    assert [o.box for o in again.objects] == [o.box for o in calm.objects]
