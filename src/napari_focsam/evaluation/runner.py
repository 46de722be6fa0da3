"""Adapter from the FocSAM predictor to the benchmark protocol (the ``evaluate`` command is in
:mod:`napari_focsam.cli.evaluate`)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from ..core.defaults import DEFAULT_ZOOM
from ..core.embeddings import ImageEmbedding
from ..core.prompting import CropEmbeddings, FocSAMPredictor, InteractiveObject, ZoomedObject
from .datasets import read_dataset, to_rgb_uint8
from .metrics import Timings
from .protocol import evaluate_dataset, plot_miou_curves, write_results
from .tiled import LargeImageAdapter


class PredictorAdapter:
    """Runs the FocSAM per-object loop for :func:`.protocol.evaluate_dataset`.

    The embedding is computed once per image (``set_image``) and shared by its objects;
    each object gets a fresh :class:`InteractiveObject`; seconds are split into embedding,
    decoder and refine.

    cache_dir: when given, each image's float32 embedding is also kept there
    (``<cache_dir>/<encoder id>/<sha1 of the image>.pt``) and read back by later runs, so that
    benchmarks comparing click policies encode every image once. A read embedding is the same
    tensor the encoder gave; its seconds still count as ``embedding``.

    zoom: each object is a :class:`~napari_focsam.core.prompting.ZoomedObject` (small objects
    decoded on an enlarged crop; the crops' embeddings are shared by the image's objects, and their
    encoder passes are not in the timings).
    """

    def __init__(self, predictor: FocSAMPredictor, cache_dir: str | Path | None = None, *, zoom: bool = False) -> None:
        self.predictor = predictor
        self.timings = Timings()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.zoom = zoom
        self._embedding = None
        self._image: np.ndarray | None = None
        self._rgb: np.ndarray | None = None
        self._crops = CropEmbeddings()  # the current image's crops, shared by its objects
        self._object: InteractiveObject | ZoomedObject | None = None

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The current image's embedding (None before :meth:`set_image`)."""
        return self._embedding

    def _cache_file(self, image: np.ndarray) -> Path:
        from ..core.embeddings import model_id

        arr = np.ascontiguousarray(image)
        h = hashlib.sha1(f"{arr.shape}|{arr.dtype}|".encode())
        h.update(arr.tobytes())
        return self.cache_dir / model_id(self.predictor)[:16] / f"{h.hexdigest()}.pt"

    def set_image(self, image: np.ndarray) -> None:
        self._image, self._rgb, self._crops = image, None, CropEmbeddings()
        with self.timings.measure("embedding"):
            path = self._cache_file(image) if self.cache_dir is not None else None
            if path is not None and path.is_file():
                d = torch.load(path, map_location=self.predictor.device, weights_only=True)
                self._embedding = ImageEmbedding(d["features"], tuple(d["input_size"]), tuple(d["original_size"]))
                return
            self._embedding = self.predictor.embed(image)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                emb = self._embedding
                torch.save({"features": emb.features.cpu(), "input_size": list(emb.input_size),
                            "original_size": list(emb.original_size)}, tmp)
                tmp.replace(path)

    def reset(self) -> None:
        if self.zoom:
            self._object = ZoomedObject(self.predictor, self._embedding, self._read, crops=self._crops)
        else:
            self._object = InteractiveObject(self.predictor, self._embedding)

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The current image's window (a zoomed object's crop), as the encoder's 8-bit RGB of the
        whole image (one intensity mapping for the image and its crops)."""
        if self._rgb is None:
            self._rgb = to_rgb_uint8(self._image)
        return self._rgb[y0:y1, x0:x1]

    def predict(self, clicks) -> np.ndarray:
        if self._object is None:
            self.reset()
        if len(clicks) != len(self._object.clicks) + 1:
            raise RuntimeError("the protocol must add exactly one click per prediction")
        res = self._object.add(clicks[-1])
        self.timings.add("decoder", res.decoder_seconds)
        self.timings.add("refine", res.refine_seconds)
        return res.mask


def run_evaluation(dataset: str, data_root, model, out_dir, *, refine_modes=(True,), max_objects=None,
                   max_clicks: int = 20, device: str = "auto", progress=None,
                   refiner=None, images: str | None = None,
                   refine_precision: str | None = None, zoom: bool = DEFAULT_ZOOM) -> dict[str, dict]:
    """Evaluate one model on one dataset for each refine mode; returns {label: summary}.

    zoom: small objects on an enlarged crop, as in the widget (see :class:`PredictorAdapter`).
    """
    from ..core.models import load_model

    net = load_model(model, device, refiner=refiner, refine_precision=refine_precision)
    out_dir = Path(out_dir)
    summaries, curves = {}, {}
    for refine in refine_modes:
        predictor = FocSAMPredictor(net, refine=refine)
        label = "focsam" if predictor.refine else "no_refine"
        if label in summaries:
            continue  # a model without refiner gives the same loop twice
        ds = read_dataset(dataset, data_root, max_objects=max_objects)
        if images:
            ds = ds.select(images)
        adapter = LargeImageAdapter(PredictorAdapter(predictor, zoom=zoom))  # large images: tiles (tiled.py)
        t0 = time.perf_counter()
        per_object, summary = evaluate_dataset(ds, adapter, max_clicks, progress=progress)
        summary.update({"dataset": dataset, "model": net.model_type, "refine": predictor.refine, "zoom": bool(zoom),
                        "refine_matmul_dtype": str(net.focus_refiner.matmul_dtype) if predictor.refine else None,
                        "wall_seconds": round(time.perf_counter() - t0, 2)})
        target = out_dir / label if len(refine_modes) > 1 else out_dir
        write_results(target, per_object, summary, label=label)
        summaries[label], curves[label] = summary, summary["miou"]
    if len(curves) > 1:
        plot_miou_curves(curves, out_dir / "miou_curve.png", title=f"{dataset}: mean IoU per click")
    return summaries
