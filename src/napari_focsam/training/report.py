# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Loss curves of a training run, drawn from the trainer's ``log.jsonl``.

    python -m napari_focsam.training.report RUN_DIR/log.jsonl docs/focsam_t/loss_curves.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["plot_training_log", "read_log"]


def read_log(path: str | Path) -> list[dict]:
    """The window summaries of a ``log.jsonl`` (lines with a ``loss``), in iteration order.

    A run resumed from a checkpoint logs the iterations after the checkpoint again; the later
    record of an iteration wins.
    """
    by_iter: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "loss" in rec and "iter" in rec:
            by_iter[int(rec["iter"])] = rec
    return [by_iter[k] for k in sorted(by_iter)]


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    pad = np.concatenate([np.full(k // 2, y[0]), y, np.full(k - 1 - k // 2, y[-1])])
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def plot_training_log(log_path: str | Path, out_png: str | Path, smooth: int = 5, title: str | None = None) -> Path:
    """Three panels against the iteration: the losses (total, NFL, click), the training IoU of the
    refined and of the plain prediction on the same prompts, and the learning rate.

    Raw window means are drawn thin, a ``smooth``-window moving average thick.  Returns the PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = read_log(log_path)
    if not recs:
        raise ValueError(f"{log_path}: no training record (lines with 'iter' and 'loss')")
    it = np.array([r["iter"] + 1 for r in recs])
    fig = Figure(figsize=(10, 3.0), dpi=90)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    terms = [("loss", "k"), ("nfl", "tab:blue"), ("click", "tab:orange")]
    # the decoder's own terms, when it was trained (train.decoder_lr): drawn where logged
    terms += [(k, c) for k, c in (("plain_loss", "tab:purple"), ("multimask_loss", "tab:brown"),
                                  ("iou_head_loss", "tab:olive")) if any(r.get(k) is not None for r in recs)]
    for key, color in terms:
        y = np.array([r.get(key) if r.get(key) is not None else np.nan for r in recs], float)
        axes[0].plot(it, y, color=color, lw=0.5, alpha=0.35)
        axes[0].plot(it, _smooth(y, smooth), color=color, lw=1.5, label=key)
    axes[0].set_title("training loss")
    axes[0].legend(fontsize=8)
    for key, color, lab in (("iou", "tab:green", "refined"), ("plain_iou", "tab:gray", "plain (same prompts)")):
        y = np.array([r.get(key) if r.get(key) is not None else np.nan for r in recs], float)
        axes[1].plot(it, y, color=color, lw=0.5, alpha=0.35)
        axes[1].plot(it, _smooth(y, smooth), color=color, lw=1.5, label=lab)
    axes[1].set_title("training IoU (final prompts)")
    axes[1].legend(fontsize=8)
    axes[2].plot(it, [r.get("lr", np.nan) for r in recs], color="tab:purple")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m napari_focsam.training.report LOG_JSONL OUT_PNG")
    print(plot_training_log(sys.argv[1], sys.argv[2]))
