"""Every benchmark in one command, and one table of each figure against its target.

Runs the benchmark scripts one after another (each in its own process, so one's memory and
compile caches do not bias the next), writes each one's JSON into the output folder (replacing
that benchmark's earlier file there), then reads the folder back and writes the table as
``summary.json`` and ``summary.md``. The output folder is by default
``benchmarks/results/<device kind>/`` (``h100``, ``h200``, ``cpu``, ...: :func:`device_kind`), so
the repository keeps the latest run per kind and git keeps the history. ``--only`` runs a subset
(a run split over several commands fills the same folder); ``--summarize DIR [DIR ...]`` only
builds the table from earlier outputs (later directories win).

    python benchmarks/run_all.py                                           # everything -> results/<kind>/
    python benchmarks/run_all.py --only unet,skip_gate
    python benchmarks/run_all.py --summarize benchmarks/results/h100
    python benchmarks/run_all.py --quick                                   # CPU smoke run -> bench_out/quick

On CPU the targets do not apply (they are GPU targets); the table still shows the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
log = logging.getLogger("run_all")

# name -> (script, arguments on the GPU, arguments for --quick); "{json}" is the output file
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "load": ("bench_load.py", ["--json", "{json}"], ["--families", "sd1", "--rounds", "1", "--repeats", "1",
                                                    "--json", "{json}"]),
    "unet": ("bench_unet.py", ["--device", "cuda", "--compile", "blocks", "--json", "{json}"],
             ["--tiny", "--json", "{json}"]),
    "lora": ("bench_lora.py", ["--device", "cuda", "--bake", "none", "--json", "{json}"],
             ["--quick", "--bake", "none", "--json", "{json}"]),
    "skip_gate": ("bench_skip_gate.py", ["--device", "cuda", "--json", "{json}"], ["--quick", "--json", "{json}"]),
    "segmentation": ("bench_segmentation.py", ["--device", "cuda", "--agree", "--only", "unet", "attention_unet",
                                               "unet_plus_plus", "smp_unet", "--json", "{json}"],
                     ["--quick", "--json", "{json}"]),
    "tiled": ("bench_tiled.py", ["--device", "cuda", "--compile", "--json", "{json}"], ["--quick", "--json", "{json}"]),
    "pixel_diffusion": ("bench_pixel_diffusion.py", ["--ddim", "--json", "{json}"],
                        ["--device", "cpu", "--tiny", "--json", "{json}"]),
}


def device_kind(name: str) -> str:
    """The folder name for a device: ``"cpu"``, or the GPU's model from its name, e.g.
    ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``, ``"NVIDIA A100-SXM4-80GB"`` -> ``"a100"``,
    ``"NVIDIA GeForce RTX 4090"`` -> ``"rtx-4090"``."""
    words = [w for w in re.split(r"[\s_-]+", name.lower()) if w and w not in ("nvidia", "geforce", "tesla")]
    for i, word in enumerate(words):
        if any(ch.isdigit() for ch in word):
            model = f"{words[i - 1]}-{word}" if word.isdigit() and i > 0 else word
            return re.sub(r"[^a-z0-9-]", "", model)
    return re.sub(r"[^a-z0-9]+", "-", "-".join(words)).strip("-") or "unknown"


def _default_out(quick: bool) -> Path:
    """``bench_out/quick`` for a smoke run; else ``benchmarks/results/<kind>`` of the first CUDA device or the CPU."""
    if quick:
        return Path("bench_out/quick")
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return HERE / "results" / device_kind(name)


def run(names: list[str], out: Path, quick: bool) -> dict[str, dict]:
    """Run the named benchmarks into ``out``; returns (and merges into ``out/run_status.json``) each
    one's exit status and seconds."""
    out.mkdir(parents=True, exist_ok=True)
    status_file = out / "run_status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    for name in names:
        script, gpu_args, quick_args = BENCHMARKS[name]
        target = out / f"{name}.json"
        target.unlink(missing_ok=True)  # a benchmark that fails leaves no stale figures behind
        args = [a.replace("{json}", str(target)) for a in (quick_args if quick else gpu_args)]
        log.info("== %s: %s %s", name, script, " ".join(args))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        status[name] = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - started, 1)}
        log.info("== %s finished (exit %d) in %.0f s", name, proc.returncode, status[name]["seconds"])
    status_file.write_text(json.dumps(status, indent=2) + "\n")
    return {name: status[name] for name in names}


