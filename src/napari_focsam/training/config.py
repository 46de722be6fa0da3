# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""Training configuration: plain dataclasses read from a JSON (or, if PyYAML is installed, YAML) file.

A config file is a nested mapping with the sections below; every key is optional and
falls back to the dataclass default.  Unknown keys raise, so a typo never trains the
wrong model silently.  Strings may use ``$VAR`` / ``${VAR}`` environment variables and
``~``; relative paths are resolved against the config file's folder.

    {
      "work_dir": "${FOCSAM_TRAIN_DIR}/runs/focsam_t",          # checkpoints, logs, the exported refiner
      "data":  {...DataConfig...},           # data root, cache folder, train/val sources
      "model": {...ModelConfig...},          # base weights and refiner size
      "sim":   {...SimConfig...},            # click simulation (design §5.1)
      "loss":  {...LossConfig...},
      "optim": {...OptimConfig...},          # AdamW, warm-up + poly decay
      "train": {...TrainConfig...},          # iterations, batch, seed, device, stage 1
      "export": {...ExportConfig...}         # calibrated thresholds written into the exported file
    }

Image selection (``SourceConfig.images``): ``"all"``, ``"first:N"``, ``"last:N"``,
``"range:A:B"`` (python slice of the ordered ids) or an explicit list of image ids.  Ids are
ordered **naturally** (``dna-2`` before ``dna-10``), so ``coelho2009_gnf`` ``first:32`` is
``dna-0 .. dna-30, dna-32`` and ``last:16`` is ``dna-33 .. dna-49`` (the folder has no
``dna-31`` / ``dna-43``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ExportConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SimConfig",
    "SourceConfig",
    "TrainConfig",
    "TrainingConfig",
    "load_config",
]


@dataclass
class AugmentConfig:
    """Geometric augmentations of the embedding cache (applied identically to image and masks).

    ``copies``: number of cached versions of each image; copy 0 is always the plain image,
    copies 1.. are random draws.  SAM resizes every image so that its longest side fills
    the 1024 canvas, so "scale" is realised as a zoom-in crop: each side of the crop is a
    fraction drawn from U(crop_scale) of the image side (independently, which also jitters
    the aspect ratio), at a random position, and the crop is then resized to the canvas.
    """

    copies: int = 4
    hflip: float = 0.5  # probability
    vflip: float = 0.0
    rot90: float = 0.0  # probability of a random quarter turn (1, 2 or 3)
    crop_prob: float = 0.7
    crop_scale: tuple[float, float] = (0.5, 1.0)
    #: a crop must keep this fraction of an object's area for the object to be kept
    min_keep_fraction: float = 0.5
    #: photometric changes of the image only (copies 1.. only), each applied with
    #: ``photometric_prob``: contrast gain ``exp(U(-contrast, contrast))`` about the mean,
    #: brightness shift ``U(-brightness, brightness) * 255``, gamma ``exp(U(log gamma_range))``
    photometric_prob: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma_range: tuple[float, float] = (1.0, 1.0)
    #: microscopy (drawn after the changes above, only when set, so older configs give the
    #: same copies): probability of an intensity inversion (``255 - x``: dark cells on a bright
    #: field and the reverse), a Gaussian blur of sigma ``U(blur_sigma)`` pixels (with
    #: ``photometric_prob``), additive Gaussian noise of std ``U(0, noise_std) * 255``
    #: (with ``photometric_prob``)
    invert: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    noise_std: float = 0.0
    #: probability of a DIC-like relief (drawn last, only when set): the image becomes its
    #: derivative along a random shear direction on a grey background, as Nomarski DIC shows
    #: the gradient of the optical path (see :func:`~.augment.dic_relief`)
    relief: float = 0.0
    #: scale: copies ``zoom_from`` .. always crop, with each side a fraction ``U(zoom_scale)``
    #: of the image's (a stronger zoom-in than ``crop_scale``: objects several times larger
    #: on the canvas, as a small image or a large nucleus gives); None: no zoom copies
    zoom_from: int | None = None
    zoom_scale: tuple[float, float] = (0.15, 0.4)
    #: the input's dynamic range: copies ``range_from`` .. (not zoom copies) end with an
    #: intensity range the product meets in users' files (see :func:`~.augment.dynamic_range`):
    #: a dim 8-bit image, used as is, or a 16-bit one with bright outliers, stretched by the
    #: product's own robust percentiles; None: no such copies
    range_from: int | None = None

    def is_range_copy(self, copy: int) -> bool:
        """Whether augmented copy ``copy`` is a dynamic-range copy (see ``range_from``)."""
        return self.range_from is not None and copy >= self.range_from > 0

    def is_zoom_copy(self, copy: int) -> bool:
        """Whether augmented copy ``copy`` is a zoom copy (see ``zoom_from``; copies from
        ``range_from`` on are not)."""
        return self.zoom_from is not None and copy >= self.zoom_from > 0 and not self.is_range_copy(copy)


