"""Registry of PE families: ``build_pe(name, ...)`` and ``list_pes()``; it lives with the families.

A family registers its class and builder with :func:`register_family`: the registry reads the metadata from the
class (one source) -- ``name``, ``family``, ``ndims``, ``hooks``, ``description``, ``build_sets`` and
``list_source`` (a member of a PE list this family takes as an option, e.g. LaPE's base APE).
A new family is one new file in :mod:`vispos.pe` (every module there is imported by the package). Function
builders can still be registered with :func:`register_pe`. Every builder receives the host's geometry as keyword
arguments -- ``dim`` (embedding width), ``num_heads``, ``depth``, ``grid`` (training grid shape, ``(H, W)`` or
``(T, H, W)``), ``num_prefix``, ``device``, ``dtype`` -- plus the family's own options, and returns a
:class:`vispos.pe.base.PositionalEmbedding`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .base import HOOKS, PECombination, PositionalEmbedding

__all__ = ["PEInfo", "register_family", "register_pe", "build_pe", "list_pes", "get_pe_info", "COMMON_ARGS",
           "option_names"]

COMMON_ARGS = ("dim", "num_heads", "depth", "grid", "num_prefix", "device", "dtype")


@dataclass(frozen=True)
class PEInfo:
    """What :func:`list_pes` tells about a family."""

    name: str
    family: str
    ndims: Tuple[int, ...]
    hooks: Tuple[str, ...]
    description: str
    builder: Callable = None
    #: the family's class (``None`` for a function builder registered with :func:`register_pe`)
    cls: Optional[type] = None
    #: options the builder accepts beyond its own signature (a class' ``__init__`` arguments)
    accepts: Optional[Tuple[str, ...]] = None
    #: ``(option, names)``: in a PE list, the member named one of ``names`` is built first and passed as ``option``
    list_source: Optional[Tuple[str, Tuple[str, ...]]] = None

    def as_row(self) -> dict:
        return dict(name=self.name, family=self.family, ndims=list(self.ndims), hooks=list(self.hooks),
                    description=self.description)


_REGISTRY: Dict[str, PEInfo] = {}


def register_pe(name: str, family: str, ndims: Sequence[int], hooks: Sequence[str], description: str):
    """Decorator registering ``builder(**common, **options) -> PositionalEmbedding`` under ``name``."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"PE name {name!r} is already registered")
        _REGISTRY[name] = PEInfo(name, family, tuple(ndims), tuple(hooks), description, fn)
        return fn

    return deco


def register_family(cls, builder: Callable):
    """Register a :class:`~vispos.pe.base.PositionalEmbedding` subclass under ``cls.name``, built by
    ``builder(*, dim, num_heads, depth, grid, num_prefix, device, dtype, **options)``.

    Read from the class (the one source of a family's metadata): ``name``, ``family``, ``ndims`` (grid ranks),
    ``hooks``, ``description``, ``build_sets`` (``__init__`` arguments the builder derives from the host geometry,
    not user options) and ``list_source``. The options the builder accepts are its own keywords and ``cls``'s
    ``__init__`` arguments. Returns ``cls``.
    """
    if not (isinstance(cls, type) and issubclass(cls, PositionalEmbedding)):
        raise TypeError(f"register_family decorates PositionalEmbedding subclasses, got {cls!r}")
    for attr in ("name", "family", "description"):
        if not isinstance(cls.__dict__.get(attr, getattr(cls, attr, None)), str) or not getattr(cls, attr):
            raise TypeError(f"{cls.__name__} needs a class attribute {attr!r} (a non-empty string) to be registered")
    if not callable(builder):
        raise TypeError(f"the builder of {cls.__name__} must be callable, got {builder!r}")
    if cls.name in _REGISTRY:
        raise ValueError(f"PE name {cls.name!r} is already registered")
    hooks = tuple(h for h in HOOKS if h in cls.hooks)
    sets = tuple(getattr(cls, "build_sets", ()))
    inits = []  # cls.__init__, and the parents' where it forwards **kwargs to them (VoPE -> AxialRoPE)
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__ and klass is not PositionalEmbedding:
            inits.append(klass.__init__)
            if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
                break
    accepts = tuple(n for n in option_names(builder, *inits) if n not in sets)
    _REGISTRY[cls.name] = PEInfo(cls.name, cls.family, tuple(cls.ndims), hooks, cls.description, builder, cls,
                                 accepts, getattr(cls, "list_source", None))
    return cls


