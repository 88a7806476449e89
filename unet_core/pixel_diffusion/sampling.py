"""Sampling loops: DDPM, DDIM and DPM-Solver++ (2M) over a pixel diffusion U-Net.

``sample`` starts from Gaussian noise drawn from a CPU ``torch.Generator`` (so a seed gives
the same images on every device, drawn in the same order as diffusers' pipelines: the
starting noise, then each step's noise after its model call) and returns images in
[-1, 1]. Learned-variance models use their variance in DDPM and only their epsilon half in
DDIM and DPM-Solver. Classifier-free guidance runs the conditional and the null-class
batch in one forward and mixes the predictions (the variance stays the conditional one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schedule import NoiseSchedule, timesteps
from .steps import ddim_step, ddpm_step, dpmpp_2m_update, split_output, x0_and_eps

SAMPLERS = ("ddim", "dpmpp_2m", "ddpm")
DEFAULT_SPACING = {"ddim": "leading", "ddpm": "leading", "dpmpp_2m": "dpm_linspace"}
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
StepHook = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class SampleSettings:
    """How to sample: which sampler, how many steps, DDIM's eta, guidance and clipping."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 1.0
    clip: bool = True
    spacing: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r} (one of {SAMPLERS})")


def _model_output(model: ModelFn, x: torch.Tensor, t: int, labels: torch.Tensor | None, null: int | None,
                  guidance: float, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    if null is None or guidance == 1.0 or labels is None:
        return split_output(model(x, tt, labels).float(), channels)
    both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, torch.full_like(labels, null)]))
    cond, uncond = both.float().chunk(2)
    pred_c, var = split_output(cond, channels)
    pred_u, _ = split_output(uncond, channels)
    return pred_u + guidance * (pred_c - pred_u), var


@torch.no_grad()
def sample(model: ModelFn, schedule: NoiseSchedule, shape: tuple[int, int, int, int], generator: torch.Generator,
           settings: SampleSettings, prediction: str = "epsilon", class_labels: torch.Tensor | None = None,
           null_class: int | None = None, device: torch.device | str = "cpu", on_step: StepHook | None = None
           ) -> torch.Tensor:
    """Images ``shape`` = [B, C, H, W] in [-1, 1] (float32) from ``model(x, t, labels)``.

    ``on_step(done, total, x0)`` is called after every step with the current clean-image estimate.
    """
    device = torch.device(device)
    spacing = settings.spacing or DEFAULT_SPACING[settings.sampler]
    ts = timesteps(schedule.num_train_timesteps, settings.steps, spacing)
    channels = shape[1]
    labels = None if class_labels is None else class_labels.to(device)
    x = torch.randn(shape, generator=generator).to(device)
    alphas = schedule.alphas_cumprod
    sigmas = schedule.sigmas(ts).float()
    ratio = schedule.num_train_timesteps // settings.steps
    x0_prev: torch.Tensor | None = None
    for i, t in enumerate(ts):
        out, var = _model_output(model, x, t, labels, null_class, settings.guidance, channels)
        a = alphas[t].float()
        if settings.sampler == "ddpm":
            prev_t = ts[i + 1] if i + 1 < len(ts) else -1
            noise = torch.randn(shape, generator=generator).to(device) if t > 0 else None
            x, x0 = ddpm_step(out, x, a, schedule.alpha_bar(prev_t).float(), prediction, noise, var, settings.clip)
        elif settings.sampler == "ddim":
            prev_t = t - ratio   # diffusers' DDIM rule, whatever the spacing
            noise = torch.randn(shape, generator=generator).to(device) if settings.eta > 0 else None
            x, x0 = ddim_step(out, x, a, schedule.alpha_bar(prev_t).float(), prediction, settings.eta, noise,
                              settings.clip)
        else:
            x0, _ = x0_and_eps(out, x, a, prediction)
            first = i == 0 or i == len(ts) - 1   # first order to start and into sigma 0
            x = dpmpp_2m_update(x, x0, None if first else x0_prev, None if first else sigmas[i - 1],
                                sigmas[i], sigmas[i + 1])
            x0_prev = x0
        if on_step is not None:
            on_step(i + 1, len(ts), x0)
    return x
