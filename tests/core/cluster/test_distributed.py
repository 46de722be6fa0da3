"""Scale-out on dask.distributed: precompute and batch segmentation on a cluster.

The cluster tests start real worker processes (a LocalCluster, or ``dask scheduler`` and
``dask worker`` as separate processes) with the real default weights, on 4 slices of the
cells3d nuclei stack, so that they stay affordable on a 2-core CI machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from napari_focsam.core.cluster import ImageSource, connect, precompute_distributed, read_seeds, segment_seeds
from napari_focsam.core.cluster._distributed import ObjectResult, paint_objects

Z0, Z1 = 14, 18  # slices 32..35 of cells3d, inside the 3D sample (nuclei are widest there)


@pytest.fixture(scope="module")
def cells3d_files(tmp_path_factory):
    from napari_focsam._sample_data import load_nuclei

    image, labels = load_nuclei("3d")
    folder = tmp_path_factory.mktemp("cells3d4")
    import tifffile

    tifffile.imwrite(folder / "stack.tif", np.ascontiguousarray(image[Z0:Z1]))
    return folder / "stack.tif", np.asarray(labels[Z0:Z1])


def _features(stack_path: Path, cache_dir: Path) -> dict[int, np.ndarray]:
    from napari_focsam.core.embeddings import EmbeddingStore
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    vol = ImageSource(str(stack_path)).volume()
    store = EmbeddingStore(FocSAMPredictor(load_model("vit_t", "cpu")), vol, cache_dir=cache_dir, max_memory_bytes=0)
    assert store.missing() == [], "the store is incomplete"
    return {z: store.get(z).features.float().numpy() for z in range(vol.n_slices)}


@pytest.mark.slow
def test_local_cluster_fills_the_same_store_and_a_second_run_computes_nothing(cells3d_files, vit_t_path, tmp_path):
    stack, _ = cells3d_files
    src = ImageSource(str(stack))
    with connect(workers=2) as client:
        first = precompute_distributed(client, src, tmp_path / "dist", model="vit_t", progress=False)
        second = precompute_distributed(client, src, tmp_path / "dist", model="vit_t", progress=False)
    assert first["units"] == 4 and first["computed"] == 4 and first["reused"] == 0 and first["failed"] == []
    assert first["workers"] == 2
    assert len(first["worker_max_rss_mb"]) >= 1
    assert second["computed"] == 0 and second["reused"] == 4

    from napari_focsam.core.embeddings import EmbeddingStore
    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    single = EmbeddingStore(FocSAMPredictor(load_model("vit_t", "cpu")), src.volume(), cache_dir=tmp_path / "single",
                            max_memory_bytes=0)
    single.precompute()
    a, b = _features(stack, tmp_path / "dist"), _features(stack, tmp_path / "single")
    for z in range(4):
        # both float16 on disk: equal up to float16 rounding of slightly different float32 runs
        np.testing.assert_allclose(a[z], b[z], atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_killing_a_worker_mid_run_loses_nothing(cells3d_files, vit_t_path, tmp_path):
    stack, _ = cells3d_files
    src = ImageSource(str(stack))
    cache = tmp_path / "killed"
    with connect(workers=2) as client:
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            precompute_distributed(client, src, cache, model="vit_t", progress=False, retries=3)))
        runner.start()
        pids = client.run(os.getpid)  # {worker address: pid}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and runner.is_alive() and not any(cache.rglob("*.zarr")):
            time.sleep(0.2)  # the store appears when the first worker starts writing
        time.sleep(2.0)  # let the first slices start encoding
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        runner.join(timeout=600)
        assert not runner.is_alive()
        # the run finished on the surviving (or restarted) workers, or left units for the next run
        again = precompute_distributed(client, src, cache, model="vit_t", progress=False)
    assert result["units"] == 4
    assert result["computed"] + result["reused"] + len(result["failed"]) == 4
    assert bool(result["errors"]) == bool(result["failed"])  # a failed unit says why
    # the next run completes what is missing (a dead worker may have written a "failed" unit)
    assert again["computed"] <= len(result["failed"]) and again["failed"] == []
    assert again["computed"] + again["reused"] == 4
    assert len(_features(stack, cache)) == 4


def _nucleus_seeds(labels: np.ndarray, ids: list[int], z: int) -> np.ndarray:
    from scipy import ndimage as ndi

    seeds = []
    for i in ids:
        dist = ndi.distance_transform_edt(labels[z] == i)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        seeds.append([z, y, x])
    return np.asarray(seeds, float)


@pytest.mark.slow
def test_segment_seeds_one_object_per_seed_in_process(cells3d_files, vit_t_path, tmp_path):
    stack, labels = cells3d_files
    ids = [7, 8, 11, 14]
    seeds = _nucleus_seeds(labels, ids, z=2)
    src = ImageSource(str(stack))
    results = segment_seeds(src, seeds, model="vit_t", device="cpu", cache_dir=tmp_path / "c")
    assert [r.index for r in results] == [0, 1, 2, 3]
    painted = paint_objects((4, 256, 256), results)
    assert set(np.unique(painted)) == {0, 1, 2, 3, 4}
    for n, i in enumerate(ids, start=1):
        pred, gt = painted[2] == n, labels[2] == i
        assert (pred & gt).sum() / (pred | gt).sum() > 0.75
        assert not painted[[0, 1, 3]].any()  # no propagation asked: only the seed's slice


def test_paint_objects_smaller_object_keeps_overlap():
    big = ObjectResult(0, (0, 0, 0), np.ones((1, 6, 6), bool))
    small = ObjectResult(1, (0, 2, 2), np.ones((1, 2, 2), bool))
    empty = ObjectResult(2, (0, 0, 0), None)
    for order in ([big, small, empty], [small, empty, big]):
        out = paint_objects((8, 8), order)
        assert out.dtype == np.uint16
        assert (out[2:4, 2:4] == 2).all()
        assert (out[:6, :6] > 0).all() and out[0, 0] == 1
        assert not (out == 3).any()


def test_read_seeds_reads_napari_points_csv(tmp_path):
    p = tmp_path / "points.csv"
    p.write_text("index,axis-0,axis-1,axis-2\n0,2.0,10.5,20.0\n1,3.0,11.0,21.0\n")
    np.testing.assert_array_equal(read_seeds(p, 3), [[2.0, 10.5, 20.0], [3.0, 11.0, 21.0]])
    with pytest.raises(ValueError, match="3 coordinates per point, the image needs 2"):
        read_seeds(p, 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("index,axis-0,axis-1\n0,2.0,oops\n")
    with pytest.raises(ValueError, match="line 2"):
        read_seeds(bad, 2)
    with pytest.raises(ValueError, match="no such file"):
        read_seeds(tmp_path / "missing.csv", 2)
    none = tmp_path / "none.csv"
    none.write_text("y,x\n1,2\n")
    with pytest.raises(ValueError, match="no axis-0"):
        read_seeds(none, 2)


def test_connect_needs_exactly_one_of_workers_and_scheduler():
    with pytest.raises(ValueError, match="either workers"):
        with connect():
            pass
    with pytest.raises(ValueError, match="either workers"):
        with connect(workers=2, scheduler="tcp://127.0.0.1:1"):
            pass


def _cli(*args: str) -> tuple[int, dict | None]:
    """Run the real command line in a subprocess; (exit code, the JSON line of stdout)."""
    proc = subprocess.run([sys.executable, "-m", "napari_focsam.cli", *args], capture_output=True, text=True,
                          timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 or not lines, proc.stderr
    return proc.returncode, (json.loads(lines[-1]) if lines else None)


@pytest.mark.slow
def test_precompute_through_a_separate_scheduler_and_two_workers(cells3d_files, vit_t_path, tmp_path):
    """``dask scheduler`` + 2 x ``dask worker`` processes on 127.0.0.1 fill the cache via --scheduler."""
    stack, _ = cells3d_files
    dask_cli = str(Path(sys.executable).with_name("dask"))
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--no-dashboard"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=env))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        cache = tmp_path / "cache"
        rc, info = _cli("precompute", str(stack), "--cache", str(cache), "--scheduler", address, "--no-progress")
        assert rc == 0, info
        assert info["units"] == 4 and info["computed"] == 4 and info["reused"] == 0 and info["workers"] == 2
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    rc, info = _cli("precompute", str(stack), "--cache", str(cache), "--no-progress")
    assert rc == 0 and info["computed"] == 0 and info["reused"] == 4 and info["units"] == 4


@pytest.mark.slow
def test_segment_batch_cli_writes_one_labels_image(cells3d_files, vit_t_path, tmp_path):
    stack, labels = cells3d_files
    seeds = _nucleus_seeds(labels, [7, 11], z=2)
    csv = tmp_path / "points.csv"
    csv.write_text("index,axis-0,axis-1,axis-2\n" + "".join(f"{i},{z},{y},{x}\n" for i, (z, y, x) in enumerate(seeds)))
    out = tmp_path / "labels.tif"
    rc, info = _cli("segment-batch", str(stack), "--points", str(csv), "--out", str(out), "--propagate",
                    "--cache", str(tmp_path / "c"), "--no-progress")
    assert rc == 0
    assert info["objects"] == 2 and info["segmented"] == 2 and info["workers"] == 1
    import tifffile

    painted = tifffile.imread(out)
    assert painted.shape == (4, 256, 256) and set(np.unique(painted)) == {0, 1, 2}
    for n, i in enumerate([7, 11], start=1):
        inter = ((painted == n) & (labels == i)).sum()
        union = ((painted == n) | (labels == i)).sum()
        assert inter / union > 0.6  # propagated over the 4 slices
        assert (painted == n).any(axis=(1, 2)).sum() >= 3


def test_segment_batch_cli_checks_before_any_work(cells3d_files, tmp_path):
    stack, _ = cells3d_files
    csv = tmp_path / "points.csv"
    csv.write_text("index,axis-0,axis-1\n0,10,10\n")
    rc, _ = _cli("segment-batch", str(stack), "--points", str(csv), "--out", str(tmp_path / "l.tif"))
    assert rc == 2  # 2 coordinates for a stack
    csv.write_text("index,axis-0,axis-1,axis-2\n0,9,10,10\n")
    proc = subprocess.run([sys.executable, "-m", "napari_focsam.cli", "segment-batch", str(stack), "--points",
                           str(csv), "--out", str(tmp_path / "l.jpg")], capture_output=True, text=True)
    assert proc.returncode == 2 and "jpg" in proc.stderr.lower()
    proc = subprocess.run([sys.executable, "-m", "napari_focsam.cli", "segment-batch", str(stack), "--points",
                           str(csv), "--out", str(tmp_path / "l.tif")], capture_output=True, text=True)
    assert proc.returncode == 2 and "outside the image" in proc.stderr
    rc, _ = _cli("segment-batch", str(stack), "--points", str(csv), "--out", str(tmp_path / "l.tif"), "--propagate",
                 "--edge-fade", "1.5")
    assert rc == 2  # the stop rules are checked first


def test_segment_seeds_passes_the_stop_rules_and_the_vote_to_each_propagation(monkeypatch, tiny_ckpt, tmp_path):
    """``iou_threshold``, ``edge_fade`` and ``vote`` reach ``propagate``; stops left None are the
    product's."""
    import tifffile

    from napari_focsam.core.session._objects import SegmentedObject

    seen = []
    real = SegmentedObject.propagate
    monkeypatch.setattr(SegmentedObject, "propagate", lambda self, **k: seen.append(k) or real(self, **k))
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8))
    seeds = np.array([[1.0, 16.0, 16.0]])
    run = dict(model=str(tiny_ckpt), propagate=True, progress=False)
    segment_seeds(ImageSource(str(path)), seeds, iou_threshold=0.5, edge_fade=0.0, vote=False, **run)
    segment_seeds(ImageSource(str(path)), seeds, edge_fade=0.3, **run)
    segment_seeds(ImageSource(str(path)), seeds, **run)
    assert seen == [{"iou_threshold": 0.5, "edge_fade": 0.0, "vote": False}, {"edge_fade": 0.3, "vote": True},
                    {"vote": True}]


def test_waiting_for_tasks_ends_when_the_client_stays_away_from_its_scheduler():
    import time

    from napari_focsam.core.cluster._distributed import wait_for_tasks

    class Client:
        def __init__(self, statuses):
            self.statuses = list(statuses)

        @property
        def status(self):
            return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    class Future:
        def __init__(self, done_after):
            self.t = time.monotonic() + done_after

        status = "finished"

        def done(self):
            return time.monotonic() >= self.t

    wait_for_tasks(Client(["running"]), [Future(0.1), Future(0.2)], poll_s=0.01)  # all done: returns
    # a short reconnect is no loss
    wait_for_tasks(Client(["running", "connecting", "connecting", "running"]), [Future(0.2)], poll_s=0.01,
                   lost_after_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="lost its scheduler"):
        wait_for_tasks(Client(["running", "closed"]), [Future(60)], poll_s=0.01, lost_after_s=0.3)
    assert time.monotonic() - t0 < 5
    gone = Future(0.0)
    gone.status = "cancelled"
    from concurrent.futures import CancelledError

    with pytest.raises(CancelledError, match="1 of 1 tasks were cancelled"):
        wait_for_tasks(Client(["closed"]), [gone], poll_s=0.01)
