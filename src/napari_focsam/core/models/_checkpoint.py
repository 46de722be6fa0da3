"""Strict loading of SAM, MobileSAM, official FocSAM (mmengine) and napari-focsam checkpoints.

The model type is detected from key names and tensor shapes, the key names are
mapped onto :class:`~napari_focsam.modeling.focsam.FocSAM`, and every key must be
used and every parameter filled: a wrong, truncated or unknown file raises one
:class:`CheckpointError` that names the file and what is missing or unexpected.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ...modeling.common import count_indices
from ...modeling.encoders import ENCODERS, encoder_from_state_dict, identify_encoder
from ...modeling.focsam import FocSAM


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says which file and why."""


# --------------------------------------------------------------------------- reading

#: Classes of training metadata that an official FocSAM (mmengine) checkpoint may carry next to
#: its ``state_dict``: message-hub history buffers, config dicts and numpy arrays/scalars. They
#: are exact ``module.qualname`` strings; each one is rebuilt as an inert :class:`OpaqueMetadata`
#: (nothing of the named class is imported or called). Any other global refuses the file.
METADATA_GLOBALS = (
    "mmengine.logging.history_buffer.HistoryBuffer",
    "mmengine.logging.message_hub.MessageHub",
    "mmengine.config.config.ConfigDict",
    "mmengine.config.config.Config",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
    "collections.defaultdict",
)


class OpaqueMetadata:
    """Inert stand-in for a metadata object of an allowed foreign class; it keeps nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "OpaqueMetadata":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "OpaqueMetadata()"


def _refuse_legacy(path: Path) -> None:
    """Raise for files that are not torch zip archives (legacy pickles can run code)."""
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not head:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"refusing checkpoint {path}: it is a legacy (non-zip) pickle file, which can run code "
            "when loaded; re-save it with torch.save() (PyTorch >= 1.6) in an environment you trust"
        )
    raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint")


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """Load a checkpoint file's top-level object on the CPU without running any code from it.

    Only PyTorch zip archives are read, always with ``torch.load(weights_only=True)``: tensors,
    plain containers and numbers. The training metadata of official FocSAM (mmengine) files
    may name the exact classes in :data:`METADATA_GLOBALS`; those become
    :class:`OpaqueMetadata`. A file that names any other class or function, or a legacy
    pickle, raises :class:`CheckpointError` and nothing in it is executed.

    Parameters
    ----------
    path : str or Path
        The checkpoint file (untrusted).

    Returns
    -------
    Mapping
        The unpickled top-level object (usually a dict holding tensors).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _refuse_legacy(path)
    allowed = [(OpaqueMetadata, name) for name in METADATA_GLOBALS]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it names {found.group(1)}" if found else str(exc).splitlines()[0]
        raise CheckpointError(
            f"refusing checkpoint {path}: {what}, which is not a tensor, a plain container or known "
            "checkpoint metadata (loading it could run code)"
        ) from None
    except Exception as exc:  # truncated zip, missing records, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint ({exc})"
        ) from exc


