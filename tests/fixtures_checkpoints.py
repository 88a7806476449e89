"""Checkpoint fixtures made by code: real-shape headers on sparse files, no GB written.

Real UNet shapes come from diffusers' own ``UNet2DConditionModel`` built on the meta device
for the real configs (SD1.4/1.5, SD2.1 = SD-Turbo, SDXL = SDXL-Turbo, and 9-channel inpaint
variants); LDM layouts are obtained by renaming through the key map under test, which the
tests check separately against diffusers' names and known LDM names. A file gets a valid
safetensors header and is then extended to its real size with ``truncate`` (a sparse file).
VAE names come from diffusers' ``AutoencoderKL`` (meta); CLIP text-encoder and LoRA names are
written out from their public layouts.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch

from unet_lab.unet_core.checkpoints.keymap import convert_diffusers_to_ldm
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG, UNetConfig

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "F8_E4M3": 1}
FAMILY_CONFIGS = {
    "sd1": SD1_CONFIG, "sd2": SD2_CONFIG, "sdxl": SDXL_CONFIG,
    "sd1_inpaint": SD1_CONFIG.with_(in_channels=9), "sd2_inpaint": SD2_CONFIG.with_(in_channels=9),
    "sdxl_inpaint": SDXL_CONFIG.with_(in_channels=9),
}
# Parameters (millions) and key counts of the released UNets (their LDM safetensors files).
REAL_PARAMS_M = {"sd1": 859.5, "sd2": 865.9, "sdxl": 2567.5}
REAL_KEYS = {"sd1": 686, "sd2": 686, "sdxl": 1680}
LAYOUTS = ("ldm", "ldm_prefixed", "diffusers")


def diffusers_unet_kwargs(config: UNetConfig) -> dict:
    """The ``UNet2DConditionModel`` arguments a diffusers user writes for ``config``."""
    depths = config.transformer_layers_per_block
    kw = dict(
        sample_size=32, in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        up_block_types=tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim, attention_head_dim=config.num_attention_heads,
        use_linear_projection=config.use_linear_projection, norm_num_groups=config.norm_num_groups,
        transformer_layers_per_block=tuple(max(d, 1) for d in depths),
    )
    if config.mid_transformer_layers != max(depths[-1], 1):
        raise ValueError("diffusers' UNet2DConditionModel takes the middle block's depth from the last level")
    if config.addition_embed_type:
        kw.update(addition_embed_type=config.addition_embed_type,
                  addition_time_embed_dim=config.addition_time_embed_dim,
                  projection_class_embeddings_input_dim=config.projection_class_embeddings_input_dim)
    return kw


def diffusers_meta_state_dict(config: UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers' UNet state dict on the meta device (names and shapes, no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel(**diffusers_unet_kwargs(config))
    return model.state_dict()


@lru_cache(maxsize=16)
def _diffusers_shapes_cached(config: UNetConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((k, tuple(v.shape)) for k, v in diffusers_meta_state_dict(config).items())


def diffusers_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    return dict(_diffusers_shapes_cached(config))


def ldm_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    return convert_diffusers_to_ldm(diffusers_shapes(config), config)


def unet_shapes(family_or_config, layout: str) -> dict[str, tuple[int, ...]]:
    config = FAMILY_CONFIGS[family_or_config] if isinstance(family_or_config, str) else family_or_config
    if layout == "diffusers":
        return diffusers_shapes(config)
    shapes = ldm_shapes(config)
    if layout == "ldm_prefixed":
        return {"model.diffusion_model." + k: v for k, v in shapes.items()}
    return shapes


def write_header_file(path: Path, entries: dict[str, tuple[int, ...] | tuple[str, tuple[int, ...]]],
                      metadata: dict[str, str] | None = None, dtype: str = "F16", sparse: bool = True) -> Path:
    """A safetensors file with a valid header for ``entries`` (name -> shape, or (dtype, shape)).

    ``sparse``: extend the file to its full size with truncate (no data written). Otherwise
    the data region is filled with zeros (only for small files).
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, spec in entries.items():
        dt, shape = spec if (len(spec) == 2 and isinstance(spec[0], str)) else (dtype, spec)
        n = math.prod(shape) * DTYPE_BYTES[dt]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        if sparse:
            f.truncate(8 + len(raw) + offset)
        else:
            f.write(bytes(offset))
    return path


def write_unet(dir_: Path, family: str, layout: str, name: str | None = None, dtype: str = "F16",
               metadata: dict[str, str] | None = None, extra: dict | None = None) -> Path:
    """A real-shape UNet in ``layout``: a file (ldm layouts) or a diffusers folder (unet/ + config.json)."""
    shapes = unet_shapes(family, layout)
    if extra:
        shapes = {**shapes, **extra}
    if layout == "diffusers":
        folder = dir_ / (name or f"{family}_diffusers")
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
        config = FAMILY_CONFIGS[family]
        cfg = {k: v for k, v in diffusers_unet_kwargs(config).items() if k != "sample_size"}
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
        (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **cfg}))
        write_header_file(folder / "unet" / "diffusion_pytorch_model.safetensors", shapes, metadata, dtype)
        return folder
    return write_header_file(dir_ / (name or f"{family}_{layout}.safetensors"), shapes, metadata, dtype)


