"""Clusters: precompute, batch segmentation and whole scans on dask.distributed, and their labels
written chunk by chunk.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_distributed": ["connect", "ImageSource", "open_image", "precompute_distributed", "read_seeds",
            "segment_seeds"],
        "_scan": ["ScanResult", "segment_all_scan", "segment_all_tiled"],
        "_scan_labels": ["write_scan_labels", "write_scan_labels_into"],
    },
)
