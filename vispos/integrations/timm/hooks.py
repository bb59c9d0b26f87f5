"""The hook subclasses vispos swaps into a timm model, and the table of timm hosts they serve.

Each supported timm model class is one :class:`TimmHost` entry: the model / block mixins, the attention classes
its blocks may use (each mixin contributing only its projection step to the one attention forward,
:class:`_AttentionHooks`), and the attributes that hold timm's own PE. The layout travels with the call in a
:class:`PECall` (see its docstring), never in module state.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers.attention import AttentionRope
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from timm.models.eva import Eva, EvaAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ...attention import attend
from ...grid import GridLayout
from ...pe.base import PositionalEmbedding

__all__ = ["PECall", "TimmHost", "HOSTS", "SUPPORTED", "find_host"]


@dataclass(frozen=True, eq=False)
class PECall:
    """What one forward hands to every block and attention of a vispos timm model: the PE and the (prepared)
    layout of the tokens of *this* call, plus, in a ViT, the user's ``attn_mask``.

    It travels as an argument -- EVA blocks take it as timm's ``rope=`` argument (timm's own EVA loops, checkpointed
    or not, pass it to each block and its attention), ViT blocks as ``attn_mask=`` (timm's ``Block`` hands that to
    its attention; the ViT forwards run their own block loop) -- so gradient checkpointing re-runs each block with
    its own layout, and concurrent forwards (threads, ``nn.DataParallel`` replicas, each using its own ``model.pe``)
    share nothing: no module attribute is written during a forward.
    """

    pe: PositionalEmbedding
    layout: GridLayout
    attn_mask: Optional[torch.Tensor] = None


def _expect_call(call, where: str, arg: str) -> PECall:
    if not isinstance(call, PECall):
        raise RuntimeError(f"vispos: {where} got {arg}={type(call).__name__}, not the PECall (PE + token layout) "
                           f"that the model's forward hands to its blocks; call the model (forward / forward_features "
                           f"/ forward_intermediates), not a block or an attention on its own")
    return call


# ---- the hook subclasses ---------------------------------------------------------------------------------------
class _AttentionHooks:
    """The one attention forward of every timm attention class vispos hosts: ``attn_input`` hook, the class'
    projection step (:meth:`_vispos_project`), the ``bias`` / ``qk`` / ``value`` hooks around SDPA, then timm's
    inner norm, gate and output projection."""

    def _vispos_project(self, x: torch.Tensor):
        """``x (B, N, C)`` -> ``q, k, v (B, heads, N, head_dim)`` (k / v repeated to all heads), q/k-normed."""
        raise NotImplementedError

    def _vispos_forward(self, x: torch.Tensor, call: PECall, attn_mask, is_causal: bool) -> torch.Tensor:
        pe, layout, i = call.pe, call.layout, self._vispos_index
        hooks = pe.hooks
        if "attn_input" in hooks:
            x = pe.forward_attn_input(x, layout, i)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self._vispos_project(x)
        dp = self.attn_drop.p if self.training else 0.0
        if attn_mask is None and not is_causal:
            out = attend(q, k, v, pe, layout, i, self.scale, dp)
        else:
            if "bias" in hooks:
                raise ValueError(f"attn_mask / is_causal cannot be combined with the attention bias of PE {pe.name!r}")
            if "qk" in hooks:
                q, k = pe.forward_qk(q, k, layout, i)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dp, is_causal=is_causal,
                                                 scale=self.scale)
            if "value" in hooks:
                out = pe.forward_value(out, v, layout, i)
        out = self.norm(out.transpose(1, 2).reshape(B, N, out.shape[1] * out.shape[3]))  # explicit: B = 0 works
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


class _VitAttentionHooks(_AttentionHooks):
    """Over ``timm.layers.Attention``: fused qkv; the :class:`PECall` arrives as ``attn_mask``."""

    def _vispos_project(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
        call = _expect_call(attn_mask, type(self).__name__, "attn_mask")
        return self._vispos_forward(x, call, call.attn_mask, is_causal)


class _RopeArgAttentionHooks(_AttentionHooks):
    """Entry of the attention classes EVA blocks call with ``rope=``: the :class:`PECall` arrives there."""

    def forward(self, x: torch.Tensor, rope=None, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        return self._vispos_forward(x, _expect_call(rope, type(self).__name__, "rope"), attn_mask, is_causal)


class _EvaAttentionHooks(_RopeArgAttentionHooks):
    """Over ``timm.models.eva.EvaAttention``: fused (optionally with separate q/k/v biases) or separate q/k/v."""

    def _vispos_project(self, x):
        B, N, _ = x.shape
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            else:
                qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
                qkv = self.qkv(x) + qkv_bias if self.qkv_bias_separate else F.linear(x, self.qkv.weight, qkv_bias)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, qkv.shape[-1] // (3 * self.num_heads)).permute(
                2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
            k = self.k_proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
            v = self.v_proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return self.q_norm(q), self.k_norm(k), v


class _RopeAttentionHooks(_RopeArgAttentionHooks):
    """Over ``timm.layers.attention.AttentionRope`` (EVA ``attn_type='rope'``): fused or separate q/k/v, grouped
    k/v heads repeated to all heads (before the PE hooks)."""

    def _vispos_project(self, x):
        B, N, _ = x.shape
        if self.qkv is not None:
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).reshape(B, N, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).reshape(B, N, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.num_kv_groups > 1:
            k = k.repeat_interleave(self.num_kv_groups, dim=1)
            v = v.repeat_interleave(self.num_kv_groups, dim=1)
        return q, k, v


class _BlockHooks:
    """Over any timm block: the PE's ``block`` hook after the block (PEG after block 0, ...)."""

    def _vispos_after(self, x: torch.Tensor, call: PECall) -> torch.Tensor:
        pe, i = call.pe, self._vispos_index
        if "block" in pe.hooks and i in pe.block_indices:
            x = pe.forward_block(x, call.layout, i)
        return x


