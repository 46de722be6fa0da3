"""Models: a registry name or a checkpoint path turned into a FocSAM on a device (checkpoints, weights, device, memory).

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_allocator": ["release_memory", "tune_malloc"],
        "_checkpoint": ["CheckpointError", "DECODER_THRESHOLDS", "decoder_thresholds", "load_checkpoint",
            "read_checkpoint", "save_checkpoint", "state_dict_differences"],
        "_compute": ["ComputeThread", "compute_thread"],
        "_device": ["resolve_device"],
        "_load": ["load_model", "model_files", "model_path", "native_bf16_cpu", "refine_matmul_dtype",
            "refine_precision_of"],
    },
)
