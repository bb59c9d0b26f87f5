"""Optional dependencies (the extras of ``pip install vispos[...]``) turned into one-line hints.

* ``plots`` (matplotlib): without it plots are skipped with one warning (:func:`vispos.eval.plots.matplotlib_or_hint`).
* ``video`` (decord, PyAV): video files are read with decord, or with PyAV when decord is missing (one warning);
  with neither, reading a video file raises :class:`MissingExtraError` naming the install line.
* ``notebook`` (pandas): :meth:`vispos.api.Rows.to_pandas`.
"""
from __future__ import annotations

import importlib
import logging
from typing import Dict

__all__ = ["EXTRAS", "MissingExtraError", "have", "require"]

log = logging.getLogger(__name__)

#: extra -> the modules it provides
EXTRAS: Dict[str, tuple] = {"plots": ("matplotlib",), "video": ("decord", "av"), "diffusers": ("diffusers",),
                            "notebook": ("pandas",)}


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the ``pip install`` line that adds it. The CLI prints it
    as one ``vispos: error:`` line (exit code 2)."""


def have(module: str) -> bool:
    """Whether ``module`` can be imported (imports it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise :class:`MissingExtraError`: ``"<what> needs <module>: pip install 'vispos[extra]'"``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{what} needs {module} ({e}): pip install 'vispos[{extra}]' "
                                f"(or pip install {module})") from e
