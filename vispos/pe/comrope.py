"""ComRoPE (``comrope``, Yu et al., CVPR 2025): rotations ``exp(sum_i p_i A_i)`` whose learned skew-symmetric
generators commute, so ``R(p_q)^T R(p_k) = R(p_k - p_q)`` and every score depends only on the offset (the "RoPE
equation"), at any grid.

Two commuting constructions, per layer, head and channel block of ``block_size``:

* ``mode="ld"`` (linearly dependent, default): ``A_i = s_i B`` -- one learned skew matrix ``B`` and a learned scalar
  ``s_i`` per axis. Multiples of one matrix commute.
* ``mode="ap"`` (axis partition): the block is cut into ``ndim`` sub-blocks of ``block_size / ndim`` channels and
  ``A_i`` is a learned dense skew matrix on sub-block ``i`` only. Generators on disjoint channels commute.

With ``block_size=2`` both reduce to RoPE with learned frequencies (``ld``: RoPE-Mixed; the axial RoPE bands are a
special case). Init (vispos' choice): the RoPE bands on the pairs of ``B`` / of each sub-block plus
``N(0, init_noise)`` skew noise; ``ld`` directions ``s`` are random unit vectors per block (as RoPE-Mixed's angles).
Machinery (shapes, prefix tokens, coordinates) as :class:`vispos.pe.lie_rope.GeneratorRoPE`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .lie_rope import GeneratorRoPE, _geometry, skew
from .registry import register_family

__all__ = ["COMROPE_MODES", "ComRoPE"]

COMROPE_MODES = ("ld", "ap")


def _band_skew(n: int, base: float, dtype=torch.float64) -> torch.Tensor:
    """``(n, n)`` skew matrix with pair ``j`` turning at ``base^(-2j/n)``."""
    out = torch.zeros(n, n, dtype=dtype)
    for j in range(n // 2):
        f = base ** (-2.0 * j / n)
        out[2 * j + 1, 2 * j], out[2 * j, 2 * j + 1] = f, -f
    return out


class ComRoPE(GeneratorRoPE):
    """ComRoPE with commuting generators (see the module docstring).

    Args:
        head_dim, depth, num_heads, ndim, base, init_noise, coords, ref_shape: as :class:`vispos.pe.lie_rope.LieRE`.
        mode: ``"ld"`` or ``"ap"``.
        block_size: channels per block (default 8 for ``ld``, ``4 * ndim`` for ``ap``; ``ap`` needs a multiple of
            ``2 * ndim``).

    Parameters: ``ld``: ``weight (depth, heads, num_blocks, b, b)`` (``B = skew(weight)``) and ``scales (depth, ndim,
    heads, num_blocks)``; ``ap``: ``weight (depth, ndim, heads, num_blocks, b/ndim, b/ndim)``.
    """

    name = "comrope"
    family = "rope"
    description = "ComRoPE: exp(sum_i p_i A_i) with learned commuting generators (linearly dependent or axis-partition)"
    build_sets = ("train_shape",)  # the builder sets it from grid=

    def __init__(self, head_dim: int, depth: int, num_heads: int, ndim: int = 2, mode: str = "ld",
                 block_size: Optional[int] = None, base: Optional[float] = None, init_noise: float = 0.02,
                 coords: str = "index", ref_shape=None, train_shape=None, device=None, dtype=None):
        if mode not in COMROPE_MODES:
            raise ValueError(f"unknown ComRoPE mode {mode!r}; expected one of {COMROPE_MODES}")
        if block_size is None:
            block_size = (8 if head_dim % 8 == 0 else 2) if mode == "ld" else 4 * ndim
        super().__init__(head_dim, depth, num_heads, ndim, block_size, base, init_noise, coords, ref_shape,
                         train_shape)
        b = self.block_size
        if mode == "ap" and b % (2 * ndim):
            raise ValueError(f"comrope mode 'ap' splits each block over {ndim} axes: block_size must be a multiple "
                             f"of {2 * ndim}, got {b}")
        self.mode = mode
        dt = dtype or torch.float32
        if mode == "ld":
            self.weight = nn.Parameter(torch.empty(depth, num_heads, self.num_blocks, b, b, device=device, dtype=dt))
            self.scales = nn.Parameter(torch.empty(depth, ndim, num_heads, self.num_blocks, device=device, dtype=dt))
        else:
            m = b // ndim
            self.weight = nn.Parameter(torch.empty(depth, ndim, num_heads, self.num_blocks, m, m, device=device,
                                                   dtype=dt))
        self.reset_parameters()

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        nd, b, nb, H, L = self.ndims[0], self.block_size, self.num_blocks, self.num_heads, self.depth
        noise = self.init_noise * math.sqrt(2)
        with torch.no_grad():
            if self.mode == "ld":
                # bands over the whole head, block k holding pairs k*b/2 .. (k+1)*b/2 - 1
                full = _band_skew(self.head_dim, self.base)
                blocks = torch.stack([full[k * b:(k + 1) * b, k * b:(k + 1) * b] for k in range(nb)])
                w = blocks[None, None].expand(L, H, nb, b, b).clone()
                w = w + torch.randn(w.shape, generator=generator, dtype=torch.float64) * noise
                self.weight.copy_(w)
                d = torch.randn(L, nd, H, nb, generator=generator, dtype=torch.float64)
                self.scales.copy_(d / d.norm(dim=1, keepdim=True))
            else:
                m = b // nd
                band = _band_skew(m, self.base)
                w = band.expand(L, nd, H, nb, m, m).clone()
                w = w + torch.randn(w.shape, generator=generator, dtype=torch.float64) * noise
                self.weight.copy_(w)
        self.clear_cache()

    def generators(self, index: int) -> torch.Tensor:
        """Layer ``index``'s commuting skew-symmetric generators ``(ndim, heads, num_blocks, b, b)``."""
        self._check_index(index)
        if self.mode == "ld":
            B = skew(self.weight[index])  # (H, nb, b, b)
            return self.scales[index][..., None, None] * B[None]
        nd, b = self.ndims[0], self.block_size
        m = b // nd
        sub = skew(self.weight[index])  # (ndim, H, nb, m, m)
        out = sub.new_zeros(nd, *sub.shape[1:3], b, b)
        for i in range(nd):
            out[i, ..., i * m:(i + 1) * m, i * m:(i + 1) * m] = sub[i]
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"


# ---- registry --------------------------------------------------------------------------------------------------
def build_comrope(*, dim=None, num_heads=None, depth=None, grid=None, head_dim=None, ndim=None, device=None,
                  dtype=None, **kwargs):
    hd = _geometry("comrope", dim, num_heads, depth, head_dim)
    nd = len(grid) if grid is not None else (2 if ndim is None else ndim)
    return ComRoPE(hd, depth, num_heads, nd, train_shape=grid, device=device, dtype=dtype, **kwargs)


register_family(ComRoPE, build_comrope)
