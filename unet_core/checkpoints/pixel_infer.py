"""Tell a pixel diffusion U-Net apart and rebuild its config from key names and shapes alone.

Shapes fix the widths, the levels, the ResBlocks per level, where attention sits, scale-shift
norm, ResBlock up/down sampling, learned sigma (twice the image channels out), class
conditioning (``label_emb`` / ``class_embedding``) and the time embedding (a ``time_proj``
tensor means Gaussian-Fourier features). They cannot fix the attention heads, the order of
the fused ``qkv`` rows, diffusers' downsample padding or the noise schedule: those follow the
published releases by rule (guided-diffusion: 64 channels per head, its 64x64 model the new
head order, its 128x128 model 4 heads; improved-diffusion: 4 heads; diffusers files without a
config.json: the google/ddpm conventions), and :func:`infer_config` returns a note saying so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import CheckpointError
from ..pixel_unet_config import PixelUNetConfig

Shapes = Mapping[str, tuple[int, ...]]
_SD_MARKERS = ("transformer_blocks", "attn2", "add_embedding", "proj_in")
# channel multipliers of guided/improved-diffusion's create_model, per image size
_MULT_SIZES = {(0.5, 1, 1, 2, 2, 4, 4): 512, (1, 1, 2, 2, 4, 4): 256, (1, 1, 2, 3, 4): 128, (1, 2, 3, 4): 64,
               (1, 2, 2, 2): 32}
_BLOCK = re.compile(r"^(input|output)_blocks\.(\d+)\.")


def pixel_layout(keys: list[str] | Mapping[str, object]) -> str | None:
    """"guided" (our canonical layout too), "diffusers", or None when the keys are no pixel diffusion U-Net."""
    keyset = set(keys)
    if any(m in k for k in keyset for m in _SD_MARKERS):
        return None
    if {"input_blocks.0.0.weight", "out.2.weight", "time_embed.0.weight"} <= keyset:
        return "guided"
    if {"conv_in.weight", "time_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight"} <= keyset:
        return "diffusers"
    return None


def _refuse(cause: str) -> CheckpointError:
    return CheckpointError(None, f"the pixel diffusion config cannot be inferred from the keys: {cause}")


def _count(prefix: str, shapes: Shapes) -> int:
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in shapes):
        n += 1
    return n


def _heads_rule(resblock_updown: bool, chans: tuple[int, ...], num_classes: int | None) -> tuple[dict, str]:
    if not resblock_updown:
        return {"num_heads": 4, "qkv_order": "legacy"}, "improved-diffusion default: 4 heads, legacy qkv order"
    if chans == (192, 384, 576, 768):
        return {"head_channels": 64, "qkv_order": "split"}, "guided-diffusion 64x64: 64-channel heads, new qkv order"
    if chans == (256, 256, 512, 768, 1024):
        return {"num_heads": 4, "qkv_order": "legacy"}, "guided-diffusion 128x128: 4 heads, legacy qkv order"
    return {"head_channels": 64, "qkv_order": "legacy"}, "guided-diffusion default: 64-channel heads, legacy qkv order"


def _fit_heads(heads: dict, widths: tuple[int, ...]) -> tuple[dict, str]:
    """The rule's heads, or one head where a reduced model's widths do not divide by them."""
    per = heads.get("head_channels")
    if per and any(w % per for w in widths) or not per and any(w % heads["num_heads"] for w in widths):
        return {"num_heads": 1, "qkv_order": heads["qkv_order"]}, "; widths do not divide by it, so one head"
    return heads, ""


def config_from_guided_shapes(shapes: Shapes) -> tuple[PixelUNetConfig, str]:
    """Config and a note on what was decided by rule, from guided/improved-diffusion (canonical) shapes."""
    try:
        cin = shapes["input_blocks.0.0.weight"]
        time = shapes["time_embed.0.weight"]
        out = shapes["out.2.weight"]
    except KeyError as exc:
        raise _refuse(f"{exc.args[0]} is missing") from None
    n_in, n_out = _count("input_blocks.", shapes), _count("output_blocks.", shapes)
    ups = [i for i in range(n_out) for p in (1, 2)
           if f"output_blocks.{i}.{p}.conv.weight" in shapes or f"output_blocks.{i}.{p}.in_layers.0.weight" in shapes]
    per_level = ups[0] + 1 if ups else n_out
    if per_level < 2 or n_out % per_level or n_in != n_out:
        raise _refuse(f"{n_in} input blocks and {n_out} output blocks (upsamplers at {ups[:4]}) fit no U-Net")
    levels, res = n_out // per_level, per_level - 1
    chans, attn, index = [], [], 1
    for level in range(levels):
        width = shapes.get(f"input_blocks.{index}.0.out_layers.3.weight")
        if width is None:
            raise _refuse(f"input_blocks.{index}.0 is not a ResBlock")
        chans.append(width[0])
        if f"input_blocks.{index}.1.qkv.weight" in shapes:
            attn.append(level)
        index += res + (level != levels - 1)
    updown = levels > 1 and f"input_blocks.{res + 1}.0.op.weight" not in shapes
    emb = shapes.get("input_blocks.1.0.emb_layers.1.weight", (0,))[0]
    label = shapes.get("label_emb.weight")
    mult = tuple(c / time[1] for c in chans)
    mult = tuple(int(m) if m == int(m) else m for m in mult)
    heads, rule = _heads_rule(updown, tuple(chans), label[0] if label else None)
    mid = "middle_block.1.qkv.weight" in shapes
    heads, fallback = _fit_heads(heads, tuple(chans[lv] for lv in attn) + (chans[-1],) * mid)
    rule += fallback
    size = _MULT_SIZES.get(mult)
    fields = dict(
        in_channels=cin[1], out_channels=out[0], block_channels=tuple(chans), num_res_blocks=res,
        attention_levels=tuple(attn), mid_attention=mid,
        scale_shift_norm=emb == 2 * chans[0], resblock_updown=updown, time_channels=time[1],
        time_embed_dim=time[0], num_classes=label[0] if label else None, image_size=size,
        beta_schedule="cosine" if tuple(chans) == (192, 384, 576, 768) else "linear", **heads)
    try:
        config = PixelUNetConfig(**fields)
    except ValueError as exc:
        raise _refuse(str(exc)) from None
    note = (f"config inferred from shapes; by rule: {rule}; noise schedule {config.beta_schedule}"
            + (f"; resolution {size} from the channel multipliers {list(mult)}" if size else ""))
    return config, note


def config_from_diffusers_shapes(shapes: Shapes) -> tuple[PixelUNetConfig, str]:
    """Config from diffusers ``UNet2DModel`` shapes (no config.json): the google/ddpm conventions by rule."""
    levels = _count("down_blocks.", shapes)
    try:
        res = _count("down_blocks.0.resnets.", shapes)
        chans = tuple(shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels))
        time = shapes["time_embedding.linear_1.weight"]
        cin, out = shapes["conv_in.weight"], shapes["conv_out.weight"]
    except KeyError as exc:
        raise _refuse(f"{exc.args[0]} is missing") from None
    attn = tuple(i for i in range(levels) if f"down_blocks.{i}.attentions.0.group_norm.weight" in shapes)
    fourier = shapes.get("time_proj.weight")
    label = shapes.get("class_embedding.weight")
    emb = shapes["down_blocks.0.resnets.0.time_emb_proj.weight"][0]
    kinds = {f"down_blocks.{i}.downsamplers.0.conv.weight" in shapes for i in range(levels - 1)}
    if len(kinds) > 1:
        raise _refuse("some levels downsample with a ResBlock and some with a conv (diffusers' mixed "
                      "downsample_type='resnet'), which this U-Net does not build")
    updown = kinds == {False}
    try:
        config = PixelUNetConfig(
            in_channels=cin[1], out_channels=out[0], block_channels=chans, num_res_blocks=res, attention_levels=attn,
            mid_attention="mid_block.attentions.0.to_q.weight" in shapes or "mid_block.attentions.0.query.weight"
            in shapes, mid_attention_norm="mid_block.attentions.0.group_norm.weight" in shapes,
            scale_shift_norm=emb == 2 * chans[0], resblock_updown=updown, downsample_padding=0,
            time_channels=time[1], time_embed_dim=time[0], time_embedding="fourier" if fourier else "positional",
            flip_sin_to_cos=False, freq_shift=1.0, norm_eps=1e-6, qkv_order="split",
            num_classes=label[0] if label else None)
    except ValueError as exc:
        raise _refuse(str(exc)) from None
    return config, ("config inferred from shapes; by rule (google/ddpm conventions, no config.json): one "
                    "attention head, downsample padding 0, norm eps 1e-6, time shift 1, linear schedule")


_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}


def config_from_diffusers_json(data: Mapping[str, object], where: str | None = None) -> PixelUNetConfig:
    """Config from a diffusers ``UNet2DModel`` config.json (CheckpointError for block types we do not build)."""
    def get(key: str, default: object) -> object:
        value = data.get(key, default)
        return default if value is None and default is not None else value

    down, up = list(get("down_block_types", [])), list(get("up_block_types", []))
    bad = [b for b in down if b not in _DOWN_TYPES] + [b for b in up if b not in _UP_TYPES]
    if bad or [_DOWN_TYPES[b] for b in down] != [_UP_TYPES[b] for b in reversed(up)]:
        raise CheckpointError(where, f"UNet2DModel block types {down} / {up} are not supported (only DownBlock2D, "
                                     f"AttnDownBlock2D and their mirrored up blocks)")
    if get("downsample_type", "conv") != "conv" or get("upsample_type", "conv") != "conv":
        raise CheckpointError(where, "downsample_type/upsample_type 'resnet' (ResBlock resampling only in "
                                     "attention blocks) is not supported; 'conv' is")
    if get("act_fn", "silu") != "silu" or get("resnet_time_scale_shift", "default") not in ("default", "scale_shift"):
        raise CheckpointError(where, "only silu activations and default/scale_shift time norms are supported")
    chans = tuple(int(c) for c in get("block_out_channels", ()))
    head_dim = data.get("attention_head_dim")
    scale_shift = get("resnet_time_scale_shift", "default") == "scale_shift"
    time_type = str(get("time_embedding_type", "positional"))
    try:
        return PixelUNetConfig(
            in_channels=int(get("in_channels", 3)), out_channels=int(get("out_channels", 3)), block_channels=chans,
            num_res_blocks=int(get("layers_per_block", 2)),
            attention_levels=tuple(i for i, b in enumerate(down) if _DOWN_TYPES[b]),
            mid_attention=bool(get("add_attention", True)) and data.get("mid_block_type", "UNetMidBlock2D") is not None,
            mid_attention_norm=not scale_shift or data.get("attn_norm_num_groups") is not None,
            head_channels=int(head_dim) if head_dim else None, num_heads=1, qkv_order="split",
            scale_shift_norm=scale_shift, resblock_updown=False,
            downsample_padding=int(get("downsample_padding", 1)),
            time_channels=2 * chans[0] if time_type == "fourier" else chans[0],
            time_embed_dim=int(get("time_embedding_dim", 0) or 4 * chans[0]), time_embedding=time_type,
            # diffusers' fourier features are always sin first, whatever flip_sin_to_cos says
            flip_sin_to_cos=bool(get("flip_sin_to_cos", True)) and time_type != "fourier",
            freq_shift=float(get("freq_shift", 0)),
            num_classes=data.get("num_class_embeds"), norm_groups=int(get("norm_num_groups", 32)),
            norm_eps=float(get("norm_eps", 1e-5)), mid_scale=float(get("mid_block_scale_factor", 1)),
            center_input=bool(get("center_input_sample", False)),
            image_size=data.get("sample_size") if isinstance(data.get("sample_size"), int) else None)
    except (ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(where, f"config.json does not describe a usable UNet2DModel ({exc})") from None


def infer_config(shapes: Shapes, metadata: Mapping[str, str] | None = None, json_config: Mapping | None = None,
                 where: str | None = None) -> tuple[PixelUNetConfig, str, str]:
    """(config, layout, note) for a pixel diffusion state dict's shapes; CheckpointError naming ``where``."""
    from ..pixel_unet_config import METADATA_KEY

    layout = pixel_layout(shapes)
    if layout is None:
        raise CheckpointError(where, "not a pixel diffusion U-Net (no guided-diffusion or UNet2DModel keys)")
    try:
        inferred, note = (config_from_guided_shapes if layout == "guided" else config_from_diffusers_shapes)(shapes)
    except CheckpointError as exc:
        raise CheckpointError(where, exc.cause) from None
    if metadata and METADATA_KEY in metadata:
        return PixelUNetConfig.from_json(metadata[METADATA_KEY], where), layout, "config from the file's metadata"
    if json_config is not None:
        stated = config_from_diffusers_json(json_config, where)
        for name in ("block_channels", "num_res_blocks", "attention_levels", "in_channels", "out_channels"):
            if getattr(stated, name) != getattr(inferred, name):
                raise CheckpointError(where, f"config.json disagrees with the weights on {name} "
                                             f"({getattr(stated, name)} vs {getattr(inferred, name)})")
        return stated, layout, "config from config.json"
    return inferred, layout, note
