"""Band arithmetic shared by the diffusers adapters and ``vispos riflex`` (needs only torch).

Bands are per-position angular frequencies of one axis, float64, highest first (so RIFLEx ``k`` counts from the
highest frequency, 1-indexed, for every layout).

LTX-Video has no ``b^(-2j/d)`` bands: its ``dim // 6`` frequencies per axis run geometrically from ``pi/2`` to
``theta * pi/2`` and multiply a normalised coordinate ``2 g - 1``, ``g = p * step``; per position the angular
frequency is ``2 omega_j step``. :func:`ltx_bands` returns these and :func:`ltx_band_base` the equivalent base for
the NTK rules.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...freqs import ScalingRule, apply_rule, rope_freqs

__all__ = ["latent_frames", "ltx_band_base", "ltx_bands", "adjust_bands", "merge_bands", "standard_bands",
           "interleaved_cos_sin"]


def latent_frames(pixel_frames: int, vae_t: int) -> int:
    """Latent frames of a ``pixel_frames``-frame video under a causal VAE of temporal compression ``vae_t``."""
    if isinstance(pixel_frames, bool) or not isinstance(pixel_frames, int) or pixel_frames < 1:
        raise ValueError(f"pixel frames must be a positive int, got {pixel_frames!r}")
    if (pixel_frames - 1) % vae_t:
        raise ValueError(
            f"pixel frames must be {vae_t}*m + 1 for a VAE of temporal compression {vae_t}, got {pixel_frames}"
        )
    return (pixel_frames - 1) // vae_t + 1


def ltx_band_base(theta: float, n: int) -> float:
    """The base ``b`` with ``b^(-2i/(2n)) = theta^(-i/(n-1))``: LTX's bands written in the standard form."""
    if n < 2:
        raise ValueError(f"LTX-Video needs at least 2 bands per axis, got {n}")
    return float(theta) ** (n / (n - 1))


def ltx_bands(theta: float, dim: int, step: float) -> torch.Tensor:
    """LTX-Video angular frequencies per position of one axis, float64, highest first, shape ``(dim // 6,)``.

    ``step`` is the normalised-coordinate increment per position (``s * patch / base``, or 1 without
    ``rope_interpolation_scale``); the angle of position ``p`` is ``omega_j (2 p step - 1)``.
    """
    n = dim // 6
    if n < 1:
        raise ValueError(f"LTX-Video rotary dim must be >= 6, got {dim}")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"LTX coordinate step per position must be positive, got {step!r}")
    omega = float(theta) ** torch.linspace(0.0, 1.0, n, dtype=torch.float64) * (math.pi / 2.0)
    return (2.0 * step * omega).flip(0)


def adjust_bands(
    freqs: torch.Tensor, rule: ScalingRule, base: float, dim: int, canonical: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Apply ``rule`` (lengths filled in) to the per-position bands ``freqs`` (float64, highest first).

    Components a rule does not touch come back bit-identical. ``canonical`` is given when ``freqs`` is not exactly
    ``rope_freqs(dim, base)`` up to a constant (LTX): the NTK rules, which rebuild bands from the base, are then
    applied as the factor they put on ``rope_freqs(dim, base)``.
    """
    freqs = freqs.to(torch.float64)
    if rule.name in ("ntk", "ntk_base") and canonical is not None:
        new = apply_rule(canonical, rule, base, dim)
        ratio = new / canonical
        return torch.where(ratio == 1.0, freqs, freqs * ratio)
    return apply_rule(freqs, rule, base, dim)


def merge_bands(host_freqs: torch.Tensor, theta64: torch.Tensor, new64: torch.Tensor) -> torch.Tensor:
    """The host's own bands where the rule left them alone, the rule's (cast to the host dtype) elsewhere."""
    changed = (new64 != theta64).to(host_freqs.device)
    if not bool(changed.any()):
        return host_freqs
    return torch.where(changed, new64.to(device=host_freqs.device, dtype=host_freqs.dtype), host_freqs)


def standard_bands(host_freqs: torch.Tensor, rule: ScalingRule, base: float, dim: int):
    """``(bands for the host computation, adjusted float64 bands)`` of a ``b^(-2j/d)`` axis."""
    theta64 = rope_freqs(dim, base)
    if rule.name == "none":
        return host_freqs, theta64
    new64 = adjust_bands(theta64, rule, base, dim)
    return merge_bands(host_freqs, theta64, new64), new64


def interleaved_cos_sin(pos: torch.Tensor, freqs: torch.Tensor, attn: float = 1.0):
    """cos/sin of ``pos x freqs``, each band repeated for its pair, float32 (diffusers' ``use_real`` path)."""
    ang = torch.outer(pos, freqs)
    n = ang.shape[1] * 2
    cos = ang.cos().repeat_interleave(2, dim=1, output_size=n).float()
    sin = ang.sin().repeat_interleave(2, dim=1, output_size=n).float()
    if attn != 1.0:
        cos, sin = cos * attn, sin * attn
    return cos, sin
