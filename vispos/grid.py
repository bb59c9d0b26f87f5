"""Token layout and coordinates.

A positional embedding is a function of *where tokens are*. This module owns that one object:

* :class:`GridLayout` -- ``num_prefix`` tokens without a position (class, registers, distillation) followed by
  a row-major grid of patch tokens of shape ``(L,)``, ``(H, W)`` or ``(T, H, W)``, optionally with explicit
  per-axis positions (e.g. non-contiguous frame indices).
* :func:`grid_coords` -- float coordinates ``(N, ndim)`` of the grid's patch tokens, in one of the modes below.

Coordinate modes (per axis, ``p`` the integer index ``0..size-1`` or the explicit position, ``ref`` the reference
size of that axis, ``size`` the current size):

``index``
    ``p`` -- RoPE-ViT / plain extrapolation: positions keep their meaning at any grid size.
``interpolated``
    ``p * ref / size`` -- EVA-02 / timm ``ref_feat_shape``: the grid is squeezed onto the reference range
    (position interpolation in coordinate space).
``normalized``
    ``(p + 0.5 - size / 2) * ref / size`` -- centred on the image and normalised to the reference extent: the same
    image extent maps to ``[-ref/2, ref/2]`` at any resolution and aspect ratio (vispos' VoPE coordinates).
``cropped``
    ``ref * start + (p + 0.5) * ref * extent / size - 0.5`` -- the grid samples the box ``[start, start+extent)``
    (fractions of the reference grid) of a reference grid indexed ``0..ref-1`` (RO-ViT cropped positions). The
    full box ``(0, 1)`` at ``size == ref`` gives back ``p``. Pixel convention: reference cell ``j`` covers
    ``[j, j+1) / ref`` (the ``"center"`` convention of :func:`vispos.pe.absolute.crop_resample_abs_pe`); the
    official RO-ViT code's TF RoIAlign convention (``"roi_align"``) reads ``+0.5`` further on every axis, a
    constant shift that RoPE ignores.
``centered``
    ``2 * (p + 0.5) / denom - 1`` -- DINOv3 / timm ``grid_type='centered'``: cell centres mapped onto ``[-1, 1]``;
    ``denom`` is the axis' own size (``normalize_coords="separate"``), or the largest / smallest axis of the grid
    (``"max"`` / ``"min"``: the aspect ratio is kept). No reference size.

Every mode first adds a constant ``offset`` to ``p`` (timm ``grid_offset``; Perception Encoder uses 1).

Two more things a positional scheme decides about coordinates, shared by the RoPE families:

* **axis order** (:func:`axis_order`): which grid axis owns the first channel block / frequency row. ``"ij"``
  follows the grid (``(h, w)``, ``(t, h, w)``); ``"xy"`` puts ``x`` (width) before ``y`` (height): ``(w, h)`` in
  2D, ``(t, w, h)`` in 3D (timm ``grid_indexing='xy'``, naver RoPE-ViT, Perception Encoder). A permutation tuple is
  accepted too.
* **coordinate augmentation** (:class:`CoordAug`): DINOv3's train-time shift / jitter / rescale of the coordinates,
  with timm's semantics and random-number order, one draw per forward.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "COORD_MODES",
    "GridLayout",
    "as_layout",
    "grid_coords",
    "axis_positions",
    "check_grid_shape",
    "NORMALIZE_MODES",
    "axis_order",
    "CoordAug",
]

COORD_MODES = ("index", "interpolated", "normalized", "cropped", "centered")
#: denominators of the ``centered`` mode
NORMALIZE_MODES = ("separate", "max", "min")

Shape = Tuple[int, ...]


def check_grid_shape(shape, name: str = "grid shape") -> Shape:
    """Validate a grid shape: a tuple of 1 to 3 positive ints. Returns it as a tuple of ints."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):  # ints and numpy integers
        shape = (shape,)
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints like (H, W) or (T, H, W), got {shape!r}")
    out = []
    for s in shape:
        if isinstance(s, torch.SymInt):  # a traced size (torch.export / compile with dynamic shapes): kept symbolic
            torch._check(s > 0, lambda: f"{name} must contain positive sizes, got {tuple(shape)!r}")
            out.append(s)
            continue
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            if isinstance(s, torch.Tensor) and s.numel() == 1 and not s.is_floating_point():
                s = int(s)
            else:
                raise TypeError(f"{name} must contain ints, got {shape!r}")
        if s <= 0:
            raise ValueError(f"{name} must contain positive sizes, got {tuple(shape)!r}")
        out.append(int(s))
    if not 1 <= len(out) <= 3:
        raise ValueError(f"{name} must have 1, 2 or 3 axes ((L,), (H, W) or (T, H, W)), got {tuple(out)!r}")
    return tuple(out)


