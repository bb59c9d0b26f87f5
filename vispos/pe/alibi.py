"""ALiBi on image and video grids (``alibi``): attention bias ``-m_h * distance(p_i, p_j)``, one slope per head.

* :func:`alibi_slopes` -- ALiBi's geometric slopes (Press et al. 2022, ofirpress/attention_with_linear_biases
  ``get_slopes``): for ``n`` a power of two ``m_h = 2^(-8h/n)``, ``h = 1..n``; otherwise the ``2^floor(log2 n)``
  sequence followed by every other slope of the next power of two.
* :func:`alibi_factors` -- the **Manhattan** form ``-m_h sum_a |p_a(i) - p_a(j)|`` as per-axis factors of a
  :class:`vispos.ops.attention.DecomposedBias` (``(B, heads, Nq, K_a)`` per axis): no ``N x N`` matrix is built
  (``sdpa`` folds the factors into extra q / k columns).
* :func:`alibi_dense` -- the **Euclidean** form ``-m_h ||p(i) - p(j)||_2`` (CROMA's 2D-ALiBi) as a dense
  ``(1, heads, N, N)`` bias. Memory note: a Euclidean distance does not split into per-axis terms, so this form
  holds ``heads * N^2`` floats per call (``N = 4096`` tokens, 12 heads: 805 MB in float32) and attention runs on
  SDPA's masked path; use ``distance="manhattan"`` for large grids.

Prefix tokens (class, registers) get no bias, in either role. Coordinates are the grid indices (or explicit layout
positions) times ``axis_scale`` per axis (e.g. to weigh time against space in 3D).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from ..grid import GridLayout, as_layout, grid_coords
from ..ops.attention import DecomposedBias
from ..utils.checks import check_float_tensor
from .base import PositionalEmbedding
from .registry import register_family

__all__ = ["ALIBI_DISTANCES", "alibi_slopes", "alibi_factors", "alibi_dense", "ALiBi"]

ALIBI_DISTANCES = ("manhattan", "euclidean")


def alibi_slopes(num_heads: int) -> List[float]:
    """ALiBi's per-head slopes (a geometric sequence; see the module docstring)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"ALiBi needs a positive int num_heads, got {num_heads!r}")

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    n0 = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(n0) + power_of_two(2 * n0)[0::2][: num_heads - n0]


def _axis_values(layout: GridLayout, axis_scale: Sequence[float], device) -> List[torch.Tensor]:
    """Per-axis 1-D coordinates (index or explicit positions) times the axis scale, float64."""
    positions = layout.positions or (None,) * layout.ndim
    out = []
    for s, p, w in zip(layout.shape, positions, axis_scale):
        v = torch.arange(s, dtype=torch.float64, device=device) if p is None else \
            torch.tensor(p, dtype=torch.float64, device=device)
        out.append(v * float(w))
    return out


def alibi_factors(slopes: torch.Tensor, q_layout: GridLayout, k_layout: Optional[GridLayout] = None,
                  axis_scale: Optional[Sequence[float]] = None, batch: int = 1,
                  dtype: torch.dtype = torch.float32) -> DecomposedBias:
    """Manhattan ALiBi as a :class:`DecomposedBias`: factor ``a`` is ``-m_h |c_a(i) - c_a(k)|``,
    ``(batch, heads, prod(q_grid), K_a)`` (expanded over the batch, not copied)."""
    q_layout = as_layout(q_layout)
    k_layout = q_layout if k_layout is None else as_layout(k_layout)
    if k_layout.ndim != q_layout.ndim:
        raise ValueError(f"alibi: key grid {k_layout.shape} and query grid {q_layout.shape} differ in rank")
    scale = [1.0] * q_layout.ndim if axis_scale is None else list(axis_scale)
    dev = slopes.device
    qv, kv = _axis_values(q_layout, scale, dev), _axis_values(k_layout, scale, dev)
    nd = q_layout.ndim
    m = slopes.to(torch.float64)[:, None, None]
    factors = []
    for a in range(nd):
        # query coordinate along axis a for every grid query (row-major), against every key index along a
        view = [1] * nd
        view[a] = q_layout.shape[a]
        qa = qv[a].reshape(view).expand(*q_layout.shape).reshape(-1)  # (Nq,)
        f = -m * (qa[:, None] - kv[a][None, :]).abs()[None]  # (heads, Nq, K_a)
        factors.append(f.to(dtype)[None].expand(batch, *f.shape))
    return DecomposedBias(factors, q_layout, k_layout)


