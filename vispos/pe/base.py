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

import functools
import inspect
import os
from collections import OrderedDict
from dataclasses import replace
from typing import Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..grid import GridLayout, PackedLayout
from ..utils.checks import check_float_tensor

__all__ = ["HOOKS", "PositionalEmbedding", "PECombination", "check_tokens_3d", "packed_native",
           "set_table_cache_size", "get_table_cache_size", "DEFAULT_TABLE_CACHE_SIZE"]

HOOKS = ("token", "block", "attn_input", "qk", "bias", "value")


def check_tokens_3d(x: torch.Tensor, layout: GridLayout, what: str = "x", module=None) -> None:
    """Validate ``x (B, N, C)`` against a layout (floating point, rank, token count, and the batch size for a
    :class:`~vispos.grid.PackedLayout`; ``module``'s device)."""
    check_float_tensor(x, what, module)
    if x.dim() != 3:
        raise ValueError(f"{what} must have shape (B, N, C), got {tuple(x.shape)}")
    layout.check_tokens(x.shape[1], what)
    if isinstance(layout, PackedLayout):
        layout.check_batch(x.shape[0], what)


# ---- bound of the per-layout table caches ----------------------------------------------------------------------
#: entries per PE module when neither :func:`set_table_cache_size` nor ``VISPOS_TABLE_CACHE_SIZE`` says otherwise
DEFAULT_TABLE_CACHE_SIZE = 32


def _env_cache_size() -> int:
    raw = os.environ.get("VISPOS_TABLE_CACHE_SIZE")
    if raw is None or raw == "":
        return DEFAULT_TABLE_CACHE_SIZE
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"VISPOS_TABLE_CACHE_SIZE must be an int >= 0 (entries per PE module), got {raw!r}") from None
    if n < 0:
        raise ValueError(f"VISPOS_TABLE_CACHE_SIZE must be an int >= 0 (entries per PE module), got {raw!r}")
    return n


_TABLE_CACHE_SIZE = _env_cache_size()


