"""Prompt validation with ComfyUI's rules, error types and report shape (``execution.validate_prompt``).

The result mirrors ComfyUI's ``(valid, error, good_outputs, node_errors)``:
``error`` is ``{"type", "message", "details", "extra_info"}``; ``node_errors``
maps a node id to ``{"errors": [...], "dependent_outputs": [...], "class_type"}``.
Nodes known only from the recorded core schemas are checked against them (no
``VALIDATE_INPUTS``; combos listing the recording server's files are not checked).
"""

from __future__ import annotations

import copy
import logging
import math
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import WorkflowError
from .calls import gather_inputs, map_over_lists
from .schemas import SchemaSet, function_arguments

log = logging.getLogger(__name__)


def _input_error(kind: str, message: str, details: str, name: str, **extra: Any) -> dict[str, Any]:
    """One entry of a node's ``errors`` list, shaped as ComfyUI's ``validate_inputs`` writes it."""
    return {"type": kind, "message": message, "details": details, "extra_info": {"input_name": name, **extra}}


@dataclass
class ValidationResult:
    """ComfyUI's validation outcome, plus the prompt with converted values."""

    valid: bool
    error: dict[str, Any] | None
    good_outputs: list[str]
    node_errors: dict[str, Any]
    prompt: dict[str, Any] = field(default_factory=dict)

    def as_response(self) -> dict[str, Any]:
        """The body ComfyUI's ``/prompt`` answers with on failure."""
        return {"error": self.error, "node_errors": self.node_errors}

    def summary(self) -> str:
        """A readable account: the top error, then each node's errors."""
        lines = []
        if self.error:
            details = "" if self.node_errors or not self.error.get("details") else f" ({self.error['details']})"
            unknown = self.error.get("extra_info", {}).get("unknown_nodes") or []
            also = f"; unknown node types: {', '.join(unknown)}" if len(unknown) > 1 else ""
            lines.append(f"{self.error['message']}{details}{also}")
        for node_id, entry in sorted(self.node_errors.items(), key=lambda kv: _sort_key(kv[0])):
            for reason in entry["errors"]:
                lines.append(f"  node {node_id} ({entry['class_type']}): {reason['type']}: {reason['message']}"
                             + (f" ({reason['details']})" if reason.get("details") else ""))
        return "\n".join(lines)


def _sort_key(node_id: str) -> tuple[int, Any]:
    return (0, int(node_id)) if str(node_id).isdigit() else (1, str(node_id))


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _link_type_ok(received: Any, wanted: Any) -> bool:
    """ComfyUI's validate_node_input (non-strict), with '*' taken as any type (custom nodes' AnyType idiom)."""
    if received == wanted or received == "*" or wanted == "*":
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in wanted.split(",")})


