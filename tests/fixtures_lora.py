"""Random LoRAs in every format, made by code, with the delta each one should produce.

The expected deltas are computed here from the published formulas (LoRA paper, LyCORIS docs),
independently of ``unet_core.lora.deltas``:
- LoRA / LoCon: up @ down * alpha / rank; Tucker: sum_mn up[o,m] mid[m,n,h,w] down[n,i] * alpha/rank
- LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank
- LoKr: kron(w1, w2) (w2 = w2a @ w2b, alpha / rank when factorised)
- diff: the tensor itself.
"""

from __future__ import annotations

import math

import torch

FORMATS = ("kohya", "kohya_ldm", "diffusers_old", "peft", "peft_bare", "peft_base_model", "locon_tucker",
           "loha", "loha_cp", "lokr", "lokr_factored", "diff", "dora")


def _kohya(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def targets(ldm_shapes: dict[str, tuple[int, ...]], ldm_to_diffusers: dict[str, str], fmt: str) -> list[str]:
    """LDM module names a LoRA of ``fmt`` patches: every linear/conv weight the format can name."""
    modules = []
    for key, shape in ldm_shapes.items():
        if not key.endswith(".weight") or len(shape) < 2:
            continue
        module = key[: -len(".weight")]
        attention = ".transformer_blocks." in module and any(module.endswith(s) for s in
                                                             ("to_q", "to_k", "to_v", "to_out.0"))
        if fmt in ("diffusers_old",) and not attention:
            continue
        if fmt in ("peft", "peft_bare", "peft_base_model", "kohya") and key not in ldm_to_diffusers:
            continue
        if fmt in ("locon_tucker", "loha_cp") and not (len(shape) == 4 and shape[2] > 1):
            continue  # Tucker/CP factors only for k x k convolutions
        modules.append(module)
    return sorted(modules)


def _prefix(module: str, ldm_to_diffusers: dict[str, str], fmt: str) -> str:
    diffusers = ldm_to_diffusers.get(module + ".weight", "")[: -len(".weight")]
    if fmt == "kohya":
        return _kohya(diffusers)
    if fmt == "diffusers_old":
        head, _, tail = diffusers.rpartition(".to_")
        tail = "to_" + tail
        return f"unet.{head}.processor.{tail.removesuffix('.0')}"
    if fmt == "peft":
        return "unet." + diffusers
    if fmt == "peft_bare":
        return diffusers
    if fmt == "peft_base_model":
        return "base_model.model." + diffusers
    if fmt == "diff":
        return "diffusion_model." + module
    return _kohya(module)


def _suffixes(fmt: str) -> tuple[str, str]:
    if fmt == "diffusers_old":
        return "_lora.up.weight", "_lora.down.weight"
    if fmt.startswith("peft"):
        return ".lora_B.weight", ".lora_A.weight"
    return ".lora_up.weight", ".lora_down.weight"


def _factor(n: int, limit: int = 8) -> tuple[int, int]:
    """n = a * b with a small (LoKr's w1 side)."""
    for a in (4, 2, 1):
        if n % a == 0 and a <= limit:
            return a, n // a
    return 1, n


def make_lora(ldm_shapes: dict[str, tuple[int, ...]], ldm_to_diffusers: dict[str, str], fmt: str,
              rank: int = 4, alpha: float | None = 2.0, seed: int = 0, limit: int | None = None,
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(LoRA state dict, {bare LDM param key: expected delta}) for a random LoRA of ``fmt``."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.1

    sd: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    modules = targets(ldm_shapes, ldm_to_diffusers, fmt)
    if limit is not None:
        modules = modules[:: max(1, len(modules) // limit)][:limit]
    for module in modules:
        shape = tuple(ldm_shapes[module + ".weight"])
        out_dim, in_dim = shape[0], shape[1]
        kernel = shape[2:]
        flat_in = math.prod(shape[1:])
        prefix = _prefix(module, ldm_to_diffusers, fmt)
        scale = (alpha / rank) if alpha is not None else 1.0
        if fmt in ("kohya", "kohya_ldm", "diffusers_old", "peft", "peft_bare", "peft_base_model", "dora"):
            up_s, down_s = _suffixes(fmt)
            if len(shape) == 4:  # conv LoRA: down carries the kernel, up is 1x1
                down, up = rnd(rank, in_dim, *kernel), rnd(out_dim, rank, 1, 1)
            else:
                down, up = rnd(rank, in_dim), rnd(out_dim, rank)
            sd[prefix + up_s], sd[prefix + down_s] = up, down
            delta = (up.reshape(out_dim, rank) @ down.reshape(rank, flat_in)).reshape(shape) * scale
            if fmt == "dora":
                sd[prefix + ".dora_scale"] = rnd(1, in_dim, *([1] * len(kernel))).abs() + 1.0
        elif fmt == "locon_tucker":
            kh, kw = kernel
            down, mid, up = rnd(rank, in_dim, 1, 1), rnd(rank, rank, kh, kw), rnd(out_dim, rank, 1, 1)
            sd[prefix + ".lora_down.weight"], sd[prefix + ".lora_mid.weight"] = down, mid
            sd[prefix + ".lora_up.weight"] = up
            delta = torch.zeros(shape)
            for h in range(kh):
                for w in range(kw):
                    delta[:, :, h, w] = up[:, :, 0, 0] @ mid[:, :, h, w] @ down[:, :, 0, 0]
            delta = delta * scale
        elif fmt == "loha":
            w1a, w1b, w2a, w2b = rnd(out_dim, rank), rnd(rank, flat_in), rnd(out_dim, rank), rnd(rank, flat_in)
            sd.update({prefix + ".hada_w1_a": w1a, prefix + ".hada_w1_b": w1b,
                       prefix + ".hada_w2_a": w2a, prefix + ".hada_w2_b": w2b})
            delta = ((w1a @ w1b) * (w2a @ w2b)).reshape(shape) * scale
        elif fmt == "loha_cp":
            kh, kw = kernel
            parts = []
            for i in (1, 2):
                wa, wb, t = rnd(rank, out_dim), rnd(rank, in_dim), rnd(rank, rank, kh, kw)
                sd.update({prefix + f".hada_w{i}_a": wa, prefix + f".hada_w{i}_b": wb, prefix + f".hada_t{i}": t})
                full = torch.zeros(shape)
                for h in range(kh):
                    for w in range(kw):
                        full[:, :, h, w] = wa.T @ t[:, :, h, w] @ wb
                parts.append(full)
            delta = parts[0] * parts[1] * scale
        elif fmt in ("lokr", "lokr_factored"):
            a, c = _factor(out_dim)
            b, d = _factor(in_dim)
            w1 = rnd(a, b)
            if fmt == "lokr":
                w2 = rnd(c, d, *kernel)
                sd[prefix + ".lokr_w1"], sd[prefix + ".lokr_w2"] = w1, w2
                lokr_scale = 1.0          # no factorised matrix: alpha is not used
            else:
                w2a, w2b = rnd(c, rank), rnd(rank, d * math.prod(kernel))
                sd[prefix + ".lokr_w1"], sd[prefix + ".lokr_w2_a"], sd[prefix + ".lokr_w2_b"] = w1, w2a, w2b
                w2 = (w2a @ w2b).reshape(c, d, *kernel)
                lokr_scale = scale
            big = torch.zeros(shape)
            for i in range(a):
                for j in range(b):
                    big[i * c:(i + 1) * c, j * d:(j + 1) * d] = w1[i, j] * w2
            delta = big * lokr_scale
        elif fmt == "diff":
            delta = rnd(*shape)
            sd[prefix + ".diff"] = delta
            bias_key = module + ".bias"
            if bias_key in ldm_shapes:
                bias = rnd(*ldm_shapes[bias_key])
                sd[prefix + ".diff_b"] = bias
                expected[bias_key] = bias
            scale = 1.0
        else:
            raise ValueError(fmt)
        if alpha is not None and fmt != "diff":
            sd[prefix + ".alpha"] = torch.tensor(float(alpha))
        expected[module + ".weight"] = delta
    return sd, expected


def dora_expected(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor,
                  strength: float) -> torch.Tensor:
    """DoRA (Liu et al. 2024), magnitude per input column as LyCORIS stores it: m * V / ||V||_col."""
    merged = weight + delta
    col_norm = torch.sqrt((merged ** 2).sum(dim=[d for d in range(merged.ndim) if d != 1], keepdim=True))
    return weight + strength * (dora_scale.reshape(col_norm.shape) * merged / col_norm - weight)


# --- reduced models ---------------------------------------------------------------------------------------

def reduced_configs():
    """Reduced SD1 and SDXL configs with the real block layout (layers_per_block 2, same attention levels)."""
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

    sd1 = SD1_CONFIG.with_(block_out_channels=(32, 64, 64, 64), num_attention_heads=(2, 2, 2, 2),
                           cross_attention_dim=48, norm_num_groups=8)
    sdxl = SDXL_CONFIG.with_(block_out_channels=(32, 64, 64), transformer_layers_per_block=(0, 2, 2),
                             num_attention_heads=(2, 2, 2), cross_attention_dim=64, norm_num_groups=8,
                             addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    return {"sd1": sd1, "sdxl": sdxl}


def make_model(family: str, seed: int = 0):
    """A standalone MODEL (UNetPatcher) of a reduced config, every weight random (none left at zero)."""
    from types import SimpleNamespace

    from unet_lab.unet_core.diffusion.patcher import create_model_patcher
    from unet_lab.unet_core.diffusion.unet import UNetModel

    config = reduced_configs()[family]
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
    sd = {k: torch.randn(*s, generator=gen) * 0.05 for k, s in shapes.items()}
    spec = SimpleNamespace(config=config, family=family, prediction="epsilon", path=None)
    return create_model_patcher(sd, spec)


def model_maps(model):
    """(bare LDM shapes, LDM -> diffusers parameter names) of a standalone MODEL."""
    from unet_lab.unet_core.checkpoints.keymap import diffusers_to_ldm_keymap

    shapes = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    ldm_to_diffusers = {v: k for k, v in diffusers_to_ldm_keymap(model.config).items()}
    return shapes, ldm_to_diffusers
