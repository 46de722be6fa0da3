"""Names, colours and key bindings shared by the widget's parts (no Qt, no torch)."""

from __future__ import annotations

import os

__all__ = [
    "CUSTOM_FILE", "DEVICES", "THREADS_ENV", "default_threads", "EMBEDDING_BYTES", "EMBEDDING_CACHE_ENV", "KEYS", "NEGATIVE_COLOR",
    "NEW_LABELS", "OUTPUT_KEYS", "POSITIVE_COLOR", "PREVIEW_NAME", "PREVIEW_RGBA", "PROMPTS_NAME",
]

PROMPTS_NAME = "FocSAM prompts"
PREVIEW_NAME = "FocSAM preview"
NEW_LABELS = "New labels layer"
CUSTOM_FILE = "Custom file..."
DEVICES = ("auto", "cpu", "cuda", "mps")
POSITIVE_COLOR = "#22dd44"
NEGATIVE_COLOR = "#ff3333"
#: Colour of the current object (yellow: rare in napari's label colours, clear on grey data).
PREVIEW_RGBA = (1.0, 0.85, 0.0, 1.0)
#: Key bindings (action, napari key string), bound on the viewer and on the prompts layer.
KEYS = (("commit", "C"), ("commit", "Enter"), ("clear", "Shift-C"), ("clear", "Escape"),
        ("volume", "Shift-S"), ("toggle", "T"), ("undo", "Control-Z"), ("redo", "Control-Shift-Z"))
#: Keys also bound on the output labels layer (they undo/redo commits from there too).
OUTPUT_KEYS = (("undo", "Control-Z"), ("redo", "Control-Shift-Z"))
#: Environment variable that pre-fills the "Cache folder" field.
EMBEDDING_CACHE_ENV = "NAPARI_FOCSAM_EMBEDDING_CACHE"
#: Bytes of one slice embedding in the store (256 x 64 x 64 float16).
EMBEDDING_BYTES = 256 * 64 * 64 * 2
#: Environment variable that sets the default number of CPU threads of torch in the widget.
THREADS_ENV = "NAPARI_FOCSAM_THREADS"


def default_threads(cpu_count: int | None = None) -> int:
    """CPU threads for torch in the widget: ``$NAPARI_FOCSAM_THREADS``, else the cores, at most 4.

    Measured with benchmarks/bench_widget.py on a loaded 2-core machine: 2 threads answered clicks
    faster than 1 (median 304-363 ms vs 394-461 ms), so no core is held back on small machines;
    the cap of 4 keeps torch's default (every core) from spreading a ~10 ms decoder op over dozens
    of threads on large machines, where the GUI and the background embedding share the CPU.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(4, cores))
