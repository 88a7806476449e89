"""Noise schedules of discrete-time diffusion (DDPM family) and the timesteps a sampler visits.

Betas are computed in float64: ``linear`` (DDPM: evenly spaced from ``beta_start`` to
``beta_end``) and ``cosine`` (improved-diffusion: ``alpha_bar(s) = cos((s + 0.008) / 1.008 *
pi / 2) ** 2``, each beta capped at 0.999). ``alphas_cumprod[t]`` is the signal fraction
``alpha_bar_t`` of ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.

Timestep spacings follow diffusers' names: ``leading`` (DDPM/DDIM default: ``0, r, 2r, ...``
with ``r = T // steps``), ``linspace`` (``steps`` points rounded from ``linspace(0, T - 1)``),
``trailing``, and ``dpm_linspace`` (diffusers' DPM-Solver "linspace": ``steps + 1`` points, the
last dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..pixel_unet_config import PixelUNetConfig

SPACINGS = ("leading", "linspace", "trailing", "dpm_linspace")


def make_betas(kind: str, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """float64 betas ``[steps]`` of a ``linear`` or ``cosine`` schedule."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "cosine":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                             for i in range(steps)], dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r} (linear or cosine)")


@dataclass(frozen=True)
class NoiseSchedule:
    """``alphas_cumprod`` ``[T]`` (float64) and what follows from it."""

    alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        return cls(torch.cumprod(1.0 - betas.double(), dim=0))

    @classmethod
    def for_config(cls, config: PixelUNetConfig, kind: str | None = None) -> NoiseSchedule:
        """The schedule a model was trained with (``kind`` overrides its beta schedule)."""
        return cls.from_betas(make_betas(kind or config.beta_schedule, config.num_train_timesteps,
                                         config.beta_start, config.beta_end))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def alpha_bar(self, t: int) -> torch.Tensor:
        """``alpha_bar_t``; 1 for ``t < 0`` (the clean image)."""
        return self.alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=torch.float64)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` for a batch of clean images and per-sample timesteps ``t`` ``[B]``."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target ``sqrt(a) eps - sqrt(1 - a) x0``."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def sigmas(self, timesteps: list[int]) -> torch.Tensor:
        """float64 ``sigma_t = sqrt((1 - a) / a)`` at ``timesteps``, then a final 0 (DPM-Solver's grid)."""
        a = self.alphas_cumprod[torch.tensor(timesteps, dtype=torch.long)]
        return torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)])


def timesteps(train_steps: int, steps: int, spacing: str = "leading") -> list[int]:
    """The descending timesteps a ``steps``-step sampler visits."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be 1..{train_steps}, got {steps}")
    if spacing == "leading":
        ratio = train_steps // steps
        return [i * ratio for i in range(steps)][::-1]
    if spacing == "linspace":
        return torch.linspace(0, train_steps - 1, steps, dtype=torch.float64).round().long().tolist()[::-1]
    if spacing == "dpm_linspace":
        points = torch.linspace(0, train_steps - 1, steps + 1, dtype=torch.float64).round().long().tolist()
        return points[::-1][:-1]
    if spacing == "trailing":
        ratio = train_steps / steps
        return [round(train_steps - i * ratio) - 1 for i in range(steps)]
    raise ValueError(f"unknown timestep spacing {spacing!r} (one of {SPACINGS})")
