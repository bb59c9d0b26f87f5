"""Token layout and coordinates.

A positional embedding is a function of *where tokens are*. This module owns that one object:

* :class:`GridLayout` -- ``num_prefix`` tokens without a position (class, registers, distillation) followed by
  a row-major grid of patch tokens of shape ``(L,)``, ``(H, W)`` or ``(T, H, W)``, optionally with explicit
  per-axis positions (e.g. non-contiguous frame indices).
* :class:`PackedLayout` -- a batch whose samples have their own grids (variable resolution, timm NaFlex): per
  sample ``num_prefix`` prefix tokens, its grid's patch tokens row-major, then padding to a common length
  (``docs/packed.md``).
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

import functools
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "COORD_MODES",
    "GridLayout",
    "PackedLayout",
    "is_packed",
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


class _LayoutState:
    """Per-forward state of a layout (its ``state`` field), shared by :class:`GridLayout` and :class:`PackedLayout`."""

    def with_state(self, owner, value):
        """This layout carrying ``value`` for ``owner`` (a PE module), replacing what ``owner`` attached before."""
        kept = tuple((o, v) for o, v in self.state if o is not owner)
        return replace(self, state=kept + ((owner, value),))

    def state_of(self, owner, default=None):
        """What ``owner`` attached with :meth:`with_state`, else ``default``."""
        for o, v in self.state:
            if o is owner:
                return v
        return default

    def without_state(self):
        """The same layout without per-forward state (what table caches key on)."""
        return replace(self, state=()) if self.state else self


@dataclass(frozen=True)
class GridLayout(_LayoutState):
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

    def with_shape(self, shape: Sequence[int]) -> "GridLayout":
        """The same prefix on another grid (explicit positions dropped)."""
        return GridLayout(tuple(shape), self.num_prefix)

    def __repr__(self) -> str:
        extra = ", positions=..." if self.positions is not None else ""
        return f"GridLayout(shape={self.shape}, num_prefix={self.num_prefix}{extra})"


def _sample_layout(s, num_prefix: int, b: int) -> GridLayout:
    if isinstance(s, PackedLayout):
        raise TypeError(f"PackedLayout samples must be grid shapes or GridLayouts, got a PackedLayout at index {b}")
    if isinstance(s, GridLayout):
        if s.num_prefix != num_prefix:
            raise ValueError(f"PackedLayout: sample {b} is a GridLayout with num_prefix={s.num_prefix}, but the "
                             f"packed layout has num_prefix={num_prefix} (every sample shares the prefix)")
        return s.without_state()
    return GridLayout(check_grid_shape(s, f"PackedLayout sample {b} grid shape"), num_prefix)


@dataclass(frozen=True)
class PackedLayout(_LayoutState):
    """Where the tokens of a batch are when every sample has its own grid (variable-resolution batches, NaFlex).

    Args:
        samples: one grid shape (``(H, W)``, ...) or :class:`GridLayout` per batch element, all of the same rank. A
            GridLayout's ``num_prefix`` must equal ``num_prefix``; its explicit ``positions`` are kept.
        num_prefix: prefix tokens (class, registers) at the start of every sample.
        length: patch slots per sample after the prefix (default: the largest sample's ``prod(shape)``); the
            sequence of sample ``b`` is ``num_prefix`` prefix tokens, its ``prod(shape_b)`` patch tokens row-major,
            then padding up to ``length`` slots.
        state: per-forward data attached by PEs (:meth:`with_state`), as :attr:`GridLayout.state`.

    ``num_tokens = num_prefix + length`` is the sequence length ``N`` of the batch. Every PE hook accepts a
    PackedLayout where it accepts a GridLayout: valid-token outputs equal running each sample alone with its own
    :meth:`sample` layout, and padding tokens never change valid outputs (:func:`vispos.attention.attend` masks
    padding keys). Hashable and comparable (state excluded), so per-layout tables are cached.
    """

    samples: Tuple[GridLayout, ...]
    num_prefix: int = 0
    length: Optional[int] = None
    state: Tuple[Tuple[object, object], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.num_prefix, bool) or not isinstance(self.num_prefix, numbers.Integral):
            raise TypeError(f"PackedLayout: num_prefix must be an int >= 0, got {self.num_prefix!r}")
        if self.num_prefix < 0:
            raise ValueError(f"PackedLayout: num_prefix must be >= 0, got {self.num_prefix}")
        num_prefix = int(self.num_prefix)
        object.__setattr__(self, "num_prefix", num_prefix)
        samples = self.samples
        if isinstance(samples, (GridLayout, torch.Tensor)) or not isinstance(samples, (tuple, list)):
            raise TypeError(f"PackedLayout: samples must be a sequence of grid shapes or GridLayouts, one per batch "
                            f"element, e.g. [(4, 6), (7, 3)], got {type(samples).__name__}")
        if not samples:
            raise ValueError("PackedLayout: samples must hold at least one sample, got an empty sequence")
        if all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in samples):
            raise TypeError(f"PackedLayout: samples must be one grid shape per sample (a sequence of tuples), got "
                            f"the single shape {tuple(samples)!r}; write [{tuple(samples)!r}] for a batch of one")
        grids = tuple(_sample_layout(s, num_prefix, b) for b, s in enumerate(samples))
        ndims = {g.ndim for g in grids}
        if len(ndims) != 1:
            raise ValueError(f"PackedLayout: every sample must have the same number of grid axes, got shapes "
                             f"{[g.shape for g in grids]}")
        object.__setattr__(self, "samples", grids)
        longest = max(g.num_patches for g in grids)
        if self.length is None:
            object.__setattr__(self, "length", longest)
        else:
            if isinstance(self.length, bool) or not isinstance(self.length, numbers.Integral):
                raise TypeError(f"PackedLayout: length must be an int (patch slots per sample), got {self.length!r}")
            if self.length < longest:
                b = max(range(len(grids)), key=lambda i: grids[i].num_patches)
                raise ValueError(f"PackedLayout: length={self.length} patch slots is smaller than sample {b}'s grid "
                                 f"{grids[b].shape} ({longest} patches); use length >= {longest}")
            object.__setattr__(self, "length", int(self.length))

    # ---- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def from_patch_coord(cls, patch_coord: torch.Tensor, patch_valid: Optional[torch.Tensor] = None,
                         num_prefix: int = 0) -> "PackedLayout":
        """The layout of a timm NaFlex batch: ``patch_coord (B, N, ndim)`` integer grid coordinates (``(y, x)``)
        of the patch tokens and ``patch_valid (B, N)`` bool (``None``: every token valid).

        Each sample's valid tokens must come first and be its full row-major grid ``0..size-1`` per axis (the
        order timm's NaFlex pipeline produces), else ``ValueError``; ``length`` is ``N``.
        """
        if not isinstance(patch_coord, torch.Tensor) or patch_coord.dim() != 3 or not 1 <= patch_coord.shape[-1] <= 3:
            got = tuple(patch_coord.shape) if isinstance(patch_coord, torch.Tensor) else type(patch_coord).__name__
            raise ValueError(f"from_patch_coord: patch_coord must be a (B, N, ndim) tensor with ndim 1-3, got {got}")
        if patch_coord.is_floating_point() or patch_coord.is_complex() or patch_coord.dtype == torch.bool:
            raise TypeError(f"from_patch_coord: patch_coord must hold integer grid coordinates, got {patch_coord.dtype}")
        B, N, nd = patch_coord.shape
        if B == 0 or N == 0:
            raise ValueError(f"from_patch_coord: patch_coord must have at least one sample and token, got "
                             f"{tuple(patch_coord.shape)}")
        if patch_valid is None:
            valid = torch.ones(B, N, dtype=torch.bool)
        else:
            if not isinstance(patch_valid, torch.Tensor) or tuple(patch_valid.shape) != (B, N):
                got = tuple(patch_valid.shape) if isinstance(patch_valid, torch.Tensor) else type(patch_valid).__name__
                raise ValueError(f"from_patch_coord: patch_valid must be a ({B}, {N}) bool tensor, got {got}")
            if patch_valid.dtype != torch.bool:
                raise TypeError(f"from_patch_coord: patch_valid must be a bool tensor, got {patch_valid.dtype}")
            valid = patch_valid.detach().cpu()
        coord = patch_coord.detach().cpu().long()
        counts = valid.sum(1)
        shapes = []
        for b in range(B):
            n = int(counts[b])
            if n == 0:
                raise ValueError(f"from_patch_coord: sample {b} has no valid patch tokens")
            if not bool(valid[b, :n].all()):
                raise ValueError(f"from_patch_coord: sample {b}'s valid tokens are not the first {n} of the sequence "
                                 f"(NaFlex order: valid patches first, then padding)")
            c = coord[b, :n]
            if int(c.min()) < 0:
                raise ValueError(f"from_patch_coord: sample {b} has negative coordinates")
            shape = tuple(int(v) + 1 for v in c.max(0).values)
            expect = grid_coords(shape, "index", dtype=torch.long) if math.prod(shape) == n else None
            if expect is None or not torch.equal(c, expect):
                full = grid_coords(shape, "index", dtype=torch.long)
                if n < full.shape[0] and torch.equal(c, full[:n]):
                    hint = (f"; they are its first {n} of {full.shape[0]} patches: the sample was truncated (a "
                            f"NaFlexCollator max_seq_len below its patch count; size images to the budget)")
                elif patch_valid is None:
                    hint = "; no patch_valid was given, so padding tokens counted as valid: pass patch_valid"
                else:
                    hint = ""
                raise ValueError(f"from_patch_coord: sample {b}'s {n} valid coordinates are not the full row-major "
                                 f"grid {shape} (NaFlex order: coordinates 0..size-1 per axis, last axis fastest)"
                                 f"{hint}")
            shapes.append(shape)
        return cls(tuple(shapes), num_prefix, N)

    # ---- geometry -----------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Number of samples ``B``."""
        return len(self.samples)

    @property
    def ndim(self) -> int:
        """Number of grid axes of every sample."""
        return self.samples[0].ndim

    @property
    def shapes(self) -> Tuple[Shape, ...]:
        """Grid shape of every sample."""
        return tuple(g.shape for g in self.samples)

    @property
    def num_patches(self) -> Tuple[int, ...]:
        """Valid patch tokens of every sample."""
        return tuple(g.num_patches for g in self.samples)

    @property
    def num_tokens(self) -> int:
        """Sequence length ``N`` of the batch: ``num_prefix + length``."""
        return self.num_prefix + self.length

    def sample(self, b: int) -> GridLayout:
        """Sample ``b``'s own layout (its grid with the shared prefix)."""
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not -self.batch_size <= b < self.batch_size:
            raise ValueError(f"PackedLayout.sample: index {b!r} out of range for a batch of {self.batch_size}")
        return self.samples[b]

    def groups(self) -> Tuple[Tuple[GridLayout, Tuple[int, ...]], ...]:
        """Unique sample layouts with the batch indices that have them, in first-appearance order."""
        return _groups(self.samples)

    @property
    def uniform(self) -> Optional[GridLayout]:
        """The single GridLayout when every sample has the same grid and there is no padding, else ``None``."""
        g = self.samples[0]
        if g.num_patches == self.length and all(s == g for s in self.samples[1:]):
            return g
        return None

    def valid_mask(self, device=None) -> torch.Tensor:
        """``(B, num_tokens)`` bool: True for prefix and patch tokens, False for padding."""
        return _valid_mask(self.without_state(), _dev(device))

    def key_padding_bias(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Additive attention mask ``(B, 1, 1, num_tokens)``: 0 for valid keys, ``finfo(dtype).min`` for padding
        (a finite value, so rows stay finite and sums with a PE bias do not turn into NaN)."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"key_padding_bias: dtype must be a floating torch.dtype, got {dtype!r}")
        return _key_padding_bias(self.without_state(), dtype, _dev(device))

    def group_index(self, device=None) -> torch.Tensor:
        """``(B, num_tokens)`` long: the row of each token in the concatenation of the :meth:`groups`' own sequences
        (group order, each ``num_prefix + prod(shape)`` rows); padding tokens get the row past the end (the total),
        so ``torch.cat([table_g for each group] + [pad_row])[index]`` packs per-grid tables into the batch."""
        return _group_index(self.without_state(), str(torch.device(device) if device is not None else "cpu"))

    def check_tokens(self, n: int, what: str = "tokens") -> None:
        """Raise ``ValueError`` if a sequence of ``n`` tokens does not match this layout."""
        if n != self.num_tokens:
            raise ValueError(
                f"{what}: got a sequence of {n} tokens, but the packed layout ({self.num_prefix} prefix tokens + "
                f"{self.length} patch slots) has {self.num_tokens}"
            )

    def check_batch(self, b: int, what: str = "tokens") -> None:
        """Raise ``ValueError`` if a batch of ``b`` samples does not match this layout."""
        if b != self.batch_size:
            raise ValueError(f"{what}: got a batch of {b} samples, but the packed layout has {self.batch_size} "
                             f"(one grid per sample)")

    def __repr__(self) -> str:
        return f"PackedLayout(shapes={list(self.shapes)}, num_prefix={self.num_prefix}, length={self.length})"


def _dev(device) -> str:
    return str(torch.device(device) if device is not None else torch.device("cpu"))


# small per-layout tensors (a few bytes per token) reused by every layer of a forward; bounded LRU
@functools.lru_cache(maxsize=64)
def _valid_mask(layout: "PackedLayout", device: str) -> torch.Tensor:
    n = torch.tensor(layout.num_patches, device=device)
    slots = torch.arange(layout.length, device=device)
    patch = slots[None, :] < n[:, None]
    return torch.cat([torch.ones(layout.batch_size, layout.num_prefix, dtype=torch.bool, device=device), patch], 1)


@functools.lru_cache(maxsize=64)
def _key_padding_bias(layout: "PackedLayout", dtype: torch.dtype, device: str) -> torch.Tensor:
    valid = _valid_mask(layout, device)
    out = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return out.masked_fill_(~valid, torch.finfo(dtype).min)[:, None, None, :]


@functools.lru_cache(maxsize=64)
def _group_index(layout: "PackedLayout", device: str) -> torch.Tensor:
    rows = torch.full((layout.batch_size, layout.num_tokens), 0, dtype=torch.long)
    start = 0
    groups = layout.groups()
    total = sum(g.num_tokens for g, _ in groups)
    rows.fill_(total)
    for g, idx in groups:
        n = g.num_tokens
        rows[list(idx), :n] = torch.arange(start, start + n)
        start += n
    return rows.to(device)


@functools.lru_cache(maxsize=256)
def _groups(samples):
    order = {}
    for b, g in enumerate(samples):
        order.setdefault(g, []).append(b)
    return tuple((g, tuple(idx)) for g, idx in order.items())


def is_packed(layout) -> bool:
    """Whether ``layout`` is a :class:`PackedLayout`."""
    return isinstance(layout, PackedLayout)


def as_layout(layout, num_prefix: int = 0) -> GridLayout:
    """Accept a :class:`GridLayout`, a :class:`PackedLayout` (returned as is) or a bare grid shape tuple
    (``num_prefix`` then applies)."""
    if isinstance(layout, (GridLayout, PackedLayout)):
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
    if isinstance(layout, PackedLayout):
        raise TypeError("grid_coords takes one grid (a GridLayout or a shape); for a PackedLayout take each "
                        "sample's layout with layout.sample(b) or layout.groups()")
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
