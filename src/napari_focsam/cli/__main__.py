"""``python -m napari_focsam.cli``: the same as the ``napari-focsam`` command."""

import sys

from . import main

sys.exit(main())
