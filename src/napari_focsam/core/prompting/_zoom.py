"""Small objects decoded on an enlarged crop of the image (zoom-in).

SAM's decoder draws its masks as 256 x 256 logits of the 1024-pixel canvas: one logit per 4
canvas pixels. On a 1024-pixel EM section a neurite profile of 300 pixels is about 5 logits
across, and its outline falls anywhere within a membrane 3-5 pixels wide. :class:`ZoomedObject`
decodes such an object on a crop of the image around it, which the encoder sees enlarged, so
that the same decoder draws it with more logits; the mask comes back at the image's pixels.

The rule (:func:`zoom_window`), after the object's first positive click on the whole image:

- the crop is a square of ``1024 / ZOOM_SCALE`` image pixels (512: the encoder sees the image's
  pixels at most ``ZOOM_SCALE`` = 2 times enlarged; 4 times was worse on the EM profiles,
  0.694 against 0.783 for the small ones), or larger where the object is shown smaller than
  that now, so that the crop enlarges it at most ``ZOOM_MAX_GAIN`` times (half the long side
  of a 1349-pixel image); centred on the mask's box and the clicks, inside the image;
- only when that enlarges the image at least ``ZOOM_MIN_GAIN`` times over the whole-image
  canvas (the image's long side at least 768 pixels: a 512-pixel image is already shown to the
  encoder 2 times enlarged);
- only for an object at most ``ZOOM_MAX_OBJECT`` (48) canvas pixels across on the whole image
  (the diameter of a disk of its mask's area), 12 logits: on the EM profiles, mitochondria and
  nuclei of the microscopy benchmark, first clicks on a 2x crop gained 0.18-0.19 IoU on
  objects under 30 canvas pixels across, 0.02-0.07 at 30-50, nothing or a loss above;
- and when the mask's box with the clicks is at most ``ZOOM_FIT`` of the crop's side, so
  that the object sits in the crop with room around it.

A larger first answer on a grey image is looked at again when the decoder doubts it (its
predicted IoU under ``ZOOM_DOUBT``): the clicks are decoded on a crop centred on them, and the
crop's answer is kept when it keeps ``ZOOM_MARGIN`` pixels from the crop's inner edges and the
decoder scores it higher than the whole image's. An object a few logits across can come back
from the whole image as the cluster it sits in (phase-contrast cells of 15-20 canvas pixels came
back as their colony); its mask then says nothing of its size, but the decoder's score does.

Later clicks are decoded on the crop while they stay ``ZOOM_MARGIN`` pixels inside it and the
mask does not reach an inner edge of the crop; otherwise the crop is placed again around the
mask and the clicks (all clicks replayed there), or, when the object no longer fits, the
object goes back to the whole image (all clicks replayed there). Each crop costs one encoder
pass (about 1 s on one CPU thread); its embedding is kept (:class:`CropEmbeddings`, shared by
the objects of an image: a neighbour with room in a crop already encoded uses it).

On a large image the object is first decoded in its tile (a ``TiledHistory``, one canvas
pixel per full-resolution pixel at level 0) and the crop is a window of full-resolution pixels;
masks stay regions there.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from ._click_rules import check_clicks_inside
from ._clicks import Click, checked_click
from ._predictor import FocSAMPredictor, InteractiveObject, StepResult
from ._regions import MaskRegion, OnPlane, region_bbox, region_from_plane, region_to_plane, trimmed

__all__ = ["CropEmbeddings", "ZOOM_DOUBT", "ZOOM_FIT", "ZOOM_MARGIN", "ZOOM_MAX_GAIN", "ZOOM_MAX_OBJECT",
           "ZOOM_MIN_GAIN", "ZOOM_REUSE_ROOM", "ZOOM_SCALE", "ZoomedObject", "zoom_window"]

#: Canvas pixels per image pixel on a crop (the encoder's canvas is 1024 pixels).
ZOOM_SCALE = 2.0
#: Zoom only when the crop enlarges the image at least this much over the whole-image canvas.
ZOOM_MIN_GAIN = 1.5
#: ... and at most this much (a larger crop where the image is large).
ZOOM_MAX_GAIN = 2.0
#: The mask's box with the clicks is at most this fraction of the crop's side.
ZOOM_FIT = 0.5
#: Zoom only objects at most this many canvas pixels across on the whole image (the diameter
#: of a disk of the mask's area): 12 of the decoder's logits.
ZOOM_MAX_OBJECT = 48.0
#: Clicks and the mask stay this many image pixels inside the crop's inner edges.
ZOOM_MARGIN = 8
#: A first answer on the whole image that the decoder scores under this (its predicted IoU) is
#: decoded again on a crop centred on the click, whatever its size: an object a few logits
#: across can come back as the whole cluster around it (phase-contrast cells of 15-20 canvas
#: pixels: the colony, IoU 0.07; on a 2x crop 0.81). Grey images only (a crop whose channels
#: are equal): on colour photographs (DAVIS) the crops' better-scored answers were parts of the
#: object (first click 0.461 -> 0.388 with them).
ZOOM_DOUBT = 0.8
#: The encoder's canvas side.
CANVAS = 1024
#: A crop already encoded for another object is used again when the object's box with the clicks
#: keeps this fraction of the crop's side from its inner edges (neighbouring small objects share
#: a crop and its embedding, :class:`CropEmbeddings`); otherwise a crop centred on the object.
ZOOM_REUSE_ROOM = 0.25
#: Crop embeddings (4 MiB each) kept by default.
KEEP_CROPS = 4
_SERIAL = itertools.count(1)

Window = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, image pixels


Mask = "np.ndarray | MaskRegion | None"  # a (H, W) bool plane, or a region of one


def _as_region(mask) -> MaskRegion | None:
    """A plane or a region as a trimmed region (None for None or an empty mask)."""
    if mask is None:
        return None
    region = region_from_plane(mask) if isinstance(mask, np.ndarray) else trimmed(*mask)
    return region if region.crop.size else None


def _box(region: MaskRegion | None, clicks: Sequence[Click]) -> tuple[float, float, float, float] | None:
    """(y0, y1, x0, x1) of the mask's pixels and the clicks; None when both are empty."""
    ys: list[float] = [c.y for c in clicks]
    xs: list[float] = [c.x for c in clicks]
    if region is not None:
        y0, y1, x0, x1 = region_bbox(region)
        ys += [float(y0), float(y1)]
        xs += [float(x0), float(x1)]
    if not ys:
        return None
    return min(ys), max(ys), min(xs), max(xs)


