"""Low-level operations: RoPE application and attention with PE biases."""
from .attention import DecomposedBias, sdpa
from .rope import PAIRINGS, apply_rope, apply_rope_qk, rope_angles, rope_table

__all__ = ["DecomposedBias", "sdpa", "PAIRINGS", "apply_rope", "apply_rope_qk", "rope_angles", "rope_table"]
