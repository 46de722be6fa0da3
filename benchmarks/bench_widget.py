"""The dock widget as a user meets it: time to "ready", click-to-preview latency, Segment volume wait.

    python benchmarks/bench_widget.py [--clicks 40] [--threads N[,N...]] [--volume] [--think 30]
                                      [--sizes 1024,2048,8192 [--skip-2d]] [--no-compare] [--decoder-floor]

Drives the real widget in a real napari viewer (an Xvfb display is started when none is set):

1. docking: the time ``add_plugin_dock_widget`` takes (the dock is on screen when it returns), and
   from docking to "ready" (model loaded and the image embedded: clicks are answered at once);
2. click-to-preview latency inside the widget (``widget.last_latency_ms``: from the change of the
   prompts layer to the preview showing the new mask) over ``--clicks`` clicks on the nuclei of the
   2D sample, ``--per-object`` clicks per object (default 2: a first, refining click and a
   second); median and 95th percentile, and the median and p95 per kind of click (1st, 2nd,
   later, after the 1st). The objects alternate between the default predictor (the refine at the
   1st click) and the published schedule (``refine_click=2``), and (``--compare``, the default)
   between this build and today's later clicks (the ``steady`` rule's two decoder passes one after
   the other instead of one batched call), so all are timed side by side, interleaved object by
   object; ``--threads 1,2`` runs the clicks with each thread count in turn. Beside them: first
   and later clicks answered by the engine alone on the widget's compute thread with
   the GUI idle (what the "model part" costs when nothing else runs), and the CPU each thread
   used per click (the GUI thread's painting and software OpenGL's rasteriser threads compete
   with the decoder for the cores: on a 2-core VM under Xvfb with 2 torch threads, the engine
   alone took 40 ms, the model part in the widget 87 ms, while the GUI used 51 ms and llvmpipe
   29 ms of CPU per click);
3. with ``--sizes 1024,2048,8192``: click-to-preview on synthetic images of those sizes (discs of
   radius 30 on a textured background; background tile embedding off): the first click on each
   disc (on a large, tiled image this includes embedding the disc's tile) and the median of the
   later clicks (tile embedded: the decoder, the mask region and the preview write);
4. with ``--zarr``: a lazily opened (20, 8192, 8192) uint16 zarr (written to a temporary folder; a
   disc through slices 8-12): one click on slice 10, Segment volume (commit), the tiles embedded
   and the process's peak memory (ru_maxrss) before and after;
5. with ``--volume``: the 60-slice cells3d stack (the 36-slice sample if the shared data is
   absent), no disk cache; one click on the middle slice, ``--think`` seconds of "user time", then
   Segment volume: the time it waits, with the background embedding of the stack and without it
   (only the slice in view embedded).

Measured (2-core machine shared with other jobs, vit_t, 2 torch threads, no disk cache):

===========  ===========  =========================  =====================  ===============
image        embedding    first click on a disc      later clicks (median)  preview write
===========  ===========  =========================  =====================  ===============
1024x1024    one canvas   201 ms (image embedded)    206 ms                 4.4 ms
2048x2048    4 tiles      2415 ms (its tile)         225 ms                 8.3 ms
8192x8192    5 tiles      2526 ms (its tile)         252 ms                 8.8 ms
===========  ===========  =========================  =====================  ===============

``--zarr``: a lazy (20, 8192, 8192) uint16 zarr in napari: first click 2.7 s, Segment volume +
commit 33 s (slices 8-12, 7 tiles embedded), peak memory 2.1 GB for the whole process (napari
with the image alone: 0.7 GB; with a uint32 output layer instead of uint16: 3.1 GB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def ensure_display() -> subprocess.Popen | None:
    if os.environ.get("DISPLAY"):
        return None
    if shutil.which("Xvfb") is None:
        sys.exit("no DISPLAY and no Xvfb: run under a display or install xvfb")
    display = ":97"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["DISPLAY"] = display
    time.sleep(1.0)
    return proc


def wait(app, cond, timeout=600.0):
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out")
    return time.perf_counter() - t0


def cpu_by_thread() -> dict[tuple[str, str], float]:
    """CPU seconds used so far by each thread of this process, keyed by (thread id, name).

    Linux names a thread after the one that started it: the widget's compute thread and its
    OpenMP workers are "Thread (pooled)" when a Qt worker started them, the GUI thread is
    "python", and software OpenGL's rasteriser threads are "llvmpipe-N". {} elsewhere."""
    out = {}
    task = Path(f"/proc/{os.getpid()}/task")
    if not task.is_dir():
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for t in task.iterdir():
        try:
            name = (t / "comm").read_text().strip()
            fields = (t / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[(t.name, name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_per_name(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds by thread name between two :func:`cpu_by_thread` readings."""
    out: dict[str, float] = {}
    for key, v in after.items():
        out[key[1]] = out.get(key[1], 0.0) + v - before.get(key, 0.0)
    return out


def engine_clicks(widget, gt, ids, n: int = 12) -> tuple[list[float], list[float]]:
    """First and later clicks answered by the engine alone, on the widget's compute thread and
    session with the GUI idle (no event processing meanwhile): what the widget's "model part"
    costs when nothing else runs. Seconds per click: (first clicks, later clicks), a new
    object (removed after) for every 3 later clicks."""
    from napari_focsam.core.editing import set_prompts
    from napari_focsam.core.models import compute_thread
    from napari_focsam.core.prompting import Prompts

    session, rng, first, later = widget.session, np.random.default_rng(1), [], []

    def timed(obj, clicks):
        t0 = time.perf_counter()
        set_prompts(obj, Prompts.of(clicks), region=True)
        obj.mask_region(0)
        return time.perf_counter() - t0

    def run():
        for i in range(n // 3):
            mask = gt == ids[i % len(ids)]
            obj = session.new_object()
            clicks = [(0, *map(float, interior(mask)), True)]
            first.append(timed(obj, clicks))
            ys, xs = np.nonzero(mask)
            for _ in range(3):
                j = rng.integers(len(ys))
                clicks = clicks + [(0, float(ys[j]), float(xs[j]), True)]
                later.append(timed(obj, clicks))
            session.remove_object(obj)

    compute_thread().run(run)
    return first, later


def interior(mask):
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.unravel_index(int(d.argmax()), d.shape)


def load_stack():
    root = Path(os.environ.get("FOCSAM_DATA", REPO.parent / "shared" / "data")) / "micro" / "cells3d"
    img = root / "cells3d_nuclei.tif"
    if img.is_file():
        import tifffile

        return tifffile.imread(img), tifffile.imread(root / "cells3d_nuclei_label.tif"), "cells3d (60 slices)"
    from napari_focsam._sample_data import load_nuclei

    image, gt = load_nuclei("3d")
    return image, gt, f"3D sample ({image.shape[0]} slices)"


def sequential_pairs(model) -> None:
    """Today's later click: the two decoder passes of the ``steady`` rule one after the other
    (prompt encoded twice), instead of :meth:`FocSAM.decode_pair`'s one batched call."""
    def decode_pair(first, second, points, labels, mask_input=None):
        return model.decode(first, points, labels, mask_input), model.decode(second, points, labels, mask_input)

    model.decode_pair = decode_pair


def instant_decoder(model) -> None:
    """The model's decoder steps answer at once with their first answer (wrong masks, no model
    time): what is left of a click's latency is the widget's and napari's own work, and how
    they share the machine with the decoder (``--decoder-floor``)."""
    for name in ("decode", "decode_pair", "refine"):
        real, first = getattr(model, name), {}

        def instant(*args, _real=real, _first=first, **kwargs):
            if "out" not in _first:
                _first["out"] = _real(*args, **kwargs)
            return _first["out"]
        setattr(model, name, instant)


def bench_2d(app, args):
    import napari
    import torch

    from napari_focsam._sample_data import load_nuclei

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-focsam", "nuclei_2d")
    _, gt = load_nuclei("2d")
    t0 = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    t_dock = time.perf_counter() - t0
    threads = args.threads_list
    if threads[0]:
        widget.threads_spin.setValue(threads[0])
    wait(app, lambda: widget.is_ready and widget.embedded_slices >= 1 and not widget.is_busy())
    t_ready = time.perf_counter() - t0
    print(f"dock on screen after {t_dock * 1000:.0f} ms; ready to click after {t_ready:.1f} s "
          f"(model + image embedding; status: {widget.status_label.text()!r})")

    ids = [i for i in np.unique(gt) if i and (gt == i).sum() > 150]
    model = widget.session.predictor.model
    batched = model.decode_pair
    # objects cycle through (refine click, build): both schedules, this build and today's
    # sequential later clicks (--compare), interleaved object by object
    build_names = ("new", "today") if args.compare else ("new",)
    if args.decoder_floor:  # after the first clicks, every decoder step answers at once
        build_names = ("floor",)
    combos = [(rc, b) for b in build_names for rc in (1, 2)]
    for n_threads in threads:
        if n_threads:
            widget.jobs.set_threads(n_threads)  # on the widget's compute thread, before the next job
        rng = np.random.default_rng(0)
        rows = []  # (latency, model part, nth click, refine click, build)
        pts = widget.prompts_layer
        cpu0 = cpu_by_thread()
        first = ids[0]
        for k in range(args.clicks):
            if k % args.per_object == 0:
                first = rng.choice(ids)
                widget.clear()
                rc, build = combos[(k // args.per_object) % len(combos)]
                widget.session.predictor.refine_click = rc
                if build == "floor":
                    if "decode" not in model.__dict__:
                        instant_decoder(model)
                elif build == "today":
                    sequential_pairs(model)
                else:
                    model.decode_pair = batched
                pts.data = np.array([interior(gt == first)], float)
            else:  # a further click on the same object, off its centre
                ys, xs = np.nonzero(gt == first)
                j = rng.integers(len(ys))
                pts.add(np.array([ys[j], xs[j]], float))
            wait(app, lambda: not widget.is_busy())
            app.processEvents()
            rows.append((widget.last_latency_ms, widget.last_model_ms, k % args.per_object + 1, rc, build))
        cpu = cpu_per_name(cpu0, cpu_by_thread())
        model.decode_pair = batched
        widget.session.predictor.refine_click = 1
        engine_first, engine = engine_clicks(widget, gt, ids)
        rows = rows[2:]  # warm-up clicks out
        lat = np.array([r[0] for r in rows])
        mod = np.array([r[1] for r in rows])
        nth = np.array([r[2] for r in rows])
        sched = np.array([r[3] for r in rows])
        builds = np.array([r[4] for r in rows])
        print(f"\nclick-to-preview latency ({len(lat)} clicks, torch threads {n_threads or torch.get_num_threads()}, load "
              f"{os.getloadavg()[0]:.1f}): median {np.median(lat):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms "
              f"(model part: median {np.median(mod):.0f} ms, p95 {np.percentile(mod, 95):.0f} ms)")
        print(f" the engine alone on the widget's compute thread, GUI idle: first (refine) clicks median "
              f"{1000 * np.median(engine_first):.0f} ms ({len(engine_first)} clicks), later clicks median "
              f"{1000 * np.median(engine):.0f} ms, p95 {1000 * np.percentile(engine, 95):.0f} ms ({len(engine)} clicks)")
        if cpu:
            top = sorted(cpu.items(), key=lambda kv: -kv[1])[:4]
            print(" CPU per click by thread (compute thread and its OpenMP workers: 'Thread (pooled)'; GUI: 'python'): "
                  + ", ".join(f"{name} {1000 * v / args.clicks:.0f} ms" for name, v in top))
        for rc in (1, 2):
            print(f" objects refined at click {rc}{' (default)' if rc == 1 else ' (published schedule)'}:")
            for build in build_names:
                for name, sel in (("1st click", nth == 1), ("2nd click", nth == 2), ("later clicks", nth > 2),
                                  ("after the 1st", nth > 1)):
                    sel = sel & (sched == rc) & (builds == build)
                    if sel.any():
                        print(f"  {build:5s} {name:14s}: median {np.median(lat[sel]):4.0f} ms, p95 "
                              f"{np.percentile(lat[sel], 95):4.0f} ms (model part median "
                              f"{np.median(mod[sel]):3.0f} ms, p95 {np.percentile(mod[sel], 95):3.0f} ms), "
                              f"{int(sel.sum())} clicks")
    widget.close_session()
    viewer.close()


def disc_image(n, radius=30, n_discs=5):
    """(n, n) uint16: a textured background and ``n_discs`` discs of ``radius`` spread over the image."""
    yy, xx = np.ogrid[:n, :n]
    img = (800 + 60 * np.sin(yy / 37.0) * np.cos(xx / 53.0)).astype(np.uint16)
    rng = np.random.default_rng(1)
    centres = [(int(rng.uniform(0.1, 0.9) * n), int(rng.uniform(0.1, 0.9) * n)) for _ in range(n_discs)]
    for cy, cx in centres:
        y0, y1, x0, x1 = cy - radius, cy + radius + 1, cx - radius, cx + radius + 1
        sub = img[y0:y1, x0:x1]
        sub[(yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 <= radius**2] = 9000
    return img, centres


def bench_sizes(app, args):
    import napari

    for n in (int(v) for v in args.sizes.split(",")):
        img, centres = disc_image(n)
        viewer = napari.Viewer(show=True)
        viewer.add_image(img, name=f"discs {n}")
        _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
        widget.jobs.background_embedding = False  # only the clicks' tiles (or the slice) are embedded
        if args.threads:
            widget.threads_spin.setValue(args.threads)
        t_ready = wait(app, lambda: widget.is_ready and not widget.is_busy())
        pts = widget.prompts_layer
        first, later, model, shown = [], [], [], []
        show = widget.managed.show_masks

        def timed_show(*a, **k):  # the preview's part: write the boxes, refresh the layer
            t0 = time.perf_counter()
            show(*a, **k)
            shown.append((time.perf_counter() - t0) * 1000)
        widget.managed.show_masks = timed_show
        for rep in range(args.repeats + 1):
            for cy, cx in centres:
                widget.clear()
                pts.data = np.array([[cy, cx]], float)
                wait(app, lambda: not widget.is_busy())
                app.processEvents()
                (first if rep == 0 else later).append(widget.last_latency_ms)
                if rep:
                    model.append(widget.last_model_ms)
        tiled = widget.session.tiled
        tiles = len(widget.session.tiles_in_memory()) if tiled else 0
        print(f"{n}x{n}: ready after {t_ready:.1f} s, {'tiled' if tiled else 'one canvas'}"
              f"{f' ({tiles} tiles embedded)' if tiled else ''}; click-to-preview: first click on a disc "
              f"median {np.median(first):.0f} ms (max {np.max(first):.0f}), later clicks median "
              f"{np.median(later):.0f} ms (p95 {np.percentile(later, 95):.0f}, {len(later)} clicks; model part "
              f"{np.median(model):.0f} ms, preview write + refresh {np.median(shown):.1f} ms)", flush=True)
        widget.close_session()
        wait(app, lambda: not widget.has_running_workers())
        viewer.close()


def bench_zarr(app, args):
    import resource
    import tempfile

    import napari
    import zarr

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(f"{tmp}/big.zarr", shape=(20, 8192, 8192), chunks=(1, 1024, 1024), dtype="uint16",
                                fill_value=100)
        cy, cx, r = 4096, 4096, 90
        yy, xx = np.mgrid[cy - r: cy + r + 1, cx - r: cx + r + 1]
        for z in range(8, 13):
            block = np.full(yy.shape, 100, np.uint16)
            block[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 4000
            arr[z, cy - r: cy + r + 1, cx - r: cx + r + 1] = block
        data = zarr.open_array(f"{tmp}/big.zarr", mode="r")
        viewer = napari.Viewer(show=True)
        viewer.add_image(data, name="big zarr", contrast_limits=(0, 4000))
        viewer.dims.set_current_step(0, 10)
        print(f"zarr (20, 8192, 8192) uint16 lazily in napari: peak memory {peak_mb():.0f} MB before the dock")
        _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
        widget.jobs.background_embedding = False
        if args.threads:
            widget.threads_spin.setValue(args.threads)
        wait(app, lambda: widget.is_ready and not widget.is_busy())
        t0 = time.perf_counter()
        widget.prompts_layer.data = np.array([[10, cy, cx]], float)
        wait(app, lambda: not widget.is_busy())
        t_click = time.perf_counter() - t0
        t0 = time.perf_counter()
        widget.segment_volume()
        wait(app, lambda: not widget.is_busy() and "volume segmented" in widget.last_message, timeout=1800)
        widget.commit()
        wait(app, lambda: not widget.is_busy() and widget.last_committed_id == 1, timeout=1800)
        t_vol = time.perf_counter() - t0
        out = widget.output_layer
        zs = [z for z in range(20) if np.asarray(out.data[z, cy, cx]) == 1]
        print(f"first click (its tile embedded): {t_click:.1f} s; Segment volume + commit: {t_vol:.1f} s, label 1 on "
              f"slices {zs}; {len(widget.tiles.outlines_shown)} tiles embedded; output layer "
              f"{type(out.data).__module__}.{type(out.data).__name__} ({out.data.nchunks_initialized} chunks stored); "
              f"peak memory {peak_mb():.0f} MB", flush=True)
        widget.close_session()
        wait(app, lambda: not widget.has_running_workers())
        viewer.close()


def bench_volume(app, args, background: bool):
    import napari

    image, gt, what = load_stack()
    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(image, name="stack")
    z = image.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    os.environ.pop("NAPARI_FOCSAM_EMBEDDING_CACHE", None)
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    widget.jobs.background_embedding = background
    if args.threads:
        widget.threads_spin.setValue(args.threads)
    wait(app, lambda: widget.is_ready and widget.embedded_slices >= 1 and not widget.is_busy())
    ids, counts = np.unique(gt[z][gt[z] > 0], return_counts=True)
    obj = ids[np.argsort(counts)[len(counts) // 2]]
    widget.prompts_layer.data = np.array([[z, *interior(gt[z] == obj)]], float)
    wait(app, lambda: not widget.is_busy())
    t_end = time.perf_counter() + args.think
    wait(app, lambda: time.perf_counter() >= t_end, timeout=args.think + 60)
    done_before = widget.embedded_slices
    t0 = time.perf_counter()
    widget.segment_volume()
    wait(app, lambda: not widget.is_busy(), timeout=3600)
    waited = time.perf_counter() - t0
    print(f"Segment volume on {what}, {'with' if background else 'without'} background embedding: "
          f"waited {waited:.1f} s after {args.think:.0f} s of user time ({done_before}/{image.shape[0]} "
          f"slices embedded when pressed; {widget.last_message!r})")
    del layer
    widget.close_session()
    wait(app, lambda: not widget.has_running_workers())
    viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=40)
    ap.add_argument("--threads", default="0",
                    help="CPU threads (0: the widget's default); for the 2D clicks a list runs each, e.g. 1,2")
    ap.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                    help="2D clicks: alternate objects with today's sequential later clicks (the baseline)")
    ap.add_argument("--decoder-floor", action="store_true",
                    help="2D clicks with a decoder that answers at once: the widget's and napari's own part")
    ap.add_argument("--volume", action="store_true", help="also time Segment volume on the stack")
    ap.add_argument("--per-object", type=int, default=2,
                    help="clicks per object in the 2D latency run (1st, 2nd = refine, later)")
    ap.add_argument("--think", type=float, default=30.0, help="seconds between the click and Segment volume")
    ap.add_argument("--skip-2d", action="store_true")
    ap.add_argument("--sizes", default="", help="comma-separated image sizes for the large-image clicks")
    ap.add_argument("--repeats", type=int, default=3, help="later clicks per disc (--sizes)")
    ap.add_argument("--zarr", action="store_true", help="click and Segment volume on a lazy (20, 8192, 8192) zarr")
    ap.add_argument("--responsiveness", action="store_true",
                    help="the worst event-loop gaps and Segment volume widget vs engine "
                         "(bench_widget_responsiveness.py, with its defaults)")
    args = ap.parse_args()
    args.threads_list = [int(v) for v in args.threads.split(",")]
    args.threads = args.threads_list[0]
    xvfb = ensure_display()
    try:
        from napari.qt import get_qapp

        app = get_qapp()  # the Qt application with napari's settings
        if not args.skip_2d:
            bench_2d(app, args)
        if args.sizes:
            bench_sizes(app, args)
        if args.zarr:
            bench_zarr(app, args)
        if args.volume:
            bench_volume(app, args, background=True)
            bench_volume(app, args, background=False)
        if args.responsiveness:
            import bench_widget_responsiveness as responsiveness

            gap_args = argparse.Namespace(threads=args.threads or 1, objects=3, repeats=2, cache="")
            responsiveness.dock_gaps(app, gap_args)
            responsiveness.volume_vs_engine(app, gap_args)
    finally:
        if xvfb is not None:
            xvfb.terminate()


if __name__ == "__main__":
    main()
