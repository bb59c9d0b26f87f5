"""Rotary position embeddings for 1D, 2D and 3D grids: axial RoPE, RoPE-Mixed and VoPE.

All three compute, for every patch token, one angle per rotated channel pair, from the token's coordinates
(:func:`vispos.grid.grid_coords`) and frequencies (:mod:`vispos.freqs`), then rotate q and k
(:func:`vispos.ops.rope.apply_rope`). Prefix tokens get angle 0 (left untouched).

* :class:`AxialRoPE` (``rope_axial``): the head dim is split into per-axis blocks ``dims`` (e.g. 16/24/24 for
  CogVideoX); the pairs of block ``a`` rotate with axis ``a``'s coordinate and bands ``base_a^(-2j/d_a)``, after the
  axis' scaling rule. With ``pairing="interleaved"`` pair ``j`` is channels ``(2j, 2j+1)``; with ``"half"`` it is
  ``(j, j + D/2)``. Matches timm ``RotaryEmbeddingCat(in_pixels=False)`` + ``apply_rot_embed_cat``.
* :class:`MixedRoPE` (``rope_mixed``, Heo et al. 2024): every pair ``j`` of head ``h`` in layer ``l`` rotates by
  ``sum_a f[a, l, h, j] * p_a`` with learned frequencies ``f``. Matches timm ``RotaryEmbeddingMixed``.
* :class:`VoPE` (``vope``): axial RoPE on continuous coordinates centred on the image and normalised to the
  reference (training) grid -- vispos' definition, see the class docstring.

Options shared by the rotary families (each reproduces a released timm setting):

* ``axis_order`` (``"ij"`` / ``"xy"`` / a permutation, :func:`vispos.grid.axis_order`): which grid axis owns the
  first channel block (axial) or frequency row (mixed). timm ``grid_indexing='xy'`` (naver RoPE-ViT, Perception
  Encoder) is ``"xy"``.
* ``grid_offset``: added to every integer index before the coordinate mode (Perception Encoder: 1).
* ``coords="centered"`` + ``normalize_coords`` (``separate`` / ``max`` / ``min``) and ``angle_scale=2*pi``,
  ``periods=(min, max)``: DINOv3's scheme (:func:`dinov3_options` gives timm ``RotaryEmbeddingDinoV3``'s options).
* ``shift_coords`` / ``jitter_coords`` / ``rescale_coords`` (:class:`vispos.grid.CoordAug`): train-time coordinate
  augmentation, off in ``eval()``. One transform is drawn per forward in :meth:`~vispos.pe.base.PositionalEmbedding.prepare`
  and rides on the layout to every layer, as timm and DINOv3 share one draw. Call ``sample_coord_aug()`` (or
  ``prepare``) yourself when you drive ``forward_qk`` without a host.

Tables are cached per layout (and device) and rebuilt when the module moves; under ``torch.compile`` they are
computed in the graph (no cache mutation, so no recompilation on the second call).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import freqs as F_
from ..grid import (
    NORMALIZE_MODES,
    CoordAug,
    GridLayout,
    PackedLayout,
    as_layout,
    axis_order,
    check_grid_shape,
    grid_coords,
)
from ..ops.rope import apply_rope_qk, check_pairing, rope_angles, rope_table
from ..utils.checks import check_float_tensor, check_int
from .base import PositionalEmbedding, packed_native
from .registry import register_family

logger = logging.getLogger(__name__)

#: the state-dict key (under the PE's prefix) recording a rotary PE's reference grids
REF_GRID_KEY = "ref_grid"


def _save_ref_grid(module, state_dict, prefix, local_metadata):
    """State-dict hook: record ``train_shape`` / ``ref_shape`` as a float64 tensor ``(2, ndim)`` (NaN = unset), so
    a checkpoint reloaded into a model built at another ``img_size`` keeps the grid its coordinates were made for."""
    rows = [module.train_shape, module.ref_shape]
    nd = len(module._perm)
    state_dict[prefix + REF_GRID_KEY] = torch.tensor(
        [[float("nan")] * nd if r is None else [float(v) for v in r] for r in rows], dtype=torch.float64,
        device=module.__dict__.get("_state_device"))


def _grid_row(row: torch.Tensor):
    if bool(torch.isnan(row).all()):
        return None
    if bool(torch.isnan(row).any()) or not bool(torch.isfinite(row).all()) or bool((row <= 0).any()):
        raise ValueError(f"invalid reference grid in checkpoint: {row.tolist()} (expected positive sizes or all NaN)")
    return tuple(int(v) if float(v).is_integer() else float(v) for v in row.tolist())


def _load_ref_grid(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load pre-hook: adopt the checkpoint's reference grids (removing the key, so strict loading sees no extra
    key); a checkpoint saved before the grids were recorded keeps the build-time ones, logged."""
    key = prefix + REF_GRID_KEY
    t = state_dict.pop(key, None)
    if t is None:
        if module.train_shape is not None or module.ref_shape is not None:
            logger.info("%s at %r: the checkpoint has no %r (saved before vispos recorded it); keeping the "
                        "build-time reference grid train_shape=%s, ref_shape=%s", module.name, prefix, key,
                        module.train_shape, module.ref_shape)
        return
    nd = len(module._perm)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != (2, nd):
        error_msgs.append(f"{key}: expected a tensor of shape (2, {nd}), got "
                          f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        return
    if t.is_meta:  # assign / meta loading of a meta state dict: nothing to read
        return
    t = t.detach().to("cpu", torch.float64)
    train, ref = _grid_row(t[0]), _grid_row(t[1])
    if train is not None:
        train = check_grid_shape(tuple(int(v) for v in train), "train_shape")
    if (train, ref) != (module.train_shape, module.ref_shape):
        logger.info("%s at %r: reference grid from the checkpoint train_shape=%s, ref_shape=%s (built with %s, %s)",
                    module.name, prefix, train, ref, module.train_shape, module.ref_shape)
        module.train_shape = train
        module.ref_shape = ref

__all__ = ["PRESETS", "default_axis_dims", "AxialRoPE", "MixedRoPE", "VoPE", "init_mixed_freqs", "dinov3_options",
           "ALLOCATIONS", "allocation_axes", "interleaved_axes_2d", "allocation_angles", "allocation_plan", "diagonal_coords", "p_rope_keep",
           "init_mixed_allocation"]

#: Per-axis rotary dims and bases of well-known video models (head dims 64 / 128 / 128).
PRESETS: Dict[str, dict] = {
    "cogvideox": dict(head_dim=64, dims=(16, 24, 24), base=10000.0),
    "hunyuanvideo": dict(head_dim=128, dims=(16, 56, 56), base=256.0),
    "wan": dict(head_dim=128, dims=(44, 42, 42), base=10000.0),
}


def default_axis_dims(rotary_dim: int, ndim: int) -> Tuple[int, ...]:
    """Default split of a rotary dim over axes.

    1D: all of it. 2D: equal halves (needs ``rotary_dim % 4 == 0``). 3D: Wan's rule ``h = w = 2 * (D // 6)``,
    ``t = D - h - w``.
    """
    if rotary_dim % 2:
        raise ValueError(f"rotary dim must be even, got {rotary_dim}")
    if ndim == 1:
        return (rotary_dim,)
    if ndim == 2:
        if rotary_dim % 4:
            raise ValueError(f"2D axial RoPE splits the rotary dim into two even halves: need a multiple of 4, got "
                             f"{rotary_dim}")
        return (rotary_dim // 2, rotary_dim // 2)
    if ndim == 3:
        h = 2 * (rotary_dim // 6)
        t = rotary_dim - 2 * h
        if h == 0 or t <= 0:
            raise ValueError(f"rotary dim {rotary_dim} is too small for 3 axes")
        return (t, h, h)
    raise ValueError(f"grids have 1, 2 or 3 axes, got {ndim}")


def _check_qk(q, k, head_dim, layout: GridLayout, who: str, module=None) -> None:
    for name, t in (("q", q), ("k", k)):
        check_float_tensor(t, f"{who}: {name}", module)
        if t.dim() != 4:
            raise ValueError(f"{who}: {name} must have shape (B, heads, N, head_dim), got {tuple(t.shape)}")
        if t.shape[-1] != head_dim:
            raise ValueError(f"{who}: {name} has head dim {t.shape[-1]}, this RoPE was built for {head_dim}")
        layout.check_tokens(t.shape[-2], f"{who}: {name}")


def _with_packed_state(g: GridLayout, layout) -> GridLayout:
    """A group's GridLayout carrying the per-forward state attached to its PackedLayout (coordinate draws)."""
    return replace(g, state=layout.state) if layout.state else g


# ---- 3D frequency allocations (which channel pairs carry which axis, at which frequency) ----------------------
#: ``chunked``: per-axis blocks with their own bands (vispos default, CogVideoX / Hunyuan / Wan). The others use one
#: band set ``base^(-2j/R)`` over all ``R/2`` pairs of the rotary dim and assign each pair to an axis:
#: ``mrope`` (Qwen2-VL M-RoPE: contiguous sections t, h, w), ``mrope_interleaved`` (Qwen3-VL: h, w interleaved
#: over the first pairs, t on the rest), ``videorope`` (VideoRoPE: h, w alternating on the highest frequencies, t on
#: the lowest; diagonal layout; temporal stride 2), ``hope`` (HoPE: VideoRoPE's layout with the temporal pairs
#: unrotated; dynamic temporal scaling), ``headwise`` (each head rotates all its pairs with one axis).
ALLOCATIONS = ("chunked", "mrope", "mrope_interleaved", "videorope", "hope", "headwise")


def allocation_axes(allocation: str, dims: Sequence[int]) -> Tuple[int, ...]:
    """The axis (0 = t, 1 = h, 2 = w) of every rotated pair ``j = 0..sum(dims)/2 - 1``; ``dims`` = per-axis
    rotary dims ``(d_t, d_h, d_w)`` (sections ``d_a / 2`` pairs each).

    * ``chunked`` / ``mrope``: ``[t] * s_t + [h] * s_h + [w] * s_w`` (Qwen2-VL ``mrope_section``).
    * ``mrope_interleaved``: pair ``j`` is h if ``j % 3 == 1 and j < 3 s_h``, w if ``j % 3 == 2 and j < 3 s_w``,
      t otherwise (Qwen3-VL ``recomposition_frequencies``).
    * ``videorope`` / ``hope``: pairs ``0..s_h+s_w-1`` alternate h (even), w (odd); the last ``s_t`` pairs (lowest
      frequencies) are t (VideoRoPE ``apply_m_modify_multimodal_rotary_pos_emb``).
    """
    if allocation not in ALLOCATIONS or allocation == "headwise":
        raise ValueError(f"allocation_axes takes one of {ALLOCATIONS[:-1]}, got {allocation!r}")
    if len(dims) != 3:
        raise ValueError(f"3D allocations need three per-axis dims (t, h, w), got {tuple(dims)}")
    st, sh, sw = (d // 2 for d in dims)
    n = st + sh + sw
    if allocation in ("chunked", "mrope"):
        return (0,) * st + (1,) * sh + (2,) * sw
    if allocation == "mrope_interleaved":
        if sh != sw:
            raise ValueError(f"interleaved M-RoPE needs equal h and w sections, got dims {tuple(dims)}")
        return tuple(1 if (j % 3 == 1 and j < 3 * sh) else 2 if (j % 3 == 2 and j < 3 * sw) else 0
                     for j in range(n))
    return tuple(1 if j % 2 == 0 else 2 for j in range(sh + sw)) + (0,) * st


def interleaved_axes_2d(rotary_dim: int, dims: Sequence[int]) -> Tuple[int, ...]:
    """The axis (0 = t, 1 = h, 2 = w) of every pair ``j < rotary_dim / 2`` of the 2D interleaved M-RoPE: pair ``j``
    is h if ``j % 3 == 1`` and it is one of the first ``s_h = d_h / 2`` such pairs, w likewise with ``j % 3 == 2``
    and ``s_w = d_w / 2``, t otherwise -- on an image the t pairs sit at ``t = 0`` (unrotated). This is timm's
    ``RotaryEmbeddingMRope`` (GenLIP, ``rope_type='mrope'``) and Qwen3-VL's layout with the image as frame 0; its
    sections are the per-axis counts (timm's clamped ``mrope_section``). ``ValueError`` when the sections do not
    fit in the ``rotary_dim / 2`` pairs."""
    if len(dims) != 2:
        raise ValueError(f"2D interleaved M-RoPE takes per-axis dims (d_h, d_w), got {tuple(dims)}")
    n = rotary_dim // 2
    sh, sw = dims[0] // 2, dims[1] // 2
    fit_h, fit_w = len(range(1, n, 3)), len(range(2, n, 3))
    if sh > fit_h or sw > fit_w:
        raise ValueError(f"2D interleaved M-RoPE: dims {tuple(dims)} ({sh} h and {sw} w pairs) do not fit in "
                         f"rotary_dim={rotary_dim} ({n} pairs hold at most {fit_h} h and {fit_w} w pairs: h on "
                         f"j % 3 == 1, w on j % 3 == 2)")
    return tuple(1 if (j % 3 == 1 and j < 3 * sh) else 2 if (j % 3 == 2 and j < 3 * sw) else 0 for j in range(n))


def diagonal_coords(coords: torch.Tensor, shape: Sequence[int], stride: float) -> torch.Tensor:
    """VideoRoPE / HoPE diagonal layout of ``(t, h, w)`` coordinates ``(N, 3)``: ``t' = stride t``,
    ``h' = h - (H - 1) // 2 + t'``, ``w' = w - (W - 1) // 2 + t'`` (the official ``get_t_scale_rope_index``
    without the text offset, a constant that RoPE ignores between patches)."""
    t = coords[:, 0] * stride
    h = coords[:, 1] - (shape[1] - 1) // 2 + t
    w = coords[:, 2] - (shape[2] - 1) // 2 + t
    return torch.stack([t, h, w], dim=-1)


def allocation_angles(allocation: str, coords: torch.Tensor, shape: Sequence[int], dims: Sequence[int],
                      base: float, temporal_stride: float = 1.0, num_heads: Optional[int] = None,
                      keep: Optional[Sequence[bool]] = None) -> torch.Tensor:
    """Angles of a non-``chunked`` allocation: ``(N, R/2)``, or ``(num_heads, N, R/2)`` for ``headwise``.

    ``coords (N, 3)`` float64 ``(t, h, w)``; bands ``theta_j = base^(-2j/R)``, ``R = sum(dims)``; pair ``j`` turns
    by ``theta_j`` times its axis' coordinate (t scaled by ``temporal_stride``; diagonal layout for ``videorope`` /
    ``hope``); ``hope``'s temporal pairs get angle 0. ``headwise``: head ``h`` uses axis ``h * 3 // num_heads``
    (contiguous groups t, h, w) on every pair. ``keep`` (p-RoPE): pairs with ``False`` get angle 0.
    """
    R = sum(dims)
    theta = torch.tensor(F_.rope_freqs_list(R, base), dtype=torch.float64, device=coords.device)
    c = coords.to(torch.float64)
    if allocation in ("videorope", "hope"):
        c = diagonal_coords(c, shape, temporal_stride)
    else:
        c = torch.cat([c[:, :1] * temporal_stride, c[:, 1:]], dim=-1)
    if keep is not None:
        theta = theta * torch.tensor([1.0 if k else 0.0 for k in keep], dtype=torch.float64, device=c.device)
    if allocation == "headwise":
        if num_heads is None or num_heads < 3:
            raise ValueError(f"headwise allocation needs num_heads >= 3 (one group per axis), got {num_heads!r}")
        axes = [h * 3 // num_heads for h in range(num_heads)]
        return torch.stack([c[:, a, None] * theta[None, :] for a in axes], dim=0)
    axes = torch.tensor(allocation_axes(allocation, dims), device=c.device)
    ang = c[:, axes] * theta[None, :]
    if allocation == "hope":
        ang = ang * (axes != 0).to(ang.dtype)[None, :]
    return ang


def allocation_plan(allocation: str, dims: Sequence[int], base: float,
                    num_heads: Optional[int] = None) -> Tuple[Tuple[Tuple[int, float], ...], ...]:
    """The ``(axis, band)`` of every rotated pair as :class:`AxialRoPE` with ``allocation`` assigns them, one tuple
    of ``sum(dims)/2`` pairs per head (``num_heads`` heads for ``headwise``, else one shared tuple).

    ``chunked``: pair ``j`` of axis ``a``'s block has band ``base^(-2j/d_a)``; the others use the shared band set
    ``base^(-2j/R)`` with :func:`allocation_axes` (``headwise``: head ``h`` puts axis ``h * 3 // num_heads`` on
    every pair)."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; expected one of {ALLOCATIONS}")
    if allocation == "chunked":
        axes = allocation_axes("chunked", dims)
        bands = [b for d in dims for b in F_.rope_freqs_list(d, base)]
        return (tuple(zip(axes, bands)),)
    bands = F_.rope_freqs_list(sum(dims), base)
    if allocation == "headwise":
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 3:
            raise ValueError(f"headwise allocation needs num_heads >= 3 (one group per axis), got {num_heads!r}")
        allocation_axes("mrope", dims)  # validates the dims
        return tuple(tuple((h * 3 // num_heads, b) for b in bands) for h in range(num_heads))
    return (tuple(zip(allocation_axes(allocation, dims), bands)),)


def p_rope_keep(n: int, p: float) -> Tuple[bool, ...]:
    """p-RoPE (Barbero et al., "Round and round we go"): keep the ``round(p n)`` highest of ``n`` bands (band ``j``
    sorted highest first); the rest become angle 0 (no rotation). ``p = 1`` is RoPE, ``p = 0`` NoPE."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p_rope must be a fraction in [0, 1] of the bands kept, got {p!r}")
    k = round(p * n)
    return tuple(j < k for j in range(n))


class _RoPEBase(PositionalEmbedding):
    hooks = frozenset({"qk"})

    def forward(self, q: torch.Tensor, k: torch.Tensor, layout, index: int = 0):
        """Rotate ``q, k (B, heads, N, head_dim)`` for ``layout``; returns ``(q, k)``."""
        return self.forward_qk(q, k, as_layout(layout), index)

    # ---- coordinate options shared by the rotary families ----------------------------------------------------
    def _init_coord_options(self, nd: int, order, grid_offset, normalize_coords, shift_coords, jitter_coords,
                            rescale_coords) -> None:
        self.axis_order = order
        self._perm = axis_order(order, nd)
        offs = list(grid_offset) if isinstance(grid_offset, (list, tuple)) else [grid_offset] * nd
        if len(offs) != nd:
            raise ValueError(f"grid_offset must be a number or one per axis ({nd}), got {grid_offset!r}")
        for o in offs:
            if isinstance(o, bool) or not isinstance(o, (int, float)) or not math.isfinite(o):
                raise ValueError(f"grid_offset must be finite numbers, got {grid_offset!r}")
        self.grid_offset = tuple(float(o) for o in offs)
        if normalize_coords not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalize_coords {normalize_coords!r}; expected one of {NORMALIZE_MODES}")
        self.normalize_coords = normalize_coords
        self.coord_aug = CoordAug(shift_coords, jitter_coords, rescale_coords)
        self._aug_draw = None  # the latest draw: used for a layout that carries none
        # the reference grids travel with the state dict (a tensor key, no buffer: meta-device init, dtype casts and
        # safetensors are unaffected)
        # on the module's device (meta for a meta build, until to_empty): the device the build happens on
        self._state_device = torch.empty(0).device  # the default device (a torch.device context); see below
        self._register_state_dict_hook(_save_ref_grid)
        self._register_load_state_dict_pre_hook(_load_ref_grid, with_module=True)

    def _patch_coords(self, layout: GridLayout, device=None) -> torch.Tensor:
        """Coordinates ``(prod(grid), ndim)`` float64 in grid-axis order (offset and mode applied, no augmentation)."""
        return grid_coords(layout, self.coords, self.ref_shape, device=device, dtype=torch.float64,
                           offset=self.grid_offset, normalize_coords=self.normalize_coords)

    def _apply(self, fn, *args, **kwargs):
        if "_state_device" in self.__dict__:  # follow .to / to_empty / .cuda for the ref_grid state entry
            self._state_device = fn(torch.empty(0, device=self._state_device)).device
        return super()._apply(fn, *args, **kwargs)

    @property
    def augmenting(self) -> bool:
        """Whether the coordinates are augmented now (training mode and an augmentation configured)."""
        return self.training and self.coord_aug.active

    def sample_coord_aug(self, device=None, generator: Optional[torch.Generator] = None):
        """Draw a coordinate transform (training mode only; returns it, or ``None`` in eval) and keep it as the
        latest draw, used by layouts that carry none (direct use of ``forward_qk`` without a host)."""
        if not self.augmenting:
            return None
        self._aug_draw = self.coord_aug.sample(len(self._perm), device=device, generator=generator)
        return self._aug_draw

    @packed_native
    def prepare(self, x: torch.Tensor, layout: GridLayout) -> GridLayout:
        """Per forward (hosts call it once, before the blocks): while augmenting, draw this forward's coordinate
        transform and attach it to the layout every layer receives, so all layers of the forward -- and their
        recomputation under activation checkpointing, even after later forwards -- share it. Else unchanged.
        A PackedLayout gets one draw for the whole batch (as a GridLayout batch)."""
        if not self.augmenting:
            return layout
        draw = self.sample_coord_aug(device=x.device if isinstance(x, torch.Tensor) else None)
        return layout.with_state(self, draw)

    def _packed_qk_tables(self, layout: PackedLayout, build, device):
        """Per-sample ``(cos, sin)`` of a PackedLayout: ``build(g)`` gives each group's tables ``(n_g, d)`` or
        ``(heads, n_g, d)`` (``n_g`` its tokens, prefix included); they are gathered into one
        ``(B, 1 or heads, N, d)`` pair, padding rows at angle 0 (cos 1, sin 0)."""
        tabs = [build(_with_packed_state(g, layout)) for g, _ in layout.groups()]
        idx = layout.group_index(device).reshape(-1)
        out = []
        for j, fill in ((0, 1.0), (1, 0.0)):
            parts = [t[j] for t in tabs]
            pad = torch.full((*parts[0].shape[:-2], 1, parts[0].shape[-1]), fill, dtype=parts[0].dtype,
                             device=parts[0].device)
            full = torch.cat(parts + [pad], dim=-2).index_select(-2, idx.to(parts[0].device))
            full = full.unflatten(-2, (layout.batch_size, layout.num_tokens))  # (..., B, N, d)
            out.append(full[:, None] if full.dim() == 3 else full.movedim(-3, 0))
        return out[0], out[1]

    def _augmented(self, coords: torch.Tensor, layout=None) -> torch.Tensor:
        draw = layout.state_of(self) if isinstance(layout, (GridLayout, PackedLayout)) else None
        if draw is None:
            draw = self._aug_draw
        if draw is None:
            raise RuntimeError(f"{self.name}: coordinate augmentation is on in training mode but no transform was "
                               f"drawn for this forward; call layout = pe.prepare(x, layout) once per forward (as "
                               f"hosts do) or pe.sample_coord_aug() before the attention layers")
        return CoordAug.apply(coords, draw, self._perm)


class AxialRoPE(_RoPEBase):
    """Axial RoPE on a 1D, 2D or 3D grid.

    Args:
        head_dim: attention head dim ``D`` (even).
        ndim: grid rank (1, 2, 3). Ignored if ``dims`` is given.
        dims: rotary dim per axis (each even); ``sum(dims) = R <= head_dim``; channels ``R..head_dim`` pass
            through unrotated (``half`` pairing then pairs ``(j, j + R/2)`` inside the first ``R`` channels). Default :func:`default_axis_dims` of ``rotary_dim``.
        rotary_dim: total rotated channels when ``dims`` is not given (default ``head_dim``).
        base: base per axis (a float or one per axis). Default 100 (RoPE-ViT) for 1D/2D, 1e4 for 3D.
        pairing: ``"interleaved"`` or ``"half"``.
        coords: coordinate mode (:data:`vispos.grid.COORD_MODES`), or one per axis.
        ref_shape: reference grid for ``interpolated`` / ``normalized`` / ``cropped`` coordinates
            (default ``train_shape``).
        train_shape: the training grid. Rules whose ``train_len`` is unset take it from here, and rules whose
            ``test_len`` is unset take the current grid's size, so one module adapts to every test grid.
        rules: scaling rule(s): a name / :class:`vispos.freqs.ScalingRule` / dict, for all axes, or one per axis
            (``None`` entries mean ``"none"``).
        preset: ``"cogvideox"``, ``"hunyuanvideo"`` or ``"wan"`` (sets dims and base; see :data:`PRESETS`).
        axis_order: channel-block order, ``"ij"`` (grid order), ``"xy"`` (width block first; timm
            ``grid_indexing='xy'``) or a permutation; ``dims``, ``base``, ``coords`` and ``rules`` stay per grid axis.
        grid_offset: added to the integer index of every axis (or one per axis) before ``coords``.
        normalize_coords: denominators of ``coords="centered"`` (``separate`` / ``max`` / ``min``).
        angle_scale: every band is multiplied by it (DINOv3: ``2*pi``, its angles are ``2 pi c / period``).
        periods: ``(min_period, max_period)``: bands ``1 / period_j`` with periods log-spaced from min to max over
            each axis' ``d_a / 2`` pairs (DINOv3's alternative to ``base``); ``None``: ``base^(-2j/d_a)``.
        shift_coords, jitter_coords, rescale_coords: train-time coordinate augmentation
            (:class:`vispos.grid.CoordAug`), applied after the coordinate mode, in its units.
        device: where :meth:`get_table` / :meth:`build_table` put tables when called without a device
            (``forward_qk`` always builds them on ``q``'s device). The module holds no parameters.
        dtype: the cos/sin tables' dtype (default ``float32``; the angles are computed in float64 and the
            trigonometry in the angles' precision either way). ``float64`` tables make the rotation itself run
            in float64; low-precision tables (``bfloat16``) trade accuracy for memory.
        allocation: which pairs carry which axis (:data:`ALLOCATIONS`; 3D only except ``chunked`` and the 2D
            ``mrope_interleaved`` of :func:`interleaved_axes_2d`, timm ``RotaryEmbeddingMRope``: there
            ``rotary_dim``, default ``head_dim``, also holds the t pairs, unrotated on an image): ``chunked``
            (default: per-axis blocks, own bands), ``mrope``, ``mrope_interleaved``, ``videorope``, ``hope``,
            ``headwise`` (see :func:`allocation_axes`, :func:`allocation_angles`). The non-chunked ones use one
            band set ``base^(-2j/R)`` (one base) and accept no scaling rules.
        temporal_stride: multiplies the t coordinate (VideoRoPE's temporal spacing; default 2 for ``videorope``,
            1 otherwise).
        temporal_scales: HoPE's dynamic temporal scaling: in training each forward draws its stride from this
            list (e.g. ``(0.5, 0.75, 1, 1.25, 1.5)``, the official set); ``eval()`` uses ``temporal_stride``.
        num_heads: heads of the host (``headwise`` only: head ``h`` rotates with axis ``h * 3 // num_heads``).
        p_rope: p-RoPE, the fraction of bands kept (the highest of each axis for ``chunked``, of the shared band
            set otherwise); the rest are left unrotated. ``None`` keeps all.

    Shapes: ``forward_qk(q, k, layout)`` with ``q, k (B, heads, num_prefix + prod(grid), head_dim)``.
    """

    name = "rope_axial"
    family = "rope"
    description = "axial RoPE: per-axis rotary blocks, any coordinates and scaling rule (RoPE-ViT, EVA-02, video DiTs)"
    ndims = (1, 2, 3)
    build_sets = ("train_shape",)  # the builder sets it from grid=
    _table_attrs = frozenset({"rules", "coords", "ref_shape", "train_shape", "bases", "dims", "pairing",
                              "table_dtype", "table_device", "grid_offset", "normalize_coords", "angle_scale",
                              "periods", "_perm", "allocation", "temporal_stride", "p_rope"})

    def __init__(
        self,
        head_dim: int,
        ndim: int = 2,
        dims: Optional[Sequence[int]] = None,
        rotary_dim: Optional[int] = None,
        base: Union[float, Sequence[float], None] = None,
        pairing: str = "interleaved",
        coords: Union[str, Sequence[str]] = "index",
        ref_shape: Optional[Sequence[float]] = None,
        train_shape: Optional[Sequence[int]] = None,
        rules=None,
        preset: Optional[str] = None,
        axis_order: Union[str, Sequence[int]] = "ij",
        grid_offset: Union[float, Sequence[float]] = 0.0,
        normalize_coords: str = "separate",
        angle_scale: float = 1.0,
        periods: Optional[Tuple[float, float]] = None,
        shift_coords: Optional[float] = None,
        jitter_coords: Optional[float] = None,
        rescale_coords: Optional[float] = None,
        allocation: str = "chunked",
        temporal_stride: Optional[float] = None,
        temporal_scales: Optional[Sequence[float]] = None,
        num_heads: Optional[int] = None,
        p_rope: Optional[float] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        head_dim = check_int(head_dim, "RoPE head_dim", 2, multiple_of=2)
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown RoPE preset {preset!r}; expected one of {sorted(PRESETS)}")
            p = PRESETS[preset]
            if head_dim != p["head_dim"]:
                raise ValueError(f"preset {preset!r} is for head_dim {p['head_dim']}, got head_dim={head_dim}")
            dims = p["dims"] if dims is None else dims
            base = p["base"] if base is None else base
        if dims is None:
            rd = head_dim if rotary_dim is None else rotary_dim
            if isinstance(rd, bool) or not isinstance(rd, int) or rd <= 0 or rd > head_dim:
                raise ValueError(f"rotary_dim must be an int in 1..head_dim={head_dim}, got {rotary_dim!r}")
            dims = default_axis_dims(rd, ndim)
        dims = tuple(dims)
        for d in dims:
            if isinstance(d, bool) or not isinstance(d, int) or d <= 0 or d % 2:
                raise ValueError(f"per-axis rotary dims must be positive even ints, got dims={dims}")
        if sum(dims) > head_dim:
            raise ValueError(f"per-axis rotary dims {dims} sum to {sum(dims)}, more than head_dim={head_dim}")
        # 2D interleaved M-RoPE: rotary_dim (default head_dim) also holds the t pairs, inert on an image
        inert_t = allocation == "mrope_interleaved" and len(dims) == 2
        if inert_t and rotary_dim is None:
            rotary_dim = head_dim
        if inert_t:
            if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int) or rotary_dim % 2 or \
                    not sum(dims) <= rotary_dim <= head_dim:
                raise ValueError(f"2D interleaved M-RoPE needs an even rotary_dim in sum(dims)={sum(dims)}.."
                                 f"head_dim={head_dim} (its t pairs included), got {rotary_dim!r}")
        elif rotary_dim is not None and sum(dims) != rotary_dim:
            raise ValueError(f"per-axis rotary dims {dims} sum to {sum(dims)}, not rotary_dim={rotary_dim}")
        self.head_dim = head_dim
        self.dims = dims
        self.rotary_dim = rotary_dim if inert_t else sum(dims)
        # half pairing with a partial rotary dim rotates x[..., :R] with pairs (j, j + R/2) (GPT-NeoX / LLaMA
        # partial-rotary layout) and passes x[..., R:] through
        self._partial_half = pairing == "half" and self.rotary_dim < head_dim
        self.ndims = (len(dims),)
        nd = len(dims)
        if base is None:
            base = 10000.0 if nd == 3 else 100.0
        bases = list(base) if isinstance(base, (list, tuple)) else [base] * nd
        if len(bases) != nd:
            raise ValueError(f"base must be a number or one per axis ({nd}), got {base!r}")
        for b in bases:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
                raise ValueError(f"RoPE base must be a positive number, got {b!r}")
        self.bases = tuple(float(b) for b in bases)
        self.pairing = check_pairing(pairing)
        self.coords = coords
        modes = [coords] * nd if isinstance(coords, str) else list(coords)
        if len(modes) != nd:
            raise ValueError(f"coords must be a mode or one per axis ({nd}), got {coords!r}")
        from ..grid import COORD_MODES

        for m in modes:
            if m not in COORD_MODES:
                raise ValueError(f"unknown coordinate mode {m!r}; expected one of {COORD_MODES}")
        self.train_shape = check_grid_shape(tuple(train_shape), "train_shape") if train_shape is not None else None
        if self.train_shape is not None and len(self.train_shape) != nd:
            raise ValueError(f"train_shape {self.train_shape} has {len(self.train_shape)} axes, RoPE has {nd}")
        self.ref_shape = tuple(ref_shape) if ref_shape is not None else self.train_shape
        if any(m not in ("index", "centered") for m in modes) and self.ref_shape is None:
            raise ValueError(f"coordinate mode {coords!r} needs ref_shape= or train_shape=")
        self._init_coord_options(nd, axis_order, grid_offset, normalize_coords, shift_coords, jitter_coords,
                                 rescale_coords)
        if isinstance(angle_scale, bool) or not isinstance(angle_scale, (int, float)) or not (
                math.isfinite(angle_scale) and angle_scale > 0):
            raise ValueError(f"angle_scale must be a positive finite number, got {angle_scale!r}")
        self.angle_scale = float(angle_scale)
        if periods is not None:
            ok = isinstance(periods, (tuple, list)) and len(periods) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in periods)
            if not ok:
                raise ValueError(f"periods must be (min_period, max_period), two positive numbers, got {periods!r}")
            periods = (float(periods[0]), float(periods[1]))
        self.periods = periods
        if isinstance(rules, (list, tuple)):
            if len(rules) != nd:
                raise ValueError(f"rules must be one rule or one per axis ({nd}), got {len(rules)}")
            self.rules = tuple(F_.as_rule(r) for r in rules)
        else:
            self.rules = tuple(F_.as_rule(rules) for _ in range(nd))
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype (the RoPE tables' dtype), got {dtype!r}")
        self.table_dtype = torch.float32 if dtype is None else dtype
        self.table_device = None if device is None else torch.device(device)
        if device is not None:
            self._state_device = torch.device(device)
        self._init_allocation(allocation, temporal_stride, temporal_scales, num_heads, p_rope)

    def _init_allocation(self, allocation, temporal_stride, temporal_scales, num_heads, p_rope) -> None:
        """Validate and store the 3D allocation options (see the class docstring)."""
        if allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {allocation!r}; expected one of {ALLOCATIONS}")
        nd = len(self.dims)
        if allocation != "chunked":
            if nd != 3 and not (nd == 2 and allocation == "mrope_interleaved"):
                raise ValueError(f"allocation {allocation!r} is for 3D (t, h, w) grids (mrope_interleaved also 2D), "
                                 f"got dims {self.dims}")
            if len(set(self.bases)) != 1:
                raise ValueError(f"allocation {allocation!r} uses one band set: give one base, got {self.bases}")
            if any(r.name != "none" for r in self.rules):
                raise ValueError(f"allocation {allocation!r} takes no scaling rules (they are defined per axis "
                                 f"block), got {[r.name for r in self.rules]}")
            if nd == 2:
                interleaved_axes_2d(self.rotary_dim, self.dims)  # validates the dims
            else:
                allocation_axes(allocation if allocation != "headwise" else "mrope", self.dims)  # validates
        if allocation == "headwise" and (isinstance(num_heads, bool) or not isinstance(num_heads, int)
                                         or num_heads < 3):
            raise ValueError(f"allocation 'headwise' needs num_heads >= 3 (one group per axis), got {num_heads!r}")
        if temporal_stride is None:
            temporal_stride = 2.0 if allocation == "videorope" else 1.0
        if isinstance(temporal_stride, bool) or not isinstance(temporal_stride, (int, float)) or \
                not temporal_stride > 0:
            raise ValueError(f"temporal_stride must be a positive number, got {temporal_stride!r}")
        if (temporal_stride != 1.0 or temporal_scales) and allocation == "chunked" and nd != 3:
            raise ValueError(f"temporal_stride / temporal_scales need a 3D grid, got dims {self.dims}")
        if temporal_scales is not None:
            temporal_scales = tuple(temporal_scales)
            if not temporal_scales or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                                          for v in temporal_scales):
                raise ValueError(f"temporal_scales must be a non-empty list of positive numbers, got "
                                 f"{temporal_scales!r}")
        if p_rope is not None:
            p_rope_keep(1, p_rope)  # validates
        if allocation != "chunked" and (self._perm != tuple(range(nd)) or self.periods is not None or
                                        self.angle_scale != 1.0):
            raise ValueError(f"allocation {allocation!r} defines its own pair order and bands: use the default "
                             f"axis_order, periods and angle_scale")
        self._dts_owner = object()  # key of the per-forward HoPE stride on the layout
        self.allocation = allocation
        self.temporal_stride = float(temporal_stride)
        self.temporal_scales = temporal_scales
        self.num_heads = num_heads
        self.p_rope = p_rope

    def _draw_stride(self) -> float:
        i = int(torch.randint(len(self.temporal_scales), (1,)))
        return float(self.temporal_scales[i])

    @packed_native
    def prepare(self, x: torch.Tensor, layout: GridLayout) -> GridLayout:
        """As :meth:`_RoPEBase.prepare`, plus HoPE's dynamic temporal scaling: in training, one stride from
        ``temporal_scales`` is drawn per forward and carried on the layout, so every layer of the forward (and its
        recomputation under activation checkpointing) uses it."""
        layout = super().prepare(x, layout)
        if self.temporal_scales is not None and self.training:
            layout = as_layout(layout).with_state(self._dts_owner, self._draw_stride())
        return layout

    def _stride(self, layout=None) -> float:
        """The temporal stride of this forward: the draw the layout carries (see :meth:`prepare`) in training with
        ``temporal_scales`` -- a fresh draw per call when used without a host's ``prepare`` -- else the fixed one."""
        if self.temporal_scales is not None and self.training:
            v = layout.state_of(self._dts_owner) if isinstance(layout, (GridLayout, PackedLayout)) else None
            return self._draw_stride() if v is None else v
        return self.temporal_stride

    # ---- frequencies and tables ---------------------------------------------------------------------------------
    @staticmethod
    def axis_extents(layout) -> Tuple[float, ...]:
        """Per-axis length a rule sees as ``L'``: the grid size, or for explicit positions their span
        ``max(p) - min(p) + 1`` (a strided clip at frames 0, 2, ..., 64 is 65 frames long, not 33)."""
        if not isinstance(layout, GridLayout):
            return tuple(layout)
        if layout.positions is None:
            return layout.shape
        return tuple(s if p is None else (max(p) - min(p) + 1) for s, p in zip(layout.shape, layout.positions))

    def rules_for(self, layout) -> Tuple[F_.ScalingRule, ...]:
        """The per-axis rules with lengths filled in for a layout or grid shape (see ``train_shape``)."""
        ext = self.axis_extents(layout)
        out = []
        for a, r in enumerate(self.rules):
            if r.name == "none":
                out.append(r)
                continue
            tr = r.train_len if r.train_len is not None else (self.train_shape[a] if self.train_shape else None)
            te = r.test_len if r.test_len is not None else ext[a]
            out.append(r.with_lengths(tr, te) if tr is not None else r.with_lengths(None, te))
        return tuple(out)

    def _base_bands(self, a: int):
        """Axis ``a``'s bands before its rule (Python floats): ``base^(-2j/d)`` or ``1 / period_j``."""
        d = self.dims[a]
        if self.periods is None:
            return F_.rope_freqs_list(d, self.bases[a])
        lo, hi = self.periods
        n = d // 2
        return [1.0 / (lo * (hi / lo) ** (j / (n - 1) if n > 1 else 0.0)) for j in range(n)]

    def get_freqs(self, layout=None):
        """Bands per grid axis (float64) after the rules and ``angle_scale``, for a layout or grid shape (default
        the training grid). Index ``a`` is grid axis ``a`` whatever the ``axis_order``."""
        if layout is None:
            layout = self.train_shape
        if layout is None and any(r.name != "none" for r in self.rules):
            raise ValueError("a grid shape is needed to apply scaling rules (no train_shape set)")
        rules = self.rules_for(layout) if layout is not None else self.rules
        out = []
        for a, (d, b, r) in enumerate(zip(self.dims, self.bases, rules)):
            f = F_.apply_rule_list(self._base_bands(a), r, b, d)
            out.append(torch.tensor([x * self.angle_scale for x in f], dtype=torch.float64))
        return out

    def _attn_factor(self, layout):
        """YaRN attention factor per table column: each axis block gets its own rule's factor (as the diffusers
        adapters do); ``1.0`` when no rule asks for one."""
        facs = [F_.rule_attention_factor(r) for r in self.rules_for(layout)]
        if all(f == 1.0 for f in facs):
            return 1.0
        return torch.tensor([facs[a] for a in self._perm for _ in range(self.dims[a] // 2)], dtype=torch.float64)

    def build_table(self, layout: GridLayout, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(num_prefix + prod(grid), head_dim // 2)`` in the module's ``dtype`` (default
        float32), on ``device`` (default the module's ``device``); uncached.

        With ``pairing="half"`` and a partial rotary dim ``R < head_dim`` the tables are ``R // 2`` wide.
        """
        return self._build_table(layout, device, self.temporal_stride)

    def _build_table(self, layout: GridLayout, device, stride: float):
        self.check_layout(layout)
        device = self.table_device if device is None else device
        coords = self._patch_coords(layout, device)
        if self.augmenting:
            coords = self._augmented(coords, layout)
        width = self.rotary_dim // 2 if self._partial_half else self.head_dim // 2
        if self.allocation != "chunked" and len(self.dims) == 2:  # 2D interleaved M-RoPE, t = 0
            axes = torch.tensor(interleaved_axes_2d(self.rotary_dim, self.dims), device=coords.device)
            theta = torch.tensor(F_.rope_freqs_list(self.rotary_dim, self.bases[0]), dtype=torch.float64,
                                 device=coords.device)
            if self.p_rope is not None:
                theta = theta * torch.tensor(p_rope_keep(self.rotary_dim // 2, self.p_rope), dtype=torch.float64,
                                             device=coords.device)
            c = coords.to(torch.float64)
            c = torch.cat([torch.zeros_like(c[:, :1]), c], dim=-1)
            return rope_table(c[:, axes] * theta[None, :], layout.num_prefix, width, dtype=self.table_dtype)
        if self.allocation != "chunked":
            keep = p_rope_keep(self.rotary_dim // 2, self.p_rope) if self.p_rope is not None else None
            angles = allocation_angles(self.allocation, coords, layout.shape, self.dims, self.bases[0], stride,
                                       self.num_heads, keep)
            return rope_table(angles, layout.num_prefix, width, dtype=self.table_dtype)
        perm = list(self._perm)
        freqs = self.get_freqs(layout)
        if self.p_rope is not None:
            freqs = [f * torch.tensor(p_rope_keep(f.numel(), self.p_rope), dtype=f.dtype, device=f.device)
                     for f in freqs]
        if stride != 1.0:  # grid axis 0 is t
            coords = torch.cat([coords[:, :1] * stride, coords[:, 1:]], dim=-1)
        angles = rope_angles(coords[:, perm], [freqs[a].to(device) for a in perm])
        return rope_table(angles, layout.num_prefix, width, scale=self._attn_factor(layout), dtype=self.table_dtype)

    # ---- a host's rotary module (see vispos.pe.host) -----------------------------------------------------------
    #: the options of the host's rotary module this family takes as defaults (``None``: all; VoPE keeps its own
    #: coordinates)
    _host_settings: Optional[Tuple[str, ...]] = None

    @classmethod
    def options_from_host(cls, host) -> dict:
        """Options reproducing the host's rotary module (:func:`axial_options_from_timm`); what cannot be reproduced
        is added to ``host.problems``."""
        opts, problem = _axial_from_rotary(host.peek("rotary"))
        if problem:
            host.problems.append(f"{cls.name}: {problem}")
        return {k: v for k, v in opts.items() if cls._host_settings is None or k in cls._host_settings}

    def state_from_host(self, host, path: str) -> dict:
        """No parameters; takes the host's rotary module when its settings are reproduced (they became defaults)."""
        rope = host.peek("rotary")
        opts, problem = _axial_from_rotary(rope)
        if rope is not None and not problem:
            host.take("rotary", path)
            host.log("rope (%s) -> %s (its settings; no parameters)", type(rope).__name__, path)
        return {}

    def get_table(self, layout, device=None, stride: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached :meth:`build_table` (per layout, device and temporal stride; ``device=None``: the module's
        ``device``); rebuilt at every call while augmenting."""
        layout = as_layout(layout)
        device = self.table_device if device is None else device
        stride = self.temporal_stride if stride is None else stride
        if self.augmenting:
            return self._build_table(layout, device, stride)
        return self.cached(("table", layout, str(device), stride), lambda: self._build_table(layout, device, stride))

    def packed_table(self, layout: PackedLayout, device=None, stride: Optional[float] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(cos, sin)`` of a :class:`~vispos.grid.PackedLayout`, each ``(B, 1, N, d)`` (``(B, heads,
        N, d)`` for the headwise allocation): every sample's rows are its own grid's :meth:`get_table` rows,
        padding rows are angle 0. Built once per layout, device and stride (cached; rebuilt while augmenting)."""
        device = self.table_device if device is None else device
        stride = self.temporal_stride if stride is None else stride

        def build():
            return self._packed_qk_tables(layout, lambda g: self.get_table(g, device, stride), device)

        if self.augmenting:
            return build()
        return self.cached(("packed_table", layout, str(device), stride), build)

    @packed_native
    def forward_qk(self, q, k, layout, index: int = 0):
        layout = as_layout(layout)
        if isinstance(layout, PackedLayout) and layout.uniform is not None:
            layout = _with_packed_state(layout.uniform, layout)  # one grid, no padding: the single-grid path
        _check_qk(q, k, self.head_dim, layout, self.name, self)
        if self.allocation == "headwise" and q.shape[1] != self.num_heads:
            raise ValueError(f"rope_axial (headwise): q has {q.shape[1]} heads, built for {self.num_heads}")
        if isinstance(layout, PackedLayout):
            layout.check_batch(q.shape[0], f"{self.name}: q")
            stride = self._stride(layout)
            cos, sin = self.packed_table(layout, q.device, stride)
        else:
            cos, sin = self.get_table(layout, q.device, self._stride(layout))
        if self._partial_half:
            R = self.rotary_dim
            qr, kr = apply_rope_qk(q[..., :R], k[..., :R], cos, sin, "half")
            return torch.cat([qr, q[..., R:]], dim=-1), torch.cat([kr, k[..., R:]], dim=-1)
        return apply_rope_qk(q, k, cos, sin, self.pairing)

    def extra_repr(self) -> str:
        extra = ""
        if self.allocation != "chunked":
            extra += f", allocation={self.allocation!r}"
            if self.rotary_dim != sum(self.dims):
                extra += f", rotary_dim={self.rotary_dim}"
        if self._perm != tuple(range(len(self._perm))):
            extra += f", axis_order={self.axis_order!r}"
        if any(self.grid_offset):
            extra += f", grid_offset={self.grid_offset}"
        if self.angle_scale != 1.0:
            extra += f", angle_scale={self.angle_scale:g}"
        if self.periods is not None:
            extra += f", periods={self.periods}"
        if self.coord_aug.active:
            extra += f", coord_aug={self.coord_aug}"
        return (f"head_dim={self.head_dim}, dims={self.dims}, bases={self.bases}, pairing={self.pairing!r}, "
                f"coords={self.coords!r}, rules={[r.name for r in self.rules]}{extra}")


class VoPE(AxialRoPE):
    """VoPE: axial RoPE on centred, reference-normalised continuous coordinates.

    Definition used by vispos (the published VoPE, D-JEPA T2I, has no released formula; see REFERENCES.md): for an
    axis of ``size`` tokens and reference (training) size ``ref``, token ``p`` sits at

        ``c(p) = (p + 0.5 - size / 2) * ref / size``

    so the image always spans ``[-ref/2, ref/2]``; at a larger grid the same image extent is sampled more finely,
    at any aspect ratio. Angles are ``c(p) * theta_j`` per axis as in :class:`AxialRoPE`. Relations: this is
    ``rope_axial`` with ``coords="interpolated"`` (``p * ref / size``) shifted by ``(0.5 - size/2) * ref / size``:
    patch-to-patch scores are equal, but prefix tokens (angle 0) see the shift, so with class / register tokens
    VoPE differs from plain RoPE even at the training grid. DINOv3's coordinates are ``c(p) * 2 / ref``.

    Args: as :class:`AxialRoPE`; ``train_shape`` (or ``ref_shape``) is required.
    """

    name = "vope"
    family = "rope"
    description = "VoPE: axial RoPE on centred coordinates normalised to the training grid (continuous resolution)"
    _host_settings = ("base", "pairing")

    def __init__(self, head_dim: int, ndim: int = 2, train_shape=None, ref_shape=None, **kwargs):
        if train_shape is None and ref_shape is None:
            raise ValueError("VoPE needs train_shape= (or ref_shape=): the reference grid its coordinates span")
        kwargs.setdefault("coords", "normalized")
        super().__init__(head_dim, ndim=ndim, train_shape=train_shape, ref_shape=ref_shape, **kwargs)


def init_mixed_freqs(
    head_dim: int, depth: int, num_heads: int, ndim: int = 2, temperature: float = 10.0, rotate: bool = True,
    generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
) -> torch.Tensor:
    """RoPE-Mixed init, ``(ndim, depth, num_heads, head_dim // 2)``.

    The pairs are split in ``ndim`` groups of ``n`` bands with magnitudes ``temperature^(-i/n)``; per layer and head
    a random rotation ``R`` (2D: angle ``alpha``, as RoPE-Mixed/timm; 3D: a random orthogonal matrix) points
    group ``g`` along ``R[:, g]``. Axis order follows the grid (``(h, w)`` / ``(t, h, w)``); timm's tensor is
    ``(x, y)`` = ``ours.flip(0)`` for 2D.
    """
    half = head_dim // 2
    if head_dim % (2 * ndim):
        raise ValueError(f"RoPE-Mixed needs head_dim divisible by {2 * ndim} for a {ndim}-D grid, got {head_dim}")
    n = half // ndim
    mag = 1.0 / (temperature ** (torch.arange(0, n, dtype=torch.float64) * (2 * ndim) / head_dim))
    if ndim == 2:
        if rotate:
            ang = torch.rand(depth, num_heads, 1, generator=generator, dtype=torch.float64) * 2 * math.pi
        else:
            ang = torch.zeros(depth, num_heads, 1, dtype=torch.float64)
        fx = torch.cat([mag * torch.cos(ang), mag * torch.cos(ang + math.pi / 2)], dim=-1)
        fy = torch.cat([mag * torch.sin(ang), mag * torch.sin(ang + math.pi / 2)], dim=-1)
        out = torch.stack([fy, fx], dim=0)  # axis 0 = rows (y), axis 1 = cols (x)
    else:
        if rotate:
            g = torch.randn(depth, num_heads, ndim, ndim, generator=generator, dtype=torch.float64)
            R, _ = torch.linalg.qr(g)
        else:
            R = torch.eye(ndim, dtype=torch.float64).expand(depth, num_heads, ndim, ndim)
        # group gi: frequency vector over axes = mag * R[:, :, :, gi]
        groups = [R[..., :, gi, None] * mag for gi in range(ndim)]  # each (depth, heads, ndim, n)
        out = torch.cat(groups, dim=-1).permute(2, 0, 1, 3)  # (ndim, depth, heads, ndim*n)
    if out.shape[-1] < half:  # leftover pairs (half not divisible by ndim) stay unrotated
        out = torch.cat([out, out.new_zeros(*out.shape[:-1], half - out.shape[-1])], dim=-1)
    return out.to(device=device, dtype=dtype)


def init_mixed_allocation(
    plan, depth: int, num_heads: int, head_dim: int, rotate: bool = True, hope: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RoPE-Mixed frequencies ``(3, depth, num_heads, head_dim // 2)`` float64 for a 3D allocation, and the mask
    ``(3, 1, num_heads, head_dim // 2)`` of the learnable entries.

    ``plan`` is :func:`allocation_plan`'s ``(axis, band)`` per pair. A time pair learns only its t frequency,
    initialised to its band (``hope``: 0 and masked, so exactly unrotated). A spatial pair learns an (h, w)
    frequency: its axis' unit vector rotated in the (x, y) = (w, h) plane by the 2D RoPE-Mixed angle ``alpha`` of
    its layer and head (uniform in ``[0, 2 pi)``; 0 with ``rotate=False``), times its band -- so pairs on w point
    along ``(cos a, sin a)`` and pairs on h along ``(-sin a, cos a)``, as :func:`init_mixed_freqs` in 2D. Pairs past
    ``sum(dims)`` stay unrotated (masked).
    """
    half = head_dim // 2
    if rotate:
        alpha = torch.rand(depth, num_heads, generator=generator, dtype=torch.float64) * 2 * math.pi
    else:
        alpha = torch.zeros(depth, num_heads, dtype=torch.float64)
    ca, sa = torch.cos(alpha), torch.sin(alpha)
    f = torch.zeros(3, depth, num_heads, half, dtype=torch.float64)
    mask = torch.zeros(3, 1, num_heads, half, dtype=torch.float64)
    for h in range(num_heads):
        for j, (axis, band) in enumerate(plan[h if len(plan) > 1 else 0]):
            if axis == 0:
                if not hope:
                    f[0, :, h, j] = band
                    mask[0, 0, h, j] = 1.0
                continue
            if axis == 2:  # w: (x, y) = (cos a, sin a)
                f[2, :, h, j], f[1, :, h, j] = band * ca[:, h], band * sa[:, h]
            else:  # h: (x, y) = (-sin a, cos a)
                f[2, :, h, j], f[1, :, h, j] = -band * sa[:, h], band * ca[:, h]
            mask[1:, 0, h, j] = 1.0
    return f, mask


class MixedRoPE(_RoPEBase):
    """RoPE-Mixed: learned per-layer, per-head frequencies over every grid axis (2D or 3D).

    Args:
        head_dim: attention head dim (divisible by ``2 * ndim``).
        depth: number of attention layers (``index`` in :meth:`forward_qk` selects the layer).
        num_heads: heads per layer.
        ndim: grid rank (2 or 3).
        temperature: magnitude base (10 in the paper).
        coords: coordinate mode (default ``index``: RoPE-ViT extends positions, never interpolates).
        axis_order: which grid axis each row of ``freqs`` multiplies: ``"ij"`` (row ``a`` = grid axis ``a``),
            ``"xy"`` (2D: row 0 = x, as timm ``RotaryEmbeddingMixed(grid_indexing='xy')`` stores it) or a
            permutation. The init gives the same frequencies per grid axis in every order.
        grid_offset, normalize_coords, shift_coords, jitter_coords, rescale_coords: as :class:`AxialRoPE`.
        temporal_stride: 3D only: multiplies the t coordinate (VideoRoPE's temporal spacing, as ``rope_axial``'s
            option); default 2 for ``allocation="videorope"``, else 1.
        allocation: 3D only. ``None`` (default): every pair mixes all three axes (random orthogonal init). One of
            :data:`ALLOCATIONS`: the pairs :class:`AxialRoPE` with that allocation puts on t learn a t-only
            frequency (initialised to its band; ``hope``: unrotated, not learned) and the pairs it puts on h or w
            learn a mixed (h, w) frequency (its band along the axis, turned by a per-layer, per-head 2D RoPE-Mixed
            angle; see :func:`init_mixed_allocation`). Bands use ``temperature`` as the base; ``videorope`` /
            ``hope`` use the diagonal layout (:func:`diagonal_coords`). With ``rotate=False`` the initial tables
            equal ``rope_axial(allocation=..., base=temperature)``'s.
        dims: per-axis rotary dims ``(d_t, d_h, d_w)`` of the allocation (default :func:`default_axis_dims`).

    Parameter ``freqs (ndim, depth, num_heads, head_dim // 2)`` (no weight decay: see :meth:`no_weight_decay`).
    Angles are computed in float64 (never lowered by autocast), cos/sin cast once to float32:
    ``angle[l, h, n, j] = sum_a p[n, a] f[a, l, h, j]``.
    """

    name = "rope_mixed"
    family = "rope"
    description = "RoPE-Mixed: learned per-layer, per-head frequencies mixing the grid axes (Heo et al. 2024)"
    build_sets = ("train_shape",)  # the builder sets it from grid=
    _table_attrs = frozenset({"coords", "ref_shape", "grid_offset", "normalize_coords", "_perm", "temporal_stride",
                              "allocation", "dims"})

    def __init__(
        self, head_dim: int, depth: int, num_heads: int, ndim: int = 2, temperature: float = 10.0,
        pairing: str = "interleaved", coords="index", ref_shape=None, train_shape=None, rotate: bool = True,
        axis_order: Union[str, Sequence[int]] = "ij", grid_offset: Union[float, Sequence[float]] = 0.0,
        normalize_coords: str = "separate", shift_coords: Optional[float] = None,
        jitter_coords: Optional[float] = None, rescale_coords: Optional[float] = None,
        temporal_stride: Optional[float] = None, allocation: Optional[str] = None,
        dims: Optional[Sequence[int]] = None, device=None, dtype=None,
    ):
        super().__init__()
        head_dim = check_int(head_dim, "RoPE head_dim", 2, multiple_of=2)
        if allocation is not None:
            if allocation not in ALLOCATIONS:
                raise ValueError(f"unknown allocation {allocation!r}; expected None or one of {ALLOCATIONS}")
            if ndim != 3:
                raise ValueError(f"allocation {allocation!r} is for 3D (t, h, w) grids, got ndim={ndim}")
            if axis_order not in ("ij", (0, 1, 2), [0, 1, 2]):
                raise ValueError(f"allocation {allocation!r} defines its own pair order: use axis_order='ij', got "
                                 f"{axis_order!r}")
            dims = default_axis_dims(head_dim, 3) if dims is None else tuple(dims)
            if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 or d % 2 for d in dims) \
                    or sum(dims) > head_dim:
                raise ValueError(f"dims must be three positive even ints (t, h, w) summing to at most "
                                 f"head_dim={head_dim}, got {dims!r}")
            allocation_plan(allocation, dims, 10.0, num_heads if allocation == "headwise" else None)  # validates
        elif dims is not None:
            raise ValueError(f"dims= sets the per-axis dims of an allocation: give allocation= too, got dims={dims!r}")
        self.allocation = allocation
        self.dims = None if dims is None else tuple(dims)
        if temporal_stride is None:
            temporal_stride = 2.0 if allocation == "videorope" else 1.0
        if isinstance(temporal_stride, bool) or not isinstance(temporal_stride, (int, float)) or \
                not temporal_stride > 0 or (temporal_stride != 1.0 and ndim != 3):
            raise ValueError(f"temporal_stride must be a positive number (3D grids only when != 1), got "
                             f"{temporal_stride!r} for ndim={ndim}")
        self.temporal_stride = float(temporal_stride)
        for nm, v in (("depth", depth), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"RoPE-Mixed needs a positive int {nm}, got {v!r}")
        if ndim not in (2, 3):
            raise ValueError(f"RoPE-Mixed supports 2D and 3D grids, got ndim={ndim}")
        self.head_dim, self.depth, self.num_heads = head_dim, depth, num_heads
        self.ndims = (ndim,)
        self.temperature = temperature
        self.pairing = check_pairing(pairing)
        self.coords = coords
        self.train_shape = check_grid_shape(tuple(train_shape), "train_shape") if train_shape is not None else None
        self.ref_shape = tuple(ref_shape) if ref_shape is not None else self.train_shape
        self.rotate = rotate
        self._init_coord_options(ndim, axis_order, grid_offset, normalize_coords, shift_coords, jitter_coords,
                                 rescale_coords)
        if allocation is None:
            self.freqs = nn.Parameter(
                init_mixed_freqs(head_dim, depth, num_heads, ndim, temperature, rotate, device=device,
                                 dtype=dtype or torch.float32)[list(self._perm)]
            )
        else:
            f, mask = self._allocation_init()
            self.freqs = nn.Parameter(f.to(device=device, dtype=dtype or torch.float32))
            # which entries are learned: time pairs only along t, spatial pairs only in (h, w); hope's time pairs
            # and pairs past sum(dims) nowhere (their angles are exactly 0)
            self.register_buffer("freq_mask", mask.to(device=device), persistent=False)
        self._state_device = self.freqs.device

    def _allocation_init(self):
        plan = allocation_plan(self.allocation, self.dims, float(self.temperature),
                               self.num_heads if self.allocation == "headwise" else None)
        return init_mixed_allocation(plan, self.depth, self.num_heads, self.head_dim, self.rotate,
                                     hope=self.allocation == "hope")

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.allocation is not None:
                self.freqs.copy_(self._allocation_init()[0])
                return
            self.freqs.copy_(init_mixed_freqs(self.head_dim, self.depth, self.num_heads, self.ndims[0],
                                              self.temperature, self.rotate)[list(self._perm)])

    def no_weight_decay(self):
        return {"freqs"}

    @classmethod
    def options_from_host(cls, host) -> dict:
        """Axis order, temperature and augmentation of the host's RoPE-Mixed module
        (:func:`mixed_options_from_timm`); another rotary module goes to ``host.problems``."""
        rope = host.peek("rotary")
        if rope is None:
            return {}
        try:
            return mixed_options_from_timm(rope)[0]
        except ValueError:
            host.problems.append(f"{cls.name}: timm {type(rope).__name__} replaced by RoPE-Mixed (new learned "
                                 f"frequencies)")
            return {}

    @torch.no_grad()
    def state_from_host(self, host, path: str) -> dict:
        """``freqs`` from the host's ``mixed_freqs`` (rows from the host's axis order to this module's,
        :meth:`freqs_from`) when the shapes agree; takes the host's rotary module with it."""
        f = host.peek("mixed_freqs")
        if f is None or tuple(f.freqs.shape) != tuple(self.freqs.shape):
            return {}
        host.take("mixed_freqs", f"{path}.freqs")
        if host.peek("rotary") is not None:
            host.take("rotary", path)
        host.log("%s %s -> %s.freqs (rows: host axis order %r -> axis_order=%r)", f.source, tuple(f.freqs.shape),
                 path, f.axis_order, self.axis_order)
        return {"freqs": self.freqs_from(f.freqs, f.axis_order).to(self.freqs.dtype)}

    def param_block(self, name: str):
        """``freqs`` holds every layer's frequencies in one tensor: :data:`ALL_BLOCKS`."""
        return self.ALL_BLOCKS if name == "freqs" else None

    def freqs_from(self, freqs: torch.Tensor, source_axis_order) -> torch.Tensor:
        """Another RoPE-Mixed's ``freqs`` (e.g. timm ``RotaryEmbeddingMixed``, whose rows follow its
        ``grid_indexing``) in this module's row order: row ``j`` here multiplies grid axis ``axis_order[j]``."""
        src = axis_order(source_axis_order, self.ndims[0])
        if tuple(freqs.shape) != tuple(self.freqs.shape):
            raise ValueError(f"rope_mixed: freqs {tuple(freqs.shape)} do not match this module's "
                             f"{tuple(self.freqs.shape)}")
        return freqs[[src.index(a) for a in self._perm]]

    def get_coords(self, layout: GridLayout, device=None) -> torch.Tensor:
        """Patch coordinates ``(prod(grid), ndim)`` float64 in ``freqs`` row order (``axis_order``), cached per
        layout and device; augmented (uncached) while training with a coordinate augmentation."""
        if self.augmenting:
            c = self._strided(self._augmented(self._patch_coords(layout, device), layout), layout)
            return c[:, list(self._perm)]
        return self.cached(("coords", layout, str(device)),
                           lambda: self._strided(self._patch_coords(layout, device), layout)[:, list(self._perm)])

    def _strided(self, coords: torch.Tensor, layout: GridLayout) -> torch.Tensor:
        """Grid axis 0 (t) times ``temporal_stride`` (3D); the diagonal layout for ``videorope`` / ``hope``."""
        if self.allocation in ("videorope", "hope"):
            return diagonal_coords(coords, layout.shape, self.temporal_stride)
        if self.temporal_stride == 1.0:
            return coords
        return torch.cat([coords[:, :1] * self.temporal_stride, coords[:, 1:]], dim=-1)

    def build_table(self, layout: GridLayout, index: int = 0):
        """``(cos, sin)`` each ``(num_heads, num_prefix + prod(grid), head_dim // 2)`` for layer ``index``."""
        layout = as_layout(layout)
        self.check_layout(layout)
        if not 0 <= index < self.depth:
            raise ValueError(f"layer index {index} out of range for RoPE-Mixed with depth {self.depth}")
        c = self.get_coords(layout, self.freqs.device)  # (N, ndim)
        # float64 angles (as AxialRoPE): float32 products at positions ~1e4 are off by ~5e-4 rad (ulp of 1e4)
        f = self.freqs[:, index].to(torch.float64)  # (ndim, heads, D/2)
        if self.allocation is not None:
            f = f * self.freq_mask[:, 0].to(f)
        ang = (c.t()[:, None, :, None] * f[:, :, None, :]).sum(0)  # (heads, N, D/2), elementwise: no autocast
        return rope_table(ang, layout.num_prefix, self.head_dim // 2)

    @packed_native
    def forward_qk(self, q, k, layout, index: int = 0):
        layout = as_layout(layout)
        if isinstance(layout, PackedLayout) and layout.uniform is not None:
            layout = _with_packed_state(layout.uniform, layout)  # one grid, no padding: the single-grid path
        _check_qk(q, k, self.head_dim, layout, self.name, self)
        if q.shape[1] != self.num_heads:
            raise ValueError(f"rope_mixed: q has {q.shape[1]} heads, this RoPE was built for {self.num_heads}")
        if isinstance(layout, PackedLayout):
            layout.check_batch(q.shape[0], f"{self.name}: q")
            # per-grid tables of this layer (learned freqs: rebuilt each call, as on a GridLayout), (B, H, N, d)
            cos, sin = self._packed_qk_tables(layout, lambda g: self.build_table(g, index), q.device)
        else:
            cos, sin = self.build_table(layout, index)
        return apply_rope_qk(q, k, cos, sin, self.pairing)

    def extra_repr(self) -> str:
        extra = f", axis_order={self.axis_order!r}" if self._perm != tuple(range(len(self._perm))) else ""
        if any(self.grid_offset):
            extra += f", grid_offset={self.grid_offset}"
        if self.coord_aug.active:
            extra += f", coord_aug={self.coord_aug}"
        if self.allocation is not None:
            extra += f", allocation={self.allocation!r}, dims={self.dims}"
        if self.temporal_stride != 1.0:
            extra += f", temporal_stride={self.temporal_stride:g}"
        return (f"head_dim={self.head_dim}, depth={self.depth}, num_heads={self.num_heads}, ndim={self.ndims[0]}, "
                f"pairing={self.pairing!r}{extra}")


def dinov3_options(temperature: Optional[float] = 100.0, min_period: Optional[float] = None,
                   max_period: Optional[float] = None, normalize_coords: str = "separate", grid_offset: float = 0.0,
                   grid_indexing: str = "ij", rotate_half: bool = True, shift_coords: Optional[float] = None,
                   jitter_coords: Optional[float] = None, rescale_coords: Optional[float] = None) -> dict:
    """``rope_axial`` options equal to timm ``RotaryEmbeddingDinoV3`` (DINOv3's ``RopePositionEmbedding``) with
    these arguments (timm's names and defaults).

    DINOv3 rotates pair ``j`` of each axis by ``2 pi c / period_j`` with ``c`` the ``centered`` coordinate in
    ``[-1, 1]`` and ``period_j = temperature^(2j/(D/2))`` (or log-spaced from ``min_period`` to ``max_period``):
    that is ``coords="centered"``, ``angle_scale=2*pi`` and ``base=temperature`` (or ``periods=(min, max)``).
    """
    opts = dict(coords="centered", normalize_coords=normalize_coords, grid_offset=float(grid_offset),
                axis_order=grid_indexing, pairing="half" if rotate_half else "interleaved",
                angle_scale=2.0 * math.pi, shift_coords=shift_coords, jitter_coords=jitter_coords,
                rescale_coords=rescale_coords)
    if min_period is not None and max_period is not None:
        opts["periods"] = (float(min_period), float(max_period))
    elif temperature is None:
        raise ValueError("DINOv3 RoPE needs temperature= or both min_period= and max_period=")
    else:
        opts["base"] = float(temperature)
    return opts


def _timm_aug(rope) -> dict:
    return {k: getattr(rope, k, None) for k in ("shift_coords", "jitter_coords", "rescale_coords")
            if getattr(rope, k, None) is not None}


def axial_options_from_timm(rope) -> Tuple[dict, str]:
    """``rope_axial`` options that reproduce a timm axial rotary module exactly, and a description.

    Handles ``RotaryEmbeddingCat`` / ``RotaryEmbedding`` with index coordinates (EVA-02, naver RoPE-ViT, Perception
    Encoder, the ``_rope_reg`` models: base, pairing, ``grid_indexing``, ``grid_offset``, ``ref_feat_shape``) and
    ``RotaryEmbeddingDinoV3`` (every ``normalize_coords``, periods, offset, indexing), with their train-time
    coordinate augmentation, and ``RotaryEmbeddingMRope`` (the interleaved multimodal RoPE on images,
    ``allocation="mrope_interleaved"`` on the 2D grid, :func:`interleaved_axes_2d`). Raises ``ValueError`` naming
    the setting for what vispos cannot reproduce (pixel-band RoPE, ``in_pixels=True``; anything else).
    """
    kind = type(rope).__name__
    if kind == "RotaryEmbeddingDinoV3":
        opts = dinov3_options(temperature=rope.temperature, min_period=rope.min_period, max_period=rope.max_period,
                              normalize_coords=rope.normalize_coords, grid_offset=float(rope.grid_offset),
                              grid_indexing=rope.grid_indexing, rotate_half=bool(rope.rotate_half),
                              **_timm_aug(rope))
        return {k: v for k, v in opts.items() if v is not None}, "timm RotaryEmbeddingDinoV3"
    if kind == "RotaryEmbeddingMRope":
        if getattr(rope, "grid_indexing", "ij") != "ij":
            raise ValueError(f"timm RotaryEmbeddingMRope with grid_indexing={rope.grid_indexing!r} has no rope_axial "
                             f"equivalent (timm itself supports 'ij' only)")
        axis = tuple(int(a) for a in rope.axis.tolist())
        dims = (2 * axis.count(1), 2 * axis.count(2))
        rd = int(rope.dim)
        if interleaved_axes_2d(rd, dims) != axis:
            raise ValueError(f"timm RotaryEmbeddingMRope axis layout {axis} (mrope_section {rope.mrope_section}) is "
                             f"not the interleaved h / w layout of rope_axial allocation='mrope_interleaved'")
        opts = dict(allocation="mrope_interleaved", dims=dims, rotary_dim=rd, base=float(rope.temperature),
                    pairing="half", coords="index", axis_order="ij", **_timm_aug(rope))
        return opts, f"timm RotaryEmbeddingMRope (mrope_section={tuple(rope.mrope_section)})"
    if kind in ("RotaryEmbeddingCat", "RotaryEmbedding"):
        grid_type = getattr(rope, "grid_type", "pixel" if rope.in_pixels else "index")
        if rope.in_pixels or grid_type != "index":
            raise ValueError(f"timm {kind} with in_pixels={rope.in_pixels}, grid_type={grid_type!r} (pixel-frequency "
                             f"bands) has no rope_axial equivalent")
        opts = dict(base=float(rope.temperature), pairing="half" if rope.rotate_half else "interleaved",
                    axis_order=getattr(rope, "grid_indexing", "ij"), grid_offset=float(getattr(rope, "grid_offset", 0)),
                    **_timm_aug(rope))
        if rope.ref_feat_shape is not None:
            opts.update(coords="interpolated", ref_shape=tuple(int(s) for s in rope.ref_feat_shape))
        else:
            opts.update(coords="index")
        return opts, f"timm {kind}"
    raise ValueError(f"timm {kind} has no rope_axial equivalent (supported: RotaryEmbeddingCat with index "
                     f"coordinates, RotaryEmbeddingDinoV3)")


def mixed_options_from_timm(rope) -> Tuple[dict, str]:
    """``rope_mixed`` options for a timm ``RotaryEmbeddingMixed``: its ``grid_indexing`` becomes ``axis_order``, so
    timm's ``freqs`` is copied as stored (row ``i`` multiplies grid axis ``axis_order[i]`` in both); temperature
    and coordinate augmentation carried over. ``ValueError`` for any other module."""
    kind = type(rope).__name__
    if kind != "RotaryEmbeddingMixed":
        raise ValueError(f"timm {kind} is not RoPE-Mixed; rope_mixed reproduces RotaryEmbeddingMixed only")
    return dict(axis_order=rope.grid_indexing, temperature=float(rope.temperature), **_timm_aug(rope)), \
        f"timm RotaryEmbeddingMixed (grid_indexing={rope.grid_indexing!r})"


def _host_rope(model):
    rope = getattr(model, "rope", None)
    return rope if isinstance(rope, nn.Module) else None


def axial_host_defaults(model) -> Tuple[dict, Optional[str]]:
    """``rope_axial`` defaults from a timm host's own RoPE (``model.rope``): ``(options, problem)``; ``problem`` is
    ``None`` when the options reproduce it exactly (or there is none), else what cannot be reproduced."""
    return _axial_from_rotary(_host_rope(model))


def vope_host_defaults(model) -> Tuple[dict, Optional[str]]:
    """VoPE keeps its own coordinates (a change of scheme by definition); base, pairing and axis order follow the
    host's axial RoPE."""
    opts, problem = axial_host_defaults(model)
    return {k: v for k, v in opts.items() if k in ("base", "pairing", "axis_order")}, problem


def mixed_host_defaults(model) -> Tuple[dict, Optional[str]]:
    """``rope_mixed`` defaults from a timm host's ``RotaryEmbeddingMixed`` (axis order, temperature, augmentation)."""
    rope = _host_rope(model)
    if rope is None:
        return {}, None
    try:
        return mixed_options_from_timm(rope)[0], None
    except ValueError:
        return {}, f"timm {type(rope).__name__} replaced by RoPE-Mixed (new learned frequencies)"


__all__ += ["axial_options_from_timm", "mixed_options_from_timm", "axial_host_defaults", "mixed_host_defaults",
            "vope_host_defaults"]


# ---- registry --------------------------------------------------------------------------------------------------
def _axial_from_rotary(rope) -> Tuple[dict, Optional[str]]:
    """``rope_axial`` options reproducing a host's rotary module (:func:`axial_options_from_timm`) and ``None``, or
    ``({}, what cannot be reproduced)``; ``({}, None)`` without one."""
    if rope is None:
        return {}, None
    if type(rope).__name__ == "RotaryEmbeddingMixed":
        return {}, "timm RotaryEmbeddingMixed (learned per-layer frequencies) replaced by an axial RoPE"
    try:
        return axial_options_from_timm(rope)[0], None
    except ValueError as e:
        return {}, str(e)


def _head_dim(dim, num_heads, head_dim):
    if head_dim is not None:
        return head_dim
    if dim is None or num_heads is None:
        raise ValueError("RoPE needs head_dim=, or dim= and num_heads=")
    if dim % num_heads:
        raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    return dim // num_heads


def _ndim(grid, ndim):
    if grid is not None:
        return len(grid)
    return 2 if ndim is None else ndim


def build_rope_axial(*, dim=None, num_heads=None, grid=None, head_dim=None, ndim=None, device=None, dtype=None,
                     **kwargs):
    if kwargs.get("allocation") == "headwise":
        kwargs.setdefault("num_heads", num_heads)
    return AxialRoPE(_head_dim(dim, num_heads, head_dim), ndim=_ndim(grid, ndim), train_shape=grid,
                     device=device, dtype=dtype, **kwargs)




def build_vope(*, dim=None, num_heads=None, grid=None, head_dim=None, ndim=None, device=None, dtype=None, **kwargs):
    return VoPE(_head_dim(dim, num_heads, head_dim), ndim=_ndim(grid, ndim), train_shape=grid,
                device=device, dtype=dtype, **kwargs)




def build_rope_mixed(*, dim=None, num_heads=None, depth=None, grid=None, head_dim=None, ndim=None, device=None,
                     dtype=None, **kwargs):
    if depth is None or num_heads is None:
        raise ValueError("rope_mixed needs depth= and num_heads= (one frequency set per layer and head)")
    return MixedRoPE(_head_dim(dim, num_heads, head_dim), depth, num_heads, ndim=_ndim(grid, ndim),
                     train_shape=grid, device=device, dtype=dtype, **kwargs)


register_family(AxialRoPE, build_rope_axial)
register_family(VoPE, build_vope)
register_family(MixedRoPE, build_rope_mixed)
