"""PE families. Each module pairs pure functions with a thin module and registers its names.

Importing this package registers every family (see :func:`vispos.list_pes`).
"""
from .base import HOOKS, PECombination, PositionalEmbedding, find_member

from . import rope  # noqa: E402,F401  (registers rope_axial, rope_mixed, vope)
from . import absolute  # noqa: E402,F401  (ape, ape_sincos)
from . import conditional  # noqa: E402,F401  (peg)
from . import global_local  # noqa: E402,F401  (glpe)
from . import lape  # noqa: E402,F401  (lape)
from . import relative  # noqa: E402,F401  (rel_decomposed)

__all__ = ["HOOKS", "PECombination", "PositionalEmbedding", "find_member"]
