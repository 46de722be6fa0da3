"""Bad, hostile and faulty inputs: a one-line error (or warning) that says what and where,
nothing lost and no work wasted."""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_helpers import gray, run  # noqa: E402

from napari_focsam.core.images import to_rgb_uint8  # noqa: E402
from napari_focsam.core.images import ImageVolume  # noqa: E402
from napari_focsam.core.models.weights import _cache as weights_cache  # noqa: E402
from napari_focsam.core.hashing import CHUNK_SIZE  # noqa: E402
from napari_focsam.core.models.weights._archive import TransferError, copy_verified


class _Endless(io.RawIOBase):
    """A stream of zeros that counts what was read (a member that inflates without end)."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = len(buf)
        buf[:n] = b"\0" * n
        self.read_bytes += n
        return n


def test_a_decompression_bomb_is_stopped_as_soon_as_it_passes_the_expected_size(tmp_path):
    src, dest = _Endless(), tmp_path / "w.pt"
    with pytest.raises(TransferError, match="more than 1000000 bytes"):
        copy_verified(io.BufferedReader(src), dest, 1_000_000, None)
    assert src.read_bytes <= 1_000_000 + 2 * max(CHUNK_SIZE, io.DEFAULT_BUFFER_SIZE)
    assert not dest.exists()


def test_a_cache_folder_that_is_a_file_is_named(tmp_path, monkeypatch):
    target = tmp_path / "afile"
    target.write_text("x")
    monkeypatch.setenv(weights_cache.CACHE_ENV, str(target))
    with pytest.raises(weights_cache.CacheFolderError, match=r"afile \(from \$NAPARI_FOCSAM_CACHE\) is a file"):
        weights_cache.ensure_partial_root()
    monkeypatch.setenv(weights_cache.CACHE_ENV, str(target / "sub"))
    with pytest.raises(weights_cache.CacheFolderError, match="lies under .*afile, which is a file"):
        weights_cache.ensure_partial_root()


def test_a_read_only_cache_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_cache.CACHE_ENV, str(tmp_path / "ro"))

    def denied(*args, **kwargs):  # (tests run as root here, where chmod does not deny)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(weights_cache.tempfile, "TemporaryFile", denied)
    with pytest.raises(weights_cache.CacheFolderError, match=r"ro \(from \$NAPARI_FOCSAM_CACHE\) is read-only: "
                                                               "set NAPARI_FOCSAM_CACHE to a writable folder"):
        weights_cache.ensure_partial_root()


def test_float64_values_near_1e300_are_scaled_in_float64_not_blank():
    a = np.zeros((64, 64))
    a[20:40, 20:40] = 1e300
    a[0, 0] = -1e300
    rgb = to_rgb_uint8(a)
    assert rgb[30, 30, 0] == 255 and rgb[5, 5, 0] < 255
    vol = ImageVolume(a)
    assert np.isfinite(vol.contrast_limits).all()
    assert vol.rgb_plane(0)[30, 30, 0] == 255 and vol.rgb_plane(0)[5, 5, 0] == 0


@pytest.mark.parametrize("limits", ["7,7", "9,3", "nan,4", "0,inf"])
def test_contrast_limits_that_map_everything_to_one_value_are_refused(tmp_path, capsys, limits):
    with pytest.raises(SystemExit) as exc:
        run(["segment-all", gray(tmp_path), "--contrast-limits", limits, "--out", tmp_path / "m.tif"], capsys)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "LOW must be below HIGH" in err and "Traceback" not in err


def test_a_binary_seeds_file_is_named(tmp_path):
    from napari_focsam.core.cluster import read_seeds

    seeds = tmp_path / "seeds.csv"
    seeds.write_bytes(b"\xd5\x00\xff\xfe" * 64)
    with pytest.raises(ValueError, match=r"seeds file .*seeds.csv is not a text \(CSV\) file"):
        read_seeds(seeds, 2)


@pytest.mark.parametrize("option, message", [
    (["--workers", "100000"], "100000 local workers on a machine with"),
    (["--workers", "0"], "0 makes no sense"),
    (["--units-per-task", "0"], "0 makes no sense: give 1 or more"),
    (["--units-per-task", "-3"], "-3 makes no sense"),
])
def test_cluster_counts_that_make_no_sense_are_refused(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exc:
        run(["precompute", gray(tmp_path), "--cache", tmp_path / "c", *option], capsys)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_address_answered_by_a_server_that_is_not_dask_is_one_error():
    pytest.importorskip("distributed")
    from napari_focsam.core.cluster import connect

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer():  # an HTTP server, say: a reply dask reads as a frame of exabytes
        for _ in range(4):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 8)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    import dask
    from distributed import default_client

    before = dask.config.get("scheduler", None)
    try:
        with pytest.raises(ValueError, match=f"cannot use the dask scheduler at tcp://127.0.0.1:{port}"):
            with connect(scheduler=f"tcp://127.0.0.1:{port}"):
                pass
    finally:
        server.close()
    # nothing left behind: no half-made default client, dask's own scheduler as it was (it was
    # "dask.distributed", and the next lazy dask array in the process failed for want of a client)
    assert dask.config.get("scheduler", None) == before
    with pytest.raises(ValueError, match="No clients found"):
        default_client()


@pytest.mark.slow
def test_the_local_cluster_accepts_only_this_process():
    distributed = pytest.importorskip("distributed")
    from napari_focsam.core.cluster import connect

    with connect(workers=1) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert client.submit(abs, -3).result() == 3
        for other in (address.replace("tls://", "tcp://"), address):  # no keys: refused
            with pytest.raises(Exception):
                distributed.Client(other, timeout="3s", set_as_default=False)


def test_a_scheduler_lost_mid_run_gives_a_summary_not_a_traceback(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    import time

    from napari_focsam.core.cluster import _distributed as dist

    def plan(*args, **kwargs):
        return 4, [0, 1, 2, 3]

    filling = str(tmp_path / "filling")  # a path, not an Event: the task is pickled

    def slow_fill(*args, **kwargs):
        open(filling, "w").close()
        time.sleep(6)
        return {"worker_pid": 0}

    monkeypatch.setattr(dist, "missing_units", plan)
    monkeypatch.setattr(dist, "fill_units", slow_fill)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)

    def kill():  # mid-run: once the plan is back and the filling has begun (a fixed 2 s timer
        end = time.monotonic() + 30  # could close the cluster before the plan came back, on a
        while not os.path.exists(filling) and time.monotonic() < end:  # loaded machine)
            time.sleep(0.05)
        cluster.close()

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        info = dist.precompute_distributed(client, dist.ImageSource(str(tmp_path / "x.tif")), tmp_path / "c",
                                           model="vit_t", progress=False, retries=0)
    finally:
        killer.join()
        client.close()
    assert info["failed"] == [0, 1, 2, 3] and info["computed"] == 0
    assert info["errors"][0].startswith("the cluster went away during the run")