def _check_cache_size(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be an int >= 0 (cached tables per PE module; 0 disables caching), got {n!r}")
    return n


def set_table_cache_size(n: int) -> int:
    """Bound every PE module's cache of derived tables to ``n`` entries (least recently used evicted first; ``0``
    disables caching). Applies to new entries of every module without its own ``table_cache_size``; returns the
    previous bound. Default :data:`DEFAULT_TABLE_CACHE_SIZE`, or the ``VISPOS_TABLE_CACHE_SIZE`` environment
    variable read at import."""
    global _TABLE_CACHE_SIZE
    old, _TABLE_CACHE_SIZE = _TABLE_CACHE_SIZE, _check_cache_size(n, "table cache size")
    return old


def get_table_cache_size() -> int:
    """The module-level bound set by :func:`set_table_cache_size` (or the environment / default)."""
    return _TABLE_CACHE_SIZE


def _strip_state(key):
    if isinstance(key, tuple):  # a layout's per-forward state must not live on in the cache
        return tuple(k.without_state() if isinstance(k, (GridLayout, PackedLayout)) else k for k in key)
    if isinstance(key, (GridLayout, PackedLayout)):
        return key.without_state()
    return key


# ---- PackedLayout: the generic per-sample path of every hook -----------------------------------------------------
#: hook methods and the position of their ``layout`` argument (after ``self``)
_LAYOUT_ARG = {"prepare": 1, "forward_tokens": 1, "forward_block": 1, "forward_attn_input": 1, "forward_qk": 2,
               "attn_bias": 1, "forward_value": 2}


def packed_native(fn):
    """Mark a hook method as handling :class:`~vispos.grid.PackedLayout` itself (a family's fast path); unmarked
    hooks of a subclass get the generic per-group path of :class:`PositionalEmbedding`."""
    fn._vispos_packed_native = True
    return fn


class _PackedPrepared:
    """What the generic :meth:`PositionalEmbedding.prepare` attaches to a PackedLayout: each group's prepared
    GridLayout (``{grid layout: prepared layout}``)."""

    __slots__ = ("layouts",)

    def __init__(self, layouts):
        self.layouts = layouts


def _group_runs(pe, layout: PackedLayout, device, use_prepared: bool = True):
    """``[(layout to call the single-grid hook with, batch indices tensor or None for all, tokens)]``: each group's
    layout as ``pe``'s generic :meth:`prepare` left it, else carrying the packed layout's state."""
    st = layout.state_of(pe)
    prepared = st.layouts if isinstance(st, _PackedPrepared) and use_prepared else None
    uni = layout.uniform
    groups = ((uni, None),) if uni is not None else layout.groups()
    out = []
    for g, idx in groups:
        if prepared is not None and g in prepared:
            run = prepared[g]
        elif layout.state:  # state other PEs' (or a family's own) prepare attached to the packed layout
            run = replace(g, state=tuple((o, v) for o, v in layout.state if not isinstance(v, _PackedPrepared)))
        else:
            run = g
        ix = None if idx is None else torch.tensor(idx, device=device, dtype=torch.long)
        out.append((run, ix, g.num_tokens))
    return out


def _take(t: torch.Tensor, ix, n: int, dim: int) -> torch.Tensor:
    """``t[ix]`` (batch rows) with the first ``n`` tokens along ``dim``."""
    if ix is not None:
        t = t.index_select(0, ix)
    return t.narrow(dim, 0, n)


def _put(out: torch.Tensor, ix, n: int, dim: int, val: torch.Tensor) -> None:
    """``out[ix, ..., :n, ...] = val`` in place (``out`` is a fresh clone, so autograd records it)."""
    sl = [slice(None)] * out.dim()
    sl[0] = ix if ix is not None else slice(None)
    sl[dim] = slice(0, n)
    out[tuple(sl)] = val.to(out.dtype)


def _packed_tokens(pe, fn, x, layout, *rest, dim: int = 1):
    """Generic per-group path of a hook that maps one tensor ``x`` (tokens along ``dim``) to the same shape."""
    runs = _group_runs(pe, layout, x.device)
    if len(runs) == 1 and runs[0][1] is None:
        return fn(pe, x, runs[0][0], *rest)
    out = x.clone()
    for run, ix, n in runs:
        _put(out, ix, n, dim, fn(pe, _take(x, ix, n, dim), run, *rest))
    return out


def _check_packed_tensor(t, layout: PackedLayout, what: str, dim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() <= dim:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what}: expected a tensor with tokens on dim {dim}, got {got}")
    layout.check_batch(t.shape[0], what)
    layout.check_tokens(t.shape[dim], what)


def _generic_prepare(pe, fn, x, layout):
    _check_packed_tensor(x, layout, f"{pe.name}.prepare: x", 1)
    prepared = {}
    for run, ix, n in _group_runs(pe, layout, x.device, use_prepared=False):
        prepared[run.without_state()] = fn(pe, _take(x, ix, n, 1), run)
    return layout.with_state(pe, _PackedPrepared(prepared))


def _generic_attn_bias(pe, fn, q, layout, *rest, **kw):
    """Per-group biases as one per-sample bias: a :class:`~vispos.ops.attention.PackedDecomposedBias` when every
    group returns a self-attention ``DecomposedBias`` (folded by ``sdpa``, no ``N x N`` tensor), else the
    per-sample blocks in one ``(B, heads, N, N)`` tensor (``DecomposedBias`` densified)."""
    _check_packed_tensor(q, layout, f"{pe.name}.attn_bias: q", 2)
    runs = _group_runs(pe, layout, q.device)
    if len(runs) == 1 and runs[0][1] is None:
        return fn(pe, q, runs[0][0], *rest, **kw)
    from ..ops.attention import DecomposedBias, PackedDecomposedBias, packed_bias_width

    B, H, N = q.shape[0], q.shape[1], q.shape[2]
    got = [(run, ix, n, fn(pe, _take(q, ix, n, 2), run, *rest, **kw)) for run, ix, n in runs]
    if all(b is None for *_, b in got):
        return None
    if all(isinstance(b, DecomposedBias) and b.q_layout.shape == b.k_layout.shape == run.shape
           and b.q_layout.num_prefix == b.k_layout.num_prefix == run.num_prefix for run, _, _, b in got):
        rel = q.new_zeros(B, H, layout.length, packed_bias_width(layout))
        for run, ix, _, b in got:
            f = torch.cat([t.to(q.dtype) for t in b.factors], dim=-1)  # (B_g or 1, H or 1, n_patches, sum(shape))
            rel[ix, :, :run.num_patches, :sum(run.shape)] = f.expand(len(ix), H, *f.shape[2:])
        return PackedDecomposedBias(rel, layout)
    out = None
    for _run, ix, n, b in got:
        if b is None:
            continue
        if isinstance(b, DecomposedBias):
            b = b.dense(q.dtype)
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"{pe.name}.attn_bias returned a {type(b).__name__}; the generic PackedLayout path "
                            f"takes tensors and DecomposedBias")
        if out is None:
            out = q.new_zeros(B, H, N, N)
        sub = b.to(q.dtype).expand(len(ix), H, n, n)
        out[ix[:, None, None, None], torch.arange(H, device=q.device)[None, :, None, None],
            torch.arange(n, device=q.device)[None, None, :, None],
            torch.arange(n, device=q.device)[None, None, None, :]] = sub
    return out


