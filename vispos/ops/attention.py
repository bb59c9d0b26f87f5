"""Scaled dot-product attention with the biases vispos PEs produce.

:func:`sdpa` takes ``q, k, v (B, heads, N, D)`` and an optional bias:

* a tensor broadcastable to ``(B, heads, Nq, Nk)``: passed to ``F.scaled_dot_product_attention`` as a float mask;
* a :class:`DecomposedBias` (decomposed relative position, MViTv2/SAM): per-axis factors
  ``rel_a (B, heads, Nq_grid, K_a)`` whose sum over axes, indexed by each key's grid coordinate, is the bias.
  It is applied without materialising ``B·heads·Nq·Nk`` by default (``impl="fold"``): the factors become extra
  q columns and the key's one-hot grid coordinates extra k columns, so one SDPA call computes
  ``scale·q·k + rel_h[kh] + rel_w[kw] (+ rel_t[kt])`` exactly. ``impl="dense"`` builds the full mask (the
  reference), ``impl="chunked"`` builds it a block of queries at a time.
* a :class:`PackedDecomposedBias`: the same per-sample factors for a :class:`~vispos.grid.PackedLayout` batch
  (each sample its own grid), folded the same way with per-sample one-hot key columns.

``layout=PackedLayout(...)`` masks padding keys (``key_padding_bias``, additive ``finfo.min``), combined with any
bias; padding queries attend to the valid keys of their sample, so every output stays finite.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..grid import GridLayout, PackedLayout

__all__ = ["DecomposedBias", "PackedDecomposedBias", "packed_bias_width", "sdpa", "SDPA_IMPLS", "select_bias_impl"]

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
            out[:, :, (lo + pq) - start :, pk:] = acc.expand(B, H, hi - lo, *kshape).reshape(B, H, hi - lo, math.prod(kshape)).to(dt)
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



@dataclass
class PackedDecomposedBias:
    """Factored relative-position bias of a :class:`~vispos.grid.PackedLayout` batch (self-attention).

    Attributes:
        rel: ``(B, heads, layout.length, W)``: row ``i`` of sample ``b`` (its ``i``-th patch token) holds that
            token's per-axis factors in sample ``b``'s own column layout -- axis ``a``'s ``shape_b[a]`` columns (the
            bias towards keys at coordinate ``j`` of that axis) start at ``sum(shape_b[:a])`` -- so
            ``W = max_b sum(shape_b)``; rows of padding tokens and unused columns are zero.
        layout: the packed layout of queries and keys (prefix tokens get no bias, in either role).
    """

    rel: torch.Tensor
    layout: PackedLayout

    def key_onehot(self, dtype, device) -> torch.Tensor:
        """``(B, N, W)``: row m of sample b has a 1 at each axis' coordinate of key m in b's grid (in b's column
        layout, see :attr:`rel`); zeros for prefix and padding keys."""
        return _packed_onehot(self.layout.without_state(), self.rel.shape[-1], str(torch.device(device))).to(dtype)

    def dense(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The full bias ``(B, heads, N, N)``; zero rows/columns for prefix and padding tokens (reference)."""
        dt = dtype or self.rel.dtype
        rel = F.pad(self.rel.to(dt), (0, 0, self.layout.num_prefix, 0))
        oh = self.key_onehot(dt, self.rel.device)  # (B, N, W)
        return torch.einsum("bhqc,bkc->bhqk", rel, oh)


def packed_bias_width(layout: PackedLayout) -> int:
    """Columns ``W`` of a :class:`PackedDecomposedBias` for ``layout``: ``max_b sum(shape_b)``."""
    return max(sum(s) for s in layout.shapes)


#: one-hot key columns per (layout, width, device): an LRU bounded by the table-cache bound
#: (:func:`vispos.pe.base.set_table_cache_size`; 0 disables it), as the PEs' own per-layout tables
_ONEHOT_CACHE: "OrderedDict" = OrderedDict()


