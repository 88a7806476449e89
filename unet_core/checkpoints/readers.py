"""Read weight files into state dicts: safetensors (memory-mapped), diffusers folders, safe pickles.

* safetensors: ``safe_open`` memory-maps the file; tensors are views on the mapping, so
  nothing is read until a tensor is used and nothing is copied beyond that.
* diffusers folders: a pipeline folder (``model_index.json`` + ``unet/``) or a UNet folder
  (``diffusion_pytorch_model[.fp16].safetensors``, sharded ``….safetensors.index.json``,
  or ``….bin``). Rule on ``config.json``: a *pipeline* folder whose ``unet/`` lacks
  ``config.json`` is refused (an incomplete download: diffusers itself cannot load it, and
  the file that fixes heads, norm groups and embeddings is missing), naming the missing
  file. A bare UNet folder without ``config.json`` is read with the config inferred from
  shapes (see ``infer_config``), and the spec says so.
* ``.ckpt/.pt/.pth/.bin`` pickles: ``torch.load(weights_only=True, mmap=True)`` only. A
  pickle that would build arbitrary Python objects (and so could run code) is refused
  before anything in it runs; the pack never unpickles with ``weights_only=False``.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .safetensors_header import check_not_placeholder

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


@dataclass
class DiffusersFolder:
    root: Path                 # the folder the user gave
    unet_dir: Path             # where the UNet's files are
    weight_files: list[Path]   # one file, or every shard
    config_path: Path | None   # config.json, when present
    is_pipeline: bool


def resolve_diffusers_folder(folder: str | Path) -> DiffusersFolder:
    """Find the UNet weights and config of a diffusers pipeline or UNet folder."""
    root = Path(folder)
    is_pipeline = (root / "model_index.json").is_file()
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    if is_pipeline and unet_dir == root:
        raise CheckpointError(root, "this diffusers pipeline folder has no unet/ subfolder: the download is "
                                    "incomplete (or the pipeline has no UNet)")
    found = next((unet_dir / n for n in DIFFUSERS_WEIGHT_NAMES if (unet_dir / n).is_file()), None)
    if found is None:
        listing = ", ".join(sorted(p.name for p in unet_dir.iterdir())[:8]) or "nothing"
        raise CheckpointError(unet_dir, f"no diffusers UNet weights here (looked for "
                                        f"diffusion_pytorch_model[.fp16].safetensors/.bin; found {listing})")
    if found.name.endswith(".index.json"):
        try:
            index = json.loads(found.read_text())
            shards = sorted({unet_dir / v for v in index["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(found, f"the shard index is unreadable ({exc})") from None
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(found, f"shards listed in the index are missing: {', '.join(missing)}")
        files = shards
    else:
        files = [found]
    config = unet_dir / "config.json"
    if not config.is_file():
        if is_pipeline:
            raise CheckpointError(root, f"the diffusers pipeline folder lacks {config.relative_to(root)}: the "
                                        f"download is incomplete. Download unet/config.json from the model "
                                        f"repository, or load {files[0].relative_to(root)} directly as a file")
        config = None
    return DiffusersFolder(root, unet_dir, files, config, is_pipeline)


def read_diffusers_config(folder: DiffusersFolder) -> dict | None:
    if folder.config_path is None:
        return None
    try:
        data = json.loads(folder.config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(folder.config_path, f"config.json is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(folder.config_path, "config.json is not a JSON object")
    return data


ST_TO_TORCH = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "U16": getattr(torch, "uint16", None), "U32": getattr(torch, "uint32", None), "U64": getattr(torch, "uint64", None),
}


def _load_safetensors(path: Path, device: str, keys: Iterable[str] | None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file as views on one private memory mapping of the file.

    ``UntypedStorage.from_file(shared=False)`` maps the file copy-on-write: nothing is read
    until a tensor is used, writes to a tensor never reach the file, and no byte is copied.
    (safetensors' own ``safe_open`` also maps the file, but reads ahead on every
    ``get_tensor``, which on a full checkpoint pulls the VAE and text encoders into the
    page cache too.) A tensor whose offset does not suit its dtype's alignment (possible
    only in hand-made files) is copied out.
    """
    from .safetensors_header import read_header

    header = read_header(path)  # clear errors for LFS pointers, HTML pages, truncation
    names = list(header.tensors) if keys is None else list(keys)
    unknown = [k for k in names if k not in header.tensors]
    if unknown:
        raise CheckpointError(path, f"{len(unknown)} requested tensors are not in the file (e.g. {unknown[0]!r})")
    try:
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=header.file_size)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(path, f"cannot memory-map the file ({exc})") from None
    out: dict[str, torch.Tensor] = {}
    data_start, on_cpu = header.data_start, str(device) == "cpu"
    for name in names:
        info = header.tensors[name]
        dtype = ST_TO_TORCH.get(info.dtype)
        if dtype is None:
            raise CheckpointError(path, f"tensor {name!r} has dtype {info.dtype}, which this torch cannot hold")
        offset = data_start + info.data_offsets[0]
        width = dtype.itemsize
        if offset % width == 0:  # the usual case: a view of the mapping, offset counted in elements
            t = torch.empty(0, dtype=dtype).set_(storage, offset // width, info.shape)
        else:  # misaligned for the dtype: copy this one tensor out
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, offset, (info.nbytes,))
            t = raw.clone().view(dtype).view(info.shape)
        out[name] = t if on_cpu else t.to(device)
    return out


def _unpickle_detail(exc: BaseException) -> str:
    """The object the safe unpickler refused (torch's message is long and colourised)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand \w+", text)
    if m:
        return f" It asks for {m.group(1) if m.groups() else m.group(0)}."
    line = next((ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln), "")
    return f" ({line})" if line else ""


def load_pickle(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A pickled state dict, read with ``weights_only=True`` (memory-mapped when the format allows)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({exc.strerror or exc})") from None
    check_not_placeholder(path, head, size)
    try:
        try:
            obj = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            # The legacy (pre-zip) format cannot be memory-mapped; read it with the same safe unpickler.
            obj = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(path, "refused: this pickle holds Python objects beyond tensors, and unpickling "
                                    "them could run arbitrary code, so it was not loaded (nothing in it ran). "
                                    "Get a .safetensors version of the model, or convert it only if you trust "
                                    f"its source.{_unpickle_detail(exc)}") from None
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(path, f"not a readable PyTorch weight file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"the file holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = len(obj) - len(tensors)
    if dropped:
        log.info("%s: ignored %d non-tensor entries", path.name, dropped)
    return tensors


def load_state_dict(path: str | Path, device: str = "cpu", keys: Iterable[str] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file or diffusers folder, in the file's own naming.

    ``keys`` restricts a safetensors read to those names (the others are never mapped into
    tensors); pickles always load whole (memory-mapped) and are filtered afterwards.
    """
    path = Path(path)
    if path.is_dir():
        folder = resolve_diffusers_folder(path)
        out: dict[str, torch.Tensor] = {}
        wanted = None if keys is None else set(keys)
        for f in folder.weight_files:
            if f.suffix == ".bin":
                sd = load_pickle(f, device)
                out.update(sd if wanted is None else {k: v for k, v in sd.items() if k in wanted})
            else:
                from .safetensors_header import read_header

                names = list(read_header(f).tensors)
                out.update(_load_safetensors(f, device, names if wanted is None else
                                             [k for k in names if k in wanted]))
        return out
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        sd = load_pickle(path, device)
        if keys is not None:
            wanted = set(keys)
            sd = {k: v for k, v in sd.items() if k in wanted}
        return sd
    return _load_safetensors(path, device, keys)
