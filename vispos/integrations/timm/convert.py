"""Checkpoint conversion between timm's PE and a vispos PE: at install time (the model's own ``pos_embed`` / EVA
``rope``), when loading a timm-format or other-grid checkpoint (the load pre-hook), and timm-format loading into a
plain timm model (:func:`load_timm_checkpoint`)."""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...pe.base import PositionalEmbedding
from ...pe.host import HostFreqs, HostPE, HostTable
from ...registry import get_pe_info
from .naflex import NaFlexVit, checkpoint_roles, naflex_grid, unreproduced_settings
from .naflex import host_pe as naflex_host_pe

__all__ = ["load_timm_checkpoint"]

_logger = logging.getLogger(__name__)


#: how timm describes what it stores, for the dropped-state warnings
_ROLE_WORDS = {"abs_table": "learned absolute table", "rotary": "rotary embedding", "mixed_freqs": "RoPE-Mixed freqs"}


def model_grid(model) -> Tuple[int, ...]:
    """The host model's (training / current) patch grid: ``patch_embed.grid_size``, or a NaFlexViT's table grid
    (:func:`~vispos.integrations.timm.naflex.naflex_grid`)."""
    if isinstance(model, NaFlexVit):
        return naflex_grid(model)
    return tuple(int(s) for s in model.patch_embed.grid_size)


def _timm_pe_keys(model) -> set:
    """State-dict keys of timm's own learned PE in this model class."""
    if isinstance(model, NaFlexVit):
        return {"embeds.pos_embed", "embeds.pos_embed_y", "embeds.pos_embed_x", "rope.freqs"}
    return {"pos_embed", "rope.freqs"}


def _host(model, convert: bool, roles: Optional[Dict[str, Any]] = None) -> HostPE:
    """The timm model as a :class:`~vispos.pe.host.HostPE`: grid, prefix tokens, timm's resampling, and (unless
    ``roles`` is given, e.g. from a checkpoint) the model's own PE by role."""
    if isinstance(model, NaFlexVit):
        return naflex_host_pe(model, convert, _logger.info if convert else _logger.debug, roles)
    grid = tuple(int(s) for s in model.patch_embed.grid_size)
    host = HostPE(grid, int(model.num_prefix_tokens), prefix_in_table=not getattr(model, "no_embed_class", False),
                  resample=dict(mode="bicubic", antialias=True),  # timm resamples pos_embed so at other grids
                  convert=convert, log=_logger.info if convert else _logger.debug)
    if roles is not None:
        host.roles.update(roles)
        return host
    pos = getattr(model, "pos_embed", None)
    if pos is not None:
        host.roles["abs_table"] = HostTable(pos.detach(), grid, pos.shape[1] - math.prod(grid), "pos_embed")
    rope = getattr(model, "rope", None)
    if rope is not None:
        host.roles["rotary"] = rope
        if isinstance(getattr(rope, "freqs", None), nn.Parameter):
            host.roles["mixed_freqs"] = HostFreqs(rope.freqs.detach(), getattr(rope, "grid_indexing", "xy"),
                                                  "rope.freqs")
    return host


def unreproduced(model) -> List[str]:
    """What the installed vispos PE does not reproduce of the timm model's own PE (empty when exact)."""
    return list(getattr(model, "_vispos_unreproduced", ()))


def warn_unreproduced(model, route: str) -> None:
    """One WARNING per thing the PE does not reproduce, naming the loading route (every route calls this)."""
    for what in unreproduced(model):
        _logger.warning("%s: the timm model's own PE is not reproduced (%s); outputs differ from timm's", route, what)


def _family_modules(pe: nn.Module):
    """``(path, module)`` of every PE module in ``pe`` (members of combinations, nested bases), in module order."""
    return [(p, m) for p, m in pe.named_modules(prefix="pe") if isinstance(m, PositionalEmbedding)]


def _pe_options(names: List[str], pe_kwargs: Optional[dict], model, convert: bool
                ) -> Tuple[Union[str, list], dict, List[str]]:
    """Options for :func:`vispos.build_pe`: each family's defaults for this host
    (:meth:`~vispos.pe.base.PositionalEmbedding.options_from_host`) under the user's options, and what the families
    say they cannot reproduce of the host's own PE."""
    single = len(names) == 1
    per = {names[0]: dict(pe_kwargs or {})} if single else {n: dict((pe_kwargs or {}).get(n) or {}) for n in names}
    if not single and pe_kwargs:
        extra = [k for k in pe_kwargs if k not in names]
        if extra:
            raise TypeError(f"pe_kwargs for a PE list must be keyed by member name {names}, got {extra}")
    host = _host(model, convert)
    for n, opts in per.items():
        cls = get_pe_info(n).cls
        if cls is not None:
            per[n] = {**cls.options_from_host(host), **opts}
    if single:
        return names[0], per[names[0]], host.problems
    return names, {n: o for n, o in per.items() if o}, host.problems