# Types the frontend draws as widgets of their own (core's WebcamCapture, Load3D): constants are fine there.
FRONTEND_WIDGET_TYPES = frozenset({"WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "IMAGEUPLOAD", "MARKDOWN"})


def _socket_only(spec: Any) -> bool:
    """An input the frontend shows only as a socket, of a plain type (IMAGE, MODEL...): constants make no sense."""
    kind = spec.type
    return (spec.choices is None and isinstance(kind, str) and kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            and kind.isupper() and "*" not in kind and "," not in kind and not spec.options.get("rawLink")
            and kind not in FRONTEND_WIDGET_TYPES)


class _Validator:
    def __init__(self, prompt: dict[str, Any], schemas: SchemaSet, extra_data: Mapping[str, Any]) -> None:
        self.prompt = prompt
        self.schemas = schemas
        self.extra_data = extra_data
        self.validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}

    def node(self, node_id: Any, wanted_by: str, input_name: str) -> dict[str, Any]:
        key = str(node_id)
        if key not in self.prompt:
            raise WorkflowError(f"input {input_name!r} of node {wanted_by} links to node {key}, which is not in the prompt")
        return self.prompt[key]

    def validate_inputs(self, unique_id: str) -> tuple[bool, list[dict[str, Any]], str]:
        if unique_id in self.validated:
            return self.validated[unique_id]
        node = self.prompt[unique_id]
        inputs = node.setdefault("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(f"node {unique_id}: 'inputs' is a {type(inputs).__name__}, not an object")
        schema = self.schemas.get(node["class_type"])
        cls = schema.node_class
        validate_fn = getattr(cls, "VALIDATE_INPUTS", None) if cls is not None else None
        fn_inputs, fn_kwargs = function_arguments(validate_fn) if validate_fn is not None else ([], False)
        errors: list[dict[str, Any]] = []
        valid = True
        received_types: dict[str, Any] = {}

        for name, spec in schema.inputs.items():
            input_type, options = spec.type, spec.options
            info = [input_type, dict(options)]
            if name not in inputs:
                if spec.category == "required":
                    errors.append(_input_error("required_input_missing", "Required input is missing", f"{name}", name))
                continue
            val = inputs[name]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(_input_error("bad_linked_input",
                                              "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                              f"{name}", name, input_config=info, received_value=val))
                    continue
                o_id = str(val[0])
                source = self.node(o_id, unique_id, name)
                source_schema = self.schemas.get(source.get("class_type"))
                if source_schema is None:
                    raise WorkflowError(f"node {o_id} has no known class_type")
                if not isinstance(val[1], int) or not 0 <= val[1] < len(source_schema.outputs):
                    raise WorkflowError(f"input {name!r} of node {unique_id} links to output {val[1]} of node {o_id} "
                                        f"({source_schema.node_type}), which has {len(source_schema.outputs)} outputs")
                received = source_schema.outputs[val[1]]
                received_types[name] = received
                wanted = spec.type_name if spec.choices is not None else input_type
                if "input_types" not in fn_inputs and not _link_type_ok(received, wanted):
                    errors.append(_input_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                              f"{name}, received_type({received}) mismatch input_type({wanted})",
                                              name, input_config=info, received_type=received, linked_node=val))
                    continue
                try:
                    result = self.validate_inputs(o_id)
                    if result[0] is False:
                        valid = False
                        continue
                except Exception as ex:  # ComfyUI: the inner node carries the error
                    valid = False
                    log.debug("exception validating node %s", o_id, exc_info=True)
                    self.validated[o_id] = (False, [{
                        "type": "exception_during_inner_validation", "message": "Exception when validating inner node",
                        "details": str(ex), "extra_info": {
                            "input_name": name, "input_config": info, "exception_message": str(ex),
                            "exception_type": _type_name(type(ex)), "traceback": traceback.format_tb(ex.__traceback__),
                            "linked_node": val}}], o_id)
                    continue
            else:
                if _socket_only(spec):
                    # Stricter than ComfyUI, which passes such a constant on and lets the node fail.
                    errors.append(_input_error("invalid_input_type",
                                              f"Input {name} takes a link from a node giving {input_type}, not a value",
                                              f"{name}, {str(val)[:80]}", name, input_config=info, received_value=val))
                    continue
                try:
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[name] = val
                    if input_type == "INT":
                        if isinstance(val, float) and not math.isfinite(val):
                            raise ValueError(f"cannot convert {val} to an integer")
                        val = int(val)
                    elif input_type == "FLOAT":
                        val = float(val)
                    elif input_type == "STRING":
                        val = str(val)
                    elif input_type == "BOOLEAN":
                        val = bool(val)
                    inputs[name] = val
                except Exception as ex:
                    errors.append(_input_error("invalid_input_type",
                                              f"Failed to convert an input value to a {input_type} value",
                                              f"{name}, {val}, {ex}", name, input_config=info, received_value=val,
                                              exception_message=str(ex)))
                    continue
                if name in fn_inputs or fn_kwargs:
                    continue
                try:
                    if "min" in options and val < options["min"]:
                        errors.append(_input_error("value_smaller_than_min",
                                                  f"Value {val} smaller than min of {options['min']}", f"{name}", name,
                                                  input_config=info, received_value=val))
                        continue
                    if "max" in options and val > options["max"]:
                        errors.append(_input_error("value_bigger_than_max",
                                                  f"Value {val} bigger than max of {options['max']}", f"{name}", name,
                                                  input_config=info, received_value=val))
                        continue
                except TypeError as ex:
                    errors.append(_input_error("invalid_input_type",
                                              f"Failed to compare an input value with its limits ({input_type})",
                                              f"{name}, {val}, {ex}", name, input_config=info, received_value=val,
                                              exception_message=str(ex)))
                    continue
                choices = spec.choices
                if choices is not None and not options.get("file_list") and not options.get("multiselect") \
                        and val not in choices:
                    big = len(choices) > 20
                    errors.append(_input_error("value_not_in_list", "Value not in list",
                                              f"{name}: '{val}' not in " + (f"(list of length {len(choices)})" if big
                                                                            else str(choices)),
                                              name, input_config=None if big else info, received_value=val))
                    continue

        if validate_fn is not None and (fn_inputs or fn_kwargs):
            data = gather_inputs(inputs, schema, unique_id, None, self.prompt, self.extra_data)
            chosen = {k: v for k, v in data.items() if k in fn_inputs or fn_kwargs}
            if "input_types" in fn_inputs:
                chosen["input_types"] = [received_types]
            results = map_over_lists(cls.VALIDATE_INPUTS, chosen, schema.input_is_list)
            for name in chosen:
                for result in results:
                    if result is not True:
                        errors.append(_input_error("custom_validation_failed", "Custom validation failed for node",
                                                  f"{name}" + ("" if result is False else f" - {result}"), name))

        outcome = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        self.validated[unique_id] = outcome
        return outcome


def validate_prompt(prompt: Mapping[str, Any], schemas: SchemaSet, extra_data: Mapping[str, Any] | None = None,
                    partial_execution_list: list[str] | None = None) -> ValidationResult:
    """Validate an API prompt (a converted copy is returned in ``result.prompt``), like ComfyUI."""

    prompt = {str(k): copy.deepcopy(v) for k, v in prompt.items()}
    extra_data = extra_data or {}
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return ValidationResult(False, {"type": "invalid_prompt",
                                            "message": "Cannot execute because a node is missing the class_type property.",
                                            "details": f"Node ID '#{node_id}'", "extra_info": {}}, [], {}, prompt)
        class_type = node["class_type"]
        if class_type not in schemas:
            unknown = sorted({f"{n['class_type']} (#{i})" for i, n in prompt.items()
                              if isinstance(n, dict) and n.get("class_type") not in schemas})
            return ValidationResult(False, {"type": "invalid_prompt",
                                            "message": f"Cannot execute because node {class_type} does not exist.",
                                            "details": f"Node ID '#{node_id}'",
                                            "extra_info": {"unknown_nodes": unknown}}, [], {}, prompt)
        if schemas.get(class_type).output_node:
            if partial_execution_list is None or node_id in partial_execution_list:
                outputs.append(node_id)
    if not outputs:
        return ValidationResult(False, {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                        "details": "", "extra_info": {}}, [], {}, prompt)

    validator = _Validator(prompt, schemas, extra_data)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in sorted(outputs, key=_sort_key):
        try:
            valid, reasons, _ = validator.validate_inputs(output)
        except Exception as ex:
            valid = False
            log.debug("exception validating output node %s", output, exc_info=True)
            reasons = [{"type": "exception_during_validation", "message": "Exception when validating node",
                        "details": str(ex), "extra_info": {"exception_type": _type_name(type(ex)),
                                                           "traceback": traceback.format_tb(ex.__traceback__)}}]
            validator.validated[output] = (False, reasons, output)
        if valid is True:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (ok, node_reasons, _) in validator.validated.items():
            if ok is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [],
                                            "class_type": prompt[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _o, reasons in failed for e in reasons)
        return ValidationResult(False, {"type": "prompt_outputs_failed_validation",
                                        "message": "Prompt outputs failed validation", "details": details,
                                        "extra_info": {}}, [], node_errors, prompt)
    return ValidationResult(True, None, good, node_errors, prompt)
