"""Sniffing, Inspect reports, loading and bad input for pixel diffusion U-Net files.

Real-shape files are header-only safetensors (the sniffer never reads tensors); loading
tests use reduced configs with real weights in each format: a guided-diffusion ``.pt`` state
dict, a diffusers UNet folder (config.json + weights) and our own safetensors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fixtures_checkpoints import write_header_file, write_unet
from fixtures_hardening import malicious_pickle
from unet_lab.unet_core.checkpoints.loader import load_unet
from unet_lab.unet_core.checkpoints.report import describe
from unet_lab.unet_core.checkpoints.sniff import sniff
from unet_lab.unet_core.errors import CheckpointError
from unet_lab.unet_core.pixel_diffusion.keymap import canonical_to_diffusers
from unet_lab.unet_core.pixel_diffusion.loading import load_pixel_unet
from unet_lab.unet_core.pixel_diffusion.model import PixelUNet
from unet_lab.unet_core.pixel_diffusion.saving import save_pixel_unet
from unet_lab.unet_core.pixel_unet_config import GUIDED_64_COND, GUIDED_256_UNCOND, PixelUNetConfig

SMALL_GUIDED = PixelUNetConfig(out_channels=6, block_channels=(32, 64, 64), num_res_blocks=2, attention_levels=(1, 2),
                               num_heads=1, qkv_order="legacy", scale_shift_norm=True, resblock_updown=True,
                               time_channels=32, time_embed_dim=128, num_classes=10)


def _shapes(config: PixelUNetConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in PixelUNet(config).state_dict().items()}


def _random_model(config: PixelUNetConfig, seed: int = 0) -> PixelUNet:
    torch.manual_seed(seed)
    model = PixelUNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize(("config", "size", "cond"), [(GUIDED_64_COND, "64 x 64 px", "class-conditional, 1000 classes"),
                                                       (GUIDED_256_UNCOND, "256 x 256 px", "unconditional")])
def test_guided_files_sniff_as_pixel_diffusion(tmp_path, config, size, cond):
    path = write_header_file(tmp_path / "guided.pt.safetensors", _shapes(config))
    spec = sniff(path)
    assert (spec.kind, spec.family, spec.layout) == ("unet", "pixel_diffusion", "guided")
    assert spec.pixel_config == config
    report = describe(spec)
    assert "pixel diffusion (DDPM family)" in report and size in report and cond in report
    assert "learned variance" in report and "by rule" in report


def test_sd_loader_refuses_pixel_files_naming_them(tmp_path):
    path = write_header_file(tmp_path / "256x256_diffusion_uncond.safetensors", _shapes(GUIDED_256_UNCOND))
    with pytest.raises(CheckpointError, match=r"256x256_diffusion_uncond.*pixel-space diffusion U-Net.*Load Pixel"):
        load_unet(path)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_pixel_loader_refuses_sd_unets_naming_them(tmp_path, layout):
    path = write_unet(tmp_path, "sd1", layout)
    with pytest.raises(CheckpointError, match=r"sd1_.*SD1\.x UNet.*not a pixel diffusion U-Net.*Load UNet"):
        load_pixel_unet(path)


def test_guided_pickle_loads_and_runs(tmp_path):
    ref = _random_model(SMALL_GUIDED)
    path = tmp_path / "improved_small.pt"
    torch.save(ref.state_dict(), path)
    pm = load_pixel_unet(path)
    assert pm.config.block_channels == SMALL_GUIDED.block_channels and pm.config.num_classes == 10
    assert pm.config.learned_sigma and pm.config.resblock_updown and pm.config.attention_levels == (1, 2)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(pm.unet(x, t, y), ref(x, t, y), rtol=0, atol=1e-6)


def test_diffusers_folder_and_its_weight_file_load(tmp_path):
    from safetensors.torch import save_file

    config = PixelUNetConfig(block_channels=(32, 64), attention_levels=(1,), norm_groups=8, time_channels=32,
                             time_embed_dim=128, qkv_order="split", downsample_padding=0, flip_sin_to_cos=False,
                             freq_shift=1.0, norm_eps=1e-6, image_size=16)
    ref = _random_model(config)
    folder = tmp_path / "ddpm-tiny" / "unet"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in canonical_to_diffusers(ref.state_dict(), config).items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "UNet2DModel", "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D",
        "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2,
        "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
        "norm_eps": 1e-6, "norm_num_groups": 8, "sample_size": 16}))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([250])
    for path in (folder.parent, folder / "diffusion_pytorch_model.safetensors"):
        pm = load_pixel_unet(path)
        assert pm.config == config and "config from config.json" in pm.info
        with torch.no_grad():
            torch.testing.assert_close(pm.unet(x, t), ref(x, t), rtol=0, atol=1e-6)


def test_our_file_round_trips_and_never_overwrites(tmp_path):
    config = PixelUNetConfig(block_channels=(32, 64), attention_levels=(1,), norm_groups=8, time_channels=32,
                             time_embed_dim=128, num_classes=4, null_class=True, beta_schedule="cosine",
                             prediction="v_prediction", image_size=16)
    ref = _random_model(config)
    path = save_pixel_unet(tmp_path / "mine.safetensors", ref, config)
    spec = sniff(path)
    assert spec.pixel_config == config and spec.prediction == "v_prediction"
    assert "null class" in describe(spec)
    pm = load_pixel_unet(path)
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([10]), torch.tensor([3])
    with torch.no_grad():
        torch.testing.assert_close(pm.unet(x, t, y), ref(x, t, y), rtol=0, atol=0)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_pixel_unet(path, ref, config)
    assert path.read_bytes() == before


def test_uninferable_guided_file_is_refused_naming_it(tmp_path):
    shapes = _shapes(SMALL_GUIDED)
    shapes = {k: v for k, v in shapes.items() if not k.startswith("output_blocks.2.")}  # a hole in the decoder
    path = write_header_file(tmp_path / "broken_guided.safetensors", shapes)
    with pytest.raises(CheckpointError, match=r"broken_guided\.safetensors.*cannot be inferred"):
        sniff(path)
    with pytest.raises(CheckpointError, match=r"broken_guided\.safetensors.*cannot be inferred"):
        load_pixel_unet(path)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    state = _random_model(SMALL_GUIDED).state_dict()
    state["input_blocks.1.0.in_layers.2.bias"] = torch.zeros(7)
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt.*wrong shape.*in_layers\.2\.bias"):
        load_pixel_unet(path)


def test_truncated_pickle_is_refused_naming_it(tmp_path):
    path = tmp_path / "64x64_diffusion.pt"
    torch.save(_random_model(SMALL_GUIDED).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"64x64_diffusion\.pt"):
        load_pixel_unet(path)


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "marker"
    live = malicious_pickle(tmp_path / "live.pt", marker, lambda p: {"input_blocks.0.0.weight": torch.zeros(1), "x": p})
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(live)!r}, weights_only=False)"],
                   check=False, capture_output=True, timeout=120)
    assert marker.exists(), "the payload is not live: the test would prove nothing"
    marker.unlink()
    path = malicious_pickle(tmp_path / "guided_evil.pt", marker,
                            lambda p: {**_random_model(SMALL_GUIDED).state_dict(), "payload": p})
    with pytest.raises(CheckpointError, match=r"guided_evil\.pt.*refused.*nothing in it ran"):
        load_pixel_unet(path)
    assert not marker.exists()
