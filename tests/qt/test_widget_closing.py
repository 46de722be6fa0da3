"""Closing napari's main window while a job runs: no crash, every job cancelled, nothing reported.

Each case runs in its own process, as a user's napari does: an exception in a Qt callback after
the window is gone aborts the interpreter (SIGABRT), which would take the test runner with it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("napari")

SCRIPT = r"""
import sys, time
import numpy as np
from qtpy.QtWidgets import QApplication
import napari
from napari_focsam._sample_data import load_nuclei
from napari_focsam.core import models

phase = sys.argv[1]
if phase == "load":  # a slow disk: the model is still loading when the window closes
    real = models.load_model
    def slow(*a, **k):
        time.sleep(3)
        return real(*a, **k)
    models.load_model = slow
viewer = napari.Viewer(show=False)
app = QApplication.instance()
image, _ = load_nuclei("3d" if phase == "volume" else "2d")
viewer.add_image(image[28:36] if phase == "volume" else image, name="nuclei")
_, w = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")

def spin(until, limit):
    t0 = time.time()
    while not until() and time.time() - t0 < limit:
        app.processEvents(); time.sleep(0.01)
    return time.time() - t0

if phase != "load":
    spin(lambda: w.is_ready and not w.is_busy(), 240)
    assert w.is_ready
if phase == "segment_all":
    w.modes.panel.points_spin.setValue(16)
    w.modes.panel.segment_all_button.click()
    assert w.modes.all_running
elif phase == "volume":
    w.prompts_layer.data = np.array([[4, 130, 60]], float)
    spin(lambda: not w.is_busy(), 120)
    w.volume_button.click()
    assert w.jobs.volume_running
else:
    spin(w.is_busy, 10)
    assert w.jobs.loading
viewer.close()
jobs, modes = w.jobs, w.modes
waited = spin(lambda: not (jobs.any_running() or modes.running()), 120)
assert jobs.closed and modes.closed, "the widget still believes it is open"
spin(lambda: False, 1.0)  # late signals of the cancelled jobs
print(f"stopped {waited:.1f} s after close", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["segment_all", "volume", "load"])
def test_closing_the_main_window_during_a_job_cancels_it_quietly(phase, vit_t_path, tmp_path):
    env = dict(os.environ, NAPARI_FOCSAM_EMBEDDING_CACHE=str(tmp_path), NAPARI_FOCSAM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", SCRIPT, phase], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "has been deleted" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "stopped" in run.stdout, run.stdout
