"""Propagation: an object carried slice by slice through a stack, its anchors and its z-profile.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_anchors": ["AnchorHistory", "inside", "prior_prompt"],
        "_context": ["fits_neighbours", "neighbour_answer"],
        "_plain": ["DEFAULT_MULTIMASK", "DEFAULT_PROMPT", "interior_point", "MIN_MASK_PIXELS",
            "next_slice", "PlaneMasks", "PROMPT_MODES", "propagate", "PropagationResult"],
        "_runs": ["DIRECTIONS"],
        "_profile": ["object_profile", "ObjectProfile", "repropagate"],
        "_tiled": ["propagate_tiled", "RegionMasks"],
        "_vote": ["regions_overlap", "sections_overlap", "VOTE_MIN_OVERLAP", "vote_regions", "vote_slices"],
    },
)
