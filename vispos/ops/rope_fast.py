"""Fast eager RoPE for q and k (any device), with a hand-written backward.

:func:`rope_qk_fast` is what :func:`vispos.ops.rope.apply_rope_qk` runs in eager mode when Triton is not used
(CPU, or ``impl="fast"``). It computes exactly the reference rotation of :func:`vispos.ops.rope.apply_rope`
(math in float32, or the tables' dtype if wider; one cast at the end) but

* works on the *half-width* tables ``cos, sin (..., N, D/2)`` directly (no full-width sin/cos, no ``rot(x)``,
  no stack/cat copies);
* ``interleaved`` pairing: pairs ``(x[2j], x[2j+1])`` are complex numbers, so the rotation is one vectorised
  complex multiply ``x * (cos + i sin)`` that reads ``x`` once and writes the output once, on strided views as
  they come from a packed ``qkv`` (no ``.contiguous()``);
* ``half`` pairing: one broadcast multiply by ``cos`` into a preallocated output and two in-place ``addcmul``;
* q and k of one packed ``qkv`` (same storage, shape and strides) are rotated by one kernel over a ``(2, ...)``
  strided view of both;
* backward (:class:`RopeQKFunction`) rotates the incoming gradients by ``-angle`` (same kernels with ``-sin``)
  and, only when the tables need gradients (RoPE-Mixed), reduces ``dcos = g0·x0 + g1·x1``,
  ``dsin = g1·x0 - g0·x1`` to the tables' shape. Double backward is not supported (``once_differentiable``).

Shapes: ``q, k (B, heads, N, D)`` (any strides); ``cos, sin`` broadcastable to ``(B, heads, N, D/2)``; outputs
``(B, heads, N, D)`` contiguous, in the inputs' dtype.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ["rope_qk_fast", "rotate", "rotate_qk", "RopeQKFunction", "complex_viewable", "packed_pair"]

Rotator = Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]


def _wide(cos: torch.Tensor) -> torch.dtype:
    return torch.promote_types(cos.dtype, torch.float32)


def complex_viewable(x: torch.Tensor) -> bool:
    """True if ``x (..., D)`` (float32/float64) can be viewed as ``(..., D/2)`` complex pairs without a copy."""
    if x.dtype not in (torch.float32, torch.float64) or x.shape[-1] % 2:
        return False
    if x.stride(-1) != 1 or x.storage_offset() % 2:
        return False
    return all(s % 2 == 0 for s in x.stride()[:-1])


def packed_pair(q: torch.Tensor, k: torch.Tensor) -> Optional[torch.Tensor]:
    """A ``(2, *q.shape)`` strided view covering ``q`` then ``k`` when both live in one storage with the same
    shape and strides (q and k unbound from a packed ``qkv``); ``None`` otherwise. Never copies."""
    if q.shape != k.shape or q.stride() != k.stride() or q.dtype != k.dtype or q.device != k.device:
        return None
    if q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr():
        return None
    delta = k.storage_offset() - q.storage_offset()
    if delta <= 0:
        return None
    return torch.as_strided(q, (2, *q.shape), (delta, *q.stride()), q.storage_offset())


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, conj: bool = False) -> torch.Tensor:
    """Rotate ``x (..., N, D)`` by the table angles (by ``-angle`` if ``conj``); no autograd graph is built.

    Output contiguous, ``x.dtype``; math in ``promote(cos.dtype, float32)``.
    """
    wide = _wide(cos)
    c = cos.to(wide)
    s = sin.to(wide)
    if conj:
        s = -s
    xw = x if x.dtype == wide else x.to(wide)
    h = x.shape[-1] // 2
    if pairing == "interleaved" and complex_viewable(xw):
        xc = torch.view_as_complex(xw.unflatten(-1, (h, 2)))
        y = torch.view_as_real(xc * torch.complex(c, s)).flatten(-2)
    elif pairing == "interleaved":
        y = torch.empty(x.shape, dtype=wide, device=x.device)
        x2, o2 = xw.unflatten(-1, (h, 2)), y.unflatten(-1, (h, 2))
        torch.mul(x2, c.unsqueeze(-1), out=o2)
        o2[..., 0].addcmul_(x2[..., 1], s, value=-1)
        o2[..., 1].addcmul_(x2[..., 0], s)
    else:
        y = torch.empty(x.shape, dtype=wide, device=x.device)
        x2, o2 = xw.unflatten(-1, (2, h)), y.unflatten(-1, (2, h))
        torch.mul(x2, c.unsqueeze(-2), out=o2)
        o2[..., 0, :].addcmul_(x2[..., 1, :], s, value=-1)
        o2[..., 1, :].addcmul_(x2[..., 0, :], s)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def rotate_qk(
    q: torch.Tensor, k: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, pairing: str,
    conj: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`rotate` on q and k; one kernel over both when they are views of one packed tensor."""
    if k is None:
        return rotate(q, cos, sin, pairing, conj), None
    both = packed_pair(q, k)
    if both is not None:
        y = rotate(both, cos, sin, pairing, conj)
        return y[0], y[1]
    return rotate(q, cos, sin, pairing, conj), rotate(k, cos, sin, pairing, conj)


