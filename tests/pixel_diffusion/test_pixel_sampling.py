"""Sampling loops: classifier-free guidance, learned-variance DDPM and seeding, against written-out math."""

from __future__ import annotations

import torch

from unet_lab.unet_core.pixel_diffusion.sampling import SampleSettings, sample
from unet_lab.unet_core.pixel_diffusion.schedule import NoiseSchedule, make_betas
from unet_lab.unet_core.pixel_diffusion.steps import ddim_step


class Recorder:
    """A fake model: output = f(x, t, label), recording what it was called with."""

    def __init__(self, channels: int = 3) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.channels = channels

    def __call__(self, x, t, y):
        self.calls.append((x.clone(), t.clone(), None if y is None else y.clone()))
        scale = 0.1 if y is None else (0.1 + 0.05 * y.float()).view(-1, 1, 1, 1)
        out = x * scale + 0.01 * t.float().view(-1, 1, 1, 1) / 1000
        return torch.cat([out, torch.tanh(out)], 1) if self.channels == 6 else out


def test_cfg_batches_cond_and_null_and_mixes_predictions():
    sched = NoiseSchedule.from_betas(make_betas("linear"))
    model = Recorder()
    labels = torch.tensor([0, 2])
    got = sample(model, sched, (2, 3, 4, 4), torch.Generator().manual_seed(0), SampleSettings("ddim", 2, guidance=3.0),
                 class_labels=labels, null_class=3)
    assert all(c[0].shape[0] == 4 and c[2].tolist() == [0, 2, 3, 3] for c in model.calls)
    # the same loop written out
    x = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    for t, prev in ((500, 0), (0, -500)):
        tt = torch.full((2,), t)
        cond = x * (0.1 + 0.05 * labels.float()).view(-1, 1, 1, 1) + 0.01 * t / 1000
        null = x * (0.1 + 0.05 * 3) + 0.01 * t / 1000
        eps = null + 3.0 * (cond - null)
        x, _ = ddim_step(eps, x, sched.alpha_bar(t).float(), sched.alpha_bar(prev).float(), "epsilon")
        del tt
    torch.testing.assert_close(got, x, rtol=0, atol=1e-6)


def test_learned_variance_model_uses_epsilon_half_in_ddim_and_is_seeded():
    sched = NoiseSchedule.from_betas(make_betas("cosine"))
    six, three = Recorder(6), Recorder(3)
    a = sample(six, sched, (1, 3, 4, 4), torch.Generator().manual_seed(1), SampleSettings("ddim", 5))
    b = sample(three, sched, (1, 3, 4, 4), torch.Generator().manual_seed(1), SampleSettings("ddim", 5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddpm_with_learned_variance_draws_noise_per_step_and_ends_clean():
    sched = NoiseSchedule.from_betas(make_betas("cosine"))
    model = Recorder(6)
    out = sample(model, sched, (1, 3, 4, 4), torch.Generator().manual_seed(2), SampleSettings("ddpm", 10))
    assert [int(c[1][0]) for c in model.calls] == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert out.abs().max() <= 1.0 + 1e-6 or torch.isfinite(out).all()
    again = sample(Recorder(6), sched, (1, 3, 4, 4), torch.Generator().manual_seed(2), SampleSettings("ddpm", 10))
    torch.testing.assert_close(out, again, rtol=0, atol=0)
