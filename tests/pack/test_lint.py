"""The whole repository passes the lint rules in ``pyproject.toml`` (ruff, pinned in requirements-dev.txt)."""

from __future__ import annotations

import subprocess

import pytest

from pack_support import REPO_ROOT


def test_repository_passes_ruff():
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is a dev dependency (requirements-dev.txt)")
    result = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", str(REPO_ROOT)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "All checks passed" in result.stdout, result.stdout[-2000:]
