"""Train Segmentation U-Net under torchrun (2 gloo ranks) against one process.

With the same global batch and seed, the two ranks draw the same samples as one process
(per-sample generators) and the gradient of the global batch's loss; only the order of
floating-point sums differs (each rank sums its share of the batch, then the shares are
added). One step's gradients therefore agree to 1e-6 of the largest gradient (tested on the
training helper directly). AdamW divides each gradient element by its own running RMS, so
that absolute noise (~5e-8) becomes a relative one in elements whose gradient is small
(~1e-5: up to 1 %); the weights after ``steps`` steps then differ by at most
``steps x lr x 1 %`` (1.2e-4 for the 4 steps at lr 0.003 here; measured 3.7e-5), far below
the training's own movement (7.5e-3). The model uses GroupNorm: with BatchNorm on the CPU each
rank normalises by its own share's statistics (torch's SyncBatchNorm has no CPU kernel; on
CUDA the helper converts to it), which changes the training, not only its order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from fixtures_distributed import (
    job_env,
    plain_run,
    runner_args,
    torchrun,
    train_prompt,
    write_prompt,
    write_seg_checkpoint,
)

pytestmark = pytest.mark.slow
WORKER = str(Path(__file__).with_name("rank_worker.py"))


def _saved(root) -> list:
    return sorted((root / "models" / "unet_segmentation" / "dist").glob("*.safetensors"))


def test_two_ranks_train_the_same_weights_as_one_process(tmp_path):
    roots = {}
    for name in ("one", "two"):
        root = tmp_path / name
        write_seg_checkpoint(root / "models", "start.safetensors", norm="group")
        workflow = write_prompt(root / "wf.json", train_prompt("start.safetensors"))
        roots[name] = root
        if name == "one":
            result = plain_run(runner_args(workflow, root))
        else:
            result = torchrun(runner_args(workflow, root), env=job_env(UNET_LAB_DIST_TIMEOUT="120"))
        assert result.code == 0, result.err[-3000:]
    one, two = (_saved(roots[name]) for name in ("one", "two"))
    assert len(one) == 1 and len(two) == 1  # saved once, by rank 0
    first, second = load_file(one[0]), load_file(two[0])
    assert first.keys() == second.keys()
    start = load_file(roots["one"] / "models" / "unet_segmentation" / "start.safetensors")
    moved = max(float((first[k].float() - start[k].float()).abs().max()) for k in first)
    assert moved > 1e-3  # it trained
    worst = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    assert worst <= 4 * 0.003 * 0.01, worst  # steps x lr x 1 % (see the module docstring)


def test_one_step_gradient_of_two_ranks_is_the_whole_batch_gradient():
    result = torchrun([WORKER, "gradients"], env=job_env(UNET_LAB_DIST_TIMEOUT="60"))
    assert result.code == 0, result.err[-3000:]
    worst, top = (float(v) for v in result.out.split("gradients ")[1].split()[:2])
    assert top > 1e-3
    assert worst <= 1e-6 * top, (worst, top)


def test_batch_smaller_than_the_ranks_is_refused_with_the_node_named(tmp_path):
    write_seg_checkpoint(tmp_path / "models", "start.safetensors", norm="group")
    workflow = write_prompt(tmp_path / "wf.json", train_prompt("start.safetensors", batch=1))
    result = torchrun(runner_args(workflow, tmp_path), env=job_env(UNET_LAB_DIST_TIMEOUT="60"))
    assert result.code != 0
    assert "node 3 (UNetLabTrainSegmentationUNet) failed: training: batch size 1 is smaller than the 2" in result.err
    assert not _saved(tmp_path)
