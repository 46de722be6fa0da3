"""Helpers shared by the sub-commands: input, output, layout notes, progress bars, options."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError

__all__ = [
    "COMMA_VALUE_OPTIONS",
    "add_cluster_options",
    "add_image_model_options",
    "add_large_image_options",
    "check_output",
    "check_size",
    "join_negative_values",
    "layout_of",
    "load_volume",
    "note",
    "note_tiling",
    "open_input",
    "local_workers",
    "parse_limits",
    "positive_int",
    "progress_bar",
    "read_input",
    "tile_options",
    "write_regions",
]

#: Options whose value is a comma-separated list of numbers that may start with "-".
COMMA_VALUE_OPTIONS = ("--click", "--contrast-limits", "--box")
_NEGATIVE_LIST = re.compile(r"^-(\d|\.\d)[^,]*,")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--click -1,39`` -> ``--click=-1,39``.

    argparse takes a value that starts with "-" and is not a plain number for an option and
    fails with "expected one argument"; joined to its option, the value reaches our own check
    (which then says, for example, that the click is outside the image).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        if tok in COMMA_VALUE_OPTIONS and i + 1 < len(argv) and _NEGATIVE_LIST.match(argv[i + 1]):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def note(message: str) -> None:
    """One informational line on stderr (stdout stays machine-readable)."""
    print(f"napari-focsam: {message}", file=sys.stderr, flush=True)


def read_input(path: str | Path):
    """The image at ``path`` as an array; :class:`UserError` (one line) if it cannot be read."""
    from ..core.images import read_image

    try:
        return read_image(path)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None


def open_input(path: str | Path, level: int | None = None):
    """The image at ``path``: a zarr array or OME-Zarr pyramid (a folder), or a TIFF file whose
    planes are large (long side above 1536), opened lazily; else read as :func:`read_input`
    does. :class:`UserError` (one line) if it cannot be opened."""
    p = Path(path)
    if not p.is_dir() and level is None:
        if _large_tiff(p):
            from ..core.images import open_tiff_lazily

            try:
                return open_tiff_lazily(p)
            except (ValueError, FileNotFoundError) as exc:
                raise UserError(str(exc)) from None
        return read_input(p)
    from ..core.cluster import open_image

    try:
        return open_image(p, level)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None


def _large_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF file whose planes are tiled by the engine (read lazily then)."""
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return False
    import logging

    quiet = logging.NullHandler()  # a damaged file's messages come once, from read_image
    logger = logging.getLogger("tifffile")
    logger.addHandler(quiet)
    try:
        import tifffile

        from ..core.images import TILING_MIN_SIDE, has_channel_axis

        with tifffile.TiffFile(path) as tif:
            shape = tuple(int(n) for n in tif.series[0].shape)
        plane = shape[-3:-1] if has_channel_axis(shape) else shape[-2:]
        return max(plane) > TILING_MIN_SIDE
    except Exception:  # anything odd: read_image gives the one-line reason
        return False
    finally:
        logger.removeHandler(quiet)


def load_volume(image: Any, contrast_limits: tuple[float, float] | None = None):
    """The :class:`ImageVolume` of an array: the package's one layout decision (no other here)."""
    from ..core.images import ImageVolume

    try:
        return ImageVolume(image, contrast_limits=contrast_limits)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def layout_of(vol) -> str:
    """What :class:`ImageVolume` assumed about the axes of ``vol``, in words, with the shape."""
    return f"{vol.layout} (shape {tuple(vol.shape)})"


