"""Is the window ever frozen? The worst event-loop gap of napari with the dock, and Segment volume
in the widget beside the engine's own propagation.

    python benchmarks/bench_widget_responsiveness.py [--objects 3] [--threads 1] [--repeats 2]

A 20 ms QTimer runs in the viewer's event loop; the longest interval between two of its ticks is
the longest time the window could not repaint or answer a key (the "worst gap"). Measured:

1. from docking the widget (the sample image open) to "ready" (model loaded, image embedded);
2. during a first click on a nucleus (the preview appearing), and from opening a stack with the
   dock there to "ready";
3. during a Segment volume of a nucleus on the cells3d stack (every slice's embedding cached)
   and a correction after it.

Then Segment volume, the same nuclei with the same cached embeddings, timed in the widget (from
the button press to the committed labels) and in the engine alone
(:meth:`~napari_focsam.core.session._objects.SegmentedObject.propagate` on a :class:`Session` with the
same cache folder), interleaved object by object; medians and the widget/engine ratio. Then one correction per
object (the 3D protocol's click on its worst slice) re-propagated in the widget and in the engine
(:func:`napari_focsam.core.propagation._profile.repropagate`).
The display comes from Xvfb when none is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_widget import ensure_display, interior, load_stack, wait  # noqa: E402


class GapMeter:
    """The longest interval between two ticks of a 20 ms timer in the Qt event loop."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.worst = 0.0
        self.t0 = 0.0
        self.long: list[tuple[float, float]] = []  # (seconds after start, gap ms) of gaps over 100 ms

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.worst = max(self.worst, now - self.last)
            if now - self.last > 0.1:
                self.long.append((self.last - self.t0, (now - self.last) * 1000))
        self.last = now

    def start(self) -> None:
        self.last, self.worst, self.long = time.perf_counter(), 0.0, []
        self.t0 = self.last
        self.timer.start()

    def timeline(self) -> str:
        """The gaps over 100 ms: ``ms@s`` (length at seconds after the start)."""
        return ", ".join(f"{ms:.0f}@{t:.1f}" for t, ms in self.long) or "none"

    def stop(self) -> float:
        self.timer.stop()
        return self.worst * 1000


def pause(app, seconds: float) -> None:
    """Let the event loop run for ``seconds``."""
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        app.processEvents()
        time.sleep(0.005)


def wait_in_loop(app, cond, timeout: float = 3600.0) -> float:
    """Wait for ``cond()`` inside a Qt event loop, as napari does (blocked until an event comes,
    the interpreter free for the workers), checking every 20 ms; returns the seconds waited."""
    from qtpy.QtCore import QEventLoop, QTimer

    t0 = time.perf_counter()
    loop, timer = QEventLoop(), QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: loop.quit() if cond() or time.perf_counter() - t0 > timeout else None)
    timer.start()
    if not cond():
        loop.exec()
    timer.stop()
    if not cond():
        raise TimeoutError("timed out")
    return time.perf_counter() - t0


FLOOR_CODE = """
import threading, time
def work():
    import torch  # noqa: F401
th = threading.Thread(target=work)
last = time.perf_counter(); worst = 0.0
th.start()
while th.is_alive():
    time.sleep(0.02)
    now = time.perf_counter(); worst = max(worst, now - last); last = now
print(worst * 1000)
"""


