"""A doubtful first answer looked at again on a crop (``ZOOM_DOUBT``): the rule on a scripted
decoder, and the real default model on phase-contrast yeast shown small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.core.embeddings import ImageEmbedding, input_size_for
from napari_focsam.core.prompting import ZOOM_DOUBT, Click, StepResult, ZoomedObject, logits_to_mask, mask_iou


class Scripted:
    """A predictor whose answers are scripted: on the whole (2048 x 2048) image a square of
    300 pixels around the last positive click (a "colony") scored ``whole``; on a crop a disk of
    ``radius`` pixels around it scored ``crop``. Its masks come from its logits, as the real
    predictor's do, so an undo recomputes the same masks."""

    def __init__(self, whole: float, crop: float, radius: int = 24) -> None:
        self.whole, self.crop, self.radius = whole, crop, radius
        self.embedded: list[tuple[int, int]] = []

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        shape = tuple(image.shape[:2])
        self.embedded.append(shape)
        return ImageEmbedding(torch.zeros(1, 256, 64, 64), input_size_for(shape), shape)

    def step(self, embedding, clicks, prev_logits=None, refined=None, **_kw) -> StepResult:
        H, W = embedding.original_size
        last = [c for c in clicks if c.is_positive][-1]
        s = 1024 / max(H, W) / 4  # logits per image pixel
        yy, xx = np.mgrid[:256, :256] / s
        if (H, W) == (2048, 2048):
            inside, score = (np.abs(yy - last.y) <= 150) & (np.abs(xx - last.x) <= 150), self.whole
        else:
            inside, score = (yy - last.y) ** 2 + (xx - last.x) ** 2 <= self.radius ** 2, self.crop
        logits = torch.from_numpy(np.where(inside, 10.0, -10.0).astype(np.float32))[None, None]
        mask = logits_to_mask(logits, embedding.input_size, embedding.original_size)
        return StepResult(mask, logits, None, 0.0, 0.0, score)


def _reader(calls: list):
    image = np.zeros((2048, 2048, 3), np.uint8)  # grey, as RGB with equal channels

    def read(y0, y1, x0, x1):
        calls.append((y0, y1, x0, x1))
        return image[y0:y1, x0:x1]
    return image, read


def _whole_embedding():
    return ImageEmbedding(torch.zeros(1, 256, 64, 64), (1024, 1024), (2048, 2048))


def test_a_doubtful_large_answer_is_replaced_by_a_better_scored_crop():
    pred, calls = Scripted(whole=ZOOM_DOUBT - 0.2, crop=0.9), []
    _, read = _reader(calls)
    shown = []
    obj = ZoomedObject(pred, _whole_embedding(), read, on_crop=shown.append)
    res = obj.add(Click(700, 900))
    # the crop is centred on the click, 1024 pixels (2x over the whole image's canvas)
    assert obj.window == (188, 1212, 388, 1412) and calls == [obj.window]
    assert res.score == pytest.approx(0.9) and res.logits is None
    yy, xx = np.ogrid[:2048, :2048]
    disk = (yy - 700) ** 2 + (xx - 900) ** 2 <= 24 ** 2
    assert mask_iou(res.mask, disk) > 0.8 and res.mask.sum() < 3000
    # the whole image's answer (the square) was handed out while the crop was encoded
    assert len(shown) == 1 and shown[0].crop.sum() > 250 * 250
    # later clicks stay on the crop; undo of the first click empties the object
    obj.add(Click(705, 905))
    assert obj.window == (188, 1212, 388, 1412) and len(calls) == 1
    obj.undo()
    assert obj.window == (188, 1212, 388, 1412) and np.array_equal(obj.mask, res.mask)
    obj.undo()
    assert len(obj) == 0 and not obj.mask.any() and obj.window is None


