"""Fixture makers for the segmentation-model tests: small configs, reference layouts and forwards.

Everything here is written from the source projects' structure (milesial/Pytorch-UNet's
``unet_parts.py``/``unet_model.py``, smp 0.5's Unet decoder and torchvision's ResNet), not from
the pack's modules, so the tests compare the pack against an independent description.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# One small configuration per architecture: the parametrized template runs all of them.
TEMPLATE_CONFIGS: dict[str, dict] = {
    "unet": dict(base_channels=8, depth=3, out_channels=2),
    "unet_bilinear": dict(base_channels=8, depth=4, out_channels=1, upsampling="bilinear"),
    "unet_plus_plus": dict(base_channels=8, depth=3, out_channels=2),
    "unet_plus_plus_deep": dict(base_channels=8, depth=3, out_channels=1, deep_supervision=True,
                                upsampling="bilinear"),
    "attention_unet": dict(base_channels=8, depth=3, out_channels=3),
    "attention_unet_group": dict(base_channels=8, depth=4, out_channels=1, norm="group", upsampling="bilinear"),
    "residual_unet": dict(base_channels=8, depth=4, out_channels=2, norm="instance"),
    "residual_unet_nonorm": dict(base_channels=8, depth=3, out_channels=1, norm="none", pad_mode="zeros"),
    "unet3plus": dict(base_channels=4, depth=3, out_channels=2),
    "unet3plus_deep_group": dict(base_channels=4, depth=3, out_channels=1, norm="group", deep_supervision=True,
                               cat_channels=6),
    "smp_unet": dict(encoder_name="resnet18", decoder_channels=[32, 16, 16, 8, 8], out_channels=2),
    "smp_unet_plus_plus": dict(encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8],
                               out_channels=1),
}


def template_cases() -> list[tuple[str, str, dict]]:
    """(case id, architecture, hparams) for every template configuration."""
    cases = []
    for case, hp in TEMPLATE_CONFIGS.items():
        arch = next(a for a in ("unet_plus_plus", "attention_unet", "residual_unet", "smp_unet_plus_plus",
                                "smp_unet", "unet3plus", "unet") if case.startswith(a))
        cases.append((case, arch, dict(hp)))
    return cases


def randomize_batchnorm_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every norm layer non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.InstanceNorm2d)):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                    module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


# ---------------------------------------------------------------- milesial Pytorch-UNet

def milesial_shapes(n_channels: int, n_classes: int, bilinear: bool = False) -> dict[str, tuple]:
    """Key -> shape of milesial's ``UNet(n_channels, n_classes, bilinear)`` state dict."""
    shapes: dict[str, tuple] = {}

    def double_conv(prefix: str, cin: int, cout: int, mid: int | None = None) -> None:
        mid = mid or cout
        for idx, (a, b) in ((0, (mid, cin)), (3, (cout, mid))):
            shapes[f"{prefix}.double_conv.{idx}.weight"] = (a, b, 3, 3)
            bn = idx + 1
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.double_conv.{bn}.{name}"] = (a,)
            shapes[f"{prefix}.double_conv.{bn}.num_batches_tracked"] = ()

    factor = 2 if bilinear else 1
    double_conv("inc", n_channels, 64)
    for i, (cin, cout) in enumerate(((64, 128), (128, 256), (256, 512), (512, 1024 // factor)), start=1):
        double_conv(f"down{i}.maxpool_conv.1", cin, cout)
    for i, (cin, cout) in enumerate(((1024, 512 // factor), (512, 256 // factor), (256, 128 // factor), (128, 64)),
                                    start=1):
        if bilinear:
            double_conv(f"up{i}.conv", cin, cout, cin // 2)
        else:
            shapes[f"up{i}.up.weight"] = (cin, cin // 2, 2, 2)
            shapes[f"up{i}.up.bias"] = (cin // 2,)
            double_conv(f"up{i}.conv", cin, cout)
    shapes["outc.conv.weight"] = (n_classes, 64, 1, 1)
    shapes["outc.conv.bias"] = (n_classes,)
    return shapes


def make_milesial_state_dict(n_channels: int = 3, n_classes: int = 2, bilinear: bool = False,
                             seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in milesial's layout (He-scaled convs, plausible BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in milesial_shapes(n_channels, n_classes, bilinear).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = shape[1] * shape[2] * shape[3] if ".up." not in key else shape[0]
            sd[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return sd


def milesial_reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """milesial's UNet (transposed-conv variant, eval mode) in torch.nn.functional only."""

    def bn(h: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], training=False, eps=1e-5)

    def double_conv(h: torch.Tensor, p: str) -> torch.Tensor:
        h = F.relu(bn(F.conv2d(h, sd[p + ".double_conv.0.weight"], padding=1), p + ".double_conv.1"))
        return F.relu(bn(F.conv2d(h, sd[p + ".double_conv.3.weight"], padding=1), p + ".double_conv.4"))

    x1 = double_conv(x, "inc")
    xs = [x1]
    for i in range(1, 5):
        xs.append(double_conv(F.max_pool2d(xs[-1], 2), f"down{i}.maxpool_conv.1"))
    h = xs.pop()
    for i in range(1, 5):
        skip = xs.pop()
        up = F.conv_transpose2d(h, sd[f"up{i}.up.weight"], sd[f"up{i}.up.bias"], stride=2)
        dy, dx = skip.shape[2] - up.shape[2], skip.shape[3] - up.shape[3]
        up = F.pad(up, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        h = double_conv(torch.cat([skip, up], dim=1), f"up{i}.conv")
    return F.conv2d(h, sd["outc.conv.weight"], sd["outc.conv.bias"])


# ---------------------------------------------------------------- smp Unet with a ResNet encoder

def smp_unet_resnet34_shapes(in_channels: int = 3, classes: int = 1,
                             decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)) -> dict[str, tuple]:
    """Key -> shape of ``smp.Unet("resnet34", in_channels, classes)``'s state dict.

    Encoder: torchvision ResNet-34 without fc (BasicBlock counts 3, 4, 6, 3; a ``downsample``
    1x1 conv + BN on the first block of layers 2-4). Decoder: smp's UnetDecoder for encoder
    channels (3, 64, 64, 128, 256, 512): block i takes [upsampled, skip] and has
    ``conv1.0`` (conv, no bias), ``conv1.1`` (BN), ``conv2.0``, ``conv2.1``. Head: 3x3 conv.
    """
    shapes: dict[str, tuple] = {}

    def bn(p: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.{name}"] = (c,)
        shapes[f"{p}.num_batches_tracked"] = ()

    shapes["encoder.conv1.weight"] = (64, in_channels, 7, 7)
    bn("encoder.bn1", 64)
    cin = 64
    for layer, (planes, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
        for b in range(count):
            p = f"encoder.layer{layer}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if b == 0 and layer > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
            cin = planes
    encoder_channels = [512, 256, 128, 64, 64]  # deepest first, the input itself excluded
    block_in = [encoder_channels[0]] + list(decoder_channels[:-1])
    block_skip = encoder_channels[1:] + [0]
    for i, (cin, skip, cout) in enumerate(zip(block_in, block_skip, decoder_channels, strict=False)):
        shapes[f"decoder.blocks.{i}.conv1.0.weight"] = (cout, cin + skip, 3, 3)
        bn(f"decoder.blocks.{i}.conv1.1", cout)
        shapes[f"decoder.blocks.{i}.conv2.0.weight"] = (cout, cout, 3, 3)
        bn(f"decoder.blocks.{i}.conv2.1", cout)
    shapes["segmentation_head.0.weight"] = (classes, decoder_channels[-1], 3, 3)
    shapes["segmentation_head.0.bias"] = (classes,)
    return shapes


def make_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for a key -> shape table (BN variances positive, counters int64)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(10, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:
            sd[key] = torch.randn(shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif key.endswith(".weight"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd
