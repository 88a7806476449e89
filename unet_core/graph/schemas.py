"""Node schemas: what validation and UI->API conversion know about a node type.

Two sources give the same shape: the pack's (and the standalone host's) node
classes, read from their classic-API attributes, and ComfyUI's core nodes, read
from a recorded ``/object_info`` kept in ``data/`` (see
``scripts/derive_core_schemas.py``). A class always wins over the recording.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORE_SCHEMAS_PATH = Path(__file__).resolve().parent / "data" / "core_object_info.json.gz"

# Input types the frontend shows as widgets (everything else is a socket).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
HIDDEN_KINDS = ("PROMPT", "DYNPROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG")


@dataclass(frozen=True)
class InputSpec:
    """One visible input: its name, type (a string, or a list of choices), options and section."""

    name: str
    type: Any
    options: Mapping[str, Any]
    category: str  # "required" | "optional"

    @property
    def choices(self) -> list[Any] | None:
        """The allowed values of a combo, else None."""
        if isinstance(self.type, list):
            return self.type
        if self.type == "COMBO" and isinstance(self.options.get("options"), list):
            return self.options["options"]
        return None

    @property
    def type_name(self) -> str:
        """The type as ComfyUI names it in links: combos are COMBO."""
        return "COMBO" if self.choices is not None else str(self.type)

    @property
    def is_widget(self) -> bool:
        """Whether the frontend makes a widget for it (and a widgets_values slot)."""
        if self.options.get("forceInput") or self.options.get("defaultInput"):
            return False
        return self.choices is not None or self.type in WIDGET_TYPES


@dataclass
class NodeSchema:
    """A node type as validation, conversion and execution see it."""

    node_type: str
    inputs: dict[str, InputSpec]  # required then optional, in the frontend's order
    hidden: dict[str, str]
    outputs: tuple[Any, ...]
    output_is_list: tuple[bool, ...]
    output_names: tuple[str, ...]
    output_node: bool
    category: str = ""
    python_module: str = ""
    input_is_list: bool = False
    node_class: type | None = None  # None: known only from the recording (needs a ComfyUI host)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def runnable(self) -> bool:
        return self.node_class is not None

    def input_info(self, name: str) -> tuple[Any, str | None, Mapping[str, Any] | None]:
        """(type, category, options) of an input, like ComfyUI's ``get_input_info``."""
        spec = self.inputs.get(name)
        if spec is not None:
            return spec.type, spec.category, spec.options
        if name in self.hidden:
            return self.hidden[name], "hidden", {}
        return None, None, None

    def widget_inputs(self) -> Iterator[InputSpec]:
        return (spec for spec in self.inputs.values() if spec.is_widget)


def _spec_parts(entry: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(entry, (list, tuple)) and entry:
        kind = entry[0]
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
        return (list(kind) if isinstance(kind, tuple) else kind), dict(options)
    return entry, {}


def _build(node_type: str, input_types: Mapping[str, Any], order: Mapping[str, list[str]] | None,
           outputs: Any, output_is_list: Any, output_names: Any, output_node: bool, **extra: Any) -> NodeSchema:
    inputs: dict[str, InputSpec] = {}
    for section in ("required", "optional"):
        specs = input_types.get(section) or {}
        names = list((order or {}).get(section) or specs.keys())
        names += [n for n in specs if n not in names]
        for name in names:
            if name in specs:
                kind, options = _spec_parts(specs[name])
                inputs[name] = InputSpec(name, kind, options, section)
    hidden = {k: (v[0] if isinstance(v, (list, tuple)) else v) for k, v in (input_types.get("hidden") or {}).items()}
    outputs = tuple(outputs or ())
    is_list = tuple(bool(x) for x in (output_is_list or ())) or (False,) * len(outputs)
    if len(is_list) < len(outputs):
        is_list = is_list + (False,) * (len(outputs) - len(is_list))
    names = tuple(output_names or ()) or tuple(str(o) for o in outputs)
    return NodeSchema(node_type, inputs, hidden, outputs, is_list, names, bool(output_node), **extra)


def schema_from_class(node_type: str, cls: type) -> NodeSchema:
    """Read a classic-API node class (INPUT_TYPES is called now: lists may depend on files)."""
    input_types = cls.INPUT_TYPES() or {}
    return _build(node_type, input_types, None, getattr(cls, "RETURN_TYPES", ()),
                  getattr(cls, "OUTPUT_IS_LIST", None), getattr(cls, "RETURN_NAMES", None),
                  getattr(cls, "OUTPUT_NODE", False) is True, category=str(getattr(cls, "CATEGORY", "")),
                  python_module=getattr(cls, "__module__", ""), input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
                  node_class=cls)


def schema_from_object_info(node_type: str, info: Mapping[str, Any]) -> NodeSchema:
    """Read one ``/object_info`` entry (recorded, or derived by scripts/derive_core_schemas.py)."""
    return _build(node_type, info.get("input") or {}, info.get("input_order"), info.get("output"),
                  info.get("output_is_list"), info.get("output_name"), info.get("output_node") is True,
                  category=str(info.get("category", "")), python_module=str(info.get("python_module", "")),
                  raw=dict(info))


@functools.lru_cache(maxsize=2)
def _load_core(path: str) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)["nodes"]


def load_core_schemas(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The recorded core node table: node type -> derived ``/object_info`` entry."""
    return _load_core(str(path or CORE_SCHEMAS_PATH))


class SchemaSet:
    """Schemas of one run: classes first, then the recorded core nodes; INPUT_TYPES read once per run."""

    def __init__(self, node_classes: Mapping[str, type], core_schemas: Mapping[str, Mapping[str, Any]] | None) -> None:
        self.node_classes = dict(node_classes)
        self.core = core_schemas or {}
        self._cache: dict[str, NodeSchema] = {}

    def __contains__(self, node_type: object) -> bool:
        return isinstance(node_type, str) and (node_type in self.node_classes or node_type in self.core)

    def get(self, node_type: str) -> NodeSchema | None:
        if node_type not in self._cache:
            if node_type in self.node_classes:
                self._cache[node_type] = schema_from_class(node_type, self.node_classes[node_type])
            elif node_type in self.core:
                self._cache[node_type] = schema_from_object_info(node_type, self.core[node_type])
            else:
                return None
        return self._cache[node_type]


def function_arguments(fn: Any) -> tuple[list[str], bool]:
    """(named parameters, accepts **kwargs) of a node function such as VALIDATE_INPUTS."""
    spec = inspect.getfullargspec(fn)
    return list(spec.args), spec.varkw is not None
