"""The stub graph executor: runs an API prompt (or UI workflow) with node classes and no ComfyUI.

Like ComfyUI's ``PromptExecutor`` it validates first, runs only what the valid
output nodes need, in dependency order, and keeps each node's outputs under a
signature of its inputs (class, ``IS_CHANGED`` value, constant inputs and the
signatures of linked ancestors): a node whose signature is unchanged since the
last run is not executed again. ``IS_CHANGED`` is called with the node's
constant inputs (links as None); when it raises, the node always re-executes.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import HostError, NodeExecutionError, PromptValidationError, UNetLabError, WorkflowError
from .calls import gather_inputs, is_link, map_over_lists, merge_results
from .formats import split_prompt
from .schemas import NodeSchema, SchemaSet, load_core_schemas
from .validate import ValidationResult, validate_prompt

log = logging.getLogger(__name__)


class _Unhashable:
    """A signature part that equals nothing, itself included in a later run (ComfyUI's NaN)."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


def _hashable(value: Any) -> Any:
    if isinstance(value, (int, str, bool, type(None))):
        return value
    if isinstance(value, float):
        return _Unhashable() if math.isnan(value) else value
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), _hashable(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_hashable(v) for v in value))
    return _Unhashable()


@dataclass
class RunResult:
    """What a run produced: ``ui`` outputs per output node, and which nodes ran or came from the cache."""

    outputs: dict[str, dict[str, list[Any]]]
    executed: list[str]
    cached: list[str]
    prompt: dict[str, Any]
    validation: ValidationResult
    values: dict[str, list[list[Any]]] = field(default_factory=dict, repr=False)


NodeCallback = Callable[[str, str, int, int], None]  # (node id, class type, index, count)


