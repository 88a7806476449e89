"""The headless runner under torchrun (2 gloo ranks): every rank runs the workflow, rank 0 alone writes."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fixtures_distributed import job_env, torchrun
from pack_support import REPO_ROOT


def _save_workflow() -> dict:
    nodes = [
        {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": []}],
         "widgets_values": ["in.png", "image"]},
        {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
         "widgets_values": ["ranks/picture"]},
    ]
    return {"last_node_id": 2, "last_link_id": 1, "nodes": nodes, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
            "groups": [], "version": 0.4}


def test_only_rank_0_writes_and_reports(tmp_path):
    (tmp_path / "input").mkdir()
    pixels = (np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3)
    Image.fromarray(pixels).save(tmp_path / "input" / "in.png")
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(_save_workflow()))
    result = torchrun([str(REPO_ROOT / "dev.py"), "run", str(workflow), "--input", str(tmp_path / "input"),
                       "--output", str(tmp_path / "output"), "--models", str(tmp_path / "models"),
                       "--device", "cpu"], env=job_env(UNET_LAB_DIST_TIMEOUT="60"))
    assert result.code == 0, result.err[-3000:]
    written = sorted(p.relative_to(tmp_path / "output").as_posix() for p in (tmp_path / "output").rglob("*")
                     if p.is_file())
    assert written == ["ranks/picture_00001_.png"]  # a second rank saving would have made _00002_
    assert np.array_equal(np.asarray(Image.open(tmp_path / "output" / written[0])), pixels)
    assert result.out.count("node 2 (SaveImage) images:") == 1
    assert "done on 2 ranks" in result.err
    assert result.err.count("running node 2 (SaveImage)") == 1  # ranks other than 0 log warnings only
