"""``napari-focsam train CONFIG`` and ``napari-focsam train-cache CONFIG``: the FocSAM-T refiner.

    napari-focsam train-cache configs/focsam_t.json            # embeddings of train + val images
    napari-focsam train configs/focsam_t.json                   # trains, resumes automatically
    napari-focsam train configs/focsam_t.json --export-only     # refiner file from the latest checkpoint
    napari-focsam train configs/round2.json --resume-from runs/round1/ckpt_0001700.pt  # a second round

Both commands print JSON lines; the trained refiner is written to
``<work_dir>/focsam_t_refiner.pt`` (float16, with ``.sha256``).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError

__all__ = ["add_parser", "parse_overrides", "run", "run_cache"]


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.iters=100", ...]`` (``--set``) -> {"train.iters": 100, ...}; values are JSON or text."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _set_threads(n) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` and ``train-cache`` on ``subparsers``; return the ``train`` parser."""
    p = subparsers.add_parser("train", help="train the FocSAM-T focus refiner (cached embeddings)")
    p.add_argument("config", help="training config (.json, or .yaml when PyYAML is installed)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or mps (default: from the config)")
    p.add_argument("--work-dir", default=None, help="override the config's work_dir")
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many more iterations")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--resume-from", default=None, metavar="CKPT",
                   help="continue another run's checkpoint (a second training round) when the work "
                        "folder has none of its own yet")
    p.add_argument("--export-only", action="store_true", help="export the refiner of the latest checkpoint")
    p.add_argument("--out", default=None, help="exported refiner file (default: <work_dir>/focsam_t_refiner.pt)")
    p.add_argument("--val", action="store_true", help="run the cached validation at the end")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.iters=100 (JSON values)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)

    c = subparsers.add_parser("train-cache", help="build the float16 embedding cache for training")
    c.add_argument("config")
    c.add_argument("--split", choices=("train", "val", "all"), default="all")
    c.add_argument("--limit", type=int, default=None, help="at most N images per source (smoke runs)")
    c.add_argument("--device", default=None, help="encoder device (default: from the config)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=run_cache)
    return p


def run_cache(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam train-cache``; return the exit code."""
    from ..training.cache import build_cache
    from ..training.config import load_config

    cfg = load_config(args.config, parse_overrides(args.set))
    if args.device:
        cfg.data.cache_device = args.device
    _set_threads(args.threads or cfg.train.threads)
    splits = ("train", "val") if args.split == "all" else (args.split,)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    stats = build_cache(cfg, splits, limit=args.limit, log=log)
    print(json.dumps({"cache_dir": str(cfg.cache_path), **{k: (round(v, 3) if isinstance(v, float) else v)
                                                          for k, v in stats.items()}}))
    return 0


def run(args: argparse.Namespace) -> int:
    """Handle ``napari-focsam train``; return the exit code."""
    from ..training.config import load_config
    from ..training.trainer import Trainer

    if args.resume_from and (args.no_resume or args.export_only):
        raise UserError("--resume-from continues a training run: not with --no-resume or --export-only")
    cfg = load_config(args.config, parse_overrides(args.set))
    if args.device:
        cfg.train.device = args.device
    if args.threads:
        cfg.train.threads = args.threads
    if args.work_dir:
        cfg.work_dir = args.work_dir
    log = None if args.quiet else print
    trainer = Trainer(cfg, log=log)
    try:
        if args.export_only:
            ck = trainer.latest_checkpoint()
            if ck is None:
                raise UserError(f"no checkpoint in {cfg.work_path}: train first, or pass --work-dir")
            trainer.load_checkpoint(ck)
            info = trainer.export(args.out)
            print(json.dumps({"event": "exported", "checkpoint": str(ck), **info}))
            return 0
        try:
            summary = trainer.run(max_iters=args.max_iters, resume=args.resume_from or not args.no_resume)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        if args.val:
            print(json.dumps({"event": "val", **trainer.validate()}))
        print(json.dumps({"event": "done", "iteration": trainer.iteration, **summary}))
    finally:
        trainer.close()
    return 0
