"""The block editor's LoRA family route: the family from a LoRA file's header, in both hosts."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from unet_lab.nodes.host.comfy_routes import register_comfy_routes
from unet_lab.nodes.lora_family_route import ROUTE_PATH, lora_family

BLOCK = "input_blocks_4_1_transformer_blocks_0_attn2_to_k"


def _lora(host, name: str, keys: dict[str, tuple[int, ...]]) -> None:
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in keys.items()},
              str(host.save_directory("loras") / name))


@pytest.mark.parametrize(("width", "family"), [(768, "sd1"), (1024, "sd1"), (2048, "sdxl")])
def test_cross_attention_width_gives_the_editor_family(standalone_host, width, family):
    """SD1 768, SD2 1024 (same block layout as SD1), SDXL 2048 (guess_family's widths)."""
    _lora(standalone_host, "a.safetensors", {f"lora_unet_{BLOCK}.lora_down.weight": (4, width),
                                             f"lora_unet_{BLOCK}.lora_up.weight": (640, 4)})
    assert lora_family("a.safetensors")["family"] == family


def test_peft_keys_and_structure_without_widths(standalone_host):
    _lora(standalone_host, "peft.safetensors", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight": (4, 640)})
    assert lora_family("peft.safetensors")["family"] == "sdxl"  # transformer depth > 1: SDXL


def test_unreadable_or_silent_files_give_no_family(standalone_host):
    (standalone_host.save_directory("loras") / "empty.safetensors").write_bytes(b"")
    answer = lora_family("empty.safetensors")
    assert answer["family"] is None and "empty" in answer["detail"]
    assert lora_family("absent.safetensors")["family"] is None
    _lora(standalone_host, "odd.safetensors", {"something_else": (2, 2)})
    assert lora_family("odd.safetensors") == {"name": "odd.safetensors", "family": None, "detail": "keys do not tell"}


def test_registers_on_comfyui_prompt_server_only_when_one_runs(monkeypatch):
    from aiohttp import web

    monkeypatch.delitem(sys.modules, "server", raising=False)
    assert register_comfy_routes() is False  # no ComfyUI: nothing to do
    routes = web.RouteTableDef()
    server = types.ModuleType("server")
    server.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(routes=routes)})
    monkeypatch.setitem(sys.modules, "server", server)
    assert register_comfy_routes() is True
    assert [(r.method, r.path) for r in routes] == [("GET", ROUTE_PATH)]
