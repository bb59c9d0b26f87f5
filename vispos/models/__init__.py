"""Host models with pluggable vispos PEs: :class:`VideoDiT` (compact Latte/DiT-style video diffusion transformer)."""
from .video_dit import ATTENTION_MODES, VideoDiT, timestep_embedding

__all__ = ["ATTENTION_MODES", "VideoDiT", "timestep_embedding"]
