"""Layer-adaptive position embedding (LaPE, Yu et al., ICCV 2023), 2D and 3D.

No PE enters the residual stream. ``ω_0`` is a base APE's table for the current grid (learned ``ape`` resampled to
the grid -- resampling acts on the base table, before the chain -- or ``ape_sincos`` recomputed); every block ``l``
has its own LayerNorm and adds the PE to the normalised attention input only:

    ``ω_{l+1} = LN^PE_l(ω_l)``  (chained; ``sharing=True``: ``ω_{l+1} = LN^PE_l(ω_0)``)
    ``x = x + Attn(LN1_l(x) + ω_{l+1})``,  ``x = x + MLP(LN2_l(x))``

Hosts call :meth:`LaPE.forward_attn_input` on ``LN1_l(x)`` (the ``attn_input`` hook); the token hook is the identity.
Pure function: :func:`lape_chain`. Module: :class:`LaPE` (``lape``).

``init="zero"`` sets every ``LN^PE`` weight and bias to 0, so nothing is added at init and a model's output equals
the same model without PE. An init reproducing a pretrained APE model is not possible: that model adds the PE to the
residual stream (every later layer, the MLPs and the head see it), which LaPE never does.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import as_layout
from .base import PositionalEmbedding, check_tokens_3d
from .registry import build_pe, register_family

__all__ = ["lape_chain", "LaPE"]

LAPE_INITS = ("default", "zero")


def lape_chain(omega0: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
               upto: int, sharing: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """``ω_{upto+1}`` from ``ω_0 (.., N, C)``: LayerNorms ``0..upto`` chained (or only ``upto`` on ``ω_0`` when
    sharing). Returns a tensor of ``omega0``'s shape."""
    if not 0 <= upto < len(weights):
        raise ValueError(f"lape: layer index {upto} out of range for {len(weights)} layers")
    C = omega0.shape[-1]
    if sharing:
        return F.layer_norm(omega0, (C,), weights[upto], biases[upto], eps)
    w = omega0
    for i in range(upto + 1):
        w = F.layer_norm(w, (C,), weights[i], biases[i], eps)
    return w


