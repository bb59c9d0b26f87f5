"""timm integration: any timm ViT / EVA with any vispos PE, pretrained checkpoints included.

Three ways in:

* :func:`create_model` -- ``vispos.create_model("vit_small_patch16_224", pe="rope_axial")`` builds the timm model and
  installs the PE.
* ``timm.create_model("vispos_<timm name>", pe=...)`` -- after ``import vispos`` every entrypoint of timm's
  ``vision_transformer``, ``deit`` and ``eva`` modules has a ``vispos_`` twin (``timm.list_models(module="vispos")``)
  that takes ``pe=`` / ``pe_kwargs=`` and goes through timm's own pretrained-config machinery (tags such as
  ``vispos_vit_base_patch16_224.augreg_in21k``, ``pretrained_cfg_overlay=dict(file=...)``).
* :func:`install_pe` -- put a PE into a timm model you already have (e.g. one loaded with pretrained weights); the
  timm PE is converted where a conversion exists.

How the PE reaches the model (no state-dict key of timm changes; the PE's parameters appear under ``pe.``):

* the model's class is swapped for a subclass whose ``_pos_embed`` builds the :class:`~vispos.grid.GridLayout`
  from the patch grid (``(H, W)`` from the NHWC patch embedding with ``dynamic_img_size=True``, else
  ``patch_embed.grid_size``) after concatenating the prefix tokens (class, distillation, registers), applies
  the PE's ``token`` hook and ``prepare`` step;
* each attention's class is swapped for a subclass that runs the ``attn_input``, ``bias``, ``qk`` and ``value``
  hooks around SDPA (:func:`vispos.attention.attend`), with the same projections as timm's;
* each block's class is swapped for a subclass that runs the ``block`` hook after the block.

The layout travels with the call: each forward hands a :class:`PECall` (the model's PE and the layout of these
tokens) to every block and attention as an argument -- EVA's ``rope=`` (timm's own EVA loops pass it on, under
gradient checkpointing too), a ViT's ``attn_mask=`` (the ViT forwards run the block loop themselves) -- so a
checkpointed block is recomputed with its own forward's layout, and threads or ``nn.DataParallel`` replicas share
no per-forward state. The PE is registered once, at ``model.pe``. timm's own PE is removed (``pos_embed`` / EVA
``rope`` become ``None``): the vispos PE is the model's only PE. A learned APE is kept by asking for it, e.g.
``pe=["ape", "rope_axial"]``.

Conversion (:func:`install_pe` with ``convert=True``, implied by ``pretrained=True`` / ``checkpoint_path=``):
``pos_embed`` goes to the PE's ``ape`` member (prefix rows added as zeros or dropped to match ``embed_prefix``),
EVA's RoPE-Mixed ``rope.freqs`` to ``rope_mixed`` (``ours = timm.flip(0)``), EVA's axial RoPE settings (base,
pairing, reference grid) become the defaults of ``rope_axial`` / ``vope``, and new PE parameters default to the
identity where the family offers it (``peg`` ``zero_init=True``). One ``INFO`` log line per converted, dropped or
new key (logger ``vispos.integrations.timm``).
"""
from __future__ import annotations

import inspect
import logging
import math
import sys
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers.attention import AttentionRope
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from timm.models.eva import Eva, EvaAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..attention import attend
from ..grid import GridLayout
from ..pe.base import PositionalEmbedding
from ..registry import build_pe, get_pe_info

__all__ = [
    "ENTRYPOINT_PREFIX",
    "SUPPORTED",
    "create_model",
    "install_pe",
    "load_timm_checkpoint",
    "register_timm_entrypoints",
    "timm_entrypoint_name",
]

_logger = logging.getLogger(__name__)

#: Prefix of the timm entrypoints vispos registers: ``vispos_<timm name>``.
ENTRYPOINT_PREFIX = "vispos_"
#: timm modules whose entrypoints get a ``vispos_`` twin.
SUPPORTED_TIMM_MODULES = ("vision_transformer", "deit", "eva")
#: Model classes vispos can host, and the attention class each must use.
SUPPORTED = {"VisionTransformer (vit_*, deit_*)": (VisionTransformer, (TimmAttention,)),
             "Eva (eva02_*, vit_*_rope_*)": (Eva, (EvaAttention, AttentionRope))}


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
        out = self.norm(out.transpose(1, 2).reshape(B, N, -1))
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
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            k = self.k_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            v = self.v_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
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


