"""Built-in data: position-sensitive synthetic images (:mod:`vispos.data.images`), synthetic videos and a clip
reader (:mod:`vispos.data.video`).

Import-light: submodules load on first attribute access, so ``import vispos.data`` costs nothing.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "TASKS": "images",
    "SyntheticPositionDataset": "images",
    "render": "images",
    "parse_size": "images",
    "SyntheticVideos": "video",
    "VideoFolder": "video",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