def _owner(pe: nn.Module, key: str) -> PositionalEmbedding:
    """The innermost PE module holding parameter ``key`` (a ``pe.*`` name)."""
    owners = dict(_family_modules(pe))
    parts = key.split(".")[:-1]
    while ".".join(parts) not in owners:
        parts.pop()
    return owners[".".join(parts)]


def _report_untaken(host: HostPE, pe: nn.Module) -> None:
    """One warning per part of timm's PE that no PE module took (a rotary module replaced by another rotary member
    is reported by :func:`warn_unreproduced` instead)."""
    rotary_member = any("qk" in m.hooks for _, m in _family_modules(pe) if tuple(m.members()) == (m,))
    for role, value in host.untaken().items():
        if role == "rotary" and rotary_member:
            continue
        source = getattr(value, "source", f"rope ({type(value).__name__})")
        tensor = getattr(value, "table", getattr(value, "freqs", None))
        shape = "" if tensor is None else f" {tuple(tensor.shape)}"
        _logger.warning("%s%s dropped: PE %r has no member that takes timm's %s; outputs change", source, shape,
                        pe.name, _ROLE_WORDS.get(role, role))


@torch.no_grad()
def _convert_state(model, pe: nn.Module, convert: bool) -> set:
    """Move timm's PE state into ``pe`` (every PE module takes what it can,
    :meth:`~vispos.pe.base.PositionalEmbedding.state_from_host`); returns the ``pe.*`` keys filled from timm."""
    host = _host(model, convert)
    filled = set()
    for path, m in _family_modules(pe):
        state = m.state_from_host(host, path)
        if state:
            own = dict(m.named_parameters())
            for name, value in state.items():
                own[name].copy_(value)
                filled.add(f"{path}.{name}")
            m.clear_cache()
    if isinstance(model, NaFlexVit):  # timm's table resampling, as the member that took the table reproduces it
        extra = unreproduced_settings(model, pe, host)
        model._vispos_unreproduced = tuple(getattr(model, "_vispos_unreproduced", ())) + tuple(extra)
        if convert:
            for what in extra:
                _logger.warning("conversion: the timm model's own PE is not reproduced (%s); outputs differ from "
                                "timm's", what)
    if convert:
        _report_untaken(host, pe)
        for name, p in pe.named_parameters(prefix="pe"):
            if name not in filled:
                owner = _owner(pe, name)
                host.log("new %s %s (initialised by %s %r)", name, tuple(p.shape), type(owner).__name__, owner.name)
    return filled


def _vit_checkpoint_roles(model, sd: dict, prefix: str) -> Dict[str, Any]:
    """Pop timm's PE keys of a ViT / EVA checkpoint out of ``sd``, as roles (``pos_embed`` at its grid,
    ``rope.freqs``)."""
    grid = tuple(model.patch_embed.grid_size)
    roles = {}
    pos = sd.pop(f"{prefix}pos_embed", None)
    if pos is not None:
        src_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        n = pos.shape[1] - src_prefix
        src_grid = grid if n == math.prod(grid) else _square_grid(n, f"checkpoint pos_embed {tuple(pos.shape)}")
        roles["abs_table"] = HostTable(pos, src_grid, src_prefix, "checkpoint pos_embed")
    freqs = sd.pop(f"{prefix}rope.freqs", None)
    if freqs is not None:
        # rows follow the timm model's grid_indexing (recorded at install; timm's mixed models use "xy")
        roles["mixed_freqs"] = HostFreqs(freqs, getattr(model, "_vispos_timm_rope_indexing", "xy"),
                                         "checkpoint rope.freqs")
    return roles


