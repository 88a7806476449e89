"""Property-based fuzzing of the pack's readers, parsers and executor (targets in fixtures_hardening).

Contract checked for every example: the public function returns or raises a documented
UNetLabError subclass (never a bare torch/json/zip error), within a time limit, and nothing
is written outside the example's work folder (cwd is tmp_path, which must hold only the work
folder afterwards; tmp_path's siblings and the repository are listed before and after). Derandomized, no example database: CI runs the same cases every time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fixtures_hardening import CASES, TARGETS, listing
from pack_support import REPO_ROOT

# what the fuzz examples write or try to write (escaping prefixes, work-file names)
FUZZ_NAMES = ("escape", "random.", "mutated.", "edited.", "seg.", "miles.", "l.safetensors", "l.pt", "p.pt",
              "p.ckpt", "p.pth", "p.bin", "ComfyUI_", "img", "_temp_", "name with space", "exec")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name, tmp_path, monkeypatch):
    target = TARGETS[name]
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here, where we look for it
    repo_before = listing(REPO_ROOT, depth=2)
    siblings_before = listing(tmp_path.parent, depth=1)
    work = tmp_path / "work"

    @settings(max_examples=target.ci_examples, deadline=20_000, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(target.strategy())
    def run(example):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        target.check(example, work)

    before = sum(v for k, v in CASES.items() if k.split(":")[0] == name)
    run()
    ran = sum(v for k, v in CASES.items() if k.split(":")[0] == name) - before
    print(f"{name}: {ran} reader/parser calls")
    assert ran >= target.ci_examples // 2, f"{name}: only {ran} calls ran (hypothesis gave up early?)"
    # the repository is shared with people editing it: only names our examples could write count there
    new_in_repo = listing(REPO_ROOT, depth=2) - repo_before
    assert not [p for p in new_in_repo if any(m in p for m in FUZZ_NAMES)], f"written into the repo: {new_in_repo}"
    assert not list(Path("/tmp").glob("abs_escape*")), "an absolute filename_prefix escaped to /tmp"
    assert listing(tmp_path.parent, depth=1) == siblings_before, "a fuzz example wrote beside tmp_path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"], "a fuzz example wrote outside its work folder"
