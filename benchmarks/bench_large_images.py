"""Large images: one click per nucleus on mosaics of a real nuclei image, squeezed canvas vs tiles.

    python benchmarks/bench_large_images.py [--data-root ../shared/data] [--model vit_t]
                                            [--sizes 1 4 8] [--threads 1] [--lazy]

The image is ``coelho2009_gnf/images/dna-1.png`` (1030 x 1349, 8-bit nuclei) and its labels.
Twelve nuclei are chosen once, spread over the image (in each cell of a 3 x 4 grid, the labelled
nucleus whose interior point is nearest the cell's centre, nuclei touching the border left out).
The mosaics repeat the image k x k times (k = 1, 4, 8: up to 8240 x 10792 pixels); the clicks go
to the copies at the fixed inner position (k // 2, k // 2). Each nucleus gets a new object and one
positive click at its interior point (the pixel farthest from its boundary), in a fresh
:class:`Session` per image and mode:

- ``squeezed``: ``Session(..., tiles=False, zoom=False)``, the behaviour before tiling (the
  whole plane resized to the encoder's 1024 canvas, no zoom on small objects);
- ``tiles``: ``Session(...)`` as is (tiled automatically above 1536 pixels; the 1x image is not
  tiled, so both rows are the same code path there).

Printed per image and mode: mean one-click IoU against the labels, time to the first mask
(embedding included), peak memory (RSS above the level before the run, sampled every 5 ms),
tiles (or slices) embedded, and where the objects were decoded (levels used).

``--zoom 4 8``: also the image enlarged 4x / 8x (bilinear; labels nearest): nuclei of 150 to
400 pixels, larger than the halo, so objects move to coarser levels (the squeezed canvas is at
its best there: it undoes the enlargement).

``--lazy``: also a (20, 8192, 8192) uint16 zarr volume (``tests/lazy_helpers.make_large_zarr``
in a temporary folder: background 100, a disc of 4000 through slices 6..13) opened lazily, with
automatic contrast limits: one click on slice 10 and a propagation, with the process' peak RSS
(target < 3 GiB), the tiles embedded and the reads (none may cover a whole slice).
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        gc.collect()
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def load(root: Path):
    from PIL import Image

    d = root / "micro" / "coelho2009_gnf"
    return (np.array(Image.open(d / "images" / "dna-1.png")), np.array(Image.open(d / "labels" / "dna-1.png")))


def pick_nuclei(labels: np.ndarray, rows: int = 3, cols: int = 4) -> list[tuple[int, int, int]]:
    """(label, y, x) of 12 nuclei spread over the image; (y, x) is the nucleus' interior point."""
    from scipy import ndimage as ndi

    H, W = labels.shape
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    cands = []
    for lab in np.unique(labels):
        if lab == 0 or lab in border:
            continue
        m = labels == lab
        dist = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        cands.append((int(lab), int(y), int(x)))
    chosen: list[tuple[int, int, int]] = []
    for r in range(rows):
        for c in range(cols):
            cy, cx = (r + 0.5) * H / rows, (c + 0.5) * W / cols
            left = [n for n in cands if n not in chosen]
            chosen.append(min(left, key=lambda n: (n[1] - cy) ** 2 + (n[2] - cx) ** 2))
    return chosen


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / u) if u else 1.0


def truth_regions(labels: np.ndarray, nuclei, offset=(0, 0), zoom: int = 1):
    """Each nucleus' label as a full-resolution region (y0, x0, crop) in the big image."""
    out = []
    for lab, _, _ in nuclei:
        m = labels == lab
        ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        crop = m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
        if zoom > 1:
            crop = np.repeat(np.repeat(crop, zoom, 0), zoom, 1)
        out.append((offset[0] + ys[0] * zoom, offset[1] + xs[0] * zoom, crop))
    return out


def run_mode(big, clicks, truths, predictor, tiles: bool | None):
    """One click per nucleus on ``big`` in a fresh session: mIoU, times, memory, tiles, levels."""
    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.prompting import region_iou
    from napari_focsam.core.session import Session

    ious, levels = [], []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        # "squeezed" is the behaviour before tiling: without the zoom on small objects either
        session = Session(ImageVolume(big), predictor=predictor, tiles=tiles, zoom=tiles is not False)
        first = None
        for (y, x), truth in zip(clicks, truths):
            obj = session.new_object()
            region = obj.add_click(y, x, z=0, region=True)
            if first is None:
                first = time.perf_counter() - t0
            ious.append(region_iou(region, truth))
            tile = obj.tile(0)
            levels.append(tile.level if tile is not None else -1)
        total = time.perf_counter() - t0
    computed = session.store.stats["computed"]
    session.close()
    del session
    gc.collect()
    return {"miou": float(np.mean(ious)), "first_s": first, "total_s": total, "peak_mib": mem.delta_mib,
            "embedded": computed, "levels": levels, "ious": ious}


