"""A compact Latte/DiT-style video diffusion transformer with a pluggable vispos 3D positional embedding.

``VideoDiT`` maps a noisy video ``x (B, C, T, H, W)`` (pixels or latents), a diffusion time ``t (B,)`` and an optional
class label ``y (B,)`` to a prediction of the same shape (the rectified-flow velocity in :mod:`vispos.eval.frames`).

Structure (DiT, Peebles & Xie 2023; Latte, Ma et al. 2024):

* 3D patchify: ``Conv3d`` with kernel = stride = ``patch (pt, ph, pw)`` -> token grid ``(T/pt, H/ph, W/pw)``;
  tokens are row-major over ``(t, h, w)``.
* conditioning ``c = MLP(sincos(1000 t)) (+ class embedding)``; every block is adaLN-zero
  (shift/scale/gate for attention and MLP from ``c``, the modulation layer zero-initialised so every block
  starts as the identity), the final layer is adaLN + zero-initialised linear, then unpatchify.
* ``attention="full"``: every block attends over all ``T'·H'·W'`` tokens with the 3D layout.
  ``attention="alternating"``: block ``i`` even is *spatial* (each frame attends within itself), odd is *temporal*
  (each spatial location attends over time), as Latte's variant 1.

How the PE reaches the model (the hooks of :mod:`vispos.pe.base`, one PE object for the whole model):

* ``token``: ``x = pe.forward_tokens(x, layout3d)`` after patch embedding (3D sin-cos / learned APE, GLPE global).
* ``block``: ``x = pe.forward_block(x, layout3d, i)`` after block ``i`` for ``i in pe.block_indices`` (PEG-3D), always
  on the full 3D token sequence.
* ``attn_input``: ``pe.forward_attn_input(norm1(x), layout3d, i)`` on the full 3D sequence (LaPE), before any
  spatial/temporal reshaping.
* ``qk`` / ``bias`` / ``value`` (RoPE, decomposed rel-pos, GLPE local): in full attention with ``layout3d``.
  In alternating mode a spatial block sees the sub-grid ``(1, H', W')`` (one frame) and a temporal block the
  sub-grid ``(T', 1, 1)`` (one location), both derived from ``layout3d``. For every PE whose attention term
  depends on coordinate *differences* (axial RoPE, VoPE, RoPE-Mixed, decomposed rel-pos) this is exact: the axes
  held fixed inside a sub-sequence contribute the same rotation / a key-independent bias, which cancel in the
  softmax. Temporal scaling rules see the true frame count ``T'`` in temporal blocks (and ``1`` in spatial ones,
  where the temporal rotation cancels anyway). A value-side convolution (GLPE local) sees only the neighbours
  inside the sub-grid (spatial neighbours in spatial blocks, temporal ones in temporal blocks).

The token grid follows the input: ``T`` frames give ``T/pt`` token frames; RoPE rules adapt through
:class:`vispos.pe.rope.AxialRoPE` ``rules`` (see :meth:`VideoDiT.set_temporal_rule`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import freqs as F_
from ..attention import Attention
from ..grid import GridLayout
from ..pe.base import PositionalEmbedding
from ..pe.rope import AxialRoPE, MixedRoPE
from ..registry import build_pe
from ..utils.checks import check_int

__all__ = ["VideoDiT", "timestep_embedding", "ATTENTION_MODES", "SubLayoutPE"]

ATTENTION_MODES = ("full", "alternating")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalar times ``t (B,)`` -> ``(B, dim)`` float32 (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x (B, N, C) * (1 + scale (B, C)) + shift (B, C)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class SubLayoutPE(PositionalEmbedding):
    """A view of a PE for the attention hooks of a spatial or temporal block (alternating attention).

    Passes ``qk``, ``bias`` and ``value`` to the wrapped PE with the block's sub-grid layout; ``token``, ``block`` and
    ``attn_input`` are applied by the host on the full 3D layout, so the view does not expose them.
    """

    name = "sublayout"

    def __init__(self, pe: PositionalEmbedding):
        super().__init__()
        self.inner = [pe]  # a list: not a registered submodule (the PE belongs to the host)
        self.hooks = frozenset(pe.hooks) & {"qk", "bias", "value"}
        self.ndims = (3,)

    def forward_qk(self, q, k, layout, index=0):
        return self.inner[0].forward_qk(q, k, layout, index)

    def attn_bias(self, q, layout, index=0):
        return self.inner[0].attn_bias(q, layout, index)

    def forward_value(self, out, v, layout, index=0):
        return self.inner[0].forward_value(out, v, layout, index)


class Mlp(nn.Module):
    """``Linear -> GELU(tanh) -> Linear``, ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-zero transformer block. ``kind`` is ``"full"``, ``"spatial"`` or ``"temporal"``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, kind: str, qk_norm: bool, index: int):
        super().__init__()
        self.kind = kind
        self.index = index
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN[1].weight)
        nn.init.zeros_(self.adaLN[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, layout: GridLayout, pe: Optional[PositionalEmbedding],
                sub_pe: Optional[PositionalEmbedding]) -> torch.Tensor:
        """``x (B, T'H'W', C)``, ``c (B, C)``, ``layout`` the 3D token grid -> ``(B, T'H'W', C)``."""
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), sh1, sc1)
        if pe is not None and "attn_input" in pe.hooks:
            h = pe.forward_attn_input(h, layout, self.index)
        T, H, W = layout.shape
        if self.kind == "full":
            a = self.attn(h, layout, sub_pe, self.index)
        elif self.kind == "spatial":  # each frame attends within itself
            hs = rearrange(h, "b (t s) c -> (b t) s c", t=T)
            a = self.attn(hs, GridLayout((1, H, W)), sub_pe, self.index)
            a = rearrange(a, "(b t) s c -> b (t s) c", t=T)
        else:  # temporal: each spatial position attends over time
            ht = rearrange(h, "b (t s) c -> (b s) t c", t=T)
            a = self.attn(ht, GridLayout((T, 1, 1)), sub_pe, self.index)
            a = rearrange(a, "(b s) t c -> b (t s) c", s=H * W)
        x = x + g1[:, None] * a
        x = x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))
        return x


