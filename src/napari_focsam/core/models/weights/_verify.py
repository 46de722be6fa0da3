"""Content checks for weights files that have no published SHA-256.

A file with a pinned SHA-256 in the registry is identified by its hash, which is a
stronger check than anything here.  Files without one (the official FocSAM release is
a browser download with no published hash; any user-registered entry without a hash)
must show that they are what their name says before they are accepted by ``weights
import`` or first trusted in the cache:

* :func:`check_checkpoint_structure` -- cheap and torch-free: a complete PyTorch zip
  (its per-member CRC-32s verified) or another known checkpoint header;
* :func:`check_architecture` -- the file is read with the safe reader of
  :mod:`napari_focsam.core.models._checkpoint` (nothing in it is executed), its keys are
  normalised, the architecture they describe is built on the ``meta`` device (no
  memory, so a 2.6 GB ViT-H costs nothing) and every key and tensor shape must match,
  and the architecture must be the entry's ``model_type``.  For a refiner-only entry
  (``base`` set, e.g. FocSAM-T) only ``focus_refiner.`` keys (and those of a fine-tuned
  ``mask_decoder.``) may be present, and they must match the refiner they describe.

torch and the model code are imported inside :func:`check_architecture` only, so that
the registry, ``weights list`` and the argument parsers stay torch-free.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

from ._registry import ModelWeights

__all__ = ["check_architecture", "check_checkpoint", "check_checkpoint_structure"]


def check_checkpoint_structure(path: Path) -> tuple[bool, str]:
    """Cheap completeness check of a checkpoint without a known hash; ``(ok, reason)``.

    PyTorch (>= 1.6) checkpoints are zip archives with per-member CRC-32s:
    a truncated file has no central directory and a damaged one fails
    :meth:`zipfile.ZipFile.testzip`.  Legacy pickle checkpoints and
    safetensors files get a header check only.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if not any(n.endswith("data.pkl") for n in names):
                    return False, "it is a zip archive but not a PyTorch checkpoint"
                bad = zf.testzip()
                if bad is not None:
                    return False, f"it is damaged (CRC error in {bad})"
            return True, ""
        with open(path, "rb") as fh:
            head = fh.read(9)
        if head[:2] == b"\x80\x02":  # legacy torch.save (pickle protocol 2)
            return True, ""
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length + JSON
            n = int.from_bytes(head[:8], "little")
            if 8 + n <= path.stat().st_size:
                return True, ""
            return False, "it is a truncated safetensors file"
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        return False, f"it could not be read ({exc})"
    return False, "it is not a PyTorch checkpoint (truncated or wrong file?)"


def check_architecture(
    path: Path, *, model_type: str = "", refiner_only: bool = False, label: str | None = None
) -> str | None:
    """Whether ``path`` holds the weights of the named architecture; ``None`` or the reason why not.

    Parameters
    ----------
    path : Path
        The candidate file (untrusted: read without running code).
    model_type : str
        The expected architecture (``"focsam_vit_h"``, ``"vit_t"``...); empty accepts any
        supported one.  Ignored with ``refiner_only``.
    refiner_only : bool
        The file must hold only a focus refiner (``focus_refiner.*`` keys), optionally with
        the mask decoder it was trained with (``mask_decoder.*``, SAM's decoder shapes).
    label : str, optional
        How to name the file in the reason (e.g. the user's file for a temporary copy).

    Returns
    -------
    str or None
        ``None`` when every key and tensor shape matches, else a one-line reason.
    """
    reason = _architecture_problem(path, model_type, refiner_only)
    if reason is not None and label is not None:
        reason = reason.replace(str(path), label)
    return reason


def _architecture_problem(path: Path, model_type: str, refiner_only: bool) -> str | None:
    import torch

    from .._checkpoint import (
        HEAD_PREFIXES, CheckpointError, build_model, extract_state_dict, normalize_keys, read_checkpoint,
        refiner_config_from_state_dict, state_dict_differences)

    source = str(path)
    try:
        raw = read_checkpoint(path)
        meta = raw.get("napari_focsam") if isinstance(raw, Mapping) else None
        meta = dict(meta) if isinstance(meta, Mapping) else {}
        sd = normalize_keys(extract_state_dict(raw, source), source)
        if refiner_only:
            others = sorted(k for k in sd if not k.startswith(HEAD_PREFIXES))
            if others:
                return (f"it is not a refiner file (it holds {others[0]}; a refiner file holds "
                        f"focus_refiner.* and optionally a fine-tuned mask_decoder.*)")
            from ....modeling.focus_refiner import FocusRefiner
            from ....modeling.mask_decoder import MaskDecoder

            with torch.device("meta"):
                refiner = FocusRefiner(**refiner_config_from_state_dict(sd, meta))
                decoder = MaskDecoder() if any(k.startswith("mask_decoder.") for k in sd) else None
            own = {f"focus_refiner.{k}": v for k, v in refiner.state_dict().items()}
            what = "focus refiner"
            if decoder is not None:
                own.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
                what = "focus refiner and mask decoder"
        else:
            with torch.device("meta"):
                model = build_model(sd, meta, source)
            if model_type and model.model_type != model_type:
                return f"it holds a {model.model_type} model, not {model_type}"
            own = model.state_dict()
            what = model.model_type
    except CheckpointError as exc:
        return str(exc)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        return f"its tensors do not describe a supported model ({type(exc).__name__}: {exc})"
    problems = state_dict_differences(own, sd, shown=3)
    if problems:
        return f"it does not match the {what} architecture: {problems}"
    return None


def check_checkpoint(entry: ModelWeights, path: Path, *, label: str | None = None) -> str | None:
    """Structure and architecture check of a file for ``entry``; ``None`` or the reason.

    Used for files whose SHA-256 is not pinned in the registry, before they are accepted.
    """
    ok, why = check_checkpoint_structure(path)
    if not ok:
        return why
    return check_architecture(
        path, model_type=entry.model_type, refiner_only=entry.base is not None, label=label
    )