def _room(window: Window, box: tuple[float, float, float, float], shape: tuple[int, int]) -> float:
    """The box's smallest distance to an inner edge of the window (an edge on the image's border
    is not an inner edge; inf when every edge is on the border)."""
    wy0, wy1, wx0, wx1 = window
    y0, y1, x0, x1 = box
    H, W = shape
    edges = [(y0 - wy0, wy0 > 0), (wy1 - y1, wy1 < H), (x0 - wx0, wx0 > 0), (wx1 - x1, wx1 < W)]
    return min((d for d, inner in edges if inner), default=math.inf)


def zoom_window(mask: Mask, clicks: Sequence[Click], shape: tuple[int, int], *,
                canvas_scale: float | None = None, scale: float = ZOOM_SCALE, min_gain: float = ZOOM_MIN_GAIN,
                max_gain: float = ZOOM_MAX_GAIN, fit: float = ZOOM_FIT, max_object: float = ZOOM_MAX_OBJECT,
                reuse: Sequence[Window] = (), reuse_room: float = ZOOM_REUSE_ROOM) -> Window | None:
    """The crop an object is decoded on, or None when it should stay on the whole image.

    Parameters
    ----------
    mask : np.ndarray, MaskRegion or None
        The object's mask on the whole image (or on its previous crop): a (H, W) bool plane or a
        :class:`MaskRegion` (a large image's masks never become planes).
    clicks : sequence of Click
        The object's clicks (image pixels); the crop holds them.
    shape : (int, int)
        The image's (H, W).
    canvas_scale : float, optional
        Canvas pixels per image pixel where the object is decoded now: ``CANVAS / max(H, W)``
        for a whole image (the default), 1 in a 1024-pixel tile of a large image's full
        resolution.
    scale, min_gain, max_gain, fit, max_object : float
        See :data:`ZOOM_SCALE`, :data:`ZOOM_MIN_GAIN`, :data:`ZOOM_MAX_GAIN`, :data:`ZOOM_FIT` and
        :data:`ZOOM_MAX_OBJECT`.
    reuse : sequence of windows
        Crops already encoded: the one where the box has the most room is returned when that
        room is at least ``reuse_room`` (:data:`ZOOM_REUSE_ROOM`) of the crop's side.

    Returns
    -------
    (y0, y1, x0, x1) or None
        A square window of ``CANVAS / scale`` pixels (or ``CANVAS / (canvas_scale * max_gain)``,
        whichever is larger; cut to the image where it is smaller), centred on the mask's box with
        the clicks and moved inside the image, unless a crop of ``reuse`` holds the box with room.
    """
    H, W = shape
    now = CANVAS / max(H, W) if canvas_scale is None else float(canvas_scale)
    side = max(int(math.ceil(CANVAS / scale)), int(math.ceil(CANVAS / (now * max_gain))))
    if now * min_gain > scale or side >= max(H, W):
        return None  # the object is already shown (nearly) as enlarged
    region = _as_region(mask)
    box = _box(region, clicks)
    if box is None:
        return None
    area = int(np.count_nonzero(region.crop)) if region is not None else 0
    if 2 * math.sqrt(area / math.pi) * now > max_object:
        return None  # drawn with enough logits where it is
    y0, y1, x0, x1 = box
    if max(y1 - y0, x1 - x0) > fit * side:
        return None

    same = [w for w in reuse if w[1] - w[0] == min(side, H) and w[3] - w[2] == min(side, W)]
    if same:
        best = max(same, key=lambda w: _room(w, box, shape))
        if _room(best, box, shape) >= reuse_room * side:
            return best

    def place(lo: float, hi: float, n: int) -> tuple[int, int]:
        s = min(side, n)
        start = min(max(int(round((lo + hi) / 2 - s / 2)), 0), n - s)
        return start, start + s

    (wy0, wy1), (wx0, wx1) = place(y0, y1, H), place(x0, x1, W)
    return wy0, wy1, wx0, wx1