@dataclass
class SourceConfig:
    """One training or validation dataset (see ``evaluation.datasets.read_dataset``)."""

    dataset: str
    images: Any = "all"  # "all" | "first:N" | "last:N" | "range:A:B" | [ids]
    group: str = "natural"  # batches are drawn per group; groups carry their own click gammas
    weight: float = 1.0  # sampling weight of the source inside its group
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: objects smaller than this many pixels on the 1024 canvas are not cached
    min_object_pixels: int = 64
    max_objects_per_image: int | None = None


@dataclass
class DataConfig:
    root: str = "${FOCSAM_DATA}"  # folder with iseg/ and micro/ (../shared/data)
    cache_dir: str = "${FOCSAM_TRAIN_DIR}/cache/vit_t"  # embedding cache (train/ and val/ below)
    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    #: sampling probability of each group (normalised); groups missing here get weight 1
    group_weights: dict[str, float] = field(default_factory=dict)
    #: cache building: encoder batch (1 is fine on a CPU) and encoder device
    cache_device: str = "auto"
    cache_seed: int = 1234
    #: allow training sources licensed for research only (``data.RESEARCH_ONLY``); the export
    #: is then marked ``research_only`` and must not ship with the package
    research_only: bool = False


@dataclass
class ModelConfig:
    base: str = "vit_t"  # registry name or checkpoint path of the frozen SAM / MobileSAM
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    window_size: int = 16
    shift_size: int = 8
    expand_ratio: float = 1.4  # test-time box expansion
    #: "identity": embed_proj = I and every block's last residual scale (cls2img.gamma2) = 0,
    #: so the untrained refiner returns its input and FocSAM-T starts as the plain loop;
    #: "default": the official (random) initialisation.
    init: str = "identity"
    #: fine-tune: start from the weights of this exported refiner file (``focsam_t_refiner.pt``
    #: layout; its ``refiner_config`` must match) instead of ``init``; a head file (one that also
    #: holds ``mask_decoder.*``, e.g. ``focsam_t_micro.pt``) sets the decoder too; a relative
    #: path is read from the working folder; None = train from ``init``
    init_from: str | None = None


@dataclass
class SimConfig:
    """Stage-2 click simulation (design §5.1)."""

    max_num_clicks: int = 20  # n ~ P(k) ∝ gamma^k, k = 0..max_num_clicks
    gamma: dict[str, float] = field(default_factory=lambda: {"natural": 0.6, "micro": 0.6})
    #: refine_step ~ P(k) ∝ gamma_r^k, k = 0..n
    gamma_refine: dict[str, float] = field(default_factory=lambda: {"natural": 0.6, "micro": 0.6})
    inner_k: float = 1.7
    first_inner_k: float = 1.0
    expand_ratio_range: tuple[float, float] = (1.0, 1.4)
    #: probability that a batch refines at FocSAM's refine click, the 2nd (``refine_step = 1``:
    #: the coarse pass and the refiner see the first two clicks) instead of drawing it from
    #: ``gamma_refine`` (whose most frequent draw, ``refine_step = 0``, is the product's
    #: default refine at the 1st click); the ``n - 1`` later clicks are then all made on the
    #: refined embedding
    refine_at_click2_prob: float = 0.0
    #: probability that a batch is exactly FocSAM's second click (``n = 1``,
    #: ``refine_step = 1``): the loss is on the refined prediction after two clicks, which
    #: trains the second click of objects that are already good after one
    second_click_prob: float = 0.0


@dataclass
class LossConfig:
    alpha: float = 0.5
    gamma: float = 2.0
    nfl_weight: float = 1.0
    click_weight: float = 1.0
    #: stage 2 with a trained decoder (``train.decoder_lr > 0``): weight of the NFL of the
    #: decoder on the *original* embedding with the same final prompts, so that the decoder
    #: stays good where the product decodes E0 too (the coarse pass at the refine click, the
    #: ``steady`` rule's second candidate)
    plain_weight: float = 0.0
    #: with a trained decoder: weight of SAM's multimask loss (the best of the three candidates
    #: of the first click alone on the original embedding; the 3D propagation decodes one
    #: interior point this way), at the 256x256 logit grid
    multimask_weight: float = 0.0
    #: with a trained decoder: weight of the IoU-prediction loss (MSE against each mask's real
    #: IoU, for the single mask and the three candidates); segment-all and the propagation read
    #: the predicted IoU
    iou_weight: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    #: no weight decay on biases, norms and LayerScale vectors (1-D parameters)
    no_decay_1d: bool = True
    warmup_iters: int = 1500
    warmup_factor: float = 1e-6
    power: float = 1.0  # poly decay after warm-up (1.0 = linear)
    min_lr: float = 0.0
    grad_clip: float | None = 1.0


