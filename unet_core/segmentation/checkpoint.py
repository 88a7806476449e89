"""Segmentation checkpoints: our safetensors format, and loading what users already have.

Our format is one safetensors file whose header metadata holds, as JSON strings, the
architecture, its hyper-parameters, the input normalisation, the class names and the
threshold, so the file alone rebuilds the model (``load_segmentation``). Writes are atomic
(temp file in the same folder, then ``os.replace``) and never overwrite unless asked.

``load_segmentation`` also reads, by sniffing the content (not the extension):
a milesial Pytorch-UNet state dict (``.pth``; its ``mask_values`` entry gives the class
values), an smp ``save_pretrained`` folder (``config.json`` with ``_model_class`` +
``model.safetensors``) and an smp Unet/UnetPlusPlus state dict (resnet18/34/50 encoders).
Pickled files go through ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import SegmentationError
from ..file_modes import make_like_new_file
from .adapters.registry import registered_adapters
from .architectures.base import SegmentationUNet
from .meta import (  # noqa: F401 - the meta names are part of this module's interface
    SegmentationMeta,
    default_class_names,
    imagenet_normalization,
    plain_normalization,
)
from .registry import build_model
from .weights import load_weights_into

log = logging.getLogger(__name__)

FORMAT_KEY = "unet_lab.format"
FORMAT_VALUE = "segmentation"
FORMAT_VERSION = "1"


# ---------------------------------------------------------------- writing

def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        make_like_new_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_segmentation(path: str | Path, model: SegmentationUNet, meta: SegmentationMeta,
                      overwrite: bool = False) -> Path:
    """Write ``model`` and ``meta`` to a safetensors file; returns the path written.

    Refuses (SegmentationError) an existing file unless ``overwrite``, and a meta whose
    architecture differs from the model's; the hyper-parameters stored are the model's own.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    if path.exists() and not overwrite:
        raise SegmentationError(f"{path}: file exists; refusing to overwrite it (pass overwrite=True)")
    arch = model.config.get("architecture")
    if meta.architecture != arch:
        raise SegmentationError(f"{path}: meta says {meta.architecture!r} but the model is {arch!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        FORMAT_KEY: FORMAT_VALUE,
        "unet_lab.version": FORMAT_VERSION,
        "architecture": arch,
        "hparams": json.dumps(model.hparams()),
        "normalization": json.dumps(meta.normalization),
        "class_names": json.dumps(list(meta.class_names)),
        "threshold": json.dumps(float(meta.threshold)),
        "source": meta.source,
        "class_values": json.dumps(meta.class_values),
    }
    _atomic_save(tensors, metadata, path)
    log.info("saved %s segmentation model to %s", arch, path)
    return path


# ---------------------------------------------------------------- reading

def _describe(state: Mapping[str, Any], limit: int = 4) -> str:
    keys = [k for k in state if isinstance(k, str)]
    if not keys:
        return f"a {type(state).__name__} with no named tensors"
    prefixes = sorted({k.split(".")[0] for k in keys})
    shown = ", ".join(prefixes[:limit]) + (", ..." if len(prefixes) > limit else "")
    return f"a state dict of {len(keys)} entries with top-level names {shown}"


def _read_json(metadata: Mapping[str, str], key: str, where: Path, default: Any = None) -> Any:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise SegmentationError(f"{where}: header field {key!r} is not valid JSON ({exc})") from None


def _normalization_ok(norm: Any, channels: int) -> bool:
    def numbers(value: Any) -> bool:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        return isinstance(value, list) and len(value) in (1, channels) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)

    return isinstance(norm, dict) and numbers(norm.get("mean", 0.0)) and numbers(norm.get("std", 1.0))


