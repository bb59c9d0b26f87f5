"""Applying rotary embeddings.

Tables are *half-width*: ``cos`` and ``sin`` have one column per rotated pair, shape ``(..., N, D/2)`` broadcastable
to ``(B, H, N, D/2)`` (shared over batch and heads, or per head for mixed RoPE). Prefix tokens and channels beyond
the rotary dim carry angle 0 (cos 1, sin 0), so one elementwise expression handles them with no slicing or
concatenation and leaves them bit-identical.

Pairings: ``interleaved`` rotates ``(x[2j], x[2j+1])``; ``half`` rotates ``(x[j], x[j + D/2])``; pair ``j`` uses
column ``j`` of the table in both.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["PAIRINGS", "ROPE_IMPLS", "check_pairing", "rope_angles", "rope_table", "apply_rope", "apply_rope_qk",
           "select_rope_impl"]

PAIRINGS = ("interleaved", "half")


def check_pairing(pairing: str) -> str:
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown RoPE pairing {pairing!r}; expected one of {PAIRINGS}")
    return pairing


def rope_angles(coords: torch.Tensor, freqs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Axial angles: ``coords (N, ndim)`` times each axis' bands, concatenated -> ``(N, sum(d_a/2))``, float32+.

    Computed as elementwise outer products in float64 (never a matmul, so autocast cannot lower it).
    """
    if coords.dim() != 2 or coords.shape[1] != len(freqs):
        raise ValueError(f"coords must be (N, {len(freqs)}) for {len(freqs)} axes of bands, got {tuple(coords.shape)}")
    c = coords.to(torch.float64)
    parts = [c[:, a, None] * f.to(device=c.device, dtype=torch.float64)[None, :] for a, f in enumerate(freqs)]
    return torch.cat(parts, dim=-1)


