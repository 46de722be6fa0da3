"""Editing: the widget's Qt-free rules: which prediction runs next, and how objects are pasted into labels.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_paste": ["label_limit", "next_label", "PasteError"],
        "_paste_many": ["batch_groups", "ManyPaste", "plan_new_labels", "set_prompts"],
        "_paste_regions": ["labels_max", "MAX_COVERED", "merge_regions", "plan_many_regions", "plan_paste_regions",
            "region_box", "region_key", "union_bbox"],
        "_predict_queue": ["Eta", "PredictQueue", "split_objects", "Ticket"],
    },
)
