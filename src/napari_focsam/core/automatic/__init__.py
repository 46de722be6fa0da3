"""Automatic segmentation ("segment all"): a grid of point prompts, its parameters, and tiles stitched at their seams.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_params": ["DEFAULT_PRED_IOU_THRESH", "DEFAULT_STABILITY_THRESH", "SegmentAllParams"],
        "_seams": ["resolve_seams", "ScanObject", "SeamStats"],
        "_segment_all": ["segment_all", "SegmentAllResult"],
    },
)