def rope_table(
    angles: torch.Tensor,
    num_prefix: int = 0,
    half_width: Optional[int] = None,
    scale=1.0,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables from angles ``(..., N, P)``: ``(..., num_prefix + N, half_width)`` each.

    Prefix rows and columns past ``P`` (channels beyond the rotary dim) get angle 0. ``scale`` (a float, or one
    factor per column ``(P,)``) multiplies cos and sin (YaRN's attention factor). Trigonometry runs in the angles' precision (>= float32), cast once to ``dtype``.
    """
    if angles.dtype not in (torch.float32, torch.float64):
        angles = angles.float()
    P = angles.shape[-1]
    hw = P if half_width is None else half_width
    if hw < P:
        raise ValueError(f"the rotary angles need {2 * P} channels but the head dim is {2 * hw}")
    cos, sin = torch.cos(angles), torch.sin(angles)
    if isinstance(scale, torch.Tensor):
        scale = scale.to(device=cos.device, dtype=cos.dtype)
        cos, sin = cos * scale, sin * scale
    elif scale != 1.0:
        cos, sin = cos * scale, sin * scale
    if num_prefix or hw > P:
        lead = angles.shape[:-2]
        n = angles.shape[-2]
        full_cos = torch.ones(*lead, num_prefix + n, hw, dtype=angles.dtype, device=angles.device)
        full_sin = torch.zeros_like(full_cos)
        full_cos[..., num_prefix:, :P] = cos
        full_sin[..., num_prefix:, :P] = sin
        cos, sin = full_cos, full_sin
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "interleaved") -> torch.Tensor:
    """Reference rotation (eager PyTorch). ``x (..., N, D)``; ``cos, sin (..., N, D/2)`` broadcastable.

    Math in float32 (or the tables' dtype if wider); the result is cast once to ``x.dtype``.
    """
    check_pairing(pairing)
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"RoPE needs an even head dim, got {D}")
    if cos.shape[-1] != D // 2 or sin.shape[-1] != D // 2:
        raise ValueError(f"RoPE tables must have D/2 = {D // 2} columns, got {cos.shape[-1]}")
    if cos.shape[-2] != x.shape[-2]:
        raise ValueError(f"RoPE tables cover {cos.shape[-2]} tokens but the input has {x.shape[-2]}")
    wide = torch.promote_types(cos.dtype, torch.float32)
    xf = x.to(wide)
    c, s = cos.to(wide), sin.to(wide)
    if pairing == "interleaved":
        x2 = xf.unflatten(-1, (D // 2, 2))
        x0, x1 = x2[..., 0], x2[..., 1]
        y = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
    else:
        x0, x1 = xf[..., : D // 2], xf[..., D // 2 :]
        y = torch.cat((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)
    return y.to(x.dtype)


ROPE_IMPLS = ("auto", "reference", "fast", "triton")


def select_rope_impl(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     impl: str = "auto") -> str:
    """The path :func:`apply_rope_qk` takes (explicit and testable).

    ``auto``: under ``torch.compile`` -> ``reference`` (plain elementwise math that inductor fuses into one kernel;
    the fast paths use complex views, ``out=`` and in-place ops that would only cost it graph breaks), and likewise under ``torch.jit.trace`` and the legacy ONNX exporter
    (``torch.onnx.export(..., dynamo=False)``: no complex ops or autograd Functions there); CUDA tensors
    that the Triton kernel supports (:func:`vispos.ops.rope_triton.triton_supported`) -> ``triton``; everything
    else (CPU, float64 tables, Triton missing) -> ``fast`` (:mod:`vispos.ops.rope_fast`, eager torch, any device).
    An explicit ``impl`` is honoured or rejected with an error, never replaced.
    """
    if impl not in ROPE_IMPLS:
        raise ValueError(f"unknown RoPE impl {impl!r}; expected one of {ROPE_IMPLS}")
    if impl == "triton":
        from .rope_triton import triton_supported

        if not triton_supported(q, k, cos, sin):
            raise ValueError("impl='triton' needs triton and CUDA float32/float16/bfloat16 q, k and tables of one "
                             f"shape; got q {tuple(q.shape)} {q.dtype} on {q.device}, k {tuple(k.shape)}, "
                             f"tables {cos.dtype}")
        return impl
    if impl != "auto":
        return impl
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return "reference"
    if q.is_cuda:
        from .rope_triton import triton_supported

        if triton_supported(q, k, cos, sin):
            return "triton"
    return "fast"


def apply_rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "interleaved",
    impl: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q, k (B, heads, N, D)`` with the same tables ``cos, sin (..., N, D/2)`` -> ``(q', k')``.

    All paths compute :func:`apply_rope` (the reference) within dtype tolerance, forward and backward (including
    gradients for the tables, e.g. RoPE-Mixed's learned frequencies); see :func:`select_rope_impl` for the choice.
    ``fast`` and ``triton`` return contiguous tensors and read strided inputs (views of a packed qkv) in place.
    """
    check_pairing(pairing)
    for n, t in (("q", q), ("k", k)):
        if t.shape[-1] % 2:
            raise ValueError(f"RoPE needs an even head dim, got {n} with {t.shape[-1]}")
        if cos.shape[-1] != t.shape[-1] // 2 or sin.shape[-1] != t.shape[-1] // 2:
            raise ValueError(f"RoPE tables must have D/2 = {t.shape[-1] // 2} columns, got {cos.shape[-1]}")
        if cos.shape[-2] != t.shape[-2] or sin.shape[-2] != t.shape[-2]:
            raise ValueError(f"RoPE tables cover {cos.shape[-2]} tokens but {n} has {t.shape[-2]}")
    path = select_rope_impl(q, k, cos, sin, impl)
    if path == "reference":
        return apply_rope(q, cos, sin, pairing), apply_rope(k, cos, sin, pairing)
    if path == "triton":
        from .rope_triton import rope_qk_triton

        return rope_qk_triton(q, k, cos, sin, pairing)
    from .rope_fast import rope_qk_fast

    return rope_qk_fast(q, k, cos, sin, pairing)
