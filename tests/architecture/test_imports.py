"""The pack's structure: import cycles, the dependency rule, the host seam and file length.

The rules and how imports are resolved are in ``tests/import_rules.py`` (and ``docs/architecture.md``);
``python3 tests/import_rules.py`` prints the same report outside pytest.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import import_rules
from pack_support import REPO_ROOT


@pytest.fixture(scope="module")
def pack_modules():
    return import_rules.scan(REPO_ROOT)


def _report(problems: list[str]) -> str:
    return "\n" + "\n".join(problems)


def test_scan_sees_the_whole_pack(pack_modules):
    on_disk = {import_rules.module_name(REPO_ROOT, p) for package in import_rules.PACKAGES
               for p in (REPO_ROOT / package).rglob("*.py")}
    assert set(pack_modules) == on_disk
    # a known module-level edge and a known lazy one, resolved through relative imports
    unet_edges = {(e.target, e.lazy) for e in pack_modules["unet_core.diffusion.unet"].edges}
    assert ("unet_core.unet_config", False) in unet_edges
    assert ("unet_core.diffusion.ops", False) in unet_edges  # ``from . import ops``: the submodule
    host_edges = {(e.target, e.lazy) for e in pack_modules["nodes.host"].edges}
    assert ("nodes.host.comfy", True) in host_edges


@pytest.mark.parametrize("rule", list(import_rules.RULES))
def test_pack_follows_rule(pack_modules, rule):
    problems = import_rules.RULES[rule](pack_modules)
    assert not problems, _report(problems)


def _write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


SOUND_PACK = {
    "unet_core/__init__.py": '"""Core."""\n',
    "unet_core/errors.py": '"""Errors."""\n',
    "unet_core/alpha/__init__.py": "",
    "unet_core/alpha/a.py": "from ..errors import *\nfrom . import b\n",
    "unet_core/alpha/b.py": "import torch\n",
    "unet_core/beta/__init__.py": "",
    "unet_core/beta/c.py": "from ..alpha.a import thing\n",
    "nodes/__init__.py": "from .n import NODE\n",
    "nodes/n.py": "from ..unet_core.beta import c\nfrom .host import get_host\n",
    "nodes/host/__init__.py": "from .base import Host\n\ndef get_host():\n    from .comfy import ComfyHost\n",
    "nodes/host/base.py": "",
    "nodes/host/comfy.py": "from .base import Host\n\ndef folders():\n    import folder_paths\n",
}


def test_checker_passes_a_sound_synthetic_pack(tmp_path):
    _write_package(tmp_path, SOUND_PACK)
    assert import_rules.check(tmp_path) == {rule: [] for rule in import_rules.RULES}


def test_checker_fails_a_broken_synthetic_pack(tmp_path):
    broken = dict(SOUND_PACK)
    # (a) a file cycle made of one module-level and one lazy import
    broken["unet_core/alpha/b.py"] = "def late():\n    from .a import x\n"
    # (b) a sub-package cycle that is no file cycle: alpha.d -> beta.c -> alpha.a
    broken["unet_core/alpha/d.py"] = "from ..beta import c\n"
    # (c) the core reaching into nodes and into ComfyUI
    broken["unet_core/errors.py"] = "def f():\n    from ..nodes import n\n    import comfy.utils\n"
    # (d) ComfyUI outside nodes/host, and at module level inside it
    broken["nodes/n.py"] = "import folder_paths\n"
    broken["nodes/host/base.py"] = "import comfy.model_management as mm\n"
    # (e) a long file without a reason, and one with a reason
    broken["nodes/long.py"] = '"""Long."""\n' + "x = 1\n" * 401
    broken["nodes/long_ok.py"] = '"""Long.\n\nLength: one table.\n"""\n' + "x = 1\n" * 401
    _write_package(tmp_path, broken)

    found = import_rules.check(tmp_path)
    assert found["file cycles"] == [
        "file cycle among unet_core.alpha.a, unet_core.alpha.b: "
        "unet_core.alpha.a -[line 2]-> unet_core.alpha.b -[line 2, lazy]-> unet_core.alpha.a"]
    assert len(found["sub-package cycles"]) == 1
    assert "sub-package cycle among alpha, beta" in found["sub-package cycles"][0]
    assert found["unet_core imports nodes or ComfyUI"] == [
        "unet_core.errors line 2 imports nodes.n (unet_core never imports nodes)",
        "unet_core.errors line 3 imports ComfyUI's comfy"]
    host = found["ComfyUI imports outside nodes/host or at module level"]
    assert "nodes.n line 1 imports ComfyUI's folder_paths outside nodes/host/" in host
    assert "nodes.host.base line 1 imports ComfyUI's comfy at module level" in host
    assert "unet_core.errors line 3 imports ComfyUI's comfy outside nodes/host/" in host
    assert len(host) == 3
    assert found["long files without a reason"] == [
        "nodes.long has 402 lines (over 400) and no 'Length:' line in its module docstring"]
    assert import_rules.main(["import_rules", str(tmp_path)]) == 1
