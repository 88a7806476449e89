"""Fuzz targets and fixtures for the hardening tests (shared with ``scripts/fuzz_long.py``).

Each fuzz target is a pair: a hypothesis strategy (``strategy()``) and a check function
(``check(example, workdir)``) that feeds the example to the pack's public readers/parsers and
asserts the contract: the call returns normally or raises one of the pack's documented errors
(a :class:`UNetLabError` subclass), within a time limit, writing nothing outside ``workdir``.
Everything here is built by code (small tensors, ``torch.save``, the pack's own writers).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st

from pack_support import node_result  # noqa: F401  (re-exported for the hardening tests)

# Cases run per target in this process (the long-run script prints it).
CASES: Counter = Counter()
# Exceptions per target and class (documented ones): what the fuzzing provoked.
OUTCOMES: dict[str, Counter] = {}


class Hang(BaseException):
    """Raised by :func:`time_limit` (a BaseException, so ``except Exception`` in the code cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hang` if the block runs longer than ``seconds`` (main thread, POSIX timers)."""
    def _alarm(signum, frame):  # noqa: ARG001
        raise Hang(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def errors():
    from unet_lab.unet_core import errors as module

    return module


def expect_documented(target: str, fn: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Run ``fn``; only UNetLabError may escape (re-raised as AssertionError otherwise); record the outcome."""
    CASES[target] += 1
    outcome = OUTCOMES.setdefault(target, Counter())
    try:
        with time_limit(seconds):
            result = fn()
    except errors().UNetLabError as exc:
        cause = getattr(exc, "cause", None)
        detail = f"<{type(cause).__name__}>" if isinstance(exc, errors().NodeExecutionError) else ""
        outcome[type(exc).__name__ + detail] += 1
        text = str(exc)
        assert text.strip(), f"{target}: {type(exc).__name__} with an empty message"
        return exc
    except Hang as exc:
        raise AssertionError(f"{target}: hang: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the point: any other class is a finding
        raise AssertionError(f"{target}: undocumented {type(exc).__name__} escaped: {exc}") from exc
    outcome["ok"] += 1
    return result


# --------------------------------------------------------------------------- file-system snapshots
_IGNORED = {".git", "__pycache__", ".hypothesis", ".pytest_cache", ".venv", "node_modules"}


def listing(root: Path, depth: int = 3) -> set[str]:
    """Relative paths under ``root`` (to ``depth`` levels; caches skipped), for before/after comparison."""
    out: set[str] = set()

    def walk(folder: Path, level: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.name in _IGNORED:
                continue
            path = Path(entry.path)
            out.add(str(path.relative_to(root)))
            if level < depth and entry.is_dir(follow_symlinks=False):
                walk(path, level + 1)

    walk(root, 1)
    return out


def make_host(base: Path):
    """A StandaloneHost whose models/input/output/temp folders are all under ``base``."""
    from unet_lab.nodes.host import StandaloneHost

    return StandaloneHost(models_root=base / "models", output_dir=base / "output", input_dir=base / "input",
                          temp_dir=base / "temp", device="cpu", show_progress=False)


# --------------------------------------------------------------------------- small real files
def small_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A few tensors of several dtypes and ranks (a LoRA-like and a plain part)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.randn(4, 8, generator=g),
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.randn(8, 4, generator=g).half(),
        "lora_unet_input_blocks_1_1_proj_in.alpha": torch.tensor(4.0),
        "time_embed.0.weight": torch.randn(3, 2, 2, generator=g).to(torch.bfloat16),
        "counts": torch.arange(5, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "bytes": torch.arange(7, dtype=torch.uint8),
    }


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header: Any, data: bytes, pad: bool = True) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def tiny_unet_config():
    from unet_lab.unet_core.unet_config import UNetConfig

    return UNetConfig(block_out_channels=(32, 64), layers_per_block=1, transformer_layers_per_block=(1, 0),
                      num_attention_heads=(2, 2), cross_attention_dim=16, norm_num_groups=8)


def tiny_unet_state_dict(config=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for every tensor of our UNetModel for ``config`` (shapes from the model on meta)."""
    from unet_lab.unet_core.diffusion.unet import UNetModel

    config = config or tiny_unet_config()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


_UNET_HEADER_CACHE: dict[str, Any] = {}


def tiny_unet_header() -> tuple[dict, int]:
    """(header JSON, data size) of a tiny-UNet safetensors file written by the pack's writer."""
    if "h" not in _UNET_HEADER_CACHE:
        import tempfile

        from unet_lab.unet_core.checkpoints.writer import save_unet

        with tempfile.TemporaryDirectory() as tmp:
            path = save_unet(Path(tmp) / "u.safetensors", tiny_unet_state_dict(), tiny_unet_config(), dtype="fp16")
            header, data = split_safetensors(path.read_bytes())
        _UNET_HEADER_CACHE["h"] = (header, len(data))
    return _UNET_HEADER_CACHE["h"]


def write_sparse(path: Path, header: Any, data_size: int) -> Path:
    """A safetensors file: ``header`` then ``data_size`` zero bytes (sparse, so big sizes cost nothing)."""
    raw = join_safetensors(header, b"")
    path.write_bytes(raw)
    with open(path, "r+b") as f:
        f.truncate(len(raw) + max(0, data_size))
    return path


# --------------------------------------------------------------------------- malicious pickles
class MarkerPayload:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def malicious_pickle(path: Path, marker: Path, wrap: Callable[[Any], Any] | None = None) -> Path:
    """``torch.save`` of a dict holding a payload that creates ``marker`` when unpickled unrestricted."""
    payload = MarkerPayload(str(marker))
    obj = wrap(payload) if wrap else {"weight": torch.zeros(2), "payload": payload}
    torch.save(obj, str(path))
    return path


# =========================================================================== fuzz targets
@dataclass
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy]
    check: Callable[[Any, Path], None]
    ci_examples: int


TARGETS: dict[str, Target] = {}


def target(name: str, ci_examples: int):
    def deco(fn):
        strategy_fn = fn()
        TARGETS[name] = Target(name, strategy_fn[0], strategy_fn[1], ci_examples)
        return fn
    return deco


def _safetensors_readers(name: str, path: Path) -> None:
    """Every checkpoints reader on ``path``; if a read succeeds, every tensor is touched."""
    from unet_lab.unet_core.checkpoints import safetensors_header
    from unet_lab.unet_core.checkpoints.loader import load_unet
    from unet_lab.unet_core.checkpoints.readers import load_state_dict
    from unet_lab.unet_core.checkpoints.report import describe
    from unet_lab.unet_core.checkpoints.sniff import sniff

    safetensors_header._CACHE.clear()
    expect_documented(name + ":read_header", lambda: safetensors_header.read_header(path))
    spec = expect_documented(name + ":sniff", lambda: sniff(path))
    if not isinstance(spec, BaseException):
        expect_documented(name + ":describe", lambda: describe(spec))

    def _load():
        sd = load_state_dict(path)
        for t in sd.values():
            t.float().sum() if t.numel() else None
        return sd

    expect_documented(name + ":load_state_dict", _load)
    expect_documented(name + ":load_unet", lambda: load_unet(path))


@target("safetensors_random_bytes", 60)
def _st_random():
    def strategy():
        head = st.one_of(st.just(b""), st.binary(max_size=8),
                         st.integers(0, 2**64 - 1).map(lambda n: struct.pack("<Q", n)),
                         st.integers(0, 300).map(lambda n: struct.pack("<Q", n)))
        return st.tuples(head, st.binary(max_size=400), st.sampled_from([".safetensors", ".sft", ""]))

    def check(example, workdir: Path) -> None:
        head, body, suffix = example
        path = workdir / f"random{suffix or '.safetensors'}"
        path.write_bytes(head + body)
        _safetensors_readers("safetensors_random_bytes", path)
    return strategy, check


_DTYPES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "U16", "U32",
           "U64", "BOOL", "F4", "F6_E2M3", "C64", "Q4", "", "f32", "F8_E8M0"]
_JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                        | st.text(max_size=8),
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=8)


def _mutation():
    """One structured mutation of a safetensors header (applied by :func:`_apply_mutation`)."""
    return st.one_of(
        st.tuples(st.just("dtype"), st.integers(0, 10**6), st.sampled_from(_DTYPES)),
        st.tuples(st.just("shape"), st.integers(0, 10**6),
                  st.lists(st.one_of(st.integers(-3, 70), st.integers(-2**63, 2**64)), max_size=5)),
        st.tuples(st.just("offsets"), st.integers(0, 10**6),
                  st.lists(st.one_of(st.integers(-5, 5000), st.integers(-2**63, 2**64)), min_size=0, max_size=3)),
        st.tuples(st.just("field"), st.integers(0, 10**6), st.sampled_from(["dtype", "shape", "data_offsets"]),
                  _JSONISH),
        st.tuples(st.just("drop"), st.integers(0, 10**6), st.sampled_from(["dtype", "shape", "data_offsets", "*"])),
        st.tuples(st.just("entry"), st.integers(0, 10**6), _JSONISH),
        st.tuples(st.just("rename"), st.integers(0, 10**6), st.text(max_size=40)),
        st.tuples(st.just("metadata"), _JSONISH),
        st.tuples(st.just("metakey"), st.sampled_from(["unet_lab.config", "modelspec.prediction_type",
                                                       "modelspec.architecture", "ss_v_parameterization",
                                                       "modelspec.title"]), st.one_of(st.text(max_size=30), _JSONISH)),
        st.tuples(st.just("whole"), _JSONISH),
    )


def _apply_mutation(header: dict, mutation: tuple) -> Any:
    kind = mutation[0]
    if kind == "whole":
        return mutation[1]
    if not isinstance(header, dict):
        return header
    names = [k for k in header if k != "__metadata__"]
    if kind in ("metadata", "metakey"):
        if kind == "metadata":
            header["__metadata__"] = mutation[1]
        else:
            meta = header.setdefault("__metadata__", {})
            if isinstance(meta, dict):
                meta[mutation[1]] = mutation[2] if isinstance(mutation[2], str) else json.dumps(mutation[2])
        return header
    if not names:
        return header
    name = names[mutation[1] % len(names)]
    entry = header[name]
    if not isinstance(entry, dict) and kind not in ("entry", "rename", "drop"):
        return header
    if kind == "dtype":
        entry["dtype"] = mutation[2]
    elif kind == "shape":
        entry["shape"] = mutation[2]
    elif kind == "offsets":
        entry["data_offsets"] = mutation[2]
    elif kind == "field":
        entry[mutation[2]] = mutation[3]
    elif kind == "drop":
        if mutation[2] == "*":
            del header[name]
        elif isinstance(entry, dict):
            entry.pop(mutation[2], None)
    elif kind == "entry":
        header[name] = mutation[2]
    elif kind == "rename":
        header[mutation[2]] = header.pop(name)
    return header


@target("safetensors_mutated_header", 80)
def _st_mutated():
    def strategy():
        return st.tuples(st.sampled_from(["small", "unet"]), st.lists(_mutation(), min_size=1, max_size=3),
                         st.integers(-64, 64), st.booleans())

    def check(example, workdir: Path) -> None:
        base, mutations, size_delta, pad = example
        if base == "small":
            header, data = split_safetensors(safetensors_bytes(small_tensors(), {"k": "v"}))
            size = len(data)
        else:
            header, size = tiny_unet_header()
            header = json.loads(json.dumps(header))
            data = None
        for m in mutations:
            header = _apply_mutation(header, m)
        path = workdir / "mutated.safetensors"
        if data is None:
            write_sparse(path, header, size + size_delta)
        else:
            data = data + b"\x00" * max(0, size_delta) if size_delta >= 0 else data[:size_delta]
            path.write_bytes(join_safetensors(header, data, pad=pad))
        _safetensors_readers("safetensors_mutated_header", path)
    return strategy, check


@target("safetensors_byte_mutations", 60)
def _st_bytes():
    def strategy():
        edit = st.one_of(st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
                         st.tuples(st.just("cut"), st.integers(0, 10**6)),
                         st.tuples(st.just("length"), st.integers(0, 2**64 - 1)),
                         st.tuples(st.just("length_near"), st.integers(-16, 16)),
                         st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)))
        return st.lists(edit, min_size=1, max_size=4)

    def check(edits, workdir: Path) -> None:
        raw = bytearray(safetensors_bytes(small_tensors(1), {"modelspec.title": "x"}))
        for edit in edits:
            if edit[0] == "flip" and raw:
                raw[edit[1] % len(raw)] ^= edit[2]
            elif edit[0] == "cut":
                del raw[edit[1] % (len(raw) + 1):]
            elif edit[0] == "length" and len(raw) >= 8:
                raw[:8] = struct.pack("<Q", edit[1])
            elif edit[0] == "length_near" and len(raw) >= 8:
                (n,) = struct.unpack("<Q", raw[:8])
                raw[:8] = struct.pack("<Q", min(max(0, n + edit[1]), 2**64 - 1))
            elif edit[0] == "insert":
                at = edit[1] % (len(raw) + 1)
                raw[at:at] = edit[2]
        path = workdir / "edited.safetensors"
        path.write_bytes(bytes(raw))
        _safetensors_readers("safetensors_byte_mutations", path)
    return strategy, check


def _pickle_base(kind: str) -> bytes:
    buf = io.BytesIO()
    obj: Any = {"a.weight": torch.randn(3, 4), "b": torch.arange(3), "nested": {"x": torch.ones(2)}, "n": 3}
    if kind == "wrapped":
        obj = {"state_dict": obj, "epoch": 3}
    if kind == "legacy":
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, buf)
    return buf.getvalue()


@target("pickle_bytes", 60)
def _pickle():
    def strategy():
        edit = st.one_of(st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
                         st.tuples(st.just("cut"), st.floats(0, 1)),
                         st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=6)))
        mutated = st.tuples(st.sampled_from(["zip", "wrapped", "legacy"]), st.lists(edit, max_size=3),
                            st.sampled_from([".pt", ".ckpt", ".pth", ".bin"]))
        random_bytes = st.tuples(st.just("random"), st.binary(max_size=300), st.sampled_from([".pt", ".ckpt"]))
        protocol = st.tuples(st.just("pickle"), _JSONISH, st.sampled_from([".pt", ".pth"]))
        return st.one_of(mutated, random_bytes, protocol)

    def check(example, workdir: Path) -> None:
        from unet_lab.unet_core.checkpoints.loader import load_unet
        from unet_lab.unet_core.checkpoints.readers import load_pickle
        from unet_lab.unet_core.checkpoints.sniff import sniff

        kind, edits, suffix = example
        if kind == "random":
            raw = edits
        elif kind == "pickle":
            raw = pickle.dumps(edits)
        else:
            raw = bytearray(_pickle_base(kind))
            # legacy files: edit only the pickled header part (the first third), never the storage sizes,
            # which would let a mutation ask for gigabytes (a memory test, not a parser test)
            span = len(raw) // 3 if kind == "legacy" else len(raw)
            for e in edits:
                at = min(int(e[1] * max(span - 1, 0)), max(len(raw) - 1, 0))
                if e[0] == "flip" and raw:
                    raw[at] ^= e[2]
                elif e[0] == "cut" and kind != "legacy":
                    del raw[at:]
                elif e[0] == "insert":
                    raw[at:at] = e[2]
            raw = bytes(raw)
        path = workdir / f"p{suffix}"
        path.write_bytes(raw)
        expect_documented("pickle_bytes:load_pickle", lambda: load_pickle(path))
        expect_documented("pickle_bytes:sniff", lambda: sniff(path))
        expect_documented("pickle_bytes:load_unet", lambda: load_unet(path))
    return strategy, check


def tiny_seg_model(seed: int = 0):
    from unet_lab.unet_core.segmentation.registry import build_model

    torch.manual_seed(seed)
    return build_model("unet", in_channels=3, out_channels=1, depth=1, base_channels=4)


def tiny_milesial_state_dict(base: int = 4, depth: int = 1, n_in: int = 3, n_out: int = 2) -> dict[str, torch.Tensor]:
    """milesial-layout keys for our "unet" at a tiny size (built by our model, renamed by the adapter's rules)."""
    sd: dict[str, torch.Tensor] = {}

    def dc(prefix: str, cin: int, cout: int) -> None:
        for idx, (a, b) in ((0, (cout, cin)), (3, (cout, cout))):
            sd[f"{prefix}.double_conv.{idx}.weight"] = torch.randn(a, b, 3, 3) * 0.1
            for name in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.double_conv.{idx + 1}.{name}"] = torch.rand(a) + 0.5
            sd[f"{prefix}.double_conv.{idx + 1}.num_batches_tracked"] = torch.tensor(1)

    dc("inc", n_in, base)
    ch = base
    for i in range(1, depth + 1):
        dc(f"down{i}.maxpool_conv.1", ch, ch * 2)
        ch *= 2
    for i in range(1, depth + 1):
        sd[f"up{i}.up.weight"] = torch.randn(ch, ch // 2, 2, 2) * 0.1
        sd[f"up{i}.up.bias"] = torch.zeros(ch // 2)
        dc(f"up{i}.conv", ch, ch // 2)
        ch //= 2
    sd["outc.conv.weight"] = torch.randn(n_out, base, 1, 1)
    sd["outc.conv.bias"] = torch.zeros(n_out)
    return sd


@target("segmentation_loader", 60)
def _seg():
    def strategy():
        meta_mut = st.tuples(st.just("meta"), st.sampled_from(["architecture", "hparams", "normalization",
                                                               "class_names", "threshold", "class_values",
                                                               "unet_lab.format"]),
                             st.one_of(st.text(max_size=20), _JSONISH.map(json.dumps),
                                       st.fixed_dictionaries({}, optional={
                                           "depth": st.integers(-2, 4), "base_channels": st.integers(-4, 12),
                                           "in_channels": st.integers(-1, 5), "out_channels": st.integers(-1, 5),
                                           "norm": st.sampled_from(["batch", "none", "x", 3]),
                                           "upsampling": st.sampled_from(["transpose", "bilinear", None]),
                                           "junk": _JSONISH}).map(json.dumps)))
        ours = st.tuples(st.just("ours"), st.lists(meta_mut, max_size=3), st.lists(_mutation(), max_size=2))
        miles = st.tuples(st.just("milesial"),
                          st.lists(st.one_of(
                              st.tuples(st.just("drop"), st.integers(0, 10**4)),
                              st.tuples(st.just("reshape"), st.integers(0, 10**4),
                                        st.lists(st.integers(0, 6), max_size=4)),
                              st.tuples(st.just("mask_values"), _JSONISH),
                              st.tuples(st.just("wrap"), st.sampled_from(["state_dict", "model", "module.", "model_state_dict"]))),
                              max_size=3),
                          st.sampled_from([".pth", ".pt", ".safetensors"]))
        random_bytes = st.tuples(st.just("random"), st.binary(max_size=200), st.sampled_from([".pth", ".safetensors"]))
        return st.one_of(ours, miles, random_bytes)

    def check(example, workdir: Path) -> None:
        from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, load_segmentation, save_segmentation

        kind = example[0]
        if kind == "random":
            path = workdir / f"seg{example[2]}"
            path.write_bytes(example[1])
        elif kind == "ours":
            model = tiny_seg_model()
            path = workdir / "seg.safetensors"
            if path.exists():
                path.unlink()
            save_segmentation(path, model, SegmentationMeta.for_model(model))
            header, data = split_safetensors(path.read_bytes())
            for _m, key, value in example[1]:
                header.setdefault("__metadata__", {})[key] = value
            for m in example[2]:
                header = _apply_mutation(header, m)
            path.write_bytes(join_safetensors(header, data))
        else:
            sd: Any = tiny_milesial_state_dict()
            extras: dict[str, Any] = {}
            for edit in example[1]:
                keys = sorted(sd)
                if edit[0] == "drop" and keys:
                    sd.pop(keys[edit[1] % len(keys)])
                elif edit[0] == "reshape" and keys:
                    sd[keys[edit[1] % len(keys)]] = torch.zeros(tuple(edit[2]))
                elif edit[0] == "mask_values":
                    extras["mask_values"] = edit[1]
                elif edit[0] == "wrap":
                    if edit[1] == "module.":
                        sd = {"module." + k: v for k, v in sd.items()}
                    else:
                        sd = {edit[1]: sd}
            path = workdir / f"miles{example[2]}"
            if example[2] == ".safetensors":
                flat = sd if all(isinstance(v, torch.Tensor) for v in sd.values()) else {}
                path.write_bytes(safetensors_bytes(flat))
            else:
                torch.save({**sd, **extras} if isinstance(sd, dict) else sd, str(path))
        loaded = expect_documented("segmentation_loader", lambda: load_segmentation(path))
        if isinstance(loaded, tuple):  # what loads must be usable: normalise and run a tiny image
            model, meta = loaded
            x = torch.rand(1, model.in_channels, 8, 8)
            expect_documented("segmentation_loader:use", lambda: model(meta.normalize(x)))
    return strategy, check


@target("lora_keys_and_files", 60)
def _lora():
    def strategy():
        part = st.sampled_from(["lora_unet_", "lora_te_", "input_blocks_", "output_blocks_", "middle_block_",
                                "down_blocks.", "up_blocks.", "mid_block.", "attentions.", "resnets.", "0", "1",
                                "2", "_", ".", "transformer_blocks", "attn1", "attn2", "to_q", "to_k", "proj_in",
                                "in_layers", "unet.", "base_model.model.", "diffusion_model.", "lora_A", "lora_B"])
        suffix = st.sampled_from([".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight",
                                  ".lora_B.weight", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b",
                                  ".lokr_w1", ".lokr_w2", ".diff", ".diff_b", ".dora_scale", ".lora_mid.weight",
                                  ".weight", ""])
        key = st.tuples(st.lists(part, min_size=1, max_size=6).map("".join), suffix).map("".join) | st.text(max_size=30)
        shape = st.lists(st.integers(0, 6), max_size=4)
        entries = st.lists(st.tuples(key, shape, st.sampled_from(["f32", "f16", "i64", "nan"])), max_size=8)
        return st.tuples(entries, st.sampled_from([".safetensors", ".pt"]), st.floats(-5, 5))

    def check(example, workdir: Path) -> None:
        from unet_lab.unet_core.lora import formats, keys

        entries, suffix, strength = example
        state: dict[str, torch.Tensor] = {}
        for key, shape, kind in entries:
            t = torch.randn(tuple(shape)) if kind in ("f32", "nan") else torch.zeros(tuple(shape), dtype=torch.int64)
            if kind == "f16":
                t = t.half()
            if kind == "nan" and t.numel():
                t.view(-1)[0] = float("nan")
            state[key] = t
        for key in state:
            expect_documented("lora_keys_and_files:split_key", lambda k=key: keys.split_key(k))
        expect_documented("lora_keys_and_files:guess_family", lambda: keys.guess_family(list(state)))
        names = _lora_names()
        expect_documented("lora_keys_and_files:parse_lora", lambda: formats.parse_lora(dict(state), names, "fuzz"))
        plan = _lora_plan()
        if plan is not None:
            expect_documented("lora_keys_and_files:plan_lora", lambda: plan(dict(state), strength))
        path = workdir / f"l{suffix}"
        if suffix == ".pt":
            torch.save(state, str(path))
        else:
            path.write_bytes(safetensors_bytes(state) if state else b"")
        expect_documented("lora_keys_and_files:load_lora_file", lambda: formats.load_lora_file(path))
    return strategy, check


_LORA_CACHE: dict[str, Any] = {}


def _lora_names():
    if "names" not in _LORA_CACHE:
        from unet_lab.unet_core.diffusion.unet import UNetModel
        from unet_lab.unet_core.lora.plan import model_names

        config = tiny_unet_config()
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
        _LORA_CACHE["names"] = model_names(shapes, config)
        _LORA_CACHE["config"] = config
    return _LORA_CACHE["names"]


def _lora_plan():
    try:
        from unet_lab.unet_core.lora.plan import plan_lora
    except ImportError:
        return None
    names = _lora_names()
    config = _LORA_CACHE["config"]
    return lambda state, strength: plan_lora(state, names, config, "sd1", strength=strength, block_spec="",
                                             preset=None, source="fuzz")


@target("block_spec", 150)
def _block_spec():
    def strategy():
        token = st.sampled_from(["IN", "OUT", "MID", "M", "M00", "BASE", "default", "IN00", "IN04", "OUT03", "IN01-05",
                                 "OUT00-11", "IN99", "OUT5-2", "=", ":", ",", ";", "\n", " ", "#", "0.5", "1", "-2",
                                 "1e308", "1e999", "nan", "inf", "-inf", "x", "IN1", "in02", "OUT-1", "--", "0x10",
                                 "1_0", "²", "٣"])
        text = st.one_of(st.lists(token, max_size=12).map("".join), st.text(max_size=40),
                         st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30).map(
                             lambda v: ",".join(map(str, v))))
        from unet_lab.unet_core.lora.blocks import PRESETS
        preset = st.one_of(st.none(), st.sampled_from(sorted(PRESETS)), st.text(max_size=6))
        return st.tuples(text, preset, st.sampled_from(["tiny", "sd1", "sdxl"]))

    def check(example, workdir: Path) -> None:  # noqa: ARG001
        import math

        from unet_lab.unet_core.lora.blocks import BlockLayout, parse_block_spec
        from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

        text, preset, which = example
        config = {"tiny": tiny_unet_config(), "sd1": SD1_CONFIG, "sdxl": SDXL_CONFIG}[which]
        layout = BlockLayout.from_config(config)
        result = expect_documented("block_spec", lambda: parse_block_spec(text, layout, preset))
        if isinstance(result, dict):
            assert set(result) == set(layout.full), "block weights must cover exactly the layout's blocks"
            assert all(isinstance(v, float) and math.isfinite(v) for v in result.values()), \
                f"non-finite block weight accepted from {text!r}: {result}"
    return strategy, check


def _workflow_base() -> dict:
    from pack_support import REPO_ROOT

    return json.loads((REPO_ROOT / "workflows" / "unet_lab_segmentation_training.json").read_text())


_PATHS = st.lists(st.one_of(st.text(max_size=10), st.integers(0, 12)), min_size=1, max_size=4)


@target("ui_to_api", 120)
def _ui():
    def strategy():
        mutation = st.one_of(
            st.tuples(st.just("set"), _PATHS, _JSONISH),
            st.tuples(st.just("del"), _PATHS),
            st.tuples(st.just("link"), st.integers(0, 12), st.lists(_JSONISH | st.integers(-2, 12), max_size=7)),
            st.tuples(st.just("mode"), st.integers(0, 12), st.sampled_from([0, 2, 4, "x", None])),
            st.tuples(st.just("type"), st.integers(0, 12), st.sampled_from(["Reroute", "PrimitiveNode", "Note",
                                                                            "SaveImage", "Unknown", 7, None])),
            st.tuples(st.just("loop"), st.integers(0, 12), st.integers(0, 12)),
        )
        return st.one_of(st.tuples(st.just("mutated"), st.lists(mutation, min_size=1, max_size=5)),
                         st.tuples(st.just("random"), _JSONISH))

    def check(example, workdir: Path) -> None:  # noqa: ARG001
        from unet_lab.unet_core.graph.formats import split_prompt

        if example[0] == "random":
            data = example[1]
        else:
            data = _workflow_base()
            for m in example[1]:
                _mutate_workflow(data, m)
        schemas = _executor_for_schemas().schemas()
        expect_documented("ui_to_api", lambda: split_prompt(data, schemas, "fuzz"))
    return strategy, check


def _mutate_workflow(data: dict, m: tuple) -> None:
    nodes = data.get("nodes") or []
    kind = m[0]
    if kind in ("set", "del"):
        obj: Any = data
        path = m[1]
        for step in path[:-1]:
            if isinstance(obj, dict) and obj:
                obj = obj[step] if step in obj else obj[sorted(obj, key=str)[hash(str(step)) % len(obj)]]
            elif isinstance(obj, list) and obj:
                obj = obj[step % len(obj)] if isinstance(step, int) else obj[0]
            else:
                return
        last = path[-1]
        if isinstance(obj, dict):
            if kind == "set":
                obj[str(last)] = m[2]
            else:
                obj.pop(str(last), None)
        elif isinstance(obj, list) and obj and isinstance(last, int):
            if kind == "set":
                obj[last % len(obj)] = m[2]
            else:
                del obj[last % len(obj)]
    elif kind == "link":
        links = data.setdefault("links", [])
        if isinstance(links, list):
            links.append(m[2])
            if nodes and len(m[2]) >= 5 and isinstance(nodes[m[1] % len(nodes)], dict):
                node = nodes[m[1] % len(nodes)]
                ins = node.setdefault("inputs", [])
                if isinstance(ins, list):
                    ins.append({"name": "extra", "type": "*", "link": m[2][0]})
    elif kind in ("mode", "type") and nodes:
        node = nodes[m[1] % len(nodes)]
        if isinstance(node, dict):
            node["mode" if kind == "mode" else "type"] = m[2]
    elif kind == "loop" and nodes:
        a, b = nodes[m[1] % len(nodes)], nodes[m[2] % len(nodes)]
        if isinstance(a, dict) and isinstance(b, dict):
            link_id = 1000 + m[1] * 13 + m[2]
            data.setdefault("links", []).append([link_id, a.get("id"), 0, b.get("id"), 0, "*"])
            if isinstance(b.get("inputs"), list):
                b["inputs"].append({"name": "loop", "type": "*", "link": link_id})
            b["type"] = "Reroute"


_EXEC_CACHE: dict[str, Any] = {}


def _executor_for_schemas():
    if "schemas" not in _EXEC_CACHE:
        from unet_lab.nodes.host.headless import node_classes
        from unet_lab.unet_core.graph.execute import Executor

        _EXEC_CACHE["schemas"] = Executor(node_classes())
    return _EXEC_CACHE["schemas"]


# --- executor with small fake node classes
class FakeInt:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -10, "max": 10})}}

    def run(self, value):
        return (value,)


class FakeAdd:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"forceInput": True}), "b": ("INT", {"default": 1})}}

    def run(self, a, b):
        return (a + b,)


class FakeDiv:
    """Raises ZeroDivisionError for b == 0 (a node bug: must surface as NodeExecutionError)."""

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"forceInput": True}), "b": ("INT", {"default": 1, "min": -3, "max": 3})}}

    def run(self, a, b):
        return (a / b,)


class FakeImage:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 4, "min": 1, "max": 8})},
                "optional": {"bias": ("FLOAT", {"default": 0.0})}}

    def run(self, size, bias=0.0):
        return (torch.full((1, size, size, 3), 0.5 + bias).clamp(0, 1),)


class FakeSink:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*", {})}}

    def run(self, value):
        return {"ui": {"text": [repr(value)[:40]]}}


class FakeChanged:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "UNet Lab/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, value):
        if value < 0:
            raise RuntimeError("IS_CHANGED failed")
        return float("nan")

    def run(self, value):
        return (value,)


FAKE_NODES = {"UNetLabFuzzInt": FakeInt, "UNetLabFuzzAdd": FakeAdd, "UNetLabFuzzDiv": FakeDiv,
              "UNetLabFuzzImage": FakeImage, "UNetLabFuzzSink": FakeSink, "UNetLabFuzzChanged": FakeChanged}
REAL_CHEAP = ("MaskToImage", "ImageToMask", "UNetLabSyntheticSegmentationData", "SaveImage", "PreviewImage",
              "UNetLabInspectUNet")


def _graph_strategy(class_types: list[str], input_names: list[str]):
    value = st.one_of(st.integers(-4, 40), st.floats(-2, 2), st.text(max_size=6), st.booleans(), st.none(),
                      st.sampled_from(["red", "alpha", "train", "test", "../x", "/etc/passwd",
                                       "diffusion_models/../../x", "x/../../etc/passwd", "ComfyUI", "../escape",
                                       "sub/dir/name", "/abs"]),
                      st.lists(st.integers(-1, 8), min_size=2, max_size=2).map(lambda v: [str(v[0]), v[1]]),
                      st.lists(st.integers(-1, 8), max_size=3))
    node = st.fixed_dictionaries({
        "class_type": st.one_of(st.sampled_from(class_types), st.text(max_size=4)),
        "inputs": st.dictionaries(st.sampled_from(input_names), value, max_size=4),
    })
    return st.lists(node, min_size=1, max_size=6).map(lambda ns: {str(i): n for i, n in enumerate(ns)})


@target("executor_fake_nodes", 80)
def _exec_fake():
    def strategy():
        return _graph_strategy(list(FAKE_NODES), ["value", "a", "b", "size", "bias", "other"])

    def check(prompt, workdir: Path) -> None:
        from unet_lab.unet_core.graph.execute import Executor

        ex = Executor(FAKE_NODES, core_schemas={})
        expect_documented("executor_fake_nodes", lambda: ex.run(prompt, source="fuzz"), seconds=10)
        expect_documented("executor_fake_nodes:rerun", lambda: ex.run(prompt, source="fuzz"), seconds=10)
    return strategy, check


@target("executor_real_nodes", 40)
def _exec_real():
    def strategy():
        names = ["mask", "image", "channel", "count", "size", "seed", "split", "images", "filename_prefix", "file"]
        return st.one_of(_real_pipeline(), _graph_strategy(list(REAL_CHEAP), names).map(_tame_real))

    def check(prompt, workdir: Path) -> None:
        from unet_lab.nodes.host import use_host
        from unet_lab.unet_core.graph.execute import Executor

        base = workdir / "exec"
        host = make_host(base)
        (base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
        outside = listing(workdir, depth=1) - {"exec"}
        with use_host(host):
            ex = Executor({k: v for k, v in _real_classes().items() if k in REAL_CHEAP}, core_schemas={})
            result = expect_documented("executor_real_nodes", lambda: ex.run(prompt, source="fuzz"), seconds=20)
        if isinstance(result, errors().NodeExecutionError) and result.class_type.startswith("UNetLab"):
            assert isinstance(result.cause, errors().UNetLabError), \
                f"our node {result.class_type} raised an undocumented {type(result.cause).__name__}: {result.cause}"
        assert listing(workdir, depth=1) - {"exec"} == outside, "files appeared beside the host's folders"
        for entry in listing(base, depth=1):
            assert entry in ("models", "output", "temp", "input"), f"unexpected entry {entry} in the host base"
        written = [p for p in base.rglob("*") if p.is_file()]
        stray = [p for p in written if not (_inside(p, base / "output") or _inside(p, base / "temp"))]
        assert not stray, f"files written outside the output/temp folders: {stray[:3]}"
    return strategy, check


PREFIXES = ["ComfyUI", "sub/dir/img", "../escape", "../../escape", "/tmp/abs_escape", "a/../../escape", "%width%_x",
            "", "..", ".", "x/./y", "img%batch_num%", "name with space", "\u00e9t\u00e9/\u6587", "a\\..\\..\\b"]


@st.composite
def _real_pipeline(draw):
    """A mostly valid graph of real cheap nodes: data -> (mask <-> image) -> save/preview, plus Inspect."""
    prompt: dict[str, Any] = {"1": {"class_type": "UNetLabSyntheticSegmentationData", "inputs": {
        "count": draw(st.integers(0, 2)), "size": draw(st.sampled_from([8, 16, 24])),
        "seed": draw(st.integers(-1, 5)), "split": draw(st.sampled_from(["train", "test", "validation", "x"]))}}}
    last_image = ["1", 0]
    last_mask = ["1", 1]
    for i in range(draw(st.integers(0, 3))):
        nid = str(10 + i)
        if draw(st.booleans()):
            prompt[nid] = {"class_type": "MaskToImage", "inputs": {"mask": draw(st.sampled_from([last_mask, last_image]))}}
            last_image = [nid, 0]
        else:
            prompt[nid] = {"class_type": "ImageToMask", "inputs": {
                "image": draw(st.sampled_from([last_image, last_mask])),
                "channel": draw(st.sampled_from(["red", "green", "blue", "alpha"]))}}
            last_mask = [nid, 0]
    for i in range(draw(st.integers(1, 3))):
        prompt[str(20 + i)] = {"class_type": draw(st.sampled_from(["SaveImage", "PreviewImage"])), "inputs": {
            "images": draw(st.sampled_from([last_image, last_mask, ["1", 0]])),
            "filename_prefix": draw(st.sampled_from(PREFIXES) | st.text(max_size=12))}}
    if draw(st.booleans()):
        prompt["30"] = {"class_type": "UNetLabInspectUNet", "inputs": {"file": draw(st.sampled_from(
            ["diffusion_models/../../x.safetensors", "checkpoints/../x", "/etc/passwd", "diffusion_models/none"]))}}
    return prompt


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _tame_real(prompt: dict) -> dict:
    """Keep synthetic data tiny (count <= 2, size 16..24) so each example costs milliseconds."""
    for node in prompt.values():
        inputs = node["inputs"]
        if isinstance(inputs.get("count"), int):
            inputs["count"] = min(max(inputs["count"], -1), 2)
        if isinstance(inputs.get("size"), int):
            inputs["size"] = min(inputs["size"], 24)
    return prompt


def _real_classes() -> dict[str, type]:
    if "classes" not in _EXEC_CACHE:
        from unet_lab.nodes.host.headless import node_classes

        _EXEC_CACHE["classes"] = node_classes()
    return _EXEC_CACHE["classes"]


@target("gate_weights_file", 40)
def _gates():
    """load_trained_gates (unet_core/gates/trained.py) on mutated skip-gate files and random bytes."""
    def strategy():
        meta = st.tuples(st.sampled_from(["channels", "block_out_channels", "layers_per_block", "norm", "family",
                                          "format", "format_version"]),
                         st.one_of(st.text(max_size=12), _JSONISH.map(json.dumps),
                                   st.sampled_from(['{"level1.0": [64, 64, 4]}', '{"level1.0": 5}', '["level1.0"]',
                                                    "[32, 64]", "1", "none", "batch", "sd1", "sdxl",
                                                    "unet_lab.skip_gates"])))
        tensor = st.tuples(st.integers(0, 10**4), st.lists(st.integers(0, 5), max_size=4))
        mutated = st.tuples(st.just("mutated"), st.lists(meta, max_size=3), st.lists(tensor, max_size=2),
                            st.lists(_mutation(), max_size=1))
        return st.one_of(mutated, st.tuples(st.just("random"), st.binary(max_size=200)))

    def check(example, workdir: Path) -> None:
        from unet_lab.unet_core.gates.additive import AdditiveAttentionGate
        from unet_lab.unet_core.gates.levels import skip_blocks
        from unet_lab.unet_core.gates.trained import load_trained_gates, save_trained_gates

        config = tiny_unet_config()
        path = workdir / "g.safetensors"
        if example[0] == "random":
            path.write_bytes(example[1])
        else:
            block = skip_blocks(config)[0]
            gate = AdditiveAttentionGate(block.skip_channels, block.gating_channels, 4, norm=None)
            save_trained_gates(path, {block.key: gate}, "sd1", config)
            header, data = split_safetensors(path.read_bytes())
            for key, value in example[1]:
                header["__metadata__"][key] = value
            names = sorted(k for k in header if k != "__metadata__")
            tensors = {}
            for index, shape in example[2]:
                tensors[names[index % len(names)]] = torch.zeros(tuple(shape))
            if tensors:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    full = {k: handle.get_tensor(k) for k in handle.keys()}
                full.update(tensors)
                header, data = split_safetensors(safetensors_bytes(full, header["__metadata__"]))
            for m in example[3]:
                header = _apply_mutation(header, m)
            path.write_bytes(join_safetensors(header, data))
        expect_documented("gate_weights_file", lambda: load_trained_gates(path, config, "sd1"))
    return strategy, check


def load_unet_node(name: str) -> tuple[Any, str]:
    """(MODEL, info) from UNetLabLoadUNet in the current host."""
    from unet_lab.nodes.diffusion import UNetLabLoadUNet

    model, info = node_result(UNetLabLoadUNet().load(name, "default", "auto"))[:2]
    return model, info
