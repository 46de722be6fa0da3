"""The output formats as one table: the writers, the checks and the commands' help read it."""

from __future__ import annotations

import numpy as np
import pytest

import napari_focsam.core.outputs._mask_files as mask_files
from napari_focsam.cli import main
from napari_focsam.core.outputs import MASK_FORMATS, MASK_WRITERS, MaskFormat, check_mask_path, formats_help, write_mask


def test_the_help_and_the_checks_come_from_the_table(tmp_path, capsys):
    assert set(MASK_FORMATS) == set(MASK_WRITERS)
    text = formats_help()
    assert all(suffix in text for suffix in MASK_WRITERS)
    assert ".png" not in formats_help(ndim=3) and ".tif" in formats_help(ndim=3)
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(suffix in out for suffix in MASK_WRITERS)


def test_a_new_format_is_one_row(tmp_path, monkeypatch):
    written = []

    def whole(tmp, mask):
        written.append(mask.copy())
        with open(tmp, "wb") as f:
            np.save(f, mask, allow_pickle=False)

    row = MaskFormat(2, "a test format", whole, lambda tmp, shape, crops, dtype: None)
    monkeypatch.setitem(MASK_WRITERS, ".msk", row)
    monkeypatch.setitem(MASK_FORMATS, ".msk", 2)
    assert ".msk (a test format)" in mask_files.formats_help()
    mask = np.eye(4, dtype=np.uint8)
    write_mask(tmp_path / "m.msk", mask)
    np.testing.assert_array_equal(written[0], mask)
    with pytest.raises(ValueError, match="2D masks only"):
        check_mask_path(tmp_path / "m.msk", 3)
