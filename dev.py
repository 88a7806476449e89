#!/usr/bin/env python3
"""Developer entry point: ``python3 dev.py run`` and ``python3 dev.py test``.

The first call sets up ``.venv`` (torch==2.13.0 and the dev dependencies); later
calls reuse it, reinstalling only when a requirements file changed. Needs only
python3 (3.10+) on the machine.

    python3 dev.py run [WORKFLOW] [--models DIR] [--output DIR]   # headless run, default: the demo workflow
    python3 dev.py test [PYTEST ARGS]                               # the test suite
    torchrun --nproc_per_node N dev.py run WORKFLOW ...             # the same run on N ranks (see README)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH_PIN = "torch==2.13.0"
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _requirements_hash() -> str:
    digest = hashlib.sha256(TORCH_PIN.encode())
    for name in REQUIREMENTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _ensure_venv() -> None:
    stamp = VENV / ".unet-lab-installed"
    wanted = _requirements_hash()
    if stamp.exists() and stamp.read_text().strip() == wanted and _venv_python().exists():
        return
    if not _venv_python().exists():
        print(f"dev.py: creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    python = str(_venv_python())
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print(f"dev.py: installing {TORCH_PIN} and the dev dependencies (first run only)", file=sys.stderr)
    subprocess.run(pip + [TORCH_PIN], check=True)
    subprocess.run(pip + ["-r", str(ROOT / "requirements-dev.txt")], check=True)
    stamp.write_text(wanted)


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _load_pack(name: str = "unet_lab"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    if not _in_venv():
        try:
            _ensure_venv()
        except subprocess.CalledProcessError as error:
            print(f"dev.py: set-up failed ({error}); see pip's output above", file=sys.stderr)
            return 1
        command = [str(_venv_python()), str(Path(__file__).resolve()), *argv]
        if "TORCHELASTIC_RUN_ID" in os.environ and os.name != "nt":
            os.execv(command[0], command)  # under torchrun: keep this pid, so the launcher's signals reach the run
        return subprocess.call(command)
    command, rest = argv[0], argv[1:]
    if command == "test":
        return subprocess.call([sys.executable, "-m", "pytest", *rest], cwd=ROOT)
    _load_pack()
    from unet_lab.nodes.host import headless  # noqa: E402  (the pack is loaded above)

    return headless.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
