"""Load time and peak memory of ``load_unet`` against ``safetensors.torch.load_file``.

A real-shape SD1 UNet in fp16 (686 tensors, 859.5 M parameters, 1.72 GB, random bytes), then an
SDXL one (1680 tensors, 2567.5 M parameters, 5.14 GB), is written to a temporary folder, read once so the page cache is warm, then loaded by each
contender in its own fresh subprocess (so ``VmHWM``, the peak resident set from
``/proc/self/status``, belongs to that contender alone). Contenders alternate, and which one
goes first alternates from round to round (ours, reference; reference, ours; ...), so drift
and whatever the previous subprocess left behind hit both alike; each subprocess loads the file
once untimed (warm-up), then several times timed, and the medians are reported. Our
header cache is cleared before each timed load, so every load of ours parses the header.

Both are memory-mapped loaders, so a load that returns lazy views is only "fast" until
the data is used. Each timed load therefore also *touches every tensor the same way*:
``--touch pages`` (default) reads one byte of every 4 KiB page of every tensor (every page
is faulted in, nothing is copied); ``--touch clone`` clones every tensor (materialised
copies; peak memory then includes the copies for both contenders).

Goals: time ratio ours / reference <= 1.1; our peak RSS / file size <= 1.15 (reported both
as the absolute VmHWM and as the growth over the process's RSS before loading, which holds
the Python + torch runtime).

    python benchmarks/bench_load.py --json load.json
    python benchmarks/bench_load.py --rounds 2 --repeats 2        # quicker
    python benchmarks/bench_load.py --sniff                       # sniff timings on real-shape headers
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _pack import load_core  # benchmarks/ is on sys.path when a script runs

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench_load")


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmHWM, VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _real_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """LDM key -> shape of a full-size UNet: from diffusers' model (an independent source) renamed by
    our key map, or from our own module (same names and shapes) when diffusers is missing."""
    import torch

    load_core()
    from unet_lab.unet_core.checkpoints.keymap import diffusers_to_ldm_keymap
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

    config = {"sd1": SD1_CONFIG, "sdxl": SDXL_CONFIG}[family]
    try:
        from diffusers import UNet2DConditionModel

        if family == "sd1":
            kwargs = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                          attention_head_dim=8)
        else:
            kwargs = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                          up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                          block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                          attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                          addition_embed_type="text_time", addition_time_embed_dim=256,
                          projection_class_embeddings_input_dim=2816)
        with torch.device("meta"):
            model = UNet2DConditionModel(**kwargs)
        keymap = diffusers_to_ldm_keymap(config)
        return {keymap[k]: tuple(v.shape) for k, v in model.state_dict().items()}
    except ImportError:  # our own module has the same names and shapes
        from unet_lab.unet_core.diffusion.unet import UNetModel

        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}


def make_unet_file(path: Path, family: str = "sd1", seed: int = 0) -> int:
    """Write a real-shape fp16 UNet (bare LDM keys) of random bytes, streaming tensor by tensor."""
    import torch

    shapes = _real_shapes(family)
    header, offset = {"__metadata__": {"modelspec.title": f"bench_load {family} (random bytes)"}}, 0
    for k, s in shapes.items():
        n = 2 * math.prod(s)
        header[k] = {"dtype": "F16", "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for s in shapes.values():
            f.write(torch.randint(0, 256, (2 * math.prod(s),), dtype=torch.uint8, generator=gen).numpy().data)
    return path.stat().st_size


# -- child: one contender ---------------------------------------------------------------
def _touch(sd, how: str) -> int:
    import torch

    total = 0
    if how == "clone":
        copies = [t.clone() for t in sd.values()]
        total = len(copies)
        del copies
        return total
    for t in sd.values():
        raw = t.reshape(-1).view(torch.uint8)
        if raw.numel():
            total += int(raw[::4096].sum()) + int(raw[-1])
    return total


def child(which: str, path: str, repeats: int, touch: str) -> dict:
    import torch

    torch.set_num_threads(1)
    load_core()
    from safetensors.torch import load_file

    from unet_lab.unet_core.checkpoints import safetensors_header
    from unet_lab.unet_core.checkpoints.loader import load_unet

    def load():
        if which == "ours":
            safetensors_header._CACHE.clear()  # every timed load parses the header (once: sniff + read share it)
            return load_unet(path)[0]
        return load_file(path)

    rss_before = _status("VmRSS")
    with open(path, "rb") as f:  # the file's own tensor count, to check every load returned all of them
        expected = len([k for k in json.loads(f.read(int.from_bytes(f.read(8), "little"))) if k != "__metadata__"])
    _touch(load(), touch)  # warm-up, untimed, for both: imports and first-call set-up are not load time
    load_times, touch_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sd = load()
        t1 = time.perf_counter()
        _touch(sd, touch)
        t2 = time.perf_counter()
        load_times.append(t1 - t0)
        touch_times.append(t2 - t1)
        assert len(sd) == expected, (len(sd), expected)
        del sd
    return {"which": which, "load_s": load_times, "touch_s": touch_times,
            "total_s": [a + b for a, b in zip(load_times, touch_times, strict=True)],
            "rss_before": rss_before, "vmhwm": _status("VmHWM")}


def sniff_timings(repeats: int = 7) -> dict[str, float]:
    """Median ``sniff`` time (ms, header parsed each time) on sparse real-shape files of every family/layout."""
    load_core()
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import fixtures_checkpoints as fx
    from unet_lab.unet_core.checkpoints import safetensors_header
    from unet_lab.unet_core.checkpoints.sniff import sniff

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sniff_") as d:
        files = {f"{fam}/{lay}": fx.write_unet(Path(d), fam, lay) for fam in fx.FAMILY_CONFIGS for lay in fx.LAYOUTS}
        files["sdxl/full_checkpoint"] = fx.write_header_file(Path(d) / "full.safetensors",
                                                             fx.full_checkpoint_shapes("sdxl"))
        for name, path in files.items():
            sniff(path)
            times = []
            for _ in range(repeats):
                safetensors_header._CACHE.clear()
                t0 = time.perf_counter()
                sniff(path)
                times.append(time.perf_counter() - t0)
            out[name] = 1000 * statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="subprocesses per contender (alternating)")
    ap.add_argument("--repeats", type=int, default=5, help="loads per subprocess")
    ap.add_argument("--touch", choices=("pages", "clone"), default="pages")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--keep", type=Path, default=None, help="use/keep this file instead of a temp one")
    ap.add_argument("--families", default="sd1,sdxl", help="comma list of sd1, sdxl")
    ap.add_argument("--sniff", action="store_true", help="only time sniff on sparse real-shape files")
    ap.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.repeats, args.touch)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.sniff:
        timings = sniff_timings()
        rows = "\n".join(f"  {k:28}{v:8.1f}" for k, v in timings.items())
        worst = max(timings.values())
        sys.stdout.write(f"sniff, header parsed each time (median of 7), ms:\n{rows}\n"
                         f"  worst {worst:.1f} ms (goal < 50)\n")
        if args.json:
            args.json.write_text(json.dumps({"sniff_ms": timings}, indent=2))
        return

    report = {"families": {}}
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        report["families"][family] = bench_family(family, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def bench_family(family: str, args: argparse.Namespace) -> dict:
    """Make (or reuse) the family's file, time both contenders, print the table, return the figures."""
    tmp = None
    if args.keep and args.keep.exists():
        path = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_load_")
        path = args.keep or Path(tmp.name) / f"{family}_unet_fp16.safetensors"
        t0 = time.perf_counter()
        make_unet_file(path, family)
        log.info("wrote %s (%.2f GB) in %.1f s", path, path.stat().st_size / 1e9, time.perf_counter() - t0)
    size = path.stat().st_size
    with open(path, "rb") as f:  # warm the page cache for both contenders
        while f.read(64 << 20):
            pass

    results: dict[str, list[dict]] = {"ours": [], "reference": []}
    try:
        for round_index in range(args.rounds):
            for which in ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours"):
                out = subprocess.run([sys.executable, __file__, "--child", which, "--path", str(path),
                                      "--repeats", str(args.repeats), "--touch", args.touch],
                                     capture_output=True, text=True, check=True)
                results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if tmp is not None and args.keep is None:
            tmp.cleanup()

    def agg(which: str) -> dict:
        runs = results[which]
        flat = lambda key: [x for r in runs for x in r[key]]  # noqa: E731
        hwm = max(r["vmhwm"] for r in runs)
        growth = max(r["vmhwm"] - r["rss_before"] for r in runs)
        return {"load_s": statistics.median(flat("load_s")), "touch_s": statistics.median(flat("touch_s")),
                "total_s": statistics.median(flat("total_s")), "peak_rss_bytes": hwm,
                "peak_rss_over_file": hwm / size, "rss_growth_over_file": growth / size,
                "rss_before_bytes": max(r["rss_before"] for r in runs)}

    ours, ref = agg("ours"), agg("reference")
    summary = {
        "family": family, "file_bytes": size, "touch": args.touch, "rounds": args.rounds, "repeats": args.repeats,
        "ours": ours, "reference": ref,
        "time_ratio": ours["total_s"] / ref["total_s"],
        "load_only_ratio": ours["load_s"] / ref["load_s"],
        "our_peak_rss_over_file": ours["peak_rss_over_file"],
        "our_rss_growth_over_file": ours["rss_growth_over_file"],
        "goals": {"time_ratio": 1.1, "peak_rss_over_file": 1.15},
        "python": sys.version.split()[0],
    }
    touch_text = ("one byte of every 4 KiB page of every tensor read after each load" if args.touch == "pages"
                  else "every tensor cloned after each load")
    lines = [
        f"{family} fp16 UNet, {size / 1e9:.3f} GB, warm page cache; {args.rounds} subprocesses x {args.repeats} loads "
        f"each; touch: {touch_text}",
        f"{'':12}{'load s':>10}{'touch s':>10}{'total s':>10}{'peak RSS GB':>13}{'RSS/file':>10}{'growth/file':>13}",
    ]
    for name, r in (("load_unet", ours), ("load_file", ref)):
        lines.append(f"{name:12}{r['load_s']:10.4f}{r['touch_s']:10.4f}{r['total_s']:10.4f}"
                     f"{r['peak_rss_bytes'] / 1e9:13.3f}{r['peak_rss_over_file']:10.3f}"
                     f"{r['rss_growth_over_file']:13.3f}")
    lines.append(f"time ratio (load + touch, medians): {summary['time_ratio']:.3f} (goal <= 1.1); "
                 f"load-only ratio {summary['load_only_ratio']:.2f}")
    lines.append(f"our peak RSS / file size: {ours['peak_rss_over_file']:.3f} absolute, "
                 f"{ours['rss_growth_over_file']:.3f} counting only growth over the pre-load RSS "
                 f"({ours['rss_before_bytes'] / 1e6:.0f} MB of runtime) (goal <= 1.15)")
    sys.stdout.write("\n".join(lines) + "\n")
    return summary




if __name__ == "__main__":
    main()
