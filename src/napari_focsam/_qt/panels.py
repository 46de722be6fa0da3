"""The dock's sections: they show state and emit Qt signals, and never call the widget.

``SetupPanel`` (image, model, device, focus refiner, cache folder), ``OutputPanel`` (labels layer,
overwrite), ``PromptPanel`` (polarity of the next click), ``ActionPanel`` (commit, clear, segment
volume, its IoU and outline stops, progress, cancel) and ``StatusLine``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
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
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)

from ..core.defaults import DEFAULT_EDGE_FADE, DEFAULT_IOU_THRESHOLD, DEFAULT_MODEL, DEFAULT_SLICE_VOTE, DEFAULT_ZOOM
from ..core.editing import PasteError
from .constants import (
    CUSTOM_FILE, DEVICES, EMBEDDING_CACHE_ENV, NEGATIVE_COLOR, NEW_LABELS, POSITIVE_COLOR, THREADS_ENV, default_threads)

__all__ = ["ActionPanel", "OutputPanel", "PromptPanel", "SetupPanel", "StatusLine", "progress_row", "show_bar"]


def progress_row() -> tuple[QHBoxLayout, QProgressBar, QPushButton]:
    """A hidden progress bar with its hidden Cancel button, side by side: (row, bar, button)."""
    row = QHBoxLayout()
    bar = QProgressBar()
    bar.setTextVisible(True)
    bar.setVisible(False)
    cancel = QPushButton("Cancel")
    cancel.setVisible(False)
    row.addWidget(bar, 1)
    row.addWidget(cancel)
    return row, bar, cancel


def show_bar(bar: QProgressBar, done: int | None, total: int, fmt: str) -> None:
    """Show ``bar`` at ``done`` of ``total`` (``done`` None or ``total`` 0: busy, no count).

    Only what changed is set: each setter repaints (and a range or format change re-lays out the
    dock), which on a per-slice progress took GUI time from the propagation's worker.
    """
    total = max(int(total), 0)
    if bar.maximum() != total or bar.minimum() != 0:
        bar.setRange(0, total)
    if done is not None and bar.value() != int(done):
        bar.setValue(int(done))
    if bar.format() != fmt:
        bar.setFormat(fmt)
    if not bar.isVisible():
        bar.setVisible(True)


class SetupPanel(QGroupBox):
    """Image layer, model, device, focus refinement and embedding cache folder.

    Signals: ``image_changed`` (another image layer chosen), ``config_changed`` (model, device or
    cache folder), ``refine_toggled(bool)``, ``zoom_toggled(bool)``, ``threads_changed(int)``.
    """

    image_changed = Signal()
    config_changed = Signal()
    refine_toggled = Signal(bool)
    zoom_toggled = Signal(bool)
    threads_changed = Signal(int)

    def __init__(self) -> None:
        super().__init__("Setup")
        self._cpu_fallback_done = False  # an out-of-memory error moved the session to the CPU once
        from ..core.models.weights import cached_path, known_names, registered

        form = QFormLayout(self)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer to segment: 2D, RGB or a 3D stack (Z, Y, X)")
        form.addRow("Image", self.image_combo)

        self.model_combo = QComboBox()
        entries = registered()
        for name in known_names():
            e = entries[name]
            self.model_combo.addItem(name, name)
            tip = e.description or name
            tip += " -- cached" if cached_path(e).is_file() else (
                " -- downloaded on first use" if e.downloadable else " -- manual download")
            self.model_combo.setItemData(self.model_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.model_combo.addItem(CUSTOM_FILE, None)
        self.model_combo.setCurrentIndex(max(self.model_combo.findData(DEFAULT_MODEL), 0))
        self._last_index = self.model_combo.currentIndex()
        self.model_combo.setToolTip("Registry model, or a checkpoint file of your own")
        form.addRow("Model", self.model_combo)

        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip("auto: CUDA, then Apple MPS, then the CPU")
        form.addRow("Device", self.device_combo)

        self.refine_check = QCheckBox("focus refiner")
        self.refine_check.setChecked(True)
        self.refine_check.setEnabled(False)
        self.refine_check.setToolTip("FocSAM's focus refinement of the embedding around each object, "
                                     "from its 1st click on; available when the model has a focus refiner")
        form.addRow("Refine", self.refine_check)
        self.refine_wanted = True  # the user's choice, kept while a model without refiner is loaded

        self.zoom_check = QCheckBox("small objects on an enlarged crop")
        self.zoom_check.setChecked(DEFAULT_ZOOM)
        self.zoom_check.setToolTip("2D images of 768 pixels or more (large ones too, at full resolution): an object "
                                   "small after its first click is decoded on a crop the encoder sees 2x enlarged "
                                   "(sharper outlines of small cells and organelles; one more encoder pass, about "
                                   "1 s on a CPU, shared by neighbouring objects)")
        form.addRow("Zoom", self.zoom_check)

        row = QHBoxLayout()
        self.cache_edit = QLineEdit(os.environ.get(EMBEDDING_CACHE_ENV, ""))
        self.cache_edit.setPlaceholderText("none: embeddings kept in memory")
        self.cache_edit.setToolTip("Optional folder where image embeddings are saved and reused across "
                                   f"sessions (default: ${EMBEDDING_CACHE_ENV})")
        self.cache_button = QToolButton()
        self.cache_button.setText("...")
        row.addWidget(self.cache_edit)
        row.addWidget(self.cache_button)
        form.addRow("Cache folder", row)

        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(1, max(1, os.cpu_count() or 1))
        self.threads_spin.setValue(min(default_threads(), self.threads_spin.maximum()))
        self.threads_spin.setToolTip("CPU threads torch may use (default: the cores, at most 4; "
                                     f"${THREADS_ENV} sets it)")
        form.addRow("CPU threads", self.threads_spin)

        self.image_combo.currentIndexChanged.connect(lambda *_: self.image_changed.emit())
        self.model_combo.activated.connect(self._on_model_activated)
        self.device_combo.currentIndexChanged.connect(lambda *_: self.config_changed.emit())
        self.refine_check.toggled.connect(self._on_refine_toggled)
        self.zoom_check.toggled.connect(self.zoom_toggled.emit)
        self.cache_edit.editingFinished.connect(self.config_changed.emit)
        self.cache_button.clicked.connect(self._choose_cache_dir)
        self.threads_spin.valueChanged.connect(self.threads_changed.emit)

    # -- state read by the widget
    def image(self) -> Any:
        """The chosen image layer (None when there is none)."""
        return self.image_combo.currentData()

    def model_spec(self) -> str:
        """The chosen registry name or checkpoint path."""
        spec = self.model_combo.currentData()
        if spec is not None:
            self._last_index = self.model_combo.currentIndex()
        return spec or DEFAULT_MODEL

    def device(self) -> str:
        return self.device_combo.currentText()

    def cache_dir(self) -> str | None:
        return self.cache_edit.text().strip() or None

    def threads(self) -> int:
        return int(self.threads_spin.value())

    # -- updates from the widget
    def show_images(self, images: list, current: Any, active: Any) -> None:
        """List ``images``; keep ``current`` chosen, else the active layer, else the last one."""
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for la in images:
            self.image_combo.addItem(la.name, la)
        if current is not None and current in images:
            self.image_combo.setCurrentIndex(images.index(current))
        elif images:
            self.image_combo.setCurrentIndex(images.index(active) if active in images else len(images) - 1)
        self.image_combo.blockSignals(False)

    def choose_image(self, layer: Any) -> bool:
        """Choose ``layer`` without emitting a signal; False when it is not listed."""
        idx = self.image_combo.findData(layer)
        if idx < 0:
            return False
        self.image_combo.blockSignals(True)
        self.image_combo.setCurrentIndex(idx)
        self.image_combo.blockSignals(False)
        return True

    def set_model(self, name_or_path: str) -> None:
        """Choose a registry model or a checkpoint file (added to the list), then emit."""
        idx = self.model_combo.findData(str(name_or_path))
        if idx < 0:
            idx = self.model_combo.count() - 1  # before "Custom file..."
            self.model_combo.insertItem(idx, Path(name_or_path).name, str(name_or_path))
            self.model_combo.setItemData(idx, str(name_or_path), Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setCurrentIndex(idx)
        self.config_changed.emit()

    def mark_devices(self, available: dict[str, bool]) -> None:
        """Disable the devices this computer lacks (found by a background job)."""
        model = self.device_combo.model()
        for i, dev in enumerate(DEVICES):
            if not available.get(dev, True):
                item = model.item(i)
                item.setEnabled(False)
                item.setToolTip(f"{dev} is not available on this computer")

    def fall_back_to_cpu(self, release_gpu: Any, notify: Any) -> None:
        """Out of GPU memory: choose the CPU (a new session follows); once only, then it is said."""
        if self.device() == "cpu" and self._cpu_fallback_done:
            notify("error", "out of memory even on the CPU: try a smaller model or image")
            return
        self._cpu_fallback_done = True
        notify("warning", "out of GPU memory: FocSAM switched to the CPU (slower); "
                          "choose the GPU again in 'Device' to retry")
        release_gpu()
        self.device_combo.setCurrentText("cpu")  # triggers a new session on the CPU

    def bind(self, state: Any) -> None:
        """Follow the dock's :class:`~.state.WidgetState`: the refine option derives from ``has_refiner``,
        the zoom option from ``zoom_applies``."""
        state.events.has_refiner.connect(lambda event=None: self.show_refiner(state.has_refiner))
        self.show_refiner(state.has_refiner)
        state.events.zoom_applies.connect(lambda event=None: self.show_zoom(state.zoom_applies))

    def show_zoom(self, applies: bool | None) -> None:
        """Grey the zoom option out on stacks (the user's choice is kept)."""
        self.zoom_check.setEnabled(applies is not False)
        self.zoom_check.setText("small objects on an enlarged crop" if applies is not False
                                else "only 2D images (stacks: whole planes)")

    def show_refiner(self, has_refiner: bool | None) -> None:
        """Enable the refine option for a model with a focus refiner (None: no model loaded)."""
        self.refine_check.setEnabled(bool(has_refiner))
        self.refine_check.blockSignals(True)
        if has_refiner is False:
            self.refine_check.setChecked(False)
            self.refine_check.setText("none in this model")
        else:
            self.refine_check.setChecked(self.refine_wanted)
            self.refine_check.setText("focus refiner")
        self.refine_check.blockSignals(False)

    # -- user actions
    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) is None:  # "Custom file..."
            path, _ = QFileDialog.getOpenFileName(
                self, "FocSAM / SAM checkpoint", str(Path.home()),
                "Checkpoints (*.pt *.pth *.ckpt *.bin *.safetensors);;All files (*)")
            if not path:
                self.model_combo.setCurrentIndex(self._last_index)
                return
            self.set_model(path)
            return
        self.config_changed.emit()

    def _on_refine_toggled(self, on: bool) -> None:
        self.refine_wanted = bool(on)
        self.refine_toggled.emit(bool(on))

    def _choose_cache_dir(self) -> None:
        start = self.cache_edit.text() or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Embedding cache folder", start)
        if path:
            self.cache_edit.setText(path)
            self.config_changed.emit()


