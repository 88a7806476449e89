"""LoRA key names: split file keys into (module prefix, role) and resolve prefixes onto LDM modules.

A LoRA file names each patched module by a prefix (``lora_unet_input_blocks_1_1_proj_in``,
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``…) and each tensor by a
suffix (``.lora_up.weight``, ``.hada_w1_a``…). Kohya prefixes replace every dot by an
underscore, so they are resolved by exact lookup against the model's own module names with
dots replaced (both LDM and diffusers spellings), never by guessing where the dots were.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Suffix -> role. Longest suffixes are tried first, so ".lora_A.default.weight" wins over ".weight".
SUFFIX_ROLES: dict[str, str] = {
    # LoRA / LoCon (kohya, LyCORIS)
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    # old diffusers attention processors: "...processor.to_q_lora.up.weight"
    "_lora.up.weight": "up", "_lora.down.weight": "down",
    ".lora.up.weight": "up", ".lora.down.weight": "down",
    # diffusers / PEFT
    ".lora_B.weight": "up", ".lora_A.weight": "down",
    ".lora_B.default.weight": "up", ".lora_A.default.weight": "down",
    ".lora_linear_layer.up.weight": "up", ".lora_linear_layer.down.weight": "down",
    # shared
    ".alpha": "alpha", ".dora_scale": "dora_scale",
    # LoHa
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a",
    ".hada_w2_b": "hada_w2_b", ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    # LoKr
    ".lokr_w1": "lokr_w1", ".lokr_w2": "lokr_w2", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    # full weight / bias differences
    ".diff": "diff", ".diff_b": "diff_b",
}
_SUFFIXES = sorted(SUFFIX_ROLES, key=len, reverse=True)

# Prefixes of text-encoder modules (kohya, diffusers, PEFT, generic).
TEXT_ENCODER_PREFIXES: tuple[str, ...] = (
    "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
    "text_encoders.", "te.", "te1.", "te2.", "lora_te", "text_model.", "base_model.model.text_model.",
    "clip_l.", "clip_g.",
)

# Prefix forms that wrap a UNet module name, stripped before lookup (order matters).
_DOTTED_WRAPPERS: tuple[str, ...] = ("base_model.model.", "unet.", "base_model.model.", "model.diffusion_model.",
                                     "diffusion_model.")


def split_key(key: str) -> tuple[str, str] | None:
    """``(prefix, role)`` of a LoRA file key, or None when its suffix is no known LoRA tensor."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], SUFFIX_ROLES[suffix]
    return None


def is_text_encoder_prefix(prefix: str) -> bool:
    """True for modules of a text encoder (reported, never applied to the UNet)."""
    return prefix.startswith(TEXT_ENCODER_PREFIXES)


@dataclass
class ModuleNames:
    """The module names of one UNet, and every spelling a LoRA may use for them.

    ``ldm_shapes`` maps bare LDM parameter names to shapes (the model's state dict);
    ``diffusers_to_ldm`` maps diffusers parameter names to LDM ones (for this config).
    """

    ldm_shapes: Mapping[str, tuple[int, ...]]
    diffusers_to_ldm: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ldm_modules: set[str] = {k[: -len(".weight")] for k in self.ldm_shapes if k.endswith(".weight")}
        self.diffusers_modules: dict[str, str] = {}
        for d_key, l_key in self.diffusers_to_ldm.items():
            d_key = d_key[len("unet."):] if d_key.startswith("unet.") else d_key
            if d_key.endswith(".weight") and l_key.endswith(".weight"):
                self.diffusers_modules[d_key[: -len(".weight")]] = l_key[: -len(".weight")]
        # kohya: dots -> underscores, resolved by exact lookup over both spellings.
        self.underscored: dict[str, str] = {}
        for name, ldm in self.diffusers_modules.items():
            self.underscored[name.replace(".", "_")] = ldm
        for ldm in self.ldm_modules:
            self.underscored[ldm.replace(".", "_")] = ldm

    def resolve(self, prefix: str) -> str | None:
        """The LDM module name a LoRA prefix stands for, or None."""
        for kohya in ("lora_unet_", "lycoris_"):
            if prefix.startswith(kohya):
                return self._known(self.underscored.get(prefix[len(kohya):]))
        name = prefix
        for wrapper in _DOTTED_WRAPPERS:
            if name.startswith(wrapper):
                name = name[len(wrapper):]
        if name in self.ldm_modules:
            return name
        if name in self.diffusers_modules:
            return self._known(self.diffusers_modules[name])
        # diffusers attention processors: "attn1.processor.to_q" / "...processor.to_out" (-> to_out.0)
        plain = name.replace(".processor.", ".")
        if plain.endswith(".to_out"):
            plain += ".0"
        return self._known(self.diffusers_modules.get(plain))

    def _known(self, ldm: str | None) -> str | None:
        return ldm if ldm is not None and ldm in self.ldm_modules else None


# --- family hints ---------------------------------------------------------------------------------------

_DEPTH_GT1 = re.compile(r"transformer_blocks[._]([1-9]\d*)[._]")
_FOUR_LEVELS = re.compile(r"(?:down_blocks|up_blocks)[._]3[._]|(?:input_blocks|output_blocks)[._](?:9|1[01])[._]")
_SDXL_MARKS = re.compile(r"(?:^|[._])(?:label_emb|add_embedding)[._]|^lora_te[12]_|^text_encoder_2\.")
_CONTEXT_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def guess_family(keys: Iterable[str], context_in_dims: Iterable[int] = ()) -> str | None:
    """The model family a LoRA was made for, from its key names and cross-attention input widths.

    Returns ``"sdxl"``, ``"sd1"``, ``"sd2"``, ``"sd1/sd2"`` or None when the keys do not tell.
    Structure: SDXL has transformer depth > 1, a label embedding and two text encoders; SD1/SD2
    have a fourth resolution level. Context width 768/1024/2048 separates SD1, SD2 and SDXL.
    """
    sdxl = four = False
    for key in keys:
        if _SDXL_MARKS.search(key) or _DEPTH_GT1.search(key):
            sdxl = True
        if _FOUR_LEVELS.search(key):
            four = True
    by_dim = {_CONTEXT_DIMS[d] for d in context_in_dims if d in _CONTEXT_DIMS}
    if len(by_dim) == 1:
        (family,) = by_dim
        return family
    if sdxl and not four:
        return "sdxl"
    if four and not sdxl:
        return "sd1/sd2"
    return None


def base_family(family: str | None) -> str | None:
    """``sd1-inpaint`` -> ``sd1``: LoRAs of a family fit its inpaint variant too."""
    if family is None:
        return None
    return re.split(r"[-_ ]", str(family).lower(), maxsplit=1)[0]
