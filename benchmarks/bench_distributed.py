"""The headless runner under torchrun: its overhead on one GPU, and scaling over several.

Two workloads, each one headless workflow (API format, written by this script):

- ``train``: Synthetic Segmentation Data -> Load Segmentation U-Net ``(new) unet`` -> Train
  Segmentation U-Net (no validation split) -> Save; figure: training images/s
  (steps x global batch / the Train node's time);
- ``folder``: Segment Folder over a folder of synthetic images written once by this script
  (``redo`` on, so every image is segmented each time); figure: images/s over the node's time.

Each run is a separate process started by this script (``bench_distributed.py run-workflow ...``:
the headless runner of ``dev.py run`` with the current interpreter). Under ``--mode overhead`` (default)
each workload runs as the plain runner (``dev.py run``) and under ``torchrun --standalone
--nproc_per_node 1`` alternately, ``--rounds`` times each, and the figure is the ratio of the
medians of the node times (the goal: torchrun costs at most 3 %). The wall time of each whole
process (interpreter and torch start-up, the launcher) is reported beside it. Under
``--mode scaling --gpus N`` each workload runs under torchrun on 1 GPU and on N GPUs with the
same per-GPU batch (training: global batch N x per-GPU batch) and the same images per GPU
(folder: N x ``--images``... capped by the folder size); the figure is the scaling efficiency
``images/s on N / (N x images/s on 1)``.

Node times come from the workflow's own reports: the Train node's report (seconds of the
training loop) and Segment Folder's summary (seconds of the folder run), which rank 0 prints.

    python benchmarks/bench_distributed.py --device cuda --json distributed.json           # overhead, < 5 min on an H100
    python benchmarks/bench_distributed.py --device cuda --mode scaling --gpus 2 --json scaling2.json
    python benchmarks/bench_distributed.py --quick                                          # CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
log = logging.getLogger("bench_distributed")

TRAIN_SECONDS = re.compile(r"trained (\d+) steps on \d+ image\(s\) in ([0-9.]+) s")
FOLDER_SECONDS = re.compile(r"(\d+) segmented, .*?; ([0-9.]+) s on (\d+) rank")


def train_prompt(steps: int, batch: int, size: int, count: int, base_channels: int) -> dict[str, Any]:
    """Synthetic data -> new U-Net -> Train (no validation) -> Save (the output node)."""
    return {
        "1": {"class_type": "UNetLabSyntheticSegmentationData",
              "inputs": {"count": count, "size": size, "seed": 0, "split": "train"}},
        "2": {"class_type": "UNetLabLoadSegmentationUNet",
              "inputs": {"model_name": "(new) unet", "depth": 4, "base_channels": base_channels, "classes": 1,
                         "seed": 0}},
        "3": {"class_type": "UNetLabTrainSegmentationUNet",
              "inputs": {"seg_unet": ["2", 0], "images": ["1", 0], "masks": ["1", 1], "steps": steps,
                         "batch_size": batch, "learning_rate": 0.001, "schedule": "constant", "loss": "ce+dice",
                         "augmentation": "none", "border_weights": False, "validation_fraction": 0.0, "seed": 0,
                         "filename_prefix": ""}},
        "4": {"class_type": "UNetLabSaveSegmentationUNet",
              "inputs": {"seg_unet": ["3", 0], "filename_prefix": "bench/trained"}},
    }


def folder_prompt(input_folder: str, output_folder: str, base_channels: int) -> dict[str, Any]:
    """New U-Net -> Segment Folder over ``input_folder`` (redo on: every image every run)."""
    return {
        "1": {"class_type": "UNetLabLoadSegmentationUNet",
              "inputs": {"model_name": "(new) unet", "depth": 4, "base_channels": base_channels, "classes": 1,
                         "seed": 0}},
        "2": {"class_type": "UNetLabSegmentFolder",
              "inputs": {"seg_unet": ["1", 0], "input_folder": input_folder, "output_folder": output_folder,
                         "tile_size": 1024, "overlap": 0.0, "flip_tta": False, "threshold": -1.0,
                         "class_mode": "foreground", "write_probabilities": False, "write_overlays": False,
                         "redo_existing": True}},
    }


def write_images(folder: Path, count: int, size: int) -> None:
    """``count`` synthetic PNGs of ``size`` px (once; kept between runs)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    for index in range(count):
        path = folder / f"img_{index:05d}.png"
        if not path.exists():
            Image.fromarray(np.roll(base, index * 7, axis=1)).save(path, compress_level=1)


def run_workflow(argv: list[str]) -> int:
    """The headless runner (what ``dev.py run`` runs) with this interpreter, no virtualenv set-up."""
    sys.path.insert(0, str(HERE))
    from _pack import load_pack

    load_pack()
    from unet_lab.nodes.host import headless

    return headless.main(argv)


def run_once(prompt_path: Path, work: Path, device: str, nproc: int | None) -> tuple[float, str]:
    """Run one workflow; (wall seconds of the whole process, its stdout + stderr)."""
    runner = [str(Path(__file__).resolve()), "run-workflow", str(prompt_path), "--input", str(work / "input"),
              "--output", str(work / "output"), "--models", str(work / "models"), "--device", device]
    if nproc is None:
        command = [sys.executable, *runner]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   *runner]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=dict(os.environ))
    wall = time.perf_counter() - start
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{text[-3000:]}")
    return wall, text


