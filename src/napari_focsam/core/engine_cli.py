"""Command-line front ends of the engine: ``precompute`` and ``segment --propagate``.

``napari-focsam precompute IMAGE --cache DIR [--model NAME]`` fills the on-disk embedding
cache of a 2D image or of every slice of a stack (resuming an interrupted run) and prints one
line of JSON. ``segment_volume_cli`` runs ``napari-focsam segment STACK --slice Z --click Y,X
--propagate --out MASK.tif``: the clicks on slice Z, then propagation through the stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

from .weights import DEFAULT_MODEL

__all__ = ["add_parser", "cmd_precompute", "segment_volume_cli"]


def _user_error(message: str) -> Exception:
    from ..cli import UserError

    return UserError(message)


def _parse_limits(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"contrast limits {text!r} must be LOW,HIGH") from None
    return lo, hi


def _progress_bar(total: int, desc: str, enabled: bool = True) -> tuple[Callable[[int, int], None], Callable[[], None]]:
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


def _volume(image, contrast_limits=None):
    from .embeddings import ImageVolume

    try:
        return ImageVolume(image, contrast_limits=contrast_limits)
    except ValueError as exc:
        raise _user_error(str(exc)) from None


def cmd_precompute(args) -> int:
    from .embeddings import EmbeddingStore
    from .io import read_image
    from .models import load_model
    from .predictor import FocSAMPredictor

    try:
        image = read_image(args.image)
    except ValueError as exc:
        raise _user_error(str(exc)) from None
    vol = _volume(image, args.contrast_limits)
    model = load_model(args.model, args.device)
    store = EmbeddingStore(FocSAMPredictor(model), vol, cache_dir=args.cache)
    if not store.disk_writable:
        raise _user_error(f"cannot fill the cache in {args.cache}: {store.disk_error}")
    update, close = _progress_bar(vol.n_slices, "embeddings", not args.no_progress)
    t0 = time.perf_counter()
    try:
        computed = store.precompute(progress=update)
    finally:
        close()
    info = store.last_precompute
    if store.disk_error:  # e.g. the disk filled up on the way
        raise _user_error(f"the cache in {store.cache_path} is incomplete: {store.disk_error}")
    print(json.dumps({
        "image": str(args.image), "shape": list(vol.shape), "slices": vol.n_slices,
        "computed": computed, "reused": info.get("reused", 0), "seconds": round(time.perf_counter() - t0, 2),
        "model": model.model_type, "model_id": store.model_id[:16], "cache": str(store.cache_path),
    }))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "precompute", help="compute and cache the embeddings of an image or of every slice of a stack",
        description="Fill the on-disk embedding cache (one zarr store per image and model in DIR); "
                    "an interrupted run resumes where it stopped.")
    p.add_argument("image", help="2D image (tif/png/jpg) or 3D stack (tif)")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache folder (created if needed)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name (see `weights list`) or checkpoint path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--contrast-limits", type=_parse_limits, default=None, metavar="LOW,HIGH",
                   help="intensities mapped to black and white (default: robust percentiles)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_precompute)
    _extend_segment(subparsers)
    return p


def _extend_segment(subparsers) -> None:
    """Options of ``segment --propagate`` added to the existing ``segment`` sub-command."""
    from .volume import DEFAULT_IOU_THRESHOLD

    seg = getattr(subparsers, "choices", {}).get("segment")
    if seg is None:
        return
    for flags, kwargs in [
        (("--iou-threshold",), dict(type=float, default=DEFAULT_IOU_THRESHOLD, metavar="T",
                                    help="with --propagate: stop where the IoU with the previous slice "
                                         f"falls below T (default {DEFAULT_IOU_THRESHOLD})")),
        (("--cache",), dict(default=None, metavar="DIR",
                            help="with --propagate: embedding cache folder (see `precompute`)")),
    ]:
        try:
            seg.add_argument(*flags, **kwargs)
        except argparse.ArgumentError:  # already defined by the segment command itself
            pass


def segment_volume_cli(args, image, clicks) -> int:
    """``segment --propagate``: clicks on ``--slice``, propagation, a (Z, Y, X) uint8 mask."""
    from .io import write_mask
    from .models import load_model, refine_precision_of
    from .session import Session

    vol = _volume(image)
    if not vol.is_3d:
        raise _user_error(f"--propagate needs a 3D stack (Z, Y, X), but the image is 2D {tuple(vol.shape)}: "
                          "drop --propagate")
    Z = vol.n_slices
    if args.slice is None:
        raise _user_error(f"the stack has {Z} slices: pass --slice Z for the slice the clicks are on")
    if not 0 <= args.slice < Z:
        raise _user_error(f"--slice {args.slice} is out of range: the stack has {Z} slices (0..{Z - 1})")
    H, W = vol.plane_shape
    for c in clicks:
        if not (0 <= c.y < H and 0 <= c.x < W):
            raise _user_error(f"click ({c.y:g},{c.x:g}) is outside the image of {H}x{W} pixels")
    model = load_model(args.model, args.device, refiner=getattr(args, "refiner", None),
                       refine_precision=getattr(args, "refine_precision", None))
    session = Session(vol, model, refine=not getattr(args, "no_refine", False),
                      cache_dir=getattr(args, "cache", None))
    obj = session.new_object()
    t0 = time.perf_counter()
    for c in clicks:
        obj.add_click(c.y, c.x, c.is_positive, z=args.slice)
    t_click = time.perf_counter() - t0
    update, close = _progress_bar(Z, "propagation", not getattr(args, "no_progress", False))
    try:
        kwargs = {}
        if getattr(args, "iou_threshold", None) is not None:
            kwargs["iou_threshold"] = args.iou_threshold
        try:
            result = obj.propagate(progress=update, **kwargs)
        except ValueError as exc:
            raise _user_error(str(exc)) from None
    finally:
        close()
    volume = obj.volume_mask()
    write_mask(args.out, volume.astype("uint8"))
    print(json.dumps({
        "model": model.model_type, "clicks": len(clicks), "slice": args.slice,
        "refine": session.predictor.refine,
        "refine_precision": refine_precision_of(model) if session.predictor.refine else None,
        "z_range": list(result.z_range), "stopped": result.stopped_reason,
        "slices_with_mask": int(volume.any(axis=(1, 2)).sum()), "mask_voxels": int(volume.sum()),
        "click_seconds": round(t_click, 3), "propagation_seconds": round(result.seconds, 3),
        "embeddings_computed": session.store.stats["computed"], "shape": list(volume.shape), "out": str(args.out),
    }))
    return 0
