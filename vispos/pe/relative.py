"""Decomposed relative position bias (MViTv2, SAM / ViTDet, SlowFast for video), 2D and 3D.

Per axis ``a`` a learned table ``R_a (2·max(q_a, k_a) − 1, head_dim)``. For query grid position ``i`` and key grid
position ``j`` the bias is

    ``bias[i, j] = Σ_a <q_i, R_a[idx_a(i_a, j_a)]>``,
    ``idx(i, j) = i·max(k/q, 1) − j·max(q/k, 1) + (k − 1)·max(q/k, 1)``  (float, truncated to long)

(the MViTv2 / SAM index rule, which also covers pooled keys with ``k != q``), added to the attention logits before
softmax. Reference quirk matched by default: the bias uses the **unscaled** q (the code, not the paper's
equation); ``scaled_q=True`` uses ``q / sqrt(head_dim)`` instead. Tables whose length differs from
``2·max(q, k) − 1`` are resized by 1-D linear interpolation (``align_corners=False``, as SAM and SlowFast do at
forward time). Prefix tokens get no bias.

Pure functions: :func:`resize_rel_pos`, :func:`get_rel_pos`, :func:`decomposed_rel_pos_factors`. Module:
:class:`DecomposedRelPos` (``rel_decomposed``), on the ``bias`` hook, returning a
:class:`vispos.ops.attention.DecomposedBias` (per-axis factors; no ``N×N`` matrix unless the attention asks for one).
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import GridLayout, PackedLayout, as_layout, check_grid_shape
from ..ops.attention import DecomposedBias, PackedDecomposedBias, packed_bias_width
from ..utils.checks import check_float_tensor
from .base import PositionalEmbedding, packed_native
from .registry import register_family

__all__ = ["rel_pos_length", "resize_rel_pos", "rel_pos_index", "get_rel_pos", "decomposed_rel_pos_factors",
           "DecomposedRelPos"]

_AXIS_NAMES = {2: ("h", "w"), 3: ("t", "h", "w")}


def rel_pos_length(q_size: int, k_size: int) -> int:
    """Table length needed for query size ``q_size`` and key size ``k_size``: ``2·max(q, k) − 1``."""
    return 2 * max(q_size, k_size) - 1


def resize_rel_pos(table: torch.Tensor, length: int, interpolate: bool = True) -> torch.Tensor:
    """A table ``(L, C)`` at ``length`` rows.

    ``interpolate=True``: 1-D linear ``F.interpolate(align_corners=False)`` (SAM / SlowFast), computed in float32
    (float64 kept) and cast back. ``interpolate=False``: a longer table is cut to its central ``length`` rows (offset
    ``d`` keeps its row: exact, no extrapolation); a shorter one raises ``ValueError``.
    """
    L = table.shape[0]
    if L == length:
        return table
    if not interpolate:
        if L < length:
            raise ValueError(f"relative position table has {L} rows but this grid needs {length} "
                             f"(2·max(q, k) − 1); enable interpolate=True or build the PE for the larger grid")
        if (L - length) % 2:
            raise ValueError(f"cannot centre-crop a table of {L} rows to {length} rows (odd difference)")
        s = (L - length) // 2
        return table[s:s + length]
    work = table if table.dtype == torch.float64 else table.float()
    out = F.interpolate(work.t()[None], size=length, mode="linear", align_corners=False)[0].t()
    return out.to(table.dtype)


def rel_pos_index(q_size: int, k_size: int, device=None) -> torch.Tensor:
    """The MViTv2 / SAM index ``(q_size, k_size)`` into a table of ``2·max(q, k) − 1`` rows (long)."""
    if torch.compiler.is_compiling() or isinstance(q_size, torch.SymInt) or isinstance(k_size, torch.SymInt):
        return _rel_pos_index(q_size, k_size, device)
    return _rel_pos_index_cached(int(q_size), int(k_size), str(torch.device(device or "cpu")))


@functools.lru_cache(maxsize=128)  # a few hundred bytes per entry; read-only
def _rel_pos_index_cached(q_size: int, k_size: int, device: str) -> torch.Tensor:
    return _rel_pos_index(q_size, k_size, device)


def _rel_pos_index(q_size, k_size, device=None) -> torch.Tensor:
    q_scale, k_scale = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    qc = torch.arange(q_size, device=device, dtype=torch.float32)[:, None] * q_scale
    kc = torch.arange(k_size, device=device, dtype=torch.float32)[None, :] * k_scale
    return ((qc - kc) + (k_size - 1) * k_scale).long()


def get_rel_pos(q_size: int, k_size: int, table: torch.Tensor, interpolate: bool = True) -> torch.Tensor:
    """Relative embeddings ``(q_size, k_size, C)`` for one axis (SAM ``get_rel_pos``)."""
    t = resize_rel_pos(table, rel_pos_length(q_size, k_size), interpolate)
    return t[rel_pos_index(q_size, k_size, table.device)]


def decomposed_rel_pos_factors(
    q: torch.Tensor,
    tables: Sequence[torch.Tensor],
    q_shape: Sequence[int],
    k_shape: Optional[Sequence[int]] = None,
    interpolate: bool = True,
) -> List[torch.Tensor]:
    """Per-axis bias factors from the grid queries.

    Args:
        q: grid queries ``(B, heads, prod(q_shape), head_dim)`` (no prefix tokens), already scaled or not as the
            caller wants (the reference uses unscaled q).
        tables: one table ``(L_a, head_dim)`` per axis, in grid axis order (``(h, w)`` or ``(t, h, w)``).
        q_shape, k_shape: query and key grids (``k_shape`` defaults to ``q_shape``).

    Returns ``[rel_a (B, heads, prod(q_shape), k_shape[a])]``: ``rel_a[b, n, i, j] = Σ_c q[b, n, i, c] ·
    R_a[idx(i_a, j), c]``. The bias of query ``i`` and key ``(j_0, j_1, ...)`` is ``Σ_a rel_a[..., i, j_a]``.
    """
    q_shape = check_grid_shape(tuple(q_shape), "q_shape")
    k_shape = q_shape if k_shape is None else check_grid_shape(tuple(k_shape), "k_shape")
    nd = len(q_shape)
    if nd not in (2, 3) or len(k_shape) != nd:
        raise ValueError(f"decomposed rel-pos needs 2D or 3D q and k grids of the same rank, got {q_shape}, {k_shape}")
    if len(tables) != nd:
        raise ValueError(f"need one table per axis ({nd}), got {len(tables)}")
    if q.dim() != 4 or q.shape[2] != math.prod(q_shape):
        raise ValueError(f"q must be (B, heads, {math.prod(q_shape)}, head_dim) for grid {q_shape}, "
                         f"got {tuple(q.shape)}")
    B, Hh, _, C = q.shape
    rq = q.reshape(B, Hh, *q_shape, C)
    letters = "thw"[3 - nd:]
    grid_sub = "".join(letters)
    out = []
    for a, (qs, ks, table) in enumerate(zip(q_shape, k_shape, tables)):
        if table.dim() != 2 or table.shape[1] != C:
            raise ValueError(f"table for axis {a} must be (L, head_dim={C}), got {tuple(table.shape)}")
        R = get_rel_pos(qs, ks, table, interpolate).to(q.dtype)  # (q_a, k_a, C)
        ax = letters[a]
        rel = torch.einsum(f"bn{grid_sub}c,{ax}kc->bn{grid_sub}k", rq, R)
        out.append(rel.reshape(B, Hh, math.prod(q_shape), ks))  # explicit sizes: B = 0 is valid
    return out


class DecomposedRelPos(PositionalEmbedding):
    """Decomposed relative position bias, one set of tables per attention layer (``bias`` hook).

    Args:
        head_dim: attention head dim (tables are ``(L, head_dim)``, shared over heads as in MViTv2 / SAM).
        depth: number of attention layers (``index`` selects the layer's tables).
        grid: training grid ``(H, W)`` or ``(T, H, W)``; tables get ``2·size − 1`` rows per axis.
        interpolate: resize tables linearly at other grids (default, SAM); ``False`` raises when a table is too short
            and centre-crops a longer one.
        scaled_q: use ``q / sqrt(head_dim)`` for the bias (the paper's equation). Default ``False`` matches the
            MViTv2 / SAM / SlowFast code (unscaled q), so their checkpoints load unchanged.
        init_std: 0 (default) initialises the tables to zero as SAM; > 0 uses truncated normal (MViTv2: 0.02).

    Parameters ``layers[l].rel_pos_h``, ``layers[l].rel_pos_w`` (and ``layers[l].rel_pos_t`` in 3D).
    """

    name = "rel_decomposed"
    family = "relative"
    description = "decomposed relative position bias q·R_h + q·R_w (+ q·R_t) per layer (MViTv2, SAM, SlowFast)"
    hooks = frozenset({"bias"})

    def __init__(self, head_dim: int, depth: int, grid: Sequence[int], interpolate: bool = True,
                 scaled_q: bool = False, init_std: float = 0.0, device=None, dtype=None):
        super().__init__()
        for nm, v in (("head_dim", head_dim), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"rel_decomposed needs a positive int {nm}, got {v!r}")
        if grid is None:
            raise ValueError("rel_decomposed needs the training grid (grid=(H, W) or (T, H, W)), got None")
        grid = check_grid_shape(tuple(grid), "grid")
        if len(grid) not in (2, 3):
            raise ValueError(f"rel_decomposed works on 2D or 3D grids, got {grid}")
        self.head_dim, self.depth, self.grid = head_dim, depth, grid
        self.interpolate, self.scaled_q = bool(interpolate), bool(scaled_q)
        self.init_std = float(init_std)
        self.ndims = (len(grid),)
        self.axis_names = _AXIS_NAMES[len(grid)]
        layers = []
        for _ in range(depth):
            m = nn.Module()
            for nm, s in zip(self.axis_names, grid):
                m.register_parameter(f"rel_pos_{nm}", nn.Parameter(
                    torch.zeros(2 * s - 1, head_dim, device=device, dtype=dtype or torch.float32)))
            layers.append(m)
        self.layers = nn.ModuleList(layers)
        self.reset_parameters()

    def param_block(self, name: str):
        """``layers.<i>.rel_pos_*`` belongs to block ``i`` (as timm's SAM / MViTv2 ``blocks.<i>.attn.rel_pos_*``)."""
        return self._indexed_block(name, "layers")

    def no_weight_decay(self):
        """Relative-position tables are excluded from weight decay (as timm's MViTv2 / SAM)."""
        return {n for n, _ in self.named_parameters() if "rel_pos" in n}

    def resize_state(self, name: str, tensor: torch.Tensor, host) -> Optional[torch.Tensor]:
        """A rel-pos table saved for another grid, resized to this one's rows (:func:`resize_rel_pos`)."""
        own = dict(self.named_parameters()).get(name)
        if own is None or tensor.dim() != 2 or tensor.shape[1] != own.shape[1]:
            return None
        host.log("checkpoint %s resized from %d to %d rows", name, tensor.shape[0], own.shape[0])
        return resize_rel_pos(tensor, own.shape[0])

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if self.init_std > 0:
                nn.init.trunc_normal_(p, std=self.init_std)
            else:
                nn.init.zeros_(p)

    def tables(self, index: int) -> Tuple[torch.Tensor, ...]:
        """Layer ``index``'s tables in grid axis order."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.depth:
            raise ValueError(f"layer index {index!r} out of range for rel_decomposed with depth {self.depth}")
        m = self.layers[index]
        return tuple(getattr(m, f"rel_pos_{nm}") for nm in self.axis_names)

    @packed_native
    def attn_bias(self, q: torch.Tensor, layout, index: int = 0, k_layout: Optional[GridLayout] = None):
        """Bias for ``q (B, heads, num_prefix + prod(grid), head_dim)`` (un-rotated, before any scaling).

        ``k_layout`` (optional) is the key layout when keys are pooled (MViTv2); default: self-attention, the same
        layout. Returns a :class:`DecomposedBias` with factors ``(B, heads, prod(q_grid), K_a)``.
        """
        layout = as_layout(layout)
        if isinstance(layout, PackedLayout):
            if layout.uniform is None:
                return self._packed_bias(q, layout, index, k_layout)
            layout = layout.uniform
        self.check_layout(layout)
        check_float_tensor(q, "rel_decomposed: q", self)
        if q.dim() != 4:
            raise ValueError(f"rel_decomposed: q must be (B, heads, N, head_dim), got {tuple(q.shape)}")
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"rel_decomposed: q has head dim {q.shape[-1]}, the tables were built for {self.head_dim}")
        layout.check_tokens(q.shape[-2], "rel_decomposed: q")
        k_layout = layout if k_layout is None else as_layout(k_layout)
        if k_layout.ndim != layout.ndim:
            raise ValueError(f"rel_decomposed: key grid {k_layout.shape} and query grid {layout.shape} differ in rank")
        qg = q[:, :, layout.num_prefix:]
        if self.scaled_q:
            qg = qg * self.head_dim ** -0.5
        factors = decomposed_rel_pos_factors(qg, self.tables(index), layout.shape, k_layout.shape, self.interpolate)
        return DecomposedBias(factors, layout, k_layout)

    def _packed_bias(self, q: torch.Tensor, layout: PackedLayout, index: int, k_layout) -> PackedDecomposedBias:
        """Per-sample factors of a PackedLayout (each group of samples with one grid computes its own, as alone),
        each sample's axes side by side in its own columns: a :class:`PackedDecomposedBias` that :func:`sdpa` folds
        with the per-sample one-hot key coordinates and the padding mask."""
        if k_layout is not None:
            raise ValueError("rel_decomposed: pooled keys (k_layout=) are not supported with a PackedLayout")
        self.check_layout(layout)
        check_float_tensor(q, "rel_decomposed: q", self)
        if q.dim() != 4:
            raise ValueError(f"rel_decomposed: q must be (B, heads, N, head_dim), got {tuple(q.shape)}")
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"rel_decomposed: q has head dim {q.shape[-1]}, the tables were built for {self.head_dim}")
        layout.check_tokens(q.shape[-2], "rel_decomposed: q")
        layout.check_batch(q.shape[0], "rel_decomposed: q")
        P = layout.num_prefix
        B, H, _, C = q.shape
        nd = layout.ndim
        tables = self.tables(index)
        out = q.new_zeros(B, H, layout.length, packed_bias_width(layout))
        letters = "thw"[3 - nd:]
        rel = {}  # (axis, size) -> (size, size, C): each table resized once per size, not once per group
        for g, idx in layout.groups():
            ix = torch.tensor(idx, device=q.device)
            n = g.num_patches
            qg = q.index_select(0, ix)[:, :, P:P + n]
            if self.scaled_q:
                qg = qg * self.head_dim ** -0.5
            rq = qg.reshape(len(idx), H, *g.shape, C)
            fs = []
            for a, s in enumerate(g.shape):  # decomposed_rel_pos_factors, sharing the resized tables
                R = rel.get((a, s))
                if R is None:
                    R = rel[(a, s)] = get_rel_pos(s, s, tables[a], self.interpolate).to(q.dtype)
                f = torch.einsum(f"bn{letters}c,{letters[a]}kc->bn{letters}k", rq, R)
                fs.append(f.reshape(len(idx), H, n, s))
            out[ix, :, :n, :sum(g.shape)] = torch.cat(fs, dim=-1)  # this grid's column layout
        return PackedDecomposedBias(out, layout)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, depth={self.depth}, grid={self.grid}, interpolate={self.interpolate}, "
                f"scaled_q={self.scaled_q}")


# ---- registry --------------------------------------------------------------------------------------------------
def build_rel_decomposed(*, dim=None, num_heads=None, depth=None, grid=None, head_dim=None, device=None, dtype=None,
                         **kwargs):
    if head_dim is None:
        if dim is None or num_heads is None:
            raise ValueError("rel_decomposed needs head_dim=, or dim= and num_heads=")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        head_dim = dim // num_heads
    if depth is None:
        raise ValueError("rel_decomposed needs depth= (one set of tables per layer)")
    return DecomposedRelPos(head_dim, depth, grid, device=device, dtype=dtype, **kwargs)


register_family(DecomposedRelPos, build_rel_decomposed)