def _is_grey(pixels: np.ndarray) -> bool:
    """Whether an (h, w) or (h, w, C) image is grey: one channel, or its channels equal."""
    if pixels.ndim < 3 or pixels.shape[-1] == 1:
        return True
    first = pixels[..., 0]
    return all(np.array_equal(first, pixels[..., c]) for c in range(1, min(pixels.shape[-1], 3)))


def _inside(window: Window, shape: tuple[int, int], clicks: Sequence[Click], mask: Mask,
            margin: int = ZOOM_MARGIN) -> bool:
    """Whether the clicks and the mask keep ``margin`` pixels from the window's inner edges
    (an edge on the image's border is not an inner edge)."""
    box = _box(_as_region(mask), clicks)
    return box is None or _room(window, box, shape) >= margin


class CropEmbeddings:
    """The embeddings of the last ``max_items`` crops, shared by the objects of one image.

    ``get(window, compute)`` returns the embedding of ``window``, calling ``compute()`` once
    for a window it does not hold (thread-safe; the most recently used are kept).
    """

    def __init__(self, max_items: int = KEEP_CROPS) -> None:
        self.max_items = max(1, int(max_items))
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, window: Window, compute: Callable[[], object]):
        with self._lock:
            if window in self._items:
                self._items.move_to_end(window)
                return self._items[window]
        emb = compute()
        with self._lock:
            self._items[window] = emb
            self._items.move_to_end(window)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return emb

    def __contains__(self, window: Window) -> bool:
        with self._lock:
            return window in self._items

    def windows(self) -> list[Window]:
        """The windows held, the most recently used last."""
        with self._lock:
            return list(self._items)

    def nbytes(self) -> int:
        with self._lock:
            return sum(e.features.element_size() * e.features.nelement() for e in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ZoomedObject(OnPlane):
    """One object's clicks on an image, decoded on an enlarged crop while the object is small.

    The same interface as the history it wraps (:class:`~napari_focsam.core.prompting.InteractiveObject`
    on a whole plane, :class:`~napari_focsam.core.prompting.TiledHistory` in the tiles of a large
    image) where the session, the click loop and the evaluation use it (``clicks``, ``box``,
    ``mask``, ``region``, ``tile``, ``token``, ``add``, ``add_click``, ``undo``, ``truncate``,
    ``reset``, ``set_box``). ``logits``, ``refined`` and ``tile`` are those of the whole image's
    decoding, so None while the object is decoded on a crop: a crop's logits are not the
    image's. A box (:meth:`set_box`) keeps the object on the whole image: a box already tells
    the decoder the object's extent.

    Parameters
    ----------
    predictor : FocSAMPredictor
        Decodes the clicks and encodes the crops (:meth:`FocSAMPredictor.embed`).
    embedding : ImageEmbedding or callable
        The whole image's embedding (or a callable returning it, see ``InteractiveObject``);
        not used with ``whole``.
    read : callable
        ``read(y0, y1, x0, x1)`` -> the image's pixels in that window ((h, w) or (h, w, C), mapped
        to 8-bit as the whole image is), called once per crop.
    original_size : (int, int), optional
        The image's (H, W); needed when ``embedding`` is a callable.
    crops : CropEmbeddings, optional
        The crops' embeddings, shared with the other objects of the image (a session passes
        one); by default the object keeps its own (the last :data:`KEEP_CROPS`).
    whole : history, optional
        The click history on the whole image (a ``TiledHistory`` on a large image; by default an
        ``InteractiveObject`` on ``embedding``). Its ``canvas_scale``, where it has one, is the
        scale the object is decoded at before zooming; its masks are used as regions only.
    on_crop : callable, optional
        ``on_crop(region)``: called with the whole image's mask of the first click when a crop
        must be encoded before the object's mask is ready (about 1 s on a CPU), so that a caller
        can show that mask meanwhile (on the thread that decodes).
    """

    offset = 0.0  # the propagation cuts its runs from this slice at 0 (no level cut)

    def __init__(self, predictor: FocSAMPredictor, embedding, read: Callable[[int, int, int, int], np.ndarray], *,
                 original_size: tuple[int, int] | None = None, crops: CropEmbeddings | None = None,
                 whole=None, on_crop: Callable[[MaskRegion], None] | None = None) -> None:
        self.predictor = predictor
        self._read = read
        self.on_crop = on_crop
        if whole is None:
            whole = InteractiveObject(predictor, embedding, original_size=original_size)
        self._whole = whole
        self._plane = isinstance(whole, InteractiveObject)  # masks as planes (else regions only)
        self.original_size = tuple(whole.original_size)
        self._clicks: list[Click] = []
        self._window: Window | None = None
        self._crop: InteractiveObject | None = None
        self._own_crops = crops is None
        self._crops = CropEmbeddings() if crops is None else crops
        self._region: MaskRegion | None = None  # the zoomed mask (cached per state)
        self._mask: np.ndarray | None = None  # ... as a plane, for a plane image
        #: the windows the object was decoded on, one per click (None: the whole image)
        self.windows: list[Window | None] = []
        self._tokens: list[int] = []  # one per click: identifies the state after it

    def __repr__(self) -> str:
        return f"ZoomedObject(clicks={len(self._clicks)}, window={self._window})"

    def __len__(self) -> int:
        return len(self._clicks)

    @property
    def clicks(self) -> list[Click]:
        return list(self._clicks)

    @property
    def window(self) -> Window | None:
        """The crop the object is decoded on now (None: the whole image)."""
        return self._window

    @property
    def box(self):
        """The box prompt (see :meth:`set_box`), None without one."""
        return self._whole.box

    @property
    def blank(self) -> bool:
        """The whole image's embedding was marked blank at the last click (its mask is empty)."""
        return self._whole.blank

    @property
    def token(self) -> int | None:
        """Identifies the current state (changes with every click, box, undo or reset); None when empty."""
        if self._tokens:
            return self._tokens[-1]
        return self._whole.token

    @property
    def tile(self):
        """The whole image's tile the object is decoded in (None on a crop or a plane)."""
        return getattr(self._whole, "tile", None) if self._window is None else None

    def next_tile(self, click: Click):
        """The tile of the whole image the next click needs (a tiled image: to encode it first)."""
        return self._whole.next_tile(click)

    def first_tile(self, box):
        """The tile of the whole image a new box needs (a tiled image)."""
        return self._whole.first_tile(box)

    def nbytes(self) -> int:
        """Bytes held: both click histories, its own crop embeddings (not shared ones) and the mask."""
        crops = self._crops.nbytes() if self._own_crops else 0
        held = [a for a in (self._mask, self._region.crop if self._region is not None else None) if a is not None]
        return (self._whole.nbytes() + (self._crop.nbytes() if self._crop is not None else 0) + crops
                + sum(a.nbytes for a in held))

    @property
    def logits(self):
        return self._whole.logits if self._window is None else None

    @property
    def refined(self):
        return getattr(self._whole, "refined", None) if self._window is None else None

    @property
    def region(self) -> MaskRegion:
        """The mask as a :class:`MaskRegion` (never a whole plane of a large image)."""
        if self._window is None or self._crop is None:
            return self._whole.region
        if self._region is None:
            self._region = trimmed(self._window[0], self._window[2], self._crop.mask)
        return self._region

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, read-only: the mask after the last click."""
        if self._window is None or self._crop is None:
            return self._whole.mask
        if not self._plane:
            return region_to_plane(self.region, self.original_size)
        if self._mask is None:
            self._mask = region_to_plane(self.region, self.original_size)
        return self._mask

    def _changed(self) -> None:
        self._region = self._mask = None

    def _on_crop(self, window: Window, pixels: np.ndarray | None = None) -> InteractiveObject:
        """A fresh click history on the crop ``window`` (its embedding computed once, from
        ``pixels`` when the caller read them already)."""
        def compute():
            return self.predictor.embed(np.asarray(self._read(*window)) if pixels is None else pixels)

        return InteractiveObject(self.predictor, self._crops.get(window, compute))

    def _replay(self, window: Window | None, pixels: np.ndarray | None = None) -> StepResult | None:
        """Decode all clicks again on ``window`` (None: the whole image; ``pixels``: the window's,
        if read already); the last step's result (None from a tiled whole image)."""
        self._window = window
        self._changed()
        if window is None:
            self._crop = None
            self._whole.reset()
            obj, dy, dx = self._whole, 0, 0
        else:
            obj = self._crop = self._on_crop(window, pixels)
            dy, dx = window[0], window[2]
        res = None
        for c in self._clicks:
            res = obj.add(Click(c.y - dy, c.x - dx, c.is_positive))
        return res

    def _zoom_window(self, mask) -> Window | None:
        return zoom_window(mask, self._clicks, self.original_size, reuse=self._crops.windows(),
                           canvas_scale=getattr(self._whole, "canvas_scale", None))

    def _second_look(self, res: StepResult | None, whole: MaskRegion) -> StepResult | None:
        """A doubtful first answer on the whole image (scored under :data:`ZOOM_DOUBT`) decoded
        again on a crop centred on the clicks; the crop's answer is kept when it keeps
        :data:`ZOOM_MARGIN` pixels from the crop's inner edges and the decoder scores it higher.
        ``res``: the whole image's answer (None in the tiles of a large image), returned when it
        stays."""
        score = self._whole.score
        if score is None or score >= ZOOM_DOUBT:
            return res
        shape = self.original_size
        window = zoom_window(None, self._clicks, shape, reuse=self._crops.windows(),
                             canvas_scale=getattr(self._whole, "canvas_scale", None))
        if window is None:
            return res
        pixels = np.asarray(self._read(*window))
        if not _is_grey(pixels):
            return res  # a colour photograph: see ZOOM_DOUBT
        if self.on_crop is not None and window not in self._crops:
            self.on_crop(whole)
        on_crop = self._replay(window, pixels)
        crop_score = getattr(on_crop, "score", None)
        if crop_score is not None and crop_score > score and _inside(window, shape, self._clicks, self.region):
            return on_crop
        self._window, self._crop = None, None  # the whole image's answer stays (its history holds it)
        self._changed()
        return res

    def add_click(self, y: float, x: float, positive: bool = True) -> np.ndarray:
        """Add a click (image coordinates); the new (H, W) bool mask."""
        self.add(checked_click(y, x, positive, self.original_size))
        return self.mask

    def add(self, click: Click) -> StepResult | None:
        """Add a click; the :class:`StepResult` of the object's decoding on a plane image (its mask
        the plane's), None on a tiled image (read :attr:`region`).

        A click off the image raises ValueError; on any error (such as running out of memory
        while encoding a crop) the object is left as it was before the click.
        """
        check_clicks_inside([click], self.original_size)
        saved = (self._window, self._crop, len(self._whole), len(self._crop) if self._crop is not None else 0)
        try:
            res = self._add(click)
        except BaseException:
            window, crop, n_whole, n_crop = saved
            del self._clicks[len(self.windows):]
            self._whole.truncate(n_whole)
            if crop is not None:
                crop.truncate(n_crop)
            self._window, self._crop = window, crop
            self._changed()
            raise
        if not self._plane:
            return None
        return StepResult(self.mask, res.logits if self._window is None else None, None,
                          res.decoder_seconds, res.refine_seconds, getattr(res, "score", None))

    def _add(self, click: Click) -> StepResult | None:
        self._clicks.append(click)
        self._changed()
        shape = self.original_size
        if self._whole.box is not None:
            res = self._whole.add(click)
        elif self._window is None:
            res = self._whole.add(click)
            first = click.is_positive and sum(c.is_positive for c in self._clicks) == 1
            # a blank image (or an empty answer) gives no object to enlarge
            whole = self._whole.region
            first = first and not self._whole.blank and bool(np.any(whole.crop))
            window = self._zoom_window(whole) if first else None
            if window is not None:
                if self.on_crop is not None and window not in self._crops:
                    self.on_crop(whole)  # the whole image's answer, while the crop is encoded
                res = self._replay(window)
            elif first:
                res = self._second_look(res, whole)
        else:
            y0, x0 = self._window[0], self._window[2]
            inside = _inside(self._window, shape, self._clicks, None)
            if inside:
                res = self._crop.add(Click(click.y - y0, click.x - x0, click.is_positive))
                self._changed()
            if not inside or not _inside(self._window, shape, self._clicks, self.region):
                # placed again around the mask (the new one, or the last one when the click left
                # the crop) and the clicks, or back on the whole image
                window = self._zoom_window(self.region)
                if window is None or window != self._window or not inside:
                    res = self._replay(window)
        self.windows.append(self._window)
        self._tokens.append(next(_SERIAL))
        return res

    def undo(self) -> np.ndarray:
        """Remove the last click; the previous mask (the crop of that click, replayed)."""
        self._undo()
        return self.mask

    def _undo(self) -> None:
        if not self._clicks:
            return
        self._clicks.pop()
        self.windows.pop()
        self._tokens.pop()
        window = self.windows[-1] if self.windows else None
        if window == self._window and window is not None and len(self._crop) == len(self._clicks) + 1:
            self._crop.undo()
            self._changed()
        elif window is None and self._window is None:
            self._whole.truncate(len(self._clicks))
        else:
            self._replay(window)

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` clicks only."""
        while len(self._clicks) > max(0, n):
            self._undo()

    def reset(self) -> None:
        self._clicks.clear()
        self.windows.clear()
        self._tokens.clear()
        self._whole.reset()
        self._window, self._crop = None, None
        self._changed()

    def set_box(self, box) -> np.ndarray:
        """Start the object from a box (y0, x0, y1, x1) on the whole image, or remove it (None);
        the clicks are replayed on top of it (see ``InteractiveObject.set_box``)."""
        clicks = self.clicks
        self.reset()
        self._whole.set_box(box)
        for c in clicks:
            self.add(c)
        return self.mask
