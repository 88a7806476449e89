"""Read a safetensors header (names, dtypes, shapes, offsets, metadata) without touching tensor data.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the
tensor data. Reading the header costs one small read even for a 5 GB file. Files that are
not safetensors at all (a Git LFS pointer, an HTML error page, an empty or cut-off
download) are recognised here and reported as such, with what to do about them, instead
of the bare "HeaderTooLarge" users otherwise see.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import CheckpointError

# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1, "C64": 8,
}
MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself applies

_DOWNLOAD_HINT = "download the file again (from the model page's 'download' link, not the page itself)"


class TensorInfo(NamedTuple):
    """One header entry (a named tuple: a checkpoint's header has thousands, built on every load)."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass
class SafetensorsHeader:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    header_size: int = 0
    file_size: int = 0

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def _describe_text_start(head: bytes) -> str | None:
    """What a file that starts with text is, or None if it does not look like text."""
    # A real header starts with a little-endian length whose high bytes are zero, so a file
    # whose first 8 bytes are all printable is text, never safetensors.
    if not head or not all(32 <= c < 127 or c in (9, 10, 13) or c >= 0x80 for c in head[:8]) or 0 in head[:8]:
        return None
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"version https://git-lfs"):
        return "lfs"
    low = stripped[:64].lower()
    if low.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<")):
        return "html"
    if stripped.startswith((b"{", b"[")) and b'"' in stripped[:32]:
        return "json"
    return "text"


def _lfs_size(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("size "):
            try:
                return f" of {int(line.split()[1]) / 1e9:.2f} GB"
            except (ValueError, IndexError):
                return ""
    return ""


def check_not_placeholder(path: str | Path, head: bytes, file_size: int) -> str | None:
    """Raise for an empty file, a Git LFS pointer or an HTML page; else return what the start looks like."""
    if file_size == 0:
        raise CheckpointError(path, f"the file is empty (0 bytes): the download or copy failed; {_DOWNLOAD_HINT}")
    kind = _describe_text_start(head)
    if kind == "lfs":
        text = head.decode("utf-8", "replace")
        raise CheckpointError(path, "this is a Git LFS pointer file (a few lines of text), not the weights: "
                                    f"the repository was cloned without Git LFS. Run `git lfs pull` in it, or "
                                    f"download the real file{_lfs_size(text)} directly")
    if kind == "html":
        raise CheckpointError(path, f"this is an HTML page ({file_size} bytes), not a weight file: a browser "
                                    f"saved the web page (or a login/error page) instead of the model; "
                                    f"{_DOWNLOAD_HINT}")
    return kind


_CACHE: dict[tuple[str, int, int, int], SafetensorsHeader] = {}
_CACHE_SIZE = 8


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse the header of the safetensors file ``path`` and check it against the file size.

    The last few headers are cached by (path, inode, size, mtime), so sniffing then loading a file
    parses its header once; a changed file is parsed again.
    """
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    header = _read_header(path)
    if key is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = header
    return header


def _read_header(path: Path) -> SafetensorsHeader:
    try:
        file_size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a safetensors file")
    try:
        with open(path, "rb") as f:
            head = f.read(min(file_size, 1024))
            kind = check_not_placeholder(path, head, file_size)
            if file_size < 8:
                raise CheckpointError(path, f"the file is only {file_size} bytes, too short for a safetensors header; "
                                            f"{_DOWNLOAD_HINT}")
            (n,) = struct.unpack("<Q", head[:8])
            if n > file_size - 8 or n > MAX_HEADER:
                if kind in ("json", "text"):
                    what = "JSON" if kind == "json" else "text"
                    raise CheckpointError(path, f"this is a {what} file ({file_size} bytes, starting "
                                                f"{head[:40].decode('utf-8', 'replace')!r}), not a safetensors file")
                raise CheckpointError(path, f"the header length field says {n} bytes but the file has only "
                                            f"{file_size} bytes: this is not a safetensors file, or only its first "
                                            f"bytes were saved; {_DOWNLOAD_HINT}")
            f.seek(8)
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"the safetensors header ({n} bytes) is not valid JSON ({exc}): the file is "
                                    f"damaged or not a safetensors file; {_DOWNLOAD_HINT}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "the safetensors header is not a JSON object: the file is damaged")
    meta_raw = data.pop("__metadata__", None) or {}
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta_raw.items()} \
        if isinstance(meta_raw, dict) else {}
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in data.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(map(int, entry["shape"]))
            start, end = map(int, entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"the safetensors header entry {name!r} is malformed "
                                        f"(needs dtype, shape, data_offsets): the file is damaged") from None
        if end < start or (shape and min(shape) < 0):
            raise CheckpointError(path, f"the safetensors header entry {name!r} has impossible offsets or shape")
        width = DTYPE_BYTES.get(dtype)
        if width is not None and dtype not in ("F4", "F6_E2M3", "F6_E3M2") and end - start != math.prod(shape) * width:
            raise CheckpointError(path, f"the safetensors header entry {name!r} ({dtype} {list(shape)}) spans "
                                        f"{end - start} bytes instead of {math.prod(shape) * width}: the file is damaged")
        tensors[name] = TensorInfo(dtype, shape, (start, end))
        data_end = max(data_end, end)
    needed = 8 + n + data_end
    if needed > file_size:
        raise CheckpointError(path, f"the file is truncated: it has {file_size} bytes but its header says the "
                                    f"tensor data ends at byte {needed} ({100 * file_size / needed:.1f}% present); "
                                    f"the download or copy was cut off; {_DOWNLOAD_HINT}")
    return SafetensorsHeader(str(path), tensors, metadata, n, file_size)


def is_safetensors_path(path: str | Path) -> bool:
    return os.fspath(path).lower().endswith(".safetensors")