class _VitBlockHooks(_BlockHooks):
    """Over a ViT block (``Block``, ``ResPostBlock``): the :class:`PECall` arrives as ``attn_mask`` and is handed on
    to the attention the same way (timm's blocks pass ``attn_mask`` to their attention)."""

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
        call = _expect_call(attn_mask, type(self).__name__, "attn_mask")
        return self._vispos_after(super().forward(x, attn_mask=call, is_causal=is_causal), call)


class _EvaBlockHooks(_BlockHooks):
    """Over an EVA block: the :class:`PECall` arrives as ``rope`` (checkpointed by timm's own loop, which passes
    ``rope`` to :func:`timm.models.checkpoint`) and is handed on to the attention the same way."""

    def forward(self, x: torch.Tensor, rope=None, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        call = _expect_call(rope, type(self).__name__, "rope")
        x = super().forward(x, rope=call, attn_mask=attn_mask, is_causal=is_causal)
        return self._vispos_after(x, call)


def _grid_and_flatten(model, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Patch-embedding output -> ``(x (B, H*W, C), (H, W))``. NHWC with ``dynamic_img_size``, else NLC."""
    if x.dim() == 4:
        B, H, W, C = x.shape
        return x.reshape(B, H * W, C), (H, W)
    grid = tuple(model.patch_embed.grid_size)
    if x.dim() != 3 or x.shape[1] != math.prod(grid):
        raise ValueError(f"patch embedding gave {tuple(x.shape)}; expected (B, {math.prod(grid)}, C) for the grid "
                         f"{grid}, or NHWC with dynamic_img_size=True")
    return x, grid


def _check_image(model: nn.Module, x) -> None:
    """``ValueError`` for an input a ViT cannot patchify, before any work: rank, channels, size vs patch size."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"images must be a tensor (B, C, H, W), got {got}")
    pe_ = model.patch_embed
    # the image channels: a stem (hybrid ViT: HybridEmbed's CNN backbone) says so itself (in_chans); a plain patch
    # embedding's projection reads the image, so its in_channels are the image's
    cin = getattr(pe_, "in_chans", None) if getattr(pe_, "backbone", None) is not None else None
    if cin is None:
        cin = getattr(getattr(pe_, "proj", None), "in_channels", None)
    if cin is not None and x.shape[1] != cin:
        raise ValueError(f"images have {x.shape[1]} channels, the model expects {cin} (input shape {tuple(x.shape)})")
    H, W = x.shape[-2:]
    # pixels per token: the patch size times a stem's reduction (HybridEmbed.feat_ratio)
    ph, pw = pe_.feat_ratio(as_scalar=False) if hasattr(pe_, "feat_ratio") else pe_.patch_size
    if not getattr(pe_, "dynamic_img_pad", False) and (H % ph or W % pw):
        what = " (pixels per token: the stem's reduction times the patch)" if hasattr(pe_, "backbone") else ""
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}{what}; resize or crop "
                         f"it, or build the model with dynamic_img_pad=True")
    img_size = getattr(pe_, "img_size", None)
    if getattr(pe_, "strict_img_size", False) and img_size is not None and (H, W) != tuple(img_size):
        raise ValueError(f"image size {H}x{W} differs from the model's {img_size[0]}x{img_size[1]}; build it with "
                         f"dynamic_img_size=True (any size) or call model.set_input_size(img_size=...)")


