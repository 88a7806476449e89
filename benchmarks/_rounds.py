"""The order variants run in, round by round, in the step benchmarks.

Steps of a sampling loop timed back to back are not independent: a step's time depends on its
place in the round and on the step before it, so a fixed order lets a variant's place pass for
its cost. Each round therefore runs the variants in a fresh random order, the same for a given
seed: every variant takes every place and follows every other one about equally often, and the paired ratios (a variant's step over the reference's
step of the same round) carry no order effect, only its noise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def round_orders(variants: Sequence[T], rounds: int, seed: int = 0) -> list[list[T]]:
    """``rounds`` orders of ``variants``, each a random permutation (reproducible from ``seed``)."""
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        orders.append(order)
    return orders
