"""The Accelerate UNet node on the standalone host: a no-op on the CPU, a wrapper on CUDA."""

from __future__ import annotations

import pytest

from fixtures_diffusion import TINY_SD1, make_spec, random_ldm_state_dict
from unet_lab.nodes.acceleration import UNetLabAccelerateUNet
from unet_lab.nodes.host import StandaloneHost, use_host
from unet_lab.unet_core.acceleration.accelerator import Accelerator
from unet_lab.unet_core.diffusion.patcher import create_model_patcher


@pytest.fixture(scope="module")
def model():
    return create_model_patcher(random_ldm_state_dict(TINY_SD1, seed=5), make_spec(TINY_SD1))


def test_on_the_cpu_the_node_returns_the_model_and_says_why(model, tmp_path):
    with use_host(StandaloneHost(models_root=tmp_path, device="cpu", show_progress=False)):
        out, report = UNetLabAccelerateUNet().accelerate(model, True, False, 4)
    assert out is model
    assert "CUDA" in report and "cpu" in report


def test_off_passes_the_model_through(model, tmp_path):
    with use_host(StandaloneHost(models_root=tmp_path, device="cuda", show_progress=False)):
        out, report = UNetLabAccelerateUNet().accelerate(model, False, True, 4)
    assert out is model and "off" in report


def test_on_a_cuda_host_the_node_returns_a_clone_with_the_accelerator(model, tmp_path):
    # device() only names CUDA here; nothing runs, so no GPU is needed
    with use_host(StandaloneHost(models_root=tmp_path, device="cuda", show_progress=False)):
        out, report = UNetLabAccelerateUNet().accelerate(model, True, True, 3)
    assert out is not model and model.get_all_wrappers("diffusion_model") == []
    (wrapper,) = out.get_all_wrappers("diffusion_model")
    assert isinstance(wrapper, Accelerator)
    assert wrapper.settings.compile and wrapper.settings.max_graphs == 3 and wrapper.cache.capacity == 3
    assert "torch.compile" in report