_ATTN_MIXINS = {TimmAttention: _VitAttentionHooks, EvaAttention: _EvaAttentionHooks, AttentionRope: _RopeAttentionHooks}


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
    proj = getattr(pe_, "proj", None)
    cin = getattr(proj, "in_channels", None)
    if cin is not None and x.shape[1] != cin:
        raise ValueError(f"images have {x.shape[1]} channels, the model expects {cin} (input shape {tuple(x.shape)})")
    H, W = x.shape[-2:]
    ph, pw = pe_.patch_size
    if not getattr(pe_, "dynamic_img_pad", False) and (H % ph or W % pw):
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}; resize or crop it, or "
                         f"build the model with dynamic_img_pad=True")
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
        out = set(super().no_weight_decay())
        for name, m in self.pe.named_modules(prefix="pe"):
            if hasattr(m, "no_weight_decay") and isinstance(m, PositionalEmbedding):
                out |= {f"{name}.{n}" for n in m.no_weight_decay()}
        out |= {n for n, _ in self.pe.named_parameters(prefix="pe") if n.endswith("pos_embed")}
        return out

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        out = dict(super().group_matcher(coarse))
        out["stem"] = out["stem"] + r"|^pe\."
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
            inter = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
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


# ---- building the PE ---------------------------------------------------------------------------------------------
def _family(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, Eva):
        return "eva"
    raise TypeError(f"vispos cannot host a PE in {type(model).__name__}; supported timm model classes: "
                    f"{', '.join(SUPPORTED)}")


def _check_model(model: nn.Module, family: str) -> None:
    if isinstance(model, _ModelHooks):
        raise ValueError("this model already carries a vispos PE (model.pe); build a fresh timm model instead")
    if hasattr(model, "pe"):
        raise ValueError(f"{type(model).__name__} already has an attribute 'pe'; vispos installs its PE there")
    attn_cls = SUPPORTED["VisionTransformer (vit_*, deit_*)" if family == "vit" else "Eva (eva02_*, vit_*_rope_*)"][1]
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or type(attn) not in attn_cls:
            raise ValueError(f"block {i} ({type(blk).__name__}) has attention {type(attn).__name__}; vispos hooks "
                             f"need timm's {' or '.join(c.__name__ for c in attn_cls)} in every block of a "
                             f"{type(model).__name__}")
    pe_mod = model.patch_embed
    if not hasattr(pe_mod, "grid_size"):
        raise ValueError(f"patch embedding {type(pe_mod).__name__} has no grid_size; vispos needs a patch grid")
    if getattr(pe_mod, "flatten", True) is False and not model.dynamic_img_size:
        raise ValueError("patch embedding does not flatten and dynamic_img_size is off: unsupported layout")
    if getattr(model, "attn_pool", None) is not None and getattr(model, "pool_include_prefix", False):
        _logger.info("attention pooling sees raw tokens; the PE acts inside the blocks only")
    heads = model.blocks[0].attn.num_heads
    hd = model.blocks[0].attn.head_dim
    if hd * heads != model.embed_dim:
        raise ValueError(f"attention width {heads}x{hd} differs from embed_dim {model.embed_dim}; "
                         f"vispos PEs need head_dim = embed_dim / num_heads")


def _patch_drop_active(model) -> bool:
    pd = getattr(model, "patch_drop", None)
    return pd is not None and not isinstance(pd, nn.Identity) and getattr(pd, "prob", 0.0) > 0


