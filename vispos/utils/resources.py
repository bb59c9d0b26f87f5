"""Files shipped with vispos: the demo and example configurations.

In a source checkout they are the repository's ``configs/`` folder; in an installed wheel the same files are package
data of ``vispos.configs`` (``setup.py`` maps the folder there). :func:`config_path` finds them either way, so
``vispos demo resolution`` runs from ``pip install vispos`` as from a clone.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

__all__ = ["config_dir", "config_path", "list_configs"]

_PKG = Path(__file__).resolve().parents[1]  # the vispos package folder


def config_dir() -> Path:
    """The folder holding ``resolution/*.yaml`` and ``video/*.yaml``: ``vispos/configs`` in an installed wheel, the
    checkout's ``configs/`` otherwise. Raises ``FileNotFoundError`` if neither exists (a broken install)."""
    for p in (_PKG / "configs", _PKG.parent / "configs"):
        if (p / "resolution").is_dir() or (p / "video").is_dir():
            return p
    raise FileNotFoundError(f"vispos's configs are missing: neither {str(_PKG / 'configs')!r} (installed wheel) nor "
                            f"{str(_PKG.parent / 'configs')!r} (source checkout) exists; reinstall vispos")


def config_path(*parts: str) -> Path:
    """``config_path("resolution", "demo_cpu.yaml")`` -> the shipped file. ``ValueError`` naming the available
    files if it does not exist."""
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise TypeError(f"config_path takes path parts like ('resolution', 'demo_cpu.yaml'), got {parts!r}")
    root = config_dir()
    p = root.joinpath(*parts)
    if not p.is_file():
        raise ValueError(f"no shipped config {'/'.join(parts)!r}; available: {list_configs()}")
    return p


def list_configs() -> List[str]:
    """Relative paths of every shipped config, e.g. ``['resolution/demo_cpu.yaml', ...]``."""
    root = config_dir()
    return sorted(str(p.relative_to(root)).replace("\\", "/") for p in root.rglob("*.yaml"))
