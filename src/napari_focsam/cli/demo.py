"""``napari-focsam demo``: headless, one click per well separated nucleus of the 2D sample.

Prints one line of JSON (IoU per object against the sample's ground truth) and writes an
overlay PNG into ``--out``.
"""

from __future__ import annotations

import argparse
import json

from ..core.defaults import DEFAULT_MODEL

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on ``subparsers``; return its parser."""
    d = subparsers.add_parser("demo", help="headless demo: one click per nucleus of the sample, IoU vs ground truth")
    d.add_argument("--model", default=DEFAULT_MODEL)
    d.add_argument("--objects", type=int, default=5)
    d.add_argument("--device", default="auto")
    d.add_argument("--out", default="focsam-demo", help="folder for the overlay PNG")
    d.set_defaults(func=run)
    return d


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam demo``; return the exit code."""
    from .._demo import run_demo

    print(json.dumps(run_demo(args.model, args.objects, args.out, args.device)))
    return 0
