"""FocSAM-T micro is the default model; focsam_t (photos) and the plain vit_t loop are one choice away."""

from __future__ import annotations

from weights_fixtures import cache, temp_entry, tiny_refiner_entry  # noqa: F401

from napari_focsam.core import defaults
from napari_focsam.core.models import weights as W


def test_focsam_t_micro_is_the_default_and_refines_the_plain_model():
    assert defaults.DEFAULT_MODEL == "focsam_t_micro" and defaults.PLAIN_MODEL == "vit_t"
    assert defaults.PHOTO_MODEL == "focsam_t"
    entry = W.find_weights(None)
    assert entry.name == "focsam_t_micro" and entry.base == defaults.PLAIN_MODEL
    for name in (defaults.DEFAULT_MODEL, defaults.PHOTO_MODEL):  # both ship with the package
        e = W.find_weights(name)
        assert [type(s).__name__ for s in e.sources] == ["PackageDataSource"] and e.base == "vit_t"


def test_cli_and_session_default_to_focsam_t_micro():
    import inspect

    from napari_focsam.cli import build_parser
    from napari_focsam.core.models import load_model
    from napari_focsam.core.session import Session

    parser = build_parser()
    for argv in (["segment", "x.tif", "--click", "1,1", "--out", "m.tif"], ["evaluate", "--dataset", "grabcut", "--data-root", ".", "--out", "o"],
                 ["segment-all", "x.tif", "--out", "l.tif"]):
        assert parser.parse_args(argv).model == "focsam_t_micro", argv
    assert inspect.signature(load_model).parameters["name_or_path"].default == "focsam_t_micro"
    assert inspect.signature(Session).parameters["model"].default == "focsam_t_micro"


def test_model_files_of_a_refiner_entry_are_its_base_and_itself(tmp_path, temp_entry, cache):  # noqa: F811
    from napari_focsam.core.models import model_files

    base, _, data = tiny_refiner_entry(tmp_path, temp_entry, "test_default_refiner", depth=1)
    path, rpath = model_files("test_default_refiner")
    assert path == base.resolve() and rpath is not None and rpath.read_bytes() == data
    assert model_files(base) == (base.resolve(), None)
