"""Single sampler steps of DDPM, DDIM and DPM-Solver++ (2M), as plain tensor math.

Each step takes the model's output already split (``out`` with the image's channels, and
``var_values`` in [-1, 1] when the model learned its variance) and the schedule's
``alpha_bar`` values, so it is exact in whatever dtype it is given (float64 in the tests).
The formulas are those of the papers as diffusers implements them:

* DDPM (Ho et al. 2020, eq. 7): the posterior mean from ``x_0`` and ``x_t``; variance the
  posterior's ("fixed small") or, for learned sigma, improved-diffusion's interpolation
  ``exp(f log beta_t + (1 - f) log beta~_t)`` with ``f = (v + 1) / 2``.
* DDIM (Song et al. 2021, eq. 12): ``x_prev = sqrt(a') x_0 + sqrt(1 - a' - s^2) eps + s z``
  with ``s = eta sqrt((1 - a') / (1 - a) (1 - a / a'))``.
* DPM-Solver++ (Lu et al. 2022), multistep second order with the midpoint correction,
  first order at the first and last steps.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def split_output(out: torch.Tensor, image_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, variance values or None) of a model output with 1x or 2x the image channels."""
    if out.shape[1] == 2 * image_channels:
        return out[:, :image_channels], out[:, image_channels:]
    return out, None


def x0_and_eps(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, prediction: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted clean image and noise from a model output of ``prediction`` type at ``alpha_bar = a``."""
    if prediction == "epsilon":
        return (x - (1 - a) ** 0.5 * out) / a ** 0.5, out
    if prediction == "v_prediction":
        return a ** 0.5 * x - (1 - a) ** 0.5 * out, a ** 0.5 * out + (1 - a) ** 0.5 * x
    if prediction == "sample":
        return out, (x - a ** 0.5 * out) / (1 - a) ** 0.5
    raise ValueError(f"unknown prediction type {prediction!r} (one of {PREDICTIONS})")


def ddpm_step(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, a_prev: torch.Tensor, prediction: str,
              noise: torch.Tensor | None, var_values: torch.Tensor | None = None, clip: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_prev, x0) of one ancestral DDPM step from ``alpha_bar = a`` to ``a_prev`` (``noise`` None: last step)."""
    x0, _ = x0_and_eps(out, x, a, prediction)
    if clip:
        x0 = x0.clamp(-1, 1)
    alpha = a / a_prev
    beta = 1 - alpha
    mean = (a_prev ** 0.5 * beta / (1 - a)) * x0 + (alpha ** 0.5 * (1 - a_prev) / (1 - a)) * x
    if noise is None:
        return mean, x0
    posterior = torch.clamp((1 - a_prev) / (1 - a) * beta, min=1e-20)
    if var_values is None:
        return mean + posterior ** 0.5 * noise, x0
    frac = (var_values + 1) / 2
    log_var = frac * torch.log(beta) + (1 - frac) * torch.log(posterior)
    return mean + torch.exp(0.5 * log_var) * noise, x0


def ddim_step(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, a_prev: torch.Tensor, prediction: str,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_prev, x0) of one DDIM step; ``noise`` is needed when ``eta > 0``."""
    x0, eps = x0_and_eps(out, x, a, prediction)
    if clip:
        x0 = x0.clamp(-1, 1)
    std = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
    prev = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("DDIM with eta > 0 needs noise")
        prev = prev + std * noise
    return prev, x0


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = 1 / (sigma ** 2 + 1) ** 0.5
    return alpha, sigma * alpha


def dpmpp_2m_update(x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, sigma_prev: torch.Tensor | None,
                    sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One DPM-Solver++ step from ``sigma`` to ``sigma_next`` (VP sigmas ``sqrt((1 - a) / a)``).

    ``x0_prev``/``sigma_prev`` are the previous step's data prediction and sigma; None means a
    first-order step (the first step, and every step into ``sigma_next == 0``).
    """
    alpha_t, sigma_t = _alpha_sigma(sigma_next)
    alpha_s, sigma_s = _alpha_sigma(sigma)
    lam_t = torch.log(alpha_t) - torch.log(sigma_t)
    lam_s = torch.log(alpha_s) - torch.log(sigma_s)
    h = lam_t - lam_s
    first = (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0
    if x0_prev is None or sigma_prev is None:
        return first
    alpha_p, sigma_p = _alpha_sigma(sigma_prev)
    r = (lam_s - (torch.log(alpha_p) - torch.log(sigma_p))) / h
    return first - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * ((1.0 / r) * (x0 - x0_prev))