def _packed_onehot(layout: PackedLayout, width: int, device: str) -> torch.Tensor:
    from ..pe.base import get_table_cache_size

    key = (layout, width, device)
    hit = _ONEHOT_CACHE.get(key)
    if hit is not None:
        _ONEHOT_CACHE.move_to_end(key)
        return hit
    if width < packed_bias_width(layout):
        raise ValueError(f"PackedDecomposedBias: rel has {width} columns, the layout's grids need "
                         f"{packed_bias_width(layout)} (max over samples of sum(shape))")
    B, N, P = layout.batch_size, layout.num_tokens, layout.num_prefix
    out = torch.zeros(B, N, width)
    for g, idx in layout.groups():
        n = g.num_patches
        m = torch.arange(n)
        stride, offs = 1, [sum(g.shape[:a]) for a in range(g.ndim)]
        ix = torch.tensor(idx)
        for a in reversed(range(g.ndim)):
            c = (m // stride) % g.shape[a]
            stride *= g.shape[a]
            out[ix[:, None], (P + m)[None, :], (offs[a] + c)[None, :]] = 1.0
    out = out.to(device)
    bound = get_table_cache_size()
    if bound:
        _ONEHOT_CACHE[key] = out
    while len(_ONEHOT_CACHE) > bound:  # least recently used first
        _ONEHOT_CACHE.popitem(last=False)
    return out


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
    layout: Optional[PackedLayout] = None,
) -> torch.Tensor:
    """Attention ``softmax(scale·q·kᵀ + bias)·v``; ``q, k, v (B, heads, N, D)`` -> ``(B, heads, Nq, Dv)``.

    ``layout``: a :class:`~vispos.grid.PackedLayout` masks the padding keys of each sample (key-only mask: padding
    queries get finite outputs that valid tokens never see); a GridLayout or ``None`` masks nothing.
    """
    if impl not in SDPA_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {SDPA_IMPLS}")
    _check(q, k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    pad = None
    if isinstance(layout, PackedLayout):
        layout.check_batch(q.shape[0], "sdpa: q")
        layout.check_tokens(q.shape[-2], "sdpa: q")
        layout.check_tokens(k.shape[-2], "sdpa: k")
        if layout.uniform is None:
            pad = layout.key_padding_bias(q.dtype, q.device)
    elif layout is not None and not isinstance(layout, GridLayout):
        raise TypeError(f"sdpa: layout must be None, a GridLayout or a PackedLayout, got {type(layout).__name__}")
    if isinstance(bias, PackedDecomposedBias):
        if layout is not None and layout.without_state() != bias.layout.without_state():
            raise ValueError("sdpa: a PackedDecomposedBias must come with the same PackedLayout as layout=")
        bias.layout.check_tokens(q.shape[-2], "sdpa: q")
        bias.layout.check_batch(q.shape[0], "sdpa: q")
        if bias.layout.uniform is None:
            pad = bias.layout.key_padding_bias(q.dtype, q.device)
        return _fold_packed(q, k, v, bias, scale, dropout_p, pad, impl)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=pad, dropout_p=dropout_p, scale=scale)
    if isinstance(bias, torch.Tensor):
        mask = bias.to(q.dtype) if pad is None else bias.to(q.dtype) + pad
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if not isinstance(bias, DecomposedBias):
        raise TypeError(f"bias must be None, a tensor, a DecomposedBias or a PackedDecomposedBias, got "
                        f"{type(bias).__name__}")
    bias.q_layout.check_tokens(q.shape[-2], "sdpa: q")
    bias.k_layout.check_tokens(k.shape[-2], "sdpa: k")
    impl = select_bias_impl(q, bias, impl)
    if pad is not None:  # one grid's factors over a padded batch: the dense mask plus the padding
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.dense(q.dtype) + pad, dropout_p=dropout_p,
                                              scale=scale)
    if impl == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.dense(q.dtype), dropout_p=dropout_p,
                                              scale=scale)
    if impl == "chunked":
        return _chunked(q, k, v, bias, scale, dropout_p, chunk_size)
    return _fold(q, k, v, bias, scale, dropout_p, pad_v=q.device.type == "cpu")


def _fold_packed(q, k, v, bias: PackedDecomposedBias, scale, dropout_p, pad, impl):
    """:func:`_fold` for per-sample factors: ``[scale·q, rel]·[k, onehot_b]ᵀ`` plus the key padding mask;
    ``impl="dense"`` (or ``"chunked"``: the same dense mask here) adds :meth:`PackedDecomposedBias.dense`."""
    if impl in ("dense", "chunked"):
        mask = bias.dense(q.dtype)
        if pad is not None:
            mask = mask + pad
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    B, H, N, D = q.shape
    P = bias.layout.num_prefix
    rel = bias.rel.to(q.dtype)  # (B, H, length, W)
    oh = bias.key_onehot(k.dtype, k.device)  # (B, N, W)
    extra = (-(D + rel.shape[-1])) % 8
    rel = F.pad(rel, (0, extra, P, 0))
    if extra:
        oh = F.pad(oh, (0, extra))
    q2 = torch.cat([q * scale, rel.expand(B, H, *rel.shape[2:])], dim=-1)
    k2 = torch.cat([k, oh[:, None].expand(B, H, *oh.shape[1:])], dim=-1)
    dv = v.shape[-1]
    pad_v = q.device.type == "cpu"  # as _fold: CPU's flash kernel (which takes the mask) needs one head dim
    if (pad_v and dv < q2.shape[-1]) or (v.is_cuda and dv % 8):
        vp = F.pad(v, (0, (q2.shape[-1] if pad_v else dv + (-dv) % 8) - dv))
        return F.scaled_dot_product_attention(q2, k2, vp, attn_mask=pad, dropout_p=dropout_p, scale=1.0)[..., :dv]
    return F.scaled_dot_product_attention(q2, k2, v, attn_mask=pad, dropout_p=dropout_p, scale=1.0)


