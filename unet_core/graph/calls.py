"""Calling node functions the way ComfyUI does: input gathering and list mapping.

Every value travels as a list (one entry per batch item of a list run). A node
without ``INPUT_IS_LIST`` is called once per index, the shorter lists repeating
their last entry; with it, it is called once with the whole lists. Results are
merged per output, concatenated where ``OUTPUT_IS_LIST`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import WorkflowError
from .schemas import NodeSchema


def is_link(value: Any) -> bool:
    """A ``[node_id, slot]`` pair (ComfyUI's graph_utils.is_link)."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)


def gather_inputs(inputs: Mapping[str, Any], schema: NodeSchema, node_id: str,
                  outputs: Mapping[str, list[list[Any]]] | None, prompt: Mapping[str, Any] | None,
                  extra_data: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Input lists for a node; linked inputs come from ``outputs`` (None while validating: missing -> [None])."""
    data: dict[str, list[Any]] = {}
    for name, value in inputs.items():
        _kind, category, options = schema.input_info(name)
        if is_link(value) and not (options or {}).get("rawLink"):
            source = outputs.get(str(value[0])) if outputs is not None else None
            if source is None or value[1] >= len(source):
                data[name] = [None]
            else:
                data[name] = source[value[1]]
        elif category is not None:
            data[name] = [value]
    for name, kind in schema.hidden.items():
        if kind == "PROMPT":
            data[name] = [prompt if prompt is not None else {}]
        elif kind == "EXTRA_PNGINFO":
            data[name] = [extra_data.get("extra_pnginfo")]
        elif kind == "UNIQUE_ID":
            data[name] = [node_id]
        elif kind in ("DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"):
            data[name] = [extra_data.get(kind.lower())]
    return data


def map_over_lists(function: Callable[..., Any], data: Mapping[str, list[Any]], input_is_list: bool,
                   before_call: Callable[[], None] | None = None) -> list[Any]:
    """Call ``function`` once (INPUT_IS_LIST, or no inputs) or once per list index; the results in order."""
    if input_is_list:
        calls = [dict(data)]
    else:
        length = max((len(v) for v in data.values()), default=0)
        if length == 0:
            calls = [{}]  # as ComfyUI: nothing to map over, called with no arguments
        else:
            calls = [{k: (v[i] if len(v) > i else v[-1]) for k, v in data.items() if v} for i in range(length)]
    results = []
    for arguments in calls:
        if before_call is not None:
            before_call()
        results.append(function(**arguments))
    return results


def merge_results(results: list[Any], schema: NodeSchema, node_id: str) -> tuple[list[list[Any]], dict[str, list[Any]]]:
    """(per-output value lists, merged ``ui`` dict) from a node's per-call returns."""
    values: list[Any] = []
    uis: list[Mapping[str, Any]] = []
    for returned in results:
        if isinstance(returned, Mapping):
            if isinstance(returned.get("ui"), Mapping):
                uis.append(returned["ui"])
            if "expand" in returned:
                raise WorkflowError(f"node {node_id} ({schema.node_type}) expands a subgraph; "
                                    "the stub executor does not support node expansion")
            if "result" in returned:
                values.append(returned["result"])
        else:
            values.append(returned)
    count = len(schema.outputs)
    merged: list[list[Any]] = []
    if values:
        for result in values:
            if not isinstance(result, (tuple, list)) or len(result) < count:
                got = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
                raise WorkflowError(f"node {node_id} ({schema.node_type}) returned {got}; "
                                    f"RETURN_TYPES declares {count} ({', '.join(map(str, schema.outputs))})")
        for index in range(count):
            if schema.output_is_list[index]:
                merged.append([item for result in values for item in result[index]])
            else:
                merged.append([result[index] for result in values])
    ui: dict[str, list[Any]] = {}
    if uis:
        ui = {key: [item for part in uis for item in part.get(key, [])] for key in uis[0]}
    return merged, ui
