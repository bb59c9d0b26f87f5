"""PE families. Each module pairs pure functions with a thin module and registers its names.

Importing this package registers every family (see :func:`vispos.list_pes`).
"""
from . import (
    absolute,  # noqa: E402,F401  (ape, ape_sincos)
    alibi,  # noqa: E402,F401  (alibi)
    comrope,  # noqa: E402,F401  (comrope)
    conditional,  # noqa: E402,F401  (peg)
    global_local,  # noqa: E402,F401  (glpe)
    lape,  # noqa: E402,F401  (lape)
    lie_rope,  # noqa: E402,F401  (lie_rope)
    relative,  # noqa: E402,F401  (rel_decomposed)
    rope,  # noqa: E402,F401  (registers rope_axial, rope_mixed, vope)
)
from .base import HOOKS, PECombination, PositionalEmbedding, find_member

__all__ = ["HOOKS", "PECombination", "PositionalEmbedding", "find_member"]
