"""ResFormer global-local positional embedding (GLPE), 2D and 3D.

* **Global** (``token`` hook): sin-cos of coordinates normalised to ``(0, 2π]`` over the grid, DETR style -- axis
  position ``i`` of ``n`` maps to ``c = (i + 1) / (n + eps) · 2π`` -- then a learned depthwise ``3x3`` conv; prefix
  tokens get zeros. Per axis block of ``d`` channels: channel ``2j`` is ``sin(c / t_{2j})``, ``2j+1`` is
  ``cos(c / t_{2j})``, ``t_k = temperature^(2⌊k/2⌋ / d)``. 2D: the ``y`` block then the ``x`` block (``dim/2``
  each). 3D: ``t`` (``dim/4``), ``y``, ``x`` (``3·dim/8`` each, the CogVideoX split), Conv3d. Rectangular
  grids are allowed (the reference code is square-only): each axis is normalised by its own length.
* **Local** (``value`` hook): per attention layer, a zero-initialised depthwise ``3x3`` (``3x3x3``) conv on the
  patch tokens of V, added to ``attn @ v``; one conv of ``head_dim`` channels shared by the heads (the reference) or
  one per head (``per_head=True``). Prefix outputs are untouched.

Pure functions: :func:`build_glpe_sincos`, :func:`apply_glpe_global`, :func:`apply_glpe_local`. Module:
:class:`GlobalLocalPE` (``glpe``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import as_layout, grid_coords
from ..utils.checks import check_float_tensor
from .base import PositionalEmbedding, check_tokens_3d
from .conditional import check_kernel_size, grid_to_tokens
from .registry import register_family

__all__ = ["glpe_axis_dims", "build_glpe_sincos", "apply_glpe_global", "apply_glpe_local", "GlobalLocalPE"]


def glpe_axis_dims(dim: int, ndim: int):
    """Channels per axis: 2D ``(dim/2, dim/2)`` (``dim % 4 == 0``); 3D ``(dim/4, 3dim/8, 3dim/8)`` (``dim % 16``)."""
    if ndim == 2:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 4:
            raise ValueError(f"2D GLPE needs dim divisible by 4 (two even axis blocks), got {dim!r}")
        return (dim // 2, dim // 2)
    if ndim == 3:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 16:
            raise ValueError(f"3D GLPE needs dim divisible by 16 (t: dim/4, y, x: 3dim/8 each), got {dim!r}")
        return (dim // 4, 3 * dim // 8, 3 * dim // 8)
    raise ValueError(f"GLPE works on 2D or 3D grids, got ndim={ndim!r}")


def build_glpe_sincos(layout, dim: int, temperature: float = 10000.0, eps: float = 1e-6, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The global part before its conv: ``(prod(grid), dim)`` for a grid ``(H, W)`` or ``(T, H, W)``.

    Coordinates ``(p + 1) / (n + eps) · 2π`` per axis (``p`` the index, or the layout's explicit position),
    so the last cell of every axis sits at ``2π`` (up to ``eps``) at any grid size. Float64, cast once.
    """
    layout = as_layout(layout)
    dims = glpe_axis_dims(dim, layout.ndim)
    p = grid_coords(layout, "index", device=device, dtype=torch.float64)  # (N, ndim)
    parts = []
    for a, (n, d) in enumerate(zip(layout.shape, dims)):
        c = (p[:, a] + 1.0) / (n + eps) * (2 * math.pi)
        k = torch.arange(d, dtype=torch.float64, device=p.device)
        t = float(temperature) ** (2 * torch.div(k, 2, rounding_mode="floor") / d)
        ang = c[:, None] / t[None, :]  # (N, d)
        emb = torch.stack([torch.sin(ang[:, 0::2]), torch.cos(ang[:, 1::2])], dim=-1).flatten(1)
        parts.append(emb)
    return torch.cat(parts, dim=1).to(dtype)


