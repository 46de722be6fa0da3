"""The FocSAM dock widget: Qt panels, layer handling and background jobs over a Qt-free core.

Modules
-------
constants
    Layer names, colours, key bindings, the cache-folder environment variable.
layer_utils
    Small helpers on napari layers (spatial shape, data, transforms).
panels
    The dock's sections (setup, output, prompts, actions, status): they show state and emit signals.
prompt_layers
    ``PromptLayers``: the prompts/preview/output layers and their key and mouse bindings.
viewer_sync
    ``ViewerSync``: follows the viewer's layer list and dims (combos, chosen image, slice in view).
box_prompts
    ``BoxPrompts``: the "FocSAM boxes" shapes layer (one rectangle = one object's box prompt).
prompt_modes_panel
    ``PromptModesPanel``: the "More prompts" section (many-objects checkbox, Segment all, progress).
prompt_modes
    ``PromptModes``: boxes, one object per positive point, and Segment all, with their workers.
jobs
    ``SessionJobs``: the background workers (model load, embeddings, prediction, volume).
region_layers
    Labels layers written by region (preview, commit), zarr-backed above one 8192x8192 plane.
tile_view
    ``TileView``: large images: tiles embedded in the background, the outline of the tile being embedded.
widget
    ``FocSAMWidget``: composes the parts above and keeps the widget's public API.
"""

from .widget import FocSAMWidget

__all__ = ["FocSAMWidget"]
