"""Images: planes of a stack or a pyramid read lazily, their contrast for the encoder, encoder tiles,
and the image reader.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_contrast": ["to_rgb_uint8"],
        "_pyramid": ["as_levels", "ImageReadError", "ngff_view_of", "TILING_MIN_SIDE"],
        "_reading": ["open_tiff_lazily", "read_image", "TIFF_SUFFIXES"],
        "_tiles": ["axis_starts", "check_tiling", "DEFAULT_HALO", "DEFAULT_TILE_SIZE", "EDGE_MARGIN", "TileGrid",
            "TileKey"],
        "_volume": ["has_channel_axis", "ImageVolume"],
    },
)
