"""The drawn training images (``synthetic_cells``): reproducible, disjoint objects, each style
showing what its modality shows; and the licence rule for the shipped model's training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_focsam.training.data import entry_digest, read_training_dataset
from napari_focsam.training.synthetic import (MIN_AREA, MITOSIS_STYLES, NEUROPIL_STYLES, ORGANELLE_STYLES, SIZE,
                                              STYLES, render)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("style", STYLES + ORGANELLE_STYLES + NEUROPIL_STYLES + MITOSIS_STYLES)
def test_every_style_draws_the_same_image_from_the_same_seed_with_disjoint_objects(style):
    img, labels = render(style, 3, seed=5)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 2])  # grey
    assert img.std() > 10  # not blank
    again, labels_again = render(style, 3, seed=5)
    assert np.array_equal(img, again) and np.array_equal(labels, labels_again)
    other, _ = render(style, 4, seed=5)
    assert not np.array_equal(img, other)
    ids = np.unique(labels[labels > 0])
    assert ids.size >= 5 and np.array_equal(ids, np.arange(1, ids.size + 1))
    areas = np.bincount(labels.ravel())[1:]
    assert areas.min() >= MIN_AREA
    for i, sl in enumerate(ndi.find_objects(labels), start=1):  # each object is one piece
        assert ndi.label(labels[sl] == i)[1] == 1


def test_em_cells_are_separated_by_dark_membranes():
    img, labels = render("em", 0)
    grey = img[..., 0].astype(float)
    walls = (labels == 0) & ndi.binary_dilation(labels > 0)
    assert grey[walls].mean() < grey[labels > 0].mean() - 20
    touching = ndi.binary_dilation(labels == 1, iterations=6) & (labels > 1)
    assert touching.any()  # packed: neighbours a few pixels away, not islands


def test_rods_are_elongated_dark_cells_with_a_bright_halo():
    img, labels = render("rods", 1)
    grey = img[..., 0].astype(float)
    cells = labels > 0
    ring = ndi.binary_dilation(cells, iterations=3) & ~ndi.binary_dilation(cells, iterations=1)
    far = ~ndi.binary_dilation(cells, iterations=20)
    assert grey[cells].mean() < grey[far].mean() < grey[ring].mean()
    ratios = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        ys, xs = np.nonzero(labels[sl] == i)
        ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
        ratios.append(np.sqrt(ev[1] / max(ev[0], 1e-9)))
    assert np.median(ratios) > 1.3


def test_dic_shows_the_cells_as_relief_on_a_flat_grey_background():
    img, labels = render("dic", 2)
    grey = img[..., 0].astype(float)
    background = ~ndi.binary_dilation(labels > 0, iterations=8)
    assert background.mean() > 0.05
    inside = ndi.binary_erosion(labels > 0, iterations=3)
    assert grey[inside].std() > 2 * grey[background].std()  # the relief is on the cells
    assert abs(grey[inside].mean() - grey[background].mean()) < 40  # a derivative: no net brightness


def test_fluo_cells_are_brighter_than_the_background():
    img, labels = render("fluo", 0)
    grey = img[..., 0].astype(float)
    assert grey[labels > 0].mean() > grey[labels == 0].mean() + 30


def test_mitochondria_are_small_bodies_with_a_dark_membrane_among_clutter_that_is_not_an_object():
    img, labels = render("mito", 1)
    grey = img[..., 0].astype(float)
    cells = labels > 0
    assert 0.02 < cells.mean() < 0.35  # sparse bodies in cytoplasm, not a tiling
    rims = cells & ~ndi.binary_erosion(cells, iterations=2)
    assert grey[rims].mean() < grey[~ndi.binary_dilation(cells, iterations=3)].mean() - 15
    walls_and_vesicles = (grey < np.percentile(grey, 5)) & ~ndi.binary_dilation(cells, iterations=3)
    assert walls_and_vesicles.sum() > 200  # dark clutter outside the objects
    ds = read_training_dataset("synthetic-organelles", "/nowhere")
    assert len(ds) == 16 and ds.image_ids[0] == "mito-00"
    cells_ds = read_training_dataset("synthetic_cells", "/nowhere")
    assert not {entry_digest(e) for e in ds._entries} & {entry_digest(e) for e in cells_ds._entries}


def test_neuropil_packs_small_and_large_profiles_whose_organelles_belong_to_them():
    img, labels = render("neuropil", 2)
    grey = img[..., 0].astype(float)
    areas = np.bincount(labels.ravel())[1:]
    assert areas.max() > 20 * np.median(areas)  # large dendrites beside bundles of small axons
    assert (areas < 800).sum() > 50 and (areas > 3000).sum() >= 3
    membranes = (labels == 0) & ndi.binary_dilation(labels > 0)
    assert grey[membranes].mean() < grey[labels > 0].mean() - 20
    big = labels == int(np.argmax(areas)) + 1
    inner = ndi.binary_erosion(big, iterations=4)
    assert (grey[inner] < np.percentile(grey[inner], 50) - 25).sum() > 30  # dark bodies inside, part of it
    assert (labels > 0).mean() > 0.6  # a tiling: (almost) every pixel belongs to a profile
    ds = read_training_dataset("synthetic-neuropil", "/nowhere")
    assert len(ds) == 16 and ds.image_ids[0] == "neuropil-00"
    others = [read_training_dataset(n, "/nowhere") for n in ("synthetic_cells", "synthetic_organelles")]
    assert not {entry_digest(e) for e in ds._entries} & {entry_digest(e) for o in others for e in o._entries}


def test_mitoses_label_a_dividing_cell_as_the_region_around_its_chromosomes():
    img, labels = render("mitoses", 1)
    grey = img[..., 0].astype(float)
    assert grey[labels > 0].mean() > grey[labels == 0].mean() + 30  # a DNA stain on a dark ground
    figures = 0
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        g = grey[sl][labels[sl] == i]
        # a mitotic figure: the brightest (condensed) chromatin of the image and dark gaps between
        # its chromosomes, inside one object (a click on one chromosome is the whole figure)
        figures += (g > np.percentile(grey[labels > 0], 90)).mean() > 0.15 and (g < 0.5 * g.max()).mean() > 0.3
    assert figures >= 3
    ds = read_training_dataset("synthetic-mitoses", "/nowhere")
    assert len(ds) == 16 and ds.image_ids[0] == "mitoses-00"
    others = [read_training_dataset(n, "/nowhere") for n in ("synthetic_cells", "synthetic_organelles",
                                                              "synthetic_neuropil")]
    assert not {entry_digest(e) for e in ds._entries} & {entry_digest(e) for o in others for e in o._entries}


def test_the_dataset_draws_48_images_with_their_own_content_keys():
    ds = read_training_dataset("synthetic-cells", "/nowhere")  # no file is read
    assert len(ds) == 48 and ds.image_ids[:2] == ["em-00", "em-01"]
    assert len({entry_digest(e) for e in ds._entries}) == 48
    sample = next(iter(ds))
    assert sample.load_image().shape == (SIZE, SIZE, 3)
    assert all(o.gt.sum() >= MIN_AREA for o in sample.objects)
    with pytest.raises(ValueError, match="unknown synthetic style"):
        render("confocal", 0)


#: research-only sets (``../shared/data/README.md``): never in the product, so never in the data
#: of a model the package ships
RESEARCH_ONLY_SETS = ("vnc_neurites", "vnc_mitochondria")


def test_the_shipped_default_models_config_trains_on_no_research_only_set():
    cfg = json.loads((REPO / "configs" / "focsam_t_micro_r5_cpu.json").read_text())
    train = [s["dataset"] for s in cfg["data"]["train"]]
    assert not set(train) & set(RESEARCH_ONLY_SETS)
    assert {"synthetic_cells", "synthetic_organelles", "synthetic_neuropil"} <= set(train)
    assert {s["dataset"] for s in cfg["data"]["val"]} >= set(RESEARCH_ONLY_SETS)  # measured on, not trained on


def test_a_research_only_set_trains_only_a_model_marked_research_only(tmp_path):
    from napari_focsam.training.config import config_from_dict
    from napari_focsam.training.data import RESEARCH_ONLY, check_licences
    from napari_focsam.training.trainer import Trainer

    assert set(RESEARCH_ONLY) == set(RESEARCH_ONLY_SETS)
    data = {"work_dir": str(tmp_path), "data": {"root": str(tmp_path), "cache_dir": str(tmp_path / "c"),
                                                "train": [{"dataset": "vnc-neurites", "images": "all"}]}}
    cfg = config_from_dict(data)
    with pytest.raises(ValueError, match=r"research only: vnc_neurites \(CC BY-NC-SA 3.0\)"):
        check_licences(cfg)
    with pytest.raises(ValueError, match="research only"):
        Trainer(cfg, log=None)  # refused before any weights are read
    data["data"]["research_only"] = True
    check_licences(config_from_dict(data))
    for name in ("focsam_t_micro_cpu", "focsam_t_micro_joint_cpu", "focsam_t_micro_r2_cpu"):  # research rounds
        cfg = json.loads((REPO / "configs" / f"{name}.json").read_text())
        assert cfg["data"]["research_only"] is True
