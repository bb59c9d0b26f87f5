"""vispos: positional embeddings for images and video.

A PE is a function of token coordinates: :class:`GridLayout` says where tokens are, :mod:`vispos.freqs` holds the
RoPE frequency rules, :func:`build_pe` / :func:`list_pes` give every family by name, and hosts (timm ViTs,
:class:`vispos.models.VideoDiT`, diffusers video transformers) call the PE through three hooks.
"""
import logging as _logging

from . import (
    freqs,
    models,  # vispos.models.VideoDiT after `import vispos`
    pe,  # noqa: F401  (registers the families)
)
from .api import Rows, evaluate_frames, evaluate_resolution
from .attention import Attention, attend
from .freqs import RULES, ScalingRule, default_k, identify_k, predicted_loop_length, riflex_report, rope_freqs
from .grid import COORD_MODES, GridLayout, PackedLayout, grid_coords
from .integrations.timm import create_model
from .ops.rope import PAIRINGS, apply_rope
from .pe import PECombination, PositionalEmbedding
from .pe.base import get_table_cache_size, set_table_cache_size
from .pe.rope import AxialRoPE, MixedRoPE, VoPE
from .registry import build_pe, list_pes, register_pe

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "freqs",
    "models",
    "Attention",
    "attend",
    "RULES",
    "ScalingRule",
    "default_k",
    "identify_k",
    "predicted_loop_length",
    "riflex_report",
    "rope_freqs",
    "COORD_MODES",
    "GridLayout",
    "PackedLayout",
    "grid_coords",
    "PAIRINGS",
    "apply_rope",
    "build_pe",
    "list_pes",
    "register_pe",
    "PECombination",
    "PositionalEmbedding",
    "set_table_cache_size",
    "get_table_cache_size",
    "AxialRoPE",
    "MixedRoPE",
    "VoPE",
    "create_model",
    "evaluate_resolution",
    "evaluate_frames",
    "Rows",
]
