"""Building vispos timm models: :func:`install_pe`, :func:`create_model` and the ``vispos_<timm name>``
entrypoints (registered on import)."""
from __future__ import annotations

import logging
import sys
import types
from typing import List, Optional, Sequence, Union

import timm
from torch import nn

from ...pe.base import PositionalEmbedding
from ...registry import build_pe
from .convert import (
    _convert_state,
    _load_checked,
    _pe_options,
    _state_dict_pre_hook,
    _timm_pe_keys,
    load_timm_checkpoint,
    model_grid,
    warn_unreproduced,
)
from .hooks import TimmHost, _ModelHooks, _subclass, find_host
from .naflex import NaFlexVit, adopt_resampling, check_naflex

__all__ = ["ENTRYPOINT_PREFIX", "SUPPORTED_TIMM_MODULES", "create_model", "install_pe", "register_timm_entrypoints",
           "timm_entrypoint_name"]

_logger = logging.getLogger(__name__)

#: Prefix of the timm entrypoints vispos registers: ``vispos_<timm name>``.
ENTRYPOINT_PREFIX = "vispos_"
#: timm modules whose entrypoints get a ``vispos_`` twin.
SUPPORTED_TIMM_MODULES = ("vision_transformer", "deit", "eva", "naflexvit")


def _check_model(model: nn.Module, host: TimmHost) -> None:
    if isinstance(model, _ModelHooks):
        raise ValueError("this model already carries a vispos PE (model.pe); build a fresh timm model instead")
    if hasattr(model, "pe"):
        raise ValueError(f"{type(model).__name__} already has an attribute 'pe'; vispos installs its PE there")
    attn_cls = tuple(host.attentions)
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or type(attn) not in attn_cls:
            raise ValueError(f"block {i} ({type(blk).__name__}) has attention {type(attn).__name__}; vispos hooks "
                             f"need timm's {' or '.join(c.__name__ for c in attn_cls)} in every block of a "
                             f"{type(model).__name__}")
        if host.block_mixin_for(blk) is None:
            raise ValueError(f"block {i} is a {type(blk).__name__}; vispos hooks a {type(model).__name__}'s blocks "
                             f"of class {' or '.join(c.__name__ for c in host.block_mixin)} only")
    if isinstance(model, NaFlexVit):
        check_naflex(model)
    else:
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