def find_cycle(prompt: Mapping[str, Any]) -> list[str] | None:
    """Node ids of a dependency cycle in an API prompt, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        state[node_id] = 1
        stack.append(node_id)
        node = prompt.get(node_id)
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in (inputs or {}).values() if isinstance(inputs, Mapping) else ():
            if is_link(value) and str(value[0]) in prompt:
                source = str(value[0])
                if state.get(source) == 1:
                    return stack[stack.index(source):] + [source]
                if source not in state:
                    found = visit(source)
                    if found:
                        return found
        stack.pop()
        state[node_id] = 2
        return None

    for node_id in prompt:
        if node_id not in state:
            found = visit(node_id)
            if found:
                return found
    return None


class Executor:
    """Runs ComfyUI prompts with ``node_classes``; core nodes without a class are known from ``core_schemas``."""

    def __init__(self, node_classes: Mapping[str, type], core_schemas: Mapping[str, Any] | None = None,
                 on_node: NodeCallback | None = None) -> None:
        self.node_classes = dict(node_classes)
        self.core_schemas = load_core_schemas() if core_schemas is None else core_schemas
        self.on_node = on_node
        self._cache: dict[str, tuple[Any, list[list[Any]], dict[str, list[Any]]]] = {}
        self._objects: dict[tuple[str, str], Any] = {}

    def schemas(self) -> SchemaSet:
        return SchemaSet(self.node_classes, self.core_schemas)

    # -- preparing ------------------------------------------------------------------------------
    def to_prompt(self, data: Any, source: str = "workflow") -> tuple[dict[str, Any], dict[str, Any]]:
        """(API prompt, extra_data) from either format."""
        return split_prompt(data, self.schemas(), source)

    def validate(self, prompt: Mapping[str, Any], extra_data: Mapping[str, Any] | None = None) -> ValidationResult:
        """ComfyUI's validation of an API prompt (cycles are refused first, as execution would)."""
        cycle = find_cycle(prompt)
        if cycle:
            names = " -> ".join(f"{n} ({prompt[n].get('class_type')})" for n in cycle)
            raise WorkflowError(f"dependency cycle between nodes: {names}")
        return validate_prompt(prompt, self.schemas(), extra_data)

    def needed_nodes(self, prompt: Mapping[str, Any], outputs: list[str]) -> list[str]:
        """The nodes ``outputs`` depend on, in an order where every node follows its inputs."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            inputs = prompt[node_id].get("inputs") or {}
            for name in sorted(inputs):
                if is_link(inputs[name]) and str(inputs[name][0]) in prompt:
                    visit(str(inputs[name][0]))
            order.append(node_id)

        for output in sorted(outputs, key=lambda n: (0, int(n)) if n.isdigit() else (1, n)):
            visit(output)
        return order

    def unrunnable(self, prompt: Mapping[str, Any], node_ids: list[str]) -> list[str]:
        """Nodes known only from the recorded core schemas: they need a ComfyUI host."""
        return [n for n in node_ids if prompt[n].get("class_type") not in self.node_classes]

    def _refuse(self, prompt: Mapping[str, Any], node_ids: list[str]) -> None:
        known_core = [n for n in node_ids if prompt[n].get("class_type") in self.core_schemas]
        if known_core:
            listed = ", ".join(f"{prompt[n]['class_type']} (#{n})" for n in known_core)
            raise HostError(f"these ComfyUI core nodes need a ComfyUI host; the standalone executor cannot run them: "
                            f"{listed}. Run this workflow in ComfyUI, or replace them with UNet Lab nodes.")

    # -- running -------------------------------------------------------------------------------
    def run(self, data: Any, extra_data: Mapping[str, Any] | None = None, source: str = "workflow") -> RunResult:
        """Validate and execute a prompt or workflow; PromptValidationError / HostError / NodeExecutionError.

        Like ComfyUI's ``PromptExecutor``, everything runs inside ``torch.inference_mode()``: a node
        that trains must switch autograd back on itself.
        """
        try:
            with torch.inference_mode():
                return self._run(data, extra_data, source)
        except RecursionError:  # graph walks recurse once per link: a chain thousands of nodes long
            raise WorkflowError(f"{source}: the graph's chains of linked nodes are too long to walk "
                                f"(Python recursion limit {sys.getrecursionlimit()})") from None

    def _run(self, data: Any, extra_data: Mapping[str, Any] | None, source: str) -> RunResult:
        prompt, found_extra = self.to_prompt(data, source)
        extra = {**found_extra, **(dict(extra_data) if extra_data else {})}
        check = self.validate(prompt, extra)
        if check.error is not None and check.error["type"] in ("invalid_prompt", "prompt_no_outputs"):
            raise PromptValidationError(f"{source}: {check.summary()}",
                                        {"error": check.error, "node_errors": check.node_errors})
        # Before reporting other errors: refuse, with a list, the core nodes any output needs.
        schemas = self.schemas()
        every_output = [n for n in check.prompt if schemas.get(check.prompt[n]["class_type"]).output_node]
        self._refuse(check.prompt, self.unrunnable(check.prompt, self.needed_nodes(check.prompt, every_output)))
        if not check.valid:
            raise PromptValidationError(f"{source}: the prompt failed validation:\n{check.summary()}",
                                        {"error": check.error, "node_errors": check.node_errors})
        prompt = check.prompt
        order = self.needed_nodes(prompt, check.good_outputs)
        for stale in [n for n in self._cache if n not in prompt]:  # as ComfyUI's classic cache: drop old nodes
            del self._cache[stale]
        for key in [k for k in self._objects if k[0] not in prompt or prompt[k[0]]["class_type"] != k[1]]:
            del self._objects[key]
        signatures: dict[str, Any] = {}
        is_changed: dict[str, Any] = {}
        values: dict[str, list[list[Any]]] = {}
        uis: dict[str, dict[str, list[Any]]] = {}
        executed: list[str] = []
        cached: list[str] = []
        for index, node_id in enumerate(order):
            node = prompt[node_id]
            class_type = node["class_type"]
            schema = schemas.get(class_type)
            signature = self._signature(node_id, prompt, schemas, signatures, is_changed, extra)
            hit = self._cache.get(node_id)
            if hit is not None and hit[0] == signature:
                values[node_id], uis[node_id] = hit[1], hit[2]
                cached.append(node_id)
                log.debug("node %s (%s): cached", node_id, class_type)
                continue
            if self.on_node is not None:
                self.on_node(node_id, class_type, index, len(order))
            log.debug("executing node %s (%s)", node_id, class_type)
            try:
                outputs, ui = self._execute(node_id, node, schema, values, prompt, extra)
            except Exception as error:
                self._cache.pop(node_id, None)
                log.debug("node %s (%s) raised", node_id, class_type, exc_info=True)
                if isinstance(error, NodeExecutionError):
                    raise
                raise NodeExecutionError(node_id, class_type, error) from error
            values[node_id], uis[node_id] = outputs, ui
            self._cache[node_id] = (signature, outputs, ui)
            executed.append(node_id)
        ui_outputs = {n: uis[n] for n in order if uis.get(n)}
        return RunResult(ui_outputs, executed, cached, prompt, check, values)

    def _execute(self, node_id: str, node: Mapping[str, Any], schema: NodeSchema, values: Mapping[str, Any],
                 prompt: Mapping[str, Any], extra: Mapping[str, Any]) -> tuple[list[list[Any]], dict[str, list[Any]]]:
        cls = schema.node_class
        key = (node_id, schema.node_type)
        if key not in self._objects:
            self._objects[key] = cls()
        obj = self._objects[key]
        function_name = getattr(cls, "FUNCTION", None)
        function = getattr(obj, function_name, None) if isinstance(function_name, str) else None
        if function is None:
            raise WorkflowError(f"node class {schema.node_type} has no FUNCTION method {function_name!r}")
        data = gather_inputs(node.get("inputs") or {}, schema, node_id, values, prompt, extra)
        results = map_over_lists(function, data, schema.input_is_list)
        return merge_results(results, schema, node_id)

    def _is_changed(self, node_id: str, node: Mapping[str, Any], schema: NodeSchema, prompt: Mapping[str, Any],
                    extra: Mapping[str, Any]) -> Any:
        cls = schema.node_class
        if cls is None or not hasattr(cls, "IS_CHANGED"):
            return False
        data = gather_inputs(node.get("inputs") or {}, schema, node_id, None, prompt, extra)
        try:
            result = map_over_lists(cls.IS_CHANGED, data, schema.input_is_list)
        except Exception as error:  # ComfyUI: warn, and treat as always changed
            log.warning("node %s (%s): IS_CHANGED raised %s; the node will re-execute", node_id, schema.node_type, error)
            return _Unhashable()
        return _hashable(result)

    def _signature(self, node_id: str, prompt: Mapping[str, Any], schemas: SchemaSet, done: dict[str, Any],
                   is_changed: dict[str, Any], extra: Mapping[str, Any]) -> Any:
        if node_id in done:
            return done[node_id]
        node = prompt[node_id]
        schema = schemas.get(node["class_type"])
        if node_id not in is_changed:
            is_changed[node_id] = self._is_changed(node_id, node, schema, prompt, extra)
        parts: list[Any] = [node["class_type"], is_changed[node_id]]
        cls = schema.node_class
        if "UNIQUE_ID" in schema.hidden.values() or (cls is not None and getattr(cls, "NOT_IDEMPOTENT", False)):
            parts.append(("id", node_id))
        inputs = node.get("inputs") or {}
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value) and str(value[0]) in prompt:  # a link into a missing node is a stray value
                ancestor = self._signature(str(value[0]), prompt, schemas, done, is_changed, extra)
                parts.append((name, ("link", ancestor, value[1])))
            else:
                parts.append((name, _hashable(value)))
        done[node_id] = tuple(parts)
        return done[node_id]

    def clear_cache(self) -> None:
        self._cache.clear()
        self._objects.clear()


def format_error(error: BaseException) -> str:
    """A user-facing line for the pack's documented errors (no traceback)."""
    if isinstance(error, UNetLabError):
        return str(error)
    return f"{type(error).__name__}: {error}"
