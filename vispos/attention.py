"""One attention module for every host: q/k transforms, additive biases and value hooks from a vispos PE.

:func:`attend` is the attention-level hook sequence every host calls::

    bias = pe.attn_bias(q, layout, i)        # from the un-rotated q (MViTv2 / SAM semantics)
    q, k = pe.forward_qk(q, k, layout, i)    # RoPE
    out  = sdpa(q, k, v, bias, scale)        # no N×N matrix for decomposed biases
    out  = pe.forward_value(out, v, layout, i)  # GLPE's local conv on V

:class:`Attention` is a drop-in for timm's ``Attention`` (same parameter names: ``qkv``, ``q_norm``, ``k_norm``,
``proj``) that takes ``layout``, ``pe`` and the layer ``index``; with ``pe=None`` it is plain attention.

Both accept a :class:`~vispos.grid.PackedLayout` (a grid per sample, padded to one length): padding keys are
masked (key-only, so padding queries stay finite) on top of any PE bias, and the PE hooks act per sample.
"""
from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import nn

from .grid import GridLayout, PackedLayout, as_layout
from .ops.attention import sdpa

__all__ = ["attend", "Attention"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pe=None,
    layout=None,
    index: int = 0,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Attention with a PE's attention-level hooks. ``q, k, v (B, heads, N, head_dim)`` -> ``(B, heads, N, head_dim)``.

    ``layout``: a :class:`~vispos.grid.GridLayout`, or a :class:`~vispos.grid.PackedLayout` whose padding keys are
    masked (also with ``pe=None``)."""
    if layout is not None and not isinstance(layout, (GridLayout, PackedLayout)):
        raise TypeError(f"attend: layout must be a GridLayout or a PackedLayout, got {type(layout).__name__}")
    if isinstance(layout, PackedLayout):
        layout.check_batch(q.shape[0], "attend: q")
    bias = None
    if pe is not None:
        hooks = pe.hooks
        if hooks and layout is None:
            raise ValueError("attend: a PE needs the token layout (layout=GridLayout(...)), got None")
        if "bias" in hooks:
            bias = pe.attn_bias(q, layout, index)
        if "qk" in hooks:
            q, k = pe.forward_qk(q, k, layout, index)
    out = sdpa(q, k, v, bias, scale=scale, dropout_p=dropout_p, impl=impl,
               layout=layout if isinstance(layout, PackedLayout) else None)
    if pe is not None and "value" in pe.hooks:
        out = pe.forward_value(out, v, layout, index)
    return out


class Attention(nn.Module):
    """Multi-head self-attention with PE hooks. ``x (B, N, dim)`` -> ``(B, N, dim)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer=nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, layout=None, pe=None, index: int = 0) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Attention: x must be (B, N, dim={self.num_heads * self.head_dim}), got {got}")
        if x.shape[-1] != self.num_heads * self.head_dim:
            raise ValueError(f"Attention: x has {x.shape[-1]} channels, this layer was built for "
                             f"dim={self.num_heads * self.head_dim}")
        if pe is not None and pe.hooks and layout is None:
            raise ValueError(f"Attention: PE {pe.name!r} needs the token layout (layout=GridLayout(...)), got None")
        if layout is not None:
            layout = as_layout(layout)
            layout.check_tokens(x.shape[1], "Attention: x")
            if isinstance(layout, PackedLayout):
                layout.check_batch(x.shape[0], "Attention: x")
        if pe is not None and "attn_input" in pe.hooks:
            x = pe.forward_attn_input(x, layout, index)
        qkv = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attend(q, k, v, pe, layout, index, self.scale, self.attn_drop if self.training else 0.0)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(out))