@dataclass
class TrainConfig:
    iters: int = 20000
    batch_size: int = 4
    seed: int = 42
    device: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 20
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    val_every: int = 0  # 0: no validation during training
    val_max_objects: int = 50
    deterministic: bool = True
    #: optional stage 1: fine-tune the decoder for this many iterations first (0 = off).  A
    #: fine-tuned decoder makes the refiner file depend on that decoder, so the exported
    #: file is then a full model, not a refiner-only file for the stock base weights.
    stage1_iters: int = 0
    stage1_lr: float = 1e-5
    #: stage 2 trains the mask decoder together with the refiner at this learning rate (same
    #: warm-up and decay); 0 keeps it frozen.  The export then holds the decoder too (a head
    #: file for the stock encoder, see :func:`~.export.export_refiner`)
    decoder_lr: float = 0.0
    #: "bf16": run the simulation and the gradient pass under ``torch.autocast`` in bfloat16
    #: (fast on CPUs with AMX / AVX-512 BF16 and on GPUs); None: float32
    autocast: str | None = None


@dataclass
class ExportConfig:
    """Thresholds calibrated for the trained decoder, written into the exported file's metadata
    and read back by the loader (:data:`~napari_focsam.core.models.DECODER_THRESHOLDS`):
    ``segment_all`` (``pred_iou_thresh``, ``stability_thresh``) and ``propagation``
    (``min_pred_iou``, the floor a propagated slice's predicted IoU must reach). Empty: the
    file carries none and the product's defaults apply."""

    segment_all: dict[str, float] = field(default_factory=dict)
    propagation: dict[str, float] = field(default_factory=dict)

    def metadata(self) -> dict[str, dict[str, float]]:
        """The non-empty sections, as the export's metadata holds them."""
        return {k: dict(v) for k, v in (("segment_all", self.segment_all), ("propagation", self.propagation)) if v}


@dataclass
class TrainingConfig:
    work_dir: str = "${FOCSAM_TRAIN_DIR}/runs/focsam_t"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    #: folder the relative paths refer to (the working directory at load time); not read from files
    base_dir: str = "."

    # ------------------------------------------------------------------ paths
    def path(self, value: str) -> Path:
        """Expand variables and ``~`` and resolve a relative path against ``base_dir``."""
        p = Path(os.path.expanduser(_expand(value)))
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def work_path(self) -> Path:
        return self.path(self.work_dir)

    @property
    def cache_path(self) -> Path:
        return self.path(self.data.cache_dir)

    @property
    def data_root(self) -> Path:
        return self.path(self.data.root)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("base_dir", None)
        return d


#: Environment variables with a default when unset (relative to the repository's parent).
ENV_DEFAULTS = {"FOCSAM_DATA": "shared/data", "FOCSAM_TRAIN_DIR": "scratch/focsam_train"}


def _repo_root() -> Path:
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def _expand(value: str) -> str:
    """``os.path.expandvars`` with defaults for FOCSAM_DATA (``../shared/data``) and
    FOCSAM_TRAIN_DIR (``../scratch/focsam_train``), both next to the repository."""
    for var, rel in ENV_DEFAULTS.items():
        if var in value and var not in os.environ:
            default = str(_repo_root().parent / rel)
            value = value.replace("${%s}" % var, default).replace("$" + var, default)
    return os.path.expandvars(value)


# ---------------------------------------------------------------------- building from mappings

