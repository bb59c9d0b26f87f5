"""The PE protocol: one base class, three hooks, and combinations.

A host model (timm ViT, :class:`vispos.models.VideoDiT`, ...) calls these hooks; a PE overrides the ones it uses
and lists them in ``hooks``. A model never knows which PE it carries.

========================= ============================================= =================================
hook                      call (shapes)                                 used by
========================= ============================================= =================================
``token``                 ``x = pe.forward_tokens(x, layout)``          APE, sin-cos APE, GLPE global
                          after patch embedding, ``x (B, N, C)``
``block``                 ``x = pe.forward_block(x, layout, i)``        PEG (after block 0), ...
                          after block ``i`` if ``i in pe.block_indices``
``attn_input``            ``x = pe.forward_attn_input(x, layout, i)``   LaPE (PE added after norm1)
                          on the normalised attention input
``qk``                    ``q, k = pe.forward_qk(q, k, layout, i)``     RoPE axial / mixed, VoPE
                          ``q, k (B, heads, N, head_dim)``
``bias``                  ``b = pe.attn_bias(q, layout, i)``            decomposed relative position
                          a :class:`vispos.ops.attention.DecomposedBias`
                          or a tensor broadcastable to ``(B, h, N, N)``
``value``                 ``o = pe.forward_value(o, v, layout, i)``     GLPE local (conv on V)
                          ``o, v (B, heads, N, head_dim)``
========================= ============================================= =================================

``layout`` is a :class:`vispos.grid.GridLayout`; prefix tokens are never rotated or biased unless a PE says so.
Once per forward, after the ``token`` hook, a host calls ``layout = pe.prepare(x, layout)`` and hands that layout to
every other hook of the forward, as an argument (never stored on a module): per-forward data a family shares
between layers (LaPE's chain) rides on it, so gradient checkpointing and concurrent forwards see their own.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..grid import GridLayout
from ..utils.checks import check_float_tensor

__all__ = ["HOOKS", "PositionalEmbedding", "PECombination", "check_tokens_3d"]

HOOKS = ("token", "block", "attn_input", "qk", "bias", "value")


def check_tokens_3d(x: torch.Tensor, layout: GridLayout, what: str = "x", module=None) -> None:
    """Validate ``x (B, N, C)`` against a layout (floating point, rank, token count; ``module``'s device)."""
    check_float_tensor(x, what, module)
    if x.dim() != 3:
        raise ValueError(f"{what} must have shape (B, N, C), got {tuple(x.shape)}")
    layout.check_tokens(x.shape[1], what)


class PositionalEmbedding(nn.Module):
    """Base class of every vispos PE.

    Class attributes:
        name: registry name (``"rope_axial"``, ...).
        hooks: the subset of :data:`HOOKS` this PE acts through.
        ndims: grid ranks supported (``(2, 3)`` for most).

    Every hook defaults to the identity, so hosts may call all of them unconditionally; hosts that care about speed
    check ``"qk" in pe.hooks`` etc. first.
    """

    name: str = "base"
    hooks: frozenset = frozenset()
    ndims: Tuple[int, ...] = (2, 3)

    # ---- identity defaults -------------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor, layout: GridLayout) -> GridLayout:
        """Called by a host once per forward, after the ``token`` hook, with the token sequence ``x (B, N, C)``;
        returns the layout every other hook of this forward receives. A family whose layer hooks share per-forward
        data (LaPE's chain of per-layer PEs, with one crop drawn per forward) computes it here and attaches it with
        :meth:`GridLayout.with_state`. Default: ``layout`` unchanged."""
        return layout

    def forward_tokens(self, x: torch.Tensor, layout: GridLayout) -> torch.Tensor:
        return x

    @property
    def block_indices(self) -> Tuple[int, ...]:
        """Blocks after which :meth:`forward_block` acts."""
        return ()

    def forward_block(self, x: torch.Tensor, layout: GridLayout, index: int) -> torch.Tensor:
        return x

    def forward_attn_input(self, x: torch.Tensor, layout: GridLayout, index: int) -> torch.Tensor:
        return x

    def forward_qk(
        self, q: torch.Tensor, k: torch.Tensor, layout: GridLayout, index: int = 0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def attn_bias(self, q: torch.Tensor, layout: GridLayout, index: int = 0):
        return None

    def forward_value(self, out: torch.Tensor, v: torch.Tensor, layout: GridLayout, index: int = 0) -> torch.Tensor:
        return out

    def forward(self, x: torch.Tensor, layout: GridLayout) -> torch.Tensor:
        """Token-level application (same as :meth:`forward_tokens`)."""
        return self.forward_tokens(x, layout)

    #: attributes the cached tables depend on: setting one empties the cache (e.g. ``rope.rules = ...``)
    _table_attrs: frozenset = frozenset()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in self._table_attrs and "_cache" in self.__dict__:
            self.__dict__["_cache"] = {}

    # ---- per-layout cache of derived tables ------------------------------------------------------------------
    def cached(self, key, build):
        """``build()`` cached under ``key`` (e.g. ``(layout, str(device))``) for derived, non-learned tables.

        The cache is a plain dict (never in the state dict), emptied when the module moves (``.to``, ``.half``,
        ...) and by :meth:`clear_cache`. Under ``torch.compile`` the table is built inside the graph and the cache is
        neither read nor written, so tracing has no side effects and a second call does not recompile.
        """
        if torch.compiler.is_compiling():
            return build()
        if isinstance(key, tuple):  # a layout's per-forward state must not live on in the cache
            key = tuple(k.without_state() if isinstance(k, GridLayout) else k for k in key)
        elif isinstance(key, GridLayout):
            key = key.without_state()
        cache = self.__dict__.setdefault("_cache", {})
        hit = cache.get(key)
        if hit is None:
            hit = build()
            cache[key] = hit
        return hit

    def clear_cache(self) -> None:
        """Drop cached tables (call after changing options that the tables depend on)."""
        self.__dict__["_cache"] = {}

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    # ---- helpers -----------------------------------------------------------------------------------------------
    def check_layout(self, layout: GridLayout) -> None:
        """Raise ``ValueError`` if this PE does not support the layout's grid rank."""
        if layout.ndim not in self.ndims:
            raise ValueError(
                f"PE {self.name!r} supports grids with {self.ndims} axes, got a {layout.ndim}-D grid {layout.shape}"
            )

    def members(self) -> Sequence["PositionalEmbedding"]:
        return (self,)

    # ---- what a family knows about a host's PE (see :mod:`vispos.pe.host`) -------------------------------------
    @classmethod
    def options_from_host(cls, host) -> dict:
        """Build options that fit a host (:class:`vispos.pe.host.HostPE`): defaults the user's options override
        (e.g. an axial RoPE takes the base and pairing of the host's rotary module). Default: none."""
        return {}

    def state_from_host(self, host, path: str) -> dict:
        """This PE's parameters (``{name: tensor}``, names relative to this module) from the host's own PE state,
        taking the roles it uses with ``host.take(role, path)`` and logging what it did with ``host.log``.
        ``path`` is this module's name in the host (for log lines). Default: nothing."""
        return {}

    def identity_state(self) -> dict:
        """Parameters (``{name: tensor}``) that make this PE the identity, for loading a host checkpoint that
        cannot contain them (e.g. PEG's zero convolution). Default: none (parameters stay as initialised)."""
        return {}

    def resize_state(self, name: str, tensor: torch.Tensor, host) -> Optional[torch.Tensor]:
        """``tensor``, a checkpoint value of this PE's parameter ``name`` saved at another grid, at this PE's
        shape (e.g. an APE table resampled, a rel-pos table resized); ``None`` if this PE cannot adapt it."""
        return None

    def no_weight_decay(self) -> set:
        """Names (relative to this module) of parameters an optimizer should not decay. Default: none."""
        return set()

    #: what :meth:`param_block` returns for a parameter shared by every block (e.g. RoPE-Mixed's ``freqs``)
    ALL_BLOCKS = "all"

    def param_block(self, name: str):
        """The block a parameter of this PE belongs to, for layer-wise lr decay: an int (a per-block table such as a
        rel-pos table or a LaPE norm goes with that block), ``None`` (acts before the blocks: the stem, e.g. an APE
        table) or :data:`ALL_BLOCKS` (one tensor used by every block; timm leaves such a parameter ungrouped, i.e.
        at the full learning rate, as it does EVA's ``rope.freqs``). ``name`` is relative to this module.
        Default: ``None`` for every parameter; families with per-block parameters override it."""
        return None

    @staticmethod
    def _indexed_block(name: str, container: str, blocks=None):
        """``int`` block of ``"<container>.<j>.*"`` (``blocks[j]`` if given), else ``None``."""
        parts = name.split(".")
        if len(parts) >= 2 and parts[0] == container and parts[1].isdigit():
            j = int(parts[1])
            return blocks[j] if blocks is not None else j
        return None

    def extra_repr(self) -> str:
        return f"hooks={sorted(self.hooks)}"


class PECombination(PositionalEmbedding):
    """Several PEs in one model, e.g. ``["ape", "rope_axial"]``: each hook runs its members in order.

    Raises ``ValueError`` for combinations that cannot share a head: two members that both rotate q/k, or
    two that both add an attention bias.
    """

    name = "combination"

    def __init__(self, pes: Iterable[PositionalEmbedding]):
        super().__init__()
        pes = list(pes)
        if not pes:
            raise ValueError("a PE combination needs at least one PE")
        for pe in pes:
            if not isinstance(pe, PositionalEmbedding):
                raise TypeError(f"combination members must be vispos PEs, got {type(pe).__name__}")
        for hook in ("qk", "bias"):
            users = [pe.name for pe in pes if hook in pe.hooks]
            if len(users) > 1:
                raise ValueError(
                    f"incompatible PE combination {[p.name for p in pes]}: {users} all use the attention "
                    f"'{hook}' hook of the same head; keep at most one of them"
                )
        self.pes = nn.ModuleList(pes)
        self.hooks = frozenset().union(*(pe.hooks for pe in pes))
        nd = set(pes[0].ndims)
        for pe in pes[1:]:
            nd &= set(pe.ndims)
        self.ndims = tuple(sorted(nd))
        self.name = "+".join(pe.name for pe in pes)

    def members(self):
        return tuple(self.pes)

    def param_block(self, name: str):
        """Delegates to the member that owns ``pes.<k>.<name>``."""
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != "pes" or not parts[1].isdigit():
            raise ValueError(f"{name!r} is not a parameter of a member of this combination (pes.<k>.<name>)")
        return self.pes[int(parts[1])].param_block(".".join(parts[2:]))

    def reset_parameters(self) -> None:
        """Re-initialise every member that has parameters, in member order (the order they were built in), so a
        combination built on the meta device, ``to_empty``'d and reset under a seed equals one built directly."""
        for pe in self.pes:
            if any(True for _ in pe.parameters()):
                if not hasattr(pe, "reset_parameters"):
                    raise TypeError(f"PE {pe.name!r} has parameters but no reset_parameters(); it cannot be "
                                    f"re-initialised after to_empty()")
                pe.reset_parameters()

    def prepare(self, x, layout):
        for pe in self.pes:
            layout = pe.prepare(x, layout)
        return layout

    def forward_tokens(self, x, layout):
        for pe in self.pes:
            if "token" in pe.hooks:
                x = pe.forward_tokens(x, layout)
        return x

    @property
    def block_indices(self):
        out = set()
        for pe in self.pes:
            out |= set(pe.block_indices)
        return tuple(sorted(out))

    def forward_block(self, x, layout, index):
        for pe in self.pes:
            if "block" in pe.hooks and index in pe.block_indices:
                x = pe.forward_block(x, layout, index)
        return x

    def forward_attn_input(self, x, layout, index):
        for pe in self.pes:
            if "attn_input" in pe.hooks:
                x = pe.forward_attn_input(x, layout, index)
        return x

    def forward_qk(self, q, k, layout, index=0):
        for pe in self.pes:
            if "qk" in pe.hooks:
                q, k = pe.forward_qk(q, k, layout, index)
        return q, k

    def attn_bias(self, q, layout, index=0):
        for pe in self.pes:
            if "bias" in pe.hooks:
                return pe.attn_bias(q, layout, index)
        return None

    def forward_value(self, out, v, layout, index=0):
        for pe in self.pes:
            if "value" in pe.hooks:
                out = pe.forward_value(out, v, layout, index)
        return out


def find_member(pe: PositionalEmbedding, cls) -> Optional[PositionalEmbedding]:
    """The first member of ``pe`` (itself or a combination member) that is an instance of ``cls``."""
    for m in pe.members():
        if isinstance(m, cls):
            return m
    return None


__all__ += ["find_member"]
