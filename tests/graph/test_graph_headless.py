"""The headless runner: a good run, and each kind of bad input -> exit 2, a message naming node and cause."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pack_support import REPO_ROOT
from unet_lab.nodes.host import headless


def _ui(nodes, links):
    return {"last_node_id": 9, "last_link_id": 9, "nodes": nodes, "links": links, "groups": [], "version": 0.4}


def _good_workflow():
    return _ui([
        {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": []}],
         "widgets_values": ["in.png", "image"]},
        {"id": 2, "type": "ImageToMask", "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
         "outputs": [{"name": "MASK", "type": "MASK", "links": [2]}], "widgets_values": ["green"]},
        {"id": 3, "type": "MaskToImage", "mode": 0, "inputs": [{"name": "mask", "type": "MASK", "link": 2}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}]},
        {"id": 4, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 3}],
         "widgets_values": ["headless/green"]},
    ], [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "MASK"], [3, 3, 0, 4, 0, "IMAGE"]])


@pytest.fixture
def dirs(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 1] = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(pixels).save(folder / "in.png")
    return tmp_path, pixels


def _run(tmp_path, workflow, capsys, raw=None):
    path = tmp_path / "wf.json"
    path.write_text(raw if raw is not None else json.dumps(workflow))
    code = headless.main([str(path), "--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"),
                          "--models", str(tmp_path / "models"), "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_good_workflow_runs_and_reports_its_outputs(dirs, capsys):
    tmp_path, pixels = dirs
    code, out, err = _run(tmp_path, _good_workflow(), capsys)
    assert code == 0, err
    saved = tmp_path / "output" / "headless" / "green_00001_.png"
    assert str(saved) in out
    assert "running node 4 (SaveImage)" in err
    with Image.open(saved) as image:
        got = np.array(image)
    assert np.array_equal(got, np.repeat(pixels[..., 1:2], 3, axis=2))  # green channel as grey
    assert json.loads(Image.open(saved).text["workflow"])["nodes"][0]["type"] == "LoadImage"


def _assert_bad(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_not_json(dirs, capsys):
    code, _out, err = _run(dirs[0], None, capsys, raw="{ nodes: oops")
    _assert_bad(code, err, "wf.json", "not JSON")


def test_neither_format(dirs, capsys):
    code, _out, err = _run(dirs[0], {"hello": 1}, capsys)
    _assert_bad(code, err, "wf.json", "neither an API prompt")


def test_link_to_a_missing_node(dirs, capsys):
    prompt = {"4": {"class_type": "SaveImage", "inputs": {"images": ["77", 0], "filename_prefix": "x"}}}
    code, _out, err = _run(dirs[0], prompt, capsys)
    _assert_bad(code, err, "node 4 (SaveImage)", "links to node 77, which is not in the prompt")
    workflow = _good_workflow()
    workflow["links"][2] = [3, 33, 0, 4, 0, "IMAGE"]  # the UI form: a link from a node that is not there
    code, _out, err = _run(dirs[0], workflow, capsys)
    _assert_bad(code, err, "node 33", "not in the workflow")


def test_cycle(dirs, capsys):
    prompt = {"2": {"class_type": "ImageToMask", "inputs": {"image": ["3", 0], "channel": "red"}},
              "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}
    code, _out, err = _run(dirs[0], prompt, capsys)
    _assert_bad(code, err, "cycle", "2 (ImageToMask)", "3 (MaskToImage)")


def test_unknown_node_type(dirs, capsys):
    workflow = _good_workflow()
    workflow["nodes"][2]["type"] = "FancyMaskThing"
    code, _out, err = _run(dirs[0], workflow, capsys)
    _assert_bad(code, err, "FancyMaskThing", "does not exist", "#3")


def test_value_of_the_wrong_type(dirs, capsys):
    workflow = _good_workflow()
    workflow["nodes"][1]["widgets_values"] = ["purple"]
    code, _out, err = _run(dirs[0], workflow, capsys)
    _assert_bad(code, err, "node 2 (ImageToMask)", "value_not_in_list", "purple")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
              "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": ["1"]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": ["x", 0, 1]}}}
    code, _out, err = _run(dirs[0], prompt, capsys)
    _assert_bad(code, err, "node 4 (SaveImage)", "bad_linked_input", "filename_prefix")
    prompt["4"]["inputs"] = {"images": 5, "filename_prefix": "x"}
    code, _out, err = _run(dirs[0], prompt, capsys)
    _assert_bad(code, err, "node 4 (SaveImage)", "invalid_input_type", "images")


def test_core_nodes_needing_comfyui_are_listed(dirs, capsys):
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
    code, _out, err = _run(dirs[0], prompt, capsys)
    _assert_bad(code, err, "EmptyLatentImage (#1)", "SaveLatent (#2)", "ComfyUI host")


def test_dev_py_run_reports_bad_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "dev.py"), "run", str(bad), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "not JSON" in done.stderr and "Traceback" not in done.stderr