class _ModelHooks:
    """Over ``VisionTransformer`` / ``Eva``: prefix tokens, layout, token hook."""

    def forward_features(self, x, *args, **kwargs):
        _check_image(self, x)
        return super().forward_features(x, *args, **kwargs)

    def forward_intermediates(self, x, *args, **kwargs):
        _check_image(self, x)
        return super().forward_intermediates(x, *args, **kwargs)

    def _vispos_embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, GridLayout]:
        """Patch-embedding output -> tokens with the prefix tokens in front and the ``token`` hook applied, and their
        layout."""
        x, grid = _grid_and_flatten(self, x)
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, getattr(self, "dist_token", None),
                                                self.reg_token) if t is not None]
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        layout = GridLayout(grid, self.num_prefix_tokens)
        if "token" in self.pe.hooks:
            x = self.pe.forward_tokens(x, layout)
        return self.pos_drop(x), self.pe.prepare(x, layout)

    @torch.jit.ignore
    def no_weight_decay(self):
        """timm's set plus every PE module's own (:meth:`~vispos.pe.base.PositionalEmbedding.no_weight_decay`)."""
        out = set(super().no_weight_decay())
        for name, m in self.pe.named_modules(prefix="pe"):
            if isinstance(m, PositionalEmbedding):
                out |= {f"{name}.{n}" for n in m.no_weight_decay()}
        return out

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """timm's groups (layer-wise lr decay, ``group_parameters``) with each PE parameter where its family puts it
        (:meth:`~vispos.pe.base.PositionalEmbedding.param_block`): a per-block table (rel-pos, LaPE norm, GLPE
        local conv, PEG conv) with its block, token-level tables with the stem, and a tensor every block uses
        (RoPE-Mixed ``freqs``) left ungrouped, as timm leaves EVA's ``rope.freqs`` (the full learning rate)."""
        import re

        out = dict(super().group_matcher(coarse))
        blocks = out.get("blocks")
        blocks = [(blocks, None)] if isinstance(blocks, str) else list(blocks or [])
        stem = []
        for name, _ in self.pe.named_parameters():
            where = self.pe.param_block(name)
            full = re.escape(f"pe.{name}")
            if where is None:
                stem.append(f"^{full}$")
            elif where != PositionalEmbedding.ALL_BLOCKS:
                blocks.insert(0, (f"^{full}$", (int(where),)))
        if stem:
            out["stem"] = "|".join([out["stem"]] + stem)
        out["blocks"] = blocks
        return out


