"""The shipped workflows and the web extension in the real ComfyUI frontend, in headless Chromium.

``tests/fixtures_frontend.py`` serves ``comfyui_frontend_package`` (pinned in requirements-dev.txt)
over the stub executor on 127.0.0.1; Playwright drives Debian's Chromium through
``executable_path`` (no browser download). Every shipped workflow is loaded as a user would and
must: use only known node types, raise no JS or console error, give the same prompt
(``app.graphToPrompt()``) as our converter, keep node boxes (title, widgets and previews
included, as the frontend measures them) apart, and stay above the frontend's low-quality zoom at
fit-to-view on a 1600 x 1000 window. A screenshot per workflow lands in pytest's tmp dir
(path printed; copied to ``web_screenshots/`` with ``UNETLAB_SAVE_SCREENSHOTS=1``). Broken copies
prove that an overlap and a missing node type are caught. The block editor is driven (mouse drag,
preset, text), and the Segment Image panels are read after a real run.

Skips without Playwright, the frontend package or Chromium, except in CI (``CI`` set), where the
missing piece fails the test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fixtures_frontend import frontend_root
from fixtures_frontend_session import FrontendSession, chromium_binary, playwright_available
from pack_support import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
MISSING = [name for name, ok in (("playwright", playwright_available()), ("comfyui-frontend-package",
                                                                          frontend_root() is not None),
                                 ("chromium", chromium_binary() is not None)) if not ok]
pytestmark = pytest.mark.skipif(bool(MISSING) and not os.environ.get("CI"),
                                reason=f"missing {', '.join(MISSING)} (requirements-dev.txt, scripts/ci_setup.sh)")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    assert not MISSING, f"CI needs {', '.join(MISSING)}: run scripts/ci_setup.sh"
    workflows = [json.loads(p.read_text(encoding="utf-8")) for p in WORKFLOWS]
    with FrontendSession(tmp_path_factory.mktemp("frontend"), workflows) as opened:
        yield opened


def _keep_screenshot(path: Path) -> None:
    print(f"\nscreenshot: {path}")
    if os.environ.get("UNETLAB_SAVE_SCREENSHOTS") == "1":
        out = REPO_ROOT / "web_screenshots"
        out.mkdir(exist_ok=True)
        shutil.copyfile(path, out / path.name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_in_the_real_frontend(session, path, tmp_path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    report = session.load(workflow)
    assert report.missing_types == [], f"{path.name}: node types unknown to the frontend: {report.missing_types}"
    assert report.errors == [], f"{path.name}: JS/console errors: {report.errors}"
    assert report.unexpected_requests == [], f"{path.name}: routes the harness lacks: {report.unexpected_requests}"
    assert report.overlaps == [], f"{path.name}: overlapping nodes (id, id, area px²): {report.overlaps}"
    assert report.prompt == session.our_prompt(workflow), f"{path.name}: the frontend's prompt differs from ours"
    assert not report.low_quality_at_fit, (f"{path.name}: fit-to-view zoom {report.fit_scale:.2f} is below the "
                                           "frontend's text threshold")
    shot = tmp_path / f"{path.stem}.png"
    session.screenshot(shot)
    _keep_screenshot(shot)


def _lora_workflow() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "workflows" / "unet_lab_lora_block_weights_sdxl.json").read_text())


def test_a_broken_copy_with_an_overlap_fails(session):
    workflow = _lora_workflow()
    nodes = [n for n in workflow["nodes"] if n["type"] != "Note"]
    nodes[1]["pos"] = [nodes[0]["pos"][0] + 30, nodes[0]["pos"][1] + 30]  # one node dropped onto another
    report = session.load(workflow)
    assert {frozenset(pair[:2]) for pair in report.overlaps} >= {frozenset((nodes[0]["id"], nodes[1]["id"]))}


def test_a_broken_copy_with_a_missing_node_type_fails(session):
    workflow = _lora_workflow()
    gone = copy.deepcopy(next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"))
    gone.update(id=workflow["last_node_id"] + 1, type="UNetLabNoSuchNode", pos=[0, 2000], inputs=[], outputs=[])
    workflow["nodes"].append(gone)
    workflow["last_node_id"] += 1
    report = session.load(workflow)
    assert report.missing_types == ["UNetLabNoSuchNode"]


def test_sdxl_workflow_opens_with_the_sdxl_sliders(session):
    session.load(_lora_workflow())
    editor = session.block_editor()
    assert editor["family"] == "sdxl"
    assert editor["blocks"] == ["BASE", *[f"IN{i:02d}" for i in range(9)], "M00", *[f"OUT{i:02d}" for i in range(9)]]


def test_lora_file_header_picks_the_family(session):
    session.load(_lora_workflow())
    assert session.block_editor()["family"] == "sdxl"
    session.set_combo("UNetLabApplyLoRABlockWeights", "lora_name", "sd15_lora.safetensors")
    assert session.block_editor()["family"] == "sd1"
    assert len(session.block_editor()["blocks"]) == 26
    session.set_combo("UNetLabApplyLoRABlockWeights", "lora_name", "sdxl_style_lora.safetensors")
    assert session.block_editor()["family"] == "sdxl"


def test_block_editor_drag_preset_and_text(session):
    from unet_lab.unet_core.lora.blocks import BlockLayout, parse_block_spec
    from unet_lab.unet_core.unet_config import SDXL_CONFIG

    SDXL = BlockLayout.from_config(SDXL_CONFIG)  # noqa: N806
    session.load(_lora_workflow())
    before = session.widget_value("UNetLabApplyLoRABlockWeights", "block_spec")
    session.drag_slider("M00", fraction=0.0)  # a real mouse drag to the slider's left end (-1)
    after_drag = session.widget_value("UNetLabApplyLoRABlockWeights", "block_spec")
    assert after_drag != before and "M00=-1" in after_drag
    session.choose_editor_preset("SDXL-OUTALL")
    written = session.widget_value("UNetLabApplyLoRABlockWeights", "block_spec")
    # the Python parser reads what the editor wrote as the preset itself
    assert parse_block_spec(written, SDXL, None) == parse_block_spec("", SDXL, "SDXL-OUTALL")
    session.type_spec("default=0, IN04=0.5, OUT01-02=1.5")
    assert session.block_editor()["values"] == parse_block_spec("default=0, IN04=0.5, OUT01-02=1.5", SDXL, None)


def test_segment_image_panels_after_a_run(session):
    workflow = json.loads((REPO_ROOT / "workflows" / "unet_lab_segment_image.json").read_text())
    session.load(workflow)
    panels = session.run_and_read_panels("UNetLabSegmentImage")
    assert panels["status"] == "success", panels
    assert panels["overlay_width"] > 0  # the overlay image loaded through /view
    assert panels["text"], "no report panel"
    assert panels["text_scroll_width"] <= panels["text_client_width"] + 1, "the report panel scrolls sideways"


def test_help_pages_answer_where_the_frontend_asks_first(session):
    import unet_lab

    for name in unet_lab.NODE_CLASS_MAPPINGS:
        response = session.page.request.get(f"{session.server.url}/extensions/unet_lab/docs/{name}/en.md")
        assert response.status == 200, name
        assert response.text().startswith(f"# {unet_lab.NODE_DISPLAY_NAME_MAPPINGS[name]}")