def _accepts(name: str, option: str) -> bool:
    """Whether the registered builder of ``name`` takes ``option`` (named, or through ``**kwargs``)."""
    params = inspect.signature(get_pe_info(name).builder).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _timm_rope_defaults(model) -> Tuple[Dict[str, Any], str]:
    """rope_axial options reproducing an EVA model's own axial RoPE, and a description (empty dict if none)."""
    rope = getattr(model, "rope", None)
    if rope is None or type(rope).__name__ != "RotaryEmbeddingCat":
        return {}, ""
    plain = (not rope.in_pixels and float(getattr(rope, "grid_offset", 0.0)) == 0.0
             and getattr(rope, "grid_indexing", "ij") == "ij" and not getattr(rope, "aug_active", False)
             and getattr(rope, "grid_type", "index") == "index")
    if not plain:
        return {}, f"timm {type(rope).__name__} with pixel / offset / augmented coordinates"
    opts = dict(base=float(rope.temperature), pairing="half" if rope.rotate_half else "interleaved")
    if rope.ref_feat_shape is not None:
        opts.update(coords="interpolated", ref_shape=tuple(int(s) for s in rope.ref_feat_shape))
    else:
        opts.update(coords="index")
    return opts, "timm RotaryEmbeddingCat"


def _pe_options(names: List[str], pe_kwargs: Optional[dict], model, convert: bool) -> Tuple[Union[str, list], dict]:
    """Options for :func:`vispos.build_pe` with the host's defaults filled in where the user gave none."""
    single = len(names) == 1
    per = {names[0]: dict(pe_kwargs or {})} if single else {n: dict((pe_kwargs or {}).get(n) or {}) for n in names}
    if not single and pe_kwargs:
        extra = [k for k in pe_kwargs if k not in names]
        if extra:
            raise TypeError(f"pe_kwargs for a PE list must be keyed by member name {names}, got {extra}")
    if "ape" in per and _accepts("ape", "embed_prefix"):
        if model.num_prefix_tokens:
            per["ape"].setdefault("embed_prefix", not model.no_embed_class)
        per["ape"].setdefault("antialias", True)  # timm resamples pos_embed with antialias at other grids
    if convert and "peg" in per and _accepts("peg", "zero_init"):
        per["peg"].setdefault("zero_init", True)
    rope_opts, _ = _timm_rope_defaults(model)
    for n in ("rope_axial", "vope"):
        if n in per and rope_opts:
            for k, v in rope_opts.items():
                if n == "vope" and k in ("coords", "ref_shape"):
                    continue
                per[n].setdefault(k, v)
    if single:
        return names[0], per[names[0]]
    return names, {n: o for n, o in per.items() if o}


def _find_named(pe: nn.Module, name: str) -> List[Tuple[str, nn.Module]]:
    return [(p, m) for p, m in pe.named_modules(prefix="pe")
            if isinstance(m, PositionalEmbedding) and getattr(m, "name", None) == name]