class _VitHooks(_ModelHooks):
    """timm's ViT loops hand blocks nothing but ``x`` (and ``attn_mask`` when given), so the forwards run the blocks
    themselves, handing each the :class:`PECall` (checkpointed with it under ``grad_checkpointing``)."""

    def _vispos_stem(self, x: torch.Tensor, attn_mask) -> Tuple[torch.Tensor, PECall]:
        _check_image(self, x)
        x, layout = self._vispos_embed(self.patch_embed(x))
        x = self.norm_pre(self.patch_drop(x))
        return x, PECall(self.pe, layout, attn_mask)

    def _vispos_block(self, blk: nn.Module, x: torch.Tensor, call: PECall, is_causal: bool) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, call, is_causal)
        return blk(x, call, is_causal)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        x, call = self._vispos_stem(x, attn_mask)
        for blk in self.blocks:
            x = self._vispos_block(blk, x, call, is_causal)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, return_prefix_tokens: bool = False,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False, output_dict: bool = False,
                              attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        """timm's ``forward_intermediates`` (same arguments and outputs), with the PE call handed to each block."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0] if isinstance(x, torch.Tensor) else None
        x, call = self._vispos_stem(x, attn_mask)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        inter = []
        for i, blk in enumerate(blocks):
            x = self._vispos_block(blk, x, call, is_causal)
            if i in take_indices:
                inter.append(self.norm(x) if norm else x)
        n_pre = self.num_prefix_tokens
        prefix = [y[:, :n_pre] for y in inter] if n_pre else None
        inter = [y[:, n_pre:] for y in inter]
        if output_fmt == "NCHW":
            H, W = call.layout.shape
            inter = [y.reshape(B, H, W, y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in inter]
        if output_dict:
            out = {"image_intermediates": inter}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefix is not None:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return self.norm(x), inter

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._vispos_embed(x)[0]


class _EvaHooks(_ModelHooks):
    """timm's EVA loops hand each block the second output of ``_pos_embed`` as ``rope=``: that is the
    :class:`PECall`."""

    def _pos_embed(self, x: torch.Tensor):
        x, layout = self._vispos_embed(x)
        if self.patch_drop is not None:
            x, _ = self.patch_drop(x)
        return x, PECall(self.pe, layout)

_SUBCLASSES: Dict[Tuple[type, type], type] = {}


def _subclass(mixin: type, base: type) -> type:
    """``class Vispos<Base>(mixin, base)``, made once per base and reachable by name (so it pickles)."""
    key = (mixin, base)
    cls = _SUBCLASSES.get(key)
    if cls is None:
        name = f"Vispos{base.__name__}"
        if any(c.__name__ == name for c in _SUBCLASSES.values()):
            name = f"{name}_{len(_SUBCLASSES)}"
        cls = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name})
        setattr(sys.modules[__name__], name, cls)
        _SUBCLASSES[key] = cls
    return cls


# ---- the host table --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimmHost:
    """One timm model class vispos hosts: everything the installer needs to know about it.

    Attributes:
        label: how errors and :data:`SUPPORTED` name it.
        model_cls: the timm model class (matched with ``isinstance``).
        model_mixin / block_mixin: the hook subclasses' mixins for the model and each of its blocks (a mapping
            timm block class -> mixin for a model whose blocks come in several classes).
        attentions: timm attention class -> its mixin (which adds only the projection step).
        own_pe: ``(attribute, value)`` pairs: the model attributes holding timm's own PE (or saying it is there;
            a dotted path reaches into a submodule, ``"embeds.pos_embed"``) and the value each is set to when the
            vispos PE replaces it.
    """

    label: str
    model_cls: type
    model_mixin: type
    block_mixin: Union[type, Mapping[type, type]]
    attentions: Mapping[type, type]
    own_pe: Tuple[Tuple[str, object], ...]

    def block_mixin_for(self, block: nn.Module) -> Optional[type]:
        """The block mixin for ``block`` (``None``: a block class this host does not serve)."""
        if isinstance(self.block_mixin, type):
            return self.block_mixin
        return next((m for cls, m in self.block_mixin.items() if type(block) is cls), None)


HOSTS: Tuple[TimmHost, ...] = (
    TimmHost("VisionTransformer (vit_*, deit_*)", VisionTransformer, _VitHooks, _VitBlockHooks,
             {TimmAttention: _VitAttentionHooks}, (("pos_embed", None),)),
    TimmHost("Eva (eva02_*, vit_*_rope_*)", Eva, _EvaHooks, _EvaBlockHooks,
             {EvaAttention: _EvaAttentionHooks, AttentionRope: _RopeAttentionHooks},
             (("pos_embed", None), ("rope", None), ("rope_mixed", False))),  # timm Eva's own attributes
)

#: Model classes vispos can host, and the attention classes each must use.
SUPPORTED = {h.label: (h.model_cls, tuple(h.attentions)) for h in HOSTS}


def add_host(host: TimmHost) -> None:
    """Append ``host`` to :data:`HOSTS` and :data:`SUPPORTED` (the NaFlexViT host registers itself so, from
    :mod:`vispos.integrations.timm.naflex`)."""
    global HOSTS
    if any(h.model_cls is host.model_cls for h in HOSTS):
        return
    HOSTS = HOSTS + (host,)
    SUPPORTED[host.label] = (host.model_cls, tuple(host.attentions))


def find_host(model: nn.Module) -> TimmHost:
    """The :class:`TimmHost` entry of ``model``; ``TypeError`` naming the supported classes otherwise."""
    for host in HOSTS:
        if isinstance(model, host.model_cls):
            return host
    raise TypeError(f"vispos cannot host a PE in {type(model).__name__}; supported timm model classes: "
                    f"{', '.join(SUPPORTED)}")
