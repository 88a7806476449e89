"""Execution: order, only what outputs need, caching, IS_CHANGED, VALIDATE_INPUTS, lists, hidden inputs, errors."""

from __future__ import annotations

import logging

import pytest

import fixtures_graph as fg
from fixtures_graph import CALLS, executor, node, reset_calls
from unet_lab.unet_core.errors import HostError, NodeExecutionError, PromptValidationError, WorkflowError


@pytest.fixture(autouse=True)
def _clean():
    reset_calls()


def _sum_prompt(a=2, b=3):
    return {
        "5": node("UNetLabTestSink", value=["4", 0]),
        "4": node("UNetLabTestAdd", a=["1", 0], b=["2", 0]),
        "1": node("UNetLabTestConst", value=a),
        "2": node("UNetLabTestConst", value=b),
        "9": node("UNetLabTestConst", value=99),  # feeds no output: must not run
    }


def test_runs_in_dependency_order_only_what_outputs_need():
    result = executor().run(_sum_prompt())
    assert ("Const", 99) not in CALLS
    names = [c[0] for c in CALLS]
    assert names.index("Add") > max(i for i, n in enumerate(names) if n == "Const")
    assert names[-1] == "Sink"
    assert CALLS[names.index("Add")] == ("Add", (2, 3))
    assert result.outputs == {"5": {"values": [5], "labels": ["out"]}}
    assert sorted(result.executed) == ["1", "2", "4", "5"]


def test_second_run_of_unchanged_prompt_executes_nothing():
    ex = executor()
    ex.run(_sum_prompt())
    CALLS.clear()
    again = ex.run(_sum_prompt())
    assert CALLS == [] and again.executed == []
    assert sorted(again.cached) == ["1", "2", "4", "5"]
    assert again.outputs == {"5": {"values": [5], "labels": ["out"]}}


def test_changed_input_re_executes_only_that_node_and_its_dependents():
    ex = executor()
    ex.run(_sum_prompt(2, 3))
    CALLS.clear()
    result = ex.run(_sum_prompt(2, 4))
    assert sorted(result.executed) == ["2", "4", "5"] and result.cached == ["1"]
    assert ("Add", (2, 4)) in CALLS and result.outputs["5"]["values"] == [6]


def test_nodes_gone_from_the_prompt_leave_the_cache():
    ex = executor()
    ex.run(_sum_prompt())
    ex.run({"1": node("UNetLabTestConst", value=2), "6": node("UNetLabTestSink", value=["1", 0])})
    CALLS.clear()
    result = ex.run(_sum_prompt())
    assert result.cached == ["1"] and sorted(result.executed) == ["2", "4", "5"]


def test_is_changed_value_controls_re_execution():
    prompt = {"1": node("UNetLabTestChanging", value=4), "2": node("UNetLabTestSink", value=["1", 0])}
    ex = executor()
    ex.run(prompt)
    assert ("Changing.IS_CHANGED", 4) in CALLS  # called with the node's constant inputs
    CALLS.clear()
    ex.run(prompt)
    assert [c for c in CALLS if c[0] == "Changing"] == []  # same IS_CHANGED value: cached
    fg.Changing.token = "b"
    CALLS.clear()
    result = ex.run(prompt)
    assert ("Changing", 4) in CALLS and sorted(result.executed) == ["1", "2"]


def test_is_changed_raising_means_always_re_execute(caplog):
    prompt = {"1": node("UNetLabTestAlwaysChanged", value=1), "2": node("UNetLabTestSink", value=["1", 0])}
    ex = executor()
    ex.run(prompt)
    CALLS.clear()
    with caplog.at_level(logging.WARNING):
        ex.run(prompt)
    assert ("AlwaysChanged", 1) in CALLS
    assert "IS_CHANGED" in caplog.text


