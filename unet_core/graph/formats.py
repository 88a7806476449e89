"""Workflow formats: ComfyUI's API prompt and its UI workflow, and UI -> API conversion.

The conversion follows the frontend's ``graphToPrompt`` (ComfyUI_frontend,
``src/utils/executionUtil.ts`` and litegraph's ``ExecutableNodeDTO``):

- widget values are matched, in order, to every widget input of the node's
  schema (required then optional); an input linked to a widget keeps its
  ``widgets_values`` slot, its link replaces the value afterwards;
- INT inputs with ``control_after_generate`` (or, when the option is absent,
  named ``seed``/``noise_seed``) are followed by the control value, which is not
  sent; combos with ``control_after_generate`` are followed by the control and
  its filter value; the first required ``image_upload``/``video_upload``/
  ``audio_upload`` combo adds the upload button's value after the last required
  widget (the frontend appends the button as a new required input);
- muted nodes (mode 2) are dropped, and inputs linked to them removed; bypassed
  nodes (mode 4) are dropped and a link from one resolves through its input of
  the same slot (if the types fit), else its first input of the link's type;
- Reroute nodes are followed; a PrimitiveNode pushes its value into the widget
  of every input it feeds and is dropped; Note/MarkdownNote are dropped;
- list values are wrapped as ``{"__value__": [...]}`` (lists mean links).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import WorkflowError
from .schemas import InputSpec, NodeSchema, SchemaSet

log = logging.getLogger(__name__)

MODE_MUTED = 2
MODE_BYPASS = 4
VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")
SEED_NAMES = ("seed", "noise_seed")
# Widgets the frontend's own JS adds to a core node (no schema input) and sends in the prompt:
# PreviewAny's read-only "preview" text ("" until a run fills it); ComfyUI ignores the value.
FRONTEND_WIDGETS = {"PreviewAny": "preview"}

_SKIP = object()  # a widgets_values slot the prompt does not receive


# -- recognising the formats ---------------------------------------------------------------------------
def is_api_prompt(data: Any) -> bool:
    """``{id: {"class_type": ..., "inputs": {...}}}`` (at least one entry with a class_type)."""
    if not isinstance(data, Mapping) or not data:
        return False
    if not all(isinstance(v, Mapping) for v in data.values()):
        return False
    return any("class_type" in v for v in data.values()) and all(
        ("class_type" in v or "inputs" in v) for v in data.values())


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and \
        isinstance(data.get("links", []), (list, type(None)))


def split_prompt(data: Any, schemas: SchemaSet, source: str = "workflow") -> tuple[dict[str, Any], dict[str, Any]]:
    """(API prompt, extra_data) from either format; a ``{"prompt": ...}`` wrapper is unwrapped.

    ``extra_data["extra_pnginfo"]["workflow"]`` carries a UI workflow (SaveImage
    writes it into the PNG), as the frontend sends it.
    """
    extra: dict[str, Any] = {}
    if isinstance(data, Mapping) and "prompt" in data and is_api_prompt(data.get("prompt")):
        if isinstance(data.get("extra_data"), Mapping):
            extra = copy.deepcopy(dict(data["extra_data"]))
        data = data["prompt"]
    if is_api_prompt(data):
        return {str(k): copy.deepcopy(dict(v)) for k, v in data.items()}, extra
    if is_ui_workflow(data):
        prompt = ui_to_api(data, schemas)
        extra.setdefault("extra_pnginfo", {})["workflow"] = copy.deepcopy(dict(data))
        return prompt, extra
    kind = type(data).__name__
    raise WorkflowError(f"{source}: neither an API prompt ({{id: {{class_type, inputs}}}}) nor a UI workflow "
                        f"(with 'nodes' and 'links'); got a JSON {kind}"
                        + (f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, Mapping) else ""))


def read_workflow_file(path: str | Path) -> Any:
    """The JSON of a workflow file; WorkflowError naming the file when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such workflow file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WorkflowError(f"{path}: cannot read the workflow ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise WorkflowError(f"{path}: not JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None


# -- UI -> API -----------------------------------------------------------------------------------------
def _is_valid_connection(a: Any, b: Any) -> bool:
    """litegraph's type compatibility: equal, wildcard, or overlapping comma lists (case-insensitive)."""
    if not a or not b or a == b or a == "*" or b == "*":
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return bool({t.strip() for t in a.split(",")} & {t.strip() for t in b.split(",")})


def _widget_slots(schema: NodeSchema, include_force_input: bool = False) -> list[Any]:
    """The widgets_values layout of a node type: input names, with _SKIP for UI-only values.

    The frontend adds one upload button for the first required upload combo, as a new last
    required input: its value follows every required widget, not the combo itself."""
    slots: list[Any] = []
    upload_pending = any(upload_combo(s) for s in schema.inputs.values() if s.category == "required")
    for spec in schema.inputs.values():
        if upload_pending and spec.category != "required":
            slots.append(_SKIP)
            upload_pending = False
        forced = bool(spec.options.get("forceInput"))
        if not spec.is_widget and not (include_force_input and forced and _widget_like(spec)):
            continue
        slots.append(_SKIP if forced else spec.name)
        slots.extend([_SKIP] * _extra_values(spec))
    if upload_pending:
        slots.append(_SKIP)
    return slots


def upload_combo(spec: InputSpec) -> bool:
    """A combo the frontend gives an upload button (image, video or audio upload)."""
    return spec.choices is not None and any(spec.options.get(k) for k in UPLOAD_OPTIONS)


def _widget_like(spec: InputSpec) -> bool:
    return spec.choices is not None or spec.type in ("INT", "FLOAT", "STRING", "BOOLEAN")


def _extra_values(spec: InputSpec) -> int:
    options = spec.options
    if spec.type == "INT":
        control = options["control_after_generate"] if "control_after_generate" in options else spec.name in SEED_NAMES
        return 1 if control else 0
    if spec.choices is not None:
        return 2 if options.get("control_after_generate") else 0
    return 0


def _default_value(spec: InputSpec) -> Any:
    """The value a freshly made widget holds (the frontend's defaults)."""
    if "default" in spec.options:
        return spec.options["default"]
    if spec.choices is not None:
        return spec.choices[0] if spec.choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec.type)


