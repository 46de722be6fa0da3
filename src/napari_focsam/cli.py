"""Command line: ``napari-focsam segment | weights | precompute | evaluate | train | demo | gui``.

Every sub-command prints one line of JSON (or a table) on success and, on bad input,
exits non-zero with one line ``napari-focsam: error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .core.weights import DEFAULT_MODEL, REFINE_PRECISIONS

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class UserError(Exception):
    """An error caused by the user's input; reported as one line."""


def parse_click(text: str):
    """``Y,X`` or ``Y,X,+`` / ``Y,X,-`` -> (y, x, sign or None)."""
    from .core.predictor import Click

    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"click {text!r} must be Y,X or Y,X,+ or Y,X,-")
    try:
        y, x = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"click {text!r}: Y and X must be numbers") from None
    sign = parts[2] if len(parts) == 3 else None
    if sign not in (None, "+", "-"):
        raise argparse.ArgumentTypeError(f"click {text!r}: the third field must be + or -")
    return Click(y, x, sign != "-") if sign is not None else (y, x, None)


def _normalise_clicks(raw):
    """The first click is positive unless marked '-'; later unmarked clicks are positive."""
    from .core.predictor import Click

    return [c if isinstance(c, Click) else Click(c[0], c[1], True) for c in raw]


def _select_slice(image, slice_index):
    from .core.io import is_rgb, spatial_ndim

    nd = spatial_ndim(image)
    if nd == 2:
        if slice_index not in (None, 0):
            raise UserError(f"--slice {slice_index} given, but the image is 2D {image.shape}")
        return image
    if nd == 3:
        n = image.shape[0]
        if slice_index is None:
            raise UserError(f"the image is a 3D stack of {n} slices {image.shape}: pass --slice Z")
        if not 0 <= slice_index < n:
            raise UserError(f"--slice {slice_index} is out of range: the stack has {n} slices (0..{n - 1})")
        return image[slice_index]
    raise UserError(f"unsupported image shape {image.shape}{' (RGB)' if is_rgb(image) else ''}: "
                    "expected 2D (Y, X), RGB (Y, X, 3) or a 3D stack (Z, Y, X)")


def cmd_segment(args) -> int:
    from .core.io import read_image, write_mask

    try:
        image = read_image(args.image)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    clicks = _normalise_clicks(args.click)
    if args.propagate:
        return _segment_volume(args, image, clicks)
    plane = _select_slice(image, args.slice)
    H, W = plane.shape[:2]
    for c in clicks:
        if not (0 <= c.y < H and 0 <= c.x < W):
            raise UserError(f"click ({c.y:g},{c.x:g}) is outside the image of {H}x{W} pixels")
    from .core.models import load_model, refine_precision_of
    from .core.predictor import FocSAMPredictor, InteractiveObject

    model = load_model(args.model, args.device, refiner=args.refiner, refine_precision=args.refine_precision)
    predictor = FocSAMPredictor(model, refine=not args.no_refine)
    t0 = time.perf_counter()
    emb = predictor.embed(plane)
    t_embed = time.perf_counter() - t0
    obj = InteractiveObject(predictor, emb)
    click_s = []
    for c in clicks:
        res = obj.add(c)
        click_s.append(round(res.decoder_seconds + res.refine_seconds, 4))
    write_mask(args.out, obj.mask.astype("uint8"))
    print(json.dumps({
        "model": model.model_type, "refine": predictor.refine, "clicks": len(clicks),
        "refine_precision": refine_precision_of(model) if predictor.refine else None,
        "embedding_seconds": round(t_embed, 3), "click_seconds": click_s,
        "mask_pixels": int(obj.mask.sum()), "shape": list(obj.mask.shape), "out": str(args.out),
    }))
    return 0


def _segment_volume(args, image, clicks) -> int:
    try:
        from .core.engine_cli import segment_volume_cli
    except ImportError:
        raise UserError("--propagate is not available in this version") from None
    return segment_volume_cli(args, image, clicks)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-focsam", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-focsam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one object from clicks (headless)")
    seg.add_argument("image", help="2D image (tif/png/jpg, gray or RGB) or a 3D stack (tif)")
    seg.add_argument("--click", action="append", type=parse_click, required=True,
                     metavar="Y,X[,+|-]", help="a click in pixel coordinates; repeat for more clicks")
    seg.add_argument("--slice", type=int, default=None, metavar="Z", help="slice of a 3D stack")
    seg.add_argument("--model", default=DEFAULT_MODEL, help="registry name (see `weights list`) or checkpoint path")
    seg.add_argument("--refiner", default=None, metavar="FILE_OR_NAME",
                     help="focus-refiner weights trained for this base model (FocSAM-T)")
    seg.add_argument("--no-refine", action="store_true", help="plain SAM loop, no focus refinement")
    seg.add_argument("--propagate", action="store_true", help="propagate through the stack (3D mask)")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    seg.add_argument("--refine-precision", choices=REFINE_PRECISIONS, default=None,
                     help="the refiner's matrix products: auto (bf16 on CPUs with native bf16, "
                          "else fp32; default, or $NAPARI_FOCSAM_REFINE_PRECISION), fp32 or bf16")
    seg.add_argument("--out", required=True, help="output mask (uint8, 1 = object), .tif or .png")
    seg.set_defaults(func=cmd_segment)

    from . import _demo
    from .core import engine_cli
    from .core._weights_cli import add_weights_parser
    from .evaluation import runner
    from .training import cli as training_cli

    add_weights_parser(sub)
    engine_cli.add_parser(sub)
    runner.add_parser(sub)
    training_cli.add_parser(sub)
    _demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"napari-focsam: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("napari-focsam: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        # CheckpointError is a ValueError, WeightsUnavailableError a RuntimeError, missing or
        # unwritable files are OSErrors: all are reported without a traceback. Only the
        # weights error keeps its extra lines (the manual download step).
        from .core.weights import WeightsUnavailableError

        text = str(exc) if isinstance(exc, WeightsUnavailableError) else " ".join(str(exc).split())
        print(f"napari-focsam: error: {text}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
