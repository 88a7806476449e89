"""Train the shipped pairs workflow on real microscopy data and report the held-out Dice.

Data: the fluorescence nuclei image and its instance labels that the ``stardist`` wheel ships
(``stardist/data/images/img2d.tif`` and ``mask2d.tif``: 512 x 512, 16-bit, from the 2018 Data
Science Bowl, Caicedo et al., Nature Methods 16, 2019). Nothing is downloaded at run time: give
``--data`` (a folder holding the two files, e.g. an unpacked wheel from
``pip download --no-deps stardist``), or have ``stardist`` installed (its package is only
located, never imported).

The image is cut into its four 256 x 256 quadrants. Three go into ``input/my_pairs/`` (image
and labels as 16-bit TIFFs), the fourth becomes ``input/cells.tif``; then the shipped
``workflows/unet_lab_train_segmentation_pairs.json`` runs unchanged through the headless runner
(standalone host, CPU, ``--threads`` torch threads) in a temporary folder. The saved mask PNG
is compared with the held-out quadrant's labels (foreground = label > 0): Dice, wall time of
the whole workflow, and the saved overlay PNG (copied to ``--overlay``) are reported.

Goal: held-out Dice >= 0.93, the workflow within 2 minutes on 2 CPU cores of a quiet machine.

    python scripts/real_data_check.py --data /path/to/stardist/data/images --overlay overlay.png
    python scripts/real_data_check.py --quadrant 0 --json result.json     # another held-out quadrant
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from pack_support import load_pack  # noqa: E402  (tests/ holds the one pack loader)

WORKFLOW = REPO_ROOT / "workflows" / "unet_lab_train_segmentation_pairs.json"
QUADRANTS = ((0, 0), (0, 256), (256, 0), (256, 256))
log = logging.getLogger("real_data_check")


def find_data(given: str | None) -> Path:
    """The folder holding img2d.tif and mask2d.tif."""
    if given:
        folder = Path(given)
    else:
        spec = importlib.util.find_spec("stardist")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("no --data given and stardist is not installed: pip download --no-deps stardist, "
                             "unzip it and pass --data <unpacked>/stardist/data/images")
        folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    for name in ("img2d.tif", "mask2d.tif"):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder}: no {name}")
    return folder


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(prediction, truth).sum() / total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with stardist's img2d.tif and mask2d.tif")
    parser.add_argument("--quadrant", type=int, default=3, choices=range(4), help="the held-out quadrant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlay", help="copy the saved overlay PNG here")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    load_pack()
    from unet_lab.nodes.host import StandaloneHost, use_host
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor
    from unet_lab.unet_core.imaging import read_image

    data = find_data(args.data)
    image = read_image(data / "img2d.tif").pixels[0, :, :, 0]
    labels = read_image(data / "mask2d.tif").pixels[0, :, :, 0]
    with tempfile.TemporaryDirectory(prefix="unet_lab_real_") as work:
        root = Path(work)
        pairs = root / "input" / "my_pairs"
        (pairs / "masks").mkdir(parents=True)
        for index, (y, x) in enumerate(QUADRANTS):
            crop = (slice(y, y + 256), slice(x, x + 256))
            if index == args.quadrant:
                Image.fromarray(image[crop]).save(root / "input" / "cells.tif")
                truth = labels[crop] > 0
            else:
                Image.fromarray(image[crop]).save(pairs / f"q{index}.tif")
                Image.fromarray(labels[crop]).save(pairs / "masks" / f"q{index}.tif")
        host = StandaloneHost(models_root=root / "models", output_dir=root / "output", input_dir=root / "input",
                              device="cpu", show_progress=False, temp_dir=root / "temp")
        executor = Executor(node_classes())
        start = time.perf_counter()
        with use_host(host):
            result = executor.run(json.loads(WORKFLOW.read_text()), source=str(WORKFLOW))
        seconds = time.perf_counter() - start
        saved = {}
        for node_id, ui in result.outputs.items():
            for entry in ui.get("images", []):
                saved[result.prompt[node_id]["inputs"]["filename_prefix"]] = (
                    root / "output" / entry["subfolder"] / entry["filename"])
        mask_png = saved["unet_lab/pairs_mask"]
        prediction = np.asarray(Image.open(mask_png).convert("L")) > 127
        texts = [t for ui in result.outputs.values() for t in ui.get("text", [])]
        figures = {
            "data": "stardist 0.9.2 wheel: data/images/img2d.tif + mask2d.tif (DSB 2018 nuclei, 512 x 512, 16-bit)",
            "held_out_quadrant": args.quadrant, "threads": args.threads, "workflow_seconds": round(seconds, 1),
            "dice": round(dice(prediction, truth), 4), "objects_in_labels": int(len(np.unique(labels)) - 1),
            "load_average": os.getloadavg(), "train_report": texts,
        }
        if args.overlay:
            shutil.copyfile(saved["unet_lab/pairs_overlay"], args.overlay)
            figures["overlay"] = args.overlay
    for key, value in figures.items():
        log.info("%-18s %s", key, value)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