class OutputPanel(QGroupBox):
    """The labels layer that receives committed objects, the overwrite rule, and saving it as an
    OME-Zarr label image (emits ``save_clicked``)."""

    save_clicked = Signal()

    def __init__(self) -> None:
        super().__init__("Output")
        form = QFormLayout(self)
        self.output_combo = QComboBox()
        self.output_combo.setToolTip("Labels layer that receives committed objects (ids max+1)")
        form.addRow("Labels", self.output_combo)
        self.overwrite_check = QCheckBox("Overwrite existing labels")
        self.overwrite_check.setToolTip("Off: a commit only fills background (0) pixels")
        self.save_button = QPushButton("Save as OME-Zarr ...")
        self.save_button.setToolTip("Write the chosen labels layer as an OME-Zarr label image (NGFF, with a "
                                    "pyramid), in the background")
        self.save_button.clicked.connect(self.save_clicked)
        row = QHBoxLayout()
        row.addWidget(self.overwrite_check)
        row.addWidget(self.save_button)
        form.addRow("", row)

    def current(self) -> Any:
        """The chosen labels layer (None: "New labels layer")."""
        return self.output_combo.currentData()

    def layers(self) -> list:
        return [self.output_combo.itemData(i) for i in range(1, self.output_combo.count())]

    def show_labels(self, labels: list, target: Any) -> None:
        """List ``labels`` after "New labels layer" and choose ``target`` (None: new)."""
        self.output_combo.blockSignals(True)
        self.output_combo.clear()
        self.output_combo.addItem(NEW_LABELS, None)
        for la in labels:
            self.output_combo.addItem(la.name, la)
        self.output_combo.setCurrentIndex(labels.index(target) + 1 if target in labels else 0)
        self.output_combo.blockSignals(False)

    def choose(self, layer: Any) -> None:
        idx = self.output_combo.findData(layer) if layer is not None else 0
        self.output_combo.setCurrentIndex(max(idx, 0))

    def overwrite(self) -> bool:
        return self.overwrite_check.isChecked()

    @staticmethod
    def refusal(err: PasteError, out: Any, shape: tuple[int, ...]) -> tuple[str, str]:
        """(level, message) for a commit into ``out`` that :func:`plan_paste` refused."""
        if err.reason == "occupied":
            return "warning", ("the object lies entirely on existing labels: nothing written "
                               "(tick 'Overwrite existing labels' to replace them)")
        if err.reason == "covered":
            return "warning", (f"not committed: {err} (it would leave fragments around them); tick "
                               "'Overwrite existing labels' to replace them, or click an unlabelled object")
        if err.reason == "shape":
            return "error", (f"the output labels layer '{out.name}' has shape {tuple(out.data.shape)}, "
                             f"the image {tuple(shape)}: choose another one or '{NEW_LABELS}'")
        if err.reason == "full":
            return "error", (f"labels layer '{out.name}' ({out.data.dtype}) is full: choose another one "
                             f"or '{NEW_LABELS}'")
        return "info", "nothing to commit: click on an object first"