def install_pe(
    model: nn.Module,
    pe: Union[str, Sequence[str], PositionalEmbedding],
    pe_kwargs: Optional[dict] = None,
    convert: bool = True,
) -> nn.Module:
    """Install a vispos PE into a timm ``VisionTransformer`` / ``Eva`` / ``NaFlexVit`` in place; returns the model.

    Args:
        model: a timm model (weights already loaded, if any).
        pe: a registry name (:func:`vispos.list_pes`), a list of names (``["ape", "rope_axial"]``) or a built PE.
        pe_kwargs: the PE's options (for a list: one dict per member name). Defaults from the host: ``ape``'s
            ``embed_prefix`` follows the model's ``no_embed_class`` and it resamples with ``antialias=True`` (as
            timm does at other grids); ``rope_axial`` / ``vope`` on an EVA model take
            its RoPE base, pairing and reference grid; with ``convert``, ``peg`` starts as the identity.
        convert: move timm's PE into the vispos PE (see the module docstring) and log every converted / new key.

    The model's ``pos_embed`` (and EVA / NaFlexViT ``rope``; NaFlexViT ``embeds.pos_embed``) are removed; other
    state-dict keys are unchanged; the PE appears under ``pe.``. Raises ``TypeError`` for unsupported models, ``ValueError`` for unsupported configurations.
    """
    host = find_host(model)
    _check_model(model, host)
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
        problems = []  # a PE built by the caller is the caller's choice
    else:
        names = [pe] if isinstance(pe, str) else list(pe)
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"pe list must hold PE names (strings), got {pe!r}")
        name_arg, options, problems = _pe_options(names, pe_kwargs, model, convert)
        module = build_pe(name_arg, dim=model.embed_dim, num_heads=model.blocks[0].attn.num_heads, depth=depth,
                          grid=model_grid(model), num_prefix=model.num_prefix_tokens,
                          device=ref.device, dtype=ref.dtype, **options)
        if isinstance(model, NaFlexVit):
            adopt_resampling(model, module)
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
    model._vispos_unreproduced = tuple(problems)
    rope = getattr(model, "rope", None)
    if isinstance(rope, nn.Module):  # the row order of a timm checkpoint's rope.freqs, for the load pre-hook
        model._vispos_timm_rope_indexing = getattr(rope, "grid_indexing", "xy")
    if convert:
        warn_unreproduced(model, "conversion")
    _convert_state(model, module, convert)

    # remove timm's PE, install ours
    for path, value in host.own_pe:
        *parents, attr = path.split(".")
        owner = model
        for p in parents:
            owner = getattr(owner, p, None)
        if owner is not None and hasattr(owner, attr):
            setattr(owner, attr, value)
    model.add_module("pe", module)
    for i, blk in enumerate(model.blocks):
        for m, mixin in ((blk, host.block_mixin_for(blk)), (blk.attn, host.attentions[type(blk.attn)])):
            m.__class__ = _subclass(mixin, type(m))
            m._vispos_index = i
    model.__class__ = _subclass(host.model_mixin, type(model))
    model._register_load_state_dict_pre_hook(_state_dict_pre_hook, with_module=True)
    _logger.debug("installed PE %r (hooks %s) in %s", module.name, sorted(module.hooks), type(model).__name__)
    return model


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
    # features_only: timm wraps the built model in its feature getter; vispos installs the PE into the model first,
    # then wraps it the same way (timm's ViT / EVA default out_indices=3)
    features_only = bool(timm_kwargs.pop("features_only", False))
    out_indices = timm_kwargs.pop("out_indices", 3) if features_only else None
    vispos_weights = bool(pretrained) and _is_vispos_cfg(timm_kwargs.get("pretrained_cfg"))
    overlay = timm_kwargs.get("pretrained_cfg_overlay")
    if pretrained and not vispos_weights and isinstance(overlay, dict) and overlay.get("file"):
        from timm.models import load_state_dict as _read

        # a vispos checkpoint (pe.* keys) named by pretrained_cfg_overlay(file=): loaded after the PE is installed
        vispos_weights = any(k.startswith("pe.") for k in _read(str(overlay["file"]), weights_only=True))
    model = timm.create_model(model_name, pretrained=pretrained and not vispos_weights, **timm_kwargs)
    _check_model(model, find_host(model))
    vispos_ckpt = None
    if checkpoint_path is not None:
        from timm.models import load_state_dict

        sd = load_state_dict(str(checkpoint_path), weights_only=True)
        plain_keys = model.state_dict().keys()
        # a vispos checkpoint has pe.* keys, or (a parameter-free PE such as rope_axial) lacks timm's pos_embed
        own = _timm_pe_keys(model) & set(plain_keys)
        if any(k.startswith("pe.") for k in sd) or (own and not own & set(sd)):
            vispos_ckpt = sd
        else:
            _logger.info("timm checkpoint %s: loading into the plain %s, then converting its PE", checkpoint_path,
                         type(model).__name__)
            load_timm_checkpoint(model, sd, strict=strict, checkpoint_grid=checkpoint_grid,
                                 where=str(checkpoint_path))
    convert = (bool(pretrained) and not vispos_weights) or (checkpoint_path is not None and vispos_ckpt is None)
    install_pe(model, pe, pe_kwargs, convert=convert)
    # what timm's save_for_hf / local-dir: / hub configs need to rebuild this model: its vispos architecture and
    # the PE arguments (a PE given as a built module is not serialisable and is left out)
    model.pretrained_cfg = dict(model.pretrained_cfg, architecture=timm_entrypoint_name(base))
    if isinstance(pe, (str, list, tuple)):
        args = dict(getattr(model, "_model_args", None) or {})
        args.update(pe=list(pe) if not isinstance(pe, str) else pe, pe_kwargs=pe_kwargs)
        model._model_args = args
    if vispos_weights:  # a vispos export (save_for_hf, pretrained_cfg_overlay(file=) of a vispos checkpoint)
        from timm.models import load_pretrained

        load_pretrained(model, num_classes=model.num_classes, in_chans=timm_kwargs.get("in_chans", 3),
                        strict=strict)
    if vispos_ckpt is not None:
        _load_checked(model, vispos_ckpt, strict, checkpoint_path)
    if features_only:
        from timm.models._features import FeatureGetterNet

        model = FeatureGetterNet(model, out_indices=out_indices)
    return model


def _is_vispos_cfg(cfg) -> bool:
    """Whether a pretrained config describes vispos weights: it names a ``vispos_`` architecture, or it is the
    config of an export (``local-dir:`` / ``hf-hub:``) that timm resolved to a ``vispos_`` entrypoint -- an export
    of a vispos model, whose weights are in vispos' layout (``pe.*``)."""
    if cfg is None or isinstance(cfg, str):
        return False
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    arch = get("architecture")
    if isinstance(arch, str):
        return arch.startswith(ENTRYPOINT_PREFIX)
    return get("source") == "local-dir" or bool(get("hf_hub_id"))


# ---- timm entrypoints --------------------------------------------------------------------------------------------
_ENTRY_MODULE = "vispos.integrations.timm.vispos"  # timm files entrypoints under the last part: timm.list_models(module="vispos")


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
        mod.default_cfgs = {}
        sys.modules[_ENTRY_MODULE] = mod
    out = []
    for module in SUPPORTED_TIMM_MODULES:
        for base in list_models(module=module):
            name = timm_entrypoint_name(base)
            if not is_model(name):
                fn = _make_entrypoint(base)
                setattr(mod, name, fn)
                twin_cfg = _twin_default_cfg(base)
                if twin_cfg is not None:  # the base's pretrained tags, so list_models(pretrained=True) lists twins
                    mod.default_cfgs[name] = twin_cfg
                register_model(fn)
            out.append(name)
    return out


def _twin_default_cfg(base: str):
    """timm's default config of ``base`` (its tags and pretrained configs) for the ``vispos_`` twin, with the hub
    ids pinned to the base's weights (timm would otherwise derive ``timm/vispos_...`` from the twin's name)."""
    from dataclasses import replace

    from timm.models._registry import _model_default_cfgs

    dc = _model_default_cfgs.get(base)
    if dc is None:
        return None
    cfgs = {}
    for tag, cfg in dc.cfgs.items():
        hub = cfg.hf_hub_id
        if hub == "timm/":
            hub = f"timm/{base}.{tag}" if tag else f"timm/{base}"
        cfgs[tag] = replace(cfg, hf_hub_id=hub)
    return replace(dc, cfgs=cfgs)


register_timm_entrypoints()
