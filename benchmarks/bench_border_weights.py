"""Time to build the U-Net border weight map of one mask: ours against the direct per-object method.

The mask is 512 x 512 with 80 touching nuclei-like discs (radius 9 to 15 px, placed by a seeded
generator so that neighbours touch or nearly touch, as in a fluorescence nuclei image). Our
``border_weight_map`` (per-object exact distance transforms on crops grown by the border term's
reach) is timed on one CPU thread, median of ``--repeats`` runs after one warm-up; the reference is
the whole-image exact transform per object (the same math without crops), timed once unless
``--skip-reference``. Both maps are compared: the largest absolute difference is reported.

Goal: at most 0.2 s per 512 x 512 mask with 80 objects on one CPU thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_border_weights.py
    python benchmarks/bench_border_weights.py --size 1024 --objects 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import numpy as np
import torch

from _pack import load_core  # benchmarks/ is on sys.path when a script runs

log = logging.getLogger("bench_border_weights")


def touching_discs(size: int, objects: int, seed: int = 0) -> np.ndarray:
    """A boolean mask of ``objects`` discs that touch or nearly touch their neighbours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=bool)
    centres: list[tuple[float, float, float]] = []
    tries = 0
    while len(centres) < objects and tries < 100_000:
        tries += 1
        r = rng.uniform(9, 15)
        cy, cx = rng.uniform(r, size - r, 2)
        if any((cy - y) ** 2 + (cx - x) ** 2 < (r + q - 1) ** 2 for y, x, q in centres):
            continue  # would overlap more than one pixel
        centres.append((cy, cx, r))
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def reference_map(mask: np.ndarray, w0: float, sigma: float, core) -> np.ndarray:
    """The same map with whole-image distance transforms per object (no reach cut-off)."""
    bw = core.border_weights
    labels = mask.astype(np.int64)
    weights = bw.class_balance_weights(labels)
    objects, count = bw.connected_components(mask)
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    for k in range(1, count + 1):
        d = bw.distance_transform(objects == k)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    weights += np.where(labels == 0, w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2)), 0.0)
    return weights.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    pack = load_core()
    import importlib

    core = type("core", (), {})()
    core.border_weights = importlib.import_module(f"{pack.__name__}.unet_core.segmentation.training.border_weights")
    mask = touching_discs(args.size, args.objects)
    objects = core.border_weights.connected_components(mask)[1]
    core.border_weights.border_weight_map(mask)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = core.border_weights.border_weight_map(mask)
        times.append(time.perf_counter() - start)
    result = {"size": args.size, "objects_placed": args.objects, "connected_objects": objects,
              "threads": args.threads, "ours_s_median": statistics.median(times), "ours_s_min": min(times),
              "goal_s": 0.2}
    if not args.skip_reference:
        start = time.perf_counter()
        reference = reference_map(mask, 10.0, 5.0, core)
        result["reference_s"] = time.perf_counter() - start
        result["max_abs_diff"] = float(np.abs(reference - ours).max())
    for key, value in result.items():
        log.info("%-18s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
