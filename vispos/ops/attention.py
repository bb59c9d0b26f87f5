"""Scaled dot-product attention with the biases vispos PEs produce.

:func:`sdpa` takes ``q, k, v (B, heads, N, D)`` and an optional bias:

* a tensor broadcastable to ``(B, heads, Nq, Nk)``: passed to ``F.scaled_dot_product_attention`` as a float mask;
* a :class:`DecomposedBias` (decomposed relative position, MViTv2/SAM): per-axis factors
  ``rel_a (B, heads, Nq_grid, K_a)`` whose sum over axes, indexed by each key's grid coordinate, is the bias.
  It is applied without materialising ``B·heads·Nq·Nk`` by default (``impl="fold"``): the factors become extra
  q columns and the key's one-hot grid coordinates extra k columns, so one SDPA call computes
  ``scale·q·k + rel_h[kh] + rel_w[kw] (+ rel_t[kt])`` exactly. ``impl="dense"`` builds the full mask (the
  reference), ``impl="chunked"`` builds it a block of queries at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..grid import GridLayout

__all__ = ["DecomposedBias", "sdpa", "SDPA_IMPLS"]

SDPA_IMPLS = ("auto", "fold", "dense", "chunked")


@dataclass
class DecomposedBias:
    """Factored relative-position bias.

    Attributes:
        factors: one tensor per grid axis, ``(B, heads, prod(q_layout.shape), k_layout.shape[a])``.
        q_layout, k_layout: layouts of queries and keys (prefix tokens get no bias, in either role).
    """

    factors: List[torch.Tensor]
    q_layout: GridLayout
    k_layout: GridLayout

    def dense(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The full bias ``(B, heads, Nq, Nk)`` with zero rows/columns for prefix tokens (reference)."""
        return self.dense_rows(0, self.q_layout.num_tokens, dtype)

    def dense_rows(self, start: int, stop: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Rows ``start:stop`` (query tokens, prefix included) of :meth:`dense`."""
        f0 = self.factors[0]
        B, H = f0.shape[:2]
        pq, pk = self.q_layout.num_prefix, self.k_layout.num_prefix
        kshape = self.k_layout.shape
        nd = len(kshape)
        lo, hi = max(start - pq, 0), max(stop - pq, 0)
        acc = None
        for a, f in enumerate(self.factors):
            view = [1] * nd
            view[a] = kshape[a]
            term = f[:, :, lo:hi].reshape(B, H, hi - lo, *view)
            acc = term if acc is None else acc + term
        dt = dtype or f0.dtype
        out = torch.zeros(B, H, stop - start, self.k_layout.num_tokens, dtype=dt, device=f0.device)
        if hi > lo:
            out[:, :, (lo + pq) - start :, pk:] = acc.expand(B, H, hi - lo, *kshape).reshape(B, H, hi - lo, -1).to(dt)
        return out

    def key_onehot(self, dtype, device) -> torch.Tensor:
        """``(Nk, sum_a K_a)``: row m has a 1 at each axis' coordinate of key m (zeros for prefix keys)."""
        kshape = self.k_layout.shape
        idx = torch.arange(math.prod(kshape), device=device)
        cols, coords, stride = [], [], 1
        for s in reversed(kshape):
            coords.append((idx // stride) % s)
            stride *= s
        coords = coords[::-1]
        for a, s in enumerate(kshape):
            cols.append(F.one_hot(coords[a], s))
        oh = torch.cat(cols, dim=-1).to(dtype)
        if self.k_layout.num_prefix:
            oh = torch.cat([oh.new_zeros(self.k_layout.num_prefix, oh.shape[1]), oh], dim=0)
        return oh


def _check(q, k, v):
    for n, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"sdpa: {n} must be a 4-D tensor (B, heads, N, D), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias=None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Attention ``softmax(scale·q·kᵀ + bias)·v``; ``q, k, v (B, heads, N, D)`` -> ``(B, heads, Nq, Dv)``."""
    if impl not in SDPA_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {SDPA_IMPLS}")
    _check(q, k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if isinstance(bias, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, scale=scale)
    if not isinstance(bias, DecomposedBias):
        raise TypeError(f"bias must be None, a tensor or a DecomposedBias, got {type(bias).__name__}")
    bias.q_layout.check_tokens(q.shape[-2], "sdpa: q")
    bias.k_layout.check_tokens(k.shape[-2], "sdpa: k")
    if impl == "auto":
        impl = "fold"
    if impl == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.dense(q.dtype), dropout_p=dropout_p,
                                              scale=scale)
    if impl == "chunked":
        outs = []
        nq = q.shape[-2]
        for s in range(0, nq, chunk_size):
            e = min(s + chunk_size, nq)
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=bias.dense_rows(s, e, q.dtype),
                                                       dropout_p=dropout_p, scale=scale))
        return torch.cat(outs, dim=2)
    # fold: extra q columns carry the factors, extra k columns the one-hot key coordinates
    B, H, Nq, D = q.shape
    rel = torch.cat([f.to(q.dtype) for f in bias.factors], dim=-1)  # (B, H, Nq_grid, sumK)
    if bias.q_layout.num_prefix:
        rel = F.pad(rel, (0, 0, bias.q_layout.num_prefix, 0))
    oh = bias.key_onehot(k.dtype, k.device)  # (Nk, sumK)
    q2 = torch.cat([q * scale, rel], dim=-1)
    k2 = torch.cat([k, oh.expand(B, H, *oh.shape)], dim=-1)
    return F.scaled_dot_product_attention(q2, k2, v, dropout_p=dropout_p, scale=1.0)
