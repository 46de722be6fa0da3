"""Embeddings: the encoder hand-off and the per-slice (or per-tile) embedding stores, memory and disk.

The names below are this package's public face; its modules (``_name.py``) are private. Names
load lazily on first use (SPEC 1, ``lazy_loader``): importing the package imports no module.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_disk": ["CacheWriteError"],
        "_encode": ["Encoder", "ImageEmbedding", "input_size_for", "preprocess", "PREPROCESS_VERSION"],
        "_factory": ["open_store"],
        "_store": ["EmbeddingStore", "model_id", "SliceEmbedding"],
        "_tiled": ["TiledEmbeddingStore"],
    },
)
