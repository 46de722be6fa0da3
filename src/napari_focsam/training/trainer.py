# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""FocSAM-T training loop: stage 2 (refiner through the frozen decoder), optional stage 1.

One iteration (stage 2, design §5.1):

1. :class:`~.data.BatchSampler` picks a batch of cached objects of one group
   (deterministically from ``(seed, iteration)``).
2. ``n`` and ``refine_step`` are drawn (geometric), and :func:`~.simulate.simulate_clicks`
   runs the frozen decoder / refiner without gradient to produce the prompts.
3. With gradient: ``E' = refiner(E0, coarse logits, coarse token, random expand ratio)``;
   ``logits = decoder(E', final prompts, last logits)`` (decoder frozen, ``requires_grad``
   False, but the gradient flows through it into the refiner).
4. ``loss = nfl_weight * NFL(upsampled logits, gt) + click_weight * click loss``, AdamW, a
   linear warm-up then poly decay of the learning rate, optional gradient clipping.

Stage 1 (optional, ``train.stage1_iters > 0``) runs the same simulation without the refiner
and fine-tunes the decoder with the NFL on its final prediction; stage 2 then starts from it.

Determinism: every random draw of iteration ``it`` comes from generators seeded with
``(seed, it, ...)`` (batch, clicks, expand ratios), so a run resumed from a checkpoint repeats
the uninterrupted run exactly (same device and thread count).  The checkpoint still stores the
optimizer, scheduler, and the global torch / numpy / python RNG states.
"""

from __future__ import annotations

import json
import os
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.hashing import sha256_file
from ..core.models import CheckpointError, read_checkpoint, state_dict_differences
from ..modeling.focsam import FocSAM
from .cache import TrainingCache, TrainingItem
from .config import TrainingConfig
from .data import CANVAS, check_licences, training_dataset_name
from .export import REFINER_FILE, build_refiner, export_refiner
from .losses import click_loss, iou_head_loss, min_candidate_loss, normalized_focal_loss
from .rng import rng_state, seed_everything, set_rng_state
from .sampler import BatchSampler
from .schedule import WarmupPolyLR, param_groups
from .simulate import sample_geometric, simulate_clicks
from .validate import evaluate_cached, iou_canvas

__all__ = ["Trainer", "draw_click_schedule", "export_metadata", "init_provenance", "load_refiner_weights",
           "load_resume_state"]

# --------------------------------------------------------------------------- trainer


def load_resume_state(path: str | Path) -> dict:
    """Read a training checkpoint written by :meth:`Trainer.save_checkpoint`, safely.

    It goes through :func:`~napari_focsam.core.models._checkpoint.read_checkpoint` (tensors, numbers
    and plain containers only), so a hostile file in a work folder cannot run code.

    Parameters
    ----------
    path : str or Path
        A ``ckpt_*.pt`` file.

    Returns
    -------
    dict
        The saved state (``iteration``, ``stage``, ``refiner``, ``optimizer``, ``rng``, ...).
    """
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"{path} is not a napari-focsam training checkpoint (no 'iteration')")
    return state


def _load_part(module: torch.nn.Module, sd: dict, prefix: str, path: str | Path, what: str) -> None:
    """Load the ``prefix``-ed tensors of ``sd`` into ``module``; ``CheckpointError`` when they do not fit."""
    weights = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = module.state_dict()
    problems = state_dict_differences(own, weights, shown=3)
    if problems:
        raise CheckpointError(f"{path} does not fit the configured {what}: {problems} (check model.depth / sizes)")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def load_refiner_weights(refiner: torch.nn.Module, path: str | Path,
                         decoder: torch.nn.Module | None = None) -> bool:
    """Load an exported refiner file (:func:`~.export.export_refiner`) into ``refiner`` (fine-tuning).

    ``decoder``: when given and the file is a head file (it holds ``mask_decoder.*``, written with
    ``with_decoder=True``), its decoder is loaded too, so that a fine-tune continues from the
    decoder the refiner was trained with.  Returns whether a decoder was loaded.

    The file is read safely (:func:`~napari_focsam.core.models._checkpoint.read_checkpoint`); its
    float16 tensors become the module's dtype.  Raises ``CheckpointError`` when the file is not
    a refiner file or its tensors do not fit the configured refiner (other depth or width).
    """
    st = read_checkpoint(path)
    sd = st.get("state_dict") if isinstance(st, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} is not an exported refiner file (no 'state_dict')")
    _load_part(refiner, sd, "focus_refiner.", path, "refiner")
    if decoder is None or not any(k.startswith("mask_decoder.") for k in sd):
        return False
    _load_part(decoder, sd, "mask_decoder.", path, "mask decoder")
    return True


def init_provenance(path: str | Path) -> dict:
    """What a fine-tune inherits from the file it starts from: its SHA-256, training sets and
    research-only flag (read once, when its weights are loaded)."""
    st = read_checkpoint(path)
    info = st.get("napari_focsam") if isinstance(st, dict) else None
    info = info if isinstance(info, dict) else {}
    return {"sha256": sha256_file(path), "training_data": sorted(str(d) for d in info.get("training_data") or ()),
            "research_only": bool(info.get("research_only"))}


def export_metadata(cfg: TrainingConfig, iteration: int, base_sha256: str | None,
                    init: dict | None = None) -> dict:
    """What an exported file records of its training: base model, schedule, data, thresholds.

    ``init``: the :func:`init_provenance` of the file a fine-tune started from. The export names
    it (``init_sha256``) and inherits its provenance: its training sets join this run's, and a
    research-only start makes a research-only file.
    """
    init = init or {}
    data = {s.dataset for s in cfg.data.train} | set(init.get("training_data", ()))
    return {"base_model": cfg.model.base, "base_sha256": base_sha256,
            "trained_iters": int(iteration), "seed": cfg.train.seed, "init_sha256": init.get("sha256"),
            "training_data": sorted(data),  # provenance: licences
            "research_only": bool(cfg.data.research_only) or bool(init.get("research_only")),
            **cfg.export.metadata()}  # the decoder's calibrated thresholds


def draw_click_schedule(rng: np.random.Generator, sc, group: str, stage: int) -> tuple[int, int | None]:
    """``(n, refine_step)`` of one batch (``refine_step`` None in stage 1).

    With probability ``sc.second_click_prob`` the batch is FocSAM's refine click, the second
    (``n = 1, refine_step = 1``); with probability ``sc.refine_at_click2_prob`` it refines at the
    second click (``refine_step = 1``, ``n >= 1`` from ``gamma``) so that all later clicks are
    made on the refined embedding; otherwise ``n`` and ``refine_step`` are
    geometric (``gamma``, ``gamma_refine``), as in FocSAM.  One uniform draw picks the case
    only when one of the two probabilities is set (older configs draw exactly as before).
    """
    n = sample_geometric(rng, sc.gamma[group], sc.max_num_clicks)
    if stage != 2:
        return n, None
    if sc.second_click_prob > 0 or sc.refine_at_click2_prob > 0:
        u = float(rng.random())
        if u < sc.second_click_prob:
            return 1, 1
        if u < sc.second_click_prob + sc.refine_at_click2_prob:
            return max(n, 1), 1
    return n, sample_geometric(rng, sc.gamma_refine[group], n)


class Trainer:
    """Runs FocSAM-T training for a :class:`TrainingConfig`.

    ``model`` (optional): a FocSAM whose prompt encoder and decoder are the frozen base (its
    refiner is replaced unless ``keep_refiner``); default: ``cfg.model.base`` loaded from the
    registry.  ``train_cache`` / ``val_cache``: :class:`TrainingCache` objects (default: the
    config's cache folders).  ``log``: called with each JSON log line.
    """

    def __init__(self, cfg: TrainingConfig, *, model: FocSAM | None = None,
                 train_cache: TrainingCache | None = None, val_cache: TrainingCache | None = None,
                 device: str | torch.device | None = None, keep_refiner: bool = False,
                 log: Callable[[str], None] | None = print) -> None:
        from ..core.models import resolve_device

        check_licences(cfg)
        self.cfg = cfg
        self.log_fn = log
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(int(tc.threads))
        seed_everything(tc.seed, tc.deterministic)
        self.device = resolve_device(device if device is not None else tc.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.base_sha256 = None
        self.init_provenance: dict | None = None  # the file a fine-tune started from (export metadata)
        if model is None:
            from ..core.models import load_checkpoint
            from ..core.models.weights import resolve_weights

            wpath = resolve_weights(cfg.model.base)
            model = load_checkpoint(wpath)
            self.base_sha256 = sha256_file(wpath)
        if not keep_refiner or model.focus_refiner is None:
            torch.manual_seed(tc.seed)
            model.focus_refiner = build_refiner(cfg.model, cfg.sim.expand_ratio_range,
                                                embed_dim=model.prompt_encoder.embed_dim)
            if cfg.model.init_from:
                load_refiner_weights(model.focus_refiner, cfg.path(cfg.model.init_from), model.mask_decoder)
                self.init_provenance = init_provenance(cfg.path(cfg.model.init_from))
        self.model = model.to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

        self.train_cache = train_cache if train_cache is not None else TrainingCache(cfg.cache_path / "train")
        self.val_cache = val_cache
        if self.val_cache is None and tc.val_every and (cfg.cache_path / "val").is_dir():
            self.val_cache = TrainingCache(cfg.cache_path / "val")
        if self.val_cache is not None:
            both = self.train_cache.image_keys & self.val_cache.image_keys
            if both:
                raise ValueError(f"validation images in the training cache: {sorted(both)[:5]}")
        source_weights = {}
        for s in cfg.data.train:
            source_weights[training_dataset_name(s.dataset)] = s.weight
        self.sampler = BatchSampler(self.train_cache, tc.seed, tc.batch_size, cfg.data.group_weights,
                                    source_weights)
        self.total_iters = int(tc.stage1_iters) + int(tc.iters)
        self.iteration = 0
        self.stage = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: WarmupPolyLR | None = None
        self.work_dir = cfg.work_path
        self._window: list[dict] = []
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._prefetch: dict[int, Any] = {}
        #: (old, new) stage length when a resumed checkpoint was planned for another length
        self.replanned: tuple[int, int] | None = None

    # ------------------------------------------------------------------ stages
    def stage_of(self, it: int) -> int:
        return 1 if it < self.cfg.train.stage1_iters else 2

    def _setup_stage(self, stage: int) -> None:
        oc, tc = self.cfg.optim, self.cfg.train
        for p in self.model.parameters():
            p.requires_grad_(False)
        if stage == 1:
            modules, iters = [(self.model.mask_decoder, tc.stage1_lr)], tc.stage1_iters
        else:
            modules, iters = [(self.model.focus_refiner, oc.lr)], tc.iters
            if tc.decoder_lr:
                modules.append((self.model.mask_decoder, tc.decoder_lr))
        groups = []
        for module, lr in modules:
            for p in module.parameters():
                p.requires_grad_(True)
            for g in param_groups(list(module.named_parameters()), oc.weight_decay, oc.no_decay_1d):
                groups.append({**g, "lr": lr})
        self.optimizer = torch.optim.AdamW(groups, lr=modules[0][1], betas=tuple(oc.betas),
                                           weight_decay=oc.weight_decay)
        self.scheduler = WarmupPolyLR(self.optimizer, iters, min(oc.warmup_iters, max(iters - 1, 0)),
                                      oc.warmup_factor, oc.power, oc.min_lr)
        self.stage = stage

    @property
    def trains_decoder(self) -> bool:
        """Whether this run changes the mask decoder (stage 1, or ``train.decoder_lr``)."""
        return bool(self.cfg.train.stage1_iters or self.cfg.train.decoder_lr)

    def _stage_iter(self, it: int) -> int:
        return it if it < self.cfg.train.stage1_iters else it - self.cfg.train.stage1_iters

    # ------------------------------------------------------------------ data
    def _load_batch(self, it: int) -> tuple[str, list[TrainingItem]]:
        group, picks = self.sampler.sample(it)
        return group, [self.train_cache.load(i, o) for i, o in picks]

    def _get_batch(self, it: int) -> tuple[str, list[TrainingItem]]:
        fut = self._prefetch.pop(it, None)
        batch = fut.result() if fut is not None else self._load_batch(it)
        if it + 1 < self.total_iters:
            self._prefetch = {it + 1: self._pool.submit(self._load_batch, it + 1)}
        return batch

    # ------------------------------------------------------------------ one step
    def to_device(self, samples: list[TrainingItem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stack a batch: E0 (B, 256, 64, 64), gt and valid (B, 1024, 1024) bool."""
        dev = self.device
        e0 = torch.stack([s.embedding for s in samples]).to(dev, non_blocking=True)
        gt = torch.from_numpy(np.stack([s.gt for s in samples])).to(dev)
        valid = torch.from_numpy(np.stack([s.valid for s in samples])).to(dev)
        return e0, gt, valid

    def simulate(self, it: int, group: str, samples: list[TrainingItem], e0: torch.Tensor):
        """Draw ``n`` / ``refine_step`` / expand ratio of iteration ``it`` and simulate the clicks.

        Returns ``(sim, expand_ratio)``; the ratio is the one the gradient pass uses.
        """
        sc = self.cfg.sim
        stage = self.stage_of(it)
        rng = np.random.default_rng([self.cfg.train.seed, int(it), 2])
        n, r = draw_click_schedule(rng, sc, group, stage)
        self.model.eval()
        with self.autocast():
            sim = simulate_clicks(self.model, e0, samples, n_clicks=n, refine_step=r, rng=rng,
                                  inner_k=sc.inner_k, first_inner_k=sc.first_inner_k,
                                  expand_ratio_range=sc.expand_ratio_range)
        lo, hi = sc.expand_ratio_range
        return sim, (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))

    def autocast(self):
        """The context of the model's passes: bfloat16 autocast with ``train.autocast = "bf16"``."""
        enabled = self.cfg.train.autocast == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def forward_loss(self, e0, gt, valid, sim, expand_ratio, stage: int = 2) -> dict:
        """The gradient pass: refiner (stage 2) + decoder with the final prompts, and the losses.

        With ``loss.plain_weight`` (stage 2, decoder trained) the decoder also decodes the final
        prompts on ``e0`` and that NFL is added (``"plain"``).

        Returns ``{"loss", "nfl", "click", "plain", "logits"}`` (logits: (B, 1, 1024, 1024))."""
        lc = self.cfg.loss

        def nfl_of(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            up = F.interpolate(raw.float(), size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)
            return normalized_focal_loss(up, gt[:, None], valid[:, None], alpha=lc.alpha, gamma=lc.gamma), up

        with self.autocast():
            if stage == 2:
                self.model.focus_refiner.train()
                if self.cfg.train.decoder_lr:
                    self.model.mask_decoder.train()
                emb = self.model.focus_refiner(e0, sim.coarse_logits, sim.coarse_token, expand_ratio=expand_ratio)
            else:
                self.model.mask_decoder.train()
                emb = e0
            out = self.model.decode(emb, sim.points, sim.labels, sim.prev_logits)
            heads = stage == 2 and bool(self.cfg.train.decoder_lr)
            plain_out = multi = None
            if heads and (lc.plain_weight or lc.iou_weight):
                plain_out = self.model.decode(e0, sim.points, sim.labels, sim.prev_logits)
            if heads and (lc.multimask_weight or lc.iou_weight):
                first = sim.labels[:, :1]  # the first click alone, as the 3D propagation prompts
                multi = self.model.decode(e0, sim.points[:, :1], first, None, multimask_output=True)
        nfl, logits = nfl_of(out.logits)
        cl = click_loss(logits, sim.points_yx, sim.labels)
        # stage 1 (decoder fine-tuning) uses the NFL only, as FocSAM's stage 1
        loss = lc.nfl_weight * nfl + (lc.click_weight if stage == 2 else 0.0) * cl
        parts: dict = {"plain": None, "multimask": None, "iou_head": None}
        if plain_out is not None and lc.plain_weight:
            parts["plain"] = nfl_of(plain_out.logits)[0]
            loss = loss + lc.plain_weight * parts["plain"]
        if multi is not None:
            g256, v256 = self._low_res(gt), self._low_res(valid)
            if lc.multimask_weight:
                parts["multimask"] = min_candidate_loss(multi.logits.float(), g256, v256, alpha=lc.alpha, gamma=lc.gamma)
                loss = loss + lc.multimask_weight * parts["multimask"]
            if lc.iou_weight:
                scored = [(multi.iou, multi.logits), (out.iou, out.logits)]
                if plain_out is not None:
                    scored.append((plain_out.iou, plain_out.logits))
                parts["iou_head"] = sum(iou_head_loss(i, lg.float(), g256, v256) for i, lg in scored) / len(scored)
                loss = loss + lc.iou_weight * parts["iou_head"]
        return {"loss": loss, "nfl": nfl, "click": cl, **parts, "logits": logits}

    @staticmethod
    def _low_res(mask: torch.Tensor) -> torch.Tensor:
        """(B, 1024, 1024) bool -> (B, 256, 256) bool on the decoder's logit grid (majority of 4x4)."""
        return F.avg_pool2d(mask[:, None].float(), 4)[:, 0] > 0.5

    def optimizer_step(self, loss: torch.Tensor) -> float | None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = None
        if self.cfg.optim.grad_clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))
        self.optimizer.step()
        self.model.eval()
        return gnorm

    def train_step(self, it: int, batch: tuple[str, list[TrainingItem]] | None = None) -> dict:
        """Run iteration ``it`` (simulation, forward, backward, optimizer step)."""
        stage = self.stage_of(it)
        if stage != self.stage:
            self._setup_stage(stage)
        self.scheduler.step(self._stage_iter(it))
        t0 = time.perf_counter()
        group, samples = batch if batch is not None else self._get_batch(it)
        e0, gt, valid = self.to_device(samples)
        t1 = time.perf_counter()
        sim, ratio = self.simulate(it, group, samples, e0)
        t2 = time.perf_counter()
        out = self.forward_loss(e0, gt, valid, sim, ratio, stage)
        gnorm = self.optimizer_step(out["loss"])
        t3 = time.perf_counter()

        with torch.no_grad():
            iou = iou_canvas(out["logits"].detach(), gt, valid).mean().item()
            plain_iou = None
            if stage == 2:
                with self.autocast():
                    base = self.model.decode(e0, sim.points, sim.labels, sim.prev_logits).logits
                base = F.interpolate(base.float(), size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)
                plain_iou = iou_canvas(base, gt, valid).mean().item()
        return {"iter": it, "stage": stage, "group": group, "loss": float(out["loss"].detach()),
                "nfl": float(out["nfl"].detach()), "click": float(out["click"].detach()), "iou": iou,
                **{f"{k}_loss": None if out[k] is None else float(out[k].detach()) for k in ("plain", "multimask", "iou_head")},
                "plain_iou": plain_iou, "n_clicks": sim.n_clicks, "refine_step": sim.refine_step,
                "expand_ratio": ratio, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": gnorm,
                "data_s": t1 - t0, "sim_s": t2 - t1, "step_s": t3 - t2,
                "iter_s": time.perf_counter() - t0}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        return {
            "iteration": self.iteration,
            "stage": self.stage,
            "refiner": self.model.focus_refiner.state_dict(),
            "decoder": self.model.mask_decoder.state_dict() if self.trains_decoder else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": rng_state(),
            "config": json.dumps(self.cfg.to_dict()),
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.work_dir / f"ckpt_{self.iteration:07d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.checkpoint_state(), tmp)
        os.replace(tmp, path)
        (path.parent / "latest.json").write_text(json.dumps({"checkpoint": path.name, "iteration": self.iteration}))
        keep = self.cfg.train.keep_checkpoints
        if keep:
            old = sorted(path.parent.glob("ckpt_*.pt"))
            for p in old[:-keep]:
                if p != path:
                    p.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the refiner (and stage-1 decoder), optimizer, scheduler, RNGs and iteration."""
        st = load_resume_state(path)
        self.model.focus_refiner.load_state_dict(st["refiner"])
        if st.get("decoder") is not None:
            self.model.mask_decoder.load_state_dict(st["decoder"])
        self.model.to(self.device)
        self.iteration = int(st["iteration"])
        saved = int(st["stage"])
        stage = self.stage_of(self.iteration) if self.iteration < self.total_iters else saved
        self._setup_stage(stage)
        if stage == saved:  # a checkpoint taken right at the stage switch starts stage 2 fresh
            if st.get("optimizer") is not None:
                self.optimizer.load_state_dict(st["optimizer"])
            if st.get("scheduler") is not None:
                self.scheduler.load_state_dict(st["scheduler"])
                # a resumed run whose config changed train.iters (or stage1_iters) follows the
                # new length: the poly decay is re-planned from the current iteration on
                planned = self.cfg.train.stage1_iters if stage == 1 else self.cfg.train.iters
                if self.scheduler.total != max(int(planned), 1):
                    self.replanned = (self.scheduler.total, int(planned))
                    self.scheduler.total = max(int(planned), 1)
                    self.scheduler.step(self.scheduler.last_iter)
        set_rng_state(st["rng"])

    def latest_checkpoint(self) -> Path | None:
        meta = self.work_dir / "latest.json"
        if meta.is_file():
            p = self.work_dir / json.loads(meta.read_text())["checkpoint"]
            if p.is_file():
                return p
        found = sorted(self.work_dir.glob("ckpt_*.pt"))
        return found[-1] if found else None

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict) -> None:
        line = json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in record.items()})
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "log.jsonl", "a") as f:
            f.write(line + "\n")
        if self.log_fn is not None:
            self.log_fn(line)

    def _window_summary(self) -> dict:
        w = self._window
        out = {"iter": w[-1]["iter"], "stage": w[-1]["stage"], "lr": w[-1]["lr"]}
        for k in ("loss", "nfl", "click", "plain_loss", "multimask_loss", "iou_head_loss", "iou", "plain_iou", "n_clicks", "iter_s", "data_s", "sim_s", "step_s"):
            vals = [r[k] for r in w if r.get(k) is not None]
            if vals:
                out[k] = float(np.mean(vals))
        if "plain_iou" in out:
            out["iou_gain"] = out["iou"] - out["plain_iou"]
        return out

    # ------------------------------------------------------------------ main loop
    def run(self, max_iters: int | None = None, resume: bool | str | Path = True) -> dict:
        """Train until the configured number of iterations (or ``max_iters`` more); returns the
        last window summary.  ``resume``: True = latest checkpoint of the work dir if any; a path
        = the work dir's latest checkpoint if it has one, else that checkpoint (another run's: a
        second training round continues the first, and an interrupted second round resumes from
        its own); False = start from scratch."""
        tc = self.cfg.train
        if resume:
            ck = self.latest_checkpoint()
            if ck is None and isinstance(resume, (str, Path)):
                ck = Path(resume)
                if not ck.is_file():
                    raise FileNotFoundError(f"no checkpoint to continue from: {ck}")
            if ck is not None and Path(ck).is_file():
                self.load_checkpoint(ck)
                self._log({"event": "resumed", "checkpoint": str(ck), "iteration": self.iteration})
                if self.replanned is not None:
                    self._log({"event": "schedule re-planned", "stage_iters_before": self.replanned[0],
                               "stage_iters_now": self.replanned[1]})
        if self.iteration == 0 or not (self.work_dir / "config.json").is_file():
            (self.work_dir).mkdir(parents=True, exist_ok=True)
            (self.work_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        end = self.total_iters if max_iters is None else min(self.total_iters, self.iteration + max_iters)
        summary: dict = {}
        while self.iteration < end:
            it = self.iteration
            rec = self.train_step(it)
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"non-finite loss at iteration {it}: {rec}")
            self._window.append(rec)
            self.iteration = it + 1
            if self.iteration % tc.log_every == 0 or self.iteration == end:
                summary = self._window_summary()
                self._log(summary)
                self._window = []
            if tc.ckpt_every and (self.iteration % tc.ckpt_every == 0 or self.iteration == self.total_iters):
                self.save_checkpoint()
            if tc.val_every and self.val_cache is not None and self.iteration % tc.val_every == 0:
                self._log({"event": "val", "iter": self.iteration, **self.validate()})
        if self.iteration >= self.total_iters:
            info = self.export()
            self._log({"event": "exported", **info})
        return summary

    def export(self, path: str | Path | None = None) -> dict:
        path = Path(path) if path is not None else self.work_dir / REFINER_FILE
        meta = export_metadata(self.cfg, self.iteration, self.base_sha256, self.init_provenance)
        # a refiner trained on a fine-tuned decoder ships that decoder in the same file
        return export_refiner(self.model, path, self.cfg.model, with_decoder=self.trains_decoder, **meta)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, max_objects: int | None = None, max_clicks: int = 20) -> dict:
        """NoC@85/90 and mIoU of the plain and the refined loop on the validation cache (test
        protocol at canvas resolution; an approximation of the harness, for monitoring)."""
        if self.val_cache is None:
            self.val_cache = TrainingCache(self.cfg.cache_path / "val")
            both = self.train_cache.image_keys & self.val_cache.image_keys
            if both:
                raise ValueError(f"validation images in the training cache: {sorted(both)[:5]}")
        return evaluate_cached(self.model, self.val_cache, self.device,
                               max_objects or self.cfg.train.val_max_objects, max_clicks)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
