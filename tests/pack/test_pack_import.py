"""The pack imports the way ComfyUI imports it, with no ComfyUI present."""

from __future__ import annotations

import json
import subprocess
import sys

from pack_support import REPO_ROOT

COMFY_MODULES = ("comfy", "folder_paths", "nodes", "execution", "server", "comfy_execution", "comfy_extras")

_PROBE = r"""
import importlib.util, json, sys
root = sys.argv[1]
before = set(sys.modules)
# ComfyUI 0.3.64 (nodes.load_custom_node) names a folder pack after its path, dots replaced by "_x_".
spec = importlib.util.spec_from_file_location(root.replace(".", "_x_"), root + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
new = sorted(set(sys.modules) - before)
print(json.dumps({
    "new": new,
    "mappings": sorted(module.NODE_CLASS_MAPPINGS),
    "display": sorted(module.NODE_DISPLAY_NAME_MAPPINGS),
    "web": module.WEB_DIRECTORY,
}))
"""


def _import_in_fresh_interpreter() -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(REPO_ROOT)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_leaves_no_comfyui_module_loaded():
    result = _import_in_fresh_interpreter()
    leaked = [m for m in result["new"] if m.split(".")[0] in COMFY_MODULES]
    assert leaked == []
    assert result["web"] == "./web"
    assert set(result["display"]) <= set(result["mappings"])


def test_every_node_has_category_description_and_tooltips():
    import unet_lab

    assert unet_lab.NODE_CLASS_MAPPINGS, "the pack registers no node"
    for key, cls in unet_lab.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.startswith("UNet Lab/"), key
        assert getattr(cls, "DESCRIPTION", "").strip(), key
        assert key in unet_lab.NODE_DISPLAY_NAME_MAPPINGS, key
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                options = entry[1] if len(entry) > 1 else {}
                assert options.get("tooltip", "").strip(), f"{key}.{name} has no tooltip"
        tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None)
        assert tooltips is not None and len(tooltips) == len(cls.RETURN_TYPES), key
        assert callable(getattr(cls, cls.FUNCTION)), key
