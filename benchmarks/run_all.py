"""Every benchmark in one command, and one table of each figure against its target (issue #8).

Runs the benchmark scripts one after another (each in its own process, so one's memory and
compile caches do not bias the next), writes their JSON under ``--out``, then reads them back
and prints the table (also written as ``summary.json`` and ``summary.md``). ``--only`` runs a
subset; ``--summarize DIR [DIR ...]`` only builds the table from earlier outputs (later
directories win), e.g. when the GPU machine's 10-minute command limit makes one run two
commands on the same machine.

    python benchmarks/run_all.py --out bench_out/all                       # everything
    python benchmarks/run_all.py --only unet,skip_gate --out bench_out/a
    python benchmarks/run_all.py --summarize bench_out/a bench_out/b
    python benchmarks/run_all.py --quick --out bench_out/quick             # CPU smoke run

On CPU the targets do not apply (they are H100 targets); the table still shows the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
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
}


def run(names: list[str], out: Path, quick: bool) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    status = {}
    for name in names:
        script, gpu_args, quick_args = BENCHMARKS[name]
        target = out / f"{name}.json"
        args = [a.replace("{json}", str(target)) for a in (quick_args if quick else gpu_args)]
        log.info("== %s: %s %s", name, script, " ".join(args))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        status[name] = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - started, 1)}
        log.info("== %s finished (exit %d) in %.0f s", name, proc.returncode, status[name]["seconds"])
    (out / "run_status.json").write_text(json.dumps(status, indent=2))
    return status


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
        _row(rows, f"skip gate {r['family']} all levels: step overhead (paired median)",
             v.get("overhead_paired_pct", v["overhead_pct"]), "<= 3 %", v.get("overhead_paired_pct", 99) <= 3.0, "%")
        _row(rows, f"skip gate {r['family']} all levels: GPU kernel time overhead", v.get("gpu_overhead_pct"),
             "(<= 3 %)", None if v.get("gpu_overhead_pct") is None else v["gpu_overhead_pct"] <= 3.0, "%")
        plain = r["variants"].get("gate all levels, UNet concatenates")
        if plain is not None:  # the gate as in ComfyUI's UNet (no concatenation taken from it)
            _row(rows, f"skip gate {r['family']} all levels, UNet concatenates: step overhead (paired median)",
                 plain["overhead_paired_pct"], "(<= 3 %)", plain["overhead_paired_pct"] <= 3.0, "%")
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
    parser.add_argument("--out", type=Path, default=Path("bench_out/all"))
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run of every script")
    parser.add_argument("--summarize", type=Path, nargs="+", help="only build the table from these directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    dirs = args.summarize or [args.out]
    failed = []
    if not args.summarize:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        failed = [n for n, s in run(names, args.out, args.quick).items() if s["returncode"]]
    rows = table(_load(dirs))
    text = render(rows)
    sys.stdout.write(text + "\n")
    out = dirs[-1]
    (out / "summary.json").write_text(json.dumps({"sources": [str(d) for d in dirs], "rows": rows}, indent=2))
    (out / "summary.md").write_text(text + "\n")
    if failed:
        log.error("benchmarks that failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
