"""The HTTP route the block editor asks which model family a LoRA file was made for.

``GET /unet_lab/lora_family?name=<file in the loras folder>`` answers
``{"name": ..., "family": "sd1" | "sdxl" | null, "detail": ...}``: ``sd1`` stands for the SD1 / SD2
block layout (the editor's family names), ``null`` when the header does not tell or the file cannot
be read (``detail`` says why). Only the safetensors header is read (names and shapes), so the
answer is instant on any file size. ComfyUI registers the route on ``PromptServer.instance.routes``
(``nodes/host/comfy_routes.py``); the web test harness registers the same handler on its own
aiohttp app. aiohttp is imported only when a request is served (the host provides it).
"""

from __future__ import annotations

import logging
from typing import Any

from ..unet_core.checkpoints.safetensors_header import read_header
from ..unet_core.errors import UNetLabError
from ..unet_core.lora.keys import base_family, guess_family
from .host import get_host

log = logging.getLogger(__name__)

ROUTE_PATH = "/unet_lab/lora_family"
# guess_family's answers -> the block editor's family names (SD2 shares SD1's block layout)
EDITOR_FAMILY = {"sd1": "sd1", "sd2": "sd1", "sd1/sd2": "sd1", "sdxl": "sdxl"}
_CROSS_ATTENTION_DOWN = ("attn2_to_k", "attn2.to_k", "attn2_to_v", "attn2.to_v")
_DOWN_ROLES = ("lora_down.weight", "lora_A.weight", "lora.down.weight")


def _context_dims(shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """Cross-attention input widths (768 SD1, 1024 SD2, 2048 SDXL) from the down matrices' shapes."""
    return [shape[1] for key, shape in shapes.items()
            if len(shape) == 2 and any(m in key for m in _CROSS_ATTENTION_DOWN) and key.endswith(_DOWN_ROLES)]


def lora_family(name: str) -> dict[str, Any]:
    """The editor family of the LoRA ``name`` in the host's loras folder, from its header alone."""
    try:
        path = get_host().resolve("loras", name)
        if path.suffix.lower() != ".safetensors":
            return {"name": name, "family": None, "detail": "only .safetensors headers are read"}
        shapes = read_header(path).shapes()
    except (UNetLabError, OSError, ValueError) as error:
        return {"name": name, "family": None, "detail": str(error)}
    guess = guess_family(shapes, _context_dims(shapes))
    family = EDITOR_FAMILY.get(guess) or EDITOR_FAMILY.get(base_family(guess) or "")
    return {"name": name, "family": family, "detail": f"LoRA keys suggest {guess}" if guess else "keys do not tell"}


async def handle_lora_family(request: Any) -> Any:
    """aiohttp handler: ``?name=`` -> the JSON of ``lora_family`` (400 without a name)."""
    from aiohttp import web

    name = request.rel_url.query.get("name", "")
    if not name:
        return web.json_response({"error": "missing ?name= (a file in the loras folder)"}, status=400)
    return web.json_response(lora_family(name))


def register(routes: Any) -> None:
    """Add the route to an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.instance.routes``)."""
    routes.get(ROUTE_PATH)(handle_lora_family)
