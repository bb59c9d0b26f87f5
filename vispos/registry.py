"""Registry of PE families (public home): ``build_pe(name, ...)``, ``list_pes()``, ``register_family`` /
``register_pe``. The registry lives with the families, in :mod:`vispos.pe.registry`; this module re-exports it."""
from .pe.registry import (
    COMMON_ARGS,
    PEInfo,
    build_pe,
    get_pe_info,
    list_pes,
    option_names,
    register_family,
    register_pe,
)

__all__ = ["PEInfo", "register_family", "register_pe", "build_pe", "list_pes", "get_pe_info", "COMMON_ARGS",
           "option_names"]
