"""Length and resolution rules (RIFLEx, PI, NTK, YaRN) for diffusers' video transformers, in one call.

>>> handle = apply_rule(pipe_or_transformer, time="riflex", num_frames=45, train_frames=33)
>>> ...                      # generate; the host's RoPE now uses the adjusted temporal bands
>>> handle.remove()          # or: with apply_rule(...): ...

Hosts are the adapters of :data:`~vispos.integrations.diffusers.adapters.ADAPTERS`, one per RoPE layout
(Hunyuan-style, Wan-style buffers, LTX-style normalised coordinates, CogVideoX's pipeline-built RoPE, Cosmos's and
Kandinsky's built-in scaling -- see :func:`builtin_rules` --, ChronoEdit, LTX-2's video stream, ...), matched by
the structure of the object, so a diffusers class that copies a supported RoPE is served as its original is. A
pipeline is recognised by its ``transformer`` (and ``transformer_2`` for two-expert pipelines, which both take the
rule). This package needs only torch: diffusers is needed only to have diffusers models.

Units. ``num_frames`` / ``train_frames`` are latent frames and ``height`` / ``width`` / ``train_height`` /
``train_width`` latent pixels with ``units="latent"`` (default); with ``units="pixel"`` they are video frames
(``t*m + 1``) and image pixels, converted with the VAE compression ``(t, s)`` (taken from the pipeline, or
``vae_scale=``, or the adapter's default: (4, 8), LTX (8, 32)). They are then converted to RoPE positions the way
the host patchifies (``F // p_t``, ``H // p``; CogVideoX 1.5: ``ceil(F / p_t)``). A target left as ``None`` is the
grid the host sees at each call. Lengths set inside a rule (``train_len``, ``test_len``, RIFLEx ``N``) are in the same
units and converted the same way, so ``N`` means what it means in ``vispos riflex`` (latent frames by default):
the same ``N`` picks the same ``k`` in both. RIFLEx ``k`` is 1-indexed from the highest frequency of the axis.

Only the components a rule changes differ from diffusers: with every rule off (``none``, or scale 1) the RoPE
tensors are bit-identical to diffusers', and :meth:`RuleHandle.remove` restores the host exactly.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import List, Optional, Tuple

import torch

from .adapters import ADAPTERS, Adapter, cog_cos_sin, find_adapter
from .adapters_builtin import builtin_rules
from .handle import (
    AXES,
    MARK,
    UNITS,
    Axis,
    RuleHandle,
    RuleLike,
    TimeAware,
    axis_rules,
    check_len,
    needs_train,
    to_latent,
    vae_scale_of,
)
from .support import REFUSED

logger = logging.getLogger(__name__)

__all__ = ["ADAPTERS", "AXES", "RELEASED_CLASSES", "SUPPORTED", "RuleHandle", "TimeAware", "apply_rule",
           "builtin_rules", "cogvideox_rotary_emb", "detect_host", "released_train_frames"]

SUPPORTED = tuple(f"{a.name}: {a.layout}" for a in ADAPTERS) + ("any pipeline whose .transformer is one of these",)


def detect_host(obj) -> Tuple[Adapter, object, Optional[object]]:
    """``(adapter, transformer, pipeline)`` for a diffusers video transformer or pipeline.

    Raises ``ValueError`` naming the supported layouts for anything else.
    """
    pipe, model = None, obj
    if not isinstance(obj, torch.nn.Module) and isinstance(getattr(obj, "transformer", None), torch.nn.Module):
        pipe, model = obj, obj.transformer
    adapter = find_adapter(model, pipe)
    if adapter is None:
        why = ""
        children = model.named_children() if isinstance(model, torch.nn.Module) else ()
        for name, child in children:
            reason = REFUSED.get(type(child).__name__)
            if reason:
                why = f" (its {name}: {type(child).__name__}: {reason})"
                break
        else:
            rope = getattr(model, "rope", None)
            why = f" (its rope: {type(rope).__name__})" if isinstance(rope, torch.nn.Module) else ""
        raise ValueError(
            f"unsupported object {type(obj).__name__}{why}: expected a diffusers transformer or pipeline with one "
            "of these RoPE layouts: " + "; ".join(SUPPORTED)
        )
    return adapter, model, pipe


def _positions(adapter: Adapter, model, axis: int, value, units: str, factor: int, name: str) -> Optional[float]:
    """A length given in ``units`` as RoPE positions of ``axis`` (the host's patchify)."""
    if value is None:
        return None
    if units == "token":
        return float(value)
    if units == "pixel":
        if value != int(value):
            raise ValueError(f"{name}={value} must be a whole number of video frames / pixels")
        value = to_latent(int(value), units, factor, axis == 0, name)
    return adapter.positions(model, axis, value)


def _rule_in_positions(rule, adapter: Adapter, model, axis: int, units: str, factor: int):
    """The rule with the lengths set inside it (``train_len``, ``test_len``, RIFLEx ``N``), given in ``units`` like
    every other length, converted to RoPE positions the way the host patchifies."""
    changes = {}
    for field in ("train_len", "test_len", "N"):
        v = getattr(rule, field)
        if v is None:
            continue
        changes[field] = _positions(adapter, model, axis, v, units, factor, f"{rule.name} {field}")
        if not changes[field] > 0:
            raise ValueError(f"{rule.name} {field}={v} is less than one RoPE position here")
    return replace(rule, **changes) if changes else rule


#: diffusers transformer class -> the keys of :data:`vispos.integrations.diffusers.report.HOSTS` it may be
RELEASED_CLASSES = {"HunyuanVideoTransformer3DModel": ("hunyuanvideo",), "WanTransformer3DModel": ("wan",),
                    "SkyReelsV2Transformer3DModel": ("skyreels-v2",), "LTXVideoTransformer3DModel": ("ltx",),
                    "CogVideoXTransformer3DModel": ("cogvideox", "cogvideox1.5")}


def released_train_frames(adapter: Adapter, model) -> Optional[Tuple[int, str, str]]:
    """``(train latent frames, host key, source)`` of the released checkpoint whose temporal RoPE this ``model``
    has (its class in :data:`RELEASED_CLASSES`, the same temporal patch and band count as the entry of
    ``adapter.released``, the table ``vispos riflex`` uses), or ``None`` when no released length is known (another
    class, e.g. HunyuanVideo 1.5 with the same RoPE, or a RoPE of another size)."""
    p_t, n_t = adapter.patch(model)[0], adapter.n_components(model)[0]
    for key in RELEASED_CLASSES.get(type(model).__name__, ()):
        rel = adapter.released.get(key)
        if rel is None:
            continue
        bands = rel.dim // 6 if rel.bands == "ltx" else rel.dim // 2
        if rel.p_t == p_t and bands == n_t:
            return rel.train, key, rel.source
    return None


def _build_axes(adapter: Adapter, model, pipe, time, space, lengths, units, vae_scale) -> List[Axis]:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    names = ("num_frames", "height", "width", "train_frames", "train_height", "train_width")
    vals = [check_len(v, n) for v, n in zip(lengths, names)]
    rules = axis_rules(time, space)
    if any(isinstance(r, TimeAware) for r in rules) and getattr(adapter, "timestep_scale", None) is None:
        # the adapters that read the transformer call's timestep say how it maps to the noise level
        readers = ", ".join(a.name for a in ADAPTERS if getattr(a, "timestep_scale", None) is not None)
        raise ValueError(f"a TimeAware rule switches with the denoising step, but the {adapter.name} adapter "
                         f"({type(model).__name__}) does not read the denoising timestep (the adapters that do: "
                         f"{readers}): give one rule per axis")
    t_vae, s_vae = vae_scale_of(adapter.vae, pipe, vae_scale) if units == "pixel" else (1, 1)
    ncomp = adapter.n_components(model)
    axes = []
    for a in range(3):
        f = t_vae if a == 0 else s_vae
        target = _positions(adapter, model, a, vals[a], units, f, names[a])
        train = _positions(adapter, model, a, vals[3 + a], units, f, names[3 + a])
        for v, n, pos in ((vals[a], names[a], target), (vals[3 + a], names[3 + a], train)):
            if pos is not None and not pos > 0:  # refused here, not at the host's first call
                raise ValueError(f"{n}={v} is {pos:g} RoPE positions ({adapter.axes[a]} patch "
                                 f"{adapter.patch(model)[a]}): give at least one patch")
        if isinstance(rules[a], TimeAware):
            subs = [_rule_in_positions(r, adapter, model, a, units, f) for r in rules[a].rules]
            rule = replace(rules[a], high_noise=subs[0], low_noise=subs[1])
        else:
            subs = [_rule_in_positions(rules[a], adapter, model, a, units, f)]
            rule = subs[0]
        # a temporal rule that needs the training length and was given none: the released one, when known (the
        # released length is not the fine-tuning length RIFLEx's finetune mode needs: that one stays required)
        wants = [r.name for r in subs if r.name != "none" and r.train_len is None and needs_train(r)
                 and not (r.name == "riflex" and r.mode == "finetune")]
        if a == 0 and train is None and wants:
            known = released_train_frames(adapter, model)
            if known is not None:
                train = adapter.positions(model, 0, known[0])
                logger.info("vispos: %s on the time axis: train_frames defaults to %d latent frames (%g RoPE "
                            "positions), the released %s training length (%s); pass train_frames= if this "
                            "checkpoint was trained at another length", "/".join(wants), known[0], train,
                            known[1], known[2])
        for r in subs:
            if r.name != "none" and train is None and r.train_len is None and needs_train(r):
                raise ValueError(f"rule {r.name!r} on the {adapter.axes[a]} axis needs its training length: pass "
                                 f"{names[3 + a]}= (or k=/N= for riflex, factor= for pi / ntk_base)")
            if r.name == "riflex" and r.k is not None and r.k > ncomp[a]:
                raise ValueError(f"RIFLEx k={r.k} is out of range: the {adapter.axes[a]} axis has {ncomp[a]} "
                                 "components")
            if ncomp[a] == 0 and r.name != "none":
                raise ValueError(f"the {adapter.axes[a]} axis of this {type(model).__name__} has no rotary "
                                 "components")
        axes.append(Axis(rule, target, train))
    return axes


def cogvideox_rotary_emb(
    transformer, num_frames: int, height: int, width: int, time: RuleLike = None, space=None, *,
    train_frames: Optional[int] = None, train_height: Optional[int] = None, train_width: Optional[int] = None,
    units: str = "latent", vae_scale: Optional[Tuple[int, int]] = None, device=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` for a bare CogVideoX (1.0 or 1.5) transformer, with the rules applied; pass as
    ``image_rotary_emb``. Identical to the pipeline's ``_prepare_rotary_positional_embeddings`` with rules off.

    ``num_frames``/``height``/``width`` are the size to embed (latent frames and latent pixels, or video frames and
    pixels with ``units="pixel"``) and the rules' target lengths; the ``train_*`` lengths are in the same units.
    """
    adapter, model, _ = detect_host(transformer)
    if adapter.name != "cogvideox-pipeline":
        raise ValueError(f"cogvideox_rotary_emb needs a CogVideoXTransformer3DModel, got a {adapter.name} model "
                         f"({type(model).__name__})")
    adapter.check(model)
    if units == "token":
        raise ValueError("cogvideox_rotary_emb embeds a latent size: units must be 'latent' or 'pixel', got 'token'")
    for v, n in ((num_frames, "num_frames"), (height, "height"), (width, "width")):
        if v is None:
            raise ValueError(f"{n} is required (the size to embed), got None")
    axes = _build_axes(adapter, model, None, time, space,
                       (num_frames, height, width, train_frames, train_height, train_width), units, vae_scale)
    t_vae, s_vae = vae_scale_of(adapter.vae, None, vae_scale) if units == "pixel" else (1, 1)
    lat_f = to_latent(num_frames, units, t_vae, True, "num_frames")
    lat_h = to_latent(height, units, s_vae, False, "height")
    lat_w = to_latent(width, units, s_vae, False, "width")
    p = int(model.config.patch_size)
    return cog_cos_sin(model, axes, lat_f, lat_h // p, lat_w // p, device)


def apply_rule(
    obj, time: RuleLike = None, space=None, *, num_frames: Optional[int] = None, height: Optional[int] = None,
    width: Optional[int] = None, train_frames: Optional[int] = None, train_height: Optional[int] = None,
    train_width: Optional[int] = None, units: str = "latent", vae_scale: Optional[Tuple[int, int]] = None,
) -> RuleHandle:
    """Apply a frequency scaling rule per axis to a diffusers video transformer or pipeline.

    Args:
        obj: a transformer whose RoPE has one of the layouts of :data:`ADAPTERS`, a pipeline holding one (both
            experts of a two-expert pipeline take the rule), or a CogVideoX-style pipeline. Anything else raises
            ``ValueError`` naming the supported layouts.
        time: rule for the temporal axis: a name in :data:`vispos.freqs.RULES`, a dict of
            :class:`~vispos.freqs.ScalingRule` fields (e.g. ``{"name": "riflex", "k": 4}``) or a ScalingRule.
        space: rule for both spatial axes, or a pair ``(height_rule, width_rule)``.
        num_frames, height, width: target lengths (see the module docstring for units); ``None``: the grid the
            host sees at each call.
        train_frames, train_height, train_width: training lengths, required by the rules that use them.
            ``train_frames`` defaults to the released training length of the host's checkpoint when the model is
            one whose length is known (:func:`released_train_frames`: HunyuanVideo, Wan, SkyReels-V2, LTX-Video,
            CogVideoX; the table of ``vispos riflex``), logged at INFO; elsewhere, and for RIFLEx ``mode="finetune"``
            (whose length is the fine-tuning one), a rule that needs it raises.
        units: ``"latent"`` (default) or ``"pixel"``.
        vae_scale: ``(temporal, spatial)`` VAE compression for ``units="pixel"`` (default: the pipeline's, else
            the adapter's usual one).

    Returns:
        a :class:`RuleHandle`; ``handle.remove()`` (or leaving a ``with`` block) restores the host bit-exactly.
    """
    adapter, model, pipe = detect_host(obj)
    if adapter.on_pipeline and pipe is None:
        raise ValueError(
            f"{type(model).__name__} has its RoPE computed by the pipeline, not by the transformer: pass the pipeline "
            f"to apply_rule{adapter.bare_hint}"
        )
    axes = _build_axes(adapter, model, pipe, time, space,
                       (num_frames, height, width, train_frames, train_height, train_width), units, vae_scale)
    models = [model]
    if pipe is not None:
        for name in adapter.components[1:]:
            other = getattr(pipe, name, None)
            if isinstance(other, torch.nn.Module):
                if find_adapter(other) is not adapter:
                    raise ValueError(f"pipeline holds a {adapter.name} transformer and a {type(other).__name__} "
                                     f"{name} of another layout; expected one kind")
                models.append(other)
    targets = [adapter.target(m, pipe) for m in models]
    for t in targets:
        if getattr(t, MARK, None) is not None:
            raise ValueError(f"a vispos rule is already applied to this {type(t).__name__}; remove() it first")
    handle = RuleHandle(adapter.name, type(model).__name__, axes, adapter.axes)
    try:
        for m, t in zip(models, targets):
            handle._add(t, adapter.install(handle, m, pipe))
    except BaseException:
        handle.remove()
        raise
    logger.info("vispos: %r", handle)
    return handle
