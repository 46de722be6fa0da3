"""Prompting: clicks and boxes, the click loop on cached embeddings, its rules, and masks as regions.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_boxes": ["Box", "checked_box", "parse_box"],
        "_click_rules": ["click_agreement", "click_pixel", "clicks_on_nothing", "follows_click", "mask_iou",
            "live_clicks", "object_click_count", "steadiest_candidate"],
        "_clicks": ["checked_click", "Click"],
        "_later_clicks": ["later_click_rule", "LATER_CLICK_RULES", "LaterClickRule", "PICK_BELOW_IOU", "PickRule",
            "ReuseRule", "SteadyRule"],
        "_predictor": ["ClickState", "FocSAMPredictor", "InteractiveObject", "logits_to_mask", "StepResult",
            "tensor_bytes"],
        "_prompts": ["PlanePrompts", "Prompts", "SliceHistory"],
        "_regions": ["downsample_region", "empty_region", "MaskRegion", "OnPlane", "region_bbox",
            "region_centroid", "region_from_plane", "region_iou", "region_pixels", "region_shape_iou",
            "region_to_plane", "shape_iou", "tile_logits_values", "trimmed", "values_bbox", "values_to_region"],
        "_tiled_history": ["box_at_level", "MAX_MOVES", "next_placement", "TiledHistory"],
        "_zoom": ["CropEmbeddings", "ZOOM_DOUBT", "ZOOM_FIT", "ZOOM_MARGIN", "ZOOM_MAX_GAIN", "ZOOM_MAX_OBJECT",
            "ZOOM_MIN_GAIN", "ZOOM_REUSE_ROOM", "ZOOM_SCALE", "ZoomedObject", "zoom_window"],
    },
)
