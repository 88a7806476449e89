#!/usr/bin/env python3
"""Derive the stub executor's core node schemas from a recorded ComfyUI ``/object_info``.

Usage: ``python scripts/derive_core_schemas.py [OBJECT_INFO_JSON] [OUT_JSON_GZ]``
(defaults: ``../shared/comfyui/object_info-0.3.64.json`` beside the repository,
``unet_core/graph/data/core_object_info.json.gz``).

Keeps what validation and UI->API conversion need (input specs with their
options, input order, outputs, output node flag, category, module) and drops
tooltips and descriptions. Combos whose options are the recording server's files
(model names, input images) are marked ``"file_list": true``: the stub executor
cannot know the files of the ComfyUI that will run the workflow, so it does not
check values against them. Nothing reads ``../shared`` at run time.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "comfyui" / "object_info-0.3.64.json"
DEFAULT_TARGET = REPO / "unet_core" / "graph" / "data" / "core_object_info.json.gz"

DROPPED_OPTIONS = {"tooltip", "description", "placeholder"}
NODE_FIELDS = ("input_order", "output", "output_is_list", "output_name", "output_node", "category", "python_module")
FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".gguf", ".onnx", ".png", ".jpg",
                 ".jpeg", ".webp", ".gif", ".json", ".yaml", ".mp4", ".webm", ".wav", ".mp3", ".flac", ".glb", ".obj")
# Input names whose combo lists folder contents even when the recorded list happens to be empty
# (a trailing number too: DualCLIPLoader's clip_name1/clip_name2).
FILE_INPUT_NAME = re.compile(r"(_name|image|video|audio|file|model_file|config_name)\d*$")
# Entries ComfyUI adds to a folder's file list that are not files (VAELoader's built-in choices).
VIRTUAL_ENTRIES = {"pixel_space", "taesd", "taesdxl", "taesd3", "taef1"}


def _is_file(option: Any) -> bool:
    return isinstance(option, str) and option.lower().endswith(FILE_SUFFIXES)


def _is_file_list(name: str, options: list[Any], extra: dict[str, Any]) -> bool:
    if extra.get("image_upload") or extra.get("video_upload") or extra.get("audio_upload") or extra.get("file_upload"):
        return True
    if options and all(_is_file(o) for o in options):
        return True
    return bool(FILE_INPUT_NAME.search(name)) and all(_is_file(o) or o in VIRTUAL_ENTRIES for o in options)


def _input_spec(name: str, spec: list[Any]) -> list[Any]:
    kind = spec[0]
    extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extra = {k: v for k, v in extra.items() if k not in DROPPED_OPTIONS}
    options = kind if isinstance(kind, list) else extra.get("options") if kind == "COMBO" else None
    if isinstance(options, list) and _is_file_list(name, options, extra):
        extra["file_list"] = True
    return [kind, extra] if extra else [kind]


def derive(object_info: dict[str, Any]) -> dict[str, Any]:
    """The compact schema table: node type -> what validation and conversion need."""
    nodes: dict[str, Any] = {}
    for node_type, info in sorted(object_info.items()):
        inputs: dict[str, Any] = {}
        for section, specs in info.get("input", {}).items():
            if section == "hidden":
                inputs[section] = {k: (v[0] if isinstance(v, list) else v) for k, v in specs.items()}
            else:
                inputs[section] = {k: _input_spec(k, v) for k, v in specs.items()}
        entry = {"input": inputs}
        for field in NODE_FIELDS:
            if field in info:
                entry[field] = info[field]
        nodes[node_type] = entry
    return {"source": "ComfyUI 0.3.64 /object_info", "nodes": nodes}


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    target = Path(argv[1]) if len(argv) > 1 else DEFAULT_TARGET
    table = derive(json.loads(source.read_text(encoding="utf-8")))
    data = json.dumps(table, separators=(",", ":"), sort_keys=True).encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        # mtime=0: the same input gives the same bytes.
        with gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(data)
    tmp.replace(target)
    sys.stderr.write(f"{len(table['nodes'])} core node schemas -> {target} ({target.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