@torch.no_grad()
def _convert_state(model, pe: nn.Module, family: str, convert: bool) -> set:
    """Move timm's PE state into ``pe``; returns the set of ``pe.*`` keys that were filled from timm."""
    filled = set()
    log = _logger.info if convert else _logger.debug
    pos = getattr(model, "pos_embed", None)
    if pos is not None:
        apes = _find_named(pe, "ape")
        if not apes:
            if convert:
                _logger.warning("pos_embed %s dropped: PE %r has no 'ape' member (keep it with pe=['ape', ...]); "
                                "outputs change", tuple(pos.shape), pe.name)
        else:
            path, ape = apes[0]
            dst = ape.pos_embed
            n_patch = math.prod(model.patch_embed.grid_size)
            src_prefix = pos.shape[1] - n_patch
            dst_prefix = dst.shape[1] - n_patch
            if src_prefix not in (0, model.num_prefix_tokens) or dst_prefix not in (0, model.num_prefix_tokens) \
                    or dst.shape[2] != pos.shape[2]:
                raise ValueError(f"cannot map timm pos_embed {tuple(pos.shape)} onto {path}.pos_embed "
                                 f"{tuple(dst.shape)} for grid {tuple(model.patch_embed.grid_size)} with "
                                 f"{model.num_prefix_tokens} prefix tokens")
            dst[:, dst_prefix:].copy_(pos[:, src_prefix:].to(dst.dtype))
            what = "copied"
            if dst_prefix and src_prefix:
                dst[:, :dst_prefix].copy_(pos[:, :src_prefix].to(dst.dtype))
            elif dst_prefix:
                dst[:, :dst_prefix].zero_()
                what = "copied, prefix rows set to zero (timm no_embed_class: same output)"
            elif src_prefix:
                what = f"copied, {src_prefix} prefix rows dropped (embed_prefix=False: outputs change)"
            filled.add(f"{path}.pos_embed")
            log("pos_embed %s -> %s.pos_embed %s (%s)", tuple(pos.shape), path, tuple(dst.shape), what)
    rope = getattr(model, "rope", None) if family == "eva" else None
    if rope is not None:
        if hasattr(rope, "freqs") and isinstance(rope.freqs, nn.Parameter):
            mixed = _find_named(pe, "rope_mixed")
            if mixed and tuple(mixed[0][1].freqs.shape) == tuple(rope.freqs.shape):
                path, m = mixed[0]
                m.freqs.copy_(rope.freqs.flip(0).to(m.freqs.dtype))
                m.clear_cache()
                filled.add(f"{path}.freqs")
                log("rope.freqs %s -> %s.freqs (axis order flipped: timm (x, y) -> vispos (h, w))",
                    tuple(rope.freqs.shape), path)
            elif convert:
                _logger.warning("rope.freqs %s dropped: PE %r has no matching 'rope_mixed' member; outputs change",
                                tuple(rope.freqs.shape), pe.name)
        else:
            opts, desc = _timm_rope_defaults(model)
            axial = _find_named(pe, "rope_axial") + _find_named(pe, "vope")
            if axial and opts:
                log("rope (%s) -> %s (settings: %s; no parameters)", desc, axial[0][0], opts)
            elif convert:
                _logger.warning("rope (%s) replaced by PE %r with its own settings; outputs change",
                                type(rope).__name__, pe.name)
    if convert:
        owners = {path: m for path, m in pe.named_modules(prefix="pe") if isinstance(m, PositionalEmbedding)}
        for name, p in pe.named_parameters(prefix="pe"):
            if name not in filled:
                parts = name.split(".")[:-1]
                while ".".join(parts) not in owners:
                    parts.pop()
                owner = owners[".".join(parts)]
                log("new %s %s (initialised by %s %r)", name, tuple(p.shape), type(owner).__name__, owner.name)
    return filled


