"""Conditional position encoding: CPVT's positional encoding generator (PEG), 2D and 3D.

``y = DWConv(f) + f`` over the patch tokens reshaped to the grid (depthwise ``k x k`` Conv2d, or ``k x k x k`` Conv3d
for video as UniFormer, zero padding ``(k-1)/2``, with bias); prefix tokens (class, registers) pass through. The
zero padding at the borders is what lets the conv infer absolute position.

Pure functions: :func:`tokens_to_grid` / :func:`grid_to_tokens` (the row-major reshape shared by the conv-based PEs)
and :func:`apply_peg`. Module: :class:`PEG` (``peg``, block hook, after block 0 by default).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..grid import GridLayout, as_layout
from .base import PositionalEmbedding, check_tokens_3d
from .registry import register_family

__all__ = ["check_kernel_size", "tokens_to_grid", "grid_to_tokens", "apply_peg", "peg_init_std", "PEG"]


def check_kernel_size(k, what: str = "kernel_size") -> int:
    """A positive odd int (so zero padding ``(k-1)/2`` keeps the grid size), else ``ValueError``."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{what} must be an odd int, got {k!r}")
    if k <= 0 or k % 2 == 0:
        raise ValueError(f"{what} must be a positive odd int (padding (k-1)/2 keeps the grid), got {k}")
    return k


def _axes(ndim: int) -> str:
    """einops names of ``ndim`` grid axes: ``"g0 g1 ..."``."""
    return " ".join(f"g{i}" for i in range(ndim))


def tokens_to_grid(x: torch.Tensor, layout: GridLayout) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split ``x (B, N, C)`` into prefix ``(B, P, C)`` and the grid ``(B, C, *shape)`` (row-major)."""
    P = layout.num_prefix
    axes = _axes(len(layout.shape))
    sizes = {f"g{i}": s for i, s in enumerate(layout.shape)}
    return x[:, :P], rearrange(x[:, P:], f"b ({axes}) c -> b c {axes}", **sizes)


def grid_to_tokens(prefix: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`tokens_to_grid`: ``(B, P, C)``, ``(B, C, *shape)`` -> ``(B, P + prod(shape), C)``."""
    axes = _axes(g.dim() - 2)
    return torch.cat([prefix, rearrange(g, f"b c {axes} -> b ({axes}) c")], dim=1)


