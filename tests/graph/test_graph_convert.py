"""UI workflow -> API prompt, checked against a prompt written by hand from the frontend's rules."""

from __future__ import annotations

import json

import pytest

from unet_lab.unet_core.errors import WorkflowError
from unet_lab.unet_core.graph.formats import split_prompt, ui_to_api
from unet_lab.unet_core.graph.schemas import SchemaSet, load_core_schemas


class SegLoader:
    RETURN_TYPES = ("SEG_UNET",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": (["a.safetensors", "b.safetensors"], {"tooltip": "file"})}}


class Segment:
    """Widgets: threshold, seed (+ control value: named seed, no option), mode, tile (optional)."""

    RETURN_TYPES = ("MASK",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("SEG_UNET",), "image": ("IMAGE",),
                             "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1}),
                             "mode": (["fast", "tiled"],)},
                "optional": {"tile": ("INT", {"default": 256, "min": 64, "max": 1024})}}


class Blend:
    """Input 0 is a MASK, input 1 an IMAGE, output 0 an IMAGE: bypassing must use input 1."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",), "image": ("IMAGE",), "strength": ("FLOAT", {"default": 1.0})}}


class NoControl:
    """An INT named seed whose control_after_generate is explicitly off: no extra value."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "control_after_generate": False}),
                             "count": ("INT", {"default": 1}), "forced": ("INT", {"forceInput": True})}}


CLASSES = {"UNetLabTestSegLoader": SegLoader, "UNetLabTestSegment": Segment, "UNetLabTestBlend": Blend,
           "UNetLabTestNoControl": NoControl}


def _schemas():
    return SchemaSet(CLASSES, load_core_schemas())


def _n(node_id, node_type, inputs=(), outputs=(), widgets=None, mode=0, **more):
    entry = {"id": node_id, "type": node_type, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0,
             "mode": mode, "inputs": list(inputs), "outputs": list(outputs), "properties": {}}
    if widgets is not None:
        entry["widgets_values"] = widgets
    entry.update(more)
    return entry


def _in(name, kind, link=None, widget=False):
    entry = {"name": name, "type": kind, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def _out(name, kind, links):
    return {"name": name, "type": kind, "links": links}


def mixed_workflow():
    """Core nodes and ours: seed with control value, muted, bypassed, reroute, primitive, note."""
    nodes = [
        _n(1, "UNetLabTestSegLoader", outputs=[_out("SEG_UNET", "SEG_UNET", [1])], widgets=["b.safetensors"]),
        _n(2, "LoadImage", outputs=[_out("IMAGE", "IMAGE", [2, 9]), _out("MASK", "MASK", [8])],
           widgets=["cat.png", "image"]),
        _n(3, "Reroute", inputs=[_in("", "*", 2)], outputs=[_out("", "IMAGE", [3])]),
        _n(4, "UNetLabTestBlend", mode=4, inputs=[_in("mask", "MASK", 8), _in("image", "IMAGE", 3)],
           outputs=[_out("IMAGE", "IMAGE", [4])], widgets=[0.3]),
        _n(5, "UNetLabTestSegment", inputs=[_in("model", "SEG_UNET", 1), _in("image", "IMAGE", 4),
                                            _in("seed", "INT", 5, widget=True)],
           outputs=[_out("MASK", "MASK", [6])], widgets=[0.4, 123, "randomize", "tiled", 512]),
        _n(6, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "seed"}}],
           widgets=[777, "fixed"]),
        _n(7, "MaskToImage", inputs=[_in("mask", "MASK", 6)], outputs=[_out("IMAGE", "IMAGE", [7])]),
        _n(8, "SaveImage", inputs=[_in("images", "IMAGE", 7)], widgets=["seg/run"]),
        _n(9, "ImageInvert", mode=2, inputs=[_in("image", "IMAGE", 9)], outputs=[_out("IMAGE", "IMAGE", [10])]),
        _n(10, "PreviewImage", inputs=[_in("images", "IMAGE", 10)]),
        _n(11, "KSampler", inputs=[_in("model", "MODEL"), _in("positive", "CONDITIONING"),
                                   _in("negative", "CONDITIONING"), _in("latent_image", "LATENT"),
                                   _in("steps", "INT", 11, widget=True)],
           outputs=[_out("LATENT", "LATENT", [])], widgets=[42, "increment", 20, 7.5, "euler", "normal", 1.0]),
        _n(12, "Note", widgets=["remember the seed"]),
        _n(13, "UNetLabTestNoControl", inputs=[_in("forced", "INT")], outputs=[_out("INT", "INT", [])],
           widgets=[5, 6]),
        # A real (core) node feeding a widget: the widget keeps its widgets_values slot, the link wins.
        _n(14, "PrimitiveInt", outputs=[_out("INT", "INT", [11])], widgets=[25, "fixed"]),
    ]
    links = [[1, 1, 0, 5, 0, "SEG_UNET"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 1, "IMAGE"],
             [4, 4, 0, 5, 1, "IMAGE"], [5, 6, 0, 5, 2, "INT"], [6, 5, 0, 7, 0, "MASK"], [7, 7, 0, 8, 0, "IMAGE"],
             [8, 2, 1, 4, 0, "MASK"], [9, 2, 0, 9, 0, "IMAGE"], [10, 9, 0, 10, 0, "IMAGE"],
             [11, 14, 0, 11, 4, "INT"]]
    return {"last_node_id": 14, "last_link_id": 11, "nodes": nodes, "links": links,
            "groups": [{"title": "ignored", "bounding": [0, 0, 10, 10]}], "config": {}, "extra": {}, "version": 0.4}


