"""Our schedules and sampler steps against diffusers' schedulers on the same inputs (float64).

diffusers keeps its betas (and DPM-Solver its sigmas) in float32; the step tests hand both
sides the same float64 ``alphas_cumprod`` / sigmas so the comparison is of the step math,
to 1e-6. The schedules themselves are compared at float32 precision. diffusers' DPM-Solver
casts the sample to float32 inside ``step``, so that comparison is to 1e-6 relative to the
sample's magnitude, each step restarting from diffusers' result.
"""

from __future__ import annotations

import pytest
import torch

from unet_lab.unet_core.pixel_diffusion.schedule import NoiseSchedule, make_betas, timesteps
from unet_lab.unet_core.pixel_diffusion.steps import ddim_step, ddpm_step, dpmpp_2m_update, split_output, x0_and_eps

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _inputs(seed: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    out = torch.randn(2, channels, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    return x, out, noise


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_betas_equal_diffusers(kind):
    ref = diffusers.DDPMScheduler(beta_schedule=DIFFUSERS_SCHEDULE[kind])
    ours = make_betas(kind)
    torch.testing.assert_close(ours.float(), ref.betas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(NoiseSchedule.from_betas(ours).alphas_cumprod.float(), ref.alphas_cumprod,
                               rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize(("cls", "spacing", "steps"), [
    ("DDIMScheduler", "leading", 50), ("DDIMScheduler", "trailing", 27), ("DDIMScheduler", "linspace", 10),
    ("DPMSolverMultistepScheduler", "linspace", 20), ("DDPMScheduler", "leading", 100)])
def test_timesteps_equal_diffusers(cls, spacing, steps):
    ref = getattr(diffusers, cls)(timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ours = "dpm_linspace" if cls.startswith("DPM") else spacing
    assert timesteps(1000, steps, ours) == ref.timesteps.tolist()


def _schedule(kind: str) -> NoiseSchedule:
    return NoiseSchedule.from_betas(make_betas(kind))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("steps", [1000, 25])
def test_ddpm_step_equals_diffusers(prediction, variance, steps):
    sched = _schedule("cosine" if variance == "learned_range" else "linear")
    ref = diffusers.DDPMScheduler(prediction_type=prediction, variance_type=variance)
    ref.alphas_cumprod = sched.alphas_cumprod.clone()
    if steps != 1000:
        ref.set_timesteps(steps)
    ts = timesteps(1000, steps, "leading")
    channels = 6 if variance == "learned_range" else 3
    for i in (0, 3, len(ts) - 2, len(ts) - 1):
        t, prev_t = ts[i], ts[i + 1] if i + 1 < len(ts) else -1
        x, out, noise = _inputs(i, channels)
        g = torch.Generator().manual_seed(100 + i)
        expected = ref.step(out, t, x, generator=g).prev_sample
        step_noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i),
                                 dtype=torch.float64) if t > 0 else None
        pred, var = split_output(out, 3)
        got, _ = ddpm_step(pred, x, sched.alpha_bar(t), sched.alpha_bar(prev_t), prediction, step_noise, var)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_equals_diffusers(prediction, eta):
    sched = _schedule("linear")
    ref = diffusers.DDIMScheduler(prediction_type=prediction)
    ref.alphas_cumprod = sched.alphas_cumprod.clone()
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    ref.set_timesteps(50)
    ts = timesteps(1000, 50, "leading")
    for i in (0, 10, 48, 49):
        t = ts[i]
        x, out, noise = _inputs(i)
        expected = ref.step(out, t, x, eta=eta, variance_noise=noise if eta else None).prev_sample
        got, _ = ddim_step(out, x, sched.alpha_bar(t), sched.alpha_bar(t - 20), prediction, eta, noise)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [20, 8])
def test_dpmpp_2m_steps_equal_diffusers(prediction, steps):
    sched = _schedule("linear")
    ref = diffusers.DPMSolverMultistepScheduler(prediction_type=prediction)
    ref.set_timesteps(steps)
    ts = timesteps(1000, steps, "dpm_linspace")
    sigmas = sched.sigmas(ts)
    ref.sigmas = sigmas.clone()
    torch.testing.assert_close(sigmas.float(), ref.sigmas.float(), rtol=2e-5, atol=0)
    x, _, _ = _inputs(0)
    ours_x, ref_x, x0_prev = x.clone(), x.clone(), None
    for i, t in enumerate(ts):
        _, out, _ = _inputs(i + 1)
        ref_x = ref.step(out, t, ref_x).prev_sample.double()
        a = sched.alpha_bar(t)
        x0, _ = x0_and_eps(out, ours_x, a, prediction)
        first = i in (0, len(ts) - 1)
        ours_x = dpmpp_2m_update(ours_x, x0, None if first else x0_prev, None if first else sigmas[i - 1],
                                 sigmas[i], sigmas[i + 1])
        x0_prev = x0
        # diffusers runs the step in float32: compare each step to float32 precision of the values
        torch.testing.assert_close(ours_x, ref_x, rtol=0, atol=1e-6 * max(1.0, float(ref_x.abs().max())))
        ours_x = ref_x.clone()
