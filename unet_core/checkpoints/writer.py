"""Write a UNet state dict as safetensors in the LDM (bare or prefixed) or diffusers layout.

Writes are atomic (a temp file in the target folder, then ``os.replace``) and never replace an
existing file unless asked; :func:`next_free_path` gives ComfyUI-style numbered names
(``name_00001_.safetensors``). The header carries modelspec metadata (the SAI model spec:
``modelspec.sai_model_spec``, ``modelspec.architecture``, ``modelspec.implementation``,
``modelspec.title``, ``modelspec.prediction_type``) plus our full config, so the file alone
rebuilds the exact config, reduced ones included.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..file_modes import make_like_new_file
from ..unet_config import UNetConfig
from .infer_config import CONFIG_METADATA_KEY, config_to_diffusers_json
from .keymap import convert_ldm_to_diffusers, diffusers_to_ldm_keymap
from .sniff import TORCH_TO_ST
from .spec import LDM_PREFIX, family_of

SOURCE_METADATA_KEY = "unet_lab.source"
MODELSPEC_VERSION = "1.0.0"
# Architecture strings of the SAI model spec (the ones kohya's sd-scripts and ComfyUI write).
ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd1_inpaint": "stable-diffusion-v1-inpainting",
    "sd2": "stable-diffusion-v2-512",
    "sd2_inpaint": "stable-diffusion-v2-inpainting",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl_inpaint": "stable-diffusion-xl-v1-inpainting",
}
_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "f16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
           "f32": torch.float32, "float": torch.float32}


def architecture_for(config: UNetConfig, prediction: str | None) -> str | None:
    fam = family_of(config)
    if fam is None:
        return None
    if fam == "sd2" and prediction == "v_prediction":
        return "stable-diffusion-v2-768-v"
    return ARCHITECTURES[fam]


def next_free_path(path: str | Path) -> Path:
    """``folder/stem_NNNNN_.ext`` with NNNNN one above the highest already there (ComfyUI's save numbering)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-1:]) if path.suffix else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    rx = re.compile(re.escape(stem) + r"_(\d+)_" + re.escape(suffix) + "$", re.I)
    counter = 0
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = rx.match(p.name)
            if m:
                counter = max(counter, int(m.group(1)))
    return path.parent / f"{stem}_{counter + 1:05}_{suffix}"


def _torch_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise CheckpointError(None, f"unsupported dtype {dtype!r} (use fp16, bf16 or fp32)")
    return _DTYPES[key]


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Stream ``tensors`` into a safetensors file at ``path`` (one tensor in memory at a time)."""
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    items = []
    # Widest dtypes first keeps every tensor aligned to its element size, so readers can map it.
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())
    for name in order:
        t = tensors[name]
        if t.device.type == "meta":
            raise CheckpointError(path, f"tensor {name!r} has no data (meta device)")
        st = TORCH_TO_ST.get(str(t.dtype).replace("torch.", ""))
        if st is None:
            raise CheckpointError(path, f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": st, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        items.append(t)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in items:
            data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(target: Path, write, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise CheckpointError(target, "a file of that name exists; refusing to overwrite it (pass overwrite=True, "
                                      "or save under next_free_path(...))")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if target.exists() and not overwrite:  # appeared while we wrote
            raise CheckpointError(target, "a file of that name appeared while saving; refusing to overwrite it")
        make_like_new_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_unet(path: str | Path, state_dict: Mapping[str, torch.Tensor], config: UNetConfig, layout: str = "ldm",
              dtype=None, metadata: Mapping[str, str] | None = None, overwrite: bool = False,
              prediction: str | None = None, source: str = "UNet Lab") -> Path:
    """Save a bare-LDM UNet state dict; returns the path written.

    layout: "ldm" (bare keys, what ComfyUI's UNet loader reads), "ldm_prefixed"
    (``model.diffusion_model.`` keys) or "diffusers". For "diffusers", a path ending in
    ``.safetensors`` gets a single diffusers-layout file; any other path is a folder that gets
    ``diffusion_pytorch_model.safetensors`` and ``config.json``.
    """
    path = Path(path)
    if layout not in ("ldm", "ldm_prefixed", "diffusers"):
        raise CheckpointError(path, f"unknown layout {layout!r} (ldm, ldm_prefixed or diffusers)")
    expected = set(diffusers_to_ldm_keymap(config).values())
    missing = expected - set(state_dict)
    if missing:
        raise CheckpointError(path, f"the state dict lacks {len(missing)} UNet tensors for this config "
                                    f"(e.g. {', '.join(sorted(missing)[:3])})")
    tdtype = _torch_dtype(dtype)
    sd = {k: v for k, v in state_dict.items() if k in expected}
    if tdtype is not None:
        sd = {k: (v.to(tdtype) if v.is_floating_point() else v) for k, v in sd.items()}
    if layout == "diffusers":
        tensors = convert_ldm_to_diffusers(sd, config)
    elif layout == "ldm_prefixed":
        tensors = {LDM_PREFIX + k: v for k, v in sd.items()}
    else:
        tensors = sd
    fam = family_of(config)
    if fam == "sdxl" and prediction == "v_prediction" and layout != "diffusers":
        tensors["v_pred"] = torch.tensor([])  # ComfyUI's marker for SDXL v-prediction files
    md: dict[str, str] = {"modelspec.sai_model_spec": MODELSPEC_VERSION,
                          "modelspec.implementation": "diffusers" if layout == "diffusers" else "sgm",
                          "modelspec.title": path.stem}
    arch = architecture_for(config, prediction)
    if arch:
        md["modelspec.architecture"] = arch
    if prediction in ("epsilon", "v_prediction"):
        md["modelspec.prediction_type"] = "v" if prediction == "v_prediction" else "epsilon"
    md[CONFIG_METADATA_KEY] = json.dumps(config.to_dict())
    md[SOURCE_METADATA_KEY] = source
    md.update({str(k): str(v) for k, v in (metadata or {}).items()})

    if layout == "diffusers" and path.suffix.lower() != ".safetensors":
        weights = path / "diffusion_pytorch_model.safetensors"
        cfg_file = path / "config.json"
        for t in (weights, cfg_file):
            if t.exists() and not overwrite:
                raise CheckpointError(t, "a file of that name exists; refusing to overwrite it (pass overwrite=True)")
        _atomic_write(weights, lambda p: write_safetensors(p, tensors, md), overwrite)
        text = json.dumps(config_to_diffusers_json(config), indent=2)
        _atomic_write(cfg_file, lambda p: p.write_text(text), overwrite)
        return path
    _atomic_write(path, lambda p: write_safetensors(p, tensors, md), overwrite)
    return path
