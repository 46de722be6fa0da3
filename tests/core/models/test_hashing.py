"""The project's one SHA-256 helper (napari_focsam.core.hashing)."""

from __future__ import annotations

import hashlib
import os

import pytest

from napari_focsam.core.hashing import CHUNK_SIZE, sha256_file


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 7])
def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path), chunk_size=4096) == hashlib.sha256(data).hexdigest()