def _generic(name: str):
    if name == "prepare":
        return _generic_prepare
    if name == "attn_bias":
        return _generic_attn_bias

    def run(pe, fn, *args):
        if name in ("forward_tokens", "forward_block", "forward_attn_input"):
            x, layout, *rest = args
            _check_packed_tensor(x, layout, f"{pe.name}.{name}: x", 1)
            return _packed_tokens(pe, fn, x, layout, *rest, dim=1)
        if name == "forward_qk":
            q, k, layout, *rest = args
            _check_packed_tensor(q, layout, f"{pe.name}.forward_qk: q", 2)
            _check_packed_tensor(k, layout, f"{pe.name}.forward_qk: k", 2)
            runs = _group_runs(pe, layout, q.device)
            if len(runs) == 1 and runs[0][1] is None:
                return fn(pe, q, k, runs[0][0], *rest)
            qo, ko = q.clone(), k.clone()
            for g, ix, n in runs:
                a, b = fn(pe, _take(q, ix, n, 2), _take(k, ix, n, 2), g, *rest)
                _put(qo, ix, n, 2, a)
                _put(ko, ix, n, 2, b)
            return qo, ko
        # forward_value(out, v, layout, index)
        o, v, layout, *rest = args
        _check_packed_tensor(o, layout, f"{pe.name}.forward_value: out", 2)
        _check_packed_tensor(v, layout, f"{pe.name}.forward_value: v", 2)
        runs = _group_runs(pe, layout, o.device)
        if len(runs) == 1 and runs[0][1] is None:
            return fn(pe, o, v, runs[0][0], *rest)
        res = o.clone()
        for g, ix, n in runs:
            _put(res, ix, n, 2, fn(pe, _take(o, ix, n, 2), _take(v, ix, n, 2), g, *rest))
        return res

    return run


