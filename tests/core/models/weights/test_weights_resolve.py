"""Resolution, fetch and import of weights (napari_focsam.core.models.weights._resolve) and the CLI."""

from __future__ import annotations

import importlib.resources
import io
import os
import tarfile
import zipfile

import pytest
from weights_fixtures import (  # noqa: F401
    cache,
    cli,
    fake_torch_zip,
    files,
    focsam_bytes,
    hostile_pickle,
    server,
    sha,
    shaped_checkpoint,
    temp_entry,
    tiny,
    tiny_refiner_entry,
)

from napari_focsam.core.models import weights as W


# --------------------------------------------------------------------------- #
# Import
# --------------------------------------------------------------------------- #
def test_import_good_file_via_cli(tiny, tmp_path, cache, capsys):
    src = tmp_path / "downloaded.pt"
    src.write_bytes(tiny.data)
    assert cli("weights", "import", "test_tiny", str(src)) == 0
    out = capsys.readouterr().out
    assert "test_tiny.pt" in out
    assert (cache / "test_tiny.pt").read_bytes() == tiny.data
    assert W.read_meta(cache / "test_tiny.pt")["origin"].startswith("imported from")
    assert W.resolve_weights("test_tiny", download=False) == cache / "test_tiny.pt"
    assert tiny.server.requests == []


def test_import_wrong_file_is_rejected(tiny, tmp_path, cache, capsys):
    src = tmp_path / "wrong.pt"
    src.write_bytes(b"not the weights")
    assert cli("weights", "import", "test_tiny", str(src)) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-focsam: error: ") and err.count("\n") == 1
    assert "wrong or incomplete" in err and "wrong.pt" in err
    assert files(cache) == []
    src.write_bytes(b"z" * len(tiny.data))  # right size, wrong content
    with pytest.raises(ValueError, match="does not match"):
        W.import_weights("test_tiny", src)
    assert files(cache) == []


def test_import_missing_file_and_unknown_name(tmp_path, capsys):
    assert cli("weights", "import", "vit_t", str(tmp_path / "nope.pt")) == 1
    assert "file not found" in capsys.readouterr().err
    assert cli("weights", "import", "nope", str(tmp_path)) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_import_focsam_from_zip_records_hash_and_detects_corruption(tmp_path, cache, focsam_bytes):
    ckpt = focsam_bytes
    download = tmp_path / "focsam_vit_huge_eval.zip"
    with zipfile.ZipFile(download, "w") as zf:
        zf.writestr("focsam_vit_huge_eval/iter_160000.pth", ckpt)
        zf.writestr("focsam_vit_huge_eval/config.py", "x = 1\n")
    path = W.import_weights("focsam_vit_h", download)
    assert path == cache / "focsam_vit_h_iter_160000.pth"
    assert path.read_bytes() == ckpt
    assert W.read_meta(path)["sha256"] == sha(ckpt)
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


def test_silent_corruption_of_manual_file_found_by_verify(tmp_path, cache, focsam_bytes):
    good = tmp_path / "iter_160000.pth"
    good.write_bytes(focsam_bytes)
    path = W.import_weights("focsam_vit_h", good)
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    W.forget_verified()
    rows = {r.name: r for r in W.list_weights(verify=True)}
    assert rows["focsam_vit_h"].status == "corrupt"
    with pytest.raises(W.WeightsUnavailableError):  # never loaded; manual step shown
        W.resolve_weights("focsam_vit_h")
    assert not path.exists()


def test_import_focsam_plain_pth_and_bad_files(tmp_path, cache, focsam_bytes):
    good = tmp_path / "iter_160000.pth"
    good.write_bytes(focsam_bytes)
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
    assert W.check_checkpoint_structure(p) == (True, "")
    p.write_bytes(p.read_bytes()[:-100])
    assert W.check_checkpoint_structure(p)[0] is False


