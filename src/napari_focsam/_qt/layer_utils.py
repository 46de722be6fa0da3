"""Small helpers on napari layers: spatial shape, pixel data, transforms, coordinates."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

__all__ = ["OWNER_KEY", "TIME_LABELS", "for_layer", "image_data", "is_time_stack", "output_name", "owner_of",
           "same_transform", "spatial_shape", "transform_kwargs", "volume_data"]

#: Metadata key of an output labels layer made by the widget: the name of the image it labels.
OWNER_KEY = "napari_focsam_image"
#: Axis labels (lower case) that make a stack's first axis time: its slices are frames.
TIME_LABELS = ("t", "time", "frame", "frames")


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """The spatial shape of an image layer ((Y, X) or (Z, Y, X); the RGB axis excluded)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return tuple(int(s) for s in data.shape[: layer.ndim])


def is_time_stack(layer: Any) -> bool:
    """True when the stack axis of a 3D image layer is labelled as time (:data:`TIME_LABELS`,
    e.g. ``add_image(movie, axis_labels=("t", "y", "x"))``): its slices are frames (propagated
    without the vote between slices); False for None."""
    if layer is None:
        return False
    labels = tuple(getattr(layer, "axis_labels", ()) or ())
    return len(spatial_shape(layer)) == 3 and bool(labels) and str(labels[0]).strip().lower() in TIME_LABELS


def for_layer(stops: dict, layer: Any) -> dict:
    """The propagation's settings ``stops`` (``propagate``'s keyword arguments) for image
    ``layer``: no vote between the frames of a time stack (:func:`is_time_stack`)."""
    return {**stops, "vote": bool(stops.get("vote", True)) and not is_time_stack(layer)}


def image_data(layer: Image) -> Any:
    """The full-resolution array of an image layer."""
    return layer.data[0] if layer.multiscale else layer.data


def volume_data(layer: Image) -> Any:
    """What the engine's ``ImageVolume`` gets for an image layer: the list of levels (finest first)
    of a multiscale layer, else the layer's array as is (a dask or zarr array stays lazy)."""
    return list(layer.data) if layer.multiscale else layer.data


def transform_kwargs(layer: Any) -> dict:
    """Keyword arguments that give a new layer the transform of ``layer``."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
        "units": tuple(layer.units),
    }


def same_transform(a: Any, b: Any) -> bool:
    """True when layers ``a`` and ``b`` map data to world coordinates the same way (False for
    layers with different numbers of dimensions)."""
    if np.shape(a.scale) != np.shape(b.scale):
        return False
    return bool(np.allclose(a.scale, b.scale) and np.allclose(a.translate, b.translate)
                and np.allclose(a.affine.affine_matrix, b.affine.affine_matrix)
                and np.allclose(a.rotate, b.rotate) and np.allclose(a.shear, b.shear))


def output_name(image: Any) -> str:
    """The name of a new output labels layer for ``image``: named after the image."""
    return f"{image.name} labels"


def owner_of(layer: Any) -> str | None:
    """The name of the image whose objects the output labels ``layer`` holds (None: not known)."""
    meta = getattr(layer, "metadata", None)
    owner = meta.get(OWNER_KEY) if isinstance(meta, dict) else None
    return owner if isinstance(owner, str) else None