def _widget_values(node: Mapping[str, Any], schema: NodeSchema) -> dict[str, Any]:
    values = node.get("widgets_values")
    result = {spec.name: _default_value(spec) for spec in schema.widget_inputs()}
    if isinstance(values, Mapping):  # some nodes serialise widgets by name
        result.update({k: v for k, v in values.items() if k in result})
        return result
    values = list(values or [])
    slots = _widget_slots(schema)
    with_forced = _widget_slots(schema, include_force_input=True)
    if len(values) != len(slots) and len(values) == len(with_forced) and with_forced != slots:
        slots = with_forced  # older files kept values for forceInput inputs (frontend's migrateWidgetsValues)
    elif len(values) != len(slots):
        log.warning("node %s (%s): %d widget values for %d widget slots; matching them in order",
                    node.get("id"), node.get("type"), len(values), len(slots))
    for slot, value in zip(slots, values, strict=False):  # a count mismatch was warned about above
        if slot is not _SKIP:
            result[slot] = value
    return result


class _Graph:
    def __init__(self, workflow: Mapping[str, Any]) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        for node in workflow.get("nodes") or []:
            if not isinstance(node, Mapping) or "id" not in node:
                raise WorkflowError(f"workflow: a node entry is not an object with an 'id': {str(node)[:80]}")
            self.nodes[str(node["id"])] = dict(node)
        self.links: dict[int, tuple[str, int, str, int, Any]] = {}
        for link in workflow.get("links") or []:
            if link is None:
                continue
            if isinstance(link, (list, tuple)) and len(link) >= 5:
                link_id, origin, origin_slot, target, target_slot = link[:5]
                kind = link[5] if len(link) > 5 else None
            elif isinstance(link, Mapping):
                link_id, origin, origin_slot = link.get("id"), link.get("origin_id"), link.get("origin_slot")
                target, target_slot, kind = link.get("target_id"), link.get("target_slot"), link.get("type")
            else:
                raise WorkflowError(f"workflow: malformed link entry {str(link)[:80]}")
            self.links[int(link_id)] = (str(origin), int(origin_slot), str(target), int(target_slot), kind)

    def node(self, node_id: str, why: str) -> dict[str, Any]:
        if node_id not in self.nodes:
            raise WorkflowError(f"workflow: {why} refers to node {node_id}, which is not in the workflow")
        return self.nodes[node_id]

    def link(self, link_id: Any, why: str) -> tuple[str, int, str, int, Any]:
        try:
            return self.links[int(link_id)]
        except (KeyError, TypeError, ValueError):
            raise WorkflowError(f"workflow: {why} uses link {link_id}, which is not in the workflow's links") from None

    # Resolution through reroutes and bypassed nodes, as litegraph's ExecutableNodeDTO does.
    def resolve_input(self, node: Mapping[str, Any], index: int, kind: Any, seen: set[str]) -> tuple[str, int] | None:
        key = f"{node['id']}[I]{index}"
        if key in seen:
            raise WorkflowError(f"workflow: circular link through node {node['id']} ({node.get('type')})")
        seen.add(key)
        inputs = node.get("inputs") or []
        if index >= len(inputs):
            return None
        entry = inputs[index]
        if entry.get("link") is None:
            return None
        origin, origin_slot, _t, _ts, _k = self.link(entry["link"], f"input {entry.get('name')!r} of node {node['id']}")
        origin_node = self.node(origin, f"the link into input {entry.get('name')!r} of node {node['id']}")
        return self.resolve_output(origin_node, origin_slot, kind if kind is not None else entry.get("type"), seen)

    def resolve_output(self, node: Mapping[str, Any], slot: int, kind: Any, seen: set[str]) -> tuple[str, int] | None:
        key = f"{node['id']}[O]{slot}"
        if key in seen:
            raise WorkflowError(f"workflow: circular link through node {node['id']} ({node.get('type')})")
        seen.add(key)
        if node.get("mode") == MODE_BYPASS:
            index = self._bypass_index(node, slot, kind)
            return None if index < 0 else self.resolve_input(node, index, None, seen)
        if node.get("type") in VIRTUAL_NODE_TYPES:
            if slot < len(node.get("inputs") or []):
                return self.resolve_input(node, slot, kind, seen)
            return None
        return str(node["id"]), slot

    @staticmethod
    def _bypass_index(node: Mapping[str, Any], slot: int, kind: Any) -> int:
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        output_type = outputs[slot].get("type") if slot < len(outputs) else None
        if kind in ("*", "", None):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        if slot < len(inputs) and _is_valid_connection(inputs[slot].get("type"), output_type) and \
                _is_valid_connection(inputs[slot].get("type"), kind):
            return slot
        for i, entry in enumerate(inputs):
            if entry.get("type") == kind:
                return i
        for i, entry in enumerate(inputs):
            if _is_valid_connection(entry.get("type"), output_type) and _is_valid_connection(entry.get("type"), kind):
                return i
        return -1

    def primitive_targets(self, node: Mapping[str, Any], seen: set[str] | None = None) -> list[tuple[str, str]]:
        """(node id, input/widget name) of every input a PrimitiveNode feeds, through reroutes."""
        seen = seen if seen is not None else set()
        targets: list[tuple[str, str]] = []
        for output in node.get("outputs") or []:
            for link_id in output.get("links") or []:
                _o, _os, target, target_slot, _k = self.link(link_id, f"output of node {node['id']}")
                if target in seen:
                    continue
                target_node = self.node(target, f"a link from node {node['id']}")
                if target_node.get("type") == "Reroute":
                    seen.add(target)
                    targets.extend(self.primitive_targets(target_node, seen))
                    continue
                inputs = target_node.get("inputs") or []
                if target_slot < len(inputs):
                    entry = inputs[target_slot]
                    name = (entry.get("widget") or {}).get("name") or entry.get("name")
                    targets.append((target, name))
        return targets


