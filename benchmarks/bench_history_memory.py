"""Memory of an object's click history and what a reset gives back.

Makes N clicks on one slice of a random image with the fast test model (the decoder and the
mask sizes are those of every model; the encoder does not matter here), then resets the
object. Prints the bytes the history holds (the distinct arrays reachable from the object)
and the process' resident set size (RSS, /proc/self/statm) before the clicks, after them,
after ``reset()`` and after an explicit ``malloc_trim(0)``. Linux only (RSS and malloc_trim).

    python benchmarks/bench_history_memory.py --size 4096 --clicks 30
    python benchmarks/bench_history_memory.py --size 1024 --clicks 500

Not a test: numbers depend on the machine and the C library.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from engine_helpers import make_fast_focsam  # noqa: E402

from napari_focsam.core.session import Session  # noqa: E402

MiB = 2**20


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


def held_bytes(obj) -> int:
    """Distinct tensor storages / numpy buffers reachable from the object's click state."""
    seen: dict = {}
    todo = [getattr(obj, "_slices", None), getattr(obj, "_steps", None)]
    visited = set()
    while todo:
        o = todo.pop()
        if o is None or id(o) in visited or isinstance(o, (str, int, float, bool)):
            continue
        visited.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            seen[("t", st.data_ptr())] = st.nbytes()
        elif isinstance(o, np.ndarray):
            seen[("a", o.__array_interface__["data"][0])] = o.nbytes
        elif isinstance(o, dict):
            todo.extend(o.values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
        elif hasattr(o, "__dict__") and type(o).__name__ not in ("FocSAMPredictor", "Session"):
            todo.extend(v for k, v in vars(o).items() if k not in ("predictor", "_source", "session"))
        elif hasattr(o, "__dataclass_fields__"):
            todo.extend(getattr(o, f) for f in o.__dataclass_fields__)
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--refiner", action="store_true", help="a model with a (1-block) focus refiner")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (args.size, args.size), dtype=np.uint8)
    s = Session(img, make_fast_focsam(refiner_depth=1 if args.refiner else 0))
    s.store.get(0)
    obj = s.new_object()
    r0 = rss()
    for i in range(args.clicks):
        y, x = rng.uniform(0, args.size - 1, 2)
        obj.add_click(y, x, i == 0 or bool(rng.integers(0, 2)), 0)
    held = held_bytes(obj)
    r1 = rss()
    obj.reset()
    r2 = rss()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    r3 = rss()
    print(json.dumps({
        "size": args.size, "clicks": args.clicks,
        "history_MiB": round(held / MiB, 2), "history_MiB_per_click": round(held / MiB / args.clicks, 3),
        "rss_before_clicks_MiB": round(r0 / MiB), "rss_after_clicks_MiB": round(r1 / MiB),
        "rss_after_reset_MiB": round(r2 / MiB), "rss_after_malloc_trim_MiB": round(r3 / MiB),
    }))


if __name__ == "__main__":
    main()