def _wrap_hook(name: str, fn):
    pos = _LAYOUT_ARG[name]
    generic = _generic(name)
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def hook(self, *args, **kwargs):
        layout = args[pos] if len(args) > pos else kwargs.get("layout")
        if not isinstance(layout, PackedLayout):
            return fn(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        vals = list(bound.arguments.values())[1:]
        params = list(sig.parameters.values())[1:]
        positional = [v for p, v in zip(params, vals) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        extra = {p.name: v for p, v in zip(params, vals) if p.kind == p.KEYWORD_ONLY}
        for p, v in zip(params, vals):
            if p.kind == p.VAR_KEYWORD:
                extra.update(v)
        if name == "attn_bias":
            return generic(self, fn, *positional, **extra)
        if extra:
            raise TypeError(f"{self.name}.{name}: keyword-only options are not supported with a PackedLayout")
        return generic(self, fn, *positional)

    hook._vispos_packed_wrapped = True
    return hook


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
    #: bound of this module's table cache (entries); ``None``: the module-level :func:`set_table_cache_size`
    table_cache_size: Optional[int] = None

    def __init_subclass__(cls, **kwargs):
        """Give every hook a subclass defines the generic :class:`~vispos.grid.PackedLayout` path (each group of
        samples with one grid runs the single-grid hook on its sub-batch; results are scattered back), unless the
        hook is marked :func:`packed_native`. A GridLayout goes straight to the hook as written."""
        super().__init_subclass__(**kwargs)
        for name in _LAYOUT_ARG:
            fn = cls.__dict__.get(name)
            if fn is None or not callable(fn) or getattr(fn, "_vispos_packed_native", False) \
                    or getattr(fn, "_vispos_packed_wrapped", False):
                continue
            setattr(cls, name, _wrap_hook(name, fn))

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
            self.__dict__["_cache"] = OrderedDict()

    # ---- per-layout cache of derived tables ------------------------------------------------------------------
    def cached(self, key, build):
        """``build()`` cached under ``key`` (e.g. ``(layout, str(device))``) for derived, non-learned tables.

        The cache (never in the state dict) is an LRU bounded to :attr:`table_cache_size` entries, or the
        module-level :func:`set_table_cache_size` bound when that is ``None``; it is emptied when the module moves
        (``.to``, ``.half``, ...) and by :meth:`clear_cache`. A layout's per-forward state is not part of the key.
        Under ``torch.compile`` the table is built inside the graph and the cache is neither read nor written, so
        tracing has no side effects and a second call does not recompile.
        """
        if torch.compiler.is_compiling():
            return build()
        key = _strip_state(key)
        cache = self._table_cache()
        hit = cache.get(key)
        if hit is None:
            hit = build()
            self._cache_put(key, hit)
        else:
            cache.move_to_end(key)
        return hit

    def _table_cache(self) -> OrderedDict:
        cache = self.__dict__.get("_cache")
        if not isinstance(cache, OrderedDict):
            cache = OrderedDict(cache or {})
            self.__dict__["_cache"] = cache
        return cache

    def cache_bound(self) -> int:
        """Entries this module's table cache keeps (its own :attr:`table_cache_size`, else the module-level bound)."""
        own = self.table_cache_size
        return _TABLE_CACHE_SIZE if own is None else _check_cache_size(own, f"{self.name}.table_cache_size")

    def _cache_put(self, key, value) -> None:
        """Store ``value`` under ``key`` and evict least recently used entries beyond :meth:`cache_bound`."""
        cache = self._table_cache()
        bound = self.cache_bound()
        if bound == 0:
            cache.clear()
            return
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > bound:
            cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Drop cached tables (call after changing options that the tables depend on)."""
        self.__dict__["_cache"] = OrderedDict()

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
    two that both add an attention bias. A :class:`~vispos.grid.PackedLayout` goes to each member as it is (each
    member runs its own per-sample path).
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

    @packed_native
    def prepare(self, x, layout):
        for pe in self.pes:
            layout = pe.prepare(x, layout)
        return layout

    @packed_native
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

    @packed_native
    def forward_block(self, x, layout, index):
        for pe in self.pes:
            if "block" in pe.hooks and index in pe.block_indices:
                x = pe.forward_block(x, layout, index)
        return x

    @packed_native
    def forward_attn_input(self, x, layout, index):
        for pe in self.pes:
            if "attn_input" in pe.hooks:
                x = pe.forward_attn_input(x, layout, index)
        return x

    @packed_native
    def forward_qk(self, q, k, layout, index=0):
        for pe in self.pes:
            if "qk" in pe.hooks:
                q, k = pe.forward_qk(q, k, layout, index)
        return q, k

    @packed_native
    def attn_bias(self, q, layout, index=0):
        for pe in self.pes:
            if "bias" in pe.hooks:
                return pe.attn_bias(q, layout, index)
        return None

    @packed_native
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
