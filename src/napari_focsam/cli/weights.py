"""``napari-focsam weights list | fetch | path | import``: the model-weights cache.

Progress bars and pip output go to stderr, so ``weights path`` prints only the path on stdout
and can be used in scripts: ``CKPT=$(napari-focsam weights path vit_t)``. Errors follow the
command line's one policy (:func:`napari_focsam.cli.main`): one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse

from ..core.models import weights as W

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``weights {list,fetch,path,import}`` on ``subparsers``; return its parser."""
    parser = subparsers.add_parser(
        "weights",
        help="list, download and import model weights",
        description=(
            "Manage model weights in the per-user cache "
            f"(override the folder with ${W.CACHE_ENV}; set ${W.OFFLINE_ENV}=1 to never "
            "use the network)."
        ),
    )
    sub = parser.add_subparsers(dest="weights_command", metavar="{list,fetch,path,import}")
    sub.required = True

    p_list = sub.add_parser("list", help="known models: name, size, cached or not")
    p_list.add_argument("--verify", action="store_true",
                        help="re-hash every cached file (slow for large models; finds silent corruption)")

    p_fetch = sub.add_parser("fetch", help="download a model into the cache (if needed)")
    p_fetch.add_argument("name", help="registry name, e.g. vit_t")
    p_fetch.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    p_fetch.add_argument("--no-progress", action="store_true", help="no progress bar")

    p_path = sub.add_parser("path", help="print the local path of a model, fetching it first if needed")
    p_path.add_argument("name", help="registry name or checkpoint path")
    p_path.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p_path.add_argument("--no-progress", action="store_true", help="no progress bar")

    p_import = sub.add_parser("import", help="verify a file you downloaded yourself and copy it into the cache")
    p_import.add_argument("name", help="registry name, e.g. focsam_vit_h")
    p_import.add_argument("file", help="the checkpoint, or the archive (zip/tar) containing it")

    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam weights ...``; return the exit code."""
    if args.weights_command == "list":
        return _list(args)
    if args.weights_command == "fetch":
        print(W.fetch(args.name, force=args.force, progress=not args.no_progress))
        return 0
    if args.weights_command == "path":
        print(W.resolve_weights(args.name, download=not args.no_download, progress=not args.no_progress))
        return 0
    if args.weights_command == "import":
        path = W.import_weights(args.name, args.file)
        print(f"imported {args.name}: {path}")
        return 0
    raise ValueError(f"unknown weights command {args.weights_command!r}")


def _list(args: argparse.Namespace) -> int:
    rows = W.list_weights(verify=args.verify)
    print(f"weights cache: {W.cache_dir()}")
    table = [("NAME", "SIZE", "STATUS", "DESCRIPTION")]
    for r in rows:
        table.append((r.name + (" *" if r.default else ""), W.format_size(r.size), r.status, r.description))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    print("* default model")
    return 0