def test_validate_inputs_runs_before_execution_and_blocks_it():
    prompt = {"1": node("UNetLabTestChecked", value=13, other=1), "2": node("UNetLabTestSink", value=["1", 0])}
    with pytest.raises(PromptValidationError) as caught:
        executor().run(prompt)
    assert CALLS == []
    report = caught.value.report
    assert report["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert "node 1 (UNetLabTestChecked)" in str(caught.value) and "thirteen is unlucky" in str(caught.value)
    assert fg.Checked.seen == [13]


def test_documented_error_keeps_its_message():
    prompt = {"1": node("UNetLabTestRaiser", how="documented"), "2": node("UNetLabTestSink", value=["1", 0])}
    with pytest.raises(NodeExecutionError) as caught:
        executor().run(prompt)
    error = caught.value
    assert error.node_id == "1" and error.class_type == "UNetLabTestRaiser"
    assert str(error) == "node 1 (UNetLabTestRaiser) failed: the mask must be [B,H,W]"


def test_other_exception_is_reported_with_node_and_traceback_goes_to_debug(caplog):
    prompt = {"1": node("UNetLabTestRaiser", how="plain"), "2": node("UNetLabTestSink", value=["1", 0])}
    with caplog.at_level(logging.DEBUG), pytest.raises(NodeExecutionError) as caught:
        executor().run(prompt)
    assert "node 1 (UNetLabTestRaiser)" in str(caught.value) and "something deep went wrong" in str(caught.value)
    assert "Traceback" not in str(caught.value)
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)


def test_failed_node_is_not_cached():
    ex = executor()
    prompt = {"1": node("UNetLabTestRaiser", how="plain"), "2": node("UNetLabTestSink", value=["1", 0])}
    for _ in range(2):
        with pytest.raises(NodeExecutionError):
            ex.run(prompt)


def test_output_is_list_maps_consumer_per_item_and_input_is_list_gets_all():
    prompt = {"1": node("UNetLabTestListMaker", count=3),
              "2": node("UNetLabTestConst", value=1),
              "3": node("UNetLabTestAdd", a=["1", 0], b=["2", 0]),  # called once per item, b repeats
              "4": node("UNetLabTestSink", value=["3", 0]),
              "5": node("UNetLabTestListSum", values=["1", 0]),
              "6": node("UNetLabTestSink", value=["5", 0])}
    result = executor().run(prompt)
    assert [c for c in CALLS if c[0] == "Add"] == [("Add", (10, 1)), ("Add", (11, 1)), ("Add", (12, 1))]
    assert result.outputs["4"]["values"] == [11, 12, 13]  # ui lists of the three calls, concatenated
    assert ("ListSum", [10, 11, 12]) in CALLS and result.outputs["6"]["values"] == [33]


def test_hidden_inputs_are_filled():
    prompt = {"7": node("UNetLabTestHidden", value=3)}
    executor().run(prompt, extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert CALLS == [("Hidden", (3, ["7"], {"workflow": {"nodes": []}}, "7"))]


def test_core_nodes_without_a_class_are_refused_up_front_with_a_list():
    prompt = {"1": node("EmptyLatentImage", width=64, height=64, batch_size=1),
              "2": node("LatentUpscaleBy", samples=["1", 0], upscale_method="nearest-exact", scale_by=2.0),
              "3": node("UNetLabTestConst", value=1), "4": node("UNetLabTestSink", value=["3", 0]),
              "5": node("SaveLatent", samples=["2", 0], filename_prefix="x")}
    with pytest.raises(HostError) as caught:
        executor().run(prompt)
    message = str(caught.value)
    assert "EmptyLatentImage (#1)" in message and "LatentUpscaleBy (#2)" in message and "SaveLatent (#5)" in message
    assert "ComfyUI host" in message
    assert CALLS == []  # nothing ran, not even the runnable branch


def test_cycle_is_refused_naming_the_nodes():
    prompt = {"1": node("UNetLabTestAdd", a=["2", 0], b=["2", 0]), "2": node("UNetLabTestAdd", a=["1", 0], b=["1", 0]),
              "3": node("UNetLabTestSink", value=["1", 0])}
    with pytest.raises(WorkflowError, match=r"cycle.*1 \(UNetLabTestAdd\).*2 \(UNetLabTestAdd\)"):
        executor().run(prompt)
