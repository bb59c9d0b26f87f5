"""Absolute position embeddings: learned (``ape``) and fixed sin-cos (``ape_sincos``), for 2D and 3D grids.

Pure functions:

* :func:`resample_abs_pe` -- resample a learned table ``(1, rows, C)`` from one grid to another (bicubic, bilinear,
  area, trilinear for 3D), keeping the prefix rows. Equal to timm ``resample_abs_pos_embed`` in 2D.
* :func:`build_sincos_2d` -- 2D sin-cos table; ``style="mae"`` (MAE / diffusers: ``[sin w, cos w, sin h, cos h]``)
  or ``style="timm"`` (timm ``build_sincos2d_pos_embed`` defaults: ``[sin h, sin w, cos h, cos w]``).
* :func:`build_sincos_3d` -- 3D sin-cos table. ``style="cogvideox"`` (CogVideoX-2B, diffusers
  ``get_3d_sincos_pos_embed``): ``D_t = D/4`` for time, ``3D/8`` for each spatial axis,
  ``[sin t, cos t | sin w, cos w, sin h, cos h]``; ``style="latte"`` (Latte): a full-width MAE 2D spatial table
  plus a full-width 1D temporal table, added.
* :func:`sample_crop_boxes` and :func:`crop_resample_abs_pe` -- RO-ViT cropped positional embeddings.
* :func:`fuzzy_sample_abs_pe` -- ViTAR fuzzy PE: the table sampled at jittered positions (train-time).

Modules: :class:`AbsolutePE` (``ape``) and :class:`SinCosPE` (``ape_sincos``), both on the ``token`` hook:
``x = x + table`` after patch embedding.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import COORD_MODES, GridLayout, PackedLayout, as_layout, check_grid_shape, grid_coords
from .base import PositionalEmbedding, check_tokens_3d, packed_native
from .registry import register_family

__all__ = [
    "RESAMPLE_MODES",
    "SINCOS_STYLES",
    "resample_abs_pe",
    "grid_sample_abs_pe",
    "GRID_SAMPLE_MODES",
    "build_sincos_1d",
    "build_sincos_2d",
    "build_sincos_3d",
    "CROP_SAMPLINGS",
    "SINCOS_3D_STYLES",
    "fuzzy_sample_abs_pe",
    "sample_crop_boxes",
    "crop_resample_abs_pe",
    "AbsolutePE",
    "SinCosPE",
]

RESAMPLE_MODES = ("bicubic", "bilinear", "area", "nearest", "trilinear")
SINCOS_STYLES = ("mae", "timm")

#: RO-ViT upsamples a 14x14 table to 64x64 before cropping.
ROVIT_UPSAMPLE = 64.0 / 14.0


def _grid(shape, name: str, ndims=(2, 3)) -> Tuple[int, ...]:
    shape = check_grid_shape(tuple(shape) if isinstance(shape, list) else shape, name)
    if len(shape) not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} axes, got {shape}")
    return shape


# ---------------------------------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------------------------------
#: modes of :func:`grid_sample_abs_pe` (``F.grid_sample``'s)
GRID_SAMPLE_MODES = ("bilinear", "bicubic", "nearest")


def grid_sample_abs_pe(
    table: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int],
    num_prefix: int = 0,
    mode: str = "bilinear",
    align_corners: bool = False,
) -> torch.Tensor:
    """Read a 2D learned table at the cell centres of another grid with ``F.grid_sample`` (timm NaFlex
    ``pos_embed_use_grid_sample``): cell ``c`` of an axis of length ``n`` is at the normalised coordinate
    ``(2c + 1) / n - 1`` (``align_corners=True``: ``2c / max(n - 1, 1) - 1``), sampled with ``mode`` and border
    padding, no antialias.

    Differs from :func:`resample_abs_pe` in antialias (none here: a downsampled table keeps its high frequencies)
    and in ``nearest``'s rounding (the nearest cell centre here, ``floor`` there); bilinear and bicubic without
    antialias give the same values up to float rounding. Same arguments and output layout as :func:`resample_abs_pe` (prefix
    rows kept, float32 work, cast back once); equal grids are sampled too (values equal the table's up to
    rounding), as timm does.
    """
    if not isinstance(table, torch.Tensor) or table.dim() != 3 or table.shape[0] != 1:
        got = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise ValueError(f"table must have shape (1, rows, C), got {got}")
    new_grid, old_grid = _grid(new_grid, "new_grid"), _grid(old_grid, "old_grid")
    if len(new_grid) != 2 or len(old_grid) != 2:
        raise ValueError(f"grid_sample reads 2D tables, got new_grid {new_grid}, old_grid {old_grid}")
    if isinstance(num_prefix, bool) or not isinstance(num_prefix, int) or num_prefix < 0:
        raise ValueError(f"num_prefix must be an int >= 0, got {num_prefix!r}")
    if table.shape[1] != num_prefix + math.prod(old_grid):
        raise ValueError(f"table has {table.shape[1]} rows, but old_grid {old_grid} with {num_prefix} prefix rows "
                         f"needs {num_prefix + math.prod(old_grid)}")
    if mode not in GRID_SAMPLE_MODES:
        raise ValueError(f"grid_sample mode must be one of {GRID_SAMPLE_MODES}, got {mode!r}")
    C = table.shape[-1]
    work = table[:, num_prefix:] if table.dtype == torch.float64 else table[:, num_prefix:].float()
    src = work.reshape(1, *old_grid, C).permute(0, 3, 1, 2)  # (1, C, H, W)

    def axis(n):
        c = torch.arange(n, device=table.device, dtype=src.dtype)
        return 2.0 * c / max(n - 1, 1) - 1.0 if align_corners else (2.0 * c + 1.0) / n - 1.0

    gy, gx = torch.meshgrid(axis(new_grid[0]), axis(new_grid[1]), indexing="ij")
    where = torch.stack([gx, gy], dim=-1)[None]  # (1, H', W', 2), grid_sample's (x, y) order
    out = F.grid_sample(src, where, mode=mode, padding_mode="border", align_corners=bool(align_corners))
    out = out.flatten(2).transpose(1, 2).to(table.dtype)
    return torch.cat([table[:, :num_prefix], out], dim=1)


def resample_abs_pe(
    table: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int],
    num_prefix: int = 0,
    mode: str = "bicubic",
    antialias: bool = False,
    align_corners: bool = False,
) -> torch.Tensor:
    """Resample a learned absolute PE table to another grid.

    Args:
        table: ``(1, num_prefix + prod(old_grid), C)`` (or without the leading 1), prefix rows first, grid rows
            row-major -- timm's ``pos_embed`` layout.
        new_grid, old_grid: ``(H, W)`` or ``(T, H, W)`` (same rank); rectangular allowed.
        num_prefix: rows of ``table`` that belong to prefix tokens (``0`` for timm's ``no_embed_class``); they are
            kept as they are.
        mode: ``bicubic`` | ``bilinear`` | ``area`` | ``nearest`` (2D and 3D) or ``trilinear`` (3D only). On a 3D
            grid ``bicubic``/``bilinear`` resample each frame's ``(H, W)`` plane with that mode, then the time axis
            linearly (so ``bilinear`` equals ``trilinear`` without antialias).
        antialias: antialiasing when downsampling (``bicubic`` / ``bilinear`` only; spatial axes in 3D).
        align_corners: ``F.interpolate``'s ``align_corners`` for the interpolating modes (``bicubic``,
            ``bilinear``, ``trilinear``; also the time axis in 3D): corner cells of the two grids aligned (timm
            NaFlex ``pos_embed_align_corners``, the C-RADIOv3 checkpoints). ``area`` / ``nearest`` refuse it.

    Returns ``(1, num_prefix + prod(new_grid), C)`` (same rank and dtype as ``table``). Equal grids return
    ``table`` itself. Interpolation runs in float32 (float64 stays float64), cast back once. With
    ``align_corners=False`` this equals timm ``resample_abs_pos_embed(posemb, new_size, old_size,
    num_prefix_tokens, interpolation, antialias)`` for 2D grids.
    """
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"table must be a tensor (1, rows, C), got {type(table).__name__}")
    squeeze = table.dim() == 2
    if squeeze:
        table = table.unsqueeze(0)
    if table.dim() != 3 or table.shape[0] != 1:
        raise ValueError(f"table must have shape (1, rows, C) or (rows, C), got {tuple(table.shape)}")
    new_grid = _grid(new_grid, "new_grid")
    old_grid = _grid(old_grid, "old_grid")
    if len(new_grid) != len(old_grid):
        raise ValueError(f"new_grid {new_grid} and old_grid {old_grid} must have the same number of axes")
    if isinstance(num_prefix, bool) or not isinstance(num_prefix, int) or num_prefix < 0:
        raise ValueError(f"num_prefix must be an int >= 0, got {num_prefix!r}")
    rows = num_prefix + math.prod(old_grid)
    if table.shape[1] != rows:
        raise ValueError(f"table has {table.shape[1]} rows, but old_grid {old_grid} with {num_prefix} prefix rows "
                         f"needs {rows}")
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown resample mode {mode!r}; expected one of {RESAMPLE_MODES}")
    nd = len(old_grid)
    if mode == "trilinear" and nd != 3:
        raise ValueError(f"mode 'trilinear' is for 3D grids (T, H, W), got a {nd}-D grid {old_grid}")
    if antialias and mode not in ("bicubic", "bilinear"):
        raise ValueError(f"antialias works with modes 'bicubic' and 'bilinear', got mode={mode!r}")
    if align_corners and mode not in ("bicubic", "bilinear", "trilinear"):
        raise ValueError(f"align_corners works with modes 'bicubic', 'bilinear' and 'trilinear', got mode={mode!r}")
    # no size-match early-out while exporting: it would specialise the graph to the example's grid (as timm)
    if not torch.compiler.is_exporting() and new_grid == old_grid:
        return table.squeeze(0) if squeeze else table

    C = table.shape[-1]
    orig_dtype = table.dtype
    prefix, patch = table[:, :num_prefix], table[:, num_prefix:]
    work = patch if orig_dtype == torch.float64 else patch.float()
    x = work.reshape(1, *old_grid, C).movedim(-1, 1)  # (1, C, *old_grid)
    ac = bool(align_corners) if mode in ("bicubic", "bilinear", "trilinear") else None
    if nd == 2 or mode in ("area", "nearest", "trilinear"):
        x = F.interpolate(x, size=new_grid, mode=mode, align_corners=ac, antialias=antialias)
    else:  # 3D, bicubic/bilinear: spatial per frame, then linear in time
        T, H, W = old_grid
        x = x[0].transpose(0, 1)  # (T, C, H, W)
        if (H, W) != new_grid[1:]:
            x = F.interpolate(x, size=new_grid[1:], mode=mode, align_corners=ac, antialias=antialias)
        x = x.transpose(0, 1)[None]  # (1, C, T, H', W')
        if T != new_grid[0]:
            h2, w2 = new_grid[1:]
            x = x.reshape(1, C, T, h2 * w2).permute(0, 3, 1, 2).reshape(h2 * w2, C, T)
            x = F.interpolate(x, size=new_grid[0], mode="linear", align_corners=ac)
            x = x.reshape(1, h2 * w2, C, new_grid[0]).permute(0, 2, 3, 1).reshape(1, C, new_grid[0], h2, w2)
    out = x.movedim(1, -1).reshape(1, -1, C).to(orig_dtype)
    out = torch.cat([prefix, out], dim=1)
    return out.squeeze(0) if squeeze else out


# ---------------------------------------------------------------------------------------------------------------
# sin-cos tables
# ---------------------------------------------------------------------------------------------------------------
def build_sincos_1d(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sin-cos of positions ``pos (M,)``: ``[sin(p w_i), cos(p w_i)]``, ``w_i = temperature^(-i/(dim/2))``.

    Returns ``(M, dim)`` float64 (the MAE / Latte / CogVideoX 1-D building block).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"1-D sin-cos needs a positive even dim, got {dim!r}")
    p = pos.reshape(-1).to(torch.float64)
    omega = 1.0 / float(temperature) ** (torch.arange(dim // 2, dtype=torch.float64, device=p.device) / (dim / 2.0))
    ang = p[:, None] * omega[None, :]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


def _coords(grid, coords, nd, device) -> torch.Tensor:
    if coords is None:
        return grid_coords(grid, "index", device=device, dtype=torch.float64)
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape != (math.prod(grid), nd):
        got = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise ValueError(f"coords must be a tensor ({math.prod(grid)}, {nd}) for grid {grid}, got {got}")
    return coords.to(torch.float64)


def build_sincos_2d(
    grid: Sequence[int],
    dim: int,
    temperature: float = 10000.0,
    style: str = "mae",
    coords: Optional[torch.Tensor] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """2D sin-cos PE ``(H*W, dim)``, row-major over ``grid = (H, W)``.

    Each axis gets ``dim/4`` bands ``w_i = temperature^(-i/(dim/4))``.

    * ``style="mae"`` (MAE, diffusers ``get_2d_sincos_pos_embed``): ``[sin(x w), cos(x w), sin(y w), cos(y w)]``
      with ``x`` the column, ``y`` the row. (No timm setting gives this: timm's ``reverse_coord=True`` also
      transposes the token order.)
    * ``style="timm"``: ``[sin(y w), sin(x w), cos(y w), cos(x w)]`` -- timm ``build_sincos2d_pos_embed`` with its
      defaults (``reverse_coord=False, interleave_sin_cos=False``).

    ``coords (H*W, 2)`` (row, column) overrides the integer positions (e.g. from :func:`vispos.grid.grid_coords`).
    Computed in float64, cast once to ``dtype``.
    """
    grid = _grid(grid, "grid", (2,))
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 4:
        raise ValueError(f"2D sin-cos needs dim divisible by 4, got {dim!r}")
    if style not in SINCOS_STYLES:
        raise ValueError(f"unknown sin-cos style {style!r}; expected one of {SINCOS_STYLES}")
    c = _coords(grid, coords, 2, device)
    y, x = c[:, 0], c[:, 1]
    if style == "mae":
        out = torch.cat([build_sincos_1d(x, dim // 2, temperature), build_sincos_1d(y, dim // 2, temperature)], 1)
    else:
        q = dim // 4
        omega = 1.0 / float(temperature) ** (torch.arange(q, dtype=torch.float64, device=c.device) / q)
        ay, ax = y[:, None] * omega, x[:, None] * omega
        out = torch.cat([torch.sin(ay), torch.sin(ax), torch.cos(ay), torch.cos(ax)], dim=1)
    return out.to(dtype)


SINCOS_3D_STYLES = ("cogvideox", "latte")


def build_sincos_3d(
    grid: Sequence[int],
    dim: int,
    temperature: float = 10000.0,
    coords: Optional[torch.Tensor] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    style: str = "cogvideox",
) -> torch.Tensor:
    """3D sin-cos PE ``(T*H*W, dim)``.

    * ``style="cogvideox"`` (CogVideoX-2B, diffusers ``get_3d_sincos_pos_embed``): time gets ``D_t = dim/4``
      channels, space ``3*dim/4`` as MAE-style 2D sin-cos:
      ``[sin(t w), cos(t w) | sin(x w'), cos(x w'), sin(y w'), cos(y w')]`` with ``w_i = temperature^(-i/(D_t/2))``
      and ``w'_i = temperature^(-i/(3 dim/16))``; ``dim`` divisible by 16.
    * ``style="latte"`` (Latte, diffusers ``LatteTransformer3DModel``): the full-width MAE 2D table of ``(y, x)``
      plus the full-width 1D table of ``t`` (``get_1d_sincos_pos_embed_from_grid(dim, t)``), added; ``dim``
      divisible by 4.

    ``coords (T*H*W, 3)`` (t, row, column) overrides the integer positions (diffusers' interpolation scales divide
    positions; :class:`SinCosPE` has ``interpolation_scale=``).
    """
    grid = _grid(grid, "grid", (3,))
    if style not in SINCOS_3D_STYLES:
        raise ValueError(f"unknown 3D sin-cos style {style!r}; expected one of {SINCOS_3D_STYLES}")
    need = 16 if style == "cogvideox" else 4
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % need:
        what = "D/4 for time, 3D/8 per spatial axis" if style == "cogvideox" else "a 2D MAE table of full width"
        raise ValueError(f"3D sin-cos style {style!r} needs dim divisible by {need} ({what}), got {dim!r}")
    c = _coords(grid, coords, 3, device)
    t, y, x = c[:, 0], c[:, 1], c[:, 2]
    if style == "latte":
        spatial = torch.cat([build_sincos_1d(x, dim // 2, temperature), build_sincos_1d(y, dim // 2, temperature)], 1)
        return (spatial + build_sincos_1d(t, dim, temperature)).to(dtype)
    dt, ds = dim // 4, 3 * dim // 8
    out = torch.cat([build_sincos_1d(t, dt, temperature), build_sincos_1d(x, ds, temperature),
                     build_sincos_1d(y, ds, temperature)], dim=1)
    return out.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# RO-ViT cropped positional embeddings
# ---------------------------------------------------------------------------------------------------------------
#: RO-ViT pixel conventions of :func:`crop_resample_abs_pe` (see its docstring).
CROP_SAMPLINGS = ("center", "roi_align")


def sample_crop_boxes(
    batch: int,
    scale: Tuple[float, float] = (0.1, 1.0),
    ratio: Tuple[float, float] = (0.5, 2.0),
    generator: Optional[torch.Generator] = None,
    device=None,
    size: Optional[Sequence[int]] = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Random boxes ``(batch, 2, 2)`` = per sample ``[(start_h, extent_h), (start_w, extent_w)]`` in fractions.

    RandomResizedCrop's rule (torchvision ``RandomResizedCrop.get_params``, which RO-ViT uses), without its
    rounding to whole pixels: area fraction ``~ U(scale)``, aspect ``w/h`` (in pixels of a ``size = (H, W)`` table,
    default square) log-uniform in ``ratio``; a box that does not fit is **redrawn** (up to ``attempts`` times),
    then the fallback is torchvision's: the whole table, cut to the nearest allowed aspect, centred. The start is
    uniform over the positions where the box fits. RO-ViT: scale 0.1-1, ratio 0.5-2 (mean area ~0.43).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
    rlo, rhi = float(ratio[0]), float(ratio[1])
    if not 0 < rlo <= rhi:
        raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
    H, W = (1, 1) if size is None else _grid(tuple(size), "size", (2,))
    aspect_hw = H / W  # a pixel aspect r is a fraction aspect r * H / W
    u = torch.rand(attempts, batch, 2, generator=generator, dtype=torch.float64)
    area = lo + (hi - lo) * u[..., 0]
    r = torch.exp(math.log(rlo) + (math.log(rhi) - math.log(rlo)) * u[..., 1])
    ext_w = torch.sqrt(area * r * aspect_hw)
    ext_h = torch.sqrt(area / (r * aspect_hw))
    ok = (ext_w <= 1.0) & (ext_h <= 1.0)
    first = torch.where(ok.any(0), ok.to(torch.int64).argmax(0), -1)  # first accepted attempt per sample
    idx = first.clamp(min=0)
    cols = torch.arange(batch)
    eh, ew = ext_h[idx, cols], ext_w[idx, cols]
    # torchvision's fallback: the whole table, cut to the closest allowed aspect, centred
    in_ratio = W / H
    if in_ratio < rlo:
        fw, fh = 1.0, (W / rlo) / H
    elif in_ratio > rhi:
        fw, fh = (H * rhi) / W, 1.0
    else:
        fw, fh = 1.0, 1.0
    fail = first < 0
    eh = torch.where(fail, torch.full_like(eh, fh), eh)
    ew = torch.where(fail, torch.full_like(ew, fw), ew)
    v = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    st_h = torch.where(fail, (1.0 - eh) / 2, (1.0 - eh) * v[:, 0])
    st_w = torch.where(fail, (1.0 - ew) / 2, (1.0 - ew) * v[:, 1])
    boxes = torch.stack([torch.stack([st_h, eh], -1), torch.stack([st_w, ew], -1)], dim=1)
    return boxes.to(device=device, dtype=torch.float32)


def crop_resample_abs_pe(
    table: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    boxes: torch.Tensor,
    num_prefix: int = 0,
    upsample: Optional[Sequence[int]] = None,
    sampling: str = "center",
) -> torch.Tensor:
    """RO-ViT cropped PE: upsample the 2D table bilinearly to ``upsample``, cut each sample's box, resize to
    ``new_grid``.

    Args:
        table: ``(1, num_prefix + H*W, C)`` learned table at ``old_grid = (H, W)``.
        new_grid: output grid ``(H', W')``.
        boxes: ``(B, 2, 2)`` from :func:`sample_crop_boxes` (fractions of the table's extent).
        upsample: size of the upsampled table (default ``old_grid * 64/14``, rounded, RO-ViT's 14 -> 64).
        sampling: the pixel convention. Output cell ``i`` of ``n`` reads the point ``u = start + (i + 0.5) extent
            / n`` (a fraction of the table) bilinearly, edges clamped. ``"center"`` (default): table pixel ``j``
            covers ``[j, j + 1) / S``, i.e. sits at ``u = (j + 0.5) / S`` (``grid_sample(align_corners=False)``);
            the full box ``(0, 1)`` with ``upsample == old_grid == new_grid`` returns the table. ``"roi_align"``:
            the official RO-ViT code (TF RoIAlign on the table with the box in pixel units, one sample per bin at
            offset 0.5): pixel ``j`` sits at ``u = j / S``, so every sample lands half a table pixel further
            along each axis than with ``"center"``.

    Returns ``(B, num_prefix + H'*W', C)``; prefix rows are copied unchanged.
    """
    if sampling not in CROP_SAMPLINGS:
        raise ValueError(f"unknown crop sampling {sampling!r}; expected one of {CROP_SAMPLINGS}")
    old_grid = _grid(old_grid, "old_grid", (2,))
    new_grid = _grid(new_grid, "new_grid", (2,))
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[1:] != (2, 2):
        raise ValueError(f"boxes must be a tensor (B, 2, 2), got "
                         f"{tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__}")
    if table.dim() != 3 or table.shape[0] != 1 or table.shape[1] != num_prefix + math.prod(old_grid):
        raise ValueError(f"table must be (1, {num_prefix + math.prod(old_grid)}, C) for grid {old_grid} and "
                         f"{num_prefix} prefix rows, got {tuple(table.shape)}")
    if upsample is None:
        upsample = tuple(max(s, round(s * ROVIT_UPSAMPLE)) for s in old_grid)
    upsample = _grid(tuple(upsample), "upsample", (2,))
    B, C = boxes.shape[0], table.shape[-1]
    orig = table.dtype
    patch = table[:, num_prefix:].float().reshape(1, *old_grid, C).permute(0, 3, 1, 2)
    if upsample != old_grid:
        patch = F.interpolate(patch, size=upsample, mode="bilinear", align_corners=False)
    b = boxes.to(device=table.device, dtype=torch.float32)
    axes = []
    for a, n in enumerate(new_grid):
        frac = (torch.arange(n, device=table.device, dtype=torch.float32) + 0.5) / n  # (n,)
        u = b[:, a, 0:1] + frac[None] * b[:, a, 1:2]  # (B, n) fractions of the extent
        if sampling == "roi_align":  # pixel j at j / S instead of (j + 0.5) / S: read half a pixel further on
            u = u + 0.5 / upsample[a]
        axes.append(u)
    gy = axes[0][:, :, None].expand(B, *new_grid)
    gx = axes[1][:, None, :].expand(B, *new_grid)
    samp = torch.stack([gx, gy], dim=-1) * 2.0 - 1.0  # grid_sample wants (x, y) in [-1, 1]
    out = F.grid_sample(patch.expand(B, -1, -1, -1), samp, mode="bilinear", padding_mode="border",
                        align_corners=False)
    out = out.permute(0, 2, 3, 1).reshape(B, -1, C).to(orig)
    return torch.cat([table[:, :num_prefix].expand(B, -1, -1), out], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# ViTAR fuzzy positional encoding
# ---------------------------------------------------------------------------------------------------------------
def fuzzy_sample_abs_pe(
    table: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    batch: int,
    amount: float = 0.5,
    num_prefix: int = 0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """ViTAR "fuzzy" PE: sample a learned table at jittered token positions (bilinear, trilinear in 3D).

    Token ``p`` of an axis of ``new`` cells samples the table at the normalised position
    ``2 (p + 0.5 + u) / new - 1`` (``grid_sample``, ``align_corners=False``, border padding) with
    ``u ~ U(-amount, amount)`` drawn per sample, token and axis (ViTAR: ``amount = 0.5``). With ``amount = 0`` and
    ``new_grid == old_grid`` it returns the table. Returns ``(batch, num_prefix + prod(new_grid), C)``; prefix rows
    are copied unchanged.
    """
    old_grid = _grid(old_grid, "old_grid")
    new_grid = _grid(new_grid, "new_grid")
    if len(new_grid) != len(old_grid):
        raise ValueError(f"fuzzy PE: grids {old_grid} and {new_grid} have different ranks")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < math.inf:
        raise ValueError(f"fuzzy amount must be a finite number >= 0 (grid cells), got {amount!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    nd, C = len(old_grid), table.shape[-1]
    if table.dim() != 3 or table.shape[0] != 1 or table.shape[1] != num_prefix + math.prod(old_grid):
        raise ValueError(f"table must be (1, {num_prefix + math.prod(old_grid)}, C) for grid {old_grid} and "
                         f"{num_prefix} prefix rows, got {tuple(table.shape)}")
    orig = table.dtype
    patch = table[:, num_prefix:].float().reshape(1, *old_grid, C).movedim(-1, 1)  # (1, C, *old)
    N = math.prod(new_grid)
    base = grid_coords(new_grid, "index", device=table.device, dtype=torch.float32)  # (N, nd) grid-axis order
    u = torch.rand(batch, N, nd, generator=generator, dtype=torch.float32).to(table.device) * (2 * amount) - amount
    size = torch.tensor(new_grid, dtype=torch.float32, device=table.device)
    norm = 2.0 * (base[None] + 0.5 + u) / size - 1.0  # (B, N, nd)
    samp = norm.flip(-1).reshape(batch, *([1] * (nd - 1)), N, nd)  # grid_sample wants (x, y[, z]) last
    out = F.grid_sample(patch.expand(batch, *patch.shape[1:]), samp, mode="bilinear", padding_mode="border",
                        align_corners=False)  # (B, C, 1.., N)
    out = out.reshape(batch, C, N).transpose(1, 2).to(orig)
    return torch.cat([table[:, :num_prefix].expand(batch, -1, -1), out], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------------------
class _TokenPE(PositionalEmbedding):
    """Shared token-hook logic: ``x + full_table(layout)``; prefix rows are zeros unless the table has them."""

    hooks = frozenset({"token"})

    def full_table(self, layout: GridLayout, batch_size: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                   device=None) -> torch.Tensor:  # pragma: no cover - abstract
        """PE for every token of ``layout``, ``(1 or B, N, C)``."""
        raise NotImplementedError

    @packed_native
    def forward_tokens(self, x: torch.Tensor, layout) -> torch.Tensor:
        """``x (B, num_prefix + prod(grid), C)`` -> ``x + PE`` (same shape).

        A :class:`~vispos.grid.PackedLayout` gets each sample's own table: :meth:`full_table` once per unique grid
        (for ``ape`` the table resampled to that grid, as timm NaFlex samples its learned table per unique grid
        size), gathered into one ``(B, N, C)`` addend; padding tokens get zeros."""
        layout = as_layout(layout)
        check_tokens_3d(x, layout, f"{self.name}: x", self)
        if x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: x has {x.shape[-1]} channels, this PE was built for dim={self.dim}")
        if isinstance(layout, PackedLayout):
            if layout.uniform is None or self._packed_always:
                return x + self._packed_table(layout, x)
            layout = layout.uniform
        return x + self.full_table(layout, x.shape[0], x.dtype, x.device)

    #: read per-sample tables even when every sample of a packed batch has one grid (``ape(grid_sample=True)``)
    _packed_always = False

    def _group_table(self, g: GridLayout, n: int, x: torch.Tensor) -> torch.Tensor:
        """The table of one grid group of a packed batch (``n`` samples)."""
        return self.full_table(g, n, x.dtype, x.device)

    def _packed_table(self, layout: PackedLayout, x: torch.Tensor) -> torch.Tensor:
        groups = layout.groups()
        tabs = [self._group_table(g, len(idx), x) for g, idx in groups]
        C = x.shape[-1]
        if all(t.shape[0] == 1 for t in tabs):  # deterministic tables: one gather
            rows = torch.cat([t[0] for t in tabs] + [tabs[0].new_zeros(1, C)], dim=0)
            return rows[layout.group_index(rows.device)]
        # per-sample draws (crop_aug / fuzzy in training): each group's (B_g, n, C) rows into place
        pe = x.new_zeros(x.shape)
        for (g, idx), t in zip(groups, tabs):
            ix = torch.tensor(idx, device=x.device)
            pe[ix, :g.num_tokens] = t.expand(len(idx), -1, -1).to(pe.dtype)
        return pe


class AbsolutePE(_TokenPE):
    """Learned absolute PE (ViT / DeiT / timm ``pos_embed``), 2D or 3D, resampled to other grids.

    Args:
        dim: embedding width ``C``.
        grid: training grid ``(H, W)`` or ``(T, H, W)``.
        num_prefix: prefix tokens (class, registers) of the host.
        embed_prefix: if True (timm default) the table has rows for the ``num_prefix`` prefix tokens; False is
            timm's ``no_embed_class`` (prefix tokens get no PE, any number of them is accepted).
        mode, antialias, align_corners: resampling at another grid (:func:`resample_abs_pe`; ``align_corners``
            for the evaluation-time resampling, not the train-time ``crop_aug`` / ``fuzzy`` read-outs).
        crop_aug: RO-ViT cropped PE during training (2D only): per sample, upsample the table to ``crop_upsample``,
            cut a random box (RandomResizedCrop rule, :func:`sample_crop_boxes`: area ``crop_scale``, aspect
            ``crop_ratio``) and resize it to the current grid. Off in ``eval()``.
        crop_sampling: pixel convention of the crop read-out: ``"center"`` (default) or ``"roi_align"`` (the
            official RO-ViT code's); see :func:`crop_resample_abs_pe`.
        fuzzy: ViTAR fuzzy PE during training (2D or 3D): every token samples the table bilinearly at its
            position plus a uniform offset in ``[-fuzzy, fuzzy]`` cells of the current grid, drawn per sample and
            token (:func:`fuzzy_sample_abs_pe`; ViTAR uses 0.5). ``0`` (default) is off; always off in ``eval()``,
            where the table is resampled with ``mode``. Draws come from torch's global generator (seeded runs
            repeat).
        init_std: truncated-normal std of the table (0.02, as timm).
        grid_sample: 2D only. On per-sample (:class:`~vispos.grid.PackedLayout`) batches, read every sample's
            table with ``F.grid_sample`` at its cell centres (:func:`grid_sample_abs_pe`, ``mode`` bilinear /
            bicubic / nearest, ``align_corners``, no antialias) -- timm NaFlex ``pos_embed_use_grid_sample`` --
            instead of resampling the table to the sample's grid; also for a packed batch of one grid. Image
            batches (:class:`~vispos.grid.GridLayout`) still resample (timm's image path). Default off.

    Parameter ``pos_embed (1, rows, C)``, ``rows = (num_prefix if embed_prefix else 0) + prod(grid)``.

    Caching: a resampled table is cached per grid shape only when no gradient can flow to ``pos_embed`` (grad mode
    off, or ``pos_embed.requires_grad`` False), keyed on ``pos_embed._version`` so an in-place update (optimizer
    step, ``load_state_dict``) invalidates it. Under grad mode the table is resampled inline at every call, so
    gradients reach ``pos_embed`` at any grid. Under ``torch.compile`` it is always computed inline.
    """

    name = "ape"
    family = "absolute"
    description = "learned absolute PE (ViT/DeiT pos_embed), resampled bicubic/bilinear/area/trilinear; RO-ViT crop_aug"

    def __init__(
        self,
        dim: int,
        grid: Sequence[int],
        num_prefix: int = 0,
        embed_prefix: bool = True,
        mode: str = "bicubic",
        antialias: bool = False,
        crop_aug: bool = False,
        crop_scale: Tuple[float, float] = (0.1, 1.0),
        crop_ratio: Tuple[float, float] = (0.5, 2.0),
        crop_upsample: Optional[Sequence[int]] = None,
        crop_sampling: str = "center",
        fuzzy: float = 0.0,
        init_std: float = 0.02,
        align_corners: bool = False,
        grid_sample: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"ape needs a positive int dim, got {dim!r}")
        if grid is None:
            raise ValueError("ape needs the training grid (grid=(H, W) or (T, H, W)), got None")
        self.grid = _grid(grid, "grid")
        if isinstance(num_prefix, bool) or not isinstance(num_prefix, int) or num_prefix < 0:
            raise ValueError(f"num_prefix must be an int >= 0, got {num_prefix!r}")
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"unknown resample mode {mode!r}; expected one of {RESAMPLE_MODES}")
        if mode == "trilinear" and len(self.grid) != 3:
            raise ValueError(f"mode 'trilinear' is for 3D grids, got grid {self.grid}")
        if antialias and mode not in ("bicubic", "bilinear"):
            raise ValueError(f"antialias works with modes 'bicubic' and 'bilinear', got mode={mode!r}")
        if not isinstance(align_corners, bool):
            raise TypeError(f"ape: align_corners must be a bool, got {align_corners!r}")
        if align_corners and mode not in ("bicubic", "bilinear", "trilinear"):
            raise ValueError(f"ape: align_corners works with modes 'bicubic', 'bilinear' and 'trilinear', got "
                             f"mode={mode!r}")
        if not isinstance(grid_sample, bool):
            raise TypeError(f"ape: grid_sample must be a bool, got {grid_sample!r}")
        if grid_sample and (len(self.grid) != 2 or mode not in GRID_SAMPLE_MODES):
            raise ValueError(f"ape: grid_sample=True reads 2D tables with modes {GRID_SAMPLE_MODES}, got grid "
                             f"{self.grid}, mode={mode!r}")
        self.grid_sample = grid_sample
        if crop_aug and len(self.grid) != 2:
            raise ValueError(f"crop_aug (RO-ViT cropped PE) is 2D-only, got a {len(self.grid)}-D grid {self.grid}")
        if crop_aug:
            sample_crop_boxes(1, crop_scale, crop_ratio)  # validates the ranges now, before any work
        if crop_sampling not in CROP_SAMPLINGS:
            raise ValueError(f"unknown crop_sampling {crop_sampling!r}; expected one of {CROP_SAMPLINGS}")
        if isinstance(fuzzy, bool) or not isinstance(fuzzy, (int, float)) or not 0 <= fuzzy < math.inf:
            raise ValueError(f"fuzzy must be a finite number >= 0 (offset range in grid cells), got {fuzzy!r}")
        if fuzzy and crop_aug:
            raise ValueError("ape: choose one train-time augmentation, crop_aug=True or fuzzy > 0, not both")
        self.fuzzy = float(fuzzy)
        self.dim = dim
        self.num_prefix = num_prefix
        self.embed_prefix = bool(embed_prefix)
        self.mode = mode
        self.antialias = bool(antialias)
        self.align_corners = align_corners
        self.crop_aug = bool(crop_aug)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.crop_upsample = tuple(crop_upsample) if crop_upsample is not None else None
        self.crop_sampling = crop_sampling
        self.init_std = init_std
        self.ndims = (len(self.grid),)
        rows = (num_prefix if self.embed_prefix else 0) + math.prod(self.grid)
        self.pos_embed = nn.Parameter(torch.empty(1, rows, dim, device=device, dtype=dtype or torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=self.init_std)
        self.clear_cache()

    @property
    def table_prefix(self) -> int:
        """Prefix rows stored in ``pos_embed``."""
        return self.num_prefix if self.embed_prefix else 0

    # ---- a host's absolute table (see vispos.pe.host) -----------------------------------------------------------
    @classmethod
    def options_from_host(cls, host) -> dict:
        """The host's prefix convention (rows for prefix tokens or not) and its table resampling: ``antialias``,
        and ``mode`` / ``align_corners`` / ``grid_sample`` where the host states them (timm NaFlexViT:
        ``pos_embed_interp_mode``, ``pos_embed_align_corners``, ``pos_embed_use_grid_sample``; ViT / EVA hosts
        state bicubic, the default)."""
        out = dict(antialias=bool(host.resample.get("antialias", False)))
        if "mode" in host.resample:
            out["mode"] = host.resample["mode"]
        for k in ("align_corners", "grid_sample"):
            if host.resample.get(k):
                out[k] = True
        if host.num_prefix:
            out["embed_prefix"] = bool(host.prefix_in_table)
        return out

    def no_weight_decay(self) -> set:
        """The table is not decayed (as timm's ``pos_embed``)."""
        return {"pos_embed"}

    @torch.no_grad()
    def state_from_host(self, host, path: str) -> dict:
        """``pos_embed`` from the host's ``abs_table``: resampled to this grid if it was saved at another, prefix rows
        copied, set to zero (host without prefix rows: same output) or dropped (``embed_prefix=False``)."""
        t = host.peek("abs_table")
        if t is None:
            return {}
        table, src_prefix = t.table, t.prefix_rows
        dst_prefix = self.table_prefix
        if src_prefix not in (0, host.num_prefix) or dst_prefix not in (0, host.num_prefix) \
                or table.shape[-1] != self.dim or table.shape[1] != src_prefix + math.prod(t.grid):
            raise ValueError(f"cannot map the host's {t.source} {tuple(table.shape)} (grid {tuple(t.grid)}, "
                             f"{src_prefix} prefix rows) onto {path}.pos_embed {tuple(self.pos_embed.shape)} for "
                             f"grid {self.grid} with {host.num_prefix} prefix tokens")
        host.take("abs_table", f"{path}.pos_embed")
        if tuple(t.grid) != tuple(self.grid):
            table = resample_abs_pe(table, self.grid, tuple(t.grid), src_prefix, host.resample.get("mode", "bicubic"),
                                    bool(host.resample.get("antialias", False)),
                                    bool(host.resample.get("align_corners", False)))
            host.log("%s resampled from grid %s to %s", t.source, tuple(t.grid), self.grid)
        dst = torch.zeros_like(self.pos_embed)
        dst[:, dst_prefix:] = table[:, src_prefix:].to(dst.dtype)
        what = "copied"
        if dst_prefix and src_prefix:
            dst[:, :dst_prefix] = table[:, :src_prefix].to(dst.dtype)
        elif dst_prefix:
            what = "copied, prefix rows set to zero (host without prefix rows: same output)"
        elif src_prefix:
            what = f"copied, {src_prefix} prefix rows dropped (embed_prefix=False: outputs change)"
        host.log("%s %s -> %s.pos_embed %s (%s)", t.source, tuple(t.table.shape), path, tuple(dst.shape), what)
        return {"pos_embed": dst}

    def resize_state(self, name: str, tensor: torch.Tensor, host) -> Optional[torch.Tensor]:
        """A ``pos_embed`` saved at another (square) grid, resampled to this one."""
        if name != "pos_embed" or tensor.dim() != 3 or tensor.shape[2] != self.dim:
            return None
        n = tensor.shape[1] - self.table_prefix
        side = int(round(math.sqrt(n))) if n > 0 else 0
        if side * side != n or len(self.grid) != 2:
            raise ValueError(f"checkpoint pos_embed {tuple(tensor.shape)} has {n} patch rows, not a square grid; "
                             f"cannot tell its grid")
        # with this table's own rule (mode, antialias, align_corners): what the saved model computes at this grid
        host.log("checkpoint pos_embed resampled from grid %s to %s (%s, antialias=%s, align_corners=%s)",
                 (side, side), self.grid, self.mode, self.antialias, self.align_corners)
        return resample_abs_pe(tensor, self.grid, (side, side), self.table_prefix, self.mode, self.antialias,
                               self.align_corners)

    def _check(self, layout: GridLayout) -> None:
        self.check_layout(layout)
        if layout.positions is not None:
            raise ValueError("ape: a learned table has no values between grid cells; layouts with explicit "
                             "positions are not supported (use ape_sincos or RoPE)")
        if self.embed_prefix and layout.num_prefix != self.num_prefix:
            raise ValueError(f"ape: the table has rows for {self.num_prefix} prefix tokens, the layout has "
                             f"{layout.num_prefix} (use embed_prefix=False for a variable number)")

    def _sample(self, table: torch.Tensor, grid, sampled: bool) -> torch.Tensor:
        if sampled:
            return grid_sample_abs_pe(table, grid, self.grid, self.table_prefix, self.mode, self.align_corners)
        return resample_abs_pe(table, grid, self.grid, self.table_prefix, self.mode, self.antialias,
                               self.align_corners)

    def get_table(self, grid: Sequence[int], sampled: bool = False) -> torch.Tensor:
        """``pos_embed`` resampled to ``grid``: ``(1, table_prefix + prod(grid), C)`` (cached, see class doc).
        ``sampled=True`` (the per-sample path of ``grid_sample=True``): read by :func:`grid_sample_abs_pe`, at the
        training grid too."""
        grid = _grid(grid, "grid")
        if len(grid) != len(self.grid):
            raise ValueError(f"ape was built for {len(self.grid)}-D grids, got grid {grid}")
        if sampled:
            if torch.compiler.is_compiling() or (torch.is_grad_enabled() and self.pos_embed.requires_grad):
                return self._sample(self.pos_embed, grid, True)
            key = ("grid_sample", grid, self.pos_embed.device, self.pos_embed.dtype)
            version = self.pos_embed._version
            cache = self._table_cache()
            hit = cache.get(key)
            if hit is not None and hit[0] == version:
                cache.move_to_end(key)
                return hit[1]
            out = self._sample(self.pos_embed.detach(), grid, True)
            self._cache_put(key, (version, out))
            return out
        if torch.compiler.is_exporting():  # no early-out that specialises the exported graph to one grid
            return resample_abs_pe(self.pos_embed, grid, self.grid, self.table_prefix, self.mode, self.antialias,
                                   self.align_corners)
        if grid == self.grid:
            return self.pos_embed
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and self.pos_embed.requires_grad):
            return resample_abs_pe(self.pos_embed, grid, self.grid, self.table_prefix, self.mode, self.antialias,
                                   self.align_corners)
        key = (grid, self.pos_embed.device, self.pos_embed.dtype)
        version = self.pos_embed._version
        cache = self._table_cache()
        hit = cache.get(key)
        if hit is not None and hit[0] == version:
            cache.move_to_end(key)
            return hit[1]
        out = resample_abs_pe(self.pos_embed.detach(), grid, self.grid, self.table_prefix, self.mode,
                              self.antialias, self.align_corners)
        self._cache_put(key, (version, out))
        return out

    @property
    def _packed_always(self) -> bool:
        return self.grid_sample

    def _group_table(self, g, n: int, x: torch.Tensor) -> torch.Tensor:
        return self.full_table(g, n, x.dtype, x.device, sampled=self.grid_sample)

    def full_table(self, layout, batch_size: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                   device=None, sampled: bool = False):
        """PE for every token of ``layout``: ``(1, N, C)``, or ``(B, N, C)`` with crop augmentation in training.

        Prefix tokens get their rows (``embed_prefix``) or zeros. ``device`` is ignored (the table lives with
        ``pos_embed``). ``sampled``: the table read by grid_sample (see ``grid_sample``) outside training
        augmentation.
        """
        layout = as_layout(layout)
        self._check(layout)
        if self.crop_aug and self.training:
            if batch_size is None:
                raise ValueError("ape with crop_aug needs the batch size in training (one crop per sample)")
            boxes = sample_crop_boxes(batch_size, self.crop_scale, self.crop_ratio, device=self.pos_embed.device,
                                      size=self.grid)
            t = crop_resample_abs_pe(self.pos_embed, self.grid, layout.shape, boxes, self.table_prefix,
                                     self.crop_upsample, self.crop_sampling)
        elif self.fuzzy and self.training:
            if batch_size is None:
                raise ValueError("ape with fuzzy > 0 needs the batch size in training (one draw per sample)")
            t = fuzzy_sample_abs_pe(self.pos_embed, self.grid, layout.shape, batch_size, self.fuzzy,
                                    self.table_prefix)
        else:
            t = self.get_table(layout.shape, sampled=True) if sampled else self.get_table(layout.shape)
        if dtype is not None:
            t = t.to(dtype)
        if not self.embed_prefix and layout.num_prefix:
            t = torch.cat([t.new_zeros(t.shape[0], layout.num_prefix, t.shape[-1]), t], dim=1)
        return t

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, grid={self.grid}, num_prefix={self.num_prefix}, embed_prefix={self.embed_prefix}, "
                f"mode={self.mode!r}, antialias={self.antialias}, crop_aug={self.crop_aug}"
                + (f", fuzzy={self.fuzzy:g}" if self.fuzzy else "")
                + (", align_corners=True" if self.align_corners else "")
                + (", grid_sample=True" if self.grid_sample else ""))


class SinCosPE(_TokenPE):
    """Fixed sin-cos absolute PE, 2D (MAE / timm) or 3D (CogVideoX-2B or Latte layout), recomputed at every grid.

    Args:
        dim: embedding width (divisible by 4 in 2D, 16 in 3D).
        grid: training grid ``(H, W)`` or ``(T, H, W)`` (the reference for non-index coordinates).
        num_prefix: accepted for symmetry; prefix tokens get zeros (MAE's zero class row), any number of them.
        temperature: frequency base (10000).
        style: 2D channel order, ``"mae"`` (default) or ``"timm"`` (:func:`build_sincos_2d`); 3D layout,
            ``"cogvideox"`` (default: the ``D/4`` time split) or ``"latte"`` (full-width 2D + 1D tables added)
            (:func:`build_sincos_3d`).
        coords: coordinate mode at a new grid (:data:`vispos.grid.COORD_MODES`, or one per axis): ``index``
            (positions extend), ``interpolated`` (the grid is squeezed onto the training range), ``normalized``
            (centred, image extent fixed) or ``cropped``.
        ref_shape: reference grid for non-index modes (default ``grid``).
        interpolation_scale: positions are divided by it after ``coords`` (a number or one per axis), at every
            grid: diffusers' ``interpolation_scale`` (CogVideoX-2B: ``(temporal, spatial, spatial) =
            (1, 1.875, 1.875)``; PixArt / SD3 2D tables).

    No parameters: the table is a cache per layout and device (float32, cast once to the input dtype).
    """

    _table_attrs = frozenset({"coords", "ref_shape", "temperature", "style", "interpolation_scale"})
    name = "ape_sincos"
    family = "absolute"
    description = "fixed sin-cos APE (MAE/timm 2D, CogVideoX/Latte 3D), recomputed at any coords, fixed position scale"

    def __init__(self, dim: int, grid: Sequence[int], num_prefix: int = 0, temperature: float = 10000.0,
                 style: Optional[str] = None, coords="index", ref_shape=None, interpolation_scale=1.0,
                 device=None, dtype=None):
        super().__init__()
        if grid is None:
            raise ValueError("ape_sincos needs the training grid (grid=(H, W) or (T, H, W)), got None")
        self.grid = _grid(grid, "grid")
        nd = len(self.grid)
        if style is None:
            style = "mae" if nd == 2 else "cogvideox"
        styles = SINCOS_STYLES if nd == 2 else SINCOS_3D_STYLES
        if style not in styles:
            other = SINCOS_3D_STYLES if nd == 2 else SINCOS_STYLES
            why = f" ({style!r} is a {5 - nd}D-only style)" if style in other else ""
            raise ValueError(f"unknown {nd}-D sin-cos style {style!r}{why}; expected one of {styles}")
        need = 16 if style == "cogvideox" else 4
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % need:
            raise ValueError(f"ape_sincos style {style!r} on a {nd}-D grid needs dim divisible by {need}, "
                             f"got {dim!r}")
        scales = list(interpolation_scale) if isinstance(interpolation_scale, (list, tuple)) else \
            [interpolation_scale] * nd
        if len(scales) != nd or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0) for v in scales):
            raise ValueError(f"interpolation_scale must be a positive number or one per axis ({nd}), got "
                             f"{interpolation_scale!r}")
        self.interpolation_scale = tuple(float(v) for v in scales)
        modes = [coords] * nd if isinstance(coords, str) else list(coords)
        if len(modes) != nd or any(m not in COORD_MODES for m in modes):
            raise ValueError(f"coords must be one of {COORD_MODES} or one per axis ({nd}), got {coords!r}")
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.dim = dim
        self.num_prefix = num_prefix
        self.temperature = float(temperature)
        self.style = style
        self.coords = coords
        self.ref_shape = tuple(ref_shape) if ref_shape is not None else self.grid
        self.ndims = (nd,)

    def build_table(self, layout: GridLayout, device=None) -> torch.Tensor:
        """Sin-cos of the layout's patch coordinates, ``(prod(grid), C)`` float32 (uncached)."""
        c = grid_coords(layout, self.coords, self.ref_shape, device=device, dtype=torch.float64)
        if any(v != 1.0 for v in self.interpolation_scale):
            c = c / torch.tensor(self.interpolation_scale, dtype=c.dtype, device=c.device)
        if layout.ndim == 2:
            return build_sincos_2d(layout.shape, self.dim, self.temperature, self.style, coords=c, device=device)
        return build_sincos_3d(layout.shape, self.dim, self.temperature, coords=c, device=device, style=self.style)

    def get_table(self, layout, device=None) -> torch.Tensor:
        """Cached :meth:`build_table` (per layout and device)."""
        layout = as_layout(layout)
        self.check_layout(layout)
        return self.cached((layout, str(device)), lambda: self.build_table(layout, device))

    def full_table(self, layout, batch_size: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                   device=None):
        """``(1, N, C)`` for every token of ``layout``; prefix rows are zeros."""
        layout = as_layout(layout)
        t = self.get_table(layout, device)
        if dtype is not None:
            t = t.to(dtype)
        if layout.num_prefix:
            t = torch.cat([t.new_zeros(layout.num_prefix, t.shape[-1]), t], dim=0)
        return t[None]

    def extra_repr(self) -> str:
        extra = f", interpolation_scale={self.interpolation_scale}" if any(
            v != 1.0 for v in self.interpolation_scale) else ""
        return (f"dim={self.dim}, grid={self.grid}, temperature={self.temperature}, style={self.style!r}, "
                f"coords={self.coords!r}{extra}")


# ---- registry --------------------------------------------------------------------------------------------------
def build_ape(*, dim=None, grid=None, num_prefix=0, device=None, dtype=None, **kwargs):
    return AbsolutePE(dim, grid, num_prefix=num_prefix, device=device, dtype=dtype, **kwargs)


def build_ape_sincos(*, dim=None, grid=None, num_prefix=0, device=None, dtype=None, **kwargs):
    return SinCosPE(dim, grid, num_prefix=num_prefix, device=device, dtype=dtype, **kwargs)




register_family(AbsolutePE, build_ape)
register_family(SinCosPE, build_ape_sincos)
