"""The out-of-focus stop: an outer run ends where the object's outline has faded (blur past a
fluorescent object's end), measured on the image, not on the decoder's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_focsam.core.images import ImageVolume
from napari_focsam.core.propagation import _plain as V
from napari_focsam.core.propagation._edges import EDGE_BAND, EDGE_SIGMA, faded_reason, outline_strength
from napari_focsam.core.prompting import region_from_plane
from napari_focsam.core.session import Session
from test_propagation import fast_model, force_mask  # noqa: F401

Z, S = 12, 48
YY, XX = np.mgrid[:S, :S]
DISC = (YY - S / 2) ** 2 + (XX - S / 2) ** 2 < 9 ** 2


def focus_stack(in_focus=range(3, 9), blur=5.0, dim=0.6) -> np.ndarray:
    """A bright disc on a dark background, sharp on ``in_focus`` slices; on the others the same
    disc, dimmer and blurred (its light past the object's ends). Mild noise everywhere."""
    rng = np.random.default_rng(1)
    stack = np.empty((Z, S, S), np.float32)
    for z in range(Z):
        plane = DISC.astype(np.float32) * 1000.0
        if z not in in_focus:
            plane = ndi.gaussian_filter(plane * dim, blur)
        stack[z] = plane + 100.0 + rng.normal(0, 5, (S, S))
    return stack


def strength(stack, z, mask):
    return outline_strength(ImageVolume(stack), z, region_from_plane(mask))


def test_a_blurred_outline_is_weak_and_the_measure_ignores_the_intensity_scale():
    stack = focus_stack()
    sharp, blurred = strength(stack, 5, DISC), strength(stack, 0, DISC)
    assert blurred < 0.2 * sharp
    # the same ratio for another dtype, gain and offset (a 16-bit camera)
    as_u16 = (stack * 7 + 3000).astype(np.uint16)
    assert strength(as_u16, 0, DISC) / strength(as_u16, 5, DISC) == pytest.approx(blurred / sharp, rel=0.02)
    # channels are averaged: a grey RGB stack measures as its grey plane
    rgb = np.repeat(stack[..., None], 3, axis=-1)
    assert outline_strength(ImageVolume(rgb, rgb=True), 5, region_from_plane(DISC)) == pytest.approx(sharp, rel=1e-5)


def test_no_outline_for_an_empty_mask_or_one_that_fills_the_plane_and_the_plane_border_is_none():
    stack = focus_stack()
    assert strength(stack, 5, np.zeros((S, S), bool)) == 0.0
    assert strength(stack, 5, np.ones((S, S), bool)) == 0.0
    # a half-plane mask: only its inner edge counts, not the plane's border around it
    flat = np.full((1, S, S), 50.0, np.float32)
    flat[0, :, S // 2:] = 500.0
    half = np.zeros((S, S), bool)
    half[:, S // 2:] = True
    edge_only = strength(flat, 0, half)
    assert edge_only > 0
    lined = flat.copy()
    lined[0, :, -1] = 5000.0  # a bright line along the plane's border, inside the mask
    assert strength(lined, 0, half) == pytest.approx(edge_only, rel=1e-3)


def test_only_the_masks_box_and_a_margin_are_read():
    stack = focus_stack()
    vol = ImageVolume(stack)
    reads = []
    read = vol.read_region
    vol.read_region = lambda z, y0, y1, x0, x1, level=0: reads.append((y1 - y0, x1 - x0)) or read(z, y0, y1, x0, x1)
    small = np.zeros((S, S), bool)
    small[10:14, 20:26] = True
    outline_strength(vol, 5, region_from_plane(small))
    margin = EDGE_BAND + int(np.ceil(4 * EDGE_SIGMA))
    assert reads == [(4 + 2 * margin, 6 + 2 * margin)]


def test_a_mask_over_a_large_plane_reads_only_the_blocks_its_outline_crosses():
    """A mask that covers a 1300 x 1300 plane but for a hole: the band is around the hole only
    (the plane's border is no outline), so only the blocks around it are read, never the
    plane; and the value is the one computed on the whole plane at once."""
    from napari_focsam.core.propagation._edges import OUTLINE_BLOCK

    rng = np.random.default_rng(3)
    plane = ndi.gaussian_filter(rng.random((1300, 1300)).astype(np.float32), 3) * 1000
    mask = np.ones((1300, 1300), bool)
    mask[600:650, 700:760] = False
    plane[600:650, 700:760] += 400
    vol = ImageVolume(plane[None])
    reads = []
    read = vol.read_region
    vol.read_region = lambda z, y0, y1, x0, x1, level=0: reads.append((y1 - y0) * (x1 - x0)) or read(z, y0, y1, x0, x1)
    got = outline_strength(vol, 0, region_from_plane(mask))
    band = ndi.binary_dilation(mask, iterations=EDGE_BAND) & ~ndi.binary_erosion(mask, iterations=EDGE_BAND,
                                                                                  border_value=1)
    want = ndi.gaussian_gradient_magnitude(plane, EDGE_SIGMA)[band].mean()
    assert got == pytest.approx(float(want), rel=1e-5)
    margin = int(np.ceil(4 * EDGE_SIGMA))
    assert 1 <= len(reads) <= 4 and max(reads) <= (OUTLINE_BLOCK + 2 * margin) ** 2 < plane.size


def test_missing_values_beside_the_object_neither_poison_the_measure_nor_end_the_object(
        fast_model, decoder_sees_a_disc_everywhere):  # noqa: F811
    """NaN (a masked-out part of a stitched stack) next to the outline: the band pixels it reaches
    are left out, the measure stays finite, and a sharp object is still followed everywhere."""
    clean = focus_stack(in_focus=range(Z))
    holed = clean.copy()
    holed[:, 8:14, 12:36] = np.nan  # a band of missing values just above the disc, on every slice
    sharp = strength(clean, 5, DISC)
    assert np.isfinite(strength(holed, 5, DISC)) and strength(holed, 5, DISC) == pytest.approx(sharp, rel=0.25)
    assert strength(np.full((1, S, S), np.nan, np.float32), 0, DISC) == 0.0
    assert faded_reason(float("nan"), 1.0, 0.2, 3) is None and faded_reason(0.1, float("nan"), 0.2, 3) is None
    session = Session(holed, fast_model)
    obj = session.new_object()
    obj.add_click(S // 2, S // 2, z=5)
    force_mask(obj, 5, DISC)
    assert obj.propagate().z_range == (0, Z - 1)


def test_the_reason_names_the_slice_and_the_fraction():
    assert faded_reason(0.5, 1.0, 0.2, 7) is None
    assert faded_reason(0.1, 1.0, 0.0, 7) is None and faded_reason(0.1, 1.0, None, 7) is None
    assert faded_reason(0.1, 0.0, 0.2, 7) is None  # no reference outline: never
    assert faded_reason(0.1, 1.0, 0.2, 7) == "faded at z=7: its outline is 0.10 of the object's strongest (< 0.2)"


@pytest.fixture
def decoder_sees_a_disc_everywhere(monkeypatch):
    """SAM on out-of-focus slices: it still finds the blurred disc, about as large as the object."""
    monkeypatch.setattr(V, "next_slice_scored", lambda predictor, emb, prev, *a, **k:
                        (DISC.copy(), torch.zeros(1, 1, 256, 256), 0.9))


def test_a_run_stops_where_the_object_goes_out_of_focus(fast_model, decoder_sees_a_disc_everywhere):  # noqa: F811
    session = Session(focus_stack(), fast_model)
    obj = session.new_object()
    obj.add_click(S // 2, S // 2, z=5)
    force_mask(obj, 5, DISC)
    res = obj.propagate()
    assert res.z_range == (3, 8), res.stopped_reason
    assert res.stopped_reason["down"].startswith("faded at z=2: its outline is 0.")
    assert res.stopped_reason["up"].startswith("faded at z=9")
    # off: the blur is followed to both ends of the stack, as before the rule
    assert obj.propagate(edge_fade=None).z_range == (0, Z - 1)
    assert obj.propagate(edge_fade=0.0).z_range == (0, Z - 1)
    with pytest.raises(ValueError, match="edge_fade must be within"):
        obj.propagate(edge_fade=1.5)


def test_between_clicked_slices_nothing_is_cut_and_the_strongest_click_is_the_reference(
        fast_model, decoder_sees_a_disc_everywhere):  # noqa: F811
    """The user clicked on a blurred slice (z=1) and on a sharp one (z=6): the gap between them
    is the user's object and is filled; the run below z=1 compares with the sharp click's
    outline, so it stops at once (slice 0 is as blurred as slice 1)."""
    session = Session(focus_stack(), fast_model)
    obj = session.new_object()
    for z in (1, 6):
        obj.add_click(S // 2, S // 2, z=z)
        force_mask(obj, z, DISC)
    res = obj.propagate()
    assert res.z_range == (1, 8), res.stopped_reason
    assert all(res.masks[z].any() for z in range(1, 9))
    assert res.stopped_reason["down"].startswith("faded at z=0")


def test_a_sharp_object_in_noise_is_not_cut(fast_model, decoder_sees_a_disc_everywhere):  # noqa: F811
    """An object in focus on every slice (serial-section EM, a time-lapse) is followed through
    the whole stack: its outline keeps its strength."""
    session = Session(focus_stack(in_focus=range(Z)), fast_model)
    obj = session.new_object()
    obj.add_click(S // 2, S // 2, z=5)
    force_mask(obj, 5, DISC)
    assert obj.propagate().z_range == (0, Z - 1)


@pytest.mark.slow
def test_real_propagation_of_a_nucleus_ends_where_it_goes_out_of_focus(mobile_sam, shared_data):
    """cells3d nucleus 7 (labelled on slices 20-50), one click on its middle slice: without the
    rule the decoder follows its blur past the label's ends; with it the object ends there."""
    import tifffile

    from test_propagation import propagate_from_centre

    d = shared_data / "micro" / "cells3d"
    if not (d / "cells3d_nuclei.tif").is_file():
        pytest.skip("cells3d is absent")
    stack = tifffile.imread(d / "cells3d_nuclei.tif")
    gt = tifffile.imread(d / "cells3d_nuclei_label.tif") == 7
    res, iou = propagate_from_centre(mobile_sam, stack, gt, 35)
    assert "faded" in res.stopped_reason["down"] + res.stopped_reason["up"], res.stopped_reason
    assert 19 <= res.z_range[0] and res.z_range[1] <= 51, res.z_range
    assert iou > 0.87


def test_the_segment_command_takes_the_fade_and_refuses_one_out_of_range(
        tmp_path, capsys, monkeypatch, fast_model):  # noqa: F811
    tifffile = pytest.importorskip("tifffile")
    import napari_focsam.core.models as models
    from napari_focsam.core.session._objects import SegmentedObject
    from test_propagation import run_cli

    monkeypatch.setattr(models, "load_model", lambda *a, **k: fast_model)
    seen = []
    real = SegmentedObject.propagate
    monkeypatch.setattr(SegmentedObject, "propagate", lambda self, *a, **k: seen.append(k.get("edge_fade")) or
                        real(self, *a, **k))
    tifffile.imwrite(tmp_path / "stack.tif", focus_stack())
    base = ["segment", str(tmp_path / "stack.tif"), "--slice", "5", "--click", "24,24", "--propagate",
            "--no-progress", "--out", str(tmp_path / "m.tif")]
    for extra, expected in (([], 0.2), (["--edge-fade", "0"], 0.0)):
        rc, _, err = run_cli(base + extra, capsys)
        assert rc == 0, err
        assert seen.pop() == expected
    rc, _, err = run_cli(base + ["--edge-fade", "1.5"], capsys)
    assert rc != 0 and "--edge-fade 1.5 is out of range" in err and not seen