def torch_import_floor() -> float:
    """The worst gap (ms) of a 20 ms loop in a fresh interpreter while a thread imports torch: what
    any torch-based plugin costs the GUI thread once, whatever it does (measured in a subprocess)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FLOOR_CODE], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def dock_gaps(app, args) -> None:
    import napari

    from napari_focsam._sample_data import load_nuclei

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-focsam", "nuclei_2d")
    _, gt = load_nuclei("2d")
    pause(app, 1.0)  # napari settles
    meter = GapMeter()
    meter.start()
    t0 = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    widget.threads_spin.setValue(args.threads)
    wait_in_loop(app, lambda: widget.is_ready and widget.embedded_slices >= 1 and not widget.is_busy())
    ready = time.perf_counter() - t0
    worst = meter.stop()
    print(f"docking -> ready: {ready:.1f} s, worst event-loop gap {worst:.0f} ms "
          f"(gaps over 100 ms, length@seconds: {meter.timeline()})")
    floor = torch_import_floor()
    print(f"  floor: `import torch` alone in a worker thread holds the interpreter for {floor:.0f} ms "
          f"(its shared libraries load with the GIL held); widget/floor {worst / floor:.2f}")
    ids = [i for i in np.unique(gt) if i and (gt == i).sum() > 300][:3]
    gaps = []
    for i in ids:
        widget.clear()
        meter.start()
        widget.prompts_layer.data = np.array([interior(gt == i)], float)
        wait(app, lambda: not widget.is_busy())
        pause(app, 0.1)
        gaps.append(meter.stop())
    print(f"first click on a nucleus: worst gap {max(gaps):.0f} ms (per click {', '.join(f'{g:.0f}' for g in gaps)})")
    # an image opened after docking (the model is loaded: a new session, new layers)
    meter.start()
    t0 = time.perf_counter()
    viewer.open_sample("napari-focsam", "nuclei_3d")
    stack = viewer.layers[-1]
    widget.set_image_layer(stack)  # as the user chooses it under Image
    wait_in_loop(app, lambda: widget.sync.image is stack and widget.is_ready
                 and widget.embedded_slices >= 1 and not widget.is_busy())
    worst = meter.stop()
    print(f"a stack opened after docking -> ready: {time.perf_counter() - t0:.1f} s, worst event-loop gap "
          f"{worst:.0f} ms (gaps over 100 ms: {meter.timeline()})")
    widget.close_session()
    viewer.close()


def correction(mask: np.ndarray, truth: np.ndarray) -> tuple[int, float, float, bool] | None:
    """The 3D protocol's next click: on the slice with the most wrong voxels, at the interior point
    of its larger error region (positive where the object is missed, negative where it leaks)."""
    from scipy import ndimage as ndi

    wrong = (mask ^ truth).reshape(len(mask), -1).sum(1)
    z = int(wrong.argmax())
    if not wrong[z]:
        return None
    missed, leaked = truth[z] & ~mask[z], mask[z] & ~truth[z]
    positive = missed.sum() >= leaked.sum()
    region = missed if positive else leaked
    d = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(d.argmax()), d.shape)
    return z, float(y), float(x), bool(positive)


def volume_vs_engine(app, args) -> None:
    import napari
    import torch

    from napari_focsam.core.models import compute_thread
    from napari_focsam.core.propagation import repropagate
    from napari_focsam.core.session import Session

    image, gt, what = load_stack()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="focsam-bench-cache-"))
    os.environ["NAPARI_FOCSAM_EMBEDDING_CACHE"] = str(cache)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="stack")
    z = image.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    widget.threads_spin.setValue(args.threads)
    t0 = time.perf_counter()
    wait(app, lambda: widget.is_ready and widget.embedded_slices >= image.shape[0] and not widget.is_busy(),
         timeout=3600)
    print(f"{what}: every slice embedded (cached in {cache}) in {time.perf_counter() - t0:.0f} s")
    ids, counts = np.unique(gt[z][gt[z] > 0], return_counts=True)
    objs = [int(i) for i in ids[np.argsort(-counts)][: args.objects]]
    compute = compute_thread()
    compute.run(torch.set_num_threads, args.threads)
    engine = compute.run(Session, np.asarray(image), widget.setup.model_spec(), device="cpu", cache_dir=cache)
    # in memory, as the dock's background embedding leaves a stack that fits the memory store
    compute.run(engine.store.precompute, memorize=True)
    t_widget, t_engine, gaps, f_widget, f_engine = [], [], [], [], []
    for _ in range(args.repeats):
        for obj in objs:
            point = [z, *interior(gt[z] == obj)]
            # the widget: click, then Segment volume until its commit
            widget.clear()
            widget.prompts_layer.data = np.array([point], float)
            wait(app, lambda: not widget.is_busy())
            meter = GapMeter()
            meter.start()
            t0 = time.perf_counter()
            widget.segment_volume()
            wait_in_loop(app, lambda: not widget.is_busy())
            t_widget.append(time.perf_counter() - t0)
            # a correction on the worst slice: the widget propagates the object again by itself
            fix = correction(widget.current_mask, gt == obj)
            n = widget.volume.repropagations
            t0 = time.perf_counter()
            if fix is not None:
                widget.toggle_polarity(fix[3])  # as T does: the next click's polarity
                widget.prompts_layer.add([fix[0], fix[1], fix[2]])
                widget.toggle_polarity(True)
                wait_in_loop(app, lambda: widget.volume.repropagations > n and not widget.is_busy())
                f_widget.append(time.perf_counter() - t0)
            widget.commit()  # the object stays open for corrections until C
            gaps.append(meter.stop())
            # the engine, same object, same cache, same correction
            # (on the widget's compute thread: the process keeps one OpenMP pool, see core.models.compute_thread)
            stops = widget.actions.stops()  # the stop rules the widget propagated with

            def engine_object(point=point, fix=fix, stops=stops):
                o = engine.new_object()
                o.add_click(point[1], point[2], True, z)
                t0 = time.perf_counter()
                o.propagate(**stops)
                t_engine.append(time.perf_counter() - t0)
                if fix is not None:
                    t0 = time.perf_counter()  # the click's own decode, then the runs it touched
                    o.add_click(fix[1], fix[2], fix[3], fix[0])
                    repropagate(o, **stops)
                    f_engine.append(time.perf_counter() - t0)
                engine.remove_object(o)
            compute.run(engine_object)
    engine.close()
    w, e = np.median(t_widget), np.median(t_engine)
    print(f"Segment volume, {len(objs)} nuclei x {args.repeats} (interleaved, cached embeddings, "
          f"{args.threads} thread(s)): widget median {w:.2f} s, engine median {e:.2f} s, ratio {w / e:.2f}; "
          f"worst event-loop gap during it {max(gaps):.0f} ms")
    print("  pairs (widget s, engine s):", ", ".join(f"({a:.2f}, {b:.2f})" for a, b in zip(t_widget, t_engine)))
    if f_widget:
        fw, fe = np.median(f_widget), np.median(f_engine)
        print(f"A correction on the worst slice, propagated again ({len(f_widget)} objects): widget median "
              f"{fw:.2f} s (click to re-propagated preview), engine median {fe:.2f} s (add_click + core.profile.repropagate), "
              f"ratio {fw / fe:.2f}")
    widget.close_session()
    viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-volume", action="store_true")
    ap.add_argument("--skip-dock", action="store_true")
    ap.add_argument("--cache", default="", help="embedding cache folder to reuse between runs")
    args = ap.parse_args()
    xvfb = ensure_display()
    try:
        from napari.qt import get_qapp

        app = get_qapp()
        if not args.skip_dock:
            dock_gaps(app, args)
        if not args.skip_volume:
            volume_vs_engine(app, args)
    finally:
        if xvfb is not None:
            xvfb.terminate()


if __name__ == "__main__":
    main()
