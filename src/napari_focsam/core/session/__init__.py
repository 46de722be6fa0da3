"""Sessions: the interactive engine (images, embeddings, objects, propagation) and stacks in time.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_objects": ["SegmentedObject"],
        "_session": ["Session"],
        "_timelapse": ["check_axes", "TimeLapse", "tracks_table", "write_tracks_csv"],
    },
)
