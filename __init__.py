"""UNet Lab: a ComfyUI node pack for U-Nets.

ComfyUI imports this file under a path-derived package name and reads
``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS`` and ``WEB_DIRECTORY``.
Importing it imports no ComfyUI module.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.host.comfy_routes import register_comfy_routes

WEB_DIRECTORY = "./web"
register_comfy_routes()  # the block editor's LoRA family route; a no-op outside ComfyUI

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