def alibi_dense(slopes: torch.Tensor, layout: GridLayout, distance: str = "manhattan",
                axis_scale: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full bias ``(1, heads, N, N)`` (prefix rows / columns zero) for either distance (reference)."""
    layout = as_layout(layout)
    if distance not in ALIBI_DISTANCES:
        raise ValueError(f"unknown ALiBi distance {distance!r}; expected one of {ALIBI_DISTANCES}")
    scale = [1.0] * layout.ndim if axis_scale is None else list(axis_scale)
    c = grid_coords(layout, "index", device=slopes.device, dtype=torch.float64)
    if layout.positions is None:
        c = c * torch.tensor(scale, dtype=torch.float64, device=c.device)
    else:
        axes = _axis_values(layout, scale, slopes.device)
        c = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=-1)
    diff = c[:, None, :] - c[None, :, :]
    d = diff.abs().sum(-1) if distance == "manhattan" else diff.pow(2).sum(-1).sqrt()
    bias = -slopes.to(torch.float64)[:, None, None] * d[None]
    P = layout.num_prefix
    out = torch.zeros(1, slopes.numel(), layout.num_tokens, layout.num_tokens, dtype=dtype, device=slopes.device)
    out[0, :, P:, P:] = bias.to(dtype)
    return out


class ALiBi(PositionalEmbedding):
    """2D / 3D ALiBi (``bias`` hook): ``-m_h * distance`` between patch positions, slopes :func:`alibi_slopes`.

    Args:
        num_heads: heads (one slope each).
        ndim: grid rank (2 or 3).
        distance: ``"manhattan"`` (default; a :class:`DecomposedBias`, no ``N x N`` matrix) or ``"euclidean"``
            (CROMA; a dense ``(1, heads, N, N)`` tensor -- see the module's memory note).
        axis_scale: per-axis multiplier of the coordinates (default 1 on every axis).
        slopes: explicit per-head slopes (default ALiBi's geometric sequence).

    No parameters: the slopes are fixed (a non-persistent buffer), so checkpoints hold nothing for this PE and any
    grid (larger, rectangular, longer video) works without resizing -- the property CROMA reports (17.6x larger
    images).
    """

    name = "alibi"
    family = "relative"
    description = "2D/3D ALiBi: bias -m_h * distance per head, geometric slopes; Manhattan decomposed, Euclidean dense"
    hooks = frozenset({"bias"})

    def __init__(self, num_heads: int, ndim: int = 2, distance: str = "manhattan",
                 axis_scale: Optional[Sequence[float]] = None, slopes: Optional[Sequence[float]] = None,
                 device=None, dtype=None):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"alibi works on 2D or 3D grids, got ndim={ndim!r}")
        if distance not in ALIBI_DISTANCES:
            raise ValueError(f"unknown ALiBi distance {distance!r}; expected one of {ALIBI_DISTANCES}")
        sl = alibi_slopes(num_heads) if slopes is None else [float(v) for v in slopes]
        if len(sl) != num_heads or not all(v > 0 and math.isfinite(v) for v in sl):
            raise ValueError(f"slopes must be {num_heads} positive numbers (one per head), got {slopes!r}")
        if axis_scale is not None:
            axis_scale = tuple(float(v) for v in axis_scale)
            if len(axis_scale) != ndim or not all(v > 0 for v in axis_scale):
                raise ValueError(f"axis_scale must give {ndim} positive numbers (one per axis), got {axis_scale!r}")
        self.num_heads, self.distance, self.axis_scale = num_heads, distance, axis_scale
        self.ndims = (ndim,)
        self._slopes = tuple(sl)
        self.register_buffer("slopes", torch.tensor(sl, dtype=torch.float64, device=device), persistent=False)

    def init_non_persistent_buffers(self) -> None:
        """Refill ``slopes`` after ``to_empty()`` (meta-device construction)."""
        self.slopes = torch.tensor(self._slopes, dtype=torch.float64, device=self.slopes.device)
        self.clear_cache()

    def attn_bias(self, q: torch.Tensor, layout, index: int = 0, k_layout: Optional[GridLayout] = None):
        """Bias for ``q (B, heads, N, head_dim)``: a :class:`DecomposedBias` (Manhattan) or a ``(1, heads, N, N)``
        tensor (Euclidean), in ``q``'s dtype. ``k_layout``: pooled keys (Manhattan only)."""
        layout = as_layout(layout)
        self.check_layout(layout)
        check_float_tensor(q, "alibi: q", self)
        if q.dim() != 4:
            raise ValueError(f"alibi: q must be (B, heads, N, head_dim), got {tuple(q.shape)}")
        if q.shape[1] != self.num_heads:
            raise ValueError(f"alibi: q has {q.shape[1]} heads, the slopes were built for {self.num_heads}")
        layout.check_tokens(q.shape[-2], "alibi: q")
        dt = q.dtype if q.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
        if self.distance == "manhattan":
            return alibi_factors(self.slopes, layout, k_layout, self.axis_scale, q.shape[0], dt)
        if k_layout is not None:
            raise ValueError("alibi: distance='euclidean' supports self-attention only (k_layout=None)")
        return self.cached(("dense", layout, str(q.device), dt),
                           lambda: alibi_dense(self.slopes.to(q.device), layout, "euclidean", self.axis_scale, dt))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, ndim={self.ndims[0]}, distance={self.distance!r}"


# ---- registry --------------------------------------------------------------------------------------------------
def build_alibi(*, num_heads=None, grid=None, ndim=None, device=None, dtype=None, **kwargs):
    if num_heads is None:
        raise ValueError("alibi needs num_heads= (one slope per head)")
    nd = len(grid) if grid is not None else (2 if ndim is None else ndim)
    return ALiBi(num_heads, nd, device=device, dtype=dtype, **kwargs)


register_family(ALiBi, build_alibi)
