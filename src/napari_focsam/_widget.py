"""The FocSAM dock widget: click-based segmentation of images and stacks in napari.

Layout (top to bottom)
----------------------
* **Setup** -- image layer (2D, RGB, 3D stack), model (registry names, then
  "Custom file..."), device (auto / cpu / cuda / mps), FocSAM focus refinement
  (only when the model has a refiner), optional embedding cache folder.
* **Output** -- labels layer (or "New labels layer"), "Overwrite existing labels".
* **Prompts** -- the polarity of the next click (``T`` toggles it).
* **Actions** -- Commit [C], Clear [Shift+C], Segment volume [Shift+S] with its
  IoU stop threshold and Cancel.
* **Status** -- embedding progress, last click latency, object and next label id.

Layers
------
The widget creates (or adopts, by name) a points layer ``FocSAM prompts`` whose
points carry a boolean feature ``positive`` (green discs = positive, red
crosses = negative) and a labels layer ``FocSAM preview`` showing the current
object's mask.  A click adds a positive point, Ctrl+click (or right click) a
negative one; deleting points works as usual in napari.  Every change of the
points re-segments the object.

Threading
---------
Nothing heavy runs on the GUI thread.  napari workers (``create_worker``) run:

* *session loading* (weights, model, :class:`~napari_focsam.core.session.Session`),
* *embedding* (a generator: slice in view first, then outwards; it pauses while a
  click is being answered; napari progress bar),
* *prediction* (``SegmentedObject.set_clicks`` with the whole points layer: at most
  one runs at a time; a generation counter drops stale results and the newest
  points are sent when the running job ends),
* *volume propagation* (progress bar and cancel).

Every job catches its own errors and hands back a one-line message shown with
napari notifications (never a traceback); CUDA/MPS out-of-memory switches to the
CPU and says so.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from napari.layers import Image, Labels, Points
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .core.weights import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FocSAMWidget"]

PROMPTS_NAME = "FocSAM prompts"
PREVIEW_NAME = "FocSAM preview"
OUTPUT_NAME = "FocSAM labels"
NEW_LABELS = "New labels layer"
CUSTOM_FILE = "Custom file..."
DEVICES = ("auto", "cpu", "cuda", "mps")
POSITIVE_COLOR = "#22dd44"
NEGATIVE_COLOR = "#ff3333"
#: Colour of the current object (yellow: rare in napari's label colours, clear on grey data).
PREVIEW_RGBA = (1.0, 0.85, 0.0, 1.0)
#: Key bindings (napari key strings), bound on the viewer and on the prompts layer.
KEYS = {"commit": "C", "clear": "Shift-C", "volume": "Shift-S", "toggle": "T"}
#: Environment variable that pre-fills the "Cache folder" field.
EMBEDDING_CACHE_ENV = "NAPARI_FOCSAM_EMBEDDING_CACHE"
#: Bytes of one slice embedding in the store (256 x 64 x 64 float16).
_EMBEDDING_BYTES = 256 * 64 * 64 * 2


# --------------------------------------------------------------------------- helpers


@dataclass
class _Failure:
    """An error a job caught, as a one-line message for people."""

    message: str
    oom: bool = False
    level: str = "error"


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # pragma: no cover - torch always importable here
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and "out of memory" in text


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException, what: str = "") -> _Failure:
    """A short, actionable message for an exception raised by the engine."""
    from .core.weights import WeightsUnavailableError

    prefix = f"{what}: " if what else ""
    if _is_oom(exc):
        return _Failure(prefix + "out of GPU memory", oom=True)
    if isinstance(exc, WeightsUnavailableError):
        if exc.entry.downloadable:
            how = f"fetch it with:  napari-focsam weights fetch {exc.name}"
        else:
            where = f" from {exc.manual_url}" if exc.manual_url else ""
            how = f"download it by hand{where}, then run:  {exc.import_command}"
        return _Failure(f"Model '{exc.name}' is not available on this computer; {how}")
    if isinstance(exc, FileNotFoundError):
        return _Failure(prefix + _one_line(str(exc)))
    if isinstance(exc, (ValueError, IsADirectoryError)):
        return _Failure(prefix + _one_line(str(exc)))
    return _Failure(prefix + _one_line(f"{type(exc).__name__}: {exc}"))


def _default_iou() -> float:
    from .core.volume import DEFAULT_IOU_THRESHOLD

    return float(DEFAULT_IOU_THRESHOLD)


def _spatial_shape(layer: Image) -> tuple[int, ...]:
    data = layer.data[0] if layer.multiscale else layer.data
    return tuple(int(s) for s in data.shape[: layer.ndim])


def _image_data(layer: Image) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def _transform_kwargs(layer: Any) -> dict:
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
        "units": tuple(layer.units),
    }


class _Bridge(QObject):
    """Qt signals used to report from worker threads (queued to the GUI thread)."""

    volume_progress = Signal(int, int)


@dataclass
class _Context:
    """Everything that belongs to one Session (image x model x device x cache)."""

    session: Any
    image: Image
    model_name: str
    device: str
    cache_dir: str | None
    has_refiner: bool
    is_3d: bool
    n_slices: int
    plane_shape: tuple[int, int]
    spatial_shape: tuple[int, ...]
    epoch: int = -1
    obj: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def object_for(self, epoch: int):
        """The session object of ``epoch`` (a new one when the widget moved on); call under lock."""
        if self.obj is None or self.epoch != epoch:
            if self.obj is not None:
                try:
                    self.session.remove_object(self.obj)
                except ValueError:
                    pass
            self.obj = self.session.new_object()
            self.epoch = epoch
        return self.obj


# --------------------------------------------------------------------------- the widget


class FocSAMWidget(QWidget):
    """Dock widget for click-based FocSAM segmentation (see the module docs)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # napari hands plugins a PublicOnlyProxy of the viewer, and every layer reached through it
        # is a new proxy object, so identity checks (layer is self._prompts) and the layers we get
        # back in events (real objects) would never match. We use public API only, on the real
        # objects (see napari issue 5767 about proxies and equality).
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._bridge = _Bridge()
        self._bridge.volume_progress.connect(self._on_volume_progress)

        # engine state
        self._ctx: _Context | None = None
        self._config: tuple | None = None
        self._load_token = 0
        self._load_worker = None
        self._embed_worker = None
        self._embed_stop = threading.Event()
        self._embed_job = 0
        self._predict_worker = None
        self._volume_worker = None
        self._volume_cancel = threading.Event()
        self._volume_pbar = None
        self._gen = 0  # bumped at every prompt change
        self._epoch = 0  # bumped when the current object is dropped (clear/commit)
        self._dirty = False  # the points changed since the last prediction was sent
        self._t_change = 0.0
        self._click_pending = threading.Event()  # a click waits: background embedding pauses
        self._view_z = 0
        self._masks: dict[int, np.ndarray] = {}
        self._has_volume = False  # the preview shows a propagated volume
        self._commit_requested = False
        self._positive = True
        self._next_positive: bool | None = None  # one-shot polarity of a Ctrl+click
        self._ignore_points = False
        self._dropped_warned = 0
        self._points_sig: tuple = ()
        self._closed = False
        self._cpu_fallback_done = False
        self._last_model_index = 0
        self._refine_wanted = True  # the user's choice, kept while a model without refiner is loaded
        self.last_message = ""
        self.last_latency_ms: float | None = None
        self.last_model_ms: float | None = None
        self.last_committed_id: int | None = None
        self.embedded_slices = 0

        # managed layers
        self._image: Image | None = None
        self._prompts: Points | None = None
        self._preview: Labels | None = None
        self._output_new: Labels | None = None
        self._key_owners: list[tuple[Any, str, Any]] = []
        self._watched_names: set[int] = set()
        self._was_docked = False

        self._build_ui()
        self._bind_viewer_keys()
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.events.moved.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_dims_changed)
        self._refresh_layer_combos()
        self._on_image_selected()
        if self._image is None:
            self._notify("info", "no image layer yet: open an image (File > Open Sample > FocSAM, "
                                 "or drop a file on the viewer)")

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        from .core.weights import cached_path, known_names, registered

        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)

        setup = QGroupBox("Setup")
        form = QFormLayout(setup)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer to segment: 2D, RGB or a 3D stack (Z, Y, X)")
        form.addRow("Image", self.image_combo)

        self.model_combo = QComboBox()
        entries = registered()
        for name in known_names():
            e = entries[name]
            self.model_combo.addItem(name, name)
            cached = cached_path(e).is_file()
            tip = e.description or name
            tip += " -- cached" if cached else (" -- downloaded on first use" if e.downloadable
                                                  else " -- manual download")
            self.model_combo.setItemData(self.model_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.model_combo.addItem(CUSTOM_FILE, None)
        self.model_combo.setCurrentIndex(max(self.model_combo.findData(DEFAULT_MODEL), 0))
        self._last_model_index = self.model_combo.currentIndex()
        self.model_combo.setToolTip("Registry model, or a checkpoint file of your own")
        form.addRow("Model", self.model_combo)

        self.device_combo = QComboBox()
        for dev in DEVICES:
            self.device_combo.addItem(dev)
        self._disable_missing_devices()
        self.device_combo.setToolTip("auto: CUDA, then Apple MPS, then the CPU")
        form.addRow("Device", self.device_combo)

        self.refine_check = QCheckBox("focus refiner")
        self.refine_check.setChecked(True)
        self.refine_check.setEnabled(False)
        self.refine_check.setToolTip("FocSAM's focus refinement of the embedding from the 2nd click on; "
                                     "available when the model has a focus refiner")
        form.addRow("Refine", self.refine_check)

        cache_row = QHBoxLayout()
        self.cache_edit = QLineEdit(os.environ.get(EMBEDDING_CACHE_ENV, ""))
        self.cache_edit.setPlaceholderText("none: embeddings kept in memory")
        self.cache_edit.setToolTip("Optional folder where image embeddings are saved and reused across "
                                   f"sessions (default: ${EMBEDDING_CACHE_ENV})")
        self.cache_button = QToolButton()
        self.cache_button.setText("...")
        cache_row.addWidget(self.cache_edit)
        cache_row.addWidget(self.cache_button)
        form.addRow("Cache folder", cache_row)
        root.addWidget(setup)

        output = QGroupBox("Output")
        oform = QFormLayout(output)
        self.output_combo = QComboBox()
        self.output_combo.setToolTip("Labels layer that receives committed objects (ids max+1)")
        oform.addRow("Labels", self.output_combo)
        self.overwrite_check = QCheckBox("Overwrite existing labels")
        self.overwrite_check.setToolTip("Off: a commit only fills background (0) pixels")
        oform.addRow("", self.overwrite_check)
        root.addWidget(output)

        prompts = QGroupBox("Prompts")
        pl = QVBoxLayout(prompts)
        self.polarity_button = QPushButton()
        self.polarity_button.setCheckable(True)
        self.polarity_button.setToolTip("Polarity of the next click (T). Ctrl+click adds the opposite one.")
        pl.addWidget(self.polarity_button)
        hint = QLabel("Click: add point · Ctrl/right click: opposite polarity · "
                      "select + Delete: remove · T: toggle")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray;")
        pl.addWidget(hint)
        root.addWidget(prompts)

        actions = QGroupBox("Actions")
        al = QVBoxLayout(actions)
        row = QHBoxLayout()
        self.commit_button = QPushButton("Commit [C]")
        self.commit_button.setToolTip("Write the object into the output labels layer (Ctrl+Z there undoes it)")
        self.clear_button = QPushButton("Clear [Shift+C]")
        self.clear_button.setToolTip("Drop the current object and its points")
        row.addWidget(self.commit_button)
        row.addWidget(self.clear_button)
        al.addLayout(row)
        self.volume_button = QPushButton("Segment volume [Shift+S]")
        self.volume_button.setToolTip("3D stacks: propagate the object slice by slice from the clicked "
                                      "slices through the stack, then commit it")
        al.addWidget(self.volume_button)
        vform = QFormLayout()
        self.iou_spin = QDoubleSpinBox()
        self.iou_spin.setRange(0.05, 0.95)
        self.iou_spin.setSingleStep(0.05)
        self.iou_spin.setDecimals(2)
        self.iou_spin.setValue(_default_iou())
        self.iou_spin.setToolTip("Propagation stops at the first slice whose mask overlaps the previous "
                                 "slice's mask less than this (intersection over union)")
        vform.addRow("Stop below IoU", self.iou_spin)
        al.addLayout(vform)
        crow = QHBoxLayout()
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        crow.addWidget(self.progress_bar, 1)
        crow.addWidget(self.cancel_button)
        al.addLayout(crow)
        root.addWidget(actions)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(self.status_label)
        root.addStretch(1)

        self._update_polarity_ui()
        self.image_combo.currentIndexChanged.connect(self._on_image_selected)
        self.model_combo.activated.connect(self._on_model_activated)
        self.device_combo.currentIndexChanged.connect(self._on_setup_changed)
        self.refine_check.toggled.connect(self._on_refine_toggled)
        self.cache_edit.editingFinished.connect(self._on_setup_changed)
        self.cache_button.clicked.connect(self._choose_cache_dir)
        self.polarity_button.clicked.connect(lambda: self.toggle_polarity())
        self.commit_button.clicked.connect(lambda: self.commit())
        self.clear_button.clicked.connect(lambda: self.clear())
        self.volume_button.clicked.connect(lambda: self.segment_volume())
        self.cancel_button.clicked.connect(self.cancel_volume)
        self._update_buttons()

    def _disable_missing_devices(self) -> None:
        import torch

        avail = {"auto": True, "cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
        model = self.device_combo.model()
        for i, dev in enumerate(DEVICES):
            if not avail[dev]:
                item = model.item(i)
                item.setEnabled(False)
                item.setToolTip(f"{dev} is not available on this computer")

    def _update_polarity_ui(self) -> None:
        b = self.polarity_button
        b.setChecked(not self._positive)
        if self._positive:
            b.setText("Next click: positive (T toggles)")
            b.setStyleSheet(f"color: {POSITIVE_COLOR}; font-weight: bold;")
        else:
            b.setText("Next click: negative (T toggles)")
            b.setStyleSheet(f"color: {NEGATIVE_COLOR}; font-weight: bold;")

    def _update_buttons(self) -> None:
        ready = self._ctx is not None
        self.commit_button.setEnabled(ready)
        self.clear_button.setEnabled(ready)
        is_3d = bool(self._ctx is not None and self._ctx.is_3d)
        busy = self._volume_worker is not None
        self.volume_button.setEnabled(ready and is_3d and not busy)
        self.iou_spin.setEnabled(is_3d)
        has = bool(self._ctx is not None and self._ctx.has_refiner)
        self.refine_check.setEnabled(has)
        self.refine_check.blockSignals(True)
        if self._ctx is not None and not has:
            self.refine_check.setChecked(False)
            self.refine_check.setText("none in this model")
        else:
            self.refine_check.setChecked(self._refine_wanted)
            self.refine_check.setText("focus refiner")
        self.refine_check.blockSignals(False)

    def _set_status(self, text: str | None = None) -> None:
        parts = []
        ctx = self._ctx
        if text:
            parts.append(text)
        if ctx is not None:
            dev = str(ctx.session.predictor.device)
            parts.append(f"model {ctx.model_name} on {dev}")
            if ctx.is_3d:
                parts.append(f"embeddings {self.embedded_slices}/{ctx.n_slices}")
            elif not self.embedded_slices:
                parts.append("computing the image embedding ...")
        if self.last_latency_ms is not None:
            parts.append(f"last click {self.last_latency_ms:.0f} ms")
        out = self._output_layer(create=False)
        if out is not None and out.data.size <= 2**25:  # a max over huge labels would stall the GUI
            parts.append(f"next id {self._next_id(out)}")
        self.status_label.setText(" · ".join(parts))

    def _notify(self, level: str, message: str) -> None:
        """All user messages go through here (one line, napari notification, status line)."""
        self.last_message = message
        text = f"FocSAM: {message}"
        if level == "error":
            show_error(text)
        elif level == "warning":
            show_warning(text)
        else:
            show_info(text)
        try:
            self._set_status(message)
        except RuntimeError:  # widget already deleted
            pass

    # ------------------------------------------------------------------ layer combos
    def _on_layers_changed(self, event=None) -> None:
        if self._closed:
            return
        removed = getattr(event, "value", None) if getattr(event, "type", "") == "removed" else None
        if removed is not None:
            if removed is self._prompts:
                self._detach_prompts()
            if removed is self._preview:
                self._preview = None
            if removed is self._output_new:
                self._output_new = None
        self._refresh_layer_combos()
        inserted = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if isinstance(inserted, Image) and self._ctx is None and self._load_worker is None:
            # nothing usable is selected (no image, an unsupported one, a failed load): take the new one
            self.image_combo.setCurrentIndex(self.image_combo.findData(inserted))
            self._on_image_selected()
            return
        if removed is not None and removed is self._image:
            # the viewer may be closing (it removes layers one by one): decide later
            self._drop_context()
            self._image_gone()
            QTimer.singleShot(0, self._deferred_image_check)
        elif self._image is None and self.image_combo.count():
            self._on_image_selected()

    def _image_gone(self) -> None:
        image = self._image
        self._image = None
        self._config = None
        if image is not None:
            try:
                image.events.data.disconnect(self._on_image_data)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _deferred_image_check(self) -> None:
        try:
            if not self._closed and self._image is None:
                self._on_image_selected()
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _on_layer_renamed(self, event=None) -> None:
        if not self._closed:
            self._refresh_layer_combos()

    def _refresh_layer_combos(self) -> None:
        for la in self.viewer.layers:
            if isinstance(la, (Image, Labels)) and id(la) not in self._watched_names:
                la.events.name.connect(self._on_layer_renamed)
                self._watched_names.add(id(la))
        images = [la for la in self.viewer.layers if isinstance(la, Image)]
        current = self._image if self._image in images else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for la in images:
            self.image_combo.addItem(la.name, la)
        if current is not None:
            self.image_combo.setCurrentIndex(images.index(current))
        elif images:
            active = self.viewer.layers.selection.active
            self.image_combo.setCurrentIndex(images.index(active) if active in images else len(images) - 1)
        self.image_combo.blockSignals(False)

        prev = self.output_combo.currentData()
        labels = [la for la in self.viewer.layers if isinstance(la, Labels) and la is not self._preview]
        self.output_combo.blockSignals(True)
        self.output_combo.clear()
        self.output_combo.addItem(NEW_LABELS, None)
        for la in labels:
            self.output_combo.addItem(la.name, la)
        target = prev if prev in labels else (self._output_new if self._output_new in labels else None)
        if target is None and self._image is not None:
            shape = _spatial_shape(self._image)
            target = next((la for la in labels if la.name == OUTPUT_NAME and la.data.shape == shape), None)
        self.output_combo.setCurrentIndex(labels.index(target) + 1 if target is not None else 0)
        self.output_combo.blockSignals(False)

    # ------------------------------------------------------------------ setup changes
    def _selected_image(self) -> Image | None:
        return self.image_combo.currentData()

    def _model_spec(self) -> str | None:
        return self.model_combo.currentData()

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) is None:  # "Custom file..."
            path, _ = QFileDialog.getOpenFileName(
                self, "FocSAM / SAM checkpoint", str(Path.home()),
                "Checkpoints (*.pt *.pth *.ckpt *.bin *.safetensors);;All files (*)")
            if not path:
                self.model_combo.setCurrentIndex(self._last_model_index)
                return
            self.set_model(path)
            return
        self._on_setup_changed()

    def set_model(self, name_or_path: str) -> None:
        """Select a registry model by name or a checkpoint file by path (adds it to the list)."""
        idx = self.model_combo.findData(str(name_or_path))
        if idx < 0:
            idx = self.model_combo.count() - 1  # before "Custom file..."
            self.model_combo.insertItem(idx, Path(name_or_path).name, str(name_or_path))
            self.model_combo.setItemData(idx, str(name_or_path), Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setCurrentIndex(idx)
        self._on_setup_changed()

    def set_image_layer(self, layer: Any) -> None:
        """Select the layer to segment (validated: an Image layer with 2 or 3 spatial axes)."""
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            self._notify("error", f"'{getattr(layer, 'name', layer)}' is a {kind} layer: FocSAM segments "
                                  "image layers (2D, RGB or 3D stacks)")
            return
        idx = self.image_combo.findData(layer)
        if idx < 0:
            self._notify("error", f"'{layer.name}' is not in this viewer")
            return
        self.image_combo.setCurrentIndex(idx)
        self._on_image_selected()

    def _choose_cache_dir(self) -> None:
        start = self.cache_edit.text() or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Embedding cache folder", start)
        if path:
            self.cache_edit.setText(path)
            self._on_setup_changed()

    def _on_image_selected(self, *_: Any) -> None:
        layer = self._selected_image()
        if layer is not self._image:
            if self._image is not None:
                try:
                    self._image.events.data.disconnect(self._on_image_data)
                except (TypeError, ValueError, RuntimeError):
                    pass
            self._image = layer
            if layer is not None:
                layer.events.data.connect(self._on_image_data)
        self._on_setup_changed()

    def _on_image_data(self, event=None) -> None:
        self._config = None  # the pixels changed: a new session is needed
        self._on_setup_changed()

    def _on_setup_changed(self, *_: Any) -> None:
        """(Re)build the session when the image, model, device or cache folder changed."""
        if self._closed:
            return
        if self.model_combo.currentData() is not None:
            self._last_model_index = self.model_combo.currentIndex()
        layer = self._image
        if layer is None:
            self._drop_context()
            self._set_status("no image layer: open an image (File > Open Sample > FocSAM)")
            return
        if layer.ndim not in (2, 3):
            self._drop_context()
            self._notify("error", f"'{layer.name}' has {layer.ndim} dimensions: FocSAM supports 2D images, "
                                  "RGB images and 3D stacks (Z, Y, X)")
            return
        model = self._model_spec() or DEFAULT_MODEL
        device = self.device_combo.currentText()
        cache = self.cache_edit.text().strip() or None
        config = (id(layer), model, device, cache)
        if config == self._config and (self._ctx is not None or self._load_worker is not None):
            return
        same_image = self._config is not None and self._config[0] == config[0] and self._prompts is not None \
            and self._prompts in self.viewer.layers and self._preview in self.viewer.layers
        self._config = config
        self._drop_context(keep_layers=True)
        if not same_image:  # a new image: fresh prompts and preview; a new model keeps the points
            self._ensure_layers(layer)
        self._start_load(layer, model, device, cache)

    def _on_refine_toggled(self, on: bool) -> None:
        self._refine_wanted = bool(on)
        ctx = self._ctx
        if ctx is None:
            return
        ctx.session.predictor.refine = bool(on) and ctx.has_refiner
        self._epoch += 1  # re-run the clicks with the new setting
        self._schedule_predict()

    # ------------------------------------------------------------------ managed layers
    def _ensure_layers(self, image: Image) -> None:
        ndim = image.ndim
        shape = _spatial_shape(image)
        tf = _transform_kwargs(image)
        # preview labels
        if self._preview is not None and (self._preview not in self.viewer.layers
                                          or self._preview.data.shape != shape):
            if self._preview in self.viewer.layers:
                self.viewer.layers.remove(self._preview)
            self._preview = None
        if self._preview is None:
            found = next((la for la in self.viewer.layers if isinstance(la, Labels)
                          and la.name == PREVIEW_NAME and la.data.shape == shape), None)
            if found is not None:
                self._preview = found
                self._preview.data = np.zeros(shape, np.uint8)
            else:
                cmap = DirectLabelColormap(color_dict={None: "transparent", 1: PREVIEW_RGBA})
                self._preview = self.viewer.add_labels(
                    np.zeros(shape, np.uint8), name=PREVIEW_NAME, opacity=0.5, colormap=cmap, **tf)
        else:
            self._preview.data[...] = 0
            self._preview.refresh()
        self._masks = {}
        self._has_volume = False
        # prompts points
        if self._prompts is not None and (self._prompts not in self.viewer.layers or self._prompts.ndim != ndim):
            old = self._prompts
            self._detach_prompts()
            if old in self.viewer.layers:
                self.viewer.layers.remove(old)
        adopted = False
        if self._prompts is None:
            found = next((la for la in self.viewer.layers if isinstance(la, Points)
                          and la.name == PROMPTS_NAME and la.ndim == ndim), None)
            adopted = found is not None  # an existing prompts layer keeps its points
            if found is None:
                size = float(np.clip(max(shape[-2:]) / 40, 3, 25))
                found = self.viewer.add_points(
                    np.zeros((0, ndim)), ndim=ndim, name=PROMPTS_NAME,
                    features={"positive": np.zeros(0, bool)}, feature_defaults={"positive": True},
                    face_color="positive", face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                    border_color="white", border_width=0.1, size=size, **tf)
            self._attach_prompts(found)
        if not adopted:
            self._ignore_points = True
            try:
                self._prompts.data = np.zeros((0, ndim))
            finally:
                self._ignore_points = False
        else:
            self._apply_symbols()
        self._points_sig = self._points_signature()
        self._pick_output(shape)
        self._select_prompts()

    def _pick_output(self, shape: tuple[int, ...]) -> None:
        """Keep the chosen output layer if it fits the image, else one named like ours, else 'new'."""
        current = self.output_combo.currentData()
        if current is not None and tuple(current.data.shape) == tuple(shape):
            return
        for i in range(1, self.output_combo.count()):
            la = self.output_combo.itemData(i)
            if la.name.startswith(OUTPUT_NAME) and tuple(la.data.shape) == tuple(shape):
                self.output_combo.setCurrentIndex(i)
                return
        self.output_combo.setCurrentIndex(0)

    def _attach_prompts(self, layer: Points) -> None:
        self._prompts = layer
        if "positive" not in layer.features.columns:
            import pandas as pd

            layer.features = pd.DataFrame({"positive": np.ones(len(layer.data), bool)})
            layer.face_color_cycle = {True: POSITIVE_COLOR, False: NEGATIVE_COLOR}
            layer.face_color = "positive"
        layer.feature_defaults = {"positive": self._positive}
        layer.events.data.connect(self._on_points_changed)
        layer.events.features.connect(self._on_points_changed)  # a point's polarity changed
        layer.events.feature_defaults.connect(self._enforce_defaults)
        layer.mouse_drag_callbacks.insert(0, self._on_prompt_press)
        for action, key in KEYS.items():
            prev = layer.bind_key(key, self._layer_key(action), overwrite=True)
            self._key_owners.append((layer, key, prev))

    def _detach_prompts(self) -> None:
        layer = self._prompts
        self._prompts = None
        if layer is None:
            return
        for emitter, cb in ((layer.events.data, self._on_points_changed),
                            (layer.events.features, self._on_points_changed),
                            (layer.events.feature_defaults, self._enforce_defaults)):
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._on_prompt_press in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_prompt_press)
        keep = []
        for owner, key, prev in self._key_owners:
            if owner is layer:
                owner.bind_key(key, prev, overwrite=True)
            else:
                keep.append((owner, key, prev))
        self._key_owners = keep

    def _select_prompts(self) -> None:
        if self._prompts is not None and self._prompts in self.viewer.layers:
            self.viewer.layers.selection.active = self._prompts
            self._prompts.mode = "add"

    def _output_layer(self, *, create: bool) -> Labels | None:
        layer = self.output_combo.currentData()
        if layer is not None and layer in self.viewer.layers:
            return layer
        if not create or self._image is None:
            return None
        image = self._image
        shape = _spatial_shape(image)
        dtype = np.uint32 if np.prod(shape) <= 2**28 else np.uint16  # memory of huge stacks
        out = Labels(np.zeros(shape, dtype), name=OUTPUT_NAME, **_transform_kwargs(image))
        # below the preview and the prompts, so that those stay on top
        index = self.viewer.layers.index(self._preview) if self._preview in self.viewer.layers \
            else len(self.viewer.layers)
        self._output_new = out
        self.viewer.layers.insert(index, out)
        self._refresh_layer_combos()
        self.output_combo.setCurrentIndex(self.output_combo.findData(out))
        self._select_prompts()
        return out

    @staticmethod
    def _next_id(layer: Labels) -> int:
        data = layer.data
        return int(np.max(data)) + 1 if data.size else 1

    # ------------------------------------------------------------------ keys and clicks
    def _actions(self) -> dict[str, Callable[[], Any]]:
        return {"commit": self.commit, "clear": self.clear, "volume": self.segment_volume,
                "toggle": self.toggle_polarity}

    def _layer_key(self, action: str):
        def on_key(_layer):
            self._actions()[action]()
        on_key.__doc__ = f"FocSAM: {action}"
        return on_key

    def _bind_viewer_keys(self) -> None:
        for action, key in KEYS.items():
            prev = self.viewer.bind_key(key, self._layer_key(action), overwrite=True)
            self._key_owners.append((self.viewer, key, prev))

    def _on_prompt_press(self, layer: Points, event):
        """Ctrl+click (Cmd on macOS) or right click adds a point of the opposite polarity."""
        if layer.mode != "add":
            return
        mods = getattr(event, "modifiers", ())
        opposite = any(k in mods for k in ("Control", "Meta")) or getattr(event, "button", 1) == 2
        if not opposite:
            self._restore_defaults()
            return
        self._next_positive = not self._positive
        layer.feature_defaults = {"positive": self._next_positive}
        try:
            yield
            while event.type == "mouse_move":
                yield
        finally:
            # the add-mode callback runs after this one on release: restore once it is done
            QTimer.singleShot(0, self._restore_defaults)

    def _restore_defaults(self) -> None:
        self._next_positive = None
        self._enforce_defaults()

    def _enforce_defaults(self, event=None) -> None:
        """The polarity of the next point follows the toggle (or a Ctrl+click), never the selection.

        (napari copies the features of selected points into ``feature_defaults``.)
        """
        layer = self._prompts
        if layer is None:
            return
        want = self._positive if self._next_positive is None else self._next_positive
        try:
            have = bool(np.asarray(layer.feature_defaults["positive"])[0])
        except (KeyError, IndexError):
            have = None
        if have is not want:
            layer.feature_defaults = {"positive": want}

    def toggle_polarity(self, positive: bool | None = None) -> None:
        """Switch the polarity of the next click (or set it)."""
        self._positive = (not self._positive) if positive is None else bool(positive)
        self._restore_defaults()
        self._update_polarity_ui()

    def _on_points_changed(self, event=None) -> None:
        if self._ignore_points or self._closed:
            return
        action = str(getattr(event, "action", "changed"))
        if action in ("adding", "removing", "changing"):
            return
        sig = self._points_signature()
        if sig == self._points_sig:
            return  # napari emits data and features events for one edit: answer once
        self._points_sig = sig
        self._apply_symbols()
        self._schedule_predict()

    def _points_signature(self) -> tuple:
        layer = self._prompts
        if layer is None:
            return ()
        pos = np.asarray(layer.features["positive"], bool) if "positive" in layer.features else np.zeros(0, bool)
        return (np.asarray(layer.data).tobytes(), pos.tobytes())

    def _apply_symbols(self) -> None:
        layer = self._prompts
        if layer is None or not len(layer.data):
            return
        pos = np.asarray(layer.features["positive"], bool)
        want = np.where(pos, "disc", "cross")
        have = np.array([str(getattr(s, "value", s)) for s in layer.symbol])
        if have.shape != want.shape or (have != want).any():
            layer.symbol = want

    def _clicks(self) -> list[tuple[int, float, float, bool]]:
        """The prompts as (z, y, x, positive) in the image's pixel coordinates."""
        layer, image, ctx = self._prompts, self._image, self._ctx
        if layer is None or image is None or ctx is None or not len(layer.data):
            return []
        pos = np.asarray(layer.features["positive"], bool) if "positive" in layer.features else \
            np.ones(len(layer.data), bool)
        same = (np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)
                and np.allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
                and np.allclose(layer.rotate, image.rotate) and np.allclose(layer.shear, image.shear))
        pts = np.asarray(layer.data, float)
        if not same:
            pts = np.array([image.world_to_data(layer.data_to_world(p)) for p in pts])
        H, W = ctx.plane_shape
        out, dropped = [], 0
        for p, positive in zip(pts, pos):
            y, x = p[-2], p[-1]
            z = int(round(p[0])) if ctx.is_3d else 0
            if not (-0.5 <= y < H - 0.5 and -0.5 <= x < W - 0.5 and 0 <= z < ctx.n_slices):
                dropped += 1
                continue
            out.append((z, float(y), float(x), bool(positive)))
        if dropped > self._dropped_warned:
            self._notify("warning", f"{dropped} point(s) outside the image ignored")
        self._dropped_warned = dropped
        return out

    # ------------------------------------------------------------------ session loading
    def _drop_context(self, keep_layers: bool = False) -> None:
        self._stop_embedding()
        self._volume_cancel.set()
        self._ctx = None
        self._load_token += 1
        self._gen += 1
        self._epoch += 1
        self._commit_requested = False
        self.embedded_slices = 0
        if not keep_layers:
            self._masks = {}
        self._update_buttons()

    def _start_load(self, layer: Image, model: str, device: str, cache: str | None) -> None:
        self._load_token += 1
        token = self._load_token
        data = _image_data(layer)
        rgb = bool(layer.rgb)
        refine = self._refine_wanted
        self._set_status(f"loading model {Path(model).name} ...")

        def load():
            try:
                from .core.models import load_model
                from .core.session import ImageVolume, Session

                vol = ImageVolume(data, rgb=rgb)
                t0 = time.perf_counter()
                note = None
                try:
                    net = load_model(model, device)
                except Exception as exc:
                    if not _is_oom(exc):
                        raise
                    net = load_model(model, "cpu")
                    note = "out of GPU memory while loading the model: using the CPU"
                session = Session(vol, model=net, refine=refine, cache_dir=cache)
                return token, session, net, note, time.perf_counter() - t0
            except Exception as exc:
                return token, _describe(exc)

        worker = create_worker(
            load, _progress={"desc": f"FocSAM: loading {Path(model).name}"}, _start_thread=False,
            _connect={"returned": self._on_loaded, "errored": self._on_worker_error})
        worker.finished.connect(partial(self._clear_load_worker, worker))
        self._load_worker = worker
        worker.start()  # only once every signal is connected (a fast job could finish first)

    def _clear_load_worker(self, worker) -> None:
        try:
            if worker is self._load_worker:
                self._load_worker = None
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _on_loaded(self, result) -> None:
        if self._closed or result[0] != self._load_token:
            return
        if isinstance(result[1], _Failure):
            self._config = None
            self._notify("error", result[1].message)
            return
        _, session, net, note, seconds = result
        layer = self._image
        if layer is None:
            return
        vol = session.volume
        model, device, cache = self._config[1], self._config[2], self._config[3]
        self._ctx = _Context(
            session=session, image=layer, model_name=Path(model).name, device=device, cache_dir=cache,
            has_refiner=bool(getattr(net, "has_refiner", False)), is_3d=vol.is_3d, n_slices=vol.n_slices,
            plane_shape=tuple(vol.plane_shape), spatial_shape=_spatial_shape(layer))
        if note:
            self._notify("warning", note)
        session.predictor.refine = self._refine_wanted and self._ctx.has_refiner
        self._update_buttons()
        self._set_status(f"model ready ({seconds:.1f} s)")
        self._on_dims_changed()
        self._start_embedding()
        if self._prompts is not None and len(self._prompts.data):
            self._schedule_predict()

    def _on_worker_error(self, exc: BaseException) -> None:
        """Last resort (jobs catch their own errors): never a traceback dialog."""
        if not self._closed:
            self._notify("error", _describe(exc).message)

    # ------------------------------------------------------------------ embeddings
    def _on_dims_changed(self, event=None) -> None:
        image = self._image
        if image is None or image.ndim != 3 or self._closed:
            return
        try:
            z = image.world_to_data(self.viewer.dims.point)[0]
        except Exception:
            return
        self._view_z = int(np.clip(round(float(z)), 0, _spatial_shape(image)[0] - 1))

    def _start_embedding(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        self._stop_embedding()
        stop = self._embed_stop = threading.Event()
        store = ctx.session.store
        n = ctx.n_slices
        cap = n if (ctx.cache_dir or n * _EMBEDDING_BYTES <= 0.8 * store.max_memory_bytes) \
            else max(1, int(0.8 * store.max_memory_bytes // _EMBEDDING_BYTES))
        total = min(n, cap)
        click_pending = self._click_pending
        view_z = lambda: self._view_z  # noqa: E731

        def embed():
            left = set(range(n))
            done = 0
            try:
                while left and done < total:
                    while click_pending.is_set() and not stop.is_set():
                        time.sleep(0.02)  # a click is being answered: let it have the CPU/GPU
                    if stop.is_set():
                        return None
                    zc = view_z()
                    z = min(left, key=lambda s: (abs(s - zc), s))
                    left.discard(z)
                    store.precompute([z])
                    done += 1
                    yield done
            except Exception as exc:
                return _describe(exc, "computing embeddings")
            return store.disk_error

        worker = create_worker(
            embed, _progress={"total": total, "desc": "FocSAM: image embeddings"}, _start_thread=False,
            _connect={"yielded": self._on_embedded, "returned": self._on_embedding_done,
                      "errored": self._on_worker_error})
        self._embed_worker = worker
        self._embed_job += 1
        worker.finished.connect(partial(self._on_embed_finished, self._embed_job))
        worker.start()
        self.embedded_slices = 0
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("embeddings %v/%m")
        self.progress_bar.setVisible(self._volume_worker is None)

    def _on_embed_finished(self, job: int) -> None:
        try:
            if job != self._embed_job:
                return  # an older, stopped job: its successor is running
            self._embed_worker = None
            if self._volume_worker is None and not self._closed:
                self.progress_bar.setVisible(False)
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _stop_embedding(self) -> None:
        self._embed_stop.set()
        if self._embed_worker is not None:
            self._embed_worker.quit()

    def _on_embedded(self, done: int) -> None:
        if self._closed:
            return
        self.embedded_slices = done
        if self._volume_worker is None:
            self.progress_bar.setValue(done)
        self._set_status()

    def _on_embedding_done(self, result) -> None:
        if self._closed:
            return
        if isinstance(result, _Failure):
            if result.oom:
                self._fallback_to_cpu()
            else:
                self._notify("error", result.message)
        elif isinstance(result, str) and result:
            self._notify("warning", f"embedding cache: {result}")
        self._set_status()

    # ------------------------------------------------------------------ prediction
    def _schedule_predict(self) -> None:
        self._gen += 1
        self._dirty = True
        self._t_change = time.perf_counter()
        if self._predict_worker is None:
            self._start_predict()

    def _start_predict(self) -> None:
        ctx = self._ctx
        if ctx is None or self._closed:
            return
        clicks = self._clicks()
        gen, epoch = self._gen, self._epoch
        self._dirty = False
        if not clicks and not self._masks:
            self._click_pending.clear()
            return
        shown = set(self._masks)
        self._click_pending.set()
        is_current = lambda g=gen: g == self._gen  # noqa: E731

        def predict():
            try:
                if not is_current():
                    return gen, epoch, None, 0.0
                with ctx.lock:
                    obj = ctx.object_for(epoch)
                    t0 = time.perf_counter()
                    if clicks:
                        changed = obj.set_clicks(clicks)
                    else:
                        obj.reset()
                        changed = {}
                    dt = time.perf_counter() - t0
                    zs = set(changed) | shown | {c[0] for c in clicks}
                    masks = {z: np.asarray(obj.mask(z)) for z in zs}
                return gen, epoch, masks, dt
            except Exception as exc:
                return gen, epoch, _describe(exc), 0.0

        worker = create_worker(
            predict, _start_thread=False,
            _connect={"returned": self._on_predicted, "errored": self._on_worker_error})
        worker.finished.connect(self._on_predict_finished)
        self._predict_worker = worker
        worker.start()

    def _on_predicted(self, result) -> None:
        if self._closed:
            return
        gen, epoch, masks, dt = result
        if isinstance(masks, _Failure):
            self._commit_requested = False
            if masks.oom:
                self._fallback_to_cpu()
            elif gen == self._gen:
                self._notify("error", masks.message)
            return
        if masks is None or gen != self._gen or epoch != self._epoch:
            return  # stale: newer points are on their way
        self._show_masks(masks)
        self.last_latency_ms = (time.perf_counter() - self._t_change) * 1000
        self.last_model_ms = dt * 1000
        self._set_status()
        if self._commit_requested:
            self._commit_requested = False
            self.commit()

    def _on_predict_finished(self) -> None:
        self._predict_worker = None
        self._predict_done_bookkeeping()

    def _predict_done_bookkeeping(self) -> None:
        if self._closed:
            self._click_pending.clear()
            return
        if self._dirty and self._ctx is not None:
            self._start_predict()  # the points changed meanwhile: send the newest
        else:
            self._click_pending.clear()

    def _show_masks(self, masks: dict[int, np.ndarray], volume: bool = False) -> None:
        preview = self._preview
        if preview is None or self._ctx is None:
            return
        data = preview.data
        if volume or self._has_volume:
            data[...] = 0
            self._masks = {}
            self._has_volume = volume
        for z, m in masks.items():
            plane = data[z] if self._ctx.is_3d else data
            plane[...] = m
            if m.any():
                self._masks[z] = m
            else:
                self._masks.pop(z, None)
        preview.refresh()

    def is_busy(self) -> bool:
        """True while a model load, a prediction or a propagation is running or queued."""
        return (self._load_worker is not None or self._predict_worker is not None
                or self._volume_worker is not None or (self._dirty and self._ctx is not None))

    def has_running_workers(self) -> bool:
        """True while any background job (load, embeddings, prediction, volume) is running."""
        return any(w is not None for w in (self._load_worker, self._embed_worker,
                                          self._predict_worker, self._volume_worker))

    @property
    def prompts_layer(self) -> Points | None:
        """The points layer holding the prompts (feature ``positive``)."""
        return self._prompts

    @property
    def preview_layer(self) -> Labels | None:
        """The labels layer showing the current object."""
        return self._preview

    @property
    def output_layer(self) -> Labels | None:
        """The chosen output labels layer (None while "New labels layer" is chosen)."""
        return self._output_layer(create=False)

    @property
    def is_ready(self) -> bool:
        """True when a model and image are loaded (clicks are answered)."""
        return self._ctx is not None

    @property
    def current_mask(self) -> np.ndarray | None:
        """The current object's mask as shown in the preview ((Y, X) or (Z, Y, X) bool)."""
        return None if self._preview is None else self._preview.data.astype(bool)

    # ------------------------------------------------------------------ commit / clear
    def commit(self) -> int | None:
        """Write the current object into the output labels layer; returns its id (None if nothing)."""
        if self._ctx is None:
            self._notify("warning", "nothing to commit: no image/model loaded yet")
            return None
        if self._predict_worker is not None or self._dirty:
            self._commit_requested = True  # done when the newest mask arrives
            self._set_status("committing when the current mask is ready ...")
            return None
        if self._volume_worker is not None:
            self._notify("warning", "wait for the volume propagation to finish (or cancel it)")
            return None
        mask = self._preview.data.astype(bool) if self._preview is not None else None
        if mask is None or not mask.any():
            self._notify("info", "nothing to commit: click on an object first")
            return None
        out = self._output_layer(create=True)
        if out is None:
            return None
        if tuple(out.data.shape) != tuple(mask.shape):
            self._notify("error", f"the output labels layer '{out.name}' has shape {tuple(out.data.shape)}, "
                                  f"the image {tuple(mask.shape)}: choose another one or '{NEW_LABELS}'")
            return None
        new_id = self._next_id(out)
        limit = np.iinfo(out.data.dtype).max if np.issubdtype(out.data.dtype, np.integer) else 2**31
        if new_id > limit:
            self._notify("error", f"labels layer '{out.name}' ({out.data.dtype}) is full: choose another one "
                                  f"or '{NEW_LABELS}'")
            return None
        idx = np.nonzero(mask)
        if not self.overwrite_check.isChecked():  # only background pixels
            free = np.asarray(out.data[idx]) == 0
            idx = tuple(a[free] for a in idx)
        if not idx[0].size:
            self._notify("warning", "the object lies entirely on existing labels: nothing written "
                                    "(tick 'Overwrite existing labels' to replace them)")
            return None
        out.data_setitem(idx, new_id)  # one undo step (Ctrl+Z on the labels layer)
        self.last_committed_id = new_id
        self._reset_object()
        self._set_status(f"committed object {new_id} to '{out.name}'")
        return new_id

    def clear(self) -> None:
        """Drop the current object and its points."""
        self._commit_requested = False
        self._reset_object()
        self._set_status("cleared")

    def _reset_object(self) -> None:
        self._epoch += 1
        self._gen += 1
        self._dirty = False
        if self._predict_worker is None:
            self._click_pending.clear()
        if self._prompts is not None:
            self._ignore_points = True
            try:
                self._prompts.data = np.zeros((0, self._prompts.ndim))
            finally:
                self._ignore_points = False
            self._points_sig = self._points_signature()
        if self._preview is not None:
            self._preview.data[...] = 0
            self._preview.refresh()
        self._masks = {}
        self._has_volume = False
        self._select_prompts()

    # ------------------------------------------------------------------ volume
    def segment_volume(self) -> None:
        """Propagate the current object through the stack, then commit it."""
        ctx = self._ctx
        if ctx is None:
            self._notify("warning", "no model loaded yet")
            return
        if not ctx.is_3d:
            self._notify("info", "Segment volume needs a 3D stack (this image is 2D)")
            return
        if self._volume_worker is not None:
            return
        clicks = self._clicks()
        if not clicks:
            self._notify("info", "click on the object in a slice first, then Segment volume")
            return
        self._gen += 1  # a newer state than any running prediction
        self._dirty = False
        gen, epoch = self._gen, self._epoch
        cancel = self._volume_cancel = threading.Event()
        iou = float(self.iou_spin.value())
        report = self._bridge.volume_progress.emit
        worker_ref: list = []

        def cancelled() -> bool:
            return cancel.is_set() or bool(worker_ref and worker_ref[0].abort_requested)

        def run():
            try:
                with ctx.lock:
                    obj = ctx.object_for(epoch)
                    obj.set_clicks(clicks)
                    res = obj.propagate(iou_threshold=iou, progress=report, cancelled=cancelled)
                    vol = obj.volume_mask()
                return gen, epoch, res, vol
            except Exception as exc:
                return gen, epoch, _describe(exc, "Segment volume"), None

        worker = create_worker(run, _start_thread=False,
                               _connect={"returned": self._on_volume_done, "errored": self._on_worker_error})
        worker_ref.append(worker)
        self._volume_worker = worker
        worker.finished.connect(self._on_volume_finished)
        self._click_pending.set()
        self._volume_pbar = napari_progress(total=0, desc="FocSAM: segment volume")
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat("propagating %v/%m")
        self.progress_bar.setVisible(True)
        self.cancel_button.setVisible(True)
        self._update_buttons()
        self._set_status("segmenting the volume ...")
        worker.start()

    def cancel_volume(self) -> None:
        """Stop a running volume propagation (the finished slices stay in the preview)."""
        self._volume_cancel.set()

    def _on_volume_progress(self, done: int, total: int) -> None:
        if self._closed:
            return
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        pbar = self._volume_pbar
        if pbar is not None:
            if pbar.total != total:
                pbar.total = total
            if done > pbar.n:
                pbar.update(done - pbar.n)

    def _on_volume_done(self, result) -> None:
        if self._closed:
            return
        gen, epoch, res, vol = result
        self._volume_worker = None  # done (commit below must not wait for it)
        if isinstance(res, _Failure):
            if res.oom:
                self._fallback_to_cpu()
            else:
                self._notify("error", res.message)
            return
        if epoch != self._epoch:
            return  # cleared meanwhile
        z0, z1 = res.z_range
        self._show_masks({z: vol[z] for z in range(vol.shape[0])}, volume=True)
        if res.cancelled:
            self._notify("info", f"propagation cancelled: slices {z0}-{z1} are in the preview; "
                                 "press C to commit them, or Shift+C to clear")
            return
        why = ", ".join(f"{d}: {r}" for d, r in res.stopped_reason.items())
        new_id = self.commit()
        self._notify("info", f"volume segmented on slices {z0}-{z1} ({why})"
                             + (f"; committed as label {new_id}" if new_id else ""))

    def _on_volume_finished(self) -> None:
        self._volume_worker = None
        self._click_pending.clear()
        if self._volume_pbar is not None:
            self._volume_pbar.close()
            self._volume_pbar = None
        if self._closed:
            return
        self.cancel_button.setVisible(False)
        self.progress_bar.setVisible(self._embed_worker is not None)
        self.progress_bar.setRange(0, 100)
        self._update_buttons()
        if self._embed_worker is not None and self._ctx is not None:
            self.progress_bar.setRange(0, self._ctx.n_slices)
            self.progress_bar.setValue(self.embedded_slices)
            self.progress_bar.setFormat("embeddings %v/%m")
        if self._dirty:
            self._schedule_predict()

    # ------------------------------------------------------------------ GPU fallback
    def _fallback_to_cpu(self) -> None:
        if self._closed:
            return
        if self.device_combo.currentText() == "cpu" and self._cpu_fallback_done:
            self._notify("error", "out of memory even on the CPU: try a smaller model or image")
            return
        self._cpu_fallback_done = True
        self._notify("warning", "out of GPU memory: FocSAM switched to the CPU (slower); "
                                "choose the GPU again in 'Device' to retry")
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass
        self.device_combo.setCurrentText("cpu")  # triggers a new session on the CPU

    # ------------------------------------------------------------------ closing
    def event(self, ev) -> bool:
        """napari removes a closed dock by un-parenting its widget: stop everything then."""
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._was_docked = True
            elif self._was_docked:
                self.close_session()
        return super().event(ev)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.close_session()
        super().closeEvent(event)

    def close_session(self) -> None:
        """Stop all work and release key bindings (called when the widget closes)."""
        if self._closed:
            return
        self._closed = True
        self._stop_embedding()
        self._volume_cancel.set()
        self._load_token += 1
        for owner, key, prev in self._key_owners:
            try:
                owner.bind_key(key, prev, overwrite=True)
            except Exception:
                pass
        self._key_owners = []
        try:
            layers = self.viewer.layers
            layers.events.inserted.disconnect(self._on_layers_changed)
            layers.events.removed.disconnect(self._on_layers_changed)
            layers.events.moved.disconnect(self._on_layers_changed)
            self.viewer.dims.events.current_step.disconnect(self._on_dims_changed)
        except Exception:
            pass
        self._detach_prompts()
        self._ctx = None