def _triple(v, name: str) -> Tuple[int, int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v, v)
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError(f"{name} must be an int or three ints (t, h, w), got {v!r}")
    out = []
    for s in v:
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
            raise ValueError(f"{name} must contain positive ints (t, h, w), got {v!r}")
        out.append(int(s))
    return tuple(out)


class VideoDiT(nn.Module):
    """Compact video diffusion transformer with any vispos 3D PE.

    Args:
        in_channels: channels of the input video / latent ``C``.
        video_size: training video size ``(T, H, W)`` in frames and pixels (latent cells for latents); defines
            the PE's training token grid ``(T/pt, H/ph, W/pw)``. Other sizes divisible by ``patch`` work at test time.
        patch: ``(pt, ph, pw)`` or one int.
        dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        attention: ``"full"`` (spatio-temporal) or ``"alternating"`` (spatial then temporal blocks).
        pe: a PE name, a list of names (``["ape_sincos", "rope_axial"]``), a built
            :class:`~vispos.pe.base.PositionalEmbedding`, or ``None`` (no PE).
        pe_kwargs: options for :func:`vispos.build_pe` (e.g. ``dict(dims=(16, 8, 8), base=(100, 100, 100))``).
        num_classes: ``0`` for unconditional, else class-conditional (label ``num_classes`` = "no class").
        qk_norm: LayerNorm on q and k per head.

    Shapes: ``forward(x (B, C, T, H, W), t (B,) in [0, 1], y (B,) long or None) -> (B, C, T, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        video_size: Sequence[int] = (8, 32, 32),
        patch: Union[int, Sequence[int]] = (1, 4, 4),
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        attention: str = "full",
        pe: Union[None, str, Sequence[str], PositionalEmbedding] = "rope_axial",
        pe_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: int = 0,
        qk_norm: bool = False,
    ):
        super().__init__()
        check_int(in_channels, "in_channels", 1)
        check_int(dim, "dim", 1)
        check_int(depth, "depth", 1)
        check_int(num_heads, "num_heads", 1)
        check_int(num_classes, "num_classes", 0)
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self.patch = _triple(patch, "patch")
        self.video_size = _triple(tuple(video_size) if isinstance(video_size, list) else video_size, "video_size")
        for a, (s, p) in enumerate(zip(self.video_size, self.patch)):
            if s % p:
                raise ValueError(f"video_size {self.video_size} is not divisible by patch {self.patch} (axis {a})")
        self.train_grid = tuple(s // p for s, p in zip(self.video_size, self.patch))
        self.in_channels = in_channels
        self.dim, self.depth, self.num_heads = dim, depth, num_heads
        self.attention = attention
        self.num_classes = num_classes
        self.config = dict(in_channels=in_channels, video_size=list(self.video_size), patch=list(self.patch),
                           dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=float(mlp_ratio),
                           attention=attention, pe=pe if not isinstance(pe, PositionalEmbedding) else None,
                           pe_kwargs=dict(pe_kwargs or {}), num_classes=num_classes, qk_norm=qk_norm)

        self.x_embed = nn.Conv3d(in_channels, dim, kernel_size=self.patch, stride=self.patch)
        self.t_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embed = nn.Embedding(num_classes + 1, dim) if num_classes else None
        if pe is None:
            self.pe = None
        elif isinstance(pe, PositionalEmbedding):
            self.pe = pe
        else:
            self.pe = build_pe(pe, dim=dim, num_heads=num_heads, depth=depth, grid=self.train_grid, num_prefix=0,
                               **(pe_kwargs or {}))
        if self.pe is not None and 3 not in self.pe.ndims:
            raise ValueError(f"PE {self.pe.name!r} does not support 3D grids (ndims={self.pe.ndims})")
        self.grad_checkpointing = False
        kinds = ["full"] * depth if attention == "full" else [("spatial", "temporal")[i % 2] for i in range(depth)]
        self.blocks = nn.ModuleList(DiTBlock(dim, num_heads, mlp_ratio, kinds[i], qk_norm, i) for i in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final = nn.Linear(dim, math.prod(self.patch) * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in (self.final, self.final_adaLN[1]):
                if not any(m is b.adaLN[1] for b in self.blocks):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.weight, std=0.02)
        for m in (self.final_adaLN[1], self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- geometry -----------------------------------------------------------------------------------------------
    def token_grid(self, video_shape: Sequence[int]) -> Tuple[int, int, int]:
        """Token grid ``(T', H', W')`` for a video of ``(T, H, W)``; ``ValueError`` if not divisible by the patch."""
        shape = tuple(int(s) for s in video_shape)
        if len(shape) != 3:
            raise ValueError(f"video shape must be (T, H, W), got {shape}")
        for a, (s, p) in enumerate(zip(shape, self.patch)):
            if s % p or s <= 0:
                raise ValueError(f"video size {shape} must be positive multiples of the patch {self.patch} "
                                 f"(axis {'THW'[a]})")
        return tuple(s // p for s, p in zip(shape, self.patch))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, T'H'W', dim)`` tokens, row-major over ``(t, h, w)``."""
        return rearrange(self.x_embed(x), "b c t h w -> b (t h w) c")

    def unpatchify(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """``(B, T'H'W', pt·ph·pw·C) -> (B, C, T, H, W)``."""
        T, H, W = grid
        pt, ph, pw = self.patch
        return rearrange(tokens, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)", t=T, h=H, w=W, pt=pt,
                         ph=ph, pw=pw)

    # ---- forward ------------------------------------------------------------------------------------------------
    def _check_inputs(self, x, t, y):
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"x must be a tensor (B, C, T, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels, the model expects {self.in_channels}")
        grid = self.token_grid(x.shape[2:])
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if self.num_classes:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            elif not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
                raise ValueError(f"y must be a long tensor of shape (B,) = ({x.shape[0]},), got {y!r}")
        elif y is not None:
            raise ValueError("y (class labels) given, but the model was built with num_classes=0")
        return grid, t, y

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict ``(B, C, T, H, W)`` from ``x (B, C, T, H, W)``, ``t (B,)`` (or scalar) and labels ``y (B,)``."""
        grid, t, y = self._check_inputs(x, t, y)
        layout = GridLayout(grid)
        h = self.patchify(x)
        pe = self.pe
        if pe is not None and "token" in pe.hooks:
            h = pe.forward_tokens(h, layout)
        if pe is not None:
            layout = pe.prepare(h, layout)  # per-forward PE data rides on the layout handed to every block
        c = self.t_embed(timestep_embedding(t * 1000.0, self.dim).to(h.dtype))
        if self.y_embed is not None:
            c = c + self.y_embed(y)
        block_idx = set(pe.block_indices) if (pe is not None and "block" in pe.hooks) else set()
        sub_pe = SubLayoutPE(pe) if pe is not None else None  # per call: DataParallel replicas use their own PE
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            if ckpt:  # the layout is an argument: the recomputation sees this forward's grid
                h = checkpoint(blk, h, c, layout, pe, sub_pe, use_reentrant=False)
            else:
                h = blk(h, c, layout, pe, sub_pe)
            if i in block_idx:
                h = pe.forward_block(h, layout, i)
        sh, sc = self.final_adaLN(c).chunk(2, dim=-1)
        h = self.final(_modulate(self.final_norm(h), sh, sc))
        return self.unpatchify(h, grid)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of keeping its activations (as timm's
        ``set_grad_checkpointing``). Safe with forwards of different grids summed into one backward: the layout is
        an argument of the checkpointed block."""
        self.grad_checkpointing = bool(enable)

    # ---- temporal rules -----------------------------------------------------------------------------------------
    def rope_modules(self):
        """The axial RoPE members of the PE (``rope_axial`` / ``vope``), possibly empty."""
        if self.pe is None:
            return []
        return [m for m in self.pe.members() if isinstance(m, AxialRoPE)]

    def temporal_rope(self) -> AxialRoPE:
        """The axial RoPE whose axis 0 is time; ``ValueError`` if the PE has none."""
        ropes = self.rope_modules()
        if not ropes:
            name = None if self.pe is None else self.pe.name
            mixed = self.pe is not None and any(isinstance(m, MixedRoPE) for m in self.pe.members())
            why = " (rope_mixed learns its frequencies; scaling rules do not apply)" if mixed else ""
            raise ValueError(f"temporal scaling rules need an axial 3D RoPE (rope_axial or vope); the PE is "
                             f"{name!r}{why}")
        return ropes[0]

    def temporal_info(self) -> dict:
        """Base, rotary dim, training length (token frames) of the temporal RoPE axis and RIFLEx's default ``k``."""
        rope = self.temporal_rope()
        base, dim, L = rope.bases[0], rope.dims[0], self.train_grid[0]
        k, N_k = F_.default_k(base, dim, L)
        return dict(base=base, dim=dim, train_len=L, default_k=k, default_N_k=N_k,
                    periods=F_.periods(F_.rope_freqs(dim, base), rounded=False))

    def set_temporal_rule(self, rule: Union[None, str, dict, F_.ScalingRule] = "none", **kw) -> F_.ScalingRule:
        """Set the scaling rule of the time axis of every axial RoPE in the PE (spatial axes keep their rules).

        ``rule`` is a rule name (:data:`vispos.freqs.RULES`), dict or :class:`~vispos.freqs.ScalingRule`; ``kw``
        are rule fields (``k=``, ``N=``, ``gamma=``, ...). ``train_len`` defaults to the training token frames and
        ``test_len`` to the frame count of each forward call, so one model serves every length. RIFLEx without
        ``k``/``N`` uses :func:`vispos.freqs.default_k`. With a PE that has no axial RoPE only ``"none"`` is
        accepted. Returns the rule stored.
        """
        r = F_.as_rule(rule, **kw)
        ropes = self.rope_modules()
        if not ropes:
            if r.name == "none":
                return r
            self.temporal_rope()  # raises with the reason
        for rope in ropes:
            rules = list(rope.rules)
            rules[0] = r
            rope.rules = tuple(rules)
            rope.clear_cache()
        return r

    def extra_repr(self) -> str:
        return (f"video_size={self.video_size}, patch={self.patch}, train_grid={self.train_grid}, "
                f"attention={self.attention!r}")