# -- other components ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def _vae_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2)
    return tuple((k, tuple(v.shape)) for k, v in vae.state_dict().items())


def vae_shapes() -> dict[str, tuple[int, ...]]:
    """The SD VAE's parameter names (diffusers spelling: ``encoder.down_blocks.0…``) and shapes."""
    return dict(_vae_shapes())


def ldm_vae_shapes() -> dict[str, tuple[int, ...]]:
    """A representative subset of the LDM-spelled SD VAE (``encoder.down.0.block.0…``)."""
    out = {"encoder.conv_in.weight": (128, 3, 3, 3), "encoder.conv_in.bias": (128,),
           "quant_conv.weight": (8, 8, 1, 1), "quant_conv.bias": (8,),
           "post_quant_conv.weight": (4, 4, 1, 1), "post_quant_conv.bias": (4,),
           "decoder.conv_in.weight": (512, 4, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}
    for i, ch in enumerate((128, 256, 512, 512)):
        for j in range(2):
            out[f"encoder.down.{i}.block.{j}.norm1.weight"] = (ch,)
            out[f"encoder.down.{i}.block.{j}.conv1.weight"] = (ch, ch, 3, 3)
            out[f"decoder.up.{i}.block.{j}.conv1.weight"] = (ch, ch, 3, 3)
    out["encoder.mid.attn_1.q.weight"] = (512, 512, 1, 1)
    return out


def clip_text_shapes(width: int = 768, layers: int = 12, prefix: str = "text_model.") -> dict[str, tuple[int, ...]]:
    """CLIP text encoder names (HF transformers spelling) and shapes."""
    out = {f"{prefix}embeddings.token_embedding.weight": (49408, width),
           f"{prefix}embeddings.position_embedding.weight": (77, width),
           f"{prefix}final_layer_norm.weight": (width,), f"{prefix}final_layer_norm.bias": (width,)}
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"] = (width, width)
            out[p + f"self_attn.{proj}.bias"] = (width,)
        for ln in ("layer_norm1", "layer_norm2"):
            out[p + f"{ln}.weight"] = (width,)
            out[p + f"{ln}.bias"] = (width,)
        out[p + "mlp.fc1.weight"] = (4 * width, width)
        out[p + "mlp.fc1.bias"] = (4 * width,)
        out[p + "mlp.fc2.weight"] = (width, 4 * width)
        out[p + "mlp.fc2.bias"] = (width,)
    return out


def full_checkpoint_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """UNet + VAE + text encoder(s) as in an LDM/SGM full checkpoint."""
    out = dict(unet_shapes(family, "ldm_prefixed"))
    out.update({"first_stage_model." + k: v for k, v in ldm_vae_shapes().items()})
    if family.startswith("sdxl"):
        out.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip_text_shapes(768, 12).items()})
        out.update({"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280),
                    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
                    "conditioner.embedders.1.model.text_projection": (1280, 1280)})
    else:
        out.update({"cond_stage_model.transformer." + k: v for k, v in clip_text_shapes(768, 12).items()})
    out["alphas_cumprod"] = (1000,)
    return out


def kohya_lora_shapes(family: str = "sdxl", rank: int = 8) -> dict[str, tuple[int, ...]]:
    """A kohya LoRA (``lora_unet_<ldm path>``) on every attention projection, plus text-encoder LoRAs."""
    config = FAMILY_CONFIGS[family]
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in ldm_shapes(config).items():
        if ".transformer_blocks." in key and key.endswith(("to_q.weight", "to_k.weight", "to_v.weight",
                                                            "to_out.0.weight")):
            module = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
            out[module + ".lora_down.weight"] = (rank, shape[1])
            out[module + ".lora_up.weight"] = (shape[0], rank)
            out[module + ".alpha"] = ()
    tes = ("lora_te1_", "lora_te2_") if family.startswith("sdxl") else ("lora_te_",)
    for te in tes:
        for i in range(2):
            m = f"{te}text_model_encoder_layers_{i}_self_attn_q_proj"
            out[m + ".lora_down.weight"] = (rank, 768)
            out[m + ".lora_up.weight"] = (768, rank)
            out[m + ".alpha"] = ()
    return out


def peft_lora_shapes(family: str = "sdxl", rank: int = 4) -> dict[str, tuple[int, ...]]:
    """A PEFT/diffusers LoRA (``unet.<diffusers path>.lora_A.weight``) on attention projections."""
    out = {}
    for key, shape in diffusers_shapes(FAMILY_CONFIGS[family]).items():
        if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight", "attn1.to_q.weight")):
            m = "unet." + key[: -len(".weight")]
            out[m + ".lora_A.weight"] = (rank, shape[1])
            out[m + ".lora_B.weight"] = (shape[0], rank)
    return out
