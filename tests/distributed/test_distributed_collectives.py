"""The process-group helper on 2 gloo ranks: a dead or stalled rank ends its peer with a clear message.

The ranks are started with torchrun's variables set by hand (no launcher watching them, as
each machine of a two-machine job sees it) and by torchrun itself; rank_worker.py is the job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_distributed import by_hand, job_env, torchrun

WORKER = str(Path(__file__).with_name("rank_worker.py"))
TIMEOUT_S = 8.0


def test_two_ranks_all_reduce_and_leave_cleanly():
    results = by_hand([WORKER, "ok"], env={"UNET_LAB_DIST_TIMEOUT": str(TIMEOUT_S)})
    for result in results:
        assert result is not None and result.code == 0, result


def test_killed_peer_ends_the_survivor_with_a_message_naming_it_and_the_wait():
    results = by_hand([WORKER, "kill"], env={"UNET_LAB_DIST_TIMEOUT": str(TIMEOUT_S)})
    survivor, killed = results
    assert killed is not None and killed.code == -9
    assert survivor is not None and survivor.code == 3, survivor
    assert "rank 0/2 (node 0, host " in survivor.err
    assert "round 3 failed after waiting up to 8 s; another rank probably failed or was killed" in survivor.err


def test_stalled_peer_ends_the_survivor_at_the_collective_timeout():
    results = by_hand([WORKER, "stall"], wait_for=(0,), env={"UNET_LAB_DIST_TIMEOUT": str(TIMEOUT_S)})
    survivor = results[0]
    assert survivor is not None and survivor.code == 3, survivor
    assert "rank 0/2" in survivor.err and "round 3 failed after waiting up to 8 s" in survivor.err
    # it ended on its own at the collective timeout (the message above), not forever: a hang would
    # run into by_hand's launch limit, which raises instead of returning a result


@pytest.mark.slow
def test_torchrun_ends_the_job_when_one_rank_is_killed():
    result = torchrun([WORKER, "kill"], env=job_env(UNET_LAB_DIST_TIMEOUT=str(TIMEOUT_S)))
    assert result.code != 0
    report = result.out + result.err
    assert "rank" in report and "1" in report and "SIGKILL" in report, report[-2000:]
