"""Triton RoPE for q and k in one launch (CUDA; also runs under the Triton interpreter, ``TRITON_INTERPRET=1``).

One program handles ``BLOCK_N`` tokens of one ``(batch, head)``: it loads that block of the half-width tables once
(shared ``(N, D/2)`` or per head ``(heads, N, D/2)``, any broadcast strides), then rotates the q block and the k block
with them. Inputs may have any strides (views of a packed ``qkv`` are read in place); outputs are contiguous.
Math in float32, one cast to the input dtype on store. ``CONJ`` rotates by ``-angle`` (the backward of the rotation).

Both pairings: ``interleaved`` loads the ``(BLOCK_N, D)`` tile and splits it into even/odd channels
(``tl.split``), ``half`` loads the two halves. Autograd goes through
:class:`vispos.ops.rope_fast.RopeQKFunction` with :func:`rotate_qk_triton` as the rotator.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None
    tl = None

__all__ = ["HAS_TRITON", "triton_supported", "rotate_qk_triton", "rope_qk_triton"]

HAS_TRITON = triton is not None
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     interpret: bool = False) -> bool:
    """Whether :func:`rope_qk_triton` handles these inputs: Triton importable, CUDA tensors (or CPU tensors under
    the interpreter), float32/float16/bfloat16 inputs and tables (float64 tables go to the torch path, which keeps
    float64 math), 4-D ``q`` and ``k`` of the same shape and dtype."""
    if not HAS_TRITON:
        return False
    devs = {t.device.type for t in (q, k, cos, sin)}
    if devs != ({"cpu"} if interpret else {"cuda"}):
        return False
    if q.dtype not in _DTYPES or k.dtype != q.dtype or cos.dtype not in _DTYPES or sin.dtype not in _DTYPES:
        return False
    return q.dim() == 4 and q.shape == k.shape


if HAS_TRITON:

    @triton.jit
    def _rope_block(x_ptr, o_ptr, c, s, offs_n, nmask, sxn, sxd,
                    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, INTERLEAVED: tl.constexpr):
        # x: (BLOCK_N, D) tile at x_ptr (offset to this batch/head, any strides); o: contiguous rows of width D
        D: tl.constexpr = 2 * HALF
        if INTERLEAVED:
            offs_d = tl.arange(0, 2 * BLOCK_H)
            m2 = nmask[:, None] & (offs_d[None, :] < D)
            x = tl.load(x_ptr + offs_n[:, None] * sxn + offs_d[None, :] * sxd, mask=m2, other=0.0).to(tl.float32)
            x0, x1 = tl.split(tl.reshape(x, (BLOCK_N, BLOCK_H, 2)))
            y0 = x0 * c - x1 * s
            y1 = x1 * c + x0 * s
            y = tl.reshape(tl.join(y0, y1), (BLOCK_N, 2 * BLOCK_H))
            tl.store(o_ptr + offs_n[:, None] * D + offs_d[None, :], y.to(o_ptr.dtype.element_ty), mask=m2)
        else:
            offs_j = tl.arange(0, BLOCK_H)
            m = nmask[:, None] & (offs_j[None, :] < HALF)
            p0 = x_ptr + offs_n[:, None] * sxn + offs_j[None, :] * sxd
            x0 = tl.load(p0, mask=m, other=0.0).to(tl.float32)
            x1 = tl.load(p0 + HALF * sxd, mask=m, other=0.0).to(tl.float32)
            o0 = o_ptr + offs_n[:, None] * D + offs_j[None, :]
            tl.store(o0, (x0 * c - x1 * s).to(o_ptr.dtype.element_ty), mask=m)
            tl.store(o0 + HALF, (x1 * c + x0 * s).to(o_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_qk_kernel(
        q_ptr, k_ptr, qo_ptr, ko_ptr, c_ptr, s_ptr,
        H, N,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd,
        scb, sch, scn, scd, ssb, ssh, ssn, ssd,
        HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, INTERLEAVED: tl.constexpr,
        CONJ: tl.constexpr, HAS_K: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        offs_j = tl.arange(0, BLOCK_H)
        m = nmask[:, None] & (offs_j[None, :] < HALF)
        c = tl.load(c_ptr + b * scb + h * sch + offs_n[:, None] * scn + offs_j[None, :] * scd, mask=m,
                    other=1.0).to(tl.float32)
        s = tl.load(s_ptr + b * ssb + h * ssh + offs_n[:, None] * ssn + offs_j[None, :] * ssd, mask=m,
                    other=0.0).to(tl.float32)
        if CONJ:
            s = -s
        obase = (b * H + h) * N * (2 * HALF)
        _rope_block(q_ptr + b * sqb + h * sqh, qo_ptr + obase, c, s, offs_n, nmask, sqn, sqd,
                    HALF, BLOCK_H, BLOCK_N, INTERLEAVED)
        if HAS_K:
            _rope_block(k_ptr + b * skb + h * skh, ko_ptr + obase, c, s, offs_n, nmask, skn, skd,
                        HALF, BLOCK_H, BLOCK_N, INTERLEAVED)


def _block_n(block_h: int) -> int:
    return max(1, min(64, 2048 // block_h))


def rotate_qk_triton(
    q: torch.Tensor, k: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, pairing: str,
    conj: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Rotate ``q, k (B, heads, N, D)`` (``k`` may be ``None``) in one launch; no autograd. Outputs contiguous."""
    if not HAS_TRITON:
        raise RuntimeError("rotate_qk_triton needs triton, which is not importable")
    B, H, N, D = q.shape
    if D % 2:
        raise ValueError(f"RoPE needs an even head dim, got D={D}")
    half = D // 2
    block_h = triton.next_power_of_2(half)
    full = (B, H, N, half)
    c = torch.broadcast_to(cos, full)
    s = torch.broadcast_to(sin, full)
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    kk = q if k is None else k
    ko = qo if k is None else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    bn = _block_n(block_h)
    grid = (triton.cdiv(N, bn), B * H)
    _rope_qk_kernel[grid](
        q, kk, qo, ko, c, s, H, N,
        *q.stride(), *kk.stride(), *c.stride(), *s.stride(),
        HALF=half, BLOCK_H=block_h, BLOCK_N=bn, INTERLEAVED=pairing == "interleaved", CONJ=conj, HAS_K=k is not None,
    )
    return qo, (None if k is None else ko)


def rope_qk_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "interleaved"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton rotation of q and k with autograd (backward rotates the gradients by ``-angle``)."""
    from .rope_fast import RopeQKFunction

    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, cos, sin)):
        return RopeQKFunction.apply(q, k, cos, sin, pairing, rotate_qk_triton)
    return rotate_qk_triton(q, k, cos, sin, pairing)
