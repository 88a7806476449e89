"""Shared helpers of the skip-gate tests: reference math written independently, reduced configs."""

from __future__ import annotations

import math

import pytest
import torch


def reference_energy_alpha(h: torch.Tensor, hsp: torch.Tensor, sharpness: float = 1.0,
                           eps: float = 1e-5) -> torch.Tensor:
    """The documented parameter-free gate, written out sample by sample in float64."""
    out = torch.empty(hsp.shape[0], 1, *hsp.shape[-2:], dtype=torch.float64)
    for b in range(hsp.shape[0]):
        maps = []
        for feats in (h[b].double(), hsp[b].double()):
            energy = (feats * feats).sum(dim=0).sqrt()            # L2 over channels
            mean = energy.mean()
            var = ((energy - mean) ** 2).mean().item()             # population variance over space
            maps.append((energy - mean) / math.sqrt(var + eps))
        out[b, 0] = 1.0 / (1.0 + torch.exp(-sharpness * (maps[0] + maps[1])))
    return out


def reference_additive_alpha(state: dict[str, torch.Tensor], h: torch.Tensor, hsp: torch.Tensor) -> torch.Tensor:
    """Oktay's additive gate without norm layers, from raw 1x1 weights (float64 einsums)."""
    w_g = state["W_g.0.weight"].double()[:, :, 0, 0]
    b_g = state["W_g.0.bias"].double()
    w_x = state["W_x.0.weight"].double()[:, :, 0, 0]
    w_psi = state["psi.0.weight"].double()[:, :, 0, 0]
    b_psi = state["psi.0.bias"].double()
    g = torch.einsum("oc,bchw->bohw", w_g, h.double()) + b_g[None, :, None, None]
    x = torch.einsum("oc,bchw->bohw", w_x, hsp.double())
    q = torch.relu(g + x)
    psi = torch.einsum("oc,bchw->bohw", w_psi, q) + b_psi[None, :, None, None]
    return torch.sigmoid(psi)


def reference_applied(alpha: torch.Tensor, strength: float, floor: float) -> torch.Tensor:
    """m = 1 - c (1 - (floor + (1 - floor) alpha))."""
    floored = floor + (1.0 - floor) * alpha
    return 1.0 - strength * (1.0 - floored)


def tiny_config(family: str):
    """A reduced UNetConfig of the family's layout (levels, attention pattern), small channels."""
    from unet_lab.unet_core.unet_config import UNetConfig

    if family == "sdxl":
        return UNetConfig(block_out_channels=(32, 64, 64), layers_per_block=2, transformer_layers_per_block=(0, 1, 1),
                          num_attention_heads=(1, 2, 2), cross_attention_dim=32, use_linear_projection=True,
                          norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=8,
                          projection_class_embeddings_input_dim=32 + 6 * 8)
    return UNetConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 1, 0),
                      num_attention_heads=(2, 2, 2, 2), cross_attention_dim=32, norm_num_groups=8,
                      use_linear_projection=(family == "sd2"))


@torch.no_grad()
def tiny_patcher(family: str, seed: int = 0):
    """Our standalone MODEL (UNetPatcher) over a reduced config of ``family`` with random weights.

    Every parameter gets random values (a zero-initialised output conv would hide any effect).
    """
    from types import SimpleNamespace

    from unet_lab.unet_core.diffusion.patcher import create_model_patcher
    from unet_lab.unet_core.diffusion.unet import UNetModel

    config = tiny_config(family)
    torch.manual_seed(seed)
    unet = UNetModel(config)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in unet.state_dict().items():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith(".weight") and p.ndim == 1:  # norm scales
            state[name] = 1.0 + 0.1 * noise
        elif p.ndim >= 2:
            state[name] = noise / max(1.0, p[0].numel()) ** 0.5
        else:
            state[name] = 0.05 * noise
    spec = SimpleNamespace(config=config, family=family, prediction="epsilon", path=None)
    return create_model_patcher(state, spec)


def unet_inputs(patcher, batch: int = 2, size: int = 16, seed: int = 1):
    """Fixed latents, timesteps, context (and SDXL's ADM vector) for ``patcher``'s config."""
    config = patcher.model.unet_config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, size, size, generator=gen)
    t = torch.linspace(100, 900, batch)
    context = torch.randn(batch, 7, config.cross_attention_dim, generator=gen)
    y = None
    if config.projection_class_embeddings_input_dim:
        y = torch.randn(batch, config.projection_class_embeddings_input_dim, generator=gen)
    return x, t, context, y


def run(patcher, inputs, cond_or_uncond=None):
    x, t, context, y = inputs
    options = {"cond_or_uncond": list(cond_or_uncond)} if cond_or_uncond is not None else None
    with torch.no_grad():
        return patcher.apply_model(x, t, context, y=y, transformer_options=options)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny forwards are faster on one thread, and far faster when the 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