def _build(cls, data: Any, where: str):
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(cls, name, value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


_NESTED = {
    (TrainingConfig, "data"): DataConfig,
    (TrainingConfig, "model"): ModelConfig,
    (TrainingConfig, "sim"): SimConfig,
    (TrainingConfig, "loss"): LossConfig,
    (TrainingConfig, "optim"): OptimConfig,
    (TrainingConfig, "train"): TrainConfig,
    (TrainingConfig, "export"): ExportConfig,
    (SourceConfig, "augment"): AugmentConfig,
}
_TUPLES = {"crop_scale", "betas", "expand_ratio_range", "gamma_range", "blur_sigma"}


def _convert(cls, name: str, value: Any, where: str):
    sub = _NESTED.get((cls, name))
    if sub is not None:
        return _build(sub, value, where)
    if cls is DataConfig and name in ("train", "val"):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list of sources")
        return [_build(SourceConfig, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if name in _TUPLES and value is not None:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{where}: expected a pair of numbers")
        return (float(value[0]), float(value[1]))
    return value


def config_from_dict(data: Mapping, base_dir: str | Path = ".") -> TrainingConfig:
    cfg = _build(TrainingConfig, {k: v for k, v in data.items() if k != "base_dir"}, "config")
    cfg.base_dir = str(base_dir)
    validate(cfg)
    return cfg


def validate(cfg: TrainingConfig) -> None:
    """Cheap consistency checks (the split check against real image ids is in ``data``)."""
    if cfg.model.depth < 1:
        raise ValueError("model.depth must be >= 1")
    if cfg.model.init not in ("identity", "default"):
        raise ValueError("model.init must be 'identity' or 'default'")
    if cfg.train.batch_size < 1 or cfg.train.iters < 0:
        raise ValueError("train.batch_size must be >= 1 and train.iters >= 0")
    if cfg.sim.inner_k < 1 or cfg.sim.first_inner_k < 1:
        raise ValueError("sim.inner_k and sim.first_inner_k must be >= 1")
    for src in cfg.data.train + cfg.data.val:
        lo, hi = src.augment.crop_scale
        zlo, zhi = src.augment.zoom_scale
        if not 0 < zlo <= zhi <= 1 or (src.augment.zoom_from is not None and src.augment.zoom_from < 1):
            raise ValueError(f"{src.dataset}: augment.zoom_scale must satisfy 0 < lo <= hi <= 1 and zoom_from >= 1")
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"{src.dataset}: augment.crop_scale must satisfy 0 < lo <= hi <= 1")
        if src.augment.range_from is not None and src.augment.range_from < 1:
            raise ValueError(f"{src.dataset}: augment.range_from must be >= 1 (copy 0 is the plain image)")
        if src.augment.copies < 1:
            raise ValueError(f"{src.dataset}: augment.copies must be >= 1")
        glo, ghi = src.augment.gamma_range
        if not 0 < glo <= ghi:
            raise ValueError(f"{src.dataset}: augment.gamma_range must satisfy 0 < lo <= hi")
        blo, bhi = src.augment.blur_sigma
        if not 0 <= blo <= bhi or not 0 <= src.augment.invert <= 1 or src.augment.noise_std < 0 \
                or not 0 <= src.augment.relief <= 1:
            raise ValueError(f"{src.dataset}: augment.blur_sigma must satisfy 0 <= lo <= hi, "
                             f"augment.invert and augment.relief be in [0, 1] and augment.noise_std >= 0")
    for name in ("refine_at_click2_prob", "second_click_prob"):
        if not 0.0 <= getattr(cfg.sim, name) <= 1.0:
            raise ValueError(f"sim.{name} must be in [0, 1]")
    if cfg.sim.refine_at_click2_prob + cfg.sim.second_click_prob > 1.0:
        raise ValueError("sim.refine_at_click2_prob + sim.second_click_prob must be <= 1")
    heads = ("plain_weight", "multimask_weight", "iou_weight")
    if cfg.train.decoder_lr < 0 or any(getattr(cfg.loss, k) < 0 for k in heads):
        raise ValueError("train.decoder_lr and loss.plain_weight / multimask_weight / iou_weight must be >= 0")
    for k in heads:
        if getattr(cfg.loss, k) and not cfg.train.decoder_lr:
            raise ValueError(f"loss.{k} trains the decoder: set train.decoder_lr > 0 too")
    if cfg.train.autocast not in (None, "bf16"):
        raise ValueError(f"train.autocast must be null or 'bf16', got {cfg.train.autocast!r}")
    from ..core.models import DECODER_THRESHOLDS, decoder_thresholds

    for section, names in DECODER_THRESHOLDS.items():
        values = getattr(cfg.export, section)
        if not isinstance(values, Mapping):
            raise ValueError(f"export.{section} must be a mapping of {', '.join(names)} to numbers")
        read = decoder_thresholds({section: values}, section, names) or {}  # what the loader will take
        for k, v in values.items():
            if k not in names:
                raise ValueError(f"export.{section}: unknown threshold {k!r}; known: {', '.join(names)}")
            if k not in read:
                raise ValueError(f"export.{section}.{k} must be a number in [0, 1], got {v!r}")
    groups = {s.group for s in cfg.data.train}
    for g in groups:
        for table, name in ((cfg.sim.gamma, "sim.gamma"), (cfg.sim.gamma_refine, "sim.gamma_refine")):
            if g not in table:
                raise ValueError(f"{name} has no entry for group {g!r}")


def read_mapping(path: str | Path) -> dict:
    """Read a JSON file, or a YAML file when PyYAML is installed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML configs need PyYAML (pip install pyyaml); use JSON") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return data


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainingConfig:
    """Read a config file; ``overrides`` maps dotted keys (``"train.iters"``) to values."""
    path = Path(path)
    data = read_mapping(path)
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config_from_dict(data, base_dir=Path.cwd())
