"""Validation: one prompt per ComfyUI error type, asserting ComfyUI's type names and report shape."""

from __future__ import annotations

import pytest

from fixtures_graph import Checked, TypeAware, executor, node, reset_calls


@pytest.fixture(autouse=True)
def _clean():
    reset_calls()


def _validate(prompt):
    return executor().validate(prompt)


def _node_error_types(result, node_id):
    return [e["type"] for e in result.node_errors[node_id]["errors"]]


def test_required_input_missing():
    result = _validate({"1": node("UNetLabTestSink")})
    assert not result.valid
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert _node_error_types(result, "1") == ["required_input_missing"]
    entry = result.node_errors["1"]
    assert entry["class_type"] == "UNetLabTestSink" and entry["dependent_outputs"] == ["1"]
    assert entry["errors"][0]["details"] == "value"
    assert set(entry["errors"][0]) == {"type", "message", "details", "extra_info"}


def test_bad_linked_input():
    result = _validate({"1": node("UNetLabTestConst", value=1), "2": node("UNetLabTestSink", value=["1", 0, 0])})
    assert _node_error_types(result, "2") == ["bad_linked_input"]


def test_return_type_mismatch():
    result = _validate({"1": node("UNetLabTestFloat"), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(result, "2") == ["return_type_mismatch"]
    assert "received_type(FLOAT) mismatch input_type(INT)" in result.node_errors["2"]["errors"][0]["details"]


def test_invalid_input_type():
    result = _validate({"1": node("UNetLabTestConst", value="seven"), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(result, "1") == ["invalid_input_type"]
    # The downstream output fails too, without errors of its own (ComfyUI reports only the cause).
    assert "2" not in result.node_errors
    assert result.node_errors["1"]["dependent_outputs"] == ["2"]


def test_value_smaller_than_min():
    result = _validate({"1": node("UNetLabTestConst", value=-101), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(result, "1") == ["value_smaller_than_min"]
    assert result.node_errors["1"]["errors"][0]["message"] == "Value -101 smaller than min of -100"


def test_value_bigger_than_max():
    result = _validate({"1": node("UNetLabTestConst", value=101), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(result, "1") == ["value_bigger_than_max"]


def test_value_not_in_list():
    result = _validate({"1": node("UNetLabTestMode", mode="medium", scale=0.1), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(result, "1") == ["value_not_in_list"]
    assert result.node_errors["1"]["errors"][0]["details"] == "mode: 'medium' not in ['fast', 'slow']"


def test_custom_validation_failed_and_named_inputs_skip_limits():
    bad = _validate({"1": node("UNetLabTestChecked", value=13, other=0), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(bad, "1") == ["custom_validation_failed"]
    assert bad.node_errors["1"]["errors"][0]["details"] == "value - thirteen is unlucky"
    # value=50 exceeds max 10, but VALIDATE_INPUTS names `value`, so ComfyUI leaves its limits to the node;
    # `other` is not named and keeps its limits.
    ok = _validate({"1": node("UNetLabTestChecked", value=50, other=0), "2": node("UNetLabTestSink", value=["1", 0])})
    assert ok.valid, ok.summary()
    assert Checked.seen[-1] == 50
    other = _validate({"1": node("UNetLabTestChecked", value=1, other=50), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(other, "1") == ["value_bigger_than_max"]


def test_input_types_skips_link_type_check():
    result = _validate({"1": node("UNetLabTestFloat"), "2": node("UNetLabTestTypeAware", value=["1", 0]),
                        "3": node("UNetLabTestSink", value=["2", 0])})
    assert result.valid, result.summary()
    assert TypeAware.seen == [{"value": "FLOAT"}]


def test_exception_during_validation():
    # The output node links to a node that is not in the prompt.
    result = _validate({"2": node("UNetLabTestSink", value=["99", 0])})
    assert _node_error_types(result, "2") == ["exception_during_validation"]
    assert "99" in result.node_errors["2"]["errors"][0]["details"]


def test_exception_during_inner_validation():
    # An inner node links to a missing node: the inner node carries the error (as in ComfyUI).
    result = _validate({"1": node("UNetLabTestAdd", a=["98", 0], b=["98", 0]), "2": node("UNetLabTestSink", value=["1", 0])})
    assert _node_error_types(result, "1") == ["exception_during_inner_validation"]
    assert "98" in result.node_errors["1"]["errors"][0]["details"]


def test_invalid_prompt_unknown_node_and_missing_class_type():
    result = _validate({"1": node("NoSuchNode"), "2": node("UNetLabTestSink", value=["1", 0])})
    assert result.error["type"] == "invalid_prompt"
    assert result.error["message"] == "Cannot execute because node NoSuchNode does not exist."
    assert result.error["details"] == "Node ID '#1'"
    result = _validate({"1": {"inputs": {}}})
    assert result.error["type"] == "invalid_prompt"
    assert "class_type" in result.error["message"]


def test_prompt_no_outputs():
    result = _validate({"1": node("UNetLabTestConst", value=1)})
    assert result.error["type"] == "prompt_no_outputs"


def test_prompt_outputs_failed_validation_only_when_every_output_fails():
    both_bad = _validate({"1": node("UNetLabTestSink"), "2": node("UNetLabTestSink")})
    assert both_bad.error["type"] == "prompt_outputs_failed_validation"
    assert sorted(both_bad.node_errors) == ["1", "2"]
    one_good = _validate({"1": node("UNetLabTestSink"), "3": node("UNetLabTestConst", value=1),
                          "2": node("UNetLabTestSink", value=["3", 0])})
    assert one_good.valid and one_good.good_outputs == ["2"] and "1" in one_good.node_errors


def test_values_are_converted_like_comfyui():
    result = _validate({"1": node("UNetLabTestConst", value="7"), "2": node("UNetLabTestSink", value=["1", 0], label=5)})
    assert result.valid
    assert result.prompt["1"]["inputs"]["value"] == 7 and result.prompt["2"]["inputs"]["label"] == "5"


def test_mixed_core_and_own_nodes_validate_whole():
    prompt = {
        "1": node("UNETLoader", unet_name="sd15_unet.safetensors", weight_dtype="fp8_e4m3fn"),
        "2": node("KSampler", model=["1", 0], seed=5, steps=0, cfg=7.0, sampler_name="euler", scheduler="karras",
                  positive=["9", 0], negative=["9", 0], latent_image=["3", 0], denoise=1.0),
        "3": node("EmptyLatentImage", width=512, height=512, batch_size=1),
        "9": node("UNetLabTestConst", value=1),  # INT into CONDITIONING: our node's output type is checked too
        "4": node("VAEDecode", samples=["2", 0], vae=["1", 0]),
        "5": node("SaveImage", images=["4", 0], filename_prefix="x"),
    }
    result = _validate(prompt)
    assert not result.valid
    types = {n: _node_error_types(result, n) for n in result.node_errors}
    # steps=0 < min 1 (from the recorded schema); INT links into CONDITIONING; VAEDecode's vae gets a MODEL.
    assert sorted(types["2"]) == ["return_type_mismatch", "return_type_mismatch", "value_smaller_than_min"]
    assert types["4"] == ["return_type_mismatch"]
    # Combos listing the recording server's files are not checked (the real host's files are unknown)...
    assert "1" not in result.node_errors
    # ...but fixed combos are.
    prompt["1"]["inputs"]["weight_dtype"] = "fp7"
    assert _node_error_types(_validate(prompt), "1") == ["value_not_in_list"]