def _split(x: torch.Tensor, pairing: str):
    h = x.shape[-1] // 2
    if pairing == "interleaved":
        x2 = x.unflatten(-1, (h, 2))
        return x2[..., 0], x2[..., 1]
    return x[..., :h], x[..., h:]


def _table_grads(xs, gs, cos, sin, pairing):
    """``dcos, dsin`` summed over every (x, g) pair and reduced to the tables' shapes (in the tables' dtype)."""
    wide = _wide(cos)
    dc = ds = None
    for x, g in zip(xs, gs):
        if x is None or g is None:
            continue
        x0, x1 = _split(x.to(wide), pairing)
        g0, g1 = _split(g.to(wide), pairing)
        c_ = torch.addcmul(g0 * x0, g1, x1)
        s_ = torch.addcmul(g1 * x0, g0, x1, value=-1)
        dc = c_ if dc is None else dc + c_
        ds = s_ if ds is None else ds + s_
    if dc is None:
        return None, None
    return dc.sum_to_size(cos.shape).to(cos.dtype), ds.sum_to_size(sin.shape).to(sin.dtype)


class RopeQKFunction(torch.autograd.Function):
    """Autograd wrapper for a q/k rotator ``rotator(q, k, cos, sin, pairing, conj) -> (q', k')``.

    Backward: ``dq = rotator(dq', -angle)``; table gradients by a torch reduction when needed.
    """

    @staticmethod
    def forward(ctx, q, k, cos, sin, pairing: str, rotator: Rotator):
        ctx.pairing, ctx.rotator = pairing, rotator
        need_tab = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        ctx.save_for_backward(q if need_tab else None, k if need_tab else None, cos, sin)
        return rotator(q, k, cos, sin, pairing, False)

    @staticmethod
    @once_differentiable
    def backward(ctx, gq, gk):
        q, k, cos, sin = ctx.saved_tensors
        dq = dk = None
        if gq is not None and gk is not None:
            dq, dk = ctx.rotator(gq, gk, cos, sin, ctx.pairing, True)
        elif gq is not None:
            dq = ctx.rotator(gq, None, cos, sin, ctx.pairing, True)[0]
        elif gk is not None:
            dk = ctx.rotator(gk, None, cos, sin, ctx.pairing, True)[0]
        dcos = dsin = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            dcos, dsin = _table_grads((q, k), (gq, gk), cos, sin, ctx.pairing)
        if not ctx.needs_input_grad[2]:
            dcos = None
        if not ctx.needs_input_grad[3]:
            dsin = None
        return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None, dcos, dsin,
                None, None)


def rope_qk_fast(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str = "interleaved"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fast eager rotation of ``q, k (B, heads, N, D)`` by ``cos, sin (..., N, D/2)``; equals the reference."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, cos, sin)):
        return RopeQKFunction.apply(q, k, cos, sin, pairing, rotate_qk)
    return rotate_qk(q, k, cos, sin, pairing)
