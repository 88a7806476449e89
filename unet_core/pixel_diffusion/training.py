"""Train a pixel diffusion U-Net from scratch on an image batch, keeping an EMA of its weights.

Standard DDPM training: a random timestep per image, ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps``,
mean squared error against the config's prediction target (epsilon, v or x_0), AdamW with a
short linear warm-up, random horizontal flips. Class-conditional models with a null class
see it in place of the label ``label_dropout`` of the time (classifier-free guidance).
The EMA decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so short runs still
average over their later steps. Returns the EMA model (eval mode) and the loss history.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..pixel_unet_config import PixelUNetConfig
from ..progress import ProgressCallback, no_progress
from .model import PixelUNet
from .schedule import NoiseSchedule


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    label_dropout: float = 0.1
    flip: bool = True
    seed: int = 0


@dataclass
class TrainResult:
    ema: PixelUNet
    losses: list[float] = field(default_factory=list)


def _targets(config: PixelUNetConfig, schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
    if config.prediction == "epsilon":
        return noise
    if config.prediction == "v_prediction":
        return schedule.velocity(x0, noise, t)
    return x0


def train_pixel_unet(config: PixelUNetConfig, images: torch.Tensor, labels: torch.Tensor | None,
                     settings: TrainSettings, device: torch.device | str = "cpu",
                     progress: ProgressCallback = no_progress,
                     check_interrupted: Callable[[], None] | None = None) -> TrainResult:
    """Train ``config`` from scratch on ``images`` [N, C, H, W] in [-1, 1]; ``labels`` [N] when conditional.

    Works when called under ``torch.inference_mode()`` (as ComfyUI calls nodes): autograd is
    switched back on here, and inputs made in inference mode are copied into ordinary tensors.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(config, images.clone(), None if labels is None else labels.clone(), settings, device,
                      progress, check_interrupted)


def _train(config: PixelUNetConfig, images: torch.Tensor, labels: torch.Tensor | None, settings: TrainSettings,
           device: torch.device | str, progress: ProgressCallback,
           check_interrupted: Callable[[], None] | None) -> TrainResult:
    if images.ndim != 4 or images.shape[1] != config.in_channels:
        raise InputError(f"training images must be [N, {config.in_channels}, H, W], got {tuple(images.shape)}")
    if images.shape[-1] % config.downsample_factor or images.shape[-2] % config.downsample_factor:
        raise InputError(f"image size {tuple(images.shape[-2:])} must divide by {config.downsample_factor} "
                         f"({config.num_levels} levels)")
    if config.num_classes and labels is None:
        raise InputError("a class-conditional model needs a label per training image")
    if config.learned_sigma:
        raise InputError("training a learned-variance model is not supported; use out_channels = in_channels")
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    model = PixelUNet(config).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = NoiseSchedule.for_config(config)
    data = images.float()
    result = TrainResult(ema)
    for step in range(settings.steps):
        idx = torch.randint(0, data.shape[0], (settings.batch_size,), generator=g)
        x0 = data[idx]
        if settings.flip:
            flip = torch.rand(settings.batch_size, generator=g) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, config.num_train_timesteps, (settings.batch_size,), generator=g)
        y = None
        if config.num_classes and labels is not None:
            y = labels[idx].clone()
            if config.null_class:
                y[torch.rand(settings.batch_size, generator=g) < settings.label_dropout] = config.num_classes - 1
            y = y.to(device)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        x_t = schedule.add_noise(x0, noise, t)
        loss = F.mse_loss(model(x_t, t, y), _targets(config, schedule, x0, noise, t))
        for group in opt.param_groups:
            group["lr"] = settings.learning_rate * min(1.0, (step + 1) / max(1, settings.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        value = float(loss.detach())
        result.losses.append(value)
        progress(step + 1, settings.steps, f"loss {value:.4f}")
        if check_interrupted is not None:
            check_interrupted()
    return result
