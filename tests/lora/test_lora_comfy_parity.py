"""Parity with a real ComfyUI's LoRA code (optional: needs a ComfyUI source tree).

Set ``UNET_LAB_COMFYUI=/path/to/ComfyUI`` (its Python deps einops and psutil importable) to run.
In a subprocess (ComfyUI's imports must not leak into this one) it checks, for every format on
reduced SD1 and SDXL models:
- ``comfy.lora.load_lora`` with our key map yields ComfyUI's own adapters for every module we
  resolved, and ``comfy.lora.calculate_weight`` with them equals our standalone patches;
- ``ComfyHost.add_lora_patches`` on ComfyUI's real ``ModelPatcher``: ``patch_model`` merges what the
  standalone patcher bakes, ``unpatch_model`` restores the weights, the input patcher takes no
  patch, and ``ComfyHost.bake_lora_patches`` (run while patched) computes the same baked weights;
- every key core ComfyUI maps (``comfy.lora.model_lora_keys_unet``) maps to the same target in
  ours, with the same result (so with all block weights at 1 we equal LoraLoaderModelOnly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pack_support import REPO_ROOT

COMFY = os.environ.get("UNET_LAB_COMFYUI")

_SCRIPT = r"""
import json, sys, types
comfy_root, repo, tests = sys.argv[1:4]
from diffusers import UNet2DConditionModel  # noqa: F401  (before the torchvision stub below)

class _Any(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        m = _Any(self.__name__ + "." + name); sys.modules[m.__name__] = m; return m
    def __call__(self, *a, **k):
        return self
for name in ("torchvision", "torchvision.transforms"):
    sys.modules.setdefault(name, _Any(name))
sys.argv = ["comfy", "--cpu"]
sys.path[:0] = [comfy_root, tests]
import comfy.options; comfy.options.enable_args_parsing()
import comfy.lora
import torch
torch.set_num_threads(1)
from pack_support import load_pack; load_pack()
from fixtures_lora import FORMATS, make_lora, make_model, model_maps
from unet_lab.unet_core.lora.plan import model_names, plan_lora

class Fake:
    def __init__(self, shapes, cfg):
        self._sd = {"diffusion_model." + k: torch.empty(0) for k in shapes}
        self.model_config = types.SimpleNamespace(unet_config=cfg)
    def state_dict(self):
        return self._sd

out = {}
for family in ("sd1", "sdxl"):
    model = make_model(family)
    shapes, l2d = model_maps(model)
    cfg = model.config
    L = cfg.layers_per_block
    depth = list(cfg.transformer_layers_per_block)
    comfy_cfg = {"num_res_blocks": [L] * cfg.num_levels, "channel_mult": [1] * cfg.num_levels,
                 "transformer_depth": [d for d in depth for _ in range(L)],
                 "transformer_depth_output": [d for d in depth for _ in range(L + 1)],
                 "transformer_depth_middle": cfg.mid_transformer_layers}
    core_map = comfy.lora.model_lora_keys_unet(Fake(shapes, comfy_cfg), {})
    names = model_names(shapes, cfg)
    for fmt in FORMATS:
        sd, _ = make_lora(shapes, l2d, fmt)
        plan = plan_lora(sd, names, cfg, family, 1.0, "", None, fmt)
        ours = {k: v for g in plan.groups for k, v in g.patches.items()}
        comfy_ours = comfy.lora.load_lora(sd, plan.key_map, log_missing=False)
        core = comfy.lora.load_lora(sd, core_map, log_missing=False)
        err = 0.0
        for key, patch in ours.items():
            w = torch.randn(shapes[key[16:]])
            a = comfy.lora.calculate_weight([(0.7, comfy_ours[key], 1.0, None, None)], w.clone(), key)
            b = w + 0.7 * patch[1][0] if isinstance(patch, tuple) else patch.calculate_weight(w.clone(), key, 0.7, 1.0, None, None)
            err = max(err, (a - b).abs().max().item())
        core_err = 0.0
        for key in core:
            w = torch.randn(shapes[key[16:]])
            a = comfy.lora.calculate_weight([(0.7, core[key], 1.0, None, None)], w.clone(), key)
            b = comfy.lora.calculate_weight([(0.7, comfy_ours[key], 1.0, None, None)], w.clone(), key)
            core_err = max(core_err, (a - b).abs().max().item())
        out[f"{family}/{fmt}"] = {"ours": len(ours), "comfy_with_our_map": len(comfy_ours), "core": len(core),
                                  "same_keys": set(ours) == set(comfy_ours), "core_subset": set(core) <= set(ours),
                                  "err": err, "core_err": core_err}
# Our ComfyHost methods on ComfyUI's real ModelPatcher: patch/unpatch and bake equal the standalone path.
import comfy.model_patcher
from unet_lab.nodes.host.comfy import ComfyHost
from unet_lab.nodes.host.standalone import StandaloneHost
comfy.sd = sys.modules["comfy.sd"] = types.ModuleType("comfy.sd")   # the real one needs transformers
captured = {}
comfy.sd.load_diffusion_model_state_dict = lambda sd, model_options=None: captured.update(sd) or "MODEL"
for family, fmt in (("sd1", "kohya"), ("sdxl", "peft"), ("sdxl", "loha_cp"), ("sd1", "dora")):
    model = make_model(family)
    shapes, l2d = model_maps(model)
    sd, _ = make_lora(shapes, l2d, fmt)
    plan = plan_lora(sd, model_names(shapes, model.config), model.config, family, 0.8,
                     "default=1, IN=0.5, OUT04=0, M00=2", None, fmt)
    mp = comfy.model_patcher.ModelPatcher(model.model, load_device=torch.device("cpu"),
                                          offload_device=torch.device("cpu"))
    before = {k: v.clone() for k, v in mp.model.state_dict().items()}
    patched, applied = ComfyHost().add_lora_patches(mp, sd, plan)
    untouched = not mp.patches
    patched.patch_model()
    merged = {k: v.clone() for k, v in patched.model.state_dict().items()}
    captured.clear()
    ComfyHost().bake_lora_patches(patched)          # while patched: must start from the originals
    patched.unpatch_model()
    restored = all(torch.equal(before[k], v) for k, v in mp.model.state_dict().items())
    baked = StandaloneHost(device="cpu").add_lora_patches(model, sd, plan)[0].baked_state_dict()
    err = max((merged["diffusion_model." + k] - v).abs().max().item() for k, v in baked.items())
    bake_err = max((captured[k] - v).abs().max().item() for k, v in baked.items())
    out[f"patcher/{family}/{fmt}"] = {"same_keys": untouched and restored and len(applied) > 0,
                                      "core_subset": True, "err": err, "core_err": bake_err}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(not COMFY or not (Path(COMFY or ".") / "comfy" / "lora.py").exists(),
                    reason="set UNET_LAB_COMFYUI to a ComfyUI source tree to run")
def test_comfyui_adapters_and_core_key_map_agree_with_ours():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, COMFY, str(REPO_ROOT), str(REPO_ROOT / "tests")],
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    for name, r in result.items():
        assert r["same_keys"] and r["core_subset"], (name, r)
        assert r["err"] < 1e-5 and r["core_err"] < 1e-5, (name, r)
    # PEFT attention keys: core ComfyUI maps only part of them; ours maps all.
    assert result["sd1/peft"]["core"] < result["sd1/peft"]["ours"]
    assert result["sdxl/peft_base_model"]["core"] == 0
