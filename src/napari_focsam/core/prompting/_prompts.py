"""Prompts as one value: what the user gave for an object, on a plane or across a stack.

:class:`PlanePrompts` is what one decoder step gets (the clicks of a plane, its box) and turns
into the decoder's point tokens (:meth:`PlanePrompts.tokens`); :class:`Prompts` is an object's
prompts across a stack, as the widget and scripts hand them to a session
(:func:`napari_focsam.core.editing.set_prompts`). A new kind of prompt (scribbles, a mask) is a
field of both, its tokens in :meth:`PlanePrompts.tokens` and its check in :meth:`Prompts.of`:
the click loop, the histories and the widget's jobs carry the value without knowing its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from ._boxes import Box
from ._clicks import Click

if TYPE_CHECKING:  # pragma: no cover - torch is imported where the tokens are made, not with the value
    import torch

__all__ = ["PlanePrompts", "Prompts", "SliceHistory"]

#: A click across a stack: (z, y, x, positive) in image pixels.
StackClick = tuple[int, float, float, bool]


@dataclass(frozen=True)
class PlanePrompts:
    """An object's prompts on one plane: its clicks in order and its box.

    Attributes
    ----------
    clicks : tuple of Click
        In the order they were made (image pixels).
    box : Box or None
        The box prompt, kept with every click.
    """

    clicks: tuple[Click, ...] = ()
    box: Box | None = None

    def tokens(self, original_size: tuple[int, int], input_size: tuple[int, int],
               device: Any = "cpu") -> tuple["torch.Tensor", "torch.Tensor"]:
        """The decoder's point prompt: ``(1, N, 2)`` canvas (x, y) and ``(1, N)`` labels (1 positive,
        0 negative; a box adds its two corners, labels 2 and 3, last).

        ``original_size`` is the image's (H, W), ``input_size`` its (h, w) on the encoder's canvas.
        """
        import torch

        H, W = original_size
        h, w = input_size
        xy = [[c.x * (w / W), c.y * (h / H)] for c in self.clicks]
        labels = [1 if c.is_positive else 0 for c in self.clicks]
        if self.box is not None:
            b = self.box
            xy += [[b.x0 * (w / W), b.y0 * (h / H)], [b.x1 * (w / W), b.y1 * (h / H)]]
            labels += [2, 3]
        pts = torch.tensor(xy, dtype=torch.float32).reshape(-1, 2)
        lab = torch.tensor(labels, dtype=torch.int64)
        return pts[None].to(device), lab[None].to(device)


@dataclass(frozen=True)
class Prompts:
    """An object's prompts across a stack: its clicks in order and a box on one slice.

    Attributes
    ----------
    clicks : tuple of (z, y, x, positive)
        Image pixels; ``positive`` a bool.
    box : (z, (y0, x0, y1, x1)) or None
        A box on slice ``z``; the object's clicks are then on that slice too.
    """

    clicks: tuple[StackClick, ...] = ()
    box: tuple[int, tuple[float, float, float, float]] | None = None

    @classmethod
    def of(cls, clicks: Sequence[Sequence] = (), box: tuple[int, Sequence[float]] | None = None) -> "Prompts":
        """Prompts from plain sequences: the clicks as given (the session checks them), the box's
        numbers normalised."""
        return cls(tuple(tuple(c) for c in clicks),
                   None if box is None else (int(box[0]), tuple(float(v) for v in box[1])))

    def __bool__(self) -> bool:
        return bool(self.clicks) or self.box is not None

    @property
    def slices(self) -> set[int]:
        """The slices that hold a prompt."""
        return {int(c[0]) for c in self.clicks} | ({self.box[0]} if self.box is not None else set())


@runtime_checkable
class SliceHistory(Protocol):
    """The click history of one object on one slice, as a session uses it.

    :class:`~napari_focsam.core.prompting.InteractiveObject` (a plane),
    :class:`~napari_focsam.core.prompting.TiledHistory` (the tiles of a large image) and
    :class:`~napari_focsam.core.propagation.AnchorHistory` (a correction on a propagated
    slice) implement it; the session never asks which one it holds.

    Attributes
    ----------
    clicks : list of Click
        The clicks, in order (image pixels).
    box : Box or None
        The box prompt.
    prompts : PlanePrompts
        Both, as one value.
    mask : numpy.ndarray
        ``(Y, X)`` bool, read-only.
    region : MaskRegion
        The mask as an offset and a crop around the object.
    tile : TileKey or None
        The tile (and level) the clicks are decoded in; None on a plane.
    logits : torch.Tensor or None
        ``(1, 1, 256, 256)`` after the last step (in the tile's frame on a tiled image).
    token : int or None
        Changes whenever the state does.
    blank : bool
        The slice is constant after contrast mapping: nothing to segment.
    offset : float
        The logit level the propagation's runs from this slice cut their masks at (0 but after
        a level cut on a propagated slice, see :class:`~napari_focsam.core.propagation.AnchorHistory`).
    """

    box: Any
    blank: bool
    offset: float

    @property
    def clicks(self) -> list: ...

    @property
    def prompts(self) -> PlanePrompts: ...

    @property
    def mask(self) -> Any: ...

    @property
    def region(self) -> Any: ...

    @property
    def tile(self) -> Any: ...

    @property
    def logits(self) -> Any: ...

    @property
    def token(self) -> Any: ...

    def __len__(self) -> int: ...

    def add(self, click: Click) -> Any:
        """Add a click and decode."""

    def undo(self) -> Any:
        """Remove the last click."""

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` clicks."""

    def set_box(self, box: Sequence[float] | None) -> Any:
        """Set (or remove) the box; the clicks are replayed on it."""

    def nbytes(self) -> int:
        """Bytes held (logits, refined embeddings, masks)."""