def ui_to_api(workflow: Mapping[str, Any], schemas: SchemaSet) -> dict[str, Any]:
    """Convert a UI workflow (version 0.4 or 1) into an API prompt, as the frontend does before queueing."""
    try:
        return _ui_to_api(workflow, schemas)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as error:
        log.debug("malformed workflow", exc_info=True)
        raise WorkflowError(f"workflow: malformed UI workflow ({type(error).__name__}: {error})") from None
    except RecursionError:  # link resolution recurses once per reroute/bypassed node
        raise WorkflowError("workflow: chains of reroutes or bypassed nodes are too long to resolve") from None


def _ui_to_api(workflow: Mapping[str, Any], schemas: SchemaSet) -> dict[str, Any]:
    subgraphs = {s.get("id") for s in ((workflow.get("definitions") or {}).get("subgraphs") or [])
                 if isinstance(s, Mapping)}
    graph = _Graph(workflow)
    pushed: dict[str, dict[str, Any]] = {}
    for node in graph.nodes.values():
        if node.get("type") == "PrimitiveNode":
            values = node.get("widgets_values") or []
            if values:
                for target, name in graph.primitive_targets(node):
                    pushed.setdefault(target, {})[name] = values[0]
    output: dict[str, Any] = {}
    for node_id, node in graph.nodes.items():
        node_type = node.get("type")
        if node_type in VIRTUAL_NODE_TYPES or node.get("mode") in (MODE_MUTED, MODE_BYPASS):
            continue
        if node_type in subgraphs:
            raise WorkflowError(f"workflow: node {node_id} is a subgraph; the stub executor does not expand subgraphs")
        inputs: dict[str, Any] = {}
        schema = schemas.get(node_type) if isinstance(node_type, str) else None
        if schema is not None:
            inputs.update(_widget_values(node, schema))
        inputs.update(pushed.get(node_id, {}))
        if node_type in FRONTEND_WIDGETS:
            values = [v for v in node.get("widgets_values") or [] if isinstance(v, str)]
            inputs.setdefault(FRONTEND_WIDGETS[node_type], values[0] if values else "")
        inputs = {k: ({"__value__": v} if isinstance(v, list) else v) for k, v in inputs.items()}
        for index, entry in enumerate(node.get("inputs") or []):
            if not isinstance(entry, Mapping) or entry.get("link") is None:
                continue
            resolved = graph.resolve_input(node, index, None, set())
            if resolved is None:
                continue
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            inputs[name] = [resolved[0], resolved[1]]
        item: dict[str, Any] = {"inputs": inputs, "class_type": node_type}
        if node.get("title"):
            item["_meta"] = {"title": node["title"]}
        output[node_id] = item
    for item in output.values():  # inputs linked to dropped (muted) nodes go, as in graphToPrompt
        for name in [k for k, v in item["inputs"].items() if isinstance(v, list) and len(v) == 2 and v[0] not in output]:
            del item["inputs"][name]
    return output