@torch.no_grad()
def _state_dict_pre_hook(model, sd, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Make ``model.load_state_dict`` accept what users load into a vispos timm model (so timm's own
    ``checkpoint_path=`` / ``load_checkpoint`` work too):

    * a **timm-format** checkpoint (``pos_embed`` / ``rope.freqs`` keys): its PE goes to the PE modules that take it
      (:meth:`~vispos.pe.base.PositionalEmbedding.state_from_host`; a ``pos_embed`` of another, square, grid is
      resampled), and PE parameters the checkpoint cannot have take the family's identity values
      (:meth:`~vispos.pe.base.PositionalEmbedding.identity_state`) or keep their current ones;
    * a **vispos** checkpoint from another grid: each PE module adapts its own tensors
      (:meth:`~vispos.pe.base.PositionalEmbedding.resize_state`: APE tables resampled, rel-pos tables resized).
    One log line per converted or kept key. Everything else is left to the normal (strict) loading.
    """
    pe = model.pe
    roles = checkpoint_roles(model, sd, prefix) if isinstance(model, NaFlexVit) else _vit_checkpoint_roles(model, sd,
                                                                                                            prefix)
    no_pe_keys = not any(k.startswith(f"{prefix}pe.") for k in sd)  # a timm checkpoint (or a parameter-free PE's)
    timm_format = bool(roles) or no_pe_keys
    if no_pe_keys:
        warn_unreproduced(model, "load_state_dict")
    host = _host(model, True, roles)
    modules = _family_modules(pe)
    for path, m in modules:
        for name, value in m.state_from_host(host, path).items():
            sd[f"{prefix}{path}.{name}"] = value
        m.clear_cache()
    _report_untaken(host, pe)
    identity = {f"{prefix}{path}.{n}": v for path, m in modules for n, v in m.identity_state().items()}
    for key, p in pe.named_parameters(prefix=f"{prefix}pe"):
        if key not in sd:
            if timm_format:
                if key in identity:
                    sd[key] = identity[key]
                    _logger.info("%s %s not in the timm checkpoint: the %r identity", key, tuple(p.shape),
                                 _owner(pe, key[len(prefix):]).name)
                else:
                    sd[key] = p.detach().clone()
                    _logger.info("%s %s not in the timm checkpoint: kept as initialised", key, tuple(p.shape))
            continue
        t = sd[key]
        if t.shape != p.shape:
            owner = _owner(pe, key[len(prefix):])
            path = next(pth for pth, m in modules if m is owner)
            resized = owner.resize_state(key[len(prefix) + len(path) + 1:], t, host)
            if resized is not None:
                sd[key] = resized


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
    if isinstance(model, NaFlexVit):
        _resample_naflex_table(model, sd)
        _load_checked(model, sd, strict, where)
        return
    pos = sd.get("pos_embed")
    if pos is not None and getattr(model, "pos_embed", None) is not None and pos.shape != model.pos_embed.shape:
        from ...pe.absolute import resample_abs_pe

        n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        new_grid = tuple(model.patch_embed.grid_size)
        old_grid = tuple(checkpoint_grid) if checkpoint_grid is not None else _square_grid(
            pos.shape[1] - n_prefix, f"checkpoint pos_embed {tuple(pos.shape)}")
        sd["pos_embed"] = resample_abs_pe(pos, new_grid, old_grid, n_prefix, "bicubic", True)
        _logger.info("pos_embed %s resampled from grid %s to %s (%d prefix rows kept)", tuple(pos.shape), old_grid,
                     new_grid, n_prefix)
    _load_checked(model, sd, strict, where)


def _resample_naflex_table(model, sd: dict) -> None:
    """A NaFlexViT checkpoint's ``embeds.pos_embed (1, H, W, C)`` at another grid, resampled to the model's with the
    model's own rule (``pos_embed_interp_mode``, antialias)."""
    pos, own = sd.get("embeds.pos_embed"), model.embeds.pos_embed
    if pos is None or own is None or pos.shape == own.shape:
        return
    from ...pe.absolute import resample_abs_pe

    if pos.dim() != 4 or pos.shape[-1] != own.shape[-1]:
        raise ValueError(f"checkpoint embeds.pos_embed {tuple(pos.shape)} does not fit the model's "
                         f"{tuple(own.shape)} (1, H, W, C)")
    e = model.embeds
    (h, w), (H, W) = pos.shape[1:3], own.shape[1:3]
    flat = resample_abs_pe(pos.reshape(1, h * w, -1), (H, W), (h, w), 0, e.pos_embed_interp_mode,
                           bool(e.pos_embed_antialias))
    sd["embeds.pos_embed"] = flat.reshape(1, H, W, -1)
    _logger.info("embeds.pos_embed %s resampled from grid %s to %s", tuple(pos.shape), (h, w), (H, W))


def _load_checked(model: nn.Module, sd: dict, strict: bool, where) -> None:
    res = model.load_state_dict(sd, strict=False)
    if strict and (res.missing_keys or res.unexpected_keys):
        raise RuntimeError(f"checkpoint {where} does not match {type(model).__name__}: missing keys "
                           f"{res.missing_keys}, unexpected keys {res.unexpected_keys} (strict=False to ignore)")
    if res.missing_keys or res.unexpected_keys:
        _logger.warning("checkpoint %s: missing keys %s, unexpected keys %s", where, res.missing_keys,
                        res.unexpected_keys)
