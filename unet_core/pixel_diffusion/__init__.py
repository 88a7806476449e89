"""DDPM-family pixel-space diffusion U-Nets: configs, key maps, the U-Net, schedules, samplers, training."""
