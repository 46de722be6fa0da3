"""Shared fixtures and helpers of the weights tests (tests/test_weights_*.py).

A test module uses them with ``from weights_fixtures import cache, server, ...  # noqa: F401``;
``cache`` is autouse, so every test of such a module gets its own cache folder.
Downloads run against a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from napari_focsam.core.models import weights as W


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


def closed_port_url(path: str = "/x.pt") -> str:
    """An URL on 127.0.0.1 where nothing listens (connection refused)."""
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
    """Every test gets its own cache folder, network access enabled and a fresh process memo."""
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    W.forget_verified()
    yield W.cache_dir()
    W.forget_verified()


def sha(data: bytes) -> str:
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
            sha256=sha(data),
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


def tiny_refiner_entry(folder: Path, add, name: str, depth: int) -> tuple[Path, Path, bytes]:
    """Write a tiny base checkpoint and a refiner-only file of ``depth`` blocks into ``folder``
    and register ``name`` (FocSAM-T style: the refiner file, with ``base``) through ``add``
    (the :func:`temp_entry` fixture). Returns (base path, refiner path, refiner bytes)."""
    from conftest import make_tiny_focsam
    from napari_focsam.core.models import save_checkpoint

    base = folder / "base.pt"
    save_checkpoint(make_tiny_focsam(), base)
    refiner = folder / "tiny_refiner.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=depth), refiner, only_refiner=True,
                    refiner_config={"depth": depth, "mlp_ratio": 1.0})
    data = refiner.read_bytes()
    add(W.ModelWeights(name=name, filename="tiny_refiner.pt", size=len(data), sha256=sha(data),
                       sources=(refiner.as_uri(),), base=str(base)))
    return base, refiner, data


def files(folder: Path) -> list[str]:
    """All files below ``folder`` (relative paths); empty folders do not count."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def cli(*argv: str) -> int:
    """Run ``napari-focsam weights ...`` in-process through the real entry point; return the exit code."""
    from napari_focsam.cli import main

    return main(list(argv))


def fake_torch_zip(payload: bytes = b"tensor-bytes") -> bytes:
    """Bytes laid out like a torch.save zip archive (enough for the structure check only)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", payload)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


# The official FocSAM (mmengine) key prefixes, from napari-focsam's own names.
_TO_MMENGINE = (
    ("image_encoder.", "backbone."),
    ("prompt_encoder.pe_layer.", "neck.pos_embed_layer."),
    ("prompt_encoder.point_embeddings.", "neck.point_embeds."),
    ("prompt_encoder.", "neck."),
    ("mask_decoder.", "decode_head."),
    ("focus_refiner.", "refine_head."),
)


def shaped_checkpoint(
    model_type: str = "focsam_vit_h", *, seed: float = 0.0, drop: str | None = None
) -> bytes:
    """A small ``torch.save`` file with every key and tensor shape of a real architecture.

    All tensors are views of one scalar (stride 0), so a ViT-H checkpoint of the official
    FocSAM layout (``state_dict`` with ``backbone.``/``neck.``/``decode_head.``/``refine_head.``)
    is a few hundred kB.  ``model_type``: ``"focsam_vit_h"`` or ``"vit_b"``; ``drop`` removes
    the keys that start with it (an incomplete file); ``seed`` changes the bytes.
    """
    import torch

    from napari_focsam.modeling.focsam import FocSAM
    from napari_focsam.modeling.focus_refiner import FocusRefiner
    from napari_focsam.modeling.image_encoder_vit import VIT_CONFIGS, ImageEncoderViT

    vit = model_type.removeprefix("focsam_")
    with torch.device("meta"):
        refiner = FocusRefiner() if model_type.startswith("focsam_") else None
        model = FocSAM(ImageEncoderViT(VIT_CONFIGS[vit]), focus_refiner=refiner)
    value = torch.tensor(seed)
    sd = {}
    for key, t in model.state_dict().items():
        if drop and key.startswith(drop):
            continue
        for ours, theirs in _TO_MMENGINE if refiner is not None else ():
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        sd[key] = value.to(t.dtype).expand(t.shape)
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "meta": {"iter": 160000}} if refiner else sd, buf)
    return buf.getvalue()


@pytest.fixture(scope="session")
def focsam_bytes() -> bytes:
    """A checkpoint with the official FocSAM ViT-H layout, keys and shapes (small, see above)."""
    return shaped_checkpoint("focsam_vit_h")


class _MakeDir:
    """Unpickling this calls ``os.mkdir(path)``: a harmless stand-in for a hostile payload."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def hostile_pickle(marker: Path) -> bytes:
    """A legacy-format pickle (protocol 2, like old ``torch.save``) that would create ``marker``."""
    import pickle

    return pickle.dumps(_MakeDir(str(marker)), protocol=2)
