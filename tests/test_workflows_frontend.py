"""Our UI -> API conversion of the shipped workflows gives what the real ComfyUI frontend sent (recorded)."""

from __future__ import annotations

import json

import pytest

from fixtures_workflows import FRONTEND_PROMPTS
from pack_support import REPO_ROOT
from unet_lab.nodes.host.headless import node_classes
from unet_lab.unet_core.graph.execute import Executor


@pytest.mark.parametrize("name", sorted(FRONTEND_PROMPTS))
def test_conversion_matches_the_real_frontend(name):
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    executor = Executor(node_classes())
    ours, _extra = executor.to_prompt(workflow)
    theirs = FRONTEND_PROMPTS[name]
    assert sorted(ours) == sorted(theirs)
    schemas = executor.schemas()
    for node_id, node in theirs.items():
        assert ours[node_id]["class_type"] == node["class_type"]
        schema = schemas.get(node["class_type"])
        # the frontend also sends values of widgets its own JS adds (PreviewAny's "preview"); the server ignores
        # inputs its schema does not name, so only schema inputs are compared
        expected = {k: v for k, v in node["inputs"].items() if k in schema.inputs}
        assert set(node["inputs"]) - set(expected) <= {"preview"}, node["inputs"]
        assert ours[node_id]["inputs"] == expected, (name, node_id, node["class_type"])
