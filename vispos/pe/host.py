"""What a host model brings to a vispos PE: its own positional embedding, by role, for the families to take over.

A host (e.g. :mod:`vispos.integrations.timm`) describes its PE once, in a :class:`HostPE` -- the patch grid, the
prefix tokens, how it resamples absolute tables, and its PE state by *role* -- and then asks every PE module,
generically, for what it takes:

============== ======================================================================================================
role           value
============== ======================================================================================================
``abs_table``  a :class:`HostTable`: a learned absolute table ``(1, prefix_rows + prod(grid), C)`` (timm
               ``pos_embed``), possibly at another grid (a checkpoint)
``rotary``     the host's rotary-embedding module (settings a RoPE family can reproduce, e.g. timm's
               ``RotaryEmbeddingCat``)
``mixed_freqs`` a :class:`HostFreqs`: learned RoPE-Mixed frequencies as the host stores them (EVA ``rope.freqs``)
============== ======================================================================================================

Each family overrides the hooks of :class:`~vispos.pe.base.PositionalEmbedding` it needs:
``options_from_host`` (build options from the host's PE), ``state_from_host`` (own parameters from the host's
state, taking the roles it uses), ``identity_state`` (parameters that make it the identity, for a checkpoint that
cannot have them) and ``resize_state`` (an own checkpoint tensor saved at another grid). The host names no family;
a role no member takes is reported by the host as dropped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["HostPE", "HostTable", "HostFreqs"]


@dataclass(frozen=True)
class HostTable:
    """A host's learned absolute table ``(1, prefix_rows + prod(grid), C)``; ``source`` names it in log lines."""

    table: torch.Tensor
    grid: Tuple[int, ...]
    prefix_rows: int
    source: str = "pos_embed"


@dataclass(frozen=True)
class HostFreqs:
    """A host's learned RoPE-Mixed frequencies ``freqs`` as stored, whose axis 0 runs over the grid axes in
    ``axis_order`` (``"xy"``: width first, timm EVA); ``source`` names it in log lines."""

    freqs: torch.Tensor
    axis_order: str
    source: str = "rope.freqs"


@dataclass
class HostPE:
    """A host model's positional embedding, for the families to read (see the module docstring).

    Args:
        grid: the host's patch grid ``(H, W)`` (its training / current grid).
        num_prefix: prefix tokens (class, registers, ...).
        prefix_in_table: whether the host's absolute table has rows for the prefix tokens (timm: not
            ``no_embed_class``).
        resample: how the host resamples absolute tables at other grids (``dict(mode=, antialias=)``).
        convert: converting pretrained weights: new parameters should start as the identity where a family can.
        roles: role -> value (see the module docstring).
        log: the host's logger call for conversion lines (``log(msg, *args)``).
    """

    grid: Tuple[int, ...]
    num_prefix: int
    prefix_in_table: bool = True
    resample: Dict[str, Any] = field(default_factory=lambda: dict(mode="bicubic", antialias=True))
    convert: bool = True
    roles: Dict[str, Any] = field(default_factory=dict)
    log: Callable[..., None] = logging.getLogger(__name__).info
    taken: Dict[str, str] = field(default_factory=dict)
    #: what the families say they cannot reproduce of the host's PE (``"<name>: <what>"``)
    problems: List[str] = field(default_factory=list)

    def peek(self, role: str) -> Optional[Any]:
        """The value of ``role`` if the host has it and no member took it yet, else ``None``."""
        return None if role in self.taken else self.roles.get(role)

    def take(self, role: str, by: str) -> Any:
        """Mark ``role`` as taken by ``by`` (a module path) and return its value."""
        if role not in self.roles or role in self.taken:
            raise KeyError(f"host role {role!r} is {'taken by ' + self.taken[role] if role in self.taken else 'absent'}")
        self.taken[role] = by
        return self.roles[role]

    def untaken(self) -> Dict[str, Any]:
        """Roles no member took (the host reports them as dropped)."""
        return {r: v for r, v in self.roles.items() if r not in self.taken}
