"""Launching test jobs: torchrun with gloo on the CPU, and by-hand ranks (as on two machines).

Every launch has a hard wall-clock bound, and children are killed when it passes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pack_support import REPO_ROOT

LAUNCH_LIMIT_S = 240.0


@dataclass
class Finished:
    code: int
    out: str
    err: str
    seconds: float


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a test job: one thread per rank, the CPU, extra variables."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra)
    return env


def torchrun(args: list[str], nproc: int = 2, env: dict[str, str] | None = None, cwd: Path | None = None,
             limit_s: float = LAUNCH_LIMIT_S) -> Finished:
    """``python -m torch.distributed.run --standalone --nproc_per_node N ARGS`` (a free port each time)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--monitor_interval=0.5", *args]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env or job_env(), cwd=cwd or REPO_ROOT,
                          timeout=limit_s)
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def by_hand(args: list[str], world: int = 2, wait_for: tuple[int, ...] | None = None,
            env: dict[str, str] | None = None, limit_s: float = LAUNCH_LIMIT_S) -> list[Finished | None]:
    """Start ``world`` ranks with torchrun's variables set by hand and no launcher watching them.

    This is each machine's view in a two-machine job: nobody kills the survivors when a
    peer dies, so only the collective timeout (or the peer's closed connection) ends them.
    Waits for the ranks in ``wait_for`` (default: all), then kills the others (None in the result).
    """
    port = str(free_port())
    processes = []
    start = time.monotonic()
    for rank in range(world):
        rank_env = job_env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                           GROUP_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **(env or {}))
        processes.append(subprocess.Popen([sys.executable, *args], env=rank_env, cwd=REPO_ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results: list[Finished | None] = [None] * world
    try:
        for rank, process in enumerate(processes):
            if wait_for is not None and rank not in wait_for:
                continue
            left = max(1.0, limit_s - (time.monotonic() - start))
            out, err = process.communicate(timeout=left)
            results[rank] = Finished(process.returncode, out, err, time.monotonic() - start)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def write_prompt(path: Path, prompt: dict) -> Path:
    """Write an API-format prompt as JSON; returns ``path``."""
    import json

    path.write_text(json.dumps(prompt))
    return path


def runner_args(workflow: Path, root: Path, device: str = "cpu") -> list[str]:
    """``dev.py run`` arguments with input/output/models folders under ``root``."""
    return [str(REPO_ROOT / "dev.py"), "run", str(workflow), "--input", str(root / "input"), "--output",
            str(root / "output"), "--models", str(root / "models"), "--device", device]


def plain_run(args: list[str], limit_s: float = LAUNCH_LIMIT_S) -> Finished:
    """The same runner as one process, no launcher (the single-process reference)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=job_env(), cwd=REPO_ROOT,
                          timeout=limit_s)
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def segment_folder_prompt(input_folder: str, output_folder: str, **settings: object) -> dict:
    """A fresh seeded U-Net -> Segment Folder (probabilities and overlays on unless overridden)."""
    inputs = {"seg_unet": ["1", 0], "input_folder": input_folder, "output_folder": output_folder, "tile_size": 64,
              "overlap": 0.25, "flip_tta": False, "threshold": 0.5, "class_mode": "foreground",
              "write_probabilities": True, "write_overlays": True, "redo_existing": False}
    inputs.update(settings)
    return {"1": {"class_type": "UNetLabLoadSegmentationUNet",
                  "inputs": {"model_name": "(new) unet", "depth": 2, "base_channels": 4, "classes": 1, "seed": 3}},
            "2": {"class_type": "UNetLabSegmentFolder", "inputs": inputs}}


def write_pictures(folder: Path, count: int, size: tuple[int, int] = (40, 56)) -> list[Path]:
    """``count`` seeded RGB PNGs of ``size`` (height, width) px named pic_000.png ..."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    paths = []
    for index in range(count):
        pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
        path = folder / f"pic_{index:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def write_seg_checkpoint(models: Path, name: str, norm: str, seed: int = 5) -> str:
    """A small seeded U-Net with ``norm`` saved in ``models/unet_segmentation/<name>``; returns ``name``."""
    import torch

    from unet_lab.unet_core.segmentation.checkpoint import save_segmentation
    from unet_lab.unet_core.segmentation.meta import SegmentationMeta
    from unet_lab.unet_core.segmentation.registry import build_model

    folder = models / "unet_segmentation"
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("unet", in_channels=3, out_channels=1, depth=2, base_channels=8, norm=norm)
    save_segmentation(folder / name, model, SegmentationMeta.for_model(model))
    return name


def train_prompt(model_name: str, steps: int = 4, batch: int = 4, prefix: str = "dist/trained",
                 augmentation: str = "flips+rotations+brightness") -> dict:
    """Synthetic data -> Load ``model_name`` -> Train (validation split on) -> Save under ``prefix``."""
    return {
        "1": {"class_type": "UNetLabSyntheticSegmentationData",
              "inputs": {"count": 10, "size": 32, "seed": 2, "split": "train"}},
        "2": {"class_type": "UNetLabLoadSegmentationUNet",
              "inputs": {"model_name": model_name, "depth": 2, "base_channels": 8, "classes": 1, "seed": 0}},
        "3": {"class_type": "UNetLabTrainSegmentationUNet",
              "inputs": {"seg_unet": ["2", 0], "images": ["1", 0], "masks": ["1", 1], "steps": steps,
                         "batch_size": batch, "learning_rate": 0.003, "schedule": "cosine", "loss": "ce+dice",
                         "augmentation": augmentation, "border_weights": False, "validation_fraction": 0.2,
                         "seed": 9, "filename_prefix": ""}},
        "4": {"class_type": "UNetLabSaveSegmentationUNet", "inputs": {"seg_unet": ["3", 0], "filename_prefix": prefix}},
    }
