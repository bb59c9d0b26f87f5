"""Checkpoint conversion between timm's PE and a vispos PE: at install time (the model's own ``pos_embed`` / EVA
``rope``), when loading a timm-format or other-grid checkpoint (the load pre-hook), and timm-format loading into a
plain timm model (:func:`load_timm_checkpoint`)."""
from __future__ import annotations

import inspect
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...pe.base import PositionalEmbedding
from ...registry import get_pe_info

__all__ = ["load_timm_checkpoint"]

_logger = logging.getLogger(__name__)


def _accepts(name: str, option: str) -> bool:
    """Whether the registered builder of ``name`` takes ``option`` (named, or through ``**kwargs``)."""
    params = inspect.signature(get_pe_info(name).builder).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _host_defaults(names: List[str], model) -> Tuple[Dict[str, dict], List[str]]:
    """Each member family's options reproducing the host's own PE (the family's ``host_defaults`` on its registry
    builder), and what the families say they cannot reproduce."""
    out, problems = {}, []
    for n in names:
        fn = getattr(get_pe_info(n).builder, "host_defaults", None)
        if fn is None:
            continue
        opts, problem = fn(model)
        out[n] = opts
        if problem:
            problems.append(f"{n}: {problem}")
    return out, problems


def unreproduced(model) -> List[str]:
    """What the installed vispos PE does not reproduce of the timm model's own PE (empty when exact)."""
    return list(getattr(model, "_vispos_unreproduced", ()))


def warn_unreproduced(model, route: str) -> None:
    """One WARNING per thing the PE does not reproduce, naming the loading route (every route calls this)."""
    for what in unreproduced(model):
        _logger.warning("%s: the timm model's own PE is not reproduced (%s); outputs differ from timm's", route, what)


def _pe_options(names: List[str], pe_kwargs: Optional[dict], model, convert: bool
                ) -> Tuple[Union[str, list], dict, List[str]]:
    """Options for :func:`vispos.build_pe` with the host's defaults filled in where the user gave none, and what
    the families cannot reproduce of the host's own PE."""
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
    defaults, problems = _host_defaults(names, model)
    for n, opts in defaults.items():
        for k, v in opts.items():
            per[n].setdefault(k, v)
    if single:
        return names[0], per[names[0]], problems
    return names, {n: o for n, o in per.items() if o}, problems


def _find_named(pe: nn.Module, name: str) -> List[Tuple[str, nn.Module]]:
    return [(p, m) for p, m in pe.named_modules(prefix="pe")
            if isinstance(m, PositionalEmbedding) and getattr(m, "name", None) == name]


@torch.no_grad()
def _convert_state(model, pe: nn.Module, convert: bool) -> set:
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
    rope = getattr(model, "rope", None)
    if rope is not None:
        if hasattr(rope, "freqs") and isinstance(rope.freqs, nn.Parameter):
            mixed = _find_named(pe, "rope_mixed")
            if mixed and tuple(mixed[0][1].freqs.shape) == tuple(rope.freqs.shape):
                path, m = mixed[0]
                src = getattr(rope, "grid_indexing", "xy")
                m.freqs.copy_(m.freqs_from(rope.freqs, src).to(m.freqs.dtype))
                m.clear_cache()
                filled.add(f"{path}.freqs")
                log("rope.freqs %s -> %s.freqs (rows: timm grid_indexing=%r -> axis_order=%r)",
                    tuple(rope.freqs.shape), path, src, m.axis_order)
            elif convert:
                _logger.warning("rope.freqs %s dropped: PE %r has no matching 'rope_mixed' member; outputs change",
                                tuple(rope.freqs.shape), pe.name)
        else:
            qk = [(p, m) for p, m in pe.named_modules(prefix="pe")
                  if isinstance(m, PositionalEmbedding) and tuple(m.members()) == (m,) and "qk" in m.hooks]
            if qk and not unreproduced(model):
                log("rope (%s) -> %s (its settings; no parameters)", type(rope).__name__, qk[0][0])
            elif convert and not qk:
                _logger.warning("rope (%s) replaced by PE %r, which has no rotary member; outputs change",
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
    from ...pe.absolute import resample_abs_pe
    from ...pe.relative import resize_rel_pos

    pe = model.pe
    own = {f"{prefix}{n}": p for n, p in pe.named_parameters(prefix="pe")}
    grid = tuple(model.patch_embed.grid_size)
    n_patch = math.prod(grid)
    no_pe_keys = not any(k.startswith(f"{prefix}pe.") for k in sd)  # a timm checkpoint (or a parameter-free PE's)
    timm_format = f"{prefix}pos_embed" in sd or f"{prefix}rope.freqs" in sd or no_pe_keys
    if no_pe_keys:
        warn_unreproduced(model, "load_state_dict")
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
            src = getattr(model, "_vispos_timm_rope_indexing", "xy")
            sd[f"{prefix}{mixed[0][0]}.freqs"] = mixed[0][1].freqs_from(freqs, src)
            mixed[0][1].clear_cache()
            _logger.info("checkpoint rope.freqs -> %s.freqs (rows: timm grid_indexing=%r -> axis_order=%r)",
                         mixed[0][0], src, mixed[0][1].axis_order)
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
        from ...pe.absolute import resample_abs_pe

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