def check_output(path: str | Path, ndim: int, image_path: str | Path | None = None) -> Path:
    """Check the output mask path before any work: format and folder, not the input nor anything
    inside it, not an existing zarr store unless it is a mask this tool wrote (an image, an
    embedding cache), nothing inside a zarr store (see
    :func:`~napari_focsam.core.outputs._mask_files.check_mask_path`)."""
    from ..core.outputs import check_mask_path

    out = Path(path)
    try:
        target = out.absolute().parent.resolve() / out.name
    except OSError:
        target = out.absolute()
    try:
        source = None if image_path is None else Path(image_path).resolve()
    except OSError:
        source = None
    if source is not None and target == source:
        raise UserError(f"--out {out} is the input image: choose another file for the mask")
    zarr_input = source is not None and any((source / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup"))
    if zarr_input and target.is_relative_to(source):
        raise UserError(f"--out {out} is part of the input {image_path}: choose a new name for the mask")
    try:
        return check_mask_path(out, ndim)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_size(path: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse, before any work, an output format that cannot hold a mask of ``shape`` in
    reasonable time or memory (a TIFF of too many tiles, a huge PNG): name ``.zarr`` instead."""
    from ..core.outputs import check_labels_output

    try:
        check_labels_output(path, shape)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def parse_limits(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` -> (low, high), for ``--contrast-limits``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"contrast limits {text!r} must be LOW,HIGH") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise argparse.ArgumentTypeError(f"contrast limits {text!r} make no sense: LOW must be below HIGH "
                                         "(both finite), or every pixel would map to one value")
    return lo, hi


def progress_bar(total: int, desc: str, enabled: bool = True) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing on stderr (tqdm if installed) and a closer."""
    if not enabled:
        return (lambda done, tot: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        state = {"last": -1}

        def update(done: int, tot: int) -> None:
            if done != state["last"]:
                state["last"] = done
                print(f"\r{desc}: {done}/{tot} slices", end="", file=sys.stderr, flush=True)

        return update, (lambda: print(file=sys.stderr) if state["last"] >= 0 else None)
    bar = tqdm(total=total, desc=desc, unit="slice", file=sys.stderr, leave=False)

    def update(done: int, tot: int) -> None:
        if bar.total != tot:
            bar.total = tot
        bar.update(done - bar.n)

    return update, bar.close


def positive_int(text: str) -> int:
    """An integer >= 1, for counts given on the command line."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} makes no sense: give 1 or more")
    return n


def local_workers(text: str) -> int:
    """``--workers N``: 1 to the machine's cores (each worker runs the model on its own core)."""
    import os

    n, cores = positive_int(text), os.cpu_count() or 1
    if n > cores:
        raise argparse.ArgumentTypeError(f"{n} local workers on a machine with {cores} cores would only compete "
                                         f"for them: give at most {cores}, or run a cluster and pass --scheduler")
    return n


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` / ``--scheduler ADDRESS`` (mutually exclusive) and ``--units-per-task``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=local_workers, default=None, metavar="N",
                       help="spread the work over a local dask cluster of N worker processes (at most the "
                            "machine's cores)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="spread the work over a running dask cluster (e.g. tcp://host:8786)")
    parser.add_argument("--units-per-task", type=positive_int, default=1, metavar="K",
                        help="slices (or seeds, or tiles for segment-all) per dask task (default 1)")


def add_image_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--contrast-limits``, shared by the image commands."""
    from ..core.defaults import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name (see `weights list`) or checkpoint path")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--contrast-limits", type=parse_limits, default=None, metavar="LOW,HIGH",
                        help="intensities mapped to black and white (default: robust percentiles)")


def add_large_image_options(parser: argparse.ArgumentParser) -> None:
    """``--level``, ``--tile-size`` and ``--halo``: pyramids and tiles of large images."""
    parser.add_argument("--level", type=int, default=None, metavar="N",
                        help="with an OME-Zarr pyramid: use level N as the image (default: the whole "
                             "pyramid, full resolution, its coarser levels for large objects)")
    parser.add_argument("--tile-size", type=int, default=None, metavar="T",
                        help="encoder tile side for large images (long side above 1536): a multiple of "
                             "16 within [256, 4096] (default 1024)")
    parser.add_argument("--halo", type=int, default=None, metavar="H",
                        help="overlap of neighbouring tiles; objects up to H pixels lie in one tile "
                             "(0 <= H < T/2, default 256, or T/4 for tiles under 1024)")


def tile_options(args: argparse.Namespace) -> tuple[int, int]:
    """``(tile_size, halo)`` from ``--tile-size``/``--halo`` (defaults where not given), checked
    before any work: :class:`UserError` with the valid range otherwise."""
    from ..core.images import DEFAULT_HALO, DEFAULT_TILE_SIZE, check_tiling

    tile = DEFAULT_TILE_SIZE if args.tile_size is None else args.tile_size
    halo = min(DEFAULT_HALO, tile // 4) if args.halo is None else args.halo  # a quarter of smaller tiles
    try:
        return check_tiling(tile, halo)
    except ValueError as exc:
        text = str(exc).replace("tile_size", "--tile-size").replace("halo", "--halo")
        raise UserError(text) from None


def note_tiling(args: argparse.Namespace, vol, tiling: tuple[int, int]) -> bool:
    """Whether ``vol`` is tiled (its long side is above the tiling threshold); says so on stderr,
    and says when ``--tile-size``/``--halo`` were given for an image that is not tiled."""
    large = vol.is_large(tiling[0])
    h, w = vol.plane_shape
    if large:
        note(f"large image ({h}x{w} per slice): encoded in tiles of {tiling[0]}x{tiling[0]} pixels "
             f"overlapping by {tiling[1]}, {vol.n_levels} stored level(s)")
    elif args.tile_size is not None or args.halo is not None:
        note(f"--tile-size/--halo ignored: the image ({h}x{w}) is small enough for one encoder canvas")
    return large


def write_regions(path: str | Path, shape: tuple[int, ...], region_of: Callable[[int], Any]) -> dict[str, int]:
    """Write a uint8 mask (1 = object) given by one region per slice (see
    :func:`~napari_focsam.core.outputs._mask_files.write_mask_regions`); the old file stays if anything fails.

    Returns ``{"mask_pixels": ..., "slices_with_mask": ...}``.
    """
    import numpy as np

    from ..core.outputs import write_mask_regions

    seen: set[int] = set()

    def counted(z: int):
        region = region_of(z)
        if region is not None and np.asarray(region[2]).any():
            seen.add(z)
        return region

    try:
        n = write_mask_regions(path, shape, counted)
    except ValueError as exc:  # the checks passed before the work; the folder changed since
        raise UserError(str(exc)) from None
    return {"mask_pixels": n, "slices_with_mask": len(seen)}


def check_stops(iou_threshold: float, edge_fade: float) -> None:
    """Refuse the propagation's stop settings out of range before any work (``--iou-threshold``
    within [0, 1], ``--edge-fade`` within [0, 1), 0 switching it off)."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise UserError(f"--iou-threshold {iou_threshold:g} is out of range: it must be within [0, 1]")
    if not 0.0 <= edge_fade < 1.0:
        raise UserError(f"--edge-fade {edge_fade:g} is out of range: it must be within [0, 1) (0: off)")