def apply_glpe_global(x: torch.Tensor, layout, table: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x (B, P + prod(grid), C) + [0 for prefix; DWConv(table) for patches]``.

    ``table (prod(grid), C)`` from :func:`build_glpe_sincos`; ``weight (C, 1, k, k[, k])`` depthwise, zero padding.
    """
    layout = as_layout(layout)
    check_tokens_3d(x, layout, "glpe: x")
    C = x.shape[-1]
    if table.shape != (layout.num_patches, C):
        raise ValueError(f"glpe: table must be ({layout.num_patches}, {C}), got {tuple(table.shape)}")
    k = check_kernel_size(weight.shape[-1], "glpe kernel size")
    g = table.to(x.dtype).t().reshape(1, C, *layout.shape)
    conv = F.conv2d if layout.ndim == 2 else F.conv3d
    g = conv(g, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=(k - 1) // 2, groups=C)
    pe = grid_to_tokens(g.new_zeros(1, layout.num_prefix, C), g)
    return x + pe


def apply_glpe_local(out: torch.Tensor, v: torch.Tensor, layout, weight: torch.Tensor,
                     bias: Optional[torch.Tensor], per_head: bool = False) -> torch.Tensor:
    """``out + DWConv(v)`` on patch tokens; ``out, v (B, heads, P + prod(grid), head_dim)``.

    ``per_head=False``: ``weight (head_dim, 1, k, ...)`` shared by all heads. ``per_head=True``:
    ``weight (heads·head_dim, 1, k, ...)``, channels ordered head-major. Prefix rows of ``out`` are unchanged.
    """
    layout = as_layout(layout)
    if v.dim() != 4 or out.shape[:3] != v.shape[:3]:
        raise ValueError(f"glpe: out and v must be (B, heads, N, head_dim) with equal B, heads, N, got "
                         f"{tuple(out.shape)} and {tuple(v.shape)}")
    layout.check_tokens(v.shape[2], "glpe: v")
    B, Hh, N, D = v.shape
    P = layout.num_prefix
    k = check_kernel_size(weight.shape[-1], "glpe local kernel size")
    vg = v[:, :, P:]  # (B, h, n, D)
    if per_head:
        g = vg.permute(0, 1, 3, 2).reshape(B, Hh * D, *layout.shape)
        groups = Hh * D
    else:
        g = vg.permute(0, 1, 3, 2).reshape(B * Hh, D, *layout.shape)
        groups = D
    if weight.shape[0] != groups:
        raise ValueError(f"glpe: local weight has {weight.shape[0]} channels, expected {groups} "
                         f"({'heads·head_dim' if per_head else 'head_dim'})")
    conv = F.conv2d if layout.ndim == 2 else F.conv3d
    y = conv(g, weight.to(v.dtype), None if bias is None else bias.to(v.dtype), padding=(k - 1) // 2, groups=groups)
    y = y.reshape(B, Hh, D, N - P).transpose(2, 3)  # (B, h, n, D); explicit n: B = 0 is valid
    return torch.cat([out[:, :, :P], out[:, :, P:] + y.to(out.dtype)], dim=2)


class GlobalLocalPE(PositionalEmbedding):
    """ResFormer GLPE: global sin-cos + conv at the token level, local conv on V in every attention layer.

    Args:
        dim: embedding width (divisible by 4 in 2D, 16 in 3D).
        num_heads, depth: attention heads and layers (one local conv per layer).
        ndim: 2 or 3.
        per_head: one local conv per head instead of one shared by the heads.
        temperature, eps: sin-cos base and the DETR normalisation epsilon.
        kernel_size: the global conv (3); local_kernel_size: the local conv (3). Odd.

    Parameters: ``global_conv`` (PyTorch's default init, as the reference) and ``local_convs[l]`` (zero-initialised,
    so the local part is exactly zero at init).
    """

    name = "glpe"
    family = "global_local"
    description = "ResFormer global-local PE: (0, 2π]-normalised sin-cos + conv, zero-init conv on V per layer"
    hooks = frozenset({"token", "value"})

    def __init__(self, dim: int, num_heads: int, depth: int, ndim: int = 2, per_head: bool = False,
                 temperature: float = 10000.0, eps: float = 1e-6, kernel_size: int = 3, local_kernel_size: int = 3,
                 device=None, dtype=None):
        super().__init__()
        glpe_axis_dims(dim, ndim)
        for nm, v in (("num_heads", num_heads), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"glpe needs a positive int {nm}, got {v!r}")
        if dim % num_heads:
            raise ValueError(f"glpe: dim {dim} is not divisible by num_heads {num_heads}")
        k, kl = check_kernel_size(kernel_size), check_kernel_size(local_kernel_size, "local_kernel_size")
        self.dim, self.num_heads, self.depth = dim, num_heads, depth
        self.head_dim = dim // num_heads
        self.per_head = bool(per_head)
        self.temperature, self.eps = float(temperature), float(eps)
        self.ndims = (ndim,)
        dd = dict(device=device, dtype=dtype)
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        dd["device"] = device if device is not None else torch.get_default_device()
        # skip_init: every random draw happens in reset_parameters (meta-device build + to_empty + reset == direct)
        self.global_conv = torch.nn.utils.skip_init(conv, dim, dim, k, padding=(k - 1) // 2, groups=dim, **dd)
        lc = dim if self.per_head else self.head_dim
        self.local_convs = nn.ModuleList(
            torch.nn.utils.skip_init(conv, lc, lc, kl, padding=(kl - 1) // 2, groups=lc, **dd) for _ in range(depth)
        )
        self.reset_parameters()

    def param_block(self, name: str):
        """``local_convs.<i>.*`` belongs to block ``i``; the global conv acts on the tokens (stem)."""
        return self._indexed_block(name, "local_convs")

    def reset_parameters(self) -> None:
        """Global conv: PyTorch's default conv init (as ResFormer); local convs: zeros."""
        self.global_conv.reset_parameters()
        self.reset_local()

    def reset_local(self) -> None:
        """Zero the local convs (the model then behaves as without them)."""
        for c in self.local_convs:
            nn.init.zeros_(c.weight)
            nn.init.zeros_(c.bias)

    def get_table(self, layout, device=None) -> torch.Tensor:
        """Cached :func:`build_glpe_sincos` for a layout, ``(prod(grid), dim)`` float32."""
        layout = as_layout(layout)
        return self.cached((layout, str(device)),
                           lambda: build_glpe_sincos(layout, self.dim, self.temperature, self.eps, device=device))

    def forward_tokens(self, x: torch.Tensor, layout) -> torch.Tensor:
        """``x (B, num_prefix + prod(grid), dim)`` -> ``x + global PE`` (prefix tokens unchanged)."""
        layout = as_layout(layout)
        self.check_layout(layout)
        check_tokens_3d(x, layout, "glpe: x", self)
        if x.shape[-1] != self.dim:
            raise ValueError(f"glpe: x has {x.shape[-1]} channels, this PE was built for dim={self.dim}")
        table = self.get_table(layout, x.device)
        return apply_glpe_global(x, layout, table, self.global_conv.weight, self.global_conv.bias)

    def forward_value(self, out: torch.Tensor, v: torch.Tensor, layout, index: int = 0) -> torch.Tensor:
        """``out + local conv(v)`` for layer ``index``; ``out, v (B, heads, N, head_dim)``."""
        layout = as_layout(layout)
        self.check_layout(layout)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.depth:
            raise ValueError(f"glpe: layer index {index!r} out of range for depth {self.depth}")
        check_float_tensor(out, "glpe: out", self)
        check_float_tensor(v, "glpe: v", self)
        if v.dim() != 4 or v.shape[1] != self.num_heads or v.shape[-1] != self.head_dim:
            raise ValueError(f"glpe: v must be (B, {self.num_heads}, N, {self.head_dim}), got {tuple(v.shape)}")
        c = self.local_convs[index]
        return apply_glpe_local(out, v, layout, c.weight, c.bias, self.per_head)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, depth={self.depth}, ndim={self.ndims[0]}, "
                f"per_head={self.per_head}")


# ---- registry --------------------------------------------------------------------------------------------------
def build_glpe(*, dim=None, num_heads=None, depth=None, grid=None, ndim=None, device=None, dtype=None, **kwargs):
    if dim is None or num_heads is None or depth is None:
        raise ValueError("glpe needs dim=, num_heads= and depth=")
    if grid is not None and ndim is not None and ndim != len(grid):
        raise ValueError(f"glpe: ndim={ndim} disagrees with grid {tuple(grid)}")
    nd = len(grid) if grid is not None else (2 if ndim is None else ndim)
    return GlobalLocalPE(dim, num_heads, depth, ndim=nd, device=device, dtype=dtype, **kwargs)


register_family(GlobalLocalPE, build_glpe)