def install_pe(
    model: nn.Module,
    pe: Union[str, Sequence[str], PositionalEmbedding],
    pe_kwargs: Optional[dict] = None,
    convert: bool = True,
) -> nn.Module:
    """Install a vispos PE into a timm ``VisionTransformer`` / ``Eva`` in place; returns the model.

    Args:
        model: a timm model (weights already loaded, if any).
        pe: a registry name (:func:`vispos.list_pes`), a list of names (``["ape", "rope_axial"]``) or a built PE.
        pe_kwargs: the PE's options (for a list: one dict per member name). Defaults from the host: ``ape``'s
            ``embed_prefix`` follows the model's ``no_embed_class`` and it resamples with ``antialias=True`` (as
            timm does at other grids); ``rope_axial`` / ``vope`` on an EVA model take
            its RoPE base, pairing and reference grid; with ``convert``, ``peg`` starts as the identity.
        convert: move timm's PE into the vispos PE (see the module docstring) and log every converted / new key.

    The model's ``pos_embed`` (and EVA ``rope``) are removed; other state-dict keys are unchanged; the PE appears
    under ``pe.``. Raises ``TypeError`` for unsupported models, ``ValueError`` for unsupported configurations.
    """
    family = _family(model)
    _check_model(model, family)
    if not isinstance(pe, (str, list, tuple, PositionalEmbedding)):
        raise TypeError(f"pe must be a PE name, a list of names or a vispos PositionalEmbedding, got "
                        f"{type(pe).__name__}")
    if pe_kwargs is not None and not isinstance(pe_kwargs, dict):
        raise TypeError(f"pe_kwargs must be a dict or None, got {type(pe_kwargs).__name__}")
    depth = len(model.blocks)
    ref = next(model.parameters())
    if isinstance(pe, PositionalEmbedding):
        if pe_kwargs:
            raise ValueError("pe_kwargs apply to PE names; a built PE module takes no pe_kwargs")
        module = pe
    else:
        names = [pe] if isinstance(pe, str) else list(pe)
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"pe list must hold PE names (strings), got {pe!r}")
        name_arg, options = _pe_options(names, pe_kwargs, model, convert)
        module = build_pe(name_arg, dim=model.embed_dim, num_heads=model.blocks[0].attn.num_heads, depth=depth,
                          grid=tuple(model.patch_embed.grid_size), num_prefix=model.num_prefix_tokens,
                          device=ref.device, dtype=ref.dtype, **options)
    if 2 not in module.ndims:
        raise ValueError(f"PE {module.name!r} supports {module.ndims}-D grids; timm image models need 2-D")
    if _patch_drop_active(model) and set(module.hooks) - {"token"}:
        raise ValueError(f"patch dropout (patch_drop_rate > 0) removes tokens, which breaks the grid layout PE "
                         f"{module.name!r} needs for its {sorted(set(module.hooks) - {'token'})} hooks; use "
                         f"patch_drop_rate=0 or a token-level PE")
    if "block" in module.hooks:
        bad = sorted(i for i in module.block_indices if not 0 <= i < depth)
        if bad:
            raise ValueError(f"PE {module.name!r} acts after blocks {bad}, but the model has {depth} blocks")
    _convert_state(model, module, family, convert)

    # remove timm's PE, install ours
    if getattr(model, "pos_embed", None) is not None:
        model.pos_embed = None
    if family == "eva":
        model.rope = None
        model.rope_mixed = False
    model.add_module("pe", module)
    block_mixin = _VitBlockHooks if family == "vit" else _EvaBlockHooks
    for i, blk in enumerate(model.blocks):
        for m, mixin in ((blk, block_mixin), (blk.attn, _ATTN_MIXINS[type(blk.attn)])):
            m.__class__ = _subclass(mixin, type(m))
            m._vispos_index = i
    model.__class__ = _subclass(_VitHooks if family == "vit" else _EvaHooks, type(model))
    model._register_load_state_dict_pre_hook(_state_dict_pre_hook, with_module=True)
    _logger.debug("installed PE %r (hooks %s) in %s", module.name, sorted(module.hooks), type(model).__name__)
    return model