class LaPE(PositionalEmbedding):
    """LaPE on the ``attn_input`` hook.

    Args:
        base: the source PE, a built :class:`~vispos.pe.absolute.AbsolutePE` / :class:`~vispos.pe.absolute.SinCosPE`.
            (The registry builder also accepts its name, ``"ape"`` or ``"ape_sincos"``.)
        depth: number of blocks (one LayerNorm each).
        sharing: ``LN_l(ω_0)`` at every layer instead of the chain.
        init: ``"default"`` (LayerNorm weight 1, bias 0, as the paper) or ``"zero"`` (weight and bias 0: the PE adds
            nothing at init, see the module doc).
        eps: LayerNorm epsilon (1e-6, as DeiT's norms).

    Parameters: ``base.*`` (e.g. ``base.pos_embed``) and ``norms[l].weight``, ``norms[l].bias`` (``2·C`` per block).
    Shapes: ``forward_attn_input(x, layout, l)`` with ``x (B, num_prefix + prod(grid), C)``.

    Hosts call :meth:`prepare` once per forward: it computes the whole chain (no ``O(depth²)`` recomputation) and
    attaches it to the layout that every layer's hook then receives, so the chain travels with the call (gradient
    checkpointing re-runs a block with its own forward's chain; concurrent forwards share nothing). Without a
    prepared layout (a direct call) ``ω_{l+1}`` is computed from ``ω_0``. Under ``torch.compile`` it is computed
    inline at every layer.
    """

    name = "lape"
    family = "lape"
    description = "LaPE: a base APE normalised by its own chained LayerNorm per block, added to the attention input only"
    list_source = ("base", ("ape", "ape_sincos"))  # in a PE list, the APE member becomes the base
    hooks = frozenset({"attn_input"})

    def __init__(self, base: PositionalEmbedding, depth: int, sharing: bool = False, init: str = "default",
                 eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        from .absolute import AbsolutePE, SinCosPE

        if not isinstance(base, (AbsolutePE, SinCosPE)):
            raise TypeError(f"lape: base must be a built 'ape' or 'ape_sincos' PE, got {type(base).__name__}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise ValueError(f"lape needs a positive int depth, got {depth!r}")
        if init not in LAPE_INITS:
            raise ValueError(f"unknown lape init {init!r}; expected one of {LAPE_INITS}")
        self.base = base
        self.dim = base.dim
        self.depth = depth
        self.sharing = bool(sharing)
        self.init = init
        self.eps = float(eps)
        self.ndims = tuple(base.ndims)
        self.norms = nn.ModuleList(nn.LayerNorm(self.dim, eps=self.eps, device=device, dtype=dtype)
                                   for _ in range(depth))
        self._init_norms()

    def param_block(self, name: str):
        """``norms.<l>.*`` belongs to block ``l``; the base PE's parameters to whatever the base says."""
        if name.startswith("base."):
            return self.base.param_block(name[len("base."):])
        return self._indexed_block(name, "norms")

    def reset_parameters(self) -> None:
        """Re-initialise the base PE and the per-layer norms (e.g. after ``to_empty`` from the meta device)."""
        self.base.reset_parameters()
        self._init_norms()

    def _init_norms(self) -> None:
        for n in self.norms:
            if self.init == "zero":
                nn.init.zeros_(n.weight)
            else:
                nn.init.ones_(n.weight)
            nn.init.zeros_(n.bias)

    def omega0(self, layout, batch_size: Optional[int] = None, dtype=None, device=None) -> torch.Tensor:
        """The base PE for every token, ``(1 or B, N, C)`` (prefix rows: the base's own, or zeros)."""
        return self.base.full_table(as_layout(layout), batch_size, dtype, device)

    def _weights(self):
        return [n.weight for n in self.norms], [n.bias for n in self.norms]

    def prepare(self, x: torch.Tensor, layout):
        """The chain ``[ω_1, ..., ω_depth]`` of this forward, computed once (one crop drawn for every layer with a
        ``crop_aug`` base in training) and attached to the layout the hooks of this forward receive. Under
        ``torch.compile`` nothing is attached and each layer computes its term inline."""
        layout = as_layout(layout)
        if torch.compiler.is_compiling():
            return layout
        self.check_layout(layout)
        check_tokens_3d(x, layout, "lape: x", self)
        dtype = self.norms[0].weight.dtype  # the chain runs in the PE's dtype; forward_attn_input casts to x's
        w0 = self.omega0(layout, x.shape[0], dtype, x.device)
        ws, bs = self._weights()
        chain, w = [], w0
        for i in range(self.depth):
            w = F.layer_norm(w0 if self.sharing else w, (self.dim,), ws[i], bs[i], self.eps)
            chain.append(w)
        return layout.with_state(self, (x.shape[0], dtype, tuple(chain)))

    def layer_pe(self, layout, index: int, batch_size: Optional[int] = None, dtype=None, device=None) -> torch.Tensor:
        """``ω_{index+1}``, ``(1 or B, N, C)``: from the chain :meth:`prepare` attached to ``layout``, else computed."""
        layout = as_layout(layout)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.depth:
            raise ValueError(f"lape: layer index {index!r} out of range for depth {self.depth}")
        prepared = layout.state_of(self)
        if prepared is not None and batch_size in (None, prepared[0]) and dtype in (None, prepared[1]):
            return prepared[2][index]
        if getattr(self.base, "crop_aug", False) and self.base.training:
            if not torch.compiler.is_compiling():
                raise ValueError("lape over an 'ape' with crop_aug in training draws one crop per forward: call "
                                 "layout = pe.prepare(x, layout) once per forward and hand that layout to every "
                                 "layer")
            raise ValueError("lape over an 'ape' with crop_aug cannot run under torch.compile in training: the "
                             "crop must be drawn once per forward and shared by all layers; compile in eval mode")
        ws, bs = self._weights()
        w0 = self.omega0(layout, batch_size, dtype, device)
        return lape_chain(w0, ws, bs, index, self.sharing, self.eps)

    def forward_attn_input(self, x: torch.Tensor, layout, index: int) -> torch.Tensor:
        """``x + ω_{index+1}`` on the normalised attention input ``x (B, num_prefix + prod(grid), C)``."""
        layout = as_layout(layout)
        self.check_layout(layout)
        check_tokens_3d(x, layout, "lape: x", self)
        if x.shape[-1] != self.dim:
            raise ValueError(f"lape: x has {x.shape[-1]} channels, this PE was built for dim={self.dim}")
        # the chain runs in the PE's own dtype (LayerNorm needs its input and weights alike), then meets x's dtype
        pe = self.layer_pe(layout, index, x.shape[0], self.norms[0].weight.dtype, x.device)
        return x + pe.to(x.dtype)

    def layer_pes(self, layout) -> List[torch.Tensor]:
        """``[ω_1, ..., ω_depth]`` for a layout (reference / inspection)."""
        w0 = self.omega0(layout)
        ws, bs = self._weights()
        return [lape_chain(w0, ws, bs, i, self.sharing, self.eps) for i in range(self.depth)]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, depth={self.depth}, sharing={self.sharing}, init={self.init!r}"


# ---- registry --------------------------------------------------------------------------------------------------
def build_lape(*, dim=None, num_heads=None, depth=None, grid=None, num_prefix=0, device=None, dtype=None,
               base: Union[str, PositionalEmbedding] = "ape", base_options: Optional[dict] = None, **kwargs):
    if depth is None:
        raise ValueError("lape needs depth= (one LayerNorm per block)")
    if isinstance(base, str):
        if base not in ("ape", "ape_sincos"):
            raise ValueError(f"lape: base must be 'ape' or 'ape_sincos' (or a built one), got {base!r}")
        base = build_pe(base, dim=dim, num_heads=num_heads, depth=depth, grid=grid, num_prefix=num_prefix,
                        device=device, dtype=dtype, **(base_options or {}))
    elif base_options:
        raise ValueError("lape: base_options apply only when base is given by name")
    if dim is not None and getattr(base, "dim", dim) != dim:
        raise ValueError(f"lape: base PE has dim {base.dim}, the host has dim {dim}")
    return LaPE(base, depth, device=device, dtype=dtype, **kwargs)


register_family(LaPE, build_lape)
