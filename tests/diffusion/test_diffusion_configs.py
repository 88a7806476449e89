"""ComfyUI's unet_config dicts (LDM constructor arguments) -> our UNetConfig, and the SDXL ADM vector."""

from __future__ import annotations

import math

import torch

from unet_lab.unet_core.diffusion.embeddings import sdxl_adm_embedding, timestep_embedding
from unet_lab.unet_core.diffusion.ldm_config import config_from_ldm_unet_config
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG

# What comfy.model_detection.detect_unet_config reports for the real files (ComfyUI 0.3.64 source).
COMFY_SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
              "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
              "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
              "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
COMFY_SD21 = dict(COMFY_SD15, use_linear_in_transformer=True, context_dim=1024, num_heads=-1, num_head_channels=64)
COMFY_SDXL = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
              "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
              "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
              "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}


def test_comfy_unet_configs_map_to_ours():
    assert config_from_ldm_unet_config(COMFY_SD15) == SD1_CONFIG
    assert config_from_ldm_unet_config(COMFY_SD21) == SD2_CONFIG
    assert config_from_ldm_unet_config(COMFY_SDXL) == SDXL_CONFIG
    inpaint = config_from_ldm_unet_config(dict(COMFY_SD15, in_channels=9))
    assert inpaint == SD1_CONFIG.with_(in_channels=9)


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = timestep_embedding(t, 8)
    for row, tv in enumerate(t.tolist()):
        for i in range(4):
            f = math.exp(-math.log(10000.0) * i / 4)
            assert abs(emb[row, i].item() - math.cos(tv * f)) < 1e-5
            assert abs(emb[row, 4 + i].item() - math.sin(tv * f)) < 1e-5


def test_sdxl_adm_vector_is_2816_wide_for_the_real_model():
    y = sdxl_adm_embedding(torch.randn(2, 1280), torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2))
    assert y.shape == (2, 2816)
    torch.testing.assert_close(y[:, 1280:1280 + 256], timestep_embedding(torch.tensor([1024.0, 1024.0]), 256))