class PromptPanel(QGroupBox):
    """The polarity of the next click; emits ``toggle_clicked``."""

    toggle_clicked = Signal()

    def __init__(self) -> None:
        super().__init__("Prompts")
        box = QVBoxLayout(self)
        self.polarity_button = QPushButton()
        self.polarity_button.setCheckable(True)
        self.polarity_button.setToolTip("Polarity of the next click (T). Ctrl+click adds the opposite one.")
        box.addWidget(self.polarity_button)
        hint = QLabel("Click: add point · Ctrl/right click: opposite polarity · "
                      "select + Delete: remove · T: toggle")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray;")
        box.addWidget(hint)
        self.polarity_button.clicked.connect(lambda *_: self.toggle_clicked.emit())
        self.show_polarity(True)

    def show_polarity(self, positive: bool) -> None:
        b = self.polarity_button
        b.setChecked(not positive)
        word, color = ("positive", POSITIVE_COLOR) if positive else ("negative", NEGATIVE_COLOR)
        b.setText(f"Next click: {word} (T toggles)")
        b.setStyleSheet(f"color: {color}; font-weight: bold;")


class ActionPanel(QGroupBox):
    """Commit, clear, segment volume (its IoU and outline stops), progress and cancel.

    Signals: ``commit_clicked``, ``clear_clicked``, ``volume_clicked``, ``cancel_clicked``.
    """

    commit_clicked = Signal()
    clear_clicked = Signal()
    volume_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self) -> None:
        super().__init__("Actions")
        box = QVBoxLayout(self)
        row = QHBoxLayout()
        self.commit_button = QPushButton("Commit [C]")
        self.commit_button.setToolTip("Write the object into the output labels layer (Ctrl+Z undoes it)")
        self.clear_button = QPushButton("Clear [Shift+C]")
        self.clear_button.setToolTip("Drop the current object and its points")
        row.addWidget(self.commit_button)
        row.addWidget(self.clear_button)
        box.addLayout(row)
        self.volume_button = QPushButton("Segment volume [Shift+S]")
        self.volume_button.setToolTip("3D stacks: propagate the object slice by slice from the clicked "
                                      "slices through the stack, then commit it")
        self.vote_check = QCheckBox("Smooth along z")
        self.vote_check.setChecked(DEFAULT_SLICE_VOTE)
        self.vote_check.setToolTip("After propagation each slice you did not click keeps the pixels that two of it "
                                   "and its two neighbours have (a bulge or notch one slice alone draws goes), on "
                                   "objects whose sections overlap from slice to slice; never on the frames of a "
                                   "time-lapse (a layer whose first axis is labelled t)")
        row = QHBoxLayout()
        row.addWidget(self.volume_button, 1)
        row.addWidget(self.vote_check)
        box.addLayout(row)
        form = QFormLayout()
        self.iou_spin = QDoubleSpinBox()
        self.iou_spin.setRange(0.05, 0.95)
        self.iou_spin.setSingleStep(0.05)
        self.iou_spin.setDecimals(2)
        self.iou_spin.setValue(DEFAULT_IOU_THRESHOLD)
        self.iou_spin.setToolTip("Propagation stops at the first slice whose mask overlaps the previous "
                                 "slice's mask less than this (intersection over union, the two masks "
                                 "centred on each other: a section that only moved is not a stop)")
        form.addRow("Stop below IoU", self.iou_spin)
        self.edge_spin = QDoubleSpinBox()
        self.edge_spin.setRange(0.0, 0.9)
        self.edge_spin.setSingleStep(0.05)
        self.edge_spin.setDecimals(2)
        self.edge_spin.setSpecialValueText("off")  # shown at 0
        self.edge_spin.setValue(DEFAULT_EDGE_FADE)
        self.edge_spin.setToolTip("Out of focus: beyond the outermost clicked slices, propagation stops at the "
                                  "first slice where the object's outline (the image gradient around the mask) "
                                  "is weaker than this fraction of the clicked slices' (the blur past the ends "
                                  "of a nucleus in a fluorescence stack); off at 0")
        form.addRow("Stop where outline fades below", self.edge_spin)
        box.addLayout(form)
        row, self.progress_bar, self.cancel_button = progress_row()
        box.addLayout(row)
        self.commit_button.clicked.connect(lambda *_: self.commit_clicked.emit())
        self.clear_button.clicked.connect(lambda *_: self.clear_clicked.emit())
        self.volume_button.clicked.connect(lambda *_: self.volume_clicked.emit())
        self.cancel_button.clicked.connect(lambda *_: self.cancel_clicked.emit())

    def bind(self, state: Any) -> None:
        """Follow the dock's :class:`~.state.WidgetState`: the buttons derive from its fields."""
        def show(event: Any = None) -> None:
            self.show_state(ready=state.ready, is_3d=state.is_3d, volume_running=state.volume_running,
                            cancellable=state.cancellable)

        for name in ("ready", "is_3d", "volume_running", "cancellable"):
            getattr(state.events, name).connect(show)
        show()

    def show_state(self, *, ready: bool, is_3d: bool, volume_running: bool, cancellable: bool = False) -> None:
        """``cancellable``: Cancel is shown for other work too (tiles embedding in the background)."""
        self.commit_button.setEnabled(ready)
        self.clear_button.setEnabled(ready)
        self.volume_button.setEnabled(ready and is_3d and not volume_running)
        self.iou_spin.setEnabled(is_3d)
        self.edge_spin.setEnabled(is_3d)
        self.vote_check.setEnabled(is_3d)
        self.cancel_button.setVisible(volume_running or cancellable)

    def stops(self) -> dict:
        """The propagation's stop settings, as keyword arguments of ``propagate``."""
        return {"iou_threshold": float(self.iou_spin.value()), "edge_fade": float(self.edge_spin.value()),
                "vote": self.vote_check.isChecked()}

    def show_progress(self, done: int | None, total: int, fmt: str) -> None:
        """Show the bar: ``done`` of ``total`` (``done`` None or ``total`` 0: busy, no count)."""
        show_bar(self.progress_bar, done, total, fmt)

    def hide_progress(self) -> None:
        self.progress_bar.setVisible(False)

    def start_volume_progress(self) -> None:
        """Busy bar for a propagation, in the dock only: napari's activity progress (its animated
        indicator repainting all the while) made Segment volume 1.4-1.8x slower on a 2-core
        machine (benchmarks/bench_widget_responsiveness.py)."""
        self.show_progress(None, 0, "propagating %v/%m")

    def volume_progress(self, done: int, total: int) -> None:
        self.show_progress(done, max(total, 1), "propagating %v/%m")

    def end_volume_progress(self) -> None:
        """The propagation ended (the caller hides or reuses the bar)."""


class StatusLine(QLabel):
    """One selectable line of status text."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def show_state(self, *, text: str | None = None, headline: str = "", model: str | None = None,
                   embedded: int = 0, n_slices: int | None = None, is_3d: bool = False, eta: str = "",
                   latency_ms: float | None = None, next_id: int | None = None, tiles: str | None = None) -> None:
        """One line: a message (else the headline), model, embeddings (ETA; ``tiles``: the tiles of a
        large image instead), last click, next id."""
        parts = [text] if text else ([headline] if headline else [])
        if model is not None:
            parts.append(f"model {model}")
            if tiles is not None:
                parts.append(tiles)
            elif is_3d:
                parts.append(f"embeddings {embedded}/{n_slices}" + (f" ({eta})" if eta else ""))
            elif not embedded:
                parts.append("computing the image embedding ...")
        if latency_ms is not None:
            parts.append(f"last click {latency_ms:.0f} ms")
        if next_id is not None:
            parts.append(f"next id {next_id}")
        self.setText(" · ".join(parts))