def node_rate(kind: str, text: str, batch: int) -> tuple[float, float]:
    """(node seconds, images/s) parsed from a run's log."""
    if kind == "train":
        found = TRAIN_SECONDS.findall(text)
        if not found:
            raise RuntimeError(f"no training report in the log:\n{text[-2000:]}")
        steps, seconds = int(found[-1][0]), float(found[-1][1])
        return seconds, steps * batch / seconds
    found = FOLDER_SECONDS.findall(text)
    if not found:
        raise RuntimeError(f"no Segment Folder summary in the log:\n{text[-2000:]}")
    images, seconds = int(found[-1][0]), float(found[-1][1])
    return seconds, images / seconds


def folder_split(summary: Path) -> tuple[float, float]:
    """(seconds of the first image, seconds of all the others) from Segment Folder's summary CSV:
    start-up costs (first kernels, allocator growth) land in the first image."""
    with summary.open(newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["status"] == "segmented"), key=lambda r: r["image"])
    seconds = [float(r["seconds"]) for r in rows]
    return (seconds[0], sum(seconds[1:])) if seconds else (0.0, 0.0)


def _variants(args: argparse.Namespace) -> list[tuple[str, int | None, int]]:
    """(name, nproc or None for the plain runner, global batch multiplier)."""
    if args.mode == "overhead":
        return [("plain", None, 1), ("torchrun_1", 1, 1)]
    return [("torchrun_1", 1, 1), (f"torchrun_{args.gpus}", args.gpus, args.gpus)]


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in args.workloads:
        rows: dict[str, dict[str, list[float]]] = {}
        for _round in range(args.rounds):
            for name, nproc, multiplier in _variants(args):
                batch = args.batch * multiplier
                if kind == "train":
                    prompt = train_prompt(args.steps, batch, args.size, max(args.count, batch), args.base_channels)
                else:
                    images = args.images * multiplier
                    write_images(work / "input" / f"images_{images}", images, args.folder_size)
                    prompt = folder_prompt(f"images_{images}", f"masks_{name}", args.base_channels)
                path = work / f"{kind}_{name}.json"
                path.write_text(json.dumps(prompt))
                wall, text = run_once(path, work, args.device, nproc)
                seconds, rate = node_rate(kind, text, batch)
                row = rows.setdefault(name, {"wall_s": [], "node_s": [], "images_per_s": []})
                row["wall_s"].append(wall)
                row["node_s"].append(seconds)
                row["images_per_s"].append(rate)
                detail = ""
                if kind == "folder":
                    first, rest = folder_split(work / "output" / f"masks_{name}" / "segment_folder_summary.csv")
                    row.setdefault("first_image_s", []).append(first)
                    row.setdefault("other_images_s", []).append(rest)
                    detail = f" (first image {first:.2f} s, the others {rest:.2f} s)"
                log.info("%s %-12s node %.2f s, %.1f images/s, process %.1f s%s", kind, name, seconds, rate, wall,
                         detail)
        summary = {name: {key: statistics.median(values) for key, values in row.items()} | {"runs": row}
                   for name, row in rows.items()}
        (base, _, _), (other, nproc, _) = _variants(args)
        if args.mode == "overhead":
            figure = {"overhead_pct": 100.0 * (summary[other]["node_s"] / summary[base]["node_s"] - 1.0),
                      "process_overhead_s": summary[other]["wall_s"] - summary[base]["wall_s"], "goal_pct": 3.0}
            if kind == "folder":
                figure["overhead_after_first_image_pct"] = 100.0 * (
                    summary[other]["other_images_s"] / summary[base]["other_images_s"] - 1.0)
        else:
            figure = {"scaling_efficiency": summary[other]["images_per_s"] / (nproc * summary[base]["images_per_s"]),
                      "gpus": nproc, "goal": 0.9 if nproc == 2 else 0.85}
        results[kind] = {"variants": summary, **figure}
    return results


def _device_name(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run-workflow"]:  # one run of the workflow, in a process this script started
        return run_workflow(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--mode", choices=("overhead", "scaling"), default="overhead")
    parser.add_argument("--gpus", type=int, default=2, help="scaling mode: GPUs to compare against one")
    parser.add_argument("--workloads", nargs="+", choices=("train", "folder"), default=["train", "folder"])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant (alternating)")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch", type=int, default=16, help="training batch (per GPU in scaling mode)")
    parser.add_argument("--size", type=int, default=256, help="training image side, px")
    parser.add_argument("--count", type=int, default=64, help="training images")
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--images", type=int, default=150, help="folder images (per GPU in scaling mode)")
    parser.add_argument("--folder-size", type=int, default=1024, help="folder image side, px")
    parser.add_argument("--work", help="work folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.device, args.rounds, args.steps, args.batch, args.size = "cpu", 1, 3, 2, 64
        args.count, args.base_channels, args.images, args.folder_size = 4, 8, 3, 96
        args.gpus = min(args.gpus, 2)
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        results = measure(args, work)
    record = {"benchmark": "distributed", "mode": args.mode, "device": _device_name(args.device),
              "settings": {k: v for k, v in vars(args).items() if k not in ("json", "work")}, "results": results}
    for kind, figures in results.items():
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items() if k != "variants"}
        log.info("%s: %s", kind, shown)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
