"""Seeds derived from integers: one hash for the data, the evaluations and their training loops.

:func:`mix_seed` hashes any number of integers into a 63-bit seed (splitmix64 steps), so that neighbouring seeds,
steps or indices give unrelated random streams while every stream stays a pure function of its integers (the same
in every process, on every platform). :func:`torch_seed` folds such a seed into the 31-bit range that torch and
numpy accept everywhere.
"""
from __future__ import annotations

import torch

__all__ = ["mix_seed", "torch_seed", "generator"]

_MASK63 = (1 << 63) - 1


def mix_seed(*vals: int) -> int:
    """splitmix64-style hash of integers -> a 63-bit seed (neighbouring seeds/indices give unrelated streams)."""
    x = 0x9E3779B97F4A7C15
    for v in vals:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK63


def torch_seed(*vals: int) -> int:
    """:func:`mix_seed` folded into ``[0, 2**31)``."""
    return mix_seed(*vals) & 0x7FFFFFFF


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))
