"""How a failed job is described to people: one line, specific, and whether it was out of memory.

The widget's workers, the command line and scripts share this policy: an exception raised by the
engine becomes a :class:`Failure` with a one-line message (never a traceback) and a flag that says
whether the GPU ran out of memory (the widget then falls back to the CPU). The module is Qt-free and
torch-free: torch is only consulted when it is already imported (an exception cannot be a torch
out-of-memory error otherwise).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .models.weights import WeightsUnavailableError

__all__ = ["Failure", "describe_error", "is_oom", "one_line"]


@dataclass(frozen=True)
class Failure:
    """An error a job caught, as a one-line message for people.

    Attributes
    ----------
    message : str
        One line, specific and actionable.
    oom : bool
        True when the error was an out-of-memory error of the device.
    level : str
        ``"error"`` or ``"warning"``.
    """

    message: str
    oom: bool = False
    level: str = "error"


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` is an out-of-memory error of torch (CUDA, MPS or the CPU allocator)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        if oom_type is not None and isinstance(exc, oom_type):
            return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def one_line(text: str, limit: int = 400) -> str:
    """``text`` with its whitespace collapsed to single spaces, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(exc: BaseException, what: str = "") -> Failure:
    """A short, actionable description of an exception raised by the engine.

    Parameters
    ----------
    exc : BaseException
        The exception a job caught.
    what : str, optional
        What was being done (``"Segment volume"``); prefixes the message.

    Returns
    -------
    Failure
        The one-line message and whether the device ran out of memory.
    """
    prefix = f"{what}: " if what else ""
    if is_oom(exc):
        return Failure(prefix + "out of GPU memory", oom=True)
    if isinstance(exc, WeightsUnavailableError):
        if exc.entry.downloadable:
            how = f"fetch it with:  napari-focsam weights fetch {exc.name}"
        else:
            where = f" from {exc.manual_url}" if exc.manual_url else ""
            how = f"download it by hand{where}, then run:  {exc.import_command}"
        return Failure(f"Model '{exc.name}' is not available on this computer; {how}")
    if isinstance(exc, (FileNotFoundError, ValueError, IsADirectoryError)):
        return Failure(prefix + one_line(str(exc)))
    return Failure(prefix + one_line(f"{type(exc).__name__}: {exc}"))