def _fold(q, k, v, bias, scale, dropout_p, pad_v: bool):
    """Extra q columns carry the factors (``rel``), extra k columns the one-hot key coordinates (``oh``):
    ``[scale·q, rel]·[k, oh]ᵀ = scale·q·kᵀ + bias`` in one SDPA call with ``scale=1``.

    ``pad_v``: zero-pad ``v`` to the folded head dim (and slice the output) so that the fused kernel applies. CPU
    SDPA only takes its flash kernel when q, k and v have one head dim; otherwise it falls back to the math path,
    which materialises ``B·heads·Nq·Nk`` (measured: 64×64 tokens, B1 H2, 306 MB peak without padding vs 15 MB with
    it). On CUDA the memory-efficient kernel accepts a different v head dim, so ``v`` is left alone (padded only to
    a multiple of 8 when needed). The folded q/k head dim is zero-padded to a multiple of 8 on every device.
    """
    B, H, Nq, D = q.shape
    rel = torch.cat([f.to(q.dtype) for f in bias.factors], dim=-1)  # (B, H, Nq_grid, sumK)
    if bias.q_layout.num_prefix:
        rel = F.pad(rel, (0, 0, bias.q_layout.num_prefix, 0))
    oh = bias.key_onehot(k.dtype, k.device)  # (Nk, sumK)
    # zero columns up to a multiple of 8: they add nothing to q·k, and the fused CUDA kernels need the head dim
    # divisible by 8 (fp16/bf16; 4 for fp32) -- e.g. 64 + 14 + 14 = 92 would otherwise drop to the math kernel
    extra = (-(D + rel.shape[-1])) % 8
    if extra:
        rel = F.pad(rel, (0, extra))
        oh = F.pad(oh, (0, extra))
    q2 = torch.cat([q * scale, rel.expand(q.shape[0], q.shape[1], *rel.shape[2:])], dim=-1)
    k2 = torch.cat([k, oh.expand(k.shape[0], k.shape[1], *oh.shape)], dim=-1)
    dv = v.shape[-1]
    if (pad_v and dv < q2.shape[-1]) or (v.is_cuda and dv % 8):
        vp = F.pad(v, (0, (q2.shape[-1] if pad_v else dv + (-dv) % 8) - dv))
        return F.scaled_dot_product_attention(q2, k2, vp, dropout_p=dropout_p, scale=1.0)[..., :dv]
    return F.scaled_dot_product_attention(q2, k2, v, dropout_p=dropout_p, scale=1.0)


def select_bias_impl(q: torch.Tensor, bias: "DecomposedBias", impl: str = "auto") -> str:
    """The path :func:`sdpa` takes for a :class:`DecomposedBias` (explicit and testable).

    ``auto`` -> ``fold`` on every device. Measured on the 2-core CPU (benchmarks/RESULTS.md, "relpos"; B1 H2 D64
    fp32, heavily loaded machine, so times are indicative): with ``v`` zero-padded to the folded head dim
    (:func:`_fold`) it never builds an ``N×N`` tensor -- 64×64 tokens forward: 30 MB peak vs 256 MB dense (0.12×) and
    34 MB chunked; 32×32 forward+backward: fold 0.52 s / 7 MB, dense 1.2 s / 24 MB, chunked 2.7 s / 12 MB (chunked
    recomputes its masks in the backward). Its forward-only time is 1.2-2.5× dense on CPU (the folded head dim
    triples the attention FLOPs), the price of not holding the bias. On CUDA the issue's measurement (H200, 64×64,
    B8 H12) puts fold at 1.77 ms / 0.35 GB vs dense 5.7 ms / 3.4 GB.
    ``chunked`` stays available as the bounded-memory mask path; ``dense`` is the reference.
    """
    if impl not in SDPA_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {SDPA_IMPLS}")
    return "fold" if impl == "auto" else impl


def _chunk_attn(qc, k, v, factors, bias, s, e, scale, dropout_p):
    b = DecomposedBias(list(factors), bias.q_layout, bias.k_layout)
    return F.scaled_dot_product_attention(qc, k, v, attn_mask=b.dense_rows(s, e, qc.dtype), dropout_p=dropout_p,
                                          scale=scale)


def _chunked(q, k, v, bias, scale, dropout_p, chunk_size):
    """Mask ``chunk_size`` query rows at a time. With autograd, each chunk is checkpointed (its mask rebuilt in the
    backward), so at most one ``(B, heads, chunk, Nk)`` block of the bias is alive, forward or backward."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    nq = q.shape[-2]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *bias.factors))
    if grad and dropout_p:
        raise ValueError("impl='chunked' with dropout recomputes chunks in the backward, which would draw new "
                         "dropout masks; use impl='fold' or 'dense' when training with attention dropout")
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device) if not grad else None
    outs = []
    for s in range(0, nq, chunk_size):
        e = min(s + chunk_size, nq)
        if grad:
            outs.append(checkpoint(_chunk_attn, q[:, :, s:e], k, v, tuple(bias.factors), bias, s, e, scale,
                                   dropout_p, use_reentrant=False))
        else:
            out[:, :, s:e] = _chunk_attn(q[:, :, s:e], k, v, bias.factors, bias, s, e, scale, dropout_p)
    return torch.cat(outs, dim=2) if grad else out
