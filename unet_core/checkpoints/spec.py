"""What a sniffed weight file is: :class:`CheckpointSpec` and its parts, plus ``require_unet``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CheckpointError
from ..unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG, UNetConfig

KINDS = ("unet", "full_checkpoint", "vae", "text_encoder", "lora", "unknown")
FAMILIES = ("sd1", "sd2", "sdxl", "sd1_inpaint", "sd2_inpaint", "sdxl_inpaint")
LAYOUTS = ("ldm", "ldm_prefixed", "diffusers")
LDM_PREFIX = "model.diffusion_model."

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sd1_inpaint": "SD1.x inpainting",
                "sd2_inpaint": "SD2.x inpainting", "sdxl_inpaint": "SDXL inpainting",
                "pixel_diffusion": "pixel diffusion (DDPM family)"}


@dataclass(frozen=True)
class SamplingHint:
    """A few-step (Turbo-like) model and how it wants to be sampled."""

    kind: str                  # "turbo", "lightning", "lcm", "hyper"
    source: str                # where the hint came from, e.g. "file name 'sd_xl_turbo_1.0.safetensors'"
    steps: tuple[int, int] = (1, 4)
    cfg: float = 1.0
    scheduler: str = "SDTurboScheduler"
    sampler: str = "euler_ancestral"
    resolution: int | None = None
    note: str = ""

    def describe(self) -> str:
        lo, hi = self.steps
        steps = f"{lo} step" if lo == hi == 1 else (f"{lo} steps" if lo == hi else f"{lo}-{hi} steps")
        res = f", trained at {self.resolution}x{self.resolution}" if self.resolution else ""
        return (f"{self.kind}: sample with {steps}, cfg {self.cfg:g}, sampler {self.sampler}, "
                f"scheduler {self.scheduler}{res} (from {self.source})")


@dataclass
class Component:
    """One part of a file other than (or besides) the UNet."""

    name: str                  # "unet", "vae", "text_encoder", "text_encoder_2", "ema", "schedule", "other"
    prefix: str
    keys: int
    params: int
    bytes: int

    def describe(self) -> str:
        return f"{self.name} ({self.keys} tensors, {self.params / 1e6:.1f} M params, under {self.prefix or '(root)'!r})"


@dataclass
class CheckpointSpec:
    path: str
    kind: str
    format: str = "safetensors"              # "safetensors", "pickle", "diffusers_folder"
    weights_path: str = ""                   # the file holding the tensors (inside a diffusers folder)
    weights_paths: tuple[str, ...] = ()      # all shards, when sharded
    family: str | None = None
    layout: str | None = None
    config: UNetConfig | None = None
    pixel_config: object | None = None                         # a PixelUNetConfig, for family "pixel_diffusion"
    config_source: str = ""                  # "shapes", "shapes + metadata", "config.json"
    unet_prefix: str = ""
    unet_keys: int = 0
    unet_key_names: tuple[str, ...] = ()                       # the UNet's names as spelled in the file
    unet_params: int = 0
    unet_bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)       # UNet tensors per dtype
    all_dtypes: dict[str, int] = field(default_factory=dict)   # every tensor per dtype
    prediction: str = "unknown"                                # "epsilon", "v_prediction", "unknown"
    prediction_source: str = ""
    prediction_detail: str = ""                                # e.g. EDM markers, zero-terminal-SNR
    prediction_forced: bool = False                            # set by a node when the user overrides it
    turbo: SamplingHint | None = None
    components: list[Component] = field(default_factory=list)  # what else the file holds
    markers: tuple[str, ...] = ()                              # v_pred, ztsnr, edm_* keys present
    lora_family: str | None = None
    lora_format: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0
    total_keys: int = 0
    notes: list[str] = field(default_factory=list)
    sample_keys: tuple[str, ...] = ()

    @property
    def is_unet(self) -> bool:
        return self.kind in ("unet", "full_checkpoint") and self.config is not None

    @property
    def dtype(self) -> str | None:
        """The UNet's most common dtype (safetensors spelling, e.g. "F16")."""
        if not self.dtypes:
            return None
        return max(self.dtypes.items(), key=lambda kv: kv[1])[0]

    @property
    def base_family(self) -> str | None:
        return self.family.replace("_inpaint", "") if self.family else None

    @property
    def is_inpaint(self) -> bool:
        return bool(self.family and self.family.endswith("_inpaint"))

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


def family_of(config: UNetConfig) -> str | None:
    """The SD family a config belongs to, or None for anything else (reduced or unknown models)."""
    base = None
    shape_only = ("block_out_channels", "layers_per_block", "transformer_layers_per_block",
                  "cross_attention_dim", "use_linear_projection", "projection_class_embeddings_input_dim")
    for name, ref in (("sd1", SD1_CONFIG), ("sd2", SD2_CONFIG), ("sdxl", SDXL_CONFIG)):
        if all(getattr(config, f) == getattr(ref, f) for f in shape_only) \
                and config.mid_transformer_layers == ref.mid_transformer_layers:
            base = name
    if base is None or config.out_channels != 4:
        return None
    if config.in_channels == 4:
        return base
    if config.in_channels == 9:
        return base + "_inpaint"
    return None


_LOAD_WITH = {
    "vae": "load it with a Load VAE node (models/vae)",
    "text_encoder": "load it with a Load CLIP node (models/text_encoders)",
    "lora": "put it in models/loras and apply it to a model with Apply LoRA (block weights) or ComfyUI's "
            "Load LoRA",
}


def require_unet(spec: CheckpointSpec) -> CheckpointSpec:
    """``spec`` if the file holds a diffusion UNet; otherwise a CheckpointError saying what it is."""
    if spec.is_unet:
        return spec
    if spec.family == "pixel_diffusion":
        raise CheckpointError(spec.path, "this is a pixel-space diffusion U-Net (DDPM family: diffusers UNet2DModel "
                                         "or guided-diffusion), not an SD1/SD2/SDXL UNet: load it with Load Pixel "
                                         "Diffusion U-Net and sample it with Sample Pixel Diffusion")
    if spec.kind == "lora":
        fam = FAMILY_NAMES.get(spec.lora_family or "", None)
        what = f"a LoRA for {fam}" if fam else "a LoRA (base model not identified)"
        fmt = f", {spec.lora_format} format" if spec.lora_format else ""
        raise CheckpointError(spec.path, f"this is {what}{fmt}, not a UNet: {_LOAD_WITH['lora']}")
    if spec.kind == "vae":
        raise CheckpointError(spec.path, f"this is a VAE ({spec.total_keys} tensors) with no UNet in it: "
                                         f"{_LOAD_WITH['vae']}")
    if spec.kind == "text_encoder":
        raise CheckpointError(spec.path, f"this is a text encoder ({spec.total_keys} tensors) with no UNet in it: "
                                         f"{_LOAD_WITH['text_encoder']}")
    held = ", ".join(c.name for c in spec.components) or "nothing recognisable"
    sample = ", ".join(spec.sample_keys[:4])
    raise CheckpointError(spec.path, f"no diffusion UNet found in this file (it holds {held}; "
                                     f"{spec.total_keys} tensors, e.g. {sample}): it is not an SD1/SD2/SDXL UNet "
                                     f"or checkpoint" + (f"; {'; '.join(spec.notes)}" if spec.notes else ""))
