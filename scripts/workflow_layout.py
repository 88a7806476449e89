"""Lay out a UI workflow (format 0.4) left to right in columns, with node sizes the frontend keeps.

``layout(workflow, schemas, columns)`` sets every node's ``pos``, ``size`` and ``order`` and the
initial view (``extra.ds``) in place:

- a node's column is the length of the longest chain of links feeding it, unless ``columns``
  names one; a Note heads its column (column 0 unless ``columns`` names one), above the nodes,
  never over them;
- in a column, nodes sit top to bottom by their chain depth (a node below what feeds it), then
  by the mean height of what feeds them;
- a node's height is what ComfyUI_frontend 1.27.10 draws at least (title excluded): slot rows,
  widget rows, multiline text boxes, the image preview of Load Image, the preview of saved
  images, the block-weight editor of the pack's LoRA nodes (its SDXL or SD1/SD2 rows). The
  frontend keeps a saved size that is not smaller than its own minimum, so boxes do not grow
  into their neighbours; ``tests/web/test_web_frontend.py`` measures the real boxes.

Used by ``scripts/make_workflows.py`` for the workflows it builds and for the shipped ones it
only re-lays out.
"""

from __future__ import annotations

from typing import Any

TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT
COLUMN_GAP = 50
ROW_GAP = 36
NODE_WIDTH = 280
NOTE_WIDTH = 300
VIEW = (1540, 900)  # the canvas of a 1600 x 1000 window, less the side bar and the menu
NOTE_TYPES = ("Note", "MarkdownNote")
# Extra body height a node type draws below its widgets.
PREVIEW_HEIGHT = {"LoadImage": 230, "SaveImage": 200, "PreviewImage": 200}
FRONTEND_TEXT_BOXES = {"PreviewAny": 1}  # multiline widgets the frontend's JS adds
LORA_EDITOR_NODES = ("UNetLabApplyLoRABlockWeights", "UNetLabBakeLoRA")
EDITOR_ROWS = {"sdxl": 20, "sd1": 26}  # web/js/block_editor.js: 52 + 17 per row + 8, plus margins


def _multiline_count(node: dict[str, Any], schemas: Any) -> int:
    schema = schemas.get(node["type"])
    count = FRONTEND_TEXT_BOXES.get(node["type"], 0)
    if schema is not None:
        count += sum(1 for s in schema.inputs.values() if s.is_widget and s.options.get("multiline"))
    return count


def body_height(node: dict[str, Any], schemas: Any) -> int:
    """The node's height below its title as the frontend draws it at least."""
    if node["type"] in NOTE_TYPES:
        text = str((node.get("widgets_values") or [""])[0])
        lines = sum(1 + len(line) // 48 for line in text.splitlines())
        return 40 + 14 * lines
    slots = max(len([i for i in node["inputs"] if "widget" not in i]), len(node["outputs"]))
    height = 46 + 24 * (slots + len(node.get("widgets_values") or [])) + 80 * _multiline_count(node, schemas)
    height += PREVIEW_HEIGHT.get(node["type"], 0)
    if node["type"] in LORA_EDITOR_NODES:
        family = (node.get("properties") or {}).get("unetlab_family", "sd1")
        height += 52 + 17 * EDITOR_ROWS.get(family, 26) + 8 + 30
    return height


def _depths(nodes: dict[int, dict[str, Any]], links: list[list[Any]]) -> dict[int, int]:
    depth = dict.fromkeys(nodes, 0)
    for _ in nodes:
        for _link, origin, _slot, target, _to, _kind in links:
            depth[target] = max(depth[target], depth[origin] + 1)
    return depth


def layout(workflow: dict[str, Any], schemas: Any, columns: dict[int, int] | None = None) -> None:
    """Place every node of ``workflow`` in place (see the module docstring)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = workflow["links"]
    notes = [i for i, n in nodes.items() if n["type"] in NOTE_TYPES]
    depth = _depths({i: n for i, n in nodes.items() if i not in notes}, links)
    column = {**dict.fromkeys(notes, 0), **depth, **(columns or {})}
    feeds: dict[int, list[int]] = {}
    for _link, origin, _slot, target, _to, _kind in links:
        feeds.setdefault(target, []).append(origin)
    x = 0
    centre: dict[int, float] = {}
    order = 1
    for index in sorted(set(column.values())):
        members = [i for i in nodes if column.get(i) == index and i not in notes]
        members.sort(key=lambda i: (depth[i], sum(centre.get(o, 0) for o in feeds.get(i, [])) / max(1, len(feeds.get(i, []))), i))
        members = [i for i in notes if column[i] == index] + members
        width = max(NOTE_WIDTH if nodes[i]["type"] in NOTE_TYPES else NODE_WIDTH for i in members)
        y = 0
        for node_id in members:
            node = nodes[node_id]
            height = body_height(node, schemas)
            node["pos"] = [x, y + TITLE]
            node["size"] = [width, height]
            centre[node_id] = y + height / 2
            y += TITLE + height + ROW_GAP
            if node["type"] in NOTE_TYPES:
                node["order"] = 0
            else:
                node["order"] = order
                order += 1
        x += width + COLUMN_GAP
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    scale = round(min(1.0, VIEW[0] / (right + 80), VIEW[1] / (bottom + 80)), 3)
    workflow.setdefault("extra", {})["ds"] = {"scale": scale, "offset": [40, 20]}
