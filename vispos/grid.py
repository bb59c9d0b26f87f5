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
"""
from __future__ import annotations

import math
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
]

COORD_MODES = ("index", "interpolated", "normalized", "cropped")

Shape = Tuple[int, ...]


def check_grid_shape(shape, name: str = "grid shape") -> Shape:
    """Validate a grid shape: a tuple of 1 to 3 positive ints. Returns it as a tuple of ints."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints like (H, W) or (T, H, W), got {shape!r}")
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int):
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
        if isinstance(self.num_prefix, bool) or not isinstance(self.num_prefix, int):
            raise TypeError(f"num_prefix must be an int >= 0, got {self.num_prefix!r}")
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
) -> torch.Tensor:
    """1-D coordinates of one axis, shape ``(size,)``. See the module docstring for the modes."""
    if mode not in COORD_MODES:
        raise ValueError(f"unknown coordinate mode {mode!r}; expected one of {COORD_MODES}")
    if positions is not None:
        p = torch.as_tensor(positions, dtype=dtype, device=device)
    else:
        p = torch.arange(size, dtype=dtype, device=device)
    if mode == "index":
        return p
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


def grid_coords(
    layout: Union[GridLayout, Sequence[int]],
    mode: Union[str, Sequence[str]] = "index",
    ref_shape: Optional[Sequence[float]] = None,
    crop: Optional[Sequence[Tuple[float, float]]] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Coordinates of the patch tokens of a grid, shape ``(prod(shape), ndim)``, row-major.

    Args:
        layout: a :class:`GridLayout` (its explicit ``positions`` are honoured) or a grid shape.
        mode: one of :data:`COORD_MODES`, or one per axis (e.g. ``("index", "normalized", "normalized")``).
        ref_shape: reference grid per axis (the training grid), needed by every mode but ``index``.
        crop: for ``cropped``: ``(start, extent)`` per axis, as fractions of the reference grid.
        dtype: output dtype; computed in float64 and cast once.

    Prefix tokens have no coordinates; PE modules give them the identity (RoPE) or their own rows (APE).
    """
    layout = as_layout(layout)
    nd = layout.ndim
    modes = _per_axis(mode, nd, "mode")
    refs = _per_axis(ref_shape, nd, "ref_shape") if ref_shape is not None else [None] * nd
    crops = list(crop) if crop is not None else [None] * nd
    if len(crops) != nd:
        raise ValueError(f"crop must give one (start, extent) per axis ({nd} axes), got {crop!r}")
    positions = layout.positions or (None,) * nd
    axes = [
        axis_positions(s, m, r, p, c, device=device)
        for s, m, r, p, c in zip(layout.shape, modes, refs, positions, crops)
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1).to(dtype)
