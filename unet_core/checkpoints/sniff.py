"""Tell what a weight file is from its names, shapes, dtypes and metadata alone.

For safetensors only the header is read (a few hundred KB even for a 5 GB SDXL file), so
sniffing is instant and never loads a tensor. Pickles have no header: they are opened with
``torch.load(weights_only=True, mmap=True)`` and only the tensors' shapes and dtypes are used.
Diffusers folders are sniffed from their weight file's header plus ``config.json``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .infer_config import (
    SHAPE_FIELDS,
    config_from_diffusers_json,
    config_from_diffusers_shapes,
    config_from_ldm_shapes,
    config_from_metadata,
)
from .keymap import diffusers_to_ldm_keymap
from .pixel_infer import pixel_layout
from .pixel_sniff import fill_spec as fill_pixel_spec
from .readers import PICKLE_SUFFIXES, load_pickle, read_diffusers_config, resolve_diffusers_folder
from .safetensors_header import read_header
from .spec import CheckpointSpec, Component, SamplingHint, family_of

TORCH_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
               "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32",
               "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}

MARKER_KEYS = ("v_pred", "ztsnr", "edm_mean", "edm_std", "edm_vpred.sigma_max", "edm_vpred.sigma_min")
_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
_DIFFUSERS_ROOTS = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.", "up_blocks.",
                    "conv_norm_out.", "conv_out.")
_LORA_RX = re.compile(r"(^lora_(unet|te\d?)_)|(\.lora_(up|down|mid|A|B)\.)|(\.lora\.(up|down)\.)|(_lora\.(up|down)\.)"
                      r"|(lora_linear_layer\.)|(\.hada_w\d_[ab]$)|(\.lokr_w\d)|(^lycoris_)|(\.oft_blocks$)"
                      r"|(\.alpha$)|(\.dora_scale$)")
_TE_RX = re.compile(r"(^|\.)(text_model\.(encoder|embeddings|final_layer_norm)|transformer\.resblocks\.|"
                    r"token_embedding|positional_embedding|text_projection|logit_scale|ln_final\.|"
                    r"encoder\.block\.\d+\.layer|shared\.weight)")
_VAE_RX = re.compile(r"^(first_stage_model\.|vae\.)?(encoder|decoder|quant_conv|post_quant_conv)\.")
_SCHEDULE = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
             "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
             "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
             "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "model_ema.decay",
             "model_ema.num_updates"}
# Prefix -> component name, for the parts of full checkpoints (LDM/SGM and ComfyUI saves).
_COMPONENT_PREFIXES = (
    ("first_stage_model.", "vae"), ("vae.", "vae"),
    ("cond_stage_model.", "text_encoder"), ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"), ("text_encoders.", "text_encoder"),
    ("clip_l.", "text_encoder"), ("clip_g.", "text_encoder_2"), ("model_ema.", "ema"),
)


def _maybe_lora(key: str) -> bool:
    """Cheap substring pre-check before the LoRA regex (sniffing must stay instant)."""
    return "lora" in key or "hada_" in key or "lokr_" in key or "lycoris" in key or \
        key.endswith((".alpha", ".dora_scale", ".oft_blocks"))


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def sniff(path: str | Path) -> CheckpointSpec:
    """A :class:`CheckpointSpec` for a safetensors file, a pickle or a diffusers folder."""
    path = Path(path)
    if path.is_dir():
        return _sniff_folder(path)
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        sd = load_pickle(path)
        entries = {k: Entry(TORCH_TO_ST.get(str(v.dtype).replace("torch.", ""), str(v.dtype)), tuple(v.shape),
                            v.numel() * v.element_size()) for k, v in sd.items()}
        return analyse(path, entries, {}, path.stat().st_size, fmt="pickle")
    header = read_header(path)
    entries = {k: Entry(t.dtype, t.shape, t.nbytes) for k, t in header.tensors.items()}
    return analyse(path, entries, header.metadata, header.file_size, fmt="safetensors")


def _sniff_folder(path: Path) -> CheckpointSpec:
    folder = resolve_diffusers_folder(path)
    entries: dict[str, Entry] = {}
    metadata: dict[str, str] = {}
    size = 0
    for f in folder.weight_files:
        if f.suffix == ".bin":
            sd = load_pickle(f)
            entries.update({k: Entry(TORCH_TO_ST.get(str(v.dtype).replace("torch.", ""), str(v.dtype)),
                                     tuple(v.shape), v.numel() * v.element_size()) for k, v in sd.items()})
            size += f.stat().st_size
        else:
            h = read_header(f)
            entries.update({k: Entry(t.dtype, t.shape, t.nbytes) for k, t in h.tensors.items()})
            metadata.update(h.metadata)
            size += h.file_size
    json_cfg = read_diffusers_config(folder)
    spec = analyse(path, entries, metadata, size, fmt="diffusers_folder", json_config=json_cfg,
                   weights_paths=tuple(str(f) for f in folder.weight_files))
    if json_cfg is None and spec.config is not None:
        spec.notes.append("no config.json beside the weights: the config was inferred from shapes "
                          "(heads, norm groups and time-embedding width by rule)")
    return spec


def _lora_info(keys: list[str], entries: Mapping[str, Entry]) -> tuple[str | None, str]:
    fmt = "kohya" if any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in keys) else \
        "LyCORIS" if any(".hada_" in k or ".lokr_" in k for k in keys) else \
        "PEFT/diffusers" if any(".lora_A." in k or ".lora_B." in k for k in keys) else \
        "diffusers (attention processors)" if any("_lora." in k or "lora_linear_layer" in k for k in keys) else "LoRA"
    if any(k.startswith("lora_te2_") or "text_encoder_2" in k for k in keys):
        return "sdxl", fmt
    for k in keys:
        if ("attn2" in k and ("to_k" in k)) and re.search(r"(lora_down|lora_A|lora\.down|down)\.weight$", k):
            ctx = entries[k].shape[1] if len(entries[k].shape) >= 2 else None
            fam = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(ctx)
            if fam:
                return fam, fmt
    if any("input_blocks_4_1_transformer_blocks_1" in k or "input_blocks.4.1.transformer_blocks.1" in k for k in keys):
        return "sdxl", fmt
    return None, fmt


def _find_unet(keys: list[str]) -> tuple[str, str] | None:
    """(layout, prefix) of the UNet in ``keys``, or None."""
    keyset = set(keys)
    for k in keys:
        if k.endswith("input_blocks.0.0.weight"):
            prefix = k[: -len("input_blocks.0.0.weight")]
            if prefix + "out.2.weight" in keyset or prefix + "time_embed.0.weight" in keyset:
                return ("ldm" if prefix == "" else "ldm_prefixed"), prefix
    for k in keys:
        if k.endswith("conv_in.weight"):
            prefix = k[: -len("conv_in.weight")]
            if prefix + "time_embedding.linear_1.weight" in keyset:
                return "diffusers", prefix
    return None


def _component_of(key: str) -> tuple[str, str]:
    for prefix, name in _COMPONENT_PREFIXES:
        if key.startswith(prefix):
            return name, prefix
    if key in _SCHEDULE:
        return "schedule", ""
    if _VAE_RX.match(key):
        return "vae", ""
    if _TE_RX.search(key):
        return "text_encoder", ""
    head = key.split(".", 1)[0] + "." if "." in key else ""
    return "other", head


def _components(keys: list[str], entries: Mapping[str, Entry]) -> list[Component]:
    groups: dict[tuple[str, str], list[str]] = {}
    for k in keys:
        groups.setdefault(_component_of(k), []).append(k)
    out = []
    for (name, prefix), ks in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append(Component(name, prefix, len(ks), sum(entries[k].numel for k in ks),
                             sum(entries[k].nbytes for k in ks)))
    return out


_CONTROLNET_MARKERS = ("input_hint_block.", "zero_convs.", "controlnet_cond_embedding.", "controlnet_down_blocks.")
_V_NAME = re.compile(r"(^|[^a-z0-9])(v[-_ ]?pred(iction)?|vpred|768[-_]v|v[-_]?param)([^a-z0-9]|$)", re.I)


def _norm_prediction(value: str) -> str | None:
    v = value.strip().lower().replace("-", "_")
    if v in ("v", "v_prediction", "velocity", "v_pred", "vpred"):
        return "v_prediction"
    if v in ("epsilon", "eps", "noise"):
        return "epsilon"
    return None


def _prediction(spec: CheckpointSpec, name: str) -> None:
    md = spec.metadata
    markers = set(spec.markers)
    for key in ("modelspec.prediction_type", "modelspec.predict_key"):
        if key in md and _norm_prediction(md[key]):
            spec.prediction, spec.prediction_source = _norm_prediction(md[key]), f"metadata {key}={md[key]!r}"
            break
    else:
        if "edm_vpred.sigma_max" in markers:
            spec.prediction, spec.prediction_source = "v_prediction", "key edm_vpred.sigma_max"
            spec.prediction_detail = "EDM-style v-prediction (continuous sigmas, edm_vpred.* keys)"
        elif "v_pred" in markers:
            spec.prediction, spec.prediction_source = "v_prediction", "key v_pred"
        elif "edm_mean" in markers or "edm_std" in markers:
            spec.prediction, spec.prediction_source = "unknown", "keys edm_mean/edm_std"
            spec.prediction_detail = ("EDM model (Playground v2.5 style): needs EDM sampling with its own latent "
                                      "scaling, not epsilon or v")
        elif str(md.get("ss_v_parameterization", "")).lower() == "true":
            spec.prediction, spec.prediction_source = "v_prediction", "metadata ss_v_parameterization=True"
        elif md.get("modelspec.architecture", "").endswith("-v") or "768-v" in md.get("modelspec.architecture", ""):
            spec.prediction = "v_prediction"
            spec.prediction_source = f"metadata modelspec.architecture={md['modelspec.architecture']!r}"
        elif _V_NAME.search(name):
            spec.prediction, spec.prediction_source = "v_prediction", f"file name {name!r}"
        elif spec.turbo is not None and spec.turbo.kind == "turbo":
            spec.prediction, spec.prediction_source = "epsilon", f"Turbo models are epsilon ({spec.turbo.source})"
        elif spec.family in ("sd1", "sd1_inpaint", "sdxl", "sdxl_inpaint", "sd2_inpaint"):
            spec.prediction = "epsilon"
            spec.prediction_source = f"default for {spec.family} (no v-prediction key, metadata or name)"
        elif spec.family == "sd2":
            spec.prediction = "unknown"
            spec.prediction_source = ("nothing in the header: SD2 comes as 512 epsilon and 768 v-prediction "
                                      "models; loading applies ComfyUI's SD2 weight rule")
        else:
            spec.prediction, spec.prediction_source = "unknown", "no metadata, marker key or name hint"
    if "ztsnr" in markers:
        spec.prediction_detail = (spec.prediction_detail + "; " if spec.prediction_detail else "") + \
            "zero terminal SNR (ztsnr key)"


_STEPS = re.compile(r"(\d+)[-_ ]?steps?", re.I)


def _sampling_hint(spec: CheckpointSpec, name: str) -> SamplingHint | None:
    md = spec.metadata
    fields = [("file name", name)] + [(f"metadata {k}", md[k]) for k in
                                      ("modelspec.title", "modelspec.architecture", "modelspec.description",
                                       "ss_sd_model_name") if k in md]
    for where, text in fields:
        low = text.lower()
        src = f"{where} {text!r}"
        if "turbo" in low:
            return SamplingHint("turbo", src, (1, 4), 1.0, "SDTurboScheduler", "euler_ancestral", 512,
                                "adversarially distilled: more steps or cfg > 1 burn the image")
        m = _STEPS.search(low)
        n = int(m.group(1)) if m else None
        if "lightning" in low:
            return SamplingHint("lightning", src, (n, n) if n else (2, 8), 1.0, "sgm_uniform", "euler")
        if "hyper" in low and ("sd" in low or n):
            return SamplingHint("hyper", src, (n, n) if n else (1, 8), 1.0, "sgm_uniform", "euler")
        if re.search(r"(^|[^a-z])lcm([^a-z]|$)", low):
            return SamplingHint("lcm", src, (4, 8), 1.0, "sgm_uniform", "lcm")
    return None


def analyse(path: str | Path, entries: Mapping[str, Entry], metadata: Mapping[str, str], file_size: int,
            fmt: str = "safetensors", json_config: dict | None = None,
            weights_paths: tuple[str, ...] = ()) -> CheckpointSpec:
    """Build the spec from names/shapes/dtypes/metadata (shared by every input format)."""
    path = Path(path)
    keys = list(entries)
    spec = CheckpointSpec(path=str(path), kind="unknown", format=fmt, metadata=dict(metadata), file_size=file_size,
                          total_keys=len(keys), weights_path=weights_paths[0] if weights_paths else str(path),
                          weights_paths=weights_paths or (str(path),), sample_keys=tuple(keys[:8]))
    spec.all_dtypes = dict(Counter(e.dtype for e in entries.values()))
    spec.markers = tuple(k for k in MARKER_KEYS if k in entries)
    name = path.name

    lora_hits = sum(1 for k in keys if _maybe_lora(k) and _LORA_RX.search(k))
    if keys and lora_hits >= 0.5 * len(keys):
        spec.kind = "lora"
        spec.lora_family, spec.lora_format = _lora_info(keys, entries)
        spec.components = [Component("lora", "", len(keys), sum(e.numel for e in entries.values()),
                                     sum(e.nbytes for e in entries.values()))]
        return spec

    if any(m in k for k in keys[:4000] for m in _CONTROLNET_MARKERS):
        spec.components = _components([k for k in keys if k not in spec.markers], entries)
        spec.notes.append("this is a ControlNet (it has input_hint_block / zero_convs / controlnet_cond_embedding "
                          "keys); load it with ComfyUI's Load ControlNet Model (models/controlnet)")
        return spec

    if pixel_layout(entries) is not None:
        return fill_pixel_spec(spec, entries, metadata, json_config)

    found = _find_unet(keys)
    if found is None:
        spec.components = _components([k for k in keys if k not in spec.markers], entries)
        names = {c.name for c in spec.components}
        big = {c.name for c in spec.components if c.keys >= 0.1 * len(keys)}
        if names <= {"vae", "schedule", "other"} and "vae" in big:
            spec.kind = "vae"
        elif names <= {"text_encoder", "text_encoder_2", "other"} and big & {"text_encoder", "text_encoder_2"}:
            spec.kind = "text_encoder"
        return spec

    layout, prefix = found
    spec.layout, spec.unet_prefix = layout, prefix
    roots = _LDM_ROOTS if layout != "diffusers" else _DIFFUSERS_ROOTS
    unet_keys = [k for k in keys if k.startswith(prefix) and k[len(prefix):].startswith(roots)]
    rest = [k for k in keys if not (k.startswith(prefix) and k[len(prefix):].startswith(roots))
            and k not in spec.markers]
    n = len(prefix)
    shapes = {k[n:]: entries[k].shape for k in unet_keys}
    try:
        if layout == "diffusers":
            inferred = config_from_diffusers_shapes(shapes)
        else:
            inferred = config_from_ldm_shapes(shapes)
    except CheckpointError as exc:
        raise CheckpointError(path, f"looks like a UNet ({layout} layout) but {exc.cause}") from None
    config, source = inferred, "shapes"
    if json_config is not None:
        stated = config_from_diffusers_json(json_config)
        clash = [f for f in SHAPE_FIELDS if getattr(stated, f) != getattr(inferred, f)]
        if clash:
            raise CheckpointError(path, f"config.json disagrees with the weights on {', '.join(clash)} "
                                        f"(config.json: {[getattr(stated, f) for f in clash]}, weights: "
                                        f"{[getattr(inferred, f) for f in clash]}): the folder mixes two models")
        config, source = stated, "config.json"
    else:
        config, note = config_from_metadata(metadata, inferred)
        if note:
            spec.notes.append(note)
        elif config is not inferred:
            source = "shapes + stored config (metadata)"
    spec.config, spec.config_source = config, source
    spec.family = family_of(config)

    expected = set(diffusers_to_ldm_keymap(config).values() if layout != "diffusers"
                   else diffusers_to_ldm_keymap(config).keys())
    missing = expected - set(shapes)
    extra = set(shapes) - expected
    if missing:
        spec.notes.append(f"{len(missing)} UNet tensors are missing (e.g. {', '.join(sorted(missing)[:3])}): "
                          f"the file is incomplete or not a standard SD UNet")
    if extra:
        spec.notes.append(f"{len(extra)} tensors under the UNet prefix are not part of the UNet and will be "
                          f"ignored (e.g. {', '.join(sorted(extra)[:3])})")
    unet_keys = [prefix + k for k in shapes if k in expected]
    spec.unet_keys = len(unet_keys)
    spec.unet_key_names = tuple(unet_keys)
    spec.unet_params = sum(entries[k].numel for k in unet_keys)
    spec.unet_bytes = sum(entries[k].nbytes for k in unet_keys)
    spec.dtypes = dict(Counter(entries[k].dtype for k in unet_keys))
    spec.components = _components(rest + [prefix + k for k in extra], entries)
    others = {c.name for c in spec.components}
    spec.kind = "full_checkpoint" if others & {"vae", "text_encoder", "text_encoder_2"} else "unet"
    spec.turbo = _sampling_hint(spec, name)
    _prediction(spec, name)
    return spec