def _load_ours(path: Path, metadata: Mapping[str, str], device: str) -> tuple[SegmentationUNet, SegmentationMeta]:
    arch = metadata.get("architecture")
    hparams = _read_json(metadata, "hparams", path, None)
    if not arch or not isinstance(hparams, dict):
        raise SegmentationError(f"{path}: UNet Lab segmentation file without architecture/hparams metadata")
    try:
        model = build_model(arch, **hparams)
    except SegmentationError as exc:
        raise SegmentationError(f"{path}: cannot rebuild the model from its metadata: {exc}") from None
    state = load_file(str(path), device="cpu")
    load_weights_into(model, state, path)
    try:
        meta = SegmentationMeta(
            architecture=arch, hparams=model.hparams(),
            normalization=_read_json(metadata, "normalization", path, plain_normalization(model.in_channels)),
            class_names=list(_read_json(metadata, "class_names", path, default_class_names(model.out_channels))),
            threshold=float(_read_json(metadata, "threshold", path, 0.5)),
            source=metadata.get("source", "unet_lab"),
            class_values=_read_json(metadata, "class_values", path, None),
        )
    except (TypeError, ValueError) as exc:  # e.g. "threshold": null, "class_names": 3
        raise SegmentationError(f"{path}: a header field has the wrong type ({exc})") from None
    if not _normalization_ok(meta.normalization, model.in_channels):
        raise SegmentationError(f"{path}: header field 'normalization' must be an object with numeric 'mean' and "
                                f"'std' (one value or one per input channel); got {str(meta.normalization)[:80]}")
    return model.to(device).eval(), meta


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notices from the safe unpickler
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure (zip, pickle, safetensors probe) is refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegmentationError(
            f"{path}: not loadable as plain tensors (torch.load weights_only=True refused it: {first}); "
            "UNet Lab never unpickles code or arbitrary objects") from None


def _unwrap(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a loaded pickle into (tensors, extras), looking inside common wrappers."""
    if not isinstance(obj, Mapping):
        return {}, {}
    for wrapper in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            extras = {k: v for k, v in obj.items() if k != wrapper}
            tensors, more = _unwrap(inner)
            return tensors, {**extras, **more}
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    extras = {k: v for k, v in obj.items() if k not in tensors}
    if tensors and all(k.startswith("module.") for k in tensors):  # DataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, extras


def _from_state_dict(path: Path, tensors: dict[str, torch.Tensor], extras: dict[str, Any],
                     device: str) -> tuple[SegmentationUNet, SegmentationMeta]:
    adapters = registered_adapters()
    for adapter in adapters:
        if adapter.read_state_dict is not None:
            found = adapter.read_state_dict(tensors, extras, str(path))
            if found is not None:
                model, meta = found
                return model.to(device).eval(), meta
    expected = ", ".join(a.expects for a in adapters)
    raise SegmentationError(
        f"{path}: not a segmentation checkpoint UNet Lab can read: it is {_describe(tensors or extras)}; "
        f"expected a UNet Lab segmentation safetensors file, {expected}")


def _from_folder(path: Path, device: str) -> tuple[SegmentationUNet, SegmentationMeta]:
    for adapter in registered_adapters():
        if adapter.read_folder is not None:
            found = adapter.read_folder(path)
            if found is not None:
                model, meta = found
                return model.to(device).eval(), meta
    raise SegmentationError(f"{path}: a folder no checkpoint adapter reads")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(32)


def load_segmentation(path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationUNet, SegmentationMeta]:
    """Rebuild a model from a checkpoint file or smp folder; returns ``(model in eval mode, meta)``."""
    path = Path(path)
    if not path.exists():
        raise SegmentationError(f"{path}: no such file or folder")
    if path.is_dir():
        return _from_folder(path, str(device))
    head = _magic(path)
    if len(head) < 8:
        raise SegmentationError(f"{path}: file is empty or truncated ({len(head)} bytes)")
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 2 <= header_len <= path.stat().st_size - 8:
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise SegmentationError(f"{path}: broken safetensors file ({exc})") from None
        if metadata.get(FORMAT_KEY) == FORMAT_VALUE:
            return _load_ours(path, metadata, str(device))
        return _from_state_dict(path, load_file(str(path), device="cpu"), {}, str(device))
    if head.startswith(b"version https://git-lfs"):
        raise SegmentationError(f"{path}: a Git LFS pointer, not the weights (fetch the real file)")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        tensors, extras = _unwrap(_torch_load(path))
        return _from_state_dict(path, tensors, extras, str(device))
    raise SegmentationError(f"{path}: neither a safetensors file nor a torch checkpoint "
                            f"(starts with {head[:8]!r})")
