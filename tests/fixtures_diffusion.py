"""Shared helpers for the diffusion tests: reduced configs, diffusers twins, tiny checkpoints.

Everything is made by code. ``diffusers_twin`` builds diffusers' ``UNet2DConditionModel``
for one of our configs (the mapping a user of both libraries would write);
``ldm_from_diffusers`` renames diffusers' keys into the LDM layout through the shared key
map of ``unet_core.checkpoints.keymap`` when it exists, else through the private map below
(diffusers' LDM conversion table, written out).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch

from unet_lab.unet_core.unet_config import UNetConfig

TINY_SD1 = UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 0),
                      num_attention_heads=(2, 2, 2), cross_attention_dim=48, norm_num_groups=8)
TINY_SD2 = UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 0),
                      num_attention_heads=(1, 2, 2), cross_attention_dim=40, norm_num_groups=8,
                      use_linear_projection=True)
TINY_SDXL = UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(0, 1, 2),
                       num_attention_heads=(1, 2, 2), cross_attention_dim=64, norm_num_groups=8,
                       use_linear_projection=True, addition_embed_type="text_time",
                       addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
TINY_SD1_INPAINT = TINY_SD1.with_(in_channels=9)
TINY_POOLED = 16


def diffusers_kwargs(config: UNetConfig) -> dict:
    """diffusers ``UNet2DConditionModel`` arguments for ``config``."""
    depths = config.transformer_layers_per_block
    down = tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths)
    up = tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths))
    kwargs = dict(
        sample_size=32, in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=down, up_block_types=up, block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block, cross_attention_dim=config.cross_attention_dim,
        # diffusers' historical naming: attention_head_dim holds the number of heads here.
        attention_head_dim=config.num_attention_heads, use_linear_projection=config.use_linear_projection,
        norm_num_groups=config.norm_num_groups,
        transformer_layers_per_block=tuple(max(d, 1) for d in depths),
    )
    if config.addition_embed_type:
        kwargs.update(addition_embed_type=config.addition_embed_type,
                      addition_time_embed_dim=config.addition_time_embed_dim,
                      projection_class_embeddings_input_dim=config.projection_class_embeddings_input_dim)
    return kwargs


def diffusers_twin(config: UNetConfig, seed: int = 0, device: str = "cpu"):
    """diffusers' UNet for ``config`` with random weights (every parameter perturbed)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = UNet2DConditionModel(**diffusers_kwargs(config))
    randomize_(model, seed)
    return model.eval()


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Give every parameter random values (zero-initialised outputs would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight") or re.search(r"norm\d?\.weight$", name) or ".in_layers.0.weight" in name:
            p.copy_(1.0 + 0.1 * noise)
        else:
            p.copy_(scale * noise if p.ndim < 2 else noise / max(1.0, p[0].numel()) ** 0.5)


# -- private diffusers -> LDM key map (fallback until the shared keymap exists) -----------
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _private_key(key: str, config: UNetConfig) -> str:
    L = config.layers_per_block
    for src, dst in _TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        kind, i, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if part == "resnets":
            head, tail = rest.split(".", 1)
            rest = f"{_RESNET[head]}.{tail}"
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{1 + i * (L + 1) + L}.0.op.{rest.split('.', 1)[1]}"
            return f"input_blocks.{1 + i * (L + 1) + j}.{0 if part == 'resnets' else 1}.{rest}"
        if part == "upsamplers":
            level = config.num_levels - 1 - i
            slot = 2 if config.transformer_layers_per_block[level] else 1
            return f"output_blocks.{i * (L + 1) + L}.{slot}.{rest}"
        return f"output_blocks.{i * (L + 1) + j}.{0 if part == 'resnets' else 1}.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if part == "resnets":
            head, tail = rest.split(".", 1)
            return f"middle_block.{2 * j}.{_RESNET[head]}.{tail}"
        return f"middle_block.1.{rest}"
    raise KeyError(key)


def shared_keymap():
    """The checkpoints helper's ``convert_diffusers_to_ldm``, or None while it does not exist."""
    try:
        from unet_lab.unet_core.checkpoints.keymap import convert_diffusers_to_ldm
    except ImportError:
        return None
    return convert_diffusers_to_ldm


def ldm_from_diffusers(sd: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    convert = shared_keymap()
    if convert is not None:
        return convert(sd, config)
    return {_private_key(k, config): v for k, v in sd.items()}


def private_ldm_from_diffusers(sd: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    return {_private_key(k, config): v for k, v in sd.items()}


def make_spec(config: UNetConfig, family: str = "sd1", prediction: str = "epsilon", path=None):
    """A stand-in for a sniffed CheckpointSpec (only the fields the model code reads)."""
    return SimpleNamespace(config=config, family=family, prediction=prediction, path=path)


def random_ldm_state_dict(config: UNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random canonical (bare LDM) state dict for ``config``, built from our own module's shapes."""
    from unet_lab.unet_core.diffusion.unet import UNetModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNetModel(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=gen)
        if k.endswith("weight") and len(shape) == 1:
            t = 1.0 + 0.1 * t
        elif len(shape) >= 2:
            t = t / max(1.0, torch.Size(shape[1:]).numel()) ** 0.5
        else:
            t = 0.05 * t
        out[k] = t
    return out


def write_unet_file(path: Path, sd: dict[str, torch.Tensor], prefix: str = "",
                    metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a UNet-only safetensors file in the LDM layout (optionally prefixed)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def sdxl_inputs(batch: int, pooled: int = TINY_POOLED, seed: int = 0):
    """Pooled text embeddings and the 6 size/crop ids SDXL conditions on."""
    gen = torch.Generator().manual_seed(seed)
    text_embeds = torch.randn(batch, pooled, generator=gen)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch)
    time_ids[-1] = torch.tensor([768.0, 1344.0, 32.0, 0.0, 832.0, 1216.0])
    return text_embeds, time_ids


CONFIG_METADATA_KEY = "unet_lab.config"  # where our files keep their full config (DESIGN: file alone rebuilds)


def config_metadata(config: UNetConfig) -> dict[str, str]:
    import json

    return {CONFIG_METADATA_KEY: json.dumps(config.to_dict())}


def write_tiny_unet(models_root: Path, name: str, config: UNetConfig, seed: int = 0, layout: str = "ldm",
                    dtype: torch.dtype | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """A UNet-only file in models_root/diffusion_models; returns (path, its canonical LDM weights).

    ``layout``: "ldm" (bare), "ldm_prefixed" (``model.diffusion_model.``) or "diffusers"
    (diffusers' own UNet2DConditionModel state dict: names come from diffusers itself).
    """
    path = Path(models_root) / "diffusion_models" / name
    if layout == "diffusers":
        twin = diffusers_twin(config, seed=seed)
        dsd = {k: v.detach().clone() for k, v in twin.state_dict().items()}
        write_unet_file(path, dsd, metadata=config_metadata(config), dtype=dtype)
        ldm = private_ldm_from_diffusers(dsd, config)
    else:
        ldm = random_ldm_state_dict(config, seed=seed)
        prefix = "model.diffusion_model." if layout == "ldm_prefixed" else ""
        write_unet_file(path, ldm, prefix=prefix, metadata=config_metadata(config), dtype=dtype)
    if dtype is not None:
        ldm = {k: v.to(dtype) for k, v in ldm.items()}
    return path, ldm
