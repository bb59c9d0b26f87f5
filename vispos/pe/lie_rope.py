"""LieRE (``lie_rope``, Ostmeier et al., ICML 2025): rotations ``R(p) = exp(sum_i p_i A_i)`` from learned
skew-symmetric generators ``A_i``, one per grid axis, applied to q and k.

RoPE is the special case where the ``A_i`` are fixed, block-diagonal with ``2 x 2`` blocks: then they commute and
``R(p_q)^T R(p_k) = R(p_k - p_q)``, so scores depend only on offsets. LieRE learns dense generators (blocks of
``block_size`` channels), which need not commute: the score then depends on both positions, not only on their
offset. ComRoPE (:mod:`vispos.pe.comrope`) restricts the generators so they commute.

Shapes: per layer ``l``, axis ``i``, head ``h`` and block ``b`` a generator ``A[l, i, h, b]`` of size
``block_size x block_size`` (``head_dim = num_blocks * block_size``); for a token at ``p`` (coordinates of
:func:`vispos.grid.grid_coords`) ``R = matrix_exp(sum_i p_i A[l, i, h, b])`` rotates channels
``b*block_size .. (b+1)*block_size - 1`` of q and k. Prefix tokens are not rotated. The exponential runs in float64
(never lowered by autocast), the rotation in float32 or wider. Cost per layer: ``heads * N * num_blocks`` matrix
exponentials of ``b x b`` (a few ``b^3`` matmuls each) and ``heads * N * head_dim * b`` floats of rotations (float64)
-- with the dense default ``b = head_dim`` that is ``heads * N * head_dim^2 * 8`` bytes, e.g. 38 MB for ViT-S at
14x14 and 805 MB at 64x64; ``block_size=8`` divides it by ``head_dim / 8``.

Init (vispos' choice, stated): the generators start at axial RoPE -- pair ``(2j, 2j+1)`` of each block turns with
band ``base^(-2j'/d)`` on its axis -- plus ``N(0, init_noise)`` on every entry of the skew part, so training
starts from a working 2D / 3D RoPE.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..grid import as_layout, check_grid_shape, grid_coords
from ..utils.checks import check_float_tensor
from .base import PositionalEmbedding
from .registry import register_family

__all__ = ["GeneratorRoPE", "LieRE", "skew", "rope_init_generators"]


def skew(w: torch.Tensor) -> torch.Tensor:
    """The skew-symmetric part ``(W - W^T) / 2`` of square matrices ``(..., b, b)``."""
    return 0.5 * (w - w.transpose(-1, -2))


def rope_init_generators(head_dim: int, block_size: int, ndim: int, base: float) -> torch.Tensor:
    """Axial-RoPE generators ``(ndim, num_blocks, block_size, block_size)``: the rotary pairs ``(2j, 2j+1)`` of the
    head, numbered across blocks, are split into ``ndim`` contiguous groups of ``head_dim // (2 ndim)`` pairs (axis
    ``a`` owns group ``a``; leftover pairs start at zero) and pair ``j`` of group ``a`` gets ``+-base^(-2j/d_a)``
    (``d_a = 2 * pairs in the group``) off the diagonal."""
    nb = head_dim // block_size
    pairs = head_dim // 2
    per = pairs // ndim
    out = torch.zeros(ndim, nb, block_size, block_size, dtype=torch.float64)
    for a in range(ndim):
        for j in range(per):
            g = a * per + j  # global pair index
            blk, loc = divmod(2 * g, block_size)
            f = base ** (-2.0 * j / (2 * per))
            out[a, blk, loc + 1, loc] = f
            out[a, blk, loc, loc + 1] = -f
    return out


class GeneratorRoPE(PositionalEmbedding):
    """Shared machinery of LieRE and ComRoPE: ``R(p) = exp(sum_i p_i A_i)`` per layer, head and channel block.

    Subclasses define :meth:`generators` ``(index) -> (ndim, heads, num_blocks, b, b)`` (skew-symmetric).
    """

    hooks = frozenset({"qk"})
    _table_attrs = frozenset({"coords", "ref_shape"})

    def __init__(self, head_dim: int, depth: int, num_heads: int, ndim: int = 2, block_size: Optional[int] = None,
                 base: Optional[float] = None, init_noise: float = 0.02, coords: str = "index",
                 ref_shape: Optional[Sequence[float]] = None, train_shape: Optional[Sequence[int]] = None):
        super().__init__()
        for nm, v in (("head_dim", head_dim), ("depth", depth), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{self.name} needs a positive int {nm}, got {v!r}")
        if ndim not in (2, 3):
            raise ValueError(f"{self.name} works on 2D or 3D grids, got ndim={ndim!r}")
        block_size = head_dim if block_size is None else block_size
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2 or block_size % 2 or \
                head_dim % block_size:
            raise ValueError(f"{self.name}: block_size must be an even int >= 2 dividing head_dim={head_dim}, got "
                             f"{block_size!r}")
        if not (isinstance(init_noise, (int, float)) and init_noise >= 0):
            raise ValueError(f"init_noise must be a number >= 0, got {init_noise!r}")
        self.head_dim, self.depth, self.num_heads, self.block_size = head_dim, depth, num_heads, block_size
        self.num_blocks = head_dim // block_size
        self.ndims = (ndim,)
        self.base = float(base) if base is not None else (100.0 if ndim == 2 else 10000.0)
        self.init_noise = float(init_noise)
        from ..grid import COORD_MODES

        if coords not in COORD_MODES:
            raise ValueError(f"unknown coordinate mode {coords!r}; expected one of {COORD_MODES}")
        self.coords = coords
        self.train_shape = check_grid_shape(tuple(train_shape), "train_shape") if train_shape is not None else None
        self.ref_shape = tuple(ref_shape) if ref_shape is not None else self.train_shape
        if coords != "index" and self.ref_shape is None:
            raise ValueError(f"coordinate mode {coords!r} needs ref_shape= or train_shape=")

    def generators(self, index: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters()}

    def _check_index(self, index) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.depth:
            raise ValueError(f"layer index {index!r} out of range for {self.name} with depth {self.depth}")

    def rotations(self, layout, index: int = 0) -> torch.Tensor:
        """``R (heads, prod(grid), num_blocks, b, b)`` for layer ``index`` (orthogonal, det 1)."""
        layout = as_layout(layout)
        self.check_layout(layout)
        self._check_index(index)
        A = self.generators(index)  # (ndim, H, nb, b, b)
        # float64 (as RoPE angles): at coordinates ~16 a float32 exponential is off by ~1e-5; autocast cannot lower it
        A = A.to(torch.float64)
        c = self.cached(("coords", layout, str(A.device)),
                        lambda: grid_coords(layout, self.coords, self.ref_shape, device=A.device, dtype=A.dtype))
        with torch.autocast(A.device.type, enabled=False):
            gen = torch.einsum("na,ahkij->hnkij", c.to(A.dtype), A)  # sum_i p_i A_i (never a lowered matmul)
            return torch.linalg.matrix_exp(gen.contiguous())

    def forward_qk(self, q, k, layout, index: int = 0):
        layout = as_layout(layout)
        for nm, t in (("q", q), ("k", k)):
            check_float_tensor(t, f"{self.name}: {nm}", self)
            if t.dim() != 4 or t.shape[-1] != self.head_dim or \
                    t.shape[1] != self.num_heads:
                raise ValueError(f"{self.name}: {nm} must be (B, {self.num_heads}, N, {self.head_dim}), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            layout.check_tokens(t.shape[-2], f"{self.name}: {nm}")
        R = self.rotations(layout, index)
        P = layout.num_prefix

        def rot(x):
            xg = x[:, :, P:].unflatten(-1, (self.num_blocks, self.block_size))
            wide = torch.promote_types(x.dtype, torch.float32)
            with torch.autocast(x.device.type, enabled=False):
                y = torch.einsum("hnkij,bhnkj->bhnki", R.to(wide), xg.to(wide)).flatten(-2).to(x.dtype)
            return torch.cat([x[:, :, :P], y], dim=2) if P else y

        return rot(q), rot(k)

    def forward(self, q, k, layout, index: int = 0):
        """Rotate ``q, k (B, heads, N, head_dim)`` for ``layout``; returns ``(q, k)``."""
        return self.forward_qk(q, k, as_layout(layout), index)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, depth={self.depth}, num_heads={self.num_heads}, ndim={self.ndims[0]}, "
                f"block_size={self.block_size}")


class LieRE(GeneratorRoPE):
    """LieRE: dense learned skew-symmetric generators per layer, axis, head and block (see the module docstring).

    Args:
        head_dim, depth, num_heads: host geometry (``index`` in :meth:`forward_qk` selects the layer).
        ndim: grid rank (2 or 3).
        block_size: channels per generator block (default ``head_dim``: one dense generator per axis and head, as
            LieRE; ``2`` gives RoPE-Mixed's learned 2x2 rotations).
        base: band base of the RoPE init (100 in 2D, 1e4 in 3D); ``init_noise``: std of the random skew part.
        coords, ref_shape: coordinate mode (:data:`vispos.grid.COORD_MODES`; default ``index``).

    Parameter ``weight (depth, ndim, num_heads, num_blocks, b, b)``; the generators are ``skew(weight)``.
    """

    name = "lie_rope"
    family = "rope"
    description = "LieRE: rotations exp(sum_i p_i A_i) from learned skew-symmetric generators per layer and head"
    build_sets = ("train_shape",)  # the builder sets it from grid=

    def __init__(self, head_dim: int, depth: int, num_heads: int, ndim: int = 2, block_size: Optional[int] = None,
                 base: Optional[float] = None, init_noise: float = 0.02, coords: str = "index", ref_shape=None,
                 train_shape=None, device=None, dtype=None):
        super().__init__(head_dim, depth, num_heads, ndim, block_size, base, init_noise, coords, ref_shape,
                         train_shape)
        b = self.block_size
        self.weight = nn.Parameter(torch.empty(depth, ndim, num_heads, self.num_blocks, b, b, device=device,
                                               dtype=dtype or torch.float32))
        self.reset_parameters()

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        nd, b = self.ndims[0], self.block_size
        init = rope_init_generators(self.head_dim, b, nd, self.base)  # (ndim, nb, b, b), skew
        w = init[None, :, None].expand(self.depth, nd, self.num_heads, self.num_blocks, b, b).clone()
        # the init is skew, so skew(w) keeps it; noise on W gives skew noise of std init_noise / sqrt(2)
        w = w + torch.randn(w.shape, generator=generator, dtype=torch.float64) * self.init_noise * math.sqrt(2)
        with torch.no_grad():
            self.weight.copy_(w)
        self.clear_cache()

    def generators(self, index: int) -> torch.Tensor:
        """Layer ``index``'s skew-symmetric generators ``(ndim, heads, num_blocks, b, b)``."""
        self._check_index(index)
        return skew(self.weight[index])


# ---- registry --------------------------------------------------------------------------------------------------
def _geometry(name, dim, num_heads, depth, head_dim):
    if depth is None or num_heads is None:
        raise ValueError(f"{name} needs depth= and num_heads= (generators per layer and head)")
    if head_dim is None:
        if dim is None:
            raise ValueError(f"{name} needs head_dim=, or dim= and num_heads=")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        head_dim = dim // num_heads
    return head_dim


def build_lie_rope(*, dim=None, num_heads=None, depth=None, grid=None, head_dim=None, ndim=None, device=None,
                   dtype=None, **kwargs):
    hd = _geometry("lie_rope", dim, num_heads, depth, head_dim)
    nd = len(grid) if grid is not None else (2 if ndim is None else ndim)
    return LieRE(hd, depth, num_heads, nd, train_shape=grid, device=device, dtype=dtype, **kwargs)


register_family(LieRE, build_lie_rope)
