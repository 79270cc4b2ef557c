"""ComfyUI entry point of comfyui-scoft: the SCoFT nodes (see NODES.md).

The engine lives in `scoft_train/` and works without ComfyUI; `nodes/` adapts it.
Importing this package (ComfyUI does it at start) registers our folder kinds in
ComfyUI's folder registry: `ccub` (dataset folders, default input/ccub), `annotators`,
`feature_backbones` and `classifiers` (under models/); extra_model_paths.yaml adds roots.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.common import register_folders

register_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