def test_the_whole_answer_stays_when_it_is_trusted_the_crop_not_better_or_the_image_in_colour():
    yy, xx = np.ogrid[:2048, :2048]
    square = (np.abs(yy - 700) <= 150) & (np.abs(xx - 900) <= 150)
    # scored at ZOOM_DOUBT or above: no crop is even read
    pred, calls = Scripted(whole=ZOOM_DOUBT, crop=0.99), []
    obj = ZoomedObject(pred, _whole_embedding(), _reader(calls)[1])
    res = obj.add(Click(700, 900))
    assert obj.window is None and calls == [] and res.logits is not None
    assert mask_iou(res.mask, square) > 0.95
    # doubtful, but the crop's answer scores lower: the whole image's answer stays, and the
    # next click is decoded there; the crop's embedding is kept for the image's other objects
    pred, calls = Scripted(whole=0.5, crop=0.45), []
    obj = ZoomedObject(pred, _whole_embedding(), _reader(calls)[1])
    res = obj.add(Click(700, 900))
    assert obj.window is None and len(calls) == 1 and res.score == pytest.approx(0.5)
    assert mask_iou(res.mask, square) > 0.95 and obj.logits is not None and obj.windows == [None]
    obj.add(Click(710, 910))
    assert obj.window is None and len(calls) == 1 and len(obj) == 2
    # doubtful on a colour image (a photograph): the crop is read to see that, nothing encoded
    pred, calls = Scripted(whole=0.5, crop=0.95), []
    colour = np.zeros((2048, 2048, 3), np.uint8)
    colour[..., 0] = 40

    def read_colour(y0, y1, x0, x1):
        calls.append((y0, y1, x0, x1))
        return colour[y0:y1, x0:x1]

    obj = ZoomedObject(pred, _whole_embedding(), read_colour)
    res = obj.add(Click(700, 900))
    assert obj.window is None and len(calls) == 1 and pred.embedded == [] and mask_iou(res.mask, square) > 0.95
    # doubtful and better scored on the crop, but reaching the crop's inner edges: not kept
    pred, calls = Scripted(whole=0.5, crop=0.95, radius=600), []
    obj = ZoomedObject(pred, _whole_embedding(), _reader(calls)[1])
    res = obj.add(Click(700, 900))
    assert obj.window is None and len(calls) == 1 and mask_iou(res.mask, square) > 0.95


def test_yeast_shown_small_gets_the_answer_of_its_own_scale(shared_data):
    """Phase-contrast yeast: two 520 x 692 frames side by side (520 x 1384), so that the cells
    are about 16 canvas pixels across instead of 33. On the whole mosaic the default model
    answers a click on a cell with its colony; looked at again on a crop, with the answer it
    gives on the cell's own frame."""
    import tifffile
    from scipy import ndimage as ndi

    from napari_focsam.core.models import load_model
    from napari_focsam.core.prompting import FocSAMPredictor, InteractiveObject
    from napari_focsam.evaluation.datasets import to_rgb_uint8

    d = shared_data / "micro" / "yeast_phase"
    if not (d / "yeast_phase.tif").is_file():
        pytest.skip("yeast_phase absent")
    frames, labels = tifffile.imread(d / "yeast_phase.tif")[8:10], tifffile.imread(d / "yeast_phase_label.tif")[8:10]
    rgb = to_rgb_uint8(np.concatenate(list(frames), axis=1))
    lab = np.concatenate(list(labels), axis=1)
    pred = FocSAMPredictor(load_model(device="cpu"))
    emb, own = pred.embed(rgb), [pred.embed(to_rgb_uint8(f)) for f in frames]
    ids = [i for i in np.unique(lab[:, 100:600]) if i and 250 <= (lab == i).sum() <= 600][:8]
    zoomed = 0
    for i in ids:
        gt = lab == i
        y, x = np.unravel_index(int(np.argmax(ndi.distance_transform_edt(gt))), gt.shape)
        k = int(x >= 692)
        single = np.zeros_like(gt)
        single[:, 692 * k:692 * (k + 1)] = InteractiveObject(pred, own[k]).add(Click(y, x - 692 * k)).mask
        assert mask_iou(InteractiveObject(pred, emb).add(Click(y, x)).mask, single) < 0.1  # the colony
        obj = ZoomedObject(pred, emb, lambda y0, y1, x0, x1: rgb[y0:y1, x0:x1])
        res = obj.add(Click(y, x))
        if obj.window is not None:
            zoomed += 1
            assert mask_iou(res.mask, single) > 0.8
    assert len(ids) == 8 and zoomed >= 6


def test_the_score_is_the_current_states_after_clicks_and_undo():
    from napari_focsam.core.prompting import InteractiveObject

    pred = Scripted(whole=0.5, crop=0.9)
    obj = InteractiveObject(pred, _whole_embedding())
    assert obj.score is None
    obj.add(Click(700, 900))
    pred.whole = 0.7
    obj.add(Click(720, 900))
    assert obj.score == pytest.approx(0.7)
    obj.undo()
    assert obj.score == pytest.approx(0.5)  # the first click's, as its mask and logits
    obj.undo()
    assert obj.score is None
