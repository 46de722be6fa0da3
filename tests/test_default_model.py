"""FocSAM-T is the default model (issue 17); the plain vit_t loop is one choice away."""

from __future__ import annotations

import hashlib

from weights_fixtures import cache, temp_entry  # noqa: F401

from napari_focsam.core import defaults
from napari_focsam.core import weights as W


def test_focsam_t_is_the_default_and_refines_the_plain_model():
    assert defaults.DEFAULT_MODEL == "focsam_t" and defaults.PLAIN_MODEL == "vit_t"
    entry = W.find_weights(None)
    assert entry.name == "focsam_t" and entry.base == defaults.PLAIN_MODEL
    assert [type(s).__name__ for s in entry.sources] == ["PackageDataSource"]  # ships with the package


def test_cli_and_session_default_to_focsam_t():
    import inspect

    from napari_focsam.cli import build_parser
    from napari_focsam.core.models import load_model
    from napari_focsam.core.session import Session

    parser = build_parser()
    for argv in (["segment", "x.tif", "--click", "1,1", "--out", "m.tif"], ["evaluate", "--dataset", "grabcut", "--data-root", ".", "--out", "o"],
                 ["segment-all", "x.tif", "--out", "l.tif"]):
        assert parser.parse_args(argv).model == "focsam_t", argv
    assert inspect.signature(load_model).parameters["name_or_path"].default == "focsam_t"
    assert inspect.signature(Session).parameters["model"].default == "focsam_t"


def test_model_files_of_a_refiner_entry_are_its_base_and_itself(tmp_path, temp_entry, cache):  # noqa: F811
    from conftest import make_tiny_focsam
    from napari_focsam.core.checkpoint import save_checkpoint
    from napari_focsam.core.models import model_files

    base = tmp_path / "base.pt"
    save_checkpoint(make_tiny_focsam(), base)
    refiner = tmp_path / "tiny_refiner.pt"
    save_checkpoint(make_tiny_focsam(refiner_depth=1), refiner, only_refiner=True,
                    refiner_config={"depth": 1, "mlp_ratio": 1.0})
    data = refiner.read_bytes()
    temp_entry(W.ModelWeights(name="test_default_refiner", filename="tiny_refiner.pt", size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), sources=(refiner.as_uri(),),
                              base=str(base)))
    path, rpath = model_files("test_default_refiner")
    assert path == base.resolve() and rpath is not None and rpath.read_bytes() == data
    assert model_files(base) == (base.resolve(), None)
