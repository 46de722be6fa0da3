"""Outputs: masks and labels images written losslessly and atomically (TIFF, PNG, NumPy, zarr, OME-Zarr).

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_labels_writer": ["check_labels_output", "labels_dtype", "paint_objects_into", "write_labels_array",
            "write_object_labels"],
        "_mask_files": ["check_mask_path", "formats_help", "MASK_FORMATS", "MASK_WRITERS", "MaskFormat",
            "write_mask", "write_mask_regions"],
        "_ome_labels": ["check_labels_into", "is_ome_zarr", "write_labels_data", "write_ome_labels",
            "write_ome_labels_into"],
    },
)
