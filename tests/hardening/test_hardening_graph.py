"""Regression cases the graph fuzzing found (fixed in unet_core/graph): documented errors only.

* an input the node's schema does not have, linked to a node missing from the prompt, made the
  cache signature raise KeyError (validation ignores unknown inputs; the signature walked them);
  now it is treated as ComfyUI does (the function receives None for it);
* chains thousands of links long (API prompts) or hundreds of reroutes long (UI workflows)
  raised RecursionError from the recursive graph walks.
"""

from __future__ import annotations

import pytest

from fixtures_hardening import FAKE_NODES


def _executor():
    from unet_lab.unet_core.graph.execute import Executor

    return Executor(FAKE_NODES, core_schemas={})


def test_stray_link_to_missing_node_fails_documented():
    """As ComfyUI's get_input_data: the stray link reaches the function (as None); a node without
    **kwargs then fails, reported as NodeExecutionError naming the node (was: KeyError '9')."""
    from unet_lab.unet_core.errors import NodeExecutionError

    prompt = {"0": {"class_type": "UNetLabFuzzInt", "inputs": {"value": 3}},
              "1": {"class_type": "UNetLabFuzzSink", "inputs": {"value": ["0", 0], "stray": ["9", 0]}}}
    with pytest.raises(NodeExecutionError) as info:
        _executor().run(prompt)
    assert info.value.node_id == "1" and "stray" in str(info.value)
    # the same prompt without the stray input runs
    del prompt["1"]["inputs"]["stray"]
    assert _executor().run(prompt).outputs["1"] == {"text": ["3"]}


def _chain(n: int) -> dict:
    prompt = {"0": {"class_type": "UNetLabFuzzInt", "inputs": {"value": 1}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "UNetLabFuzzAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt[str(n)] = {"class_type": "UNetLabFuzzSink", "inputs": {"value": [str(n - 1), 0]}}
    return prompt


def test_long_api_chain_runs_or_fails_documented():
    from unet_lab.unet_core.errors import WorkflowError

    assert _executor().run(_chain(200)).values["199"] == [[200]]  # 1 + 199 additions of 1
    with pytest.raises(WorkflowError, match="too long"):
        _executor().run(_chain(3000))


def _reroutes(n: int) -> dict:
    nodes = [{"id": 1, "type": "UNetLabFuzzInt", "inputs": [], "outputs": [{"type": "INT", "links": [1]}],
              "widgets_values": [5], "mode": 0}]
    links = []
    for i in range(2, n + 2):
        nodes.append({"id": i, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": i - 1}],
                      "outputs": [{"type": "*", "links": [i]}], "mode": 0})
        links.append([i - 1, i - 1, 0, i, 0, "*"])
    nodes.append({"id": n + 2, "type": "UNetLabFuzzSink", "inputs": [{"name": "value", "type": "*", "link": n + 1}],
                  "outputs": [], "mode": 0})
    links.append([n + 1, n + 1, 0, n + 2, 0, "*"])
    return {"nodes": nodes, "links": links}


def test_long_reroute_chain_converts_or_fails_documented():
    from unet_lab.unet_core.errors import WorkflowError
    from unet_lab.unet_core.graph.formats import split_prompt

    ex = _executor()
    prompt, _ = split_prompt(_reroutes(20), ex.schemas())
    assert prompt[str(22)]["inputs"]["value"] == ["1", 0]  # resolved through 20 reroutes to the source
    with pytest.raises(WorkflowError, match="too long"):
        split_prompt(_reroutes(3000), ex.schemas())


def test_infinite_link_slot_is_a_workflow_error():
    """json.loads accepts Infinity: a link slot of inf made int() raise OverflowError."""
    import json

    from unet_lab.unet_core.errors import WorkflowError
    from unet_lab.unet_core.graph.formats import split_prompt

    workflow = json.loads('{"nodes": [{"id": 1, "type": "UNetLabFuzzInt", "inputs": [], "widgets_values": [1]}], '
                          '"links": [[0, 1, Infinity, 1, 0]]}')
    with pytest.raises(WorkflowError, match="malformed"):
        split_prompt(workflow, _executor().schemas())
