"""Torch-free defaults shared by the engine, the command line and the widget.

They live here (not next to the code that uses them) so that argument parsers and the
widget can build their choices without importing torch or the model code.
"""

from __future__ import annotations

__all__ = ["DEFAULT_EDGE_FADE", "DEFAULT_IOU_THRESHOLD", "DEFAULT_MODEL", "DEFAULT_SLICE_VOTE", "DEFAULT_ZOOM",
           "PHOTO_MODEL", "PLAIN_MODEL", "REFINE_PRECISIONS"]

#: The model used when none is named (a registry name, see ``napari-focsam weights list``):
#: FocSAM-T micro, the MobileSAM encoder with a mask decoder and focus refiner trained by the
#: project on microscopy (cells in EM and phase contrast, organelles, nuclei), which ships with
#: the package. On natural photos ``focsam_t`` is better and one choice away; ``vit_t`` is the
#: plain MobileSAM loop. All three share one encoder, hence one embedding cache.
DEFAULT_MODEL = "focsam_t_micro"
#: The model for photographs (natural images): FocSAM-T with MobileSAM's own decoder.
PHOTO_MODEL = "focsam_t"
#: The plain model next to the default one (same encoder: embeddings are shared).
PLAIN_MODEL = "vit_t"

#: What ``load_model(refine_precision=...)`` and ``--refine-precision`` accept: "auto" = bf16
#: matrix products on CPUs with native bf16 dot products, float32 elsewhere; "fp32"; "bf16".
REFINE_PRECISIONS = ("auto", "fp32", "bf16")

#: Propagation stop threshold on IoU(previous slice, new slice), chosen by measurement: mean 3D
#: IoU is on a plateau for 0.6-0.75 (cells3d 0.825-0.842, stardist 3D 0.181-0.202); 0.65 is its
#: middle.  Re-exported by :mod:`napari_focsam.core.propagation._plain`.
DEFAULT_IOU_THRESHOLD = 0.65

#: Propagation stop where an object goes out of focus: a run beyond the outermost clicked slices
#: stops at the first slice whose outline (the mean gradient magnitude around the mask) is below
#: this fraction of the object's strongest clicked slice's (see
#: :mod:`napari_focsam.core.propagation._edges`; None or 0: never). Chosen on cells3d, one click
#: per nucleus, default model (0.801 without the rule): 0.15 / 0.2 / 0.25 / 0.3 gave 0.817 /
#: 0.824 / 0.821 / 0.813 (``vit_t``: 0.850 / 0.852 / 0.854 / 0.847 against 0.843).
DEFAULT_EDGE_FADE = 0.2

#: Vote each propagated slice's pixels with its two neighbours' (a pixel is kept where at least
#: two of slices z - 1, z, z + 1 have it; the clicked slices keep their masks)? Each slice is
#: decoded on its own, so its outline wobbles around the object's surface from slice to slice.
#: Measured with the 3D correction protocol (``benchmarks/bench_volume_interactive.py``; table in
#: ``docs/microscopy``). Off for the frames of a time-lapse, whose objects move between frames.
DEFAULT_SLICE_VOTE = True

#: Decode small objects of a 2D image on an enlarged crop (``core.prompting.ZoomedObject``): an
#: object at most 48 canvas pixels across after its first click, on an image of at least 768
#: pixels, is decoded on a crop the encoder sees 2x enlarged (one more encoder pass per object).
#: On a tiled large image, the crop is 512 full-resolution pixels. Measured with the microscopy
#: benchmark (``benchmarks/bench_microscopy.py``, ``bench_zoom.py``; tables in ``docs/microscopy``).
#: Stacks are propagated on whole planes and do not zoom.
DEFAULT_ZOOM = True
