"""Torch-free defaults shared by the engine, the command line and the widget.

They live here (not next to the code that uses them) so that argument parsers and the
widget can build their choices without importing torch or the model code.
"""

from __future__ import annotations

__all__ = ["DEFAULT_IOU_THRESHOLD", "DEFAULT_MODEL", "PLAIN_MODEL", "REFINE_PRECISIONS"]

#: The model used when none is named (a registry name, see ``napari-focsam weights list``):
#: FocSAM-T, MobileSAM (``vit_t``) with the project's focus refiner, which ships with the
#: package. ``vit_t`` (the plain MobileSAM loop, same encoder and decoder) is one choice away.
DEFAULT_MODEL = "focsam_t"
#: The plain model next to the default one (same encoder: embeddings are shared).
PLAIN_MODEL = "vit_t"

#: What ``load_model(refine_precision=...)`` and ``--refine-precision`` accept: "auto" = bf16
#: matrix products on CPUs with native bf16 dot products, float32 elsewhere; "fp32"; "bf16".
REFINE_PRECISIONS = ("auto", "fp32", "bf16")

#: Propagation stop threshold on IoU(previous slice, new slice), chosen by measurement: mean 3D
#: IoU is on a plateau for 0.6-0.75 (cells3d 0.825-0.842, stardist 3D 0.181-0.202); 0.65 is its
#: middle.  Re-exported by :mod:`napari_focsam.core.propagation._plain`.
DEFAULT_IOU_THRESHOLD = 0.65