def list_pes() -> List[PEInfo]:
    """Every registered PE: name, family, grid ranks (2 = images, 3 = video), hooks and a one-line description."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_pe_info(name: str) -> PEInfo:
    if not isinstance(name, str):
        raise TypeError(f"a PE name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown PE {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def option_names(*callables) -> Tuple[str, ...]:
    """Keyword parameters of ``callables`` (e.g. a PE class' ``__init__``), for ``builder.accepts``."""
    out = []
    for fn in callables:
        for p in inspect.signature(fn).parameters.values():
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in out:
                out.append(p.name)
    return tuple(out)


def _call_builder(info: PEInfo, common: dict, options: dict):
    sig = inspect.signature(info.builder)
    params = sig.parameters
    takes_var = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in common.items() if k in params}  # builders name the host geometry they use
    # a builder that forwards **kwargs to a class may name what it accepts (``builder.accepts``, see
    # :func:`option_names`), so unknown options are still reported here with the list of valid ones
    accepts = info.accepts if info.accepts is not None else getattr(info.builder, "accepts", None)
    known = set(params) | set(accepts or ())
    unknown = [k for k in options if (not takes_var or accepts is not None) and k not in known]
    if unknown:
        var = {k for k, p in params.items() if p.kind == p.VAR_KEYWORD}
        allowed = sorted(k for k in known if k not in COMMON_ARGS and k not in var)
        raise TypeError(f"PE {info.name!r} got unknown option(s) {unknown}; its options are {allowed}")
    pe = info.builder(**kw, **options)
    if not isinstance(pe, PositionalEmbedding):
        raise TypeError(f"builder of {info.name!r} returned {type(pe).__name__}, not a PositionalEmbedding")
    return pe


def build_pe(
    name: Union[str, Sequence[str]],
    *,
    dim: Optional[int] = None,
    num_heads: Optional[int] = None,
    depth: Optional[int] = None,
    grid: Optional[Sequence[int]] = None,
    num_prefix: int = 0,
    device=None,
    dtype=None,
    **options,
) -> "PositionalEmbedding":
    """Build a PE (or a combination) by name.

    Args:
        name: a registered name (see :func:`list_pes`) or a list of names, e.g. ``["ape", "rope_axial"]``.
            In a list, a family with a ``list_source`` takes the matching member as an option (LaPE: its base APE).
        dim, num_heads, depth, grid, num_prefix: the host geometry (embedding width, heads, layers, training grid
            ``(H, W)`` / ``(T, H, W)``, prefix tokens).
        **options: the family's options. For a list, pass one dict per member keyed by its name, e.g.
            ``build_pe(["ape", "rope_axial"], ..., rope_axial=dict(base=10000))``.

    Raises ``ValueError`` for unknown names (listing the valid ones) and incompatible combinations, ``TypeError``
    for unknown options. The geometry is checked first (:func:`vispos.utils.checks.check_common_options`): ints
    >= 1 (numpy integers accepted; ``num_prefix`` >= 0), a grid of 1-3 positive ints, a floating-point ``dtype``.
    """
    from ..utils.checks import check_common_options

    label = name if isinstance(name, str) else "build_pe"
    common = dict(check_common_options(label, dim=dim, num_heads=num_heads, depth=depth, grid=grid,
                                       num_prefix=num_prefix, dtype=dtype), device=device)
    if isinstance(name, str):
        return _call_builder(get_pe_info(name), common, options)
    if isinstance(name, PositionalEmbedding):
        return name
    if not isinstance(name, (list, tuple)):
        raise TypeError(f"pe must be a name, a list of names or a PositionalEmbedding, got {type(name).__name__}")
    names = list(name)
    if not names:
        raise ValueError("an empty list of PEs; give at least one name")
    if len(set(names)) != len(names):
        raise ValueError(f"a PE appears twice in {names}")
    for n in names:
        get_pe_info(n)
    extra = [k for k in options if k not in names]
    if extra:
        raise TypeError(f"options for a PE list must be keyed by member name {names}, got {extra}")
    opts = {n: dict(options.get(n) or {}) for n in names}
    for n in list(names):
        source = get_pe_info(n).list_source
        if source is None or n not in names:
            continue
        option, accepted = source
        src = [m for m in names if m in accepted]
        if len(src) > 1:
            raise ValueError(f"{n} takes one {option} from {list(accepted)}, got {src}")
        if src:
            opts[n].setdefault(option, _call_builder(get_pe_info(src[0]), common, opts[src[0]]))
            names = [m for m in names if m != src[0]]
    members = [_call_builder(get_pe_info(n), common, opts[n]) for n in names]
    return members[0] if len(members) == 1 else PECombination(members)
