"""The readable report of a sniffed file (what the Inspect UNet node shows)."""

from __future__ import annotations

from .spec import FAMILY_NAMES, CheckpointSpec


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def describe(spec: CheckpointSpec) -> str:
    """Several lines: what the file is, its UNet (family, layout, dtype, size), prediction, hints, the rest."""
    from pathlib import Path

    lines = [f"{Path(spec.path).name} ({spec.format}, {_gb(spec.file_size)}, {spec.total_keys} tensors)"]
    if spec.kind == "lora":
        fam = FAMILY_NAMES.get(spec.lora_family or "", "unknown base model")
        lines.append(f"kind: LoRA for {fam} ({spec.lora_format} format), not a UNet: use Apply LoRA")
    elif spec.kind in ("vae", "text_encoder", "unknown"):
        what = {"vae": "VAE only", "text_encoder": "text encoder only", "unknown": "no diffusion UNet found"}
        lines.append(f"kind: {what[spec.kind]}")
    elif spec.family == "pixel_diffusion":
        from .pixel_sniff import report_lines

        lines.extend(report_lines(spec))
    else:
        fam = FAMILY_NAMES.get(spec.family or "", "not a standard SD family (custom or reduced config)")
        kind = "full checkpoint" if spec.kind == "full_checkpoint" else "UNet only"
        lines.append(f"kind: {kind}; family: {fam}")
        prefix = f", keys under {spec.unet_prefix!r}" if spec.unet_prefix else ""
        lines.append(f"layout: {spec.layout}{prefix}")
        dtypes = ", ".join(f"{d} x{n}" for d, n in sorted(spec.dtypes.items(), key=lambda kv: -kv[1]))
        lines.append(f"UNet: {spec.unet_params / 1e6:.1f} M parameters in {spec.unet_keys} tensors, "
                     f"{_gb(spec.unet_bytes)}, dtype {dtypes}")
        c = spec.config
        if c is not None:
            depth = "/".join(str(d) for d in c.transformer_layers_per_block)
            adm = f", ADM {c.projection_class_embeddings_input_dim}" if c.projection_class_embeddings_input_dim else ""
            lines.append(f"config ({spec.config_source}): in {c.in_channels}, out {c.out_channels}, channels "
                         f"{list(c.block_out_channels)}, {c.layers_per_block} res blocks/level, transformer depth "
                         f"{depth} (mid {c.mid_transformer_layers}), heads {list(c.num_attention_heads)}, context "
                         f"{c.cross_attention_dim}, proj_in {'linear' if c.use_linear_projection else '1x1 conv'}{adm}")
        pred = {"epsilon": "epsilon", "v_prediction": "v-prediction", "unknown": "unknown"}[spec.prediction]
        lines.append(f"prediction: {pred} (decided by {spec.prediction_source})"
                     + (f"; {spec.prediction_detail}" if spec.prediction_detail else ""))
    if spec.turbo is not None:
        lines.append(f"few-step model: {spec.turbo.describe()}")
    others = [c for c in spec.components if c.name != "lora"]
    if others:
        lines.append("also holds: " + "; ".join(c.describe() for c in others))
        if spec.kind == "full_checkpoint":
            lines.append("  (a full checkpoint: only its UNet is loaded here; load the whole file with "
                         "Load Checkpoint to use its VAE and text encoders)")
    if spec.markers:
        lines.append("marker keys: " + ", ".join(spec.markers))
    for note in spec.notes:
        lines.append(f"note: {note}")
    title = spec.metadata.get("modelspec.title")
    if title:
        lines.append(f"title (metadata): {title}")
    return "\n".join(lines)


def summary(spec: CheckpointSpec) -> dict[str, object]:
    """The few facts a node shows on itself after a run (the web extension's info panel)."""
    return {
        "family": spec.family or spec.kind,
        "dtype": spec.dtype,
        "turbo": spec.turbo is not None,
        "prediction": spec.prediction,
        "layout": spec.layout,
        "parameters": f"{spec.unet_params / 1e6:.1f} M" if spec.unet_params else None,
    }