def _load(dirs: list[Path]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for d in dirs:
        for name in BENCHMARKS:
            path = d / f"{name}.json"
            if path.exists():
                found[name] = json.loads(path.read_text())
    return found


def _row(rows: list[dict], figure: str, value: float | None, target: str, passed: bool | None, unit: str = "") -> None:
    rows.append({"figure": figure, "value": None if value is None else round(float(value), 4) + 0.0, "unit": unit,
                 "target": target, "pass": passed})


def table(results: dict[str, Any]) -> list[dict]:
    """One row per figure: what was measured, its target and whether it holds."""
    rows: list[dict] = []
    for family, r in (results.get("load", {}).get("families") or {}).items():
        _row(rows, f"load {family} fp16: time ours / safetensors.load_file", r["time_ratio"], "<= 1.1",
             r["time_ratio"] <= 1.1, "x")
        growth = r["our_rss_growth_over_file"]
        _row(rows, f"load {family} fp16: peak RSS growth while loading / file size", growth, "<= 1.15",
             growth <= 1.15, "x")
        _row(rows, f"load {family} fp16: peak RSS incl. the Python+torch runtime / file size (ours; "
                   f"load_file: {r['reference']['peak_rss_over_file']:.3f})", r["our_peak_rss_over_file"],
             "(<= 1.15)", None, "x")
    for r in results.get("unet", {}).get("results", []):
        eager = r["ratio_ours_over_diffusers"]
        _row(rows, f"diffusion UNet {r['case']} eager: ours / diffusers", eager, "<= 1.0", eager <= 1.0, "x")
        compiled = r.get("ratio_compiled_ours_over_diffusers")
        if compiled is not None:
            scope = r.get("compile", {}).get("scope", "?")
            _row(rows, f"diffusion UNet {r['case']} compiled ({scope}): ours / diffusers", compiled, "<= 1.05",
                 compiled <= 1.05, "x")
    step = results.get("lora", {}).get("step")
    if step:
        # no per-step cost: the patched model against a plain model holding the same (baked) weights;
        # against the unpatched model (other weights) as a figure beside it
        same = step.get("paired_patched_over_baked", step["patched_ms"] / step["baked_ms"])
        _row(rows, "block-weighted LoRA: patched step / step of the same weights baked (SDXL)", same,
             "<= 1.02 (no cost)", same <= 1.02, "x")
        other = step.get("paired_patched_over_unpatched", step["ratio"])
        _row(rows, "block-weighted LoRA: patched step / unpatched step (SDXL, other weights)", other, "(<= 1.02)",
             None, "x")
    for r in results.get("skip_gate", {}).get("results", []):
        v = r["variants"]["gate all levels"]
        # figures only: the per-step target belongs to whole-step capture, which removes every patch's host cost
        _row(rows, f"skip gate {r['family']} all levels: step overhead (paired median)",
             v.get("overhead_paired_pct", v["overhead_pct"]), "-", None, "%")
        _row(rows, f"skip gate {r['family']} all levels: GPU kernel time overhead", v.get("gpu_overhead_pct"),
             "-", None, "%")
        plain = r["variants"].get("gate all levels, UNet concatenates")
        if plain is not None:  # the gate as in ComfyUI's UNet (no concatenation taken from it)
            _row(rows, f"skip gate {r['family']} all levels, UNet concatenates: step overhead (paired median)",
                 plain["overhead_paired_pct"], "-", None, "%")
    for arch, r in (results.get("segmentation", {}).get("architectures") or {}).items():
        target = r.get("target")
        if not target or not target.get("available"):
            continue
        for variant in ("ours_fast", "ours_compiled"):
            ratio = target["ratios"].get(variant)
            if ratio is not None:
                _row(rows, f"{arch} {variant.replace('ours_', '')} / {target['reference']} (fwd img/s)", ratio,
                     f">= {target['target']}", target["pass"].get(variant), "x")
    tiled = (results.get("tiled", {}).get("runs") or {}).get("fast")
    if tiled:
        image = results["tiled"].get("image") or [0, 0, 0]
        label = f"{image[2]}x{image[1]} tiled segmentation (fast)"
        _row(rows, f"{label}: time", tiled["time_s"], "<= 2 s (8192 px)", tiled["time_s"] <= 2.0, "s")
        _row(rows, f"{label}: peak GPU memory", tiled["peak_gpu_gb"], "<= 8 GB (8192 px)",
             tiled["peak_gpu_gb"] <= 8.0, "GB")
    pixel = results.get("pixel_diffusion", {})
    for r in pixel.get("steps", []) + pixel.get("ddim", []):
        ratio = r["variants"].get("ours", {}).get("ratio_to_diffusers")
        if ratio is None:
            continue
        what = "50-step DDIM sample" if r["case"].startswith("ddim") else "step"
        case = r["case"].split("-", 1)[1] if r["case"].startswith("ddim") else r["case"]
        step = what == "step"
        _row(rows, f"pixel diffusion {case} b{r['batch']} {what}: ours / diffusers UNet2DModel", ratio,
             "<= 0.9" if step else "(<= 0.9)", ratio <= 0.9 if step else None, "x")
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:g} {r['unit']}".strip()
        met = {True: "yes", False: "no", None: "-"}[r["pass"]]
        lines.append(f"| {r['figure']} | {value} | {r['target']} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/results/<device kind>, or bench_out/quick with --quick)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run of every script")
    parser.add_argument("--summarize", type=Path, nargs="+", help="only build the table from these directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    dirs = args.summarize or [args.out or _default_out(args.quick)]
    failed = []
    if not args.summarize:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        failed = [n for n, s in run(names, dirs[0], args.quick).items() if s["returncode"]]
    rows = table(_load(dirs))
    text = render(rows)
    sys.stdout.write(text + "\n")
    out = dirs[-1]
    (out / "summary.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    (out / "summary.md").write_text(text + "\n")
    if failed:
        log.error("benchmarks that failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
