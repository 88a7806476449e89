"""Whether a state dict loads strictly into a module: the one check behind every "weights do not fit" error."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def fit_problems(module: nn.Module, state: Mapping[str, torch.Tensor], shown: int = 3) -> list[str]:
    """What keeps ``module.load_state_dict(state, strict=True)`` from working, one phrase per kind
    (missing keys, unexpected keys, keys of the wrong shape, each with up to ``shown`` examples);
    empty when it fits. Reads shapes only: ``module`` may live on the meta device."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:shown])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:shown])})")
    if wrong:
        examples = ", ".join(f"{k}: file {tuple(state[k].shape)}, model {expected[k]}" for k in wrong[:shown])
        problems.append(f"{len(wrong)} keys with wrong shapes (e.g. {examples})")
    return problems

