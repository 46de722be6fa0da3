"""``napari-focsam gui [--sample 2d|3d|none]``: napari with the FocSAM widget and a sample image.

The only sub-command that imports napari (inside :func:`run`).
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gui`` on ``subparsers``; return its parser."""
    g = subparsers.add_parser("gui", help="start napari with the FocSAM widget and a sample image")
    g.add_argument("--sample", choices=["2d", "3d", "none"], default="2d")
    g.set_defaults(func=run)
    return g


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam gui``; return the exit code."""
    import napari

    viewer = napari.Viewer()
    if args.sample != "none":
        viewer.open_sample("napari-focsam", f"nuclei_{args.sample}")
    viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    napari.run()
    return 0
