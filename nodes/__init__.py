"""Node classes (classic ComfyUI API): thin adapters over ``unet_core``.

Each module listed in ``NODE_MODULES`` defines ``NODE_CLASS_MAPPINGS`` and
``NODE_DISPLAY_NAME_MAPPINGS``; this package merges them.
"""

from __future__ import annotations

import importlib

NODE_MODULES: tuple[str, ...] = ("diffusion", "lora", "gates", "acceleration", "segmentation",
                                  "segment_folder", "imaging", "pixel_diffusion", "segmentation_volume")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in NODE_MODULES:
    _module = importlib.import_module(f".{_name}", __name__)
    for _key, _cls in _module.NODE_CLASS_MAPPINGS.items():
        if _key in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"node type {_key!r} is defined twice (in nodes.{_name})")
        NODE_CLASS_MAPPINGS[_key] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
