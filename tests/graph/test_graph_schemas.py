"""Schemas: the recorded core table (derived by scripts/derive_core_schemas.py) and our classes' own."""

from __future__ import annotations

import gzip
import json

import pytest

from pack_support import REPO_ROOT, load_script
from unet_lab.unet_core.graph.schemas import CORE_SCHEMAS_PATH, load_core_schemas, schema_from_class

SHARED = REPO_ROOT.parent / "shared" / "comfyui" / "object_info-0.3.64.json"


def _script():
    return load_script("scripts/derive_core_schemas.py")


def test_fixture_is_small_and_holds_the_recorded_nodes():
    assert CORE_SCHEMAS_PATH.stat().st_size < 150_000
    core = load_core_schemas()
    assert len(core) == 478
    ksampler = core["KSampler"]
    assert ksampler["input_order"]["required"][:3] == ["model", "seed", "steps"]
    seed = ksampler["input"]["required"]["seed"]
    assert seed[0] == "INT" and seed[1]["control_after_generate"] is True and seed[1]["max"] == 2**64 - 1
    assert core["SaveImage"]["output_node"] is True and core["SaveImage"]["input"]["hidden"]["prompt"] == "PROMPT"
    assert core["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    assert "tooltip" not in json.dumps(core)


@pytest.mark.skipif(not SHARED.is_file(), reason="the recorded /object_info is not beside the repository")
def test_fixture_is_what_the_script_derives(tmp_path):
    target = tmp_path / "core.json.gz"
    assert _script().main([str(SHARED), str(target)]) == 0
    assert target.read_bytes() == CORE_SCHEMAS_PATH.read_bytes()
    recorded = json.loads(SHARED.read_text())
    derived = json.loads(gzip.decompress(target.read_bytes()))["nodes"]
    for name, info in recorded.items():  # every option but tooltips survives
        for section, specs in info["input"].items():
            if section == "hidden":
                continue
            for input_name, spec in specs.items():
                options = {k: v for k, v in (spec[1] if len(spec) > 1 else {}).items() if k != "tooltip"}
                kept = derived[name]["input"][section][input_name]
                assert {k: v for k, v in (kept[1] if len(kept) > 1 else {}).items() if k != "file_list"} == options
                assert kept[0] == spec[0]


def test_runtime_code_never_reads_the_shared_folder():
    for path in (REPO_ROOT / "unet_core" / "graph").rglob("*.py"):
        assert "shared" not in path.read_text(), path


class _Own:
    RETURN_TYPES = ("SEG_UNET", "MASK")
    RETURN_NAMES = ("model", "masks")
    OUTPUT_IS_LIST = (False, True)
    INPUT_IS_LIST = True
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"b": ("INT", {"default": 2}), "a": ("IMAGE",)},
                "optional": {"c": (["x", "y"], {"default": "y"})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}


def test_schema_from_class_reads_the_classic_api():
    schema = schema_from_class("UNetLabOwn", _Own)
    assert list(schema.inputs) == ["b", "a", "c"]
    assert [s.category for s in schema.inputs.values()] == ["required", "required", "optional"]
    assert schema.inputs["c"].choices == ["x", "y"] and schema.inputs["c"].type_name == "COMBO"
    assert [s.name for s in schema.widget_inputs()] == ["b", "c"]
    assert schema.hidden == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}
    assert schema.outputs == ("SEG_UNET", "MASK") and schema.output_names == ("model", "masks")
    assert schema.output_is_list == (False, True) and schema.input_is_list and schema.output_node
    assert schema.runnable and schema.input_info("unique_id") == ("UNIQUE_ID", "hidden", {})
