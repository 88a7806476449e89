"""Segment Folder through the headless runner: 2 gloo ranks write the same files, bitwise, as one process."""

from __future__ import annotations

import csv

import pytest

from fixtures_distributed import (
    job_env,
    plain_run,
    runner_args,
    segment_folder_prompt,
    torchrun,
    write_pictures,
    write_prompt,
)

pytestmark = pytest.mark.slow
SUMMARY = "segment_folder_summary.csv"


def test_two_ranks_write_the_masks_of_one_process_bitwise(tmp_path):
    outputs = {}
    for name in ("one", "two"):
        root = tmp_path / name
        write_pictures(root / "input" / "slides", 5)
        workflow = write_prompt(root / "wf.json", segment_folder_prompt("slides", "masks"))
        if name == "one":
            result = plain_run(runner_args(workflow, root))
        else:
            result = torchrun(runner_args(workflow, root), env=job_env(UNET_LAB_DIST_TIMEOUT="60"))
        assert result.code == 0, result.err[-3000:]
        assert "5 image(s): 5 segmented, 0 skipped" in result.out
        folder = root / "output" / "masks"
        outputs[name] = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != SUMMARY}
        with open(folder / SUMMARY, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["image"] for row in rows] == [f"pic_{i:03d}.png" for i in range(5)]
        assert {row["rank"] for row in rows} == ({"0"} if name == "one" else {"0", "1"})
    assert len(outputs["one"]) == 15  # mask, probability and overlay per image
    assert outputs["two"] == outputs["one"]
    assert not [p for p in (tmp_path / "two" / "output").rglob("*") if p.name.endswith(".partial")]
