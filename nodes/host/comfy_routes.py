"""Register the pack's HTTP routes on a running ComfyUI server (``PromptServer.instance.routes``).

Called once from the pack's ``__init__``. Does nothing outside ComfyUI (no ``server`` module
imported, or no server instance yet), so importing the pack stays free of ComfyUI. ComfyUI adds
every route of that table under ``/`` and ``/api`` when it starts serving, after loading packs.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def register_comfy_routes() -> bool:
    """Add our routes to ComfyUI's route table; True when a ComfyUI server took them."""
    server_module = sys.modules.get("server")
    instance = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    routes = getattr(instance, "routes", None)
    if routes is None:
        return False
    from ..lora_family_route import register

    register(routes)
    log.debug("UNet Lab: routes registered on ComfyUI's PromptServer")
    return True
