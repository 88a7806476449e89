"""Test set-up: load the pack the way ComfyUI does, under the name ``unet_lab``.

The repository root is itself the pack (it has ``__init__.py``), so tests import
``unet_lab.unet_core…`` and ``unet_lab.nodes…`` through this one alias; nothing
imports the pack's sub-packages as top-level modules. Shared helpers live in
``tests/pack_support.py`` (``tests`` is on pytest's ``pythonpath``).
"""

from __future__ import annotations

import os

import pytest
import torch

from pack_support import load_pack

# Two CPU cores: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

load_pack()

# Shared fixtures that several test modules request by name.
pytest_plugins = ["fixtures_gates"]


@pytest.fixture
def standalone_host(tmp_path):
    """A standalone host over empty model, input and output folders in tmp_path."""
    from unet_lab.nodes.host import StandaloneHost, use_host

    host = StandaloneHost(models_root=tmp_path / "models", output_dir=tmp_path / "output",
                          input_dir=tmp_path / "input", device="cpu", show_progress=False)
    with use_host(host):
        yield host