def test_import_from_tarball(temp_entry, tmp_path, cache):
    data = os.urandom(1234)
    temp_entry(W.ModelWeights("test_tar", "inner.pt", len(data), sha(data)))
    tgz = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        info = tarfile.TarInfo("pkg-1.0/pkg/checkpoints/inner.pt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert W.import_weights("test_tar", tgz).read_bytes() == data


# --------------------------------------------------------------------------- #
# Imports are checked against the entry's architecture
# --------------------------------------------------------------------------- #
def test_hostile_pickle_imported_as_focsam_vit_h_is_refused(tmp_path, cache, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "iter_160000.pth"
    bad.write_bytes(hostile_pickle(marker))
    assert bad.stat().st_size < 100 and bad.read_bytes()[:2] == b"\x80\x02"
    assert cli("weights", "import", "focsam_vit_h", str(bad)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not imported as 'focsam_vit_h'" in err and str(bad) in err
    assert not marker.exists()  # nothing in the file ran
    assert files(cache) == []
    row = {r.name: r for r in W.list_weights()}["focsam_vit_h"]
    assert not row.cached and row.status == "manual download"
    assert cli("weights", "list") == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("focsam_vit_h"))
    assert "manual download" in line


def test_import_refuses_checkpoints_of_another_architecture(tmp_path, cache):
    other = tmp_path / "sam_vit_b.pth"
    other.write_bytes(shaped_checkpoint("vit_b"))
    with pytest.raises(ValueError, match="holds a vit_b model, not focsam_vit_h"):
        W.import_weights("focsam_vit_h", other)
    incomplete = tmp_path / "incomplete.pth"
    incomplete.write_bytes(shaped_checkpoint("focsam_vit_h", drop="mask_decoder.iou_prediction_head"))
    with pytest.raises(ValueError, match="does not match the focsam_vit_h architecture: .*missing"):
        W.import_weights("focsam_vit_h", incomplete)
    bare = tmp_path / "empty.pth"
    bare.write_bytes(fake_torch_zip())  # a torch zip with no tensors at all
    with pytest.raises(ValueError, match="was not imported"):
        W.import_weights("focsam_vit_h", bare)
    assert files(cache) == []


def test_junk_import_over_a_good_import_keeps_the_good_file(tmp_path, cache, focsam_bytes):
    good = tmp_path / "iter_160000.pth"
    good.write_bytes(focsam_bytes)
    path = W.import_weights("focsam_vit_h", good)
    meta = W.read_meta(path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(hostile_pickle(tmp_path / "pwned"))
    with pytest.raises(ValueError, match="was not imported"):
        W.import_weights("focsam_vit_h", junk)
    assert path.read_bytes() == focsam_bytes and W.read_meta(path) == meta
    assert sorted(files(cache)) == [path.name, path.name + ".meta.json"]  # no leftovers
    W.forget_verified()
    assert W.resolve_weights("focsam_vit_h") == path


def test_file_without_hash_copied_into_cache_must_be_that_model(tmp_path, cache):
    cache.mkdir(parents=True)
    path = W.cached_path("focsam_vit_h")
    path.write_bytes(hostile_pickle(tmp_path / "pwned"))
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("focsam_vit_h")
    assert str(path) in err.value.summary()
    assert not path.exists() and not (tmp_path / "pwned").exists()


def test_refiner_only_entry_without_hash_accepts_only_a_refiner(temp_entry, tmp_path, cache,
                                                              focsam_bytes):
    temp_entry(W.ModelWeights("test_refiner", "test_refiner.pt", None, None, base="vit_t",
                              model_type="focsam_vit_t"))
    shipped = importlib.resources.files("napari_focsam") / "weights_data" / "focsam_t_refiner.pt"
    refiner = tmp_path / "refiner.pt"
    refiner.write_bytes(shipped.read_bytes())
    assert W.import_weights("test_refiner", refiner).read_bytes() == refiner.read_bytes()
    whole = tmp_path / "whole.pth"
    whole.write_bytes(focsam_bytes)
    with pytest.raises(ValueError, match="not a refiner file"):
        W.import_weights("test_refiner", whole)
    assert W.cached_path("test_refiner").read_bytes() == refiner.read_bytes()


# --------------------------------------------------------------------------- #
# CLI: fetch, path
# --------------------------------------------------------------------------- #
def test_cli_fetch_and_path(tiny, cache, capsys):
    assert cli("weights", "fetch", "test_tiny", "--no-progress") == 0
    assert capsys.readouterr().out.strip() == str(cache / "test_tiny.pt")
    assert cli("weights", "path", "test_tiny") == 0
    assert capsys.readouterr().out.strip() == str(cache / "test_tiny.pt")
    assert cli("weights", "fetch", "test_tiny", "--force", "--no-progress") == 0
    assert len(tiny.server.requests) == 2


def test_cli_errors_are_one_line(tiny, capsys):
    assert cli("weights", "path", "vit_xxl") == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-focsam: error: unknown model 'vit_xxl'") and err.count("\n") == 1
    tiny.server.routes[tiny.route] = ("404", b"")
    assert cli("weights", "path", "test_tiny", "--no-progress") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 404" in err
    assert "napari-focsam weights import test_tiny /path/to/test_tiny.pt" in err


def test_cli_path_no_download(tiny, capsys):
    assert cli("weights", "path", "test_tiny", "--no-download") == 1
    assert tiny.server.requests == []
    assert "disabled" in capsys.readouterr().err


def test_refiner_only_entry_loads_on_its_base(tmp_path, temp_entry):
    """A registry entry with ``base`` (FocSAM-T style) loads the base plus itself as refiner."""
    import torch

    from napari_focsam.core.models import load_model

    base, refiner, _ = tiny_refiner_entry(tmp_path, temp_entry, "test_focsam_t", depth=2)
    model = load_model("test_focsam_t", "cpu", refine_precision="fp32")
    assert model.has_refiner and len(model.focus_refiner.blocks) == 2
    plain = load_model(base, "cpu")
    assert not plain.has_refiner
    torch.testing.assert_close(model.mask_decoder.iou_token.weight, plain.mask_decoder.iou_token.weight)
    with pytest.raises(ValueError, match="already is a refiner"):
        load_model("test_focsam_t", "cpu", refiner=refiner)


def test_refiner_entry_accepts_a_head_file_with_its_decoder(temp_entry, tmp_path, cache):
    """A refiner trained with a fine-tuned decoder ships both (a head file); anything else
    (an encoder, a decoder of other shapes) is still refused."""
    import torch

    from napari_focsam.modeling.mask_decoder import MaskDecoder

    temp_entry(W.ModelWeights("test_head", "test_head.pt", None, None, base="vit_t", model_type="focsam_vit_t"))
    shipped = importlib.resources.files("napari_focsam") / "weights_data" / "focsam_t_refiner.pt"
    raw = torch.load(io.BytesIO(shipped.read_bytes()), weights_only=True)
    dec = {f"mask_decoder.{k}": v.half() for k, v in MaskDecoder().state_dict().items()}
    head = tmp_path / "head.pt"
    torch.save({"state_dict": {**raw["state_dict"], **dec}, "napari_focsam": raw["napari_focsam"]}, head)
    assert W.import_weights("test_head", head).read_bytes() == head.read_bytes()
    small = {f"mask_decoder.{k}": v.half() for k, v in MaskDecoder(transformer_dim=64).state_dict().items()}
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {**raw["state_dict"], **small}, "napari_focsam": raw["napari_focsam"]}, bad)
    with pytest.raises(ValueError, match="mask decoder architecture"):
        W.import_weights("test_head", bad)
