"""The core is napari-free: a script or another GUI can use it without napari or Qt."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_without_napari_or_qt():
    code = (
        "import sys\n"
        "import napari_focsam.cli, napari_focsam.core.session, napari_focsam.core.weights\n"
        "import napari_focsam.evaluation.runner, napari_focsam.training.trainer, napari_focsam._sample_data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