@torch.no_grad()
def _state_dict_pre_hook(model, sd, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Make ``model.load_state_dict`` accept what users load into a vispos timm model (so timm's own
    ``checkpoint_path=`` / ``load_checkpoint`` work too):

    * a **timm-format** checkpoint: ``pos_embed`` goes to the ``ape`` member (resampled from the checkpoint's square
      grid, prefix rows mapped as in conversion), EVA ``rope.freqs`` to ``rope_mixed`` (axis order flipped), and PE
      parameters the checkpoint cannot have keep their current (identity / fresh) values;
    * a **vispos** checkpoint from another grid: ``*.pos_embed`` tables are resampled and decomposed rel-pos tables
      resized to this model's grid.
    One log line per converted or kept key. Everything else is left to the normal (strict) loading.
    """
    from ..pe.absolute import resample_abs_pe
    from ..pe.relative import resize_rel_pos

    pe = model.pe
    own = {f"{prefix}{n}": p for n, p in pe.named_parameters(prefix="pe")}
    grid = tuple(model.patch_embed.grid_size)
    n_patch = math.prod(grid)
    timm_format = f"{prefix}pos_embed" in sd or f"{prefix}rope.freqs" in sd
    pos = sd.pop(f"{prefix}pos_embed", None)
    if pos is not None:
        apes = _find_named(pe, "ape")
        if not apes:
            _logger.warning("checkpoint pos_embed %s dropped: PE %r has no 'ape' member; outputs change",
                            tuple(pos.shape), pe.name)
        else:
            path, ape = apes[0]
            src_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            if pos.shape[1] - src_prefix != n_patch:
                old = _square_grid(pos.shape[1] - src_prefix, f"checkpoint pos_embed {tuple(pos.shape)}")
                pos = resample_abs_pe(pos, grid, old, src_prefix, "bicubic", True)
                _logger.info("checkpoint pos_embed resampled from grid %s to %s", old, grid)
            dst = torch.zeros_like(ape.pos_embed)
            dst_prefix = dst.shape[1] - n_patch
            dst[:, dst_prefix:] = pos[:, src_prefix:].to(dst.dtype)
            if dst_prefix and src_prefix:
                dst[:, :dst_prefix] = pos[:, :src_prefix].to(dst.dtype)
            sd[f"{prefix}{path}.pos_embed"] = dst
            _logger.info("checkpoint pos_embed %s -> %s.pos_embed %s", tuple(pos.shape), path, tuple(dst.shape))
    freqs = sd.pop(f"{prefix}rope.freqs", None)
    if freqs is not None:
        mixed = _find_named(pe, "rope_mixed")
        if mixed and tuple(mixed[0][1].freqs.shape) == tuple(freqs.shape):
            sd[f"{prefix}{mixed[0][0]}.freqs"] = freqs.flip(0)
            mixed[0][1].clear_cache()
            _logger.info("checkpoint rope.freqs -> %s.freqs (axis order flipped)", mixed[0][0])
        else:
            _logger.warning("checkpoint rope.freqs %s dropped: no matching 'rope_mixed' member", tuple(freqs.shape))
    owners = {f"{prefix}{path}": m for path, m in pe.named_modules(prefix="pe") if isinstance(m, PositionalEmbedding)}
    for key, p in own.items():
        if key not in sd:
            if timm_format:
                parts = key.split(".")[:-1]
                while ".".join(parts) not in owners:
                    parts.pop()
                if owners[".".join(parts)].name == "peg":  # as conversion does: PEG starts as the identity
                    sd[key] = torch.zeros_like(p)
                    _logger.info("%s %s not in the timm checkpoint: zero (PEG is the identity)", key, tuple(p.shape))
                else:
                    sd[key] = p.detach().clone()
                    _logger.info("%s %s not in the timm checkpoint: kept as initialised", key, tuple(p.shape))
            continue
        t = sd[key]
        if t.shape == p.shape:
            continue
        if key.endswith("pos_embed") and t.dim() == 3 and t.shape[2] == p.shape[2]:
            n_pre = p.shape[1] - n_patch
            old = _square_grid(t.shape[1] - n_pre, f"checkpoint {key} {tuple(t.shape)}")
            sd[key] = resample_abs_pe(t, grid, old, n_pre, "bicubic", True)
            _logger.info("checkpoint %s resampled from grid %s to %s", key, old, grid)
        elif "rel_pos_" in key and t.dim() == 2 and t.shape[1] == p.shape[1]:
            sd[key] = resize_rel_pos(t, p.shape[0])
            _logger.info("checkpoint %s resized from %d to %d rows", key, t.shape[0], p.shape[0])


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _square_grid(n: int, what: str) -> Tuple[int, int]:
    s = int(round(math.sqrt(n)))
    if s * s != n:
        raise ValueError(f"{what} has {n} patch rows, not a square grid; pass checkpoint_grid=(H, W)")
    return s, s


def load_timm_checkpoint(model: nn.Module, checkpoint: Union[str, Dict[str, torch.Tensor]], strict: bool = True,
                         checkpoint_grid: Optional[Sequence[int]] = None, where: Optional[str] = None) -> None:
    """Load a timm-format checkpoint (a path or a state dict) into a plain timm model; ``pos_embed`` is resampled
    to the model's grid.

    ``pos_embed`` rows are ``prefix + H*W`` (prefix = 0 with ``no_embed_class``); the checkpoint grid is
    ``checkpoint_grid`` or, if omitted, the square grid of its patch rows. Resampling uses
    :func:`vispos.pe.absolute.resample_abs_pe` (bicubic, antialiased, rectangular, prefix rows kept).
    Raises ``RuntimeError`` listing missing / unexpected keys when ``strict``.
    """
    from timm.models import load_state_dict

    where = where or ("<state dict>" if isinstance(checkpoint, dict) else str(checkpoint))
    sd = dict(checkpoint) if isinstance(checkpoint, dict) else load_state_dict(where, weights_only=True)
    pos = sd.get("pos_embed")
    if pos is not None and getattr(model, "pos_embed", None) is not None and pos.shape != model.pos_embed.shape:
        from ..pe.absolute import resample_abs_pe

        n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        new_grid = tuple(model.patch_embed.grid_size)
        old_grid = tuple(checkpoint_grid) if checkpoint_grid is not None else _square_grid(
            pos.shape[1] - n_prefix, f"checkpoint pos_embed {tuple(pos.shape)}")
        sd["pos_embed"] = resample_abs_pe(pos, new_grid, old_grid, n_prefix, "bicubic", True)
        _logger.info("pos_embed %s resampled from grid %s to %s (%d prefix rows kept)", tuple(pos.shape), old_grid,
                     new_grid, n_prefix)
    _load_checked(model, sd, strict, where)


def _load_checked(model: nn.Module, sd: dict, strict: bool, where) -> None:
    res = model.load_state_dict(sd, strict=False)
    if strict and (res.missing_keys or res.unexpected_keys):
        raise RuntimeError(f"checkpoint {where} does not match {type(model).__name__}: missing keys "
                           f"{res.missing_keys}, unexpected keys {res.unexpected_keys} (strict=False to ignore)")
    if res.missing_keys or res.unexpected_keys:
        _logger.warning("checkpoint %s: missing keys %s, unexpected keys %s", where, res.missing_keys,
                        res.unexpected_keys)


def create_model(
    model_name: str,
    pe: Union[str, Sequence[str], PositionalEmbedding] = None,
    pe_kwargs: Optional[dict] = None,
    *,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    checkpoint_grid: Optional[Sequence[int]] = None,
    strict: bool = True,
    **timm_kwargs,
) -> nn.Module:
    """A timm ViT / EVA whose positional embedding is a vispos PE.

    Args:
        model_name: a timm model name (``"vit_small_patch16_224"``, ``"deit_tiny_distilled_patch16_224"``,
            ``"eva02_tiny_patch14_224"``, ...), optionally with a pretrained tag.
        pe: a PE name, a list of names (``["ape", "rope_axial"]``, ``["rope_mixed", "peg"]``, ``["ape", "lape"]``) or
            a built :class:`~vispos.pe.base.PositionalEmbedding`.
        pe_kwargs: the PE's options (for a list: ``{member_name: {...}}``).
        pretrained: timm's pretrained weights (``pretrained_cfg_overlay=dict(file=...)`` for a local file), loaded
            by timm into the plain model, then converted (:func:`install_pe`).
        checkpoint_path: a checkpoint loaded strictly after the model is built. A timm-format checkpoint (with
            ``pos_embed`` / no ``pe.`` keys) is loaded into the plain model (``pos_embed`` resampled to the model
            grid, see :func:`load_timm_checkpoint`) and converted; a vispos checkpoint (``pe.`` keys, e.g. a saved
            ``model.state_dict()``) is loaded into the final model.
        checkpoint_grid: the patch grid of a timm checkpoint's ``pos_embed`` when it is not square.
        strict: raise on missing / unexpected keys (default).
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``dynamic_img_size``, ``depth``, ...).
    """
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a timm model name (str), got {type(model_name).__name__}")
    if pe is None:
        raise TypeError("create_model needs pe= (a PE name such as 'rope_axial', a list of names, or a PE module); "
                        "see vispos.list_pes()")
    if not isinstance(pe, (str, list, tuple, PositionalEmbedding)):
        raise TypeError(f"pe must be a PE name, a list of names or a vispos PositionalEmbedding, got "
                        f"{type(pe).__name__}")
    if pe_kwargs is not None and not isinstance(pe_kwargs, dict):
        raise TypeError(f"pe_kwargs must be a dict or None, got {type(pe_kwargs).__name__}")
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, bytes)) and \
            not hasattr(checkpoint_path, "__fspath__"):
        raise TypeError(f"checkpoint_path must be a path, got {type(checkpoint_path).__name__}")
    base = timm.models.get_arch_name(model_name)
    if base.startswith(ENTRYPOINT_PREFIX):
        raise ValueError(f"give the timm name without the {ENTRYPOINT_PREFIX!r} prefix, got {model_name!r}")
    model = timm.create_model(model_name, pretrained=pretrained, **timm_kwargs)
    _check_model(model, _family(model))
    vispos_ckpt = None
    if checkpoint_path is not None:
        from timm.models import load_state_dict

        sd = load_state_dict(str(checkpoint_path), weights_only=True)
        plain_keys = model.state_dict().keys()
        # a vispos checkpoint has pe.* keys, or (a parameter-free PE such as rope_axial) lacks timm's pos_embed
        if any(k.startswith("pe.") for k in sd) or ("pos_embed" in plain_keys and "pos_embed" not in sd):
            vispos_ckpt = sd
        else:
            _logger.info("timm checkpoint %s: loading into the plain %s, then converting its PE", checkpoint_path,
                         type(model).__name__)
            load_timm_checkpoint(model, sd, strict=strict, checkpoint_grid=checkpoint_grid,
                                 where=str(checkpoint_path))
    convert = bool(pretrained) or (checkpoint_path is not None and vispos_ckpt is None)
    install_pe(model, pe, pe_kwargs, convert=convert)
    if vispos_ckpt is not None:
        _load_checked(model, vispos_ckpt, strict, checkpoint_path)
    return model


# ---- timm entrypoints --------------------------------------------------------------------------------------------
_ENTRY_MODULE = f"{__name__}.vispos"  # timm files entrypoints under the last part: timm.list_models(module="vispos")


def timm_entrypoint_name(model_name: str) -> str:
    """The vispos timm entrypoint of a timm model: ``vit_small_patch16_224`` -> ``vispos_vit_small_patch16_224``."""
    return ENTRYPOINT_PREFIX + model_name


def _make_entrypoint(base: str):
    def entrypoint(pretrained: bool = False, pe=None, pe_kwargs=None, pretrained_cfg=None, **kwargs):
        if pe is None:
            raise TypeError(f"{ENTRYPOINT_PREFIX}{base} needs pe= (e.g. timm.create_model("
                            f"'{ENTRYPOINT_PREFIX}{base}', pe='rope_axial')); see vispos.list_pes()")
        name = base
        if isinstance(pretrained_cfg, str) and pretrained_cfg:
            name, pretrained_cfg = f"{base}.{pretrained_cfg}", None
        if pretrained_cfg is not None:
            kwargs["pretrained_cfg"] = pretrained_cfg
        return create_model(name, pe=pe, pe_kwargs=pe_kwargs, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = timm_entrypoint_name(base)
    entrypoint.__module__ = _ENTRY_MODULE
    entrypoint.__doc__ = f"timm {base} with a vispos PE: ``pe=`` (name / list / module), ``pe_kwargs=``."
    return entrypoint


def register_timm_entrypoints() -> List[str]:
    """Register ``vispos_<name>`` for every timm entrypoint of :data:`SUPPORTED_TIMM_MODULES` (idempotent).

    Returns the registered names. Called on ``import vispos``.
    """
    from timm.models import is_model, list_models, register_model

    mod = sys.modules.get(_ENTRY_MODULE)
    if mod is None:
        mod = types.ModuleType(_ENTRY_MODULE, "vispos twins of timm ViT / DeiT / EVA entrypoints")
        mod.__all__ = []
        sys.modules[_ENTRY_MODULE] = mod
    out = []
    for module in SUPPORTED_TIMM_MODULES:
        for base in list_models(module=module):
            name = timm_entrypoint_name(base)
            if not is_model(name):
                fn = _make_entrypoint(base)
                setattr(mod, name, fn)
                register_model(fn)
            out.append(name)
    return out


register_timm_entrypoints()
