"""Our pixel U-Net against diffusers' UNet2DModel with the same weights, and on guided-diffusion's layouts.

diffusers configs are the google/ddpm releases' ``unet/config.json`` (cifar10-32 and the 256 px
family: celebahq, church, bedroom, cat), with widths divided by 4 for CI and at full size in
slow tests. guided-diffusion files carry no config: their key/shape tables were recorded once
from openai/guided-diffusion's ``UNetModel`` built with the README's flags (64x64
class-conditional: ``--num_channels 192 --num_res_blocks 3 --attention_resolutions 32,16,8
--num_head_channels 64 --resblock_updown --use_new_attention_order --use_scale_shift_norm
--learn_sigma --class_cond``; 256x256 unconditional: ``--num_channels 256 --num_res_blocks 2
--attention_resolutions 32,16,8 --num_head_channels 64 --resblock_updown --use_scale_shift_norm
--learn_sigma``) as ``sha256(json.dumps(sorted(state_dict shapes as lists)))``, tensor count and
parameter count; the script: ``{k: tuple(v.shape) for k, v in UNetModel(...).state_dict().items()}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from unet_lab.unet_core.checkpoints.pixel_infer import config_from_diffusers_json, infer_config
from unet_lab.unet_core.pixel_diffusion.keymap import canonical_to_diffusers, diffusers_to_canonical
from unet_lab.unet_core.pixel_diffusion.model import PixelUNet
from unet_lab.unet_core.pixel_unet_config import (
    DDPM_256,
    DDPM_CIFAR10_32,
    GUIDED_64_COND,
    GUIDED_256_UNCOND,
    PixelUNetConfig,
)

CIFAR10_JSON = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
CELEBAHQ_JSON = {**CIFAR10_JSON, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
                 "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                      "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]}
GUIDED_RECORDED = {  # from openai/guided-diffusion UNetModel (see the module docstring)
    "64_cond": (GUIDED_64_COND, 541, 295_904_454, "4c7cc457c29f5bfe091b56bd9504a4f2a91d6aee57e16a6f982b17f29ee3edbb"),
    "256_uncond": (GUIDED_256_UNCOND, 566, 552_814_086,
                   "85a06372a246b9bf22c61bd49e151f71a9fe839ccd065f8d7bb71be3900183f6"),
}


def _reduced(data: dict, divisor: int = 4) -> dict:
    return {**data, "block_out_channels": [c // divisor for c in data["block_out_channels"]], "norm_num_groups": 8}


def _diffusers_model(config_json: dict, seed: int = 0):
    diffusers = pytest.importorskip("diffusers")
    kwargs = {k: v for k, v in config_json.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():   # zero-initialised output convs would hide half the network
            p.normal_(0, 0.04)
    return model


def _ours(config: PixelUNetConfig, diff_state: dict) -> PixelUNet:
    with torch.device("meta"):
        ours = PixelUNet(config)
    ours.load_state_dict(diffusers_to_canonical(diff_state, config), strict=True, assign=True)
    return ours.eval()


def _parity(config_json: dict, size: int, batch: int = 2, **extra) -> None:
    ref = _diffusers_model(config_json)
    config = config_from_diffusers_json(config_json)
    ours = _ours(config, ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, size, size, generator=g)
    t = torch.tensor([999, 17, 500, 0][:batch])
    with torch.no_grad():
        expected = ref(x, t, **extra).sample
        got = ours(x, t, extra.get("class_labels"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 0.03   # a real signal, not two zeros


@pytest.mark.parametrize(("name", "data", "size"), [("cifar10-32", CIFAR10_JSON, 32),
                                                     ("celebahq-256", CELEBAHQ_JSON, 32)])
def test_reduced_ddpm_configs_equal_diffusers(name, data, size):
    _parity(_reduced(data), size)


def test_published_configs_read_from_config_json():
    assert dataclasses.replace(config_from_diffusers_json(CIFAR10_JSON)) == DDPM_CIFAR10_32
    assert config_from_diffusers_json(CELEBAHQ_JSON) == DDPM_256


@pytest.mark.parametrize("variant", ["scale_shift_classes_heads", "fourier", "learned_sigma_center"])
def test_diffusers_options_equal_diffusers(variant):
    base = _reduced(CIFAR10_JSON)
    extra = {}
    if variant == "scale_shift_classes_heads":
        data = {**base, "resnet_time_scale_shift": "scale_shift", "num_class_embeds": 10, "attention_head_dim": 16,
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
        extra = {"class_labels": torch.tensor([3, 9])}
    elif variant == "fourier":
        data = {**base, "time_embedding_type": "fourier", "flip_sin_to_cos": True, "freq_shift": 0}
    else:
        data = {**base, "out_channels": 6, "center_input_sample": True, "mid_block_scale_factor": 1.4142}
    if variant == "fourier":
        ref = _diffusers_model(data)
        config = config_from_diffusers_json(data)
        ours = _ours(config, ref.state_dict())
        x, sigmas = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 40.0])
        with torch.no_grad():
            torch.testing.assert_close(ours(x, sigmas), ref(x, sigmas).sample, rtol=0, atol=1e-5)
        return
    _parity(data, 32, **extra)


@pytest.mark.parametrize("data", [CIFAR10_JSON, CELEBAHQ_JSON])
def test_diffusers_keys_round_trip_and_infer(data):
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.UNet2DModel(**{k: v for k, v in data.items() if not k.startswith("_")})
    state = ref.state_dict()
    config = config_from_diffusers_json(data)
    canonical = diffusers_to_canonical(state, config)
    with torch.device("meta"):
        ours = PixelUNet(config)
    assert {k: tuple(v.shape) for k, v in canonical.items()} == {k: tuple(v.shape) for k, v in
                                                                 ours.state_dict().items()}
    assert set(canonical_to_diffusers(canonical, config)) == set(state)
    inferred, layout, note = infer_config({k: tuple(v.shape) for k, v in state.items()})
    assert layout == "diffusers" and inferred == dataclasses.replace(config, image_size=None)
    assert "by rule" in note


def test_old_diffusers_attention_names_load():
    """google/ddpm files were saved before diffusers 0.14: query/key/value/proj_attn."""
    ref = _diffusers_model(_reduced(CIFAR10_JSON))
    state = {}
    for k, v in ref.state_dict().items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, old)
        state[k] = v
    config = config_from_diffusers_json(_reduced(CIFAR10_JSON))
    ours = _ours(config, state)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, torch.tensor([5])), ref(x, torch.tensor([5])).sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(GUIDED_RECORDED))
def test_guided_key_tables_match_the_real_files(name):
    config, count, params, digest = GUIDED_RECORDED[name]
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PixelUNet(config).state_dict().items()}
    assert len(shapes) == count
    assert sum(torch.Size(s).numel() for s in shapes.values()) == params
    assert hashlib.sha256(json.dumps(sorted((k, list(s)) for k, s in shapes.items())).encode()).hexdigest() == digest
    inferred, layout, note = infer_config(shapes)
    assert layout == "guided" and inferred == config, note


def test_guided_legacy_and_split_orders_differ_by_a_head_permutation():
    """The same attention weights in the two qkv orders give the same output once re-ordered."""
    from unet_lab.unet_core.pixel_diffusion.keymap import qkv_to_order

    legacy = PixelUNetConfig(block_channels=(32, 64), attention_levels=(1,), head_channels=16, norm_groups=8,
                             time_channels=32, time_embed_dim=128, qkv_order="legacy", scale_shift_norm=True)
    split = dataclasses.replace(legacy, qkv_order="split")
    torch.manual_seed(0)
    a = PixelUNet(split).eval()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.05)
    state = a.state_dict()
    moved = {k: (qkv_to_order(v, v.shape[0] // 3, legacy.heads_at(v.shape[0] // 3), "split", "legacy")
                 if ".qkv." in k else v) for k, v in state.items()}
    b = PixelUNet(legacy).eval()
    b.load_state_dict(moved)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(b(x, torch.tensor([1, 700])), a(x, torch.tensor([1, 700])), rtol=0, atol=1e-6)
        c = PixelUNet(legacy).eval()
        c.load_state_dict(state)
        assert (c(x, torch.tensor([1, 700])) - a(x, torch.tensor([1, 700]))).abs().max() > 1e-4


@pytest.mark.slow
def test_full_size_cifar10_equals_diffusers():
    _parity(CIFAR10_JSON, 32, batch=1)


def test_ddim_loop_equals_diffusers_pipeline():
    """A 10-step DDIM sample (eta 0 and 0.5) with the same seed equals DDIMPipeline's to 1e-4."""
    diffusers = pytest.importorskip("diffusers")
    from unet_lab.unet_core.pixel_diffusion.sampling import SampleSettings, sample
    from unet_lab.unet_core.pixel_diffusion.schedule import NoiseSchedule

    data = _reduced(CIFAR10_JSON, 8)
    ref = _diffusers_model(data)
    config = config_from_diffusers_json(data)
    ours = _ours(config, ref.state_dict())
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    pipe = diffusers.DDIMPipeline(unet=ref, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    for eta in (0.0, 0.5):
        expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), eta=eta, num_inference_steps=10,
                        output_type="np").images
        got = sample(lambda x, t, y: ours(x, t, y), NoiseSchedule.for_config(config), (2, 3, 32, 32),
                     torch.Generator().manual_seed(7), SampleSettings("ddim", 10, eta))
        got = (got / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        assert abs(got - expected).max() < 1e-4
        assert expected.std() > 0.05
