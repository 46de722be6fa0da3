"""The weights registry (napari_focsam.core.models.weights._registry and .catalog): names, entries, paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from weights_fixtures import cache, server, temp_entry, tiny  # noqa: F401

from napari_focsam.core.models import weights as W


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


def test_defaults_are_torch_free_and_shared():
    """DEFAULT_MODEL and REFINE_PRECISIONS live in core.defaults; the weights package re-exports them."""
    import subprocess
    import sys

    from napari_focsam.core import defaults

    assert W.DEFAULT_MODEL is defaults.DEFAULT_MODEL and W.REFINE_PRECISIONS is defaults.REFINE_PRECISIONS
    code = ("import sys\nimport napari_focsam.core.defaults, napari_focsam.core.models.weights\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)

