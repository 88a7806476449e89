"""Segmentation U-Nets, by concern.

- ``architectures/``: the models (U-Net, UNet++, Attention U-Net, Residual U-Net, smp-layout
  Unet / UnetPlusPlus) and their shared blocks; ``registry.py`` builds one by name.
- ``adapters/``: readers of other projects' weights (milesial, smp), registered in ``adapters/registry.py``.
- ``checkpoint.py`` (our safetensors format, and the entry point that reads every format),
  ``meta.py`` (what a checkpoint says besides weights), ``weights.py``, ``model.py`` (SEG_UNET), ``metrics.py``.
- ``inference/``: input checks, class choice, tiling, device placement, the segment run with its retry.
- ``training/``: data, augmentation, losses, the training loop, synthetic data.
- ``speed/``: the fast inference path (BatchNorm folding, fused conv + ReLU, split concatenations, compile).

Dependencies point one way: speed -> architectures; inference -> speed; adapters -> registry, meta;
checkpoint -> adapters.registry (adapters are loaded by name).
"""