def extract_state_dict(obj: Any, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` mapping inside a raw, ``state_dict`` or ``model`` wrapper."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            out = {}
            for k, v in tensors.items():
                out[k[len("module."):] if k.startswith("module.") else k] = v
            return out
    raise CheckpointError(f"{source} holds no state dict of tensors (found {type(obj).__name__})")


# --------------------------------------------------------------------------- key mapping

_FOCSAM_RENAMES = [
    (r"^backbone\.", "image_encoder."),
    (r"^neck\.pos_embed_layer\.", "prompt_encoder.pe_layer."),
    (r"^neck\.point_embeds\.", "prompt_encoder.point_embeddings."),
    (r"^neck\.", "prompt_encoder."),
    (r"^decode_head\.", "mask_decoder."),
    (r"^refine_head\.", "focus_refiner."),
]
_OUR_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.", "focus_refiner.")
#: what a refiner file given with a base model may hold: the refiner, and a decoder fine-tuned
#: with it (which then replaces the base's decoder)
HEAD_PREFIXES = ("focus_refiner.", "mask_decoder.")


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """'focsam_mmengine' (backbone./neck./decode_head./refine_head.) or 'sam' (image_encoder./...)."""
    if any(k.startswith("backbone.") for k in sd) or any(k.startswith("decode_head.") for k in sd):
        return "focsam_mmengine"
    if any(k.startswith(_OUR_PREFIXES) for k in sd):
        return "sam"
    return "unknown"


def normalize_keys(sd: Mapping[str, torch.Tensor], source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Map any supported layout onto FocSAM's own key names."""
    layout = detect_layout(sd)
    if layout == "unknown":
        sample = ", ".join(sorted(sd)[:5])
        raise CheckpointError(
            f"{source} is not a SAM, MobileSAM or FocSAM checkpoint: no image_encoder./backbone. keys "
            f"(first keys: {sample})"
        )
    if layout == "sam":
        return dict(sd)
    out = {}
    for k, v in sd.items():
        new = k
        for pattern, repl in _FOCSAM_RENAMES:
            if re.match(pattern, new):
                new = re.sub(pattern, repl, new, count=1)
                break
        out[new] = v
    return out


# --------------------------------------------------------------------------- architecture detection


def refiner_config_from_state_dict(sd: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> dict:
    """FocusRefiner constructor arguments from its keys (heads from metadata, else the official 8)."""
    depth = count_indices(sd, r"focus_refiner\.blocks\.(\d+)\.")
    embed_dim = sd["focus_refiner.embed_proj.weight"].shape[0]
    hidden = sd["focus_refiner.blocks.0.img2cls.mlp.0.weight"].shape[0]
    cfg = {"embed_dim": embed_dim, "depth": depth, "mlp_ratio": hidden / embed_dim, "num_heads": 8}
    if meta and isinstance(meta.get("refiner_config"), Mapping):
        cfg.update(meta["refiner_config"])
    return cfg


def build_model(sd: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                source: str = "<checkpoint>") -> FocSAM:
    """An un-initialised FocSAM whose architecture matches the (normalised) state dict."""
    try:
        encoder = encoder_from_state_dict(sd)
        if encoder is None:
            expected = " or ".join(f"{spec.marker} ({spec.name})" for spec in ENCODERS)
            raise CheckpointError(f"{source}: no image encoder found (expected {expected})")
        refiner = None
        if any(k.startswith("focus_refiner.") for k in sd):
            from ...modeling.focus_refiner import FocusRefiner

            refiner = FocusRefiner(**refiner_config_from_state_dict(sd, meta))
    except KeyError as exc:
        raise CheckpointError(f"{source} is incomplete: missing key {exc.args[0]}") from exc
    model_type = identify_encoder(encoder)
    if refiner is not None:
        model_type = f"focsam_{model_type}"
    channel_order = (meta or {}).get("channel_order") or ("bgr" if (meta or {}).get("layout") == "focsam_mmengine" else "rgb")
    return FocSAM(encoder, focus_refiner=refiner, model_type=model_type, channel_order=channel_order)


def state_dict_differences(own: Mapping[str, Any], found: Mapping[str, Any], shown: int = 6) -> str | None:
    """What differs between an expected and a found ``name -> tensor`` map, in one line.

    Parameters
    ----------
    own : Mapping
        The model's state dict (tensors, possibly on the meta device).
    found : Mapping
        The file's (normalised) state dict.
    shown : int
        How many names to list per kind of difference.

    Returns
    -------
    str or None
        ``"missing N keys: ...; unexpected N keys: ...; N shape mismatches: ..."`` or None when the
        key sets and every shape agree.
    """
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    mismatched = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(found)) if tuple(own[k].shape) != tuple(found[k].shape)]

    def show(items: list[str]) -> str:
        head = ", ".join(items[:shown])
        return head + (f", ... ({len(items)} in all)" if len(items) > shown else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {show(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {show(mismatched)}")
    return "; ".join(parts) or None


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "<checkpoint>") -> None:
    """Copy ``sd`` into ``model``; any missing, unexpected or mis-shaped key raises CheckpointError."""
    problems = state_dict_differences(model.state_dict(), sd)
    if problems:
        raise CheckpointError(f"{source} does not match the {getattr(model, 'model_type', 'model')} "
                              f"architecture; {problems}")
    model.load_state_dict(sd, strict=True)


def load_checkpoint(path: str | Path, *, refiner: str | Path | None = None,
                    channel_order: str | None = None, device: str | torch.device = "cpu") -> FocSAM:
    """Build and strictly load a FocSAM from a checkpoint file.

    Supported: official SAM ``sam_vit_{b,l,h}_*.pth``, MobileSAM ``mobile_sam.pt``, the
    official FocSAM mmengine checkpoint (``state_dict`` with ``backbone.``/``neck.``/
    ``decode_head.``/``refine_head.``) and napari-focsam's own files (optionally a
    refiner file given as ``refiner``, trained for that base model: the refiner, and when it
    was trained with a fine-tuned decoder that decoder too, which replaces the base's).
    """
    path = Path(path)
    source = str(path)
    raw = read_checkpoint(path)
    meta = dict(raw.get("napari_focsam", {})) if isinstance(raw, Mapping) else {}
    sd = extract_state_dict(raw, source)
    meta.setdefault("layout", detect_layout(sd))
    sd = normalize_keys(sd, source)
    if refiner is not None:
        rraw = read_checkpoint(refiner)
        rmeta = dict(rraw.get("napari_focsam", {})) if isinstance(rraw, Mapping) else {}
        rsd = normalize_keys(extract_state_dict(rraw, str(refiner)), str(refiner))
        not_refiner = [k for k in rsd if not k.startswith(HEAD_PREFIXES)]
        if not_refiner:
            raise CheckpointError(f"{refiner} is not a refiner file (found {not_refiner[0]}; a refiner "
                                  f"file holds focus_refiner.* and optionally mask_decoder.* only)")
        if not any(k.startswith("focus_refiner.") for k in rsd):
            raise CheckpointError(f"{refiner} is not a refiner file (no focus_refiner.* weights)")
        sd.update(rsd)
        meta.update(rmeta)
    model = build_model(sd, meta, source)
    if channel_order is not None:
        model.channel_order = channel_order
    load_state_dict_strict(model, sd, source)
    model.segment_all_thresholds = decoder_thresholds(meta, "segment_all", DECODER_THRESHOLDS["segment_all"])
    model.propagation_thresholds = decoder_thresholds(meta, "propagation", DECODER_THRESHOLDS["propagation"])
    return model.to(device).eval()


#: Thresholds a checkpoint may carry for its own decoder (metadata section -> names, each a
#: number in [0, 1]): segment all's filters and the propagation's floor on the predicted IoU.
DECODER_THRESHOLDS = {"segment_all": ("pred_iou_thresh", "stability_thresh"), "propagation": ("min_pred_iou",)}


def decoder_thresholds(meta: Mapping[str, Any], section: str, names: tuple[str, ...]) -> dict[str, float] | None:
    """Thresholds calibrated for a checkpoint's decoder, from its metadata's ``section``.

    ``"segment_all"`` (``pred_iou_thresh``, ``stability_thresh``) and ``"propagation"``
    (``min_pred_iou``): only these names with numbers in [0, 1] are taken (the file is
    untrusted); None when there are none.
    """
    raw = meta.get(section) if isinstance(meta, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    out = {k: float(raw[k]) for k in names
           if isinstance(raw.get(k), (int, float)) and not isinstance(raw.get(k), bool) and 0.0 <= raw[k] <= 1.0}
    return out or None


def save_checkpoint(model: FocSAM, path: str | Path, *, only_refiner: bool = False, **meta: Any) -> None:
    """Save napari-focsam's own format: ``{"state_dict": ..., "napari_focsam": meta}``."""
    sd = model.state_dict()
    if only_refiner:
        sd = OrderedDict((k, v) for k, v in sd.items() if k.startswith("focus_refiner."))
    meta.setdefault("channel_order", model.channel_order)
    meta.setdefault("model_type", model.model_type)
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "napari_focsam": meta}, buf)
    Path(path).write_bytes(buf.getvalue())
