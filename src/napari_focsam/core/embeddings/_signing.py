"""Per-user signing key of the embedding caches: entries are authenticated, not just checked.

A checksum catches damage (a missing chunk, a torn write) but anybody who can write to a cache
folder can also recompute it: replace one tile's features with another's, or forge a "blank"
flag, and the entry passes. Each entry therefore carries an HMAC-SHA1 (20 bytes, the size of the
old checksum) keyed with a secret that lives *outside* the cache folder, in the user's config
folder (``platformdirs.user_config_dir``, mode 0600). Processes of the same user (dask workers on
the nodes of a cluster with a shared home) read the same key; an entry written or moved by anyone
else fails the check and is recomputed. A lab that shares one cache between users on purpose
points ``NAPARI_FOCSAM_CACHE_KEY`` to one key file readable by all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

__all__ = ["KEY_ENV", "entry_mac", "key_path", "signing_key"]

#: Environment variable naming the key file (default: ``<user config dir>/cache-signing.key``).
KEY_ENV = "NAPARI_FOCSAM_CACHE_KEY"
_KEY_BYTES = 32
_lock = threading.Lock()
_cached: dict[str, bytes] = {}


def key_path() -> Path:
    """The key file: ``$NAPARI_FOCSAM_CACHE_KEY`` or ``cache-signing.key`` in the user config folder."""
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-focsam", appauthor=False)) / "cache-signing.key"


def signing_key() -> bytes:
    """The user's secret (32 bytes), created on first use (atomically: concurrent first uses on
    several nodes agree on one key).

    Raises
    ------
    OSError
        The key file cannot be read or created, or is not a key this tool wrote.
    """
    path = key_path()
    with _lock:
        key = _cached.get(str(path))
        if key is not None:
            return key
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(_KEY_BYTES))
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic and never replaces: the first writer's key wins
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        key = path.read_bytes()
        if len(key) != _KEY_BYTES:
            raise OSError(f"the cache signing key {path} is not a key of this tool ({len(key)} bytes): "
                          f"remove it (a new one is made) or point {KEY_ENV} to the right file")
        _cached[str(path)] = key
        return key


def entry_mac(unit: int, *parts: bytes | memoryview) -> bytes:
    """HMAC-SHA1 (20 bytes) of a cache entry: its unit number and its stored parts (bytes-like)."""
    mac = hmac.new(signing_key(), str(int(unit)).encode() + b"\0", hashlib.sha1)
    for part in parts:
        view = memoryview(part)
        mac.update(view.nbytes.to_bytes(8, "little"))
        mac.update(view)
    return mac.digest()
