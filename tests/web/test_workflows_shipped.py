"""The shipped workflows: well-formed UI files that convert and validate against our nodes + ComfyUI's core
schemas, each with a Note naming its model files and a thumbnail; the headless ones run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pack_support import REPO_ROOT, load_script
from unet_lab import NODE_CLASS_MAPPINGS as PACK_NODES
from unet_lab.nodes.host.headless import node_classes
from unet_lab.unet_core.graph.execute import Executor

WORKFLOW_DIR = REPO_ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
EXPECTED = {"unet_lab_sdxl_turbo_one_step", "unet_lab_swap_unet_sd15", "unet_lab_lora_block_weights_sdxl",
            "unet_lab_skip_attention_gates", "unet_lab_segment_image", "unet_lab_train_segmentation_pairs",
            "unet_lab_segmentation_training", "unet_lab_unet3plus_synthetic", "unet_lab_volume_synthetic"}
# Inputs of our nodes whose combo lists files of a model folder (the folder each reads).
PACK_FILE_INPUTS = {("UNetLabLoadUNet", "unet_name"): "diffusion_models",
                    ("UNetLabSwapUNet", "unet_name"): "diffusion_models",
                    ("UNetLabApplyLoRABlockWeights", "lora_name"): "loras",
                    ("UNetLabBakeLoRA", "lora_name"): "loras",
                    ("UNetLabLoadSegmentationUNet", "model_name"): "unet_segmentation"}
def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _place_model_files(host, workflow: dict) -> None:
    """Empty files under the names the workflow picks, so our file combos list them (contents unread)."""
    for node in workflow["nodes"]:
        for (node_type, name), folder in PACK_FILE_INPUTS.items():
            if node["type"] != node_type:
                continue
            index = _widget_names(node_type).index(name)
            value = node["widgets_values"][index]
            if not str(value).startswith("(new)"):
                target = host.save_directory(folder) / value
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
        if node["type"] == "LoadImage":  # LoadImage checks its file when validating, as in ComfyUI
            _write_png(Path(host.input_directory()) / node["widgets_values"][0], np.zeros((8, 8, 3), np.uint8))
        if node["type"] == "UNetLabInspectUNet":
            folder, _, name = node["widgets_values"][0].partition("/")
            (host.save_directory(folder) / name).write_bytes(b"")


def _widget_names(node_type: str) -> list[str]:
    """Our nodes' widget inputs in order (none of those with a file combo has a seed before it)."""
    types = PACK_NODES[node_type].INPUT_TYPES()
    return [n for section in ("required", "optional") for n, spec in types.get(section, {}).items()
            if isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")]


def test_the_expected_workflows_ship():
    assert {p.stem for p in WORKFLOWS} >= EXPECTED


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_a_well_formed_ui_workflow(path):
    workflow = _load(path)
    assert workflow["version"] == 0.4
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= set(workflow)
    assert "ds" in workflow["extra"]
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"])
    assert workflow["last_node_id"] == max(nodes)
    assert workflow["last_link_id"] == max((link[0] for link in workflow["links"]), default=0)
    for node in workflow["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(node), node["id"]
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    # every link agrees with both ends
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        output = nodes[origin]["outputs"][origin_slot]
        entry = nodes[target]["inputs"][target_slot]
        assert link_id in (output["links"] or []), (path.name, link_id)
        assert entry["link"] == link_id, (path.name, link_id)
        assert output["type"] == kind
        assert entry["type"] in (kind, "*"), (path.name, link_id, entry["type"], kind)
    linked = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        for entry in node["inputs"]:
            assert entry["link"] is None or entry["link"] in linked
        for output in node["outputs"]:
            assert set(output.get("links") or []) <= linked


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_has_a_note_naming_its_files_and_a_thumbnail(path):
    workflow = _load(path)
    notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, f"{path.name} has no Note node"
    text = " ".join(str(v) for n in notes for v in n["widgets_values"])
    model_values = [v for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote")
                    for v in n["widgets_values"] if isinstance(v, str) and v.endswith((".safetensors", ".png"))]
    for value in model_values:  # every file the workflow picks is named in the note, with its folder
        assert Path(value).name in text, f"{path.name}: the Note does not name {value}"
    if model_values:
        assert "models/" in text or "input/" in text
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"no thumbnail {thumbnail.name}"
    assert thumbnail.stat().st_size < 100_000
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.width >= 256 and image.height >= 192


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_converts_and_validates(path, standalone_host, caplog):
    workflow = _load(path)
    _place_model_files(standalone_host, workflow)
    if path.stem == "unet_lab_train_segmentation_pairs":  # its inputs are checked before it runs
        (Path(standalone_host.input_directory()) / "my_pairs").mkdir(parents=True)
        _write_png(Path(standalone_host.input_directory()) / "cells.tif", np.zeros((8, 8, 3), np.uint8))
    executor = Executor(node_classes())
    schemas = executor.schemas()
    for node in workflow["nodes"]:
        assert node["type"] in ("Note", "MarkdownNote") or node["type"] in schemas, node["type"]
    with caplog.at_level(logging.WARNING):
        prompt, extra = executor.to_prompt(workflow, source=path.name)
    assert not [r for r in caplog.records if "widget values" in r.getMessage()], caplog.text
    real_nodes = [n for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote")]
    assert sorted(prompt) == sorted(str(n["id"]) for n in real_nodes)
    result = executor.validate(prompt, extra)
    assert result.valid and not result.node_errors, result.summary()
    outputs = {str(n["id"]) for n in real_nodes if schemas.get(n["type"]).output_node}
    assert set(result.good_outputs) == outputs  # every output node is valid, none dropped


def _api(path: Path, standalone_host) -> dict:
    workflow = _load(path)
    _place_model_files(standalone_host, workflow)
    prompt, _ = Executor(node_classes()).to_prompt(workflow)
    return {n["class_type"] + ":" + str(i): n["inputs"] for i, n in prompt.items()}


def _by_type(api: dict, class_type: str) -> list[dict]:
    return [v for k, v in api.items() if k.split(":")[0] == class_type]


def test_sdxl_turbo_workflow_samples_one_step_at_cfg_1(standalone_host):
    api = _api(WORKFLOW_DIR / "unet_lab_sdxl_turbo_one_step.json", standalone_host)
    (sched,), (sampler,), (select,), (latent,) = (_by_type(api, t) for t in (
        "SDTurboScheduler", "SamplerCustom", "KSamplerSelect", "EmptyLatentImage"))
    assert sched["steps"] == 1 and sched["denoise"] == 1.0
    assert sampler["cfg"] == 1.0 and sampler["add_noise"] is True
    assert select["sampler_name"] == "euler_ancestral"
    assert (latent["width"], latent["height"]) == (512, 512)
    (clip,) = _by_type(api, "DualCLIPLoader")
    assert clip["type"] == "sdxl"
    # the scheduler takes the UNet-only model; the sampler takes it through Accelerate UNet
    load_id = next(k for k in api if k.startswith("UNetLabLoadUNet:")).split(":")[1]
    accel_id = next(k for k in api if k.startswith("UNetLabAccelerateUNet:")).split(":")[1]
    (accel,) = _by_type(api, "UNetLabAccelerateUNet")
    assert accel["model"] == [load_id, 0] and accel["enabled"] is True
    assert sampler["model"] == [accel_id, 0] and sched["model"] == [load_id, 0]


def test_swap_workflow_samples_through_accelerate_unet(standalone_host):
    api = _api(WORKFLOW_DIR / "unet_lab_swap_unet_sd15.json", standalone_host)
    swap_id = next(k for k in api if k.startswith("UNetLabSwapUNet:")).split(":")[1]
    accel_id = next(k for k in api if k.startswith("UNetLabAccelerateUNet:")).split(":")[1]
    (accel,), (ksampler,) = (_by_type(api, t) for t in ("UNetLabAccelerateUNet", "KSampler"))
    assert accel["model"] == [swap_id, 0]
    assert ksampler["model"] == [accel_id, 0]


def test_lora_workflow_block_spec_is_a_valid_sdxl_spec(standalone_host):
    from unet_lab.unet_core.lora.blocks import BlockLayout, parse_block_spec
    from unet_lab.unet_core.unet_config import SDXL_CONFIG

    api = _api(WORKFLOW_DIR / "unet_lab_lora_block_weights_sdxl.json", standalone_host)
    (lora,) = _by_type(api, "UNetLabApplyLoRABlockWeights")
    assert lora["preset"] == "none (use block spec)"
    weights = parse_block_spec(lora["block_spec"], BlockLayout.from_config(SDXL_CONFIG), lora["preset"])
    # SDXL: IN00-IN08, M00, OUT00-OUT08; the spec weakens the encoder and the last decoder level
    expected = {"BASE": 1.0, **{f"IN{i:02d}": 0.5 for i in range(9)}, "M00": 1.0,
                **{f"OUT{i:02d}": w for i, w in enumerate([0.8] * 3 + [1.0] * 3 + [0.6] * 3)}}
    assert weights == expected
    (ksampler,) = _by_type(api, "KSampler")
    lora_id = next(k for k in api if k.startswith("UNetLabApplyLoRABlockWeights:")).split(":")[1]
    assert ksampler["model"] == [lora_id, 0]


def test_gate_workflow_feeds_gates_through_freeu_to_the_sampler(standalone_host):
    api = _api(WORKFLOW_DIR / "unet_lab_skip_attention_gates.json", standalone_host)
    ids = {k.split(":")[0]: k.split(":")[1] for k in api}
    (ksampler,), (freeu,), (maps,) = (_by_type(api, t) for t in ("KSampler", "FreeU_V2", "UNetLabSkipGateMaps"))
    assert freeu["model"] == [ids["UNetLabSkipAttentionGate"], 0]
    assert ksampler["model"] == [ids["FreeU_V2"], 0]
    assert maps["gate_maps"] == [ids["UNetLabSkipAttentionGate"], 1] and maps["samples"] == [ids["KSampler"], 0]


# -- headless runs -----------------------------------------------------------------------------------------
def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _disc_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(size // 3, 2 * size // 3, 2).tolist() + [size // 4]
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
    image = np.clip(rng.normal(60, 20, (size, size, 3)) + (mask[..., None] > 0) * 120, 0, 255).astype(np.uint8)
    return image, mask


def _outputs(host, prefix: str) -> list[Path]:
    return sorted(Path(host.output_directory()).glob(prefix + "*.png"))


def test_segment_image_workflow_runs_headless(standalone_host):
    from unet_lab.nodes.segmentation import UNetLabLoadSegmentationUNet, UNetLabSaveSegmentationUNet

    seg, _ = UNetLabLoadSegmentationUNet().load("(new) unet", depth=2, base_channels=4, classes=1)
    saved = UNetLabSaveSegmentationUNet().save(seg, filename_prefix="tmp/seg")["result"][0]
    target = standalone_host.save_directory("unet_segmentation") / "my_segmentation_unet.safetensors"
    Path(saved).replace(target)
    image, _mask = _disc_pair(np.random.default_rng(0), 48)
    _write_png(Path(standalone_host.input_directory()) / "cells.png", image[:40])  # 40 x 48, not square
    result = Executor(node_classes()).run(_load(WORKFLOW_DIR / "unet_lab_segment_image.json"))
    assert len([ui for ui in result.outputs.values() if "images" in ui]) == 2  # the two SaveImage nodes
    (mask_png,) = _outputs(standalone_host, "unet_lab/segment_mask")
    (overlay_png,) = _outputs(standalone_host, "unet_lab/segment_overlay")
    mask = np.asarray(Image.open(mask_png).convert("L"))
    assert mask.shape == (40, 48)
    assert set(np.unique(mask).tolist()) <= {0, 255}  # a thresholded mask
    assert Image.open(overlay_png).size == (48, 40)


def test_train_pairs_workflow_runs_headless_on_a_folder(standalone_host):
    rng = np.random.default_rng(1)
    pairs = Path(standalone_host.input_directory()) / "my_pairs"
    for i in range(5):
        image, mask = _disc_pair(rng, 32)
        _write_png(pairs / f"img{i}.png", image)
        _write_png(pairs / "masks" / f"img{i}.png", mask)
    image, _ = _disc_pair(rng, 32)
    _write_png(Path(standalone_host.input_directory()) / "cells.tif", image)
    workflow = _load(WORKFLOW_DIR / "unet_lab_train_segmentation_pairs.json")
    train = next(n for n in workflow["nodes"] if n["type"] == "UNetLabTrainSegmentationUNet")
    assert train["widgets_values"][_widget_slots("UNetLabTrainSegmentationUNet").index("folder")] == "my_pairs"
    train["widgets_values"][0:2] = [3, 2]  # steps, batch size: a cheap run of the same graph
    load = next(n for n in workflow["nodes"] if n["type"] == "UNetLabLoadSegmentationUNet")
    load["widgets_values"][1:3] = [2, 4]  # depth, base channels
    result = Executor(node_classes()).run(workflow)
    assert len([ui for ui in result.outputs.values() if "images" in ui]) == 2  # the two SaveImage nodes
    saved = list((standalone_host.save_directory("unet_segmentation") / "unet_lab").glob("pairs_segmentation_*"))
    assert len(saved) == 1
    (mask_png,) = _outputs(standalone_host, "unet_lab/pairs_mask")
    assert np.asarray(Image.open(mask_png).convert("L")).shape == (32, 32)
    assert len(_outputs(standalone_host, "unet_lab/pairs_overlay")) == 1


def _widget_slots(node_type: str) -> list[str]:
    """Widget values in UI order: a seed is followed by its control_after_generate value, as the frontend stores."""
    types = PACK_NODES[node_type].INPUT_TYPES()
    slots = []
    for name in _widget_names(node_type):
        slots.append(name)
        spec = {**types.get("required", {}), **types.get("optional", {})}[name]
        if name == "seed" and (spec[1] if len(spec) > 1 else {}).get("control_after_generate", True):
            slots.append("control_after_generate")
    return slots


def _set_widgets(workflow: dict, node_type: str, values: dict, title: str | None = None) -> None:
    names = _widget_slots(node_type)
    for node in workflow["nodes"]:
        if node["type"] == node_type and (title is None or node.get("title") == title):
            for name, value in values.items():
                node["widgets_values"][names.index(name)] = value


def test_unet3plus_workflow_runs_headless(standalone_host):
    workflow = _load(WORKFLOW_DIR / "unet_lab_unet3plus_synthetic.json")
    _set_widgets(workflow, "UNetLabSyntheticSegmentationData", {"count": 4, "size": 32})
    _set_widgets(workflow, "UNetLabLoadSegmentationUNet", {"depth": 2, "base_channels": 4})
    _set_widgets(workflow, "UNetLabTrainSegmentationUNet", {"steps": 2, "batch_size": 2})
    result = Executor(node_classes()).run(workflow)
    assert any("Dice" in " ".join(ui.get("text", [])) for ui in result.outputs.values())
    assert len(_outputs(standalone_host, "unet_lab/unet3plus_overlay")) == 4


def test_volume_workflow_runs_headless_and_saves_one_png_per_slice(standalone_host):
    workflow = _load(WORKFLOW_DIR / "unet_lab_volume_synthetic.json")
    _set_widgets(workflow, "UNetLabSyntheticVolumeData", {"count": 2, "depth": 6, "size": 24}, "Training volumes")
    _set_widgets(workflow, "UNetLabSyntheticVolumeData", {"depth": 6, "size": 24}, "Test volume")
    _set_widgets(workflow, "UNetLabLoadSegmentationUNet", {"depth": 2, "base_channels": 4})
    _set_widgets(workflow, "UNetLabTrainSegmentationUNet", {"steps": 2, "patch_depth": 4, "patch_size": 16,
                                                            "validation_fraction": 0.0})
    result = Executor(node_classes()).run(workflow)
    assert any("Dice" in " ".join(ui.get("text", [])) for ui in result.outputs.values())
    masks = _outputs(standalone_host, "unet_lab/volume_mask")
    assert len(masks) == 6 and np.asarray(Image.open(masks[0]).convert("L")).shape == (24, 24)
    assert len(_outputs(standalone_host, "unet_lab/volume_overlay")) == 6


def test_workflows_that_need_comfyui_are_refused_headless_before_running(standalone_host):
    """The SD workflows use core samplers: the standalone runner names them instead of failing midway."""
    from unet_lab.unet_core.errors import HostError

    workflow = _load(WORKFLOW_DIR / "unet_lab_swap_unet_sd15.json")
    _place_model_files(standalone_host, workflow)
    ran = []
    executor = Executor(node_classes(), on_node=lambda *a: ran.append(a))
    with pytest.raises(HostError) as caught:
        executor.run(workflow)
    assert "KSampler" in str(caught.value) and "CheckpointLoaderSimple" in str(caught.value)
    assert ran == []  # refused before anything ran (not even the Swap UNet node)


def test_validation_here_catches_a_broken_workflow(standalone_host):
    """The checks above can fail: a bad combo value and a link of the wrong type are reported."""
    workflow = _load(WORKFLOW_DIR / "unet_lab_sdxl_turbo_one_step.json")
    _place_model_files(standalone_host, workflow)
    select = next(n for n in workflow["nodes"] if n["type"] == "KSamplerSelect")
    select["widgets_values"][0] = "not_a_sampler"
    executor = Executor(node_classes())
    save_id = str(next(n for n in workflow["nodes"] if n["type"] == "SaveImage")["id"])
    result = executor.validate(*executor.to_prompt(workflow))
    assert save_id not in result.good_outputs  # (the PreviewAny output stays valid, as in ComfyUI)
    assert [e["type"] for e in result.node_errors[str(select["id"])]["errors"]] == ["value_not_in_list"]
    # a VAE output wired into the sampler's latent input
    workflow = _load(WORKFLOW_DIR / "unet_lab_sdxl_turbo_one_step.json")
    vae = next(n for n in workflow["nodes"] if n["type"] == "VAELoader")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "SamplerCustom")
    link = next(link for link in workflow["links"] if link[3] == sampler["id"] and link[5] == "LATENT")
    link[1], link[2] = vae["id"], 0
    result = executor.validate(*executor.to_prompt(workflow))
    assert save_id not in result.good_outputs
    assert "return_type_mismatch" in [e["type"] for e in result.node_errors[str(sampler["id"])]["errors"]]


def test_shipped_files_are_what_the_generator_writes():
    """scripts/make_workflows.py is the source of the workflows it names; the JSON has not drifted from it."""
    module = load_script("scripts/make_workflows.py")
    for name, workflow in module.build_all().items():
        assert _load(WORKFLOW_DIR / f"{name}.json") == workflow, name
