"""One-line error descriptions shared by the widget's jobs (core.errors)."""

from __future__ import annotations

import pytest

from napari_focsam.core.errors import describe_error, is_oom, one_line


def test_one_line_collapses_and_cuts():
    assert one_line("a\n  b\tc") == "a b c"
    text = one_line("x" * 500, limit=50)
    assert len(text) == 50 and text.endswith("...")


def test_oom_detection():
    torch = pytest.importorskip("torch")
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(ValueError("out of memory"))  # only runtime errors of the allocator
    f = describe_error(RuntimeError("CUDA out of memory"), "Segment volume")
    assert f.oom and f.message == "Segment volume: out of GPU memory"


def test_messages_are_one_line_and_specific():
    f = describe_error(FileNotFoundError("checkpoint not found:\n /x/missing.pt"))
    assert f.message == "checkpoint not found: /x/missing.pt" and not f.oom
    f = describe_error(KeyError("boom"), "loading")
    assert f.message == "loading: KeyError: 'boom'"


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    from napari_focsam.core.models.weights import WeightsUnavailableError, resolve_weights

    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path))
    monkeypatch.setenv("NAPARI_FOCSAM_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights("vit_t", download=False)
    assert "napari-focsam weights fetch vit_t" in describe_error(err.value).message