def report(name: str, mode: str, r: dict) -> None:
    print(f"{name:>22} {mode:>9} {r['miou']:6.3f} {r['first_s']:12.2f} {r['total_s']:8.2f} "
          f"{r['peak_mib']:8.0f} {r['embedded']:8d}  {sorted(set(r['levels']))}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model", default="vit_t")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--zoom", type=int, nargs="*", default=[],
                    help="also the image enlarged k times (bilinear): nuclei larger than a tile's halo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lazy", action="store_true", help="also the (20, 8192, 8192) lazy zarr volume")
    args = ap.parse_args(argv)

    import torch

    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor

    torch.set_num_threads(args.threads)
    image, labels = load(args.data_root)
    nuclei = pick_nuclei(labels)
    predictor = FocSAMPredictor(load_model(args.model, "cpu"))
    print(f"model {args.model}, {args.threads} torch thread(s); image dna-1.png {image.shape}; nuclei "
          f"{[lab for lab, _, _ in nuclei]}")
    print(f"{'image':>22} {'mode':>9} {'mIoU':>6} {'first mask s':>12} {'all 12 s':>8} {'peak MiB':>8} "
          f"{'embedded':>8}  levels")
    H, W = labels.shape
    rows = {}
    for k in args.sizes:
        offset = ((k // 2) * H, (k // 2) * W)
        big = np.tile(image, (k, k)) if k > 1 else image
        clicks = [(offset[0] + y, offset[1] + x) for _, y, x in nuclei]
        truths = truth_regions(labels, nuclei, offset)
        for mode, tiles in (("squeezed", False), ("tiles", None)):
            rows[(k, mode)] = r = run_mode(big, clicks, truths, predictor, tiles)
            report(f"mosaic {k}x{k} {H * k}x{W * k}", mode, r)
        del big
    if (1, "tiles") in rows:
        base = rows[(1, "tiles")]
        for k in args.sizes:
            if k > 1 and (k, "tiles") in rows:
                r = rows[(k, "tiles")]
                print(f"mosaic {k}x{k} tiles vs 1x: mIoU {r['miou'] - base['miou']:+.3f}, time to first mask "
                      f"{r['first_s'] / base['first_s']:.2f}x")
    for k in args.zoom:
        from PIL import Image

        big = np.array(Image.fromarray(image).resize((W * k, H * k), Image.BILINEAR))
        clicks = [(y * k + k // 2, x * k + k // 2) for _, y, x in nuclei]
        truths = truth_regions(labels, nuclei, zoom=k)
        for mode, tiles in (("squeezed", False), ("tiles", None)):
            report(f"zoom {k}x {H * k}x{W * k}", mode, run_mode(big, clicks, truths, predictor, tiles))
        del big
    if args.lazy:
        run_lazy(predictor)
    return 0


def run_lazy(predictor, limits: tuple[float, float] | None = None) -> None:
    """One click and a propagation on a lazily opened (20, 8192, 8192) uint16 zarr volume."""
    import tempfile

    import zarr

    sys.path.insert(0, str(REPO / "tests"))
    from lazy_helpers import SpyArray, make_large_zarr

    from napari_focsam.core.images import ImageVolume
    from napari_focsam.core.session import Session

    discs = tuple((z, 4096, 4100, 90) for z in range(6, 14))  # a nucleus through slices 6..13
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem:
        make_large_zarr(Path(tmp) / "big.zarr", discs=discs)
        spy = SpyArray(zarr.open_array(str(Path(tmp) / "big.zarr"), mode="r"))
        t0 = time.perf_counter()
        vol = ImageVolume(spy, contrast_limits=limits)
        session = Session(vol, predictor=predictor)
        obj = session.new_object()
        obj.add_click(4096, 4100, z=10, region=True)
        t_click = time.perf_counter() - t0
        result = obj.propagate()
        regions = obj.volume_regions()
        seconds = time.perf_counter() - t0
    print(f"lazy (20, 8192, 8192) uint16 zarr, contrast limits {vol.contrast_limits}: first mask {t_click:.1f} s, "
          f"propagated to slices {sorted(regions)} ({result.stopped_reason}) in {seconds:.1f} s; "
          f"peak RSS {mem.peak / 2**30:.2f} GiB (+{mem.delta_mib:.0f} MiB in the run; target < 3 GiB); "
          f"tiles embedded {session.store.stats['computed']}; reads {len(spy.requests)}, whole-slice reads "
          f"{len(spy.whole_slice_requests())}, largest read {spy.largest_request() / 2**20:.2f} Mpx")


if __name__ == "__main__":
    raise SystemExit(main())
