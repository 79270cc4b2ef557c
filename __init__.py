"""ComfyUI entry point of comfyui-scoft: the SCoFT nodes (see NODES.md).

The engine lives in `scoft_train/` and works without ComfyUI; `nodes/` adapts it.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
