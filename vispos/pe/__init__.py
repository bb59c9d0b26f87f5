"""PE families. Each module pairs pure functions with a thin module and registers its class
(:func:`vispos.pe.registry.register_family`).

Importing this package imports every module in it, so every family is registered (see :func:`vispos.list_pes`):
a new family is one new file here.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .base import HOOKS, PECombination, PositionalEmbedding, find_member

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["HOOKS", "PECombination", "PositionalEmbedding", "find_member"]
