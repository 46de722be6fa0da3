"""The weights cache (napari_focsam.core.models.weights._cache): folder, stamps, the once-per-process
SHA-256 check, and ``weights list``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from weights_fixtures import cache, cli, files, server, tiny  # noqa: F401

from napari_focsam.core.models import weights as W
from napari_focsam.core.models.weights import _cache as wcache


def _rot(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` (same length) keeping its size and mtime: bit rot."""
    st = path.stat()
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:  # in place: same inode
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def hash_calls(monkeypatch):
    """Count the SHA-256 computations of cached files."""
    calls = []
    real = wcache.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(wcache, "sha256_file", counting)
    return calls


def test_second_resolve_uses_cache_without_network_or_rehash(tiny, cache, hash_calls):
    path = W.resolve_weights("test_tiny", progress=False)
    assert hash_calls == []  # hashed while it was downloaded
    W.forget_verified()  # as in a new process: the file is hashed once...
    assert W.resolve_weights("test_tiny", progress=False) == path
    assert hash_calls == [path]
    assert W.resolve_weights("test_tiny", progress=False) == path  # ...and then never again
    assert hash_calls == [path]
    assert len(tiny.server.requests) == 1


def test_bit_rot_with_same_size_and_mtime_is_found_in_a_new_process(tiny, cache):
    path = W.resolve_weights("test_tiny", progress=False)
    _rot(path, b"r" * len(tiny.data))
    W.forget_verified()  # a new process: the sidecar stamp still matches size and mtime
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data  # re-fetched
    assert len(tiny.server.requests) == 2


def test_bit_rot_without_a_source_is_a_one_line_error_naming_file_and_command(tiny, cache, capsys):
    path = W.resolve_weights("test_tiny", progress=False)
    _rot(path, b"r" * len(tiny.data))
    W.forget_verified()
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("test_tiny", download=False)
    summary = err.value.summary()
    assert "\n" not in summary and str(path) in summary and "SHA-256" in summary
    assert "napari-focsam weights fetch test_tiny --force" in summary
    assert "napari-focsam weights import test_tiny" in summary
    assert not path.exists()  # never used
    capsys.readouterr()
    assert cli("weights", "path", "test_tiny", "--no-download") == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_changed_or_replaced_file_is_hashed_again(tiny, cache, hash_calls):
    path = W.resolve_weights("test_tiny", progress=False)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    W.resolve_weights("test_tiny", progress=False)
    assert hash_calls == [path]
    st = path.stat()
    copy = path.with_name("copy.tmp")
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, path)  # same size and mtime, another inode
    W.resolve_weights("test_tiny", progress=False)
    assert hash_calls == [path, path]


def test_cache_file_given_as_a_path_is_verified_too(tiny, cache):
    path = W.resolve_weights("test_tiny", progress=False)
    _rot(path, b"p" * len(tiny.data))
    W.forget_verified()
    assert W.resolve_weights(str(path), progress=False).read_bytes() == tiny.data
    assert len(tiny.server.requests) == 2


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
    assert W.read_meta(cache / "test_tiny.pt")["sha256"] == tiny.entry.sha256


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


def test_list(tiny, capsys):
    rows = {r.name: r for r in W.list_weights()}
    assert rows["focsam_t_micro"].default and not rows["focsam_t"].default and not rows["vit_t"].default and rows["vit_t"].size == 40_728_226
    assert rows["test_tiny"].status == "not cached" and not rows["test_tiny"].cached
    assert rows["focsam_vit_h"].status == "manual download"
    W.resolve_weights("test_tiny", progress=False)
    rows = {r.name: r for r in W.list_weights()}
    assert rows["test_tiny"].cached and rows["test_tiny"].status == "cached"
    assert cli("weights", "list") == 0
    out = capsys.readouterr().out
    assert str(W.cache_dir()) in out
    line = next(ln for ln in out.splitlines() if ln.startswith("test_tiny"))
    assert "cached" in line and "not cached" not in line and "kB" in line
    assert "vit_h" in out and "2.56 GB" in out
    # --verify re-hashes even with a valid stamp (finds silent corruption)
    path = W.cached_path("test_tiny")
    _rot(path, b"q" * len(tiny.data))
    W.forget_verified()
    assert {r.name: r for r in W.list_weights()}["test_tiny"].status == "cached"
    assert {r.name: r for r in W.list_weights(verify=True)}["test_tiny"].status == "corrupt"
    assert W.resolve_weights("test_tiny", progress=False).read_bytes() == tiny.data  # replaced


def test_an_older_copy_of_a_shipped_file_is_replaced_and_said_so(cache, caplog):
    """After an upgrade the cache may hold the file the previous version shipped: it is replaced
    from the package, with a warning that says so rather than calling it corrupt."""
    entry = W.find_weights("focsam_t_micro")
    path = W.resolve_weights("focsam_t_micro", progress=False)
    path.write_bytes(b"an older release's file")
    with caplog.at_level("WARNING"):
        again = W.resolve_weights("focsam_t_micro", progress=False)
    assert again.stat().st_size == entry.size and W.check_checkpoint(entry, again) is None
    assert "is not the file this version of napari-focsam ships" in caplog.text
    assert "corrupt" not in caplog.text