# Written by hand from the frontend's rules (graphToPrompt / ExecutableNodeDTO), not from the converter.
EXPECTED = {
    "1": {"class_type": "UNetLabTestSegLoader", "inputs": {"model_name": "b.safetensors"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},  # "image" = the upload button's value
    # seed: the primitive's 777 replaces the node's own 123; "randomize" is the control value, not sent;
    # image: the bypassed Blend passes its IMAGE input (slot 1, not slot 0 = MASK) through the reroute.
    "5": {"class_type": "UNetLabTestSegment", "inputs": {"model": ["1", 0], "image": ["2", 0], "threshold": 0.4,
                                                          "seed": 777, "mode": "tiled", "tile": 512}},
    "7": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 0]}},
    "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "seg/run"}},
    "10": {"class_type": "PreviewImage", "inputs": {}},  # its input came from the muted ImageInvert: removed
    "11": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": ["14", 0], "cfg": 7.5, "sampler_name": "euler",
                                                "scheduler": "normal", "denoise": 1.0}},
    "13": {"class_type": "UNetLabTestNoControl", "inputs": {"seed": 5, "count": 6}},
    "14": {"class_type": "PrimitiveInt", "inputs": {"value": 25}},
}


def _strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_mixed_workflow_converts_like_the_frontend():
    assert _strip_meta(ui_to_api(mixed_workflow(), _schemas())) == EXPECTED


def test_converted_workflow_survives_json_and_split_keeps_the_workflow():
    workflow = json.loads(json.dumps(mixed_workflow()))
    prompt, extra = split_prompt(workflow, _schemas())
    assert _strip_meta(prompt) == EXPECTED
    assert extra["extra_pnginfo"]["workflow"] == workflow


def test_api_prompt_and_wrapped_prompt_pass_through():
    prompt = {"3": {"class_type": "UNetLabTestSegLoader", "inputs": {"model_name": "a.safetensors"}}}
    assert split_prompt(prompt, _schemas())[0] == prompt
    wrapped = {"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": {"x": 1}}}}
    got, extra = split_prompt(wrapped, _schemas())
    assert got == prompt and extra["extra_pnginfo"] == {"workflow": {"x": 1}}


def test_legacy_values_for_force_input_are_dropped():
    # Older files kept a widget value for forceInput inputs (frontend's migrateWidgetsValues).
    workflow = {"nodes": [_n(1, "UNetLabTestNoControl", inputs=[_in("forced", "INT")], widgets=[5, 6, 99])],
                "links": []}
    assert ui_to_api(workflow, _schemas())["1"]["inputs"] == {"seed": 5, "count": 6}


def test_list_widget_values_are_wrapped_and_missing_values_take_defaults():
    workflow = {"nodes": [_n(1, "UNetLabTestSegment", widgets=[[1, 2]])], "links": []}
    inputs = ui_to_api(workflow, _schemas())["1"]["inputs"]
    assert inputs == {"threshold": {"__value__": [1, 2]}, "seed": 0, "mode": "fast", "tile": 256}


def test_bypass_without_matching_input_drops_the_link():
    workflow = {"nodes": [
        _n(1, "UNetLabTestSegLoader", outputs=[_out("SEG_UNET", "SEG_UNET", [1])], widgets=["a.safetensors"]),
        _n(2, "UNetLabTestBlend", mode=4, inputs=[_in("mask", "MASK"), _in("image", "IMAGE")],
           outputs=[_out("IMAGE", "IMAGE", [2])], widgets=[1.0]),
        _n(3, "SaveImage", inputs=[_in("images", "IMAGE", 2)], widgets=["x"]),
    ], "links": [[2, 2, 0, 3, 0, "IMAGE"]]}
    assert ui_to_api(workflow, _schemas())["3"]["inputs"] == {"filename_prefix": "x"}


def test_link_to_a_missing_node_names_it():
    workflow = {"nodes": [_n(3, "SaveImage", inputs=[_in("images", "IMAGE", 7)], widgets=["x"])],
                "links": [[7, 42, 0, 3, 0, "IMAGE"]]}
    with pytest.raises(WorkflowError, match=r"node 42.*not in the workflow"):
        ui_to_api(workflow, _schemas())


def test_neither_format_is_refused():
    with pytest.raises(WorkflowError, match="neither an API prompt"):
        split_prompt({"hello": "world"}, _schemas())
    with pytest.raises(WorkflowError, match="neither"):
        split_prompt([1, 2], _schemas())
