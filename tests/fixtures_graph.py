"""Small node classes and helpers for the stub graph executor's tests.

The classes are ours, written for the tests (the pack's real nodes are being
written elsewhere): each records its calls in ``CALLS`` so tests can see what
ran, in which order, with which arguments.
"""

from __future__ import annotations

from typing import Any

CALLS: list[tuple[str, Any]] = []


def reset_calls() -> None:
    CALLS.clear()
    Changing.token = "a"
    Checked.seen.clear()
    TypeAware.seen.clear()


class Const:
    """INT constant."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": -100, "max": 100})}}

    def run(self, value):
        CALLS.append(("Const", value))
        return (value,)


class Add:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"forceInput": True}), "b": ("INT", {"forceInput": True})}}

    def run(self, a, b):
        CALLS.append(("Add", (a, b)))
        return (a + b,)


class Sink:
    """Output node: shows the value it got."""

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})},
                "optional": {"label": ("STRING", {"default": "out"})}}

    def run(self, value, label="out"):
        CALLS.append(("Sink", value))
        return {"ui": {"values": [value], "labels": [label]}}


class Mode:
    """A combo and a float with limits."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mode": (["fast", "slow"],), "scale": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    def run(self, mode, scale):
        CALLS.append(("Mode", (mode, scale)))
        return (1 if mode == "fast" else 2,)


class Changing:
    """IS_CHANGED returns a token the test flips."""

    token = "a"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, value):
        CALLS.append(("Changing.IS_CHANGED", value))
        return cls.token

    def run(self, value):
        CALLS.append(("Changing", value))
        return (value,)


class AlwaysChanged:
    """IS_CHANGED that raises: ComfyUI then re-executes every time."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        raise RuntimeError("cannot tell")

    def run(self, value):
        CALLS.append(("AlwaysChanged", value))
        return (value,)


class Checked:
    """VALIDATE_INPUTS names ``value``: its min/max are then not checked by the executor."""

    seen: list[Any] = []
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 10}),
                             "other": ("INT", {"default": 0, "min": 0, "max": 10})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        cls.seen.append(value)
        if value == 13:
            return "thirteen is unlucky"
        return True

    def run(self, value, other):
        CALLS.append(("Checked", (value, other)))
        return (value,)


class TypeAware:
    """VALIDATE_INPUTS asks for ``input_types``: link types are then not checked by the executor."""

    seen: list[Any] = []
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        cls.seen.append(input_types)
        return input_types["value"] in ("INT", "FLOAT")

    def run(self, value):
        return (int(value),)


class FloatOut:
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (2.5,)


class Raiser:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"how": (["documented", "plain"],)}}

    def run(self, how):
        from unet_lab.unet_core.errors import InputError

        if how == "documented":
            raise InputError("the mask must be [B,H,W]")
        raise ValueError("something deep went wrong")


class ListMaker:
    """OUTPUT_IS_LIST: one output holding three items."""

    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 10})}}

    def run(self, count):
        CALLS.append(("ListMaker", count))
        return (list(range(10, 10 + count)),)


class ListSum:
    """INPUT_IS_LIST: gets whole lists."""

    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True})}}

    def run(self, values):
        CALLS.append(("ListSum", list(values)))
        return (sum(values),)


class Hidden:
    """Output node with hidden inputs."""

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}

    def run(self, value, prompt=None, extra_pnginfo=None, unique_id=None):
        CALLS.append(("Hidden", (value, sorted(prompt), extra_pnginfo, unique_id)))
        return {"ui": {"ids": [unique_id]}}


TEST_NODES: dict[str, type] = {
    "UNetLabTestConst": Const, "UNetLabTestAdd": Add, "UNetLabTestSink": Sink, "UNetLabTestMode": Mode,
    "UNetLabTestChanging": Changing, "UNetLabTestAlwaysChanged": AlwaysChanged, "UNetLabTestChecked": Checked,
    "UNetLabTestTypeAware": TypeAware, "UNetLabTestFloat": FloatOut, "UNetLabTestRaiser": Raiser,
    "UNetLabTestListMaker": ListMaker, "UNetLabTestListSum": ListSum, "UNetLabTestHidden": Hidden,
}


def executor(extra: dict[str, type] | None = None, **kwargs):
    """An Executor over the test nodes (plus ``extra``) and the recorded core schemas."""
    from unet_lab.unet_core.graph.execute import Executor

    return Executor({**TEST_NODES, **(extra or {})}, **kwargs)


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}
