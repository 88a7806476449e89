"""Write the shipped example workflows (UI format 0.4) into ``workflows/``.

    .venv/bin/python scripts/make_workflows.py

Each workflow is described below as nodes with widget values by input name and
links by output/input name; the node schemas (our classes plus the recorded core
``/object_info``) give the ``widgets_values`` layout, socket types and slots, so
the files match what the frontend writes. ``scripts/workflow_layout.py`` places the
nodes. ``unet_lab_segmentation_training.json`` is not built here (the segmentation demo
has its own owner): it is only re-laid out (``RELAYOUT``), its contents kept.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from workflow_layout import layout  # noqa: E402

from pack_support import load_pack  # noqa: E402  (tests/ holds the one pack loader)

log = logging.getLogger("make_workflows")


def schema_set() -> Any:
    load_pack()
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.schemas import SchemaSet, load_core_schemas

    return SchemaSet(node_classes(), load_core_schemas())


# -- the workflow builder --------------------------------------------------------------------------------
class Builder:
    """Collects nodes and links, then lays them out and writes the frontend's 0.4 format."""

    def __init__(self, schemas: Any) -> None:
        self.schemas = schemas
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.pending: list[tuple[int, str, int, str]] = []

    def note(self, text: str) -> int:
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "Note", "widgets": {}, "text": text, "title": None, "column": None})
        return node_id

    def add(self, node_type: str, title: str | None = None, column: int | None = None,
            properties: dict[str, Any] | None = None, **widgets: Any) -> int:
        """A node with widget values by input name; ``column`` overrides its place left to right."""
        if self.schemas.get(node_type) is None:
            raise KeyError(f"unknown node type {node_type}")
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": node_type, "widgets": widgets, "title": title, "column": column,
                           "properties": properties or {}})
        return node_id

    def place(self, column: int, *node_ids: int) -> None:
        """Put nodes in ``column`` (0 = leftmost) instead of the one their links give."""
        for node_id in node_ids:
            self.nodes[node_id - 1]["column"] = column

    def link(self, origin: int, output: str, target: int, input_name: str) -> None:
        self.pending.append((origin, output, target, input_name))

    # -- serialising ------------------------------------------------------------------------------------
    def _schema(self, node: dict[str, Any]) -> Any:
        return self.schemas.get(node["type"])

    def _output_index(self, node: dict[str, Any], name: str) -> tuple[int, str]:
        schema = self._schema(node)
        names = list(schema.output_names or schema.outputs)
        if name in names:
            index = names.index(name)
        else:
            index = list(schema.outputs).index(name)  # by type
        return index, str(schema.outputs[index])

    def _widget_values(self, node: dict[str, Any]) -> list[Any]:
        from unet_lab.unet_core.graph.formats import _SKIP, _default_value, _widget_slots

        schema = self._schema(node)
        specs = {s.name: s for s in schema.inputs.values()}
        unknown = set(node["widgets"]) - set(specs)
        if unknown:
            raise KeyError(f"{node['type']}: no widget inputs {sorted(unknown)}")
        values: list[Any] = []
        previous = None  # the widget a UI-only value follows, if it belongs to it
        for slot in _widget_slots(schema):  # the frontend's layout, UI-only values as _SKIP
            if slot is not _SKIP:
                previous = specs[slot]
                values.append(node["widgets"].get(slot, _default_value(previous)))
            elif previous is not None and previous.type == "INT":
                values.append("fixed")  # control_after_generate of a seed
                previous = None
            elif previous is not None and previous.options.get("control_after_generate"):
                raise NotImplementedError(f"{node['type']}.{previous.name}: combo with control_after_generate")
            else:
                values.append("image")  # the upload button, after the required widgets
        return values

    def build(self) -> dict[str, Any]:
        by_id = {n["id"]: n for n in self.nodes}
        ui_nodes: dict[int, dict[str, Any]] = {}
        for node in self.nodes:
            if node["type"] == "Note":
                ui_nodes[node["id"]] = {"id": node["id"], "type": "Note", "pos": [0, 0], "size": [400, 240],
                                        "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                                        "properties": {"text": ""}, "widgets_values": [node["text"]],
                                        "color": "#432", "bgcolor": "#653"}
                continue
            schema = self._schema(node)
            inputs = [{"name": s.name, "type": s.type_name, "link": None}
                      for s in schema.inputs.values() if not s.is_widget]
            outputs = [{"name": (schema.output_names[i] if schema.output_names else str(t)), "type": str(t),
                        "links": [], "slot_index": i} for i, t in enumerate(schema.outputs)]
            item: dict[str, Any] = {"id": node["id"], "type": node["type"], "pos": [0, 0], "size": [0, 0],
                                    "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs,
                                    "properties": {"Node name for S&R": node["type"], **node["properties"]},
                                    "widgets_values": self._widget_values(node)}
            if node["title"]:
                item["title"] = node["title"]
            ui_nodes[node["id"]] = item
        links: list[list[Any]] = []
        for link_id, (origin, output, target, input_name) in enumerate(self.pending, start=1):
            slot, kind = self._output_index(by_id[origin], output)
            target_node = ui_nodes[target]
            names = [e["name"] for e in target_node["inputs"]]
            if input_name not in names:  # a widget input fed by a link keeps its widget slot
                spec = self._schema(by_id[target]).inputs[input_name]
                target_node["inputs"].append({"name": input_name, "type": spec.type_name,
                                              "widget": {"name": input_name}, "link": None})
                names.append(input_name)
            to_slot = names.index(input_name)
            target_node["inputs"][to_slot]["link"] = link_id
            ui_nodes[origin]["outputs"][slot]["links"].append(link_id)
            links.append([link_id, origin, slot, target, to_slot, kind])
        for node in ui_nodes.values():
            for output in node["outputs"]:
                if not output["links"]:
                    output["links"] = None
        workflow = {"last_node_id": max(ui_nodes), "last_link_id": len(links), "nodes": list(ui_nodes.values()),
                    "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
        columns = {n["id"]: n["column"] for n in self.nodes if n["column"] is not None}
        layout(workflow, self.schemas, columns)
        return workflow



# -- the workflows ---------------------------------------------------------------------------------------
def sdxl_turbo(b: Builder) -> None:
    note = b.note("UNet Lab: SDXL-Turbo from a UNet-only file, one step.\n\nModel files:\n"
           "- models/diffusion_models/sdxl_turbo_unet.safetensors: the SDXL-Turbo UNet (UNet-only, e.g. "
           "written by Save UNet from sd_xl_turbo_1.0_fp16.safetensors)\n"
           "- models/text_encoders/clip_l.safetensors and clip_g.safetensors: the SDXL text encoders\n"
           "- models/vae/sdxl_vae.safetensors: the SDXL VAE\n\n"
           "SDXL-Turbo samples at 512x512 in 1-4 steps with cfg 1.0 (SDTurboScheduler + SamplerCustom); "
           "the negative prompt has no effect at cfg 1."
           "\n\nAccelerate UNet runs the UNet through CUDA graphs: the first step at a new latent size, batch or patch setting is recorded, later steps replay it in one launch. Small latents (Turbo, SD1.5 at 512 px) are bound by kernel launches, so each step gets faster with outputs identical to the plain model. LoRA, the skip gate and strength changes are picked up (a new recording). It does nothing on the CPU and runs normally, saying why in the log, when ComfyUI loads the model only partially (low VRAM). Each recorded size holds some GPU memory; set enabled to false to compare.")
    unet = b.add("UNetLabLoadUNet", unet_name="sdxl_turbo_unet.safetensors", weight_dtype="default",
                 prediction="auto")
    clip = b.add("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="clip_g.safetensors",
                 type="sdxl", device="default")
    vae = b.add("VAELoader", vae_name="sdxl_vae.safetensors")
    pos = b.add("CLIPTextEncode", title="Positive", text="a watercolor fox in a snowy birch forest, soft light")
    neg = b.add("CLIPTextEncode", title="Negative (unused at cfg 1)", text="")
    sched = b.add("SDTurboScheduler", steps=1, denoise=1.0)
    sampler = b.add("KSamplerSelect", sampler_name="euler_ancestral")
    latent = b.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    sample = b.add("SamplerCustom", add_noise=True, noise_seed=0, cfg=1.0)
    decode = b.add("VAEDecode")
    save = b.add("SaveImage", filename_prefix="unet_lab/sdxl_turbo")
    info = b.add("PreviewAny", title="UNet file info")
    b.link(clip, "CLIP", pos, "clip")
    b.link(clip, "CLIP", neg, "clip")
    accel = b.add("UNetLabAccelerateUNet", enabled=True, compile=False, max_graphs=4)
    b.link(unet, "model", accel, "model")
    b.link(unet, "model", sched, "model")
    b.link(accel, "model", sample, "model")
    b.link(pos, "CONDITIONING", sample, "positive")
    b.link(neg, "CONDITIONING", sample, "negative")
    b.link(sampler, "SAMPLER", sample, "sampler")
    b.link(sched, "SIGMAS", sample, "sigmas")
    b.link(latent, "LATENT", sample, "latent_image")
    b.link(sample, "output", decode, "samples")
    b.link(vae, "VAE", decode, "vae")
    b.link(decode, "IMAGE", save, "images")
    b.link(unet, "info", info, "source")
    b.place(3, note)
    b.place(2, latent)


def _text_to_image(b: Builder, model: tuple[int, str], ckpt: int, size: int, steps: int, cfg: float,
                   prompt: str, prefix: str, sampler: str = "euler", scheduler: str = "normal") -> dict[str, int]:
    pos = b.add("CLIPTextEncode", title="Positive", text=prompt)
    neg = b.add("CLIPTextEncode", title="Negative", text="blurry, low quality, watermark")
    latent = b.add("EmptyLatentImage", width=size, height=size, batch_size=1)
    ks = b.add("KSampler", seed=0, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0)
    decode = b.add("VAEDecode")
    save = b.add("SaveImage", filename_prefix=prefix)
    b.link(ckpt, "CLIP", pos, "clip")
    b.link(ckpt, "CLIP", neg, "clip")
    b.link(model[0], model[1], ks, "model")
    b.link(pos, "CONDITIONING", ks, "positive")
    b.link(neg, "CONDITIONING", ks, "negative")
    b.link(latent, "LATENT", ks, "latent_image")
    b.link(ks, "LATENT", decode, "samples")
    b.link(ckpt, "VAE", decode, "vae")
    b.link(decode, "IMAGE", save, "images")
    return {"pos": pos, "neg": neg, "latent": latent, "ks": ks, "decode": decode, "save": save}


def swap_unet_sd15(b: Builder) -> None:
    b.note("UNet Lab: run an SD1.5 checkpoint with a fine-tuned UNet swapped in (text encoder and VAE stay "
           "the checkpoint's).\n\nModel files:\n"
           "- models/checkpoints/v1-5-pruned-emaonly.safetensors: any SD1.5 checkpoint\n"
           "- models/diffusion_models/sd15_finetuned_unet.safetensors: a UNet-only SD1.5 file (LDM or "
           "diffusers layout)\n\n"
           "Inspect UNet reads only the file's header and says what it is before anything loads."
           "\n\nAccelerate UNet runs the UNet through CUDA graphs: the first step at a new latent size, batch or patch setting is recorded, later steps replay it in one launch. Small latents (Turbo, SD1.5 at 512 px) are bound by kernel launches, so each step gets faster with outputs identical to the plain model. LoRA, the skip gate and strength changes are picked up (a new recording). It does nothing on the CPU and runs normally, saying why in the log, when ComfyUI loads the model only partially (low VRAM). Each recorded size holds some GPU memory; set enabled to false to compare.")
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    swap = b.add("UNetLabSwapUNet", unet_name="sd15_finetuned_unet.safetensors")
    b.add("UNetLabInspectUNet", file="diffusion_models/sd15_finetuned_unet.safetensors")
    accel = b.add("UNetLabAccelerateUNet", enabled=True, compile=False, max_graphs=4)
    b.link(ckpt, "MODEL", swap, "model")
    b.link(swap, "model", accel, "model")
    _text_to_image(b, (accel, "model"), ckpt, 512, 20, 7.0, "a lighthouse on a cliff at dusk, oil painting",
                   "unet_lab/swap_unet_sd15")
    info = b.add("PreviewAny", title="Swap notes")
    b.link(swap, "info", info, "source")


def lora_block_weights_sdxl(b: Builder) -> None:
    b.note("UNet Lab: an SDXL LoRA applied with per-block weights (UNet only; the text encoder is "
           "untouched).\n\nModel files:\n"
           "- models/checkpoints/sd_xl_base_1.0.safetensors: an SDXL checkpoint\n"
           "- models/loras/sdxl_style_lora.safetensors: an SDXL LoRA (kohya, diffusers/PEFT or LyCORIS "
           "LoCon/LoHa/LoKr)\n\n"
           "Block spec: IN00-08, M00, OUT00-08 (SDXL); 'default=' sets the rest. Here the input blocks are "
           "weakened and the middle of the decoder (where style lives) kept.")
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors")
    lora = b.add("UNetLabApplyLoRABlockWeights", properties={"unetlab_family": "sdxl"},
                 lora_name="sdxl_style_lora.safetensors", strength=1.0,
                 preset="none (use block spec)",
                 block_spec="default=1, IN=0.5, M00=1, OUT00-02=0.8, OUT03-05=1, OUT06-08=0.6")
    b.link(ckpt, "MODEL", lora, "model")
    t2i = _text_to_image(b, (lora, "model"), ckpt, 1024, 25, 7.0, "a cozy reading nook, warm light, detailed",
                         "unet_lab/lora_block_weights_sdxl", sampler="euler_ancestral", scheduler="normal")
    report = b.add("PreviewAny", title="LoRA report")
    b.link(lora, "report", report, "source")
    b.place(2, t2i["pos"], t2i["neg"])
    b.place(3, t2i["ks"], report)
    b.place(4, t2i["decode"], t2i["save"])


def skip_attention_gates(b: Builder) -> None:
    b.note("UNet Lab: attention gates on the SD1.5 UNet's skip connections, composed with FreeU_V2; the "
           "gate maps of the run are shown as images.\n\nModel files:\n"
           "- models/checkpoints/v1-5-pruned-emaonly.safetensors: any SD1.5 checkpoint\n\n"
           "Strength 0 leaves the model unchanged. Gate weights 'none' is the parameter-free gate; trained "
           "gate files go in models/unet_gates. Skip Gate Maps waits for the sampled latent, so it reads the "
           "maps recorded during that run.")
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    gate = b.add("UNetLabSkipAttentionGate", strength=0.5, levels="all", level_strengths="", floor=0.0,
                 apply_to="both", sharpness=1.0, gate_weights="none (parameter-free)", record_maps=True)
    freeu = b.add("FreeU_V2", b1=1.5, b2=1.6, s1=0.9, s2=0.2)
    b.link(ckpt, "MODEL", gate, "model")
    b.link(gate, "model", freeu, "model")
    t2i = _text_to_image(b, (freeu, "MODEL"), ckpt, 512, 20, 7.0, "a red bicycle leaning on a brick wall, photo",
                         "unet_lab/skip_attention_gates")
    ks = t2i["ks"]
    maps = b.add("UNetLabSkipGateMaps", levels="all", passes="cond", combine="mean", size="image")
    to_image = b.add("MaskToImage")
    preview = b.add("PreviewImage", title="Gate maps")
    report = b.add("PreviewAny", title="Gate report")
    b.link(gate, "gate_maps", maps, "gate_maps")
    b.link(ks, "LATENT", maps, "samples")
    b.link(maps, "masks", to_image, "mask")
    b.link(to_image, "IMAGE", preview, "images")
    b.link(gate, "report", report, "source")
    b.place(1, gate, freeu)
    b.place(2, t2i["pos"], t2i["neg"], report)
    b.place(3, ks, t2i["decode"], t2i["save"])
    b.place(4, maps, to_image, preview)


def segment_image(b: Builder) -> None:
    b.note("UNet Lab: segment an image with a trained segmentation U-Net.\n\nModel files:\n"
           "- models/unet_segmentation/my_segmentation_unet.safetensors: a segmentation U-Net (trained by "
           "Train Segmentation U-Net, a milesial Pytorch-UNet .pth or an smp state dict / save_pretrained "
           "folder)\n- input/cells.png: the image to segment (upload it on Load Image)\n\n"
           "Large images are segmented in overlapping tiles. The mask and the overlay are saved as PNGs.")
    image = b.add("LoadImage", image="cells.png")
    model = b.add("UNetLabLoadSegmentationUNet", model_name="my_segmentation_unet.safetensors", depth=3,
                  base_channels=16, classes=1, seed=0)
    seg = b.add("UNetLabSegmentImage", tile_size=512, overlap=0.25, flip_tta=False, threshold=-1.0,
                class_mode="foreground", blend="gaussian")
    to_image = b.add("MaskToImage")
    save_mask = b.add("SaveImage", title="Save mask", filename_prefix="unet_lab/segment_mask")
    save_overlay = b.add("SaveImage", title="Save overlay", filename_prefix="unet_lab/segment_overlay")
    b.link(model, "seg_unet", seg, "seg_unet")
    b.link(image, "IMAGE", seg, "image")
    b.link(seg, "mask", to_image, "mask")
    b.link(to_image, "IMAGE", save_mask, "images")
    b.link(seg, "overlay", save_overlay, "images")


def train_segmentation_pairs(b: Builder) -> None:
    b.note("UNet Lab: train a segmentation U-Net on your own image/mask pairs, then segment an image.\n\n"
           "Files:\n- input/my_pairs/: the training pairs, image.tif with masks/image.tif (or image_mask.tif "
           "beside it), 8/16-bit PNG or TIFF; masks are 0 = background, anything else = foreground (label "
           "images with one id per object work as they are)\n"
           "- input/cells.tif: the image to segment (8/16-bit PNG or TIFF)\n"
           "- no model file needed: '(new) unet' builds a fresh U-Net; the trained one is saved to "
           "models/unet_segmentation/unet_lab/pairs_segmentation_NNNNN.safetensors\n\n"
           "Training takes 500 steps of 8 random 128 px patches (a third centred on objects). With three "
           "256 x 256 pairs (three quadrants of a 512 x 512 nuclei image) it finished in 73-81 s on 2 CPU "
           "threads, the whole workflow included; a CUDA GPU trains in bf16 in seconds. Every pair trains (validation_fraction 0); set it to "
           "0.2 to hold out a fifth of the pairs (at least one; a strip of the image when there is only one) "
           "and get their Dice in the training report.")
    model = b.add("UNetLabLoadSegmentationUNet", model_name="(new) unet", depth=3, base_channels=8, classes=1,
                  seed=0)
    train = b.add("UNetLabTrainSegmentationUNet", steps=500, batch_size=8, learning_rate=0.01, schedule="cosine",
                  loss="ce+dice", augmentation="flips+rotations+brightness", border_weights=False,
                  validation_fraction=0.0, seed=0, filename_prefix="unet_lab/pairs_segmentation",
                  folder="my_pairs", patch_size=0, foreground_oversampling=0.33, speed="auto")
    image = b.add("UNetLabLoadImageScientific", image="cells.tif", channel="all", normalization="percentile",
                  low_percentile=1.0, high_percentile=99.8)
    seg = b.add("UNetLabSegmentImage", tile_size=512, overlap=0.25, flip_tta=True, threshold=-1.0,
                class_mode="foreground", blend="gaussian")
    to_image = b.add("MaskToImage")
    save_mask = b.add("SaveImage", title="Save mask", filename_prefix="unet_lab/pairs_mask")
    save_overlay = b.add("SaveImage", title="Save overlay", filename_prefix="unet_lab/pairs_overlay")
    b.link(model, "seg_unet", train, "seg_unet")
    b.link(train, "seg_unet", seg, "seg_unet")
    b.link(image, "image", seg, "image")
    b.link(seg, "mask", to_image, "mask")
    b.link(to_image, "IMAGE", save_mask, "images")
    b.link(seg, "overlay", save_overlay, "images")


def train_pixel_diffusion_shapes(b: Builder) -> None:
    b.note("UNet Lab: train a tiny pixel-space diffusion U-Net (DDPM family) on synthetic shapes, then sample "
           "it.\n\nNo model or input files needed: Synthetic Shapes draws 512 seeded 32 px images (a disc, square "
           "or triangle each); Train Pixel Diffusion U-Net trains the tiny model from scratch and saves it to "
           "models/diffusion_models/unet_lab/pixel_shapes_NNNNN_.safetensors; Sample Pixel Diffusion draws 16 "
           "images with 50 DDIM steps (previews every 5). About 9 minutes on two CPU cores (the training; "
           "sampling takes seconds), under a minute on a GPU; more training steps give crisper shapes. Load the saved file later with Load Pixel Diffusion U-Net.")
    shapes = b.add("UNetLabSyntheticShapes", count=512, size=32, seed=0)
    train = b.add("UNetLabTrainPixelDiffusionUNet", model_size="tiny (32-64-64, 1.1 M)", steps=1500, batch_size=32,
                  learning_rate=0.001, ema_decay=0.995, seed=0, size=32,
                  filename_prefix="unet_lab/pixel_shapes", folder="")
    sample = b.add("UNetLabSamplePixelDiffusion", sampler="ddim", steps=50, eta=0.0, seed=0, batch_size=16, size=0,
                   class_label=-1, guidance=1.0, schedule="auto", preview_every=5)
    save = b.add("SaveImage", title="Save samples", filename_prefix="unet_lab/pixel_shapes")
    b.link(shapes, "images", train, "images")
    b.link(train, "pixel_unet", sample, "pixel_unet")
    b.link(sample, "images", save, "images")


def unet3plus_synthetic(b: Builder) -> None:
    b.note("UNet Lab: train a U-Net 3+ (full-scale skip connections) on synthetic data, then segment a held-out "
           "set.\n\nFiles: none needed. Synthetic Segmentation Data makes the training and test images; "
           "'(new) unet3plus' builds a fresh U-Net 3+; the trained one is saved to "
           "models/unet_segmentation/unet_lab/unet3plus_synthetic_NNNNN.safetensors.\n\n"
           "The report gives the Dice against the test masks; the overlay is saved as PNGs.")
    train_data = b.add("UNetLabSyntheticSegmentationData", title="Training data", count=64, size=64, seed=0,
                       split="train")
    test_data = b.add("UNetLabSyntheticSegmentationData", title="Test data", count=8, size=64, seed=0, split="test")
    model = b.add("UNetLabLoadSegmentationUNet", model_name="(new) unet3plus", depth=3, base_channels=16,
                  classes=1, seed=0)
    train = b.add("UNetLabTrainSegmentationUNet", steps=150, batch_size=8, learning_rate=0.003, schedule="cosine",
                  loss="ce+dice", augmentation="flips+rotations+brightness", border_weights=False,
                  validation_fraction=0.2, seed=0, filename_prefix="unet_lab/unet3plus_synthetic")
    seg = b.add("UNetLabSegmentImage", tile_size=512, overlap=0.25, flip_tta=False, threshold=-1.0,
                class_mode="foreground", blend="gaussian")
    save_overlay = b.add("SaveImage", title="Save overlay", filename_prefix="unet_lab/unet3plus_overlay")
    b.link(model, "seg_unet", train, "seg_unet")
    b.link(train_data, "images", train, "images")
    b.link(train_data, "masks", train, "masks")
    b.link(train, "seg_unet", seg, "seg_unet")
    b.link(test_data, "images", seg, "image")
    b.link(test_data, "masks", seg, "ground_truth")
    b.link(seg, "overlay", save_overlay, "images")


def volume_synthetic(b: Builder) -> None:
    b.note("UNet Lab: train a 3D U-Net on synthetic volumes, segment a held-out volume and save its mask "
           "stack.\n\nFiles: none needed. Synthetic Volume Data makes textured 3D blobs and tubes; "
           "'(new) unet3d' builds a fresh 3D U-Net; the trained one is saved to "
           "models/unet_segmentation/unet_lab/unet3d_synthetic_NNNNN.safetensors.\n\n"
           "The mask stack is saved as one PNG per slice; the report gives the Dice.")
    train_data = b.add("UNetLabSyntheticVolumeData", title="Training volumes", count=6, depth=32, size=64, seed=0,
                       split="train")
    test_data = b.add("UNetLabSyntheticVolumeData", title="Test volume", count=1, depth=32, size=64, seed=0,
                      split="test")
    model = b.add("UNetLabLoadSegmentationUNet", model_name="(new) unet3d", depth=3, base_channels=8, classes=1,
                  seed=0)
    train = b.add("UNetLabTrainSegmentationUNet", steps=80, batch_size=2, learning_rate=0.003, schedule="cosine",
                  loss="ce+dice", augmentation="flips+rotations+brightness", border_weights=False,
                  validation_fraction=0.2, seed=0, filename_prefix="unet_lab/unet3d_synthetic", patch_depth=16,
                  patch_size=48)
    seg = b.add("UNetLabSegmentVolume", patch_depth=32, patch_size=64, overlap=0.25, threshold=-1.0, window_batch=2)
    to_image = b.add("MaskToImage")
    save_mask = b.add("SaveImage", title="Save mask slices", filename_prefix="unet_lab/volume_mask")
    save_overlay = b.add("SaveImage", title="Save overlay slices", filename_prefix="unet_lab/volume_overlay")
    b.link(model, "seg_unet", train, "seg_unet")
    b.link(train_data, "volumes", train, "images")
    b.link(train_data, "masks", train, "masks")
    b.link(train_data, "depth", train, "volume_depth")
    b.link(train, "seg_unet", seg, "seg_unet")
    b.link(test_data, "volumes", seg, "volume")
    b.link(test_data, "masks", seg, "ground_truth")
    b.link(seg, "mask", to_image, "mask")
    b.link(to_image, "IMAGE", save_mask, "images")
    b.link(seg, "overlay", save_overlay, "images")


WORKFLOWS = {
    "unet_lab_sdxl_turbo_one_step": sdxl_turbo,
    "unet_lab_swap_unet_sd15": swap_unet_sd15,
    "unet_lab_lora_block_weights_sdxl": lora_block_weights_sdxl,
    "unet_lab_skip_attention_gates": skip_attention_gates,
    "unet_lab_segment_image": segment_image,
    "unet_lab_train_segmentation_pairs": train_segmentation_pairs,
    "unet_lab_train_pixel_diffusion_shapes": train_pixel_diffusion_shapes,
    "unet_lab_unet3plus_synthetic": unet3plus_synthetic,
    "unet_lab_volume_synthetic": volume_synthetic,
}


# Shipped workflows built elsewhere: only their layout is made here (node ids -> column overrides).
RELAYOUT: dict[str, dict[int, int]] = {"unet_lab_segmentation_training": {5: 1}}


def build_all() -> dict[str, dict[str, Any]]:
    """Every workflow this script owns the layout of, by file stem."""
    schemas = schema_set()
    result = {}
    for name, describe in WORKFLOWS.items():
        builder = Builder(schemas)
        describe(builder)
        result[name] = builder.build()
    for name, columns in RELAYOUT.items():
        workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
        layout(workflow, schemas, columns)
        result[name] = workflow
    return result


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = REPO_ROOT / "workflows"
    for name, workflow in build_all().items():
        path = out / f"{name}.json"
        write_atomic(path, json.dumps(workflow, indent=2) + "\n")
        log.info("wrote %s", path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
