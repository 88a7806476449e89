"""The benchmark scripts' CPU smoke runs complete and write their JSON (no figure is checked:
timings are the GPU machine's business; this keeps the scripts runnable as the code moves)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pack_support import REPO_ROOT


def test_pixel_diffusion_benchmark_smoke_run(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "pixel.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_pixel_diffusion.py"), "--device",
                             "cpu", "--tiny", "--rounds", "1", "--json", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert [case["case"] for case in steps] == ["cifar10-32", "celebahq-256", "guided-256"]
    assert {"ours", "diffusers"} <= set(steps[0]["variants"]) and steps[0]["max_abs_diff_vs_diffusers"] < 1e-4
