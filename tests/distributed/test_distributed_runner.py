"""The headless runner under torchrun (2 gloo ranks): every rank runs the workflow, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_distributed import job_env, runner_args, torchrun, train_prompt, write_prompt, write_seg_checkpoint
from pack_support import REPO_ROOT


def _save_workflow() -> dict:
    nodes = [
        {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": []}],
         "widgets_values": ["in.png", "image"]},
        {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
         "widgets_values": ["ranks/picture"]},
    ]
    return {"last_node_id": 2, "last_link_id": 1, "nodes": nodes, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
            "groups": [], "version": 0.4}


def test_only_rank_0_writes_and_reports(tmp_path):
    (tmp_path / "input").mkdir()
    pixels = (np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3)
    Image.fromarray(pixels).save(tmp_path / "input" / "in.png")
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(_save_workflow()))
    result = torchrun([str(REPO_ROOT / "dev.py"), "run", str(workflow), "--input", str(tmp_path / "input"),
                       "--output", str(tmp_path / "output"), "--models", str(tmp_path / "models"),
                       "--device", "cpu"], env=job_env(UNET_LAB_DIST_TIMEOUT="60"))
    assert result.code == 0, result.err[-3000:]
    written = sorted(p.relative_to(tmp_path / "output").as_posix() for p in (tmp_path / "output").rglob("*")
                     if p.is_file())
    assert written == ["ranks/picture_00001_.png"]  # a second rank saving would have made _00002_
    assert np.array_equal(np.asarray(Image.open(tmp_path / "output" / written[0])), pixels)
    assert result.out.count("node 2 (SaveImage) images:") == 1
    assert "done on 2 ranks" in result.err
    assert result.err.count("running node 2 (SaveImage)") == 1  # ranks other than 0 log warnings only


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of ``rank`` among the launcher's children (from their environment)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the rank's process through /proc")
def test_killing_a_rank_mid_training_ends_the_job_with_a_message_naming_it(tmp_path):
    write_seg_checkpoint(tmp_path / "models", "start.safetensors", norm="group")
    workflow = write_prompt(tmp_path / "wf.json", train_prompt("start.safetensors", steps=100000))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--monitor_interval=0.5", *runner_args(workflow, tmp_path)]
    lines: list[str] = []
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=job_env(UNET_LAB_DIST_TIMEOUT="30"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=lambda: lines.extend(launcher.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any("running node 3" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # into the training steps (their all-reduces)
        victim = _rank_pid(launcher.pid, 1)
        assert victim is not None, "".join(lines)[-2000:]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        code = launcher.wait(timeout=120)
        ended_after = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    reader.join(timeout=10)
    report = "".join(lines)
    assert code != 0
    assert ended_after < 30 + 15, ended_after  # within the collective timeout (plus the launcher's own checks)
    assert "rank" in report and "Signal 9 (SIGKILL)" in report, report[-3000:]
    assert not list((tmp_path / "models" / "unet_segmentation").rglob("dist/*.safetensors"))
