"""Hostile checkpoint files: nothing in them runs.

Each hostile file tries to create a marker file when it is unpickled. The tests check that
loading raises a :class:`CheckpointError` that says why, and that the marker never appears.
"""

from __future__ import annotations

import os
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_focsam.core.models import CheckpointError, load_checkpoint, read_checkpoint
from napari_focsam.core.models._checkpoint import OpaqueMetadata


class _Touch:
    """Unpickling this calls ``os.system`` (the classic hostile pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _replace_pickle(path: Path, payload: bytes) -> None:
    """Swap the ``data.pkl`` record of a torch zip archive for ``payload``."""
    with zipfile.ZipFile(path) as zf:
        records = {info.filename: zf.read(info) for info in zf.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            zf.writestr(name, payload if name.endswith("/data.pkl") else data)


def test_legacy_pickle_with_reduce_never_runs(tmp_path):
    marker = tmp_path / "pwned_legacy"
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Touch(marker)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned_pickle"
    path = tmp_path / "focsam_vit_h.pth"
    path.write_bytes(pickle.dumps(_Touch(marker)))
    assert len(path.read_bytes()) < 200
    with pytest.raises(CheckpointError, match="legacy"):
        read_checkpoint(path)
    assert not marker.exists()


def test_reduce_inside_torch_zip_never_runs(tmp_path):
    marker = tmp_path / "pwned_zip"
    path = tmp_path / "zip.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Touch(marker)}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match=r"refusing .*(posix|nt)\.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_dotted_global_name_cannot_reach_eval(tmp_path):
    """``torch._utils`` / ``_rebuild_tensor_v2.__builtins__.get`` -> ``eval`` (the allow-list bypass)."""
    marker = tmp_path / "pwned_dotted"
    path = tmp_path / "dotted.pth"
    torch.save({"w": torch.zeros(2)}, path)
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()".encode()

    def unicode(text: bytes) -> bytes:
        return b"X" + len(text).to_bytes(4, "little") + text

    payload = (b"\x80\x04" + b"ctorch._utils\n_rebuild_tensor_v2.__builtins__.get\n"
               + b"(" + unicode(b"eval") + b"tR" + b"(" + unicode(code) + b"tR" + b".")
    _replace_pickle(path, payload)
    with pytest.raises(CheckpointError, match="refusing"):
        read_checkpoint(path)
    assert not marker.exists()


def test_empty_and_directory_paths_say_so(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)


def _fake_mmengine_classes():
    """Register modules named like mmengine's so that torch.save can pickle its classes."""
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    mods = {name: types.ModuleType(name) for name in names}

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([1.0, 0.5])
            self._count_history = np.array([1, 1])
            self.max_length = 1000000

    HistoryBuffer.__module__ = "mmengine.logging.history_buffer"
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    mods["mmengine.logging.history_buffer"].HistoryBuffer = HistoryBuffer
    return mods, HistoryBuffer


def test_mmengine_metadata_becomes_inert(tmp_path):
    """The official file's metadata (history buffers, numpy scalars) loads as opaque values."""
    mods, HistoryBuffer = _fake_mmengine_classes()
    sys.modules.update(mods)
    try:
        path = tmp_path / "iter_160000.pth"
        torch.save({"meta": {"iter": 160000, "seed": np.int64(3)},
                    "state_dict": {"backbone.w": torch.ones(3)},
                    "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}}}, path)
    finally:
        for name in mods:
            del sys.modules[name]
    raw = read_checkpoint(path)
    assert torch.equal(raw["state_dict"]["backbone.w"], torch.ones(3))
    assert isinstance(raw["message_hub"]["log_scalars"]["train/loss"], OpaqueMetadata)
    assert isinstance(raw["meta"]["seed"], OpaqueMetadata)
    assert "mmengine" not in sys.modules


def test_unknown_foreign_class_is_refused(tmp_path):
    mod = types.ModuleType("somepkg_hooks")

    class Hook:
        pass

    Hook.__module__ = "somepkg_hooks"
    Hook.__qualname__ = "Hook"
    mod.Hook = Hook
    sys.modules["somepkg_hooks"] = mod
    try:
        path = tmp_path / "foreign.pth"
        torch.save({"state_dict": {"w": torch.ones(1)}, "hook": Hook()}, path)
    finally:
        del sys.modules["somepkg_hooks"]
    with pytest.raises(CheckpointError, match="somepkg_hooks.Hook"):
        read_checkpoint(path)


def test_training_resume_refuses_hostile_checkpoint(tmp_path):
    from napari_focsam.training.trainer import load_resume_state

    marker = tmp_path / "pwned_resume"
    path = tmp_path / "ckpt_0000010.pt"
    torch.save({"iteration": 10, "rng": _Touch(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_resume_state(path)
    assert not marker.exists()
