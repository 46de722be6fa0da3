"""Small objects on an enlarged crop: the window rule, and the real model's click loop on it
(crops encoded once, clicks leaving the crop, undo, the evaluation adapter)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.core.prompting import (
    Click, CropEmbeddings, FocSAMPredictor, InteractiveObject, ZoomedObject, mask_iou, region_to_plane, zoom_window)
from napari_focsam.evaluation.runner import PredictorAdapter


def _disk(shape, cy, cx, r):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --------------------------------------------------------------------------- the window rule


def test_window_is_a_square_around_a_small_object_inside_the_image():
    mask = _disk((1024, 1024), 300, 400, 20)
    w = zoom_window(mask, [Click(300, 400)], (1024, 1024))
    assert w == (44, 556, 144, 656)  # 512 pixels: the encoder sees them 2x enlarged
    # at a corner the window moves inside the image, the object and click still in it
    w = zoom_window(_disk((1024, 1024), 10, 1014, 8), [Click(10, 1014)], (1024, 1024))
    assert w == (0, 512, 512, 1024)
    # a click away from the mask widens the box the window is centred on
    w = zoom_window(mask, [Click(300, 400), Click(300, 560)], (1024, 1024))
    assert w[2] <= 380 and w[3] >= 560 and w[3] - w[2] == 512
    # a larger image: the crop is half its long side (at most 2x over the whole-image canvas)
    assert zoom_window(_disk((1024, 1200), 300, 400, 20), [Click(300, 400)], (1024, 1200)) == (0, 600, 100, 700)
    # a crop already encoded is used again where the object keeps a quarter of its side from
    # the inner edges; a nearer one without that room is not
    near = _disk((1024, 1024), 330, 420, 20)
    assert zoom_window(near, [Click(330, 420)], (1024, 1024), reuse=[(44, 556, 144, 656)]) == (44, 556, 144, 656)
    far = _disk((1024, 1024), 470, 420, 20)
    assert zoom_window(far, [Click(470, 420)], (1024, 1024), reuse=[(44, 556, 144, 656)]) == (214, 726, 164, 676)


def test_no_window_for_large_objects_small_images_or_nothing():
    shape = (1024, 1024)
    # objects over 48 canvas pixels across are drawn with enough logits on the whole image
    assert zoom_window(_disk(shape, 500, 500, 26), [Click(500, 500)], shape) is None
    assert zoom_window(_disk(shape, 500, 500, 22), [Click(500, 500)], shape) is not None
    # on a 2048-pixel image the canvas halves them: 80 pixels across are 40 canvas pixels
    assert zoom_window(_disk((2048, 2048), 500, 500, 40), [Click(500, 500)], (2048, 2048)) is not None
    # a thin mask (small area) whose box is over half the crop, or clicks far apart: no room
    thin = np.zeros(shape, bool)
    thin[500:503, 100:400] = True
    assert zoom_window(thin, [Click(501, 250)], shape) is None
    assert zoom_window(_disk(shape, 500, 500, 10), [Click(500, 500), Click(900, 100)], shape) is None
    # a 640-pixel image is shown 1.6x enlarged already: a 512 crop gains 1.25x, under 1.5x
    assert zoom_window(_disk((640, 640), 300, 300, 10), [Click(300, 300)], (640, 640)) is None
    assert zoom_window(None, [], shape) is None
    # a tall narrow image: the window is cut to the image's width
    assert zoom_window(_disk((2000, 300), 1000, 150, 10), [Click(1000, 150)], (2000, 300)) == (500, 1500, 0, 300)


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def scene():
    """A 1024 x 1024 EM-like section: small bright disks of 12-16 px radius on a textured
    background, one disk large (90 px)."""
    rng = np.random.default_rng(0)
    img = 60 + 10 * rng.standard_normal((1024, 1024))
    disks = [(200, 220, 14), (230, 260, 12), (700, 640, 16), (520, 880, 90)]
    for cy, cx, r in disks:
        img[_disk(img.shape, cy, cx, r)] = 190
    return np.clip(img, 0, 255).astype(np.uint8), disks


@pytest.fixture(scope="module")
def predictor(mobile_sam):
    return FocSAMPredictor(mobile_sam, refine=False)


class Reads:
    def __init__(self, img):
        self.img, self.calls = img, []

    def __call__(self, y0, y1, x0, x1):
        self.calls.append((y0, y1, x0, x1))
        return self.img[y0:y1, x0:x1]


def test_small_object_is_decoded_on_its_crop_and_pasted_back(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    reads = Reads(img)
    obj = ZoomedObject(predictor, emb, reads)
    cy, cx, r = disks[2]
    res = obj.add(Click(cy, cx))
    gt = _disk(img.shape, cy, cx, r)
    assert obj.window is not None and reads.calls == [obj.window]
    y0, y1, x0, x1 = obj.window
    assert y1 - y0 == 512 and x1 - x0 == 512 and y0 < cy < y1 and x0 < cx < x1
    assert res.mask.shape == img.shape and not res.mask.flags.writeable
    assert mask_iou(res.mask, gt) > 0.85
    assert obj.logits is None and res.logits is None  # a crop's logits are not the plane's
    # the crop's own loop gives the same mask as an InteractiveObject on that crop
    crop = InteractiveObject(predictor, predictor.embed(img[y0:y1, x0:x1]))
    crop.add(Click(cy - y0, cx - x0))
    assert np.array_equal(res.mask[y0:y1, x0:x1], crop.mask) and not res.mask[:y0].any()


def test_large_object_stays_on_the_whole_image(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    reads = Reads(img)
    obj = ZoomedObject(predictor, emb, reads)
    whole = InteractiveObject(predictor, emb)
    cy, cx, _ = disks[3]
    m = obj.add(Click(cy, cx)).mask
    assert obj.window is None and reads.calls == []
    assert np.array_equal(m, whole.add(Click(cy, cx)).mask)
    assert obj.logits is not None


def test_clicks_that_leave_the_crop_move_it_and_undo_goes_back(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    reads = Reads(img)
    obj = ZoomedObject(predictor, emb, reads)
    (ay, ax, _), (by, bx, _) = disks[0], disks[2]
    first = obj.add(Click(ay, ax)).mask.copy()
    w1 = obj.window
    assert w1 is not None
    # a negative click far outside the crop: the box of mask and clicks no longer fits a crop
    obj.add(Click(by, bx, False))
    assert obj.window is None and len(obj) == 2
    assert obj.mask[ay, ax]
    # undo: back on the first crop, same mask, its embedding not computed again
    assert np.array_equal(obj.undo(), first) and obj.window == w1
    assert reads.calls == [w1]
    # a second positive click on the neighbouring disk stays in the crop
    m = obj.add(Click(disks[1][0], disks[1][1])).mask
    assert obj.window is not None and m[disks[1][0], disks[1][1]] and m[ay, ax]
    obj.truncate(0)
    assert len(obj) == 0 and not obj.mask.any() and obj.window is None


def test_neighbouring_objects_share_a_crop_and_its_embedding(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    reads, crops = Reads(img), CropEmbeddings(max_items=2)
    a = ZoomedObject(predictor, emb, reads, crops=crops)
    b = ZoomedObject(predictor, emb, reads, crops=crops)
    a.add(Click(*disks[0][:2]))
    b.add(Click(*disks[1][:2]))
    assert a.window == b.window and len(reads.calls) == 1 and len(crops) == 1
    assert a.nbytes() < 4 * 2**20  # the shared embedding is not counted by the objects
    c = ZoomedObject(predictor, emb, reads, crops=crops)
    c.add(Click(*disks[2][:2]))
    assert c.window != a.window and len(reads.calls) == 2 and len(crops) == 2


def test_the_whole_image_answer_is_handed_out_while_a_crop_is_encoded(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    crops, seen = CropEmbeddings(), []
    a = ZoomedObject(predictor, emb, Reads(img), crops=crops, on_crop=seen.append)
    a.add(Click(*disks[0][:2]))
    whole = InteractiveObject(predictor, emb)
    whole.add(Click(*disks[0][:2]))
    assert len(seen) == 1 and mask_iou(region_to_plane(seen[0], img.shape), whole.mask) == 1.0
    b = ZoomedObject(predictor, emb, Reads(img), crops=crops, on_crop=seen.append)
    b.add(Click(*disks[1][:2]))  # its crop is already encoded: nothing to wait for
    big = ZoomedObject(predictor, emb, Reads(img), crops=crops, on_crop=seen.append)
    big.add(Click(*disks[3][:2]))  # not zoomed
    assert len(seen) == 1


def test_adapter_zoom_runs_the_protocol_on_crops(scene, predictor):
    img, disks = scene
    ad = PredictorAdapter(predictor, zoom=True)
    ad.set_image(img)
    ad.reset()
    cy, cx, r = disks[1]
    m = ad.predict([Click(cy, cx)])
    assert isinstance(ad._object, ZoomedObject) and ad._object.window is not None
    assert mask_iou(m, _disk(img.shape, cy, cx, r)) > 0.8


def test_a_box_a_blank_image_or_a_negative_click_first_stay_on_the_whole_image(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    reads = Reads(img)
    cy, cx, r = disks[2]
    boxed = ZoomedObject(predictor, emb, reads)
    boxed.set_box((cy - r - 3, cx - r - 3, cy + r + 3, cx + r + 3))
    m = boxed.add(Click(cy, cx)).mask
    assert boxed.window is None and boxed.box is not None and m[cy, cx] and reads.calls == []
    assert boxed.token is not None and boxed.logits is not None
    # a negative click first: the object zooms at its first positive click
    obj = ZoomedObject(predictor, emb, reads)
    obj.add(Click(cy - 60, cx - 60, False))
    assert obj.window is None and not obj.mask.any()
    obj.add(Click(cy, cx))
    assert obj.window is not None and obj.mask[cy, cx]
    # a constant image is blank: an empty mask, no crop encoded
    flat = np.full((1024, 1024), 77, np.uint8)
    from napari_focsam.core.session import Session

    session = Session(flat, predictor=predictor)
    hist_obj = session.new_object()
    assert not hist_obj.add_click(500, 500).any()
    assert session.zoom and hist_obj.history(0).window is None


def test_a_failed_click_leaves_the_object_as_it_was(scene, predictor):
    img, disks = scene
    emb = predictor.embed(img)
    cy, cx, _ = disks[2]
    calls = []

    def failing(y0, y1, x0, x1):  # the crop cannot be read the first time (out of memory)
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("no room for the crop")
        return img[y0:y1, x0:x1]

    obj = ZoomedObject(predictor, emb, failing)
    with pytest.raises(MemoryError):
        obj.add(Click(cy, cx))
    assert calls and len(obj) == 0 and obj.window is None and not obj.mask.any() and obj.token is None
    with pytest.raises(ValueError, match="outside"):
        obj.add(Click(5000, 10))
    assert len(obj) == 0
    # the same click again: the object zooms as if nothing had happened
    good = ZoomedObject(predictor, emb, Reads(img)).add(Click(cy, cx)).mask
    assert np.array_equal(obj.add(Click(cy, cx)).mask, good) and len(obj) == 1 and obj.window is not None