def apply_peg(x: torch.Tensor, layout: GridLayout, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """PEG on tokens: ``x (B, P + prod(grid), C)`` -> same shape.

    ``weight (C, 1, k, k)`` (2D) or ``(C, 1, k, k, k)`` (3D) is a depthwise kernel, ``bias (C,)`` or None. Patch
    tokens become ``conv(f) + f`` with zero padding ``(k-1)/2``; prefix tokens are returned unchanged.
    """
    layout = as_layout(layout)
    check_tokens_3d(x, layout, "peg: x")
    nd = layout.ndim
    if nd not in (2, 3):
        raise ValueError(f"PEG works on 2D or 3D grids, got {layout.shape}")
    C = x.shape[-1]
    if weight.dim() != nd + 2 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"peg: weight must be a depthwise kernel (C={C}, 1, k{', k' * (nd - 1)}) for a {nd}-D grid, "
                         f"got {tuple(weight.shape)}")
    k = check_kernel_size(weight.shape[-1], "peg kernel size")
    prefix, g = tokens_to_grid(x, layout)
    conv = F.conv2d if nd == 2 else F.conv3d
    y = conv(g, weight.to(g.dtype), None if bias is None else bias.to(g.dtype), padding=(k - 1) // 2, groups=C) + g
    return grid_to_tokens(prefix, y)


def peg_init_std(kernel_size: int, ndim: int) -> float:
    """CPVT / Twins init std ``sqrt(2 / fan_out)`` of a depthwise conv: ``sqrt(2 / k**ndim)`` (``sqrt(2/9)`` for 3x3)."""
    return math.sqrt(2.0 / kernel_size ** ndim)


class PEG(PositionalEmbedding):
    """CPVT positional encoding generator, on the ``block`` hook.

    Args:
        dim: channels ``C``.
        ndim: grid rank, 2 (Conv2d ``k x k``) or 3 (Conv3d ``k x k x k``).
        kernel_size: odd ``k`` (3).
        blocks: block indices after which a PEG acts (default ``(0,)``, CPVT; ``(0, 1, 2, 3, 4)`` for the ‡
            models). One conv per listed block (``convs[i]`` for ``blocks[i]``). ``forward_block`` is the identity
            at other indices.
        depth: number of blocks of the host, to validate ``blocks`` (optional).
        zero_init: zero weight and bias, so the PEG is exactly the identity at init (for inserting into a
            pretrained model). Default: CPVT's init, weight ``normal(0, sqrt(2 / k**ndim))``, bias 0.

    Shapes: ``forward_block(x, layout, index)`` with ``x (B, num_prefix + prod(grid), C)``.
    """

    name = "peg"
    family = "conditional"
    description = "CPVT PEG: depthwise conv + residual over the patch grid after block 0 (Conv3d for video)"
    hooks = frozenset({"block"})

    def __init__(self, dim: int, ndim: int = 2, kernel_size: int = 3, blocks: Sequence[int] = (0,),
                 depth: Optional[int] = None, zero_init: bool = False, device=None, dtype=None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"peg needs a positive int dim, got {dim!r}")
        if ndim not in (2, 3):
            raise ValueError(f"peg works on 2D or 3D grids, got ndim={ndim!r}")
        k = check_kernel_size(kernel_size)
        if isinstance(blocks, int):
            blocks = (blocks,)
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("peg needs at least one block index in blocks=")
        for b in blocks:
            if isinstance(b, bool) or not isinstance(b, int) or b < 0 or (depth is not None and b >= depth):
                rng = f"0..{depth - 1}" if depth is not None else ">= 0"
                raise ValueError(f"peg block indices must be ints in {rng}, got blocks={blocks}")
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"peg block indices must be distinct, got {blocks}")
        self.dim, self.kernel_size, self.zero_init = dim, k, bool(zero_init)
        self.ndims = (ndim,)
        self._blocks = blocks
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        # skip_init: the only random draw is reset_parameters' (so meta-device build + to_empty + reset == direct)
        self.convs = nn.ModuleList(
            torch.nn.utils.skip_init(conv, dim, dim, k, padding=(k - 1) // 2, groups=dim, bias=True,
                                     device=device if device is not None else torch.get_default_device(), dtype=dtype)
            for _ in blocks
        )
        self.reset_parameters()

    def param_block(self, name: str):
        """``convs.<j>.*`` belongs to the block it follows (``blocks[j]``)."""
        return self._indexed_block(name, "convs", self._blocks)

    @classmethod
    def options_from_host(cls, host) -> dict:
        """Converting pretrained weights: start as the identity (``zero_init``), so the host's output is kept."""
        return dict(zero_init=True) if host.convert else {}

    def identity_state(self) -> dict:
        """Zero convolutions: the PEG adds nothing."""
        return {n: torch.zeros_like(p) for n, p in self.named_parameters()}

    def reset_parameters(self) -> None:
        std = peg_init_std(self.kernel_size, self.ndims[0])
        for c in self.convs:
            if self.zero_init:
                nn.init.zeros_(c.weight)
            else:
                nn.init.normal_(c.weight, 0.0, std)
            nn.init.zeros_(c.bias)

    @property
    def block_indices(self) -> Tuple[int, ...]:
        return self._blocks

    def forward_block(self, x: torch.Tensor, layout, index: int) -> torch.Tensor:
        """``x (B, num_prefix + prod(grid), C)`` -> same; PEG after block ``index`` if listed, else identity."""
        layout = as_layout(layout)
        self.check_layout(layout)
        check_tokens_3d(x, layout, "peg: x", self)
        if x.shape[-1] != self.dim:
            raise ValueError(f"peg: x has {x.shape[-1]} channels, this PEG was built for dim={self.dim}")
        if index not in self._blocks:
            return x
        c = self.convs[self._blocks.index(index)]
        return apply_peg(x, layout, c.weight, c.bias)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ndim={self.ndims[0]}, kernel_size={self.kernel_size}, blocks={self._blocks}, "
                f"zero_init={self.zero_init}")


# ---- registry --------------------------------------------------------------------------------------------------
def build_peg(*, dim=None, depth=None, grid=None, ndim=None, device=None, dtype=None, **kwargs):
    if grid is not None and ndim is not None and ndim != len(grid):
        raise ValueError(f"peg: ndim={ndim} disagrees with grid {tuple(grid)}")
    nd = len(grid) if grid is not None else (2 if ndim is None else ndim)
    return PEG(dim, ndim=nd, depth=depth, device=device, dtype=dtype, **kwargs)


register_family(PEG, build_peg)
