"""The one error type of the command line.

:class:`UserError` lives here, outside :mod:`napari_focsam.cli`, so that any module may raise
it without importing the command line (the core imports nothing from ``cli``).
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by the user's input (a path, an option, an image): reported as one line.

    The command line prints ``napari-focsam: error: <message>`` on stderr and exits with
    status 2, without a traceback.
    """