@dataclass(frozen=True)
class GridLayout:
    """Where the tokens of a sequence are.

    Args:
        shape: grid of patch tokens, ``(L,)``, ``(H, W)`` or ``(T, H, W)``, row-major (last axis fastest).
        num_prefix: tokens before the grid that carry no position (class, registers, distillation token).
        positions: optional explicit positions per axis (a tuple of float tuples, one per axis, of that axis'
            length), e.g. frame indices ``(0, 2, 4, ...)`` for a strided clip. ``None`` means ``0..size-1``.
        state: per-forward data a PE attached in :meth:`~vispos.pe.base.PositionalEmbedding.prepare` (see
            :meth:`with_state`); not part of equality or the hash, so cached tables keyed on a layout are shared
            by every forward of that grid. Hosts hand the prepared layout to every hook of the same forward, so
            the data travels with the call (gradient checkpointing, threads) instead of living on a module.

    The token sequence is ``num_prefix + prod(shape)`` long; ``N`` in shapes below is that length.
    """

    shape: Shape
    num_prefix: int = 0
    positions: Optional[Tuple[Tuple[float, ...], ...]] = None
    state: Tuple[Tuple[object, object], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        shape = check_grid_shape(self.shape)
        object.__setattr__(self, "shape", shape)
        if isinstance(self.num_prefix, bool) or not isinstance(self.num_prefix, numbers.Integral):
            raise TypeError(f"num_prefix must be an int >= 0, got {self.num_prefix!r}")
        object.__setattr__(self, "num_prefix", int(self.num_prefix))
        if self.num_prefix < 0:
            raise ValueError(f"num_prefix must be >= 0, got {self.num_prefix}")
        if self.positions is not None:
            pos = tuple(None if p is None else tuple(float(v) for v in p) for p in self.positions)
            if len(pos) != len(shape):
                raise ValueError(f"positions must give one sequence per axis ({len(shape)} axes), got {len(pos)}")
            for a, (p, s) in enumerate(zip(pos, shape)):
                if p is not None and len(p) != s:
                    raise ValueError(f"positions for axis {a} must have {s} entries (the grid size), got {len(p)}")
                if p is not None and not all(math.isfinite(v) for v in p):
                    raise ValueError(f"positions for axis {a} must be finite, got {p}")
            object.__setattr__(self, "positions", pos)

    @property
    def ndim(self) -> int:
        """Number of grid axes (1, 2 or 3)."""
        return len(self.shape)

    @property
    def num_patches(self) -> int:
        """Number of grid (patch) tokens."""
        return math.prod(self.shape)

    @property
    def num_tokens(self) -> int:
        """Total sequence length, prefix included."""
        return self.num_prefix + self.num_patches

    def check_tokens(self, n: int, what: str = "tokens") -> None:
        """Raise ``ValueError`` if a sequence of ``n`` tokens does not match this layout."""
        if n != self.num_tokens:
            raise ValueError(
                f"{what}: got a sequence of {n} tokens, but the layout grid {self.shape} with "
                f"{self.num_prefix} prefix tokens has {self.num_tokens}"
            )

    def with_state(self, owner, value) -> "GridLayout":
        """This layout carrying ``value`` for ``owner`` (a PE module), replacing what ``owner`` attached before."""
        kept = tuple((o, v) for o, v in self.state if o is not owner)
        return replace(self, state=kept + ((owner, value),))

    def state_of(self, owner, default=None):
        """What ``owner`` attached with :meth:`with_state`, else ``default``."""
        for o, v in self.state:
            if o is owner:
                return v
        return default

    def without_state(self) -> "GridLayout":
        """The same layout without per-forward state (what table caches key on)."""
        return replace(self, state=()) if self.state else self

    def with_shape(self, shape: Sequence[int]) -> "GridLayout":
        """The same prefix on another grid (explicit positions dropped)."""
        return GridLayout(tuple(shape), self.num_prefix)

    def __repr__(self) -> str:
        extra = ", positions=..." if self.positions is not None else ""
        return f"GridLayout(shape={self.shape}, num_prefix={self.num_prefix}{extra})"


def as_layout(layout, num_prefix: int = 0) -> GridLayout:
    """Accept a :class:`GridLayout` or a bare grid shape tuple (``num_prefix`` then applies)."""
    if isinstance(layout, GridLayout):
        return layout
    return GridLayout(check_grid_shape(layout, "layout"), num_prefix)


def _per_axis(value, ndim: int, name: str):
    if value is None or isinstance(value, (str, int, float)):
        return [value] * ndim
    value = list(value)
    if len(value) != ndim:
        raise ValueError(f"{name} must give one value per axis ({ndim} axes), got {value!r}")
    return value


def axis_positions(
    size: int,
    mode: str = "index",
    ref: Optional[float] = None,
    positions: Optional[Sequence[float]] = None,
    crop: Optional[Tuple[float, float]] = None,
    device=None,
    dtype: torch.dtype = torch.float64,
    offset: float = 0.0,
    denom: Optional[float] = None,
) -> torch.Tensor:
    """1-D coordinates of one axis, shape ``(size,)``. See the module docstring for the modes.

    ``offset`` is added to the index ``p`` first (every mode); ``denom`` is the ``centered`` mode's denominator
    (default ``size``).
    """
    if mode not in COORD_MODES:
        raise ValueError(f"unknown coordinate mode {mode!r}; expected one of {COORD_MODES}")
    offset = _check_offset(offset)
    if positions is not None:
        p = torch.as_tensor(positions, dtype=dtype, device=device)
    else:
        p = torch.arange(size, dtype=dtype, device=device)
    if offset:
        p = p + offset
    if mode == "index":
        return p
    if mode == "centered":
        d = float(size if denom is None else denom)
        if not d > 0:
            raise ValueError(f"centered coordinates need a positive denominator, got {denom!r}")
        return 2.0 * (p + 0.5) / d - 1.0
    if ref is None:
        raise ValueError(f"coordinate mode {mode!r} needs a reference size (ref_shape), got None")
    ref = float(ref)
    if not ref > 0:
        raise ValueError(f"reference size must be > 0, got {ref}")
    if mode == "interpolated":
        return p * (ref / size)
    if mode == "normalized":
        return (p + 0.5 - size / 2.0) * (ref / size)
    # cropped
    start, extent = (0.0, 1.0) if crop is None else (float(crop[0]), float(crop[1]))
    if not extent > 0:
        raise ValueError(f"crop extent must be > 0, got {extent}")
    return ref * start + (p + 0.5) * (ref * extent / size) - 0.5


def _check_offset(offset) -> float:
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        raise ValueError(f"grid offset must be a finite number, got {offset!r}")
    return float(offset)


def grid_coords(
    layout: Union[GridLayout, Sequence[int]],
    mode: Union[str, Sequence[str]] = "index",
    ref_shape: Optional[Sequence[float]] = None,
    crop: Optional[Sequence[Tuple[float, float]]] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    offset: Union[float, Sequence[float]] = 0.0,
    normalize_coords: str = "separate",
) -> torch.Tensor:
    """Coordinates of the patch tokens of a grid, shape ``(prod(shape), ndim)``, row-major.

    Args:
        layout: a :class:`GridLayout` (its explicit ``positions`` are honoured) or a grid shape.
        mode: one of :data:`COORD_MODES`, or one per axis (e.g. ``("index", "normalized", "normalized")``).
        ref_shape: reference grid per axis (the training grid), needed by every mode but ``index``.
        crop: for ``cropped``: ``(start, extent)`` per axis, as fractions of the reference grid.
        dtype: output dtype; computed in float64 and cast once.
        offset: added to every axis' index before the mode (a number or one per axis; timm ``grid_offset``).
        normalize_coords: ``centered`` mode denominators, one of :data:`NORMALIZE_MODES`.

    Prefix tokens have no coordinates; PE modules give them the identity (RoPE) or their own rows (APE).
    """
    layout = as_layout(layout)
    nd = layout.ndim
    modes = _per_axis(mode, nd, "mode")
    refs = _per_axis(ref_shape, nd, "ref_shape") if ref_shape is not None else [None] * nd
    crops = list(crop) if crop is not None else [None] * nd
    if len(crops) != nd:
        raise ValueError(f"crop must give one (start, extent) per axis ({nd} axes), got {crop!r}")
    offsets = _per_axis(offset, nd, "offset")
    if normalize_coords not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalize_coords {normalize_coords!r}; expected one of {NORMALIZE_MODES}")
    if normalize_coords == "separate":
        denoms = list(layout.shape)
    else:
        denoms = [(max if normalize_coords == "max" else min)(layout.shape)] * nd
    positions = layout.positions or (None,) * nd
    axes = [
        axis_positions(s, m, r, p, c, device=device, offset=o, denom=d)
        for s, m, r, p, c, o, d in zip(layout.shape, modes, refs, positions, crops, offsets, denoms)
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1).to(dtype)


def axis_order(order, ndim: int) -> Tuple[int, ...]:
    """The permutation of grid axes that an axis order names: entry ``i`` is the grid axis of channel block /
    frequency row ``i``.

    ``"ij"``: the grid's own order (identity). ``"xy"``: width before height -- ``(1, 0)`` in 2D, ``(0, 2, 1)`` in
    3D (time stays first); 1D grids have one order. A tuple must be a permutation of ``range(ndim)``.
    """
    if isinstance(order, str):
        if order == "ij" or ndim == 1:
            if order not in ("ij", "xy"):
                raise ValueError(f"unknown axis order {order!r}; expected 'ij', 'xy' or a permutation tuple")
            return tuple(range(ndim))
        if order == "xy":
            return (1, 0) if ndim == 2 else (0, 2, 1)
        raise ValueError(f"unknown axis order {order!r}; expected 'ij', 'xy' or a permutation tuple")
    if isinstance(order, (tuple, list)) and all(isinstance(a, int) and not isinstance(a, bool) for a in order) \
            and sorted(order) == list(range(ndim)):
        return tuple(order)
    raise ValueError(f"axis order must be 'ij', 'xy' or a permutation of {tuple(range(ndim))}, got {order!r}")


def _check_aug_factor(value, name: str, low: float) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        what = ">= 0 (coordinate units)" if low == 0 else ">= 1 (a multiplicative factor)"
        raise ValueError(f"{name} must be a finite number {what} or None, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CoordAug:
    """Train-time coordinate augmentation (DINOv3; timm ``shift_coords`` / ``jitter_coords`` / ``rescale_coords``).

    One transform per draw, shared by every token (and, in a host, by every layer of one forward):

    * ``shift``: ``c_a += u_a``, ``u_a ~ U(-shift, shift)`` per axis, in the coordinates' own units;
    * ``jitter``: ``c_a *= exp(v_a)``, ``v_a ~ U(-ln J, ln J)`` per axis;
    * ``rescale``: ``c *= exp(w)``, ``w ~ U(-ln R, ln R)`` shared by all axes.

    Draws are made in that order from torch's global generator (or ``generator``), float32, one value per axis in
    *channel order* (the PE's axis order) -- the random stream of timm's ``_apply_coord_augs``, so a seeded vispos
    model and a seeded timm model draw the same transform. ``None`` disables a part.
    """

    shift: Optional[float] = None
    jitter: Optional[float] = None
    rescale: Optional[float] = None

    def __post_init__(self):
        object.__setattr__(self, "shift", _check_aug_factor(self.shift, "shift_coords", 0.0))
        object.__setattr__(self, "jitter", _check_aug_factor(self.jitter, "jitter_coords", 1.0))
        object.__setattr__(self, "rescale", _check_aug_factor(self.rescale, "rescale_coords", 1.0))

    @property
    def active(self) -> bool:
        return self.shift is not None or self.jitter is not None or self.rescale is not None

    def sample(self, num_axes: int, device=None, generator: Optional[torch.Generator] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One draw: ``(add, mul)`` each ``(num_axes,)`` float32 in channel order; apply as ``(c + add) * mul``."""
        add = torch.zeros(num_axes, dtype=torch.float32, device=device)
        mul = torch.ones(num_axes, dtype=torch.float32, device=device)
        if self.shift is not None:
            add = torch.empty(num_axes, dtype=torch.float32, device=device).uniform_(
                -self.shift, self.shift, generator=generator)
        if self.jitter is not None:
            m = math.log(self.jitter)
            mul = mul * torch.empty(num_axes, dtype=torch.float32, device=device).uniform_(
                -m, m, generator=generator).exp()
        if self.rescale is not None:
            m = math.log(self.rescale)
            mul = mul * torch.empty(1, dtype=torch.float32, device=device).uniform_(-m, m, generator=generator).exp()
        return add, mul

    @staticmethod
    def apply(coords: torch.Tensor, draw: Tuple[torch.Tensor, torch.Tensor], order: Sequence[int]) -> torch.Tensor:
        """``coords (N, ndim)`` in grid-axis order, ``draw`` in channel order ``order`` -> augmented coords."""
        add, mul = draw
        inv = [0] * len(order)
        for ch, a in enumerate(order):
            inv[a] = ch
        add = add.to(device=coords.device, dtype=coords.dtype)[inv]
        mul = mul.to(device=coords.device, dtype=coords.dtype)[inv]
        return (coords + add[None, :]) * mul[None, :]
