"""Adapters for RoPEs with a scaling built in (Cosmos, Kandinsky 5 / 6) or a layout of their own (ChronoEdit,
LTX-2's video stream). Part of :data:`~vispos.integrations.diffusers.adapters.ADAPTERS`.

**Built-in scaling as vispos rules.** Cosmos builds every axis with an NTK base multiplier from its config
(``rope_scale``: ``lam = rope_scale^(d/(d-2))``, the ``ntk`` rule at scale ``rope_scale``); Kandinsky divides each
axis's angles by the ``scale_factor`` its transformer passes at each call (position interpolation, the ``pi`` rule with
``factor=scale_factor``). :func:`builtin_rules` returns these as vispos rules. An axis left ``none`` keeps the
model's own scaling (bit-identical to diffusers); RIFLEx lowers one band of the model's own (scaled) bands and keeps
the others; an axis given another rule **replaces** its built-in scaling: the rule acts on the unscaled bands (base
10000 for Cosmos, Kandinsky's ``max_period``). The built-in rules themselves are computed
the way the host computes them (Cosmos: ``1 / (10000 lam)^(2j/d)`` in float32; Kandinsky: the host's angles divided
by the factor), so ``apply_rule(model, **builtin_rules(model))``-style calls reproduce diffusers bit-exactly, also on
a model built without the scaling.

**Cosmos's fps.** With ``fps`` Cosmos's temporal positions are ``i * base_fps / fps`` (time in frames of its base
frame rate). vispos keeps these positions (it is the time unit the checkpoint was trained in, not a length rule):
rule lengths stay in latent frames, and the rules that place themselves by length (RIFLEx, YaRN) are applied with the
lengths converted to those positions (``* base_fps / fps``), so RIFLEx's ``L' > N_k`` check and its ``0.9 * 2pi / L'``
are in latent frames at that frame rate.
"""
from __future__ import annotations

import inspect
import math
import types
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...freqs import ScalingRule, rope_freqs, rule_attention_factor
from ...utils.checks import is_int, is_number
from .adapters import (
    Adapter,
    _coords_steps,
    _forward_params,
    _hidden_states,
    _ltx_merge,
    _restore_wan_buffers,
    _wan_tables,
)
from .bands import adjust_bands, ltx_band_base, ltx_bands, merge_bands
from .handle import AXES, RuleHandle

__all__ = ["CosmosStyle", "KandinskyStyle", "ChronoEditStyle", "LTX2VideoStyle", "builtin_rules"]


def _ntk_lambda(rule: ScalingRule, d: int) -> float:
    """The base multiplier an NTK rule (lengths filled in) puts on an axis of rotary dim ``d``."""
    if rule.name == "ntk_base":
        return float(rule.factor) if rule.factor is not None else rule.scale
    s = rule.scale
    return s ** (d / (d - 2)) if d > 2 and s != 1.0 else 1.0


def _scaled_lengths(rule: ScalingRule, step: float) -> ScalingRule:
    """``rule`` with its lengths (``train_len``, ``test_len``, RIFLEx ``N``) multiplied by ``step``."""
    changes = {f: getattr(rule, f) * step for f in ("train_len", "test_len", "N") if getattr(rule, f) is not None}
    return replace(rule, **changes) if changes else rule


# ------------------------------------------------------------------------------------------------- Cosmos
_COSMOS_FORWARD = ["hidden_states", "fps"]
_COSMOS_BASE = 10000.0  # hard-coded in CosmosRotaryPosEmbed.forward
_COSMOS_ATTRS = ("dim_t", "dim_h", "dim_w")
_COSMOS_NTK = ("t_ntk_factor", "h_ntk_factor", "w_ntk_factor")


def _cosmos_bands(d: int, theta: float, device) -> torch.Tensor:
    """Cosmos's float32 bands of one axis, ``1 / theta^(2j/d)``, computed as its forward computes them."""
    return 1.0 / (theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32)[: d // 2] / d))


def _cosmos_tables(rope, sizes, fps, device, bands: Sequence[torch.Tensor], attn: Sequence[float]):
    """cos/sin of a Cosmos rope for ``sizes`` (T, H, W) RoPE positions, with the given per-axis float32 bands."""
    t, h, w = sizes
    seq = torch.arange(max(rope.max_size), device=device, dtype=torch.float32)
    emb_h = torch.outer(seq[:h], bands[1])[None, :, None, :].repeat(t, 1, w, 1)
    emb_w = torch.outer(seq[:w], bands[2])[None, None, :, :].repeat(t, h, 1, 1)
    pos_t = seq[:t] if fps is None else seq[:t] / fps * rope.base_fps
    emb_t = torch.outer(pos_t, bands[0])[:, None, None, :].repeat(1, h, w, 1)
    freqs = torch.cat([emb_t, emb_h, emb_w] * 2, dim=-1).flatten(0, 2).float()
    cos, sin = torch.cos(freqs), torch.sin(freqs)
    if any(a != 1.0 for a in attn):
        fac = torch.cat([torch.full((b.shape[0],), float(a), device=device) for b, a in zip(bands, attn)] * 2)
        cos, sin = cos * fac, sin * fac
    return cos, sin


class CosmosStyle(Adapter):
    """Cosmos (1.0, Predict2 / 2.5): cos/sin computed in ``rope.forward(hidden_states, fps)`` from per-axis NTK
    factors (config ``rope_scale``) and fps-scaled temporal positions; halves layout ``[t, h, w] * 2``."""

    name = "cosmos-style"
    layout = ("`transformer.rope.forward(hidden_states, fps)`: bands of base `10000 * rope_scale^(d/(d-2))` per axis "
              "(built-in NTK, expressed as `ntk_base` rules), temporal positions `i * base_fps / fps`")
    vae = (8, 8)  # Cosmos 1.0's tokenizer; Cosmos 2's pipelines give theirs (4, 8)

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _COSMOS_FORWARD
                and all(is_int(getattr(rope, a, None)) for a in _COSMOS_ATTRS)
                and all(is_number(getattr(rope, a, None)) for a in _COSMOS_NTK)
                and is_number(getattr(rope, "base_fps", None)) and len(getattr(rope, "max_size", ()) or ()) == 3
                and len(getattr(rope, "patch_size", ()) or ()) == 3)

    def patch(self, model):
        return tuple(int(p) for p in model.rope.patch_size)

    def n_components(self, model):
        r = model.rope
        return r.dim_t // 2, r.dim_h // 2, r.dim_w // 2

    @staticmethod
    def dims(rope) -> Tuple[int, int, int]:
        return int(rope.dim_t), int(rope.dim_h), int(rope.dim_w)

    def builtin(self, model) -> Dict[str, ScalingRule]:
        """The built-in per-axis NTK as vispos rules: ``ntk_base`` with the host's factor (``none`` where 1)."""
        rope = model.rope
        out = {}
        for axis, attr in zip(AXES, _COSMOS_NTK):
            lam = float(getattr(rope, attr))
            out[axis] = ScalingRule("none") if lam == 1.0 else ScalingRule("ntk_base", factor=lam)
        return out

    def _verify(self, rope) -> None:
        pt, ph, pw = (int(p) for p in rope.patch_size)
        hs = torch.zeros(1, 1, 3 * pt, 2 * ph, 2 * pw)
        host = [_cosmos_bands(d, _COSMOS_BASE * float(getattr(rope, a)), "cpu")
                for d, a in zip(self.dims(rope), _COSMOS_NTK)]
        with torch.no_grad():
            for fps in (None, 30):
                ref = type(rope).forward(rope, hs, fps=fps)
                got = _cosmos_tables(rope, (3, 2, 2), fps, "cpu", host, (1.0, 1.0, 1.0))
                if not all(torch.equal(a, b) for a, b in zip(got, ref)):
                    raise ValueError(f"{type(rope).__name__} looks Cosmos-style (forward(hidden_states, fps), dim_t/h/w, "
                                     "ntk factors) but its output differs from Cosmos's RoPE: vispos cannot adjust it "
                                     "safely")

    def install(self, handle, model, pipe):
        rope = model.rope
        self._verify(rope)
        sig = inspect.signature(type(rope).forward)

        def post_hook(module, args, kwargs, output):
            call = sig.bind(module, *args, **kwargs)
            call.apply_defaults()
            hs, fps = call.arguments["hidden_states"], call.arguments["fps"]
            _, _, f, h, w = hs.shape
            pt, ph, pw = (int(p) for p in module.patch_size)
            sizes = (f // pt, h // ph, w // pw)
            step = 1.0 if fps is None else float(module.base_fps) / float(fps)
            rules = handle.resolve(sizes)
            dims = self.dims(module)
            host_lam = [float(getattr(module, a)) for a in _COSMOS_NTK]
            if all(r.name == "none" for r in rules):
                for i in range(3):
                    handle.last_bands[AXES[i]] = rope_freqs(dims[i], _COSMOS_BASE * host_lam[i]) * (
                        step if i == 0 else 1.0)
                return None
            dev = hs.device
            bands, attn = [], []
            for i, (d, rule) in enumerate(zip(dims, rules)):
                if rule.name in ("none", "ntk", "ntk_base"):
                    lam = host_lam[i] if rule.name == "none" else _ntk_lambda(rule, d)
                    b = _cosmos_bands(d, _COSMOS_BASE * lam, dev)
                    new64 = rope_freqs(d, _COSMOS_BASE * lam)
                elif rule.name == "riflex":  # RIFLEx lowers one band of the model's own RoPE: on the NTK-scaled bands
                    if i == 0 and step != 1.0:
                        rule = _scaled_lengths(rule, step)
                    base = _COSMOS_BASE * host_lam[i]
                    theta64 = rope_freqs(d, base)
                    new64 = adjust_bands(theta64, rule, base, d)
                    b = merge_bands(_cosmos_bands(d, base, dev), theta64, new64)
                else:  # the rule replaces the built-in NTK: it acts on the unscaled bands
                    if i == 0 and rule.name in ("riflex", "yarn") and step != 1.0:
                        rule = _scaled_lengths(rule, step)
                    theta64 = rope_freqs(d, _COSMOS_BASE)
                    new64 = adjust_bands(theta64, rule, _COSMOS_BASE, d)
                    b = merge_bands(_cosmos_bands(d, _COSMOS_BASE, dev), theta64, new64)
                bands.append(b)
                attn.append(rule_attention_factor(rule))
                handle.last_bands[AXES[i]] = new64 * (step if i == 0 else 1.0)
            if output[0].shape[0] != sizes[0] * sizes[1] * sizes[2]:
                raise RuntimeError(f"{type(module).__name__} returned {output[0].shape[0]} rows for a grid of "
                                   f"{sizes}: a hook inside its forward changed them; vispos rules need the full table")
            cos, sin = _cosmos_tables(module, sizes, fps, dev, bands, attn)
            return cos.to(output[0].dtype), sin.to(output[1].dtype)

        hook = rope.register_forward_hook(post_hook, with_kwargs=True)
        return hook.remove


# ---------------------------------------------------------------------------------------------- Kandinsky
_KANDINSKY_FORWARDS = (["shape", "pos", "scale_factor"], ["pos", "scale_factor"])


def _kandinsky_buffer(rope, i: int) -> str:
    return f"args_{i}" if isinstance(getattr(rope, "args_0", None), torch.Tensor) else f"angles_{i}"


def _kandinsky_freq(d: int, max_period: float, device=None) -> torch.Tensor:
    """Kandinsky's float32 bands of one axis (``exp(-ln(max_period) j / (d/2))``), as its ``get_freqs``."""
    n = d // 2
    return torch.exp(-math.log(max_period) * torch.arange(start=0, end=n, dtype=torch.float32, device=device) / n)


def _kandinsky_table(freq: torch.Tensor, n: int) -> torch.Tensor:
    """Angles of positions ``0..n-1`` (the host's ``outer(arange(max_pos), freq)`` buffer)."""
    return torch.outer(torch.arange(n, dtype=freq.dtype, device=freq.device), freq)


class KandinskyStyle(Adapter):
    """Kandinsky 5 / 6 / 6-SR visual RoPE: angle buffers ``args_i`` / ``angles_i`` gathered at the call's positions
    ``pos`` and divided by the call's per-axis ``scale_factor`` (position interpolation, given by the transformer).
    The text and audio 1-D RoPEs of these transformers are left untouched."""

    name = "kandinsky-style"
    layout = ("`transformer.visual_rope_embeddings.forward([shape,] pos, scale_factor)`: angle buffers per axis "
              "gathered at `pos`, divided by `scale_factor` (built-in PI, expressed as `pi` rules); text / audio 1-D "
              "RoPEs untouched")
    components = ("transformer",)

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "visual_rope_embeddings", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) in _KANDINSKY_FORWARDS
                and len(getattr(rope, "axes_dims", ()) or ()) == 3 and is_number(getattr(rope, "max_period", None))
                and all(isinstance(getattr(rope, _kandinsky_buffer(rope, i), None), torch.Tensor) for i in range(3)))

    def target(self, model, pipe):
        return model.visual_rope_embeddings

    def patch(self, model):
        p = getattr(getattr(model, "config", None), "patch_size", (1, 2, 2))
        return tuple(int(v) for v in p)

    def n_components(self, model):
        return tuple(int(d) // 2 for d in model.visual_rope_embeddings.axes_dims)

    def builtin(self, model, scale_factor=None) -> Dict[str, ScalingRule]:
        """The per-axis position interpolation as ``pi`` rules with ``factor`` (``none`` where 1). Kandinsky 6 / 6-SR
        hold it (``scale_factor`` of the transformer); Kandinsky 5's pipeline chooses it from the resolution at each
        call (``pipe._get_scale_factor(height, width)``), so pass it."""
        if scale_factor is None:
            scale_factor = getattr(getattr(model, "config", None), "scale_factor", None)
        if scale_factor is None:
            raise ValueError(f"{type(model).__name__} does not hold its scale_factor (Kandinsky 5: the pipeline passes "
                             "it at each call, pipe._get_scale_factor(height, width)): pass scale_factor=(t, h, w)")
        if len(scale_factor) != 3 or not all(is_number(s) and s > 0 for s in scale_factor):
            raise ValueError(f"scale_factor must be three positive numbers (t, h, w), got {scale_factor!r}")
        return {axis: ScalingRule("none") if float(s) == 1.0 else ScalingRule("pi", factor=float(s))
                for axis, s in zip(AXES, scale_factor)}

    def install(self, handle, model, pipe):
        rope = model.visual_rope_embeddings
        dims = tuple(int(d) for d in rope.axes_dims)
        names = [_kandinsky_buffer(rope, i) for i in range(3)]
        theta = float(rope.max_period)
        orig = [getattr(rope, n) for n in names]
        for n, d, buf in zip(names, dims, orig):
            ref = _kandinsky_table(_kandinsky_freq(d, theta), buf.shape[0])
            if not torch.equal(ref.to(buf.dtype), buf.detach().cpu()):
                raise ValueError(f"{type(rope).__name__}.{n} ({buf.dtype}) is not outer(arange, exp(-ln({theta:g}) j / "
                                 f"{d // 2})) (float32, cast to {buf.dtype}): the model was changed after construction, "
                                 "vispos cannot adjust it safely")
        for axis, ax in handle.axes.items():
            for r in (ax.rule.rules if hasattr(ax.rule, "rules") else (ax.rule,)):
                if r.name == "yarn" and r.attn_factor is not False:
                    raise ValueError(f"{type(rope).__name__} builds cos/sin inside its forward from angle buffers: "
                                     f"YaRN's attention factor cannot be applied there ({axis} axis); pass "
                                     "attn_factor=False")
        sig = inspect.signature(type(rope).forward)

        def pre_hook(module, args, kwargs):
            call = sig.bind(module, *args, **kwargs)
            call.apply_defaults()
            a = dict(call.arguments)
            a.pop(next(iter(sig.parameters)))  # self
            pos, sf = a["pos"], a["scale_factor"]
            sizes = [int(p.max().item()) + 1 if p.numel() else 0 for p in pos]
            rules = handle.resolve(sizes)
            new_sf = [float(s) if isinstance(s, torch.Tensor) else s for s in sf]
            for i, (n, d, r) in enumerate(zip(names, dims, rules)):
                cur = getattr(module, n)
                host = orig[i] if (orig[i].dtype, orig[i].device) == (cur.dtype, cur.device) else orig[i].to(
                    device=cur.device, dtype=cur.dtype)
                length = max(host.shape[0], sizes[i])
                theta64 = rope_freqs(d, theta)
                if r.name in ("none", "pi"):
                    if r.name == "pi":  # the built-in interpolation's own form: the host's angles / factor
                        new_sf[i] = float(r.factor) if r.factor is not None else r.scale
                    table = host if length == host.shape[0] else _kandinsky_table(
                        _kandinsky_freq(d, theta, cur.device), length).to(cur.dtype)
                    handle.last_bands[AXES[i]] = theta64 / float(new_sf[i])
                elif r.name == "riflex":  # one band of the model's own RoPE lowered: the interpolation stays
                    own64 = theta64 / float(new_sf[i])
                    new64 = adjust_bands(own64, r, theta, d)
                    changed = (new64 != own64).to(cur.device)
                    host_freq = _kandinsky_freq(d, theta, cur.device)
                    # the host divides the gathered angles by the factor: band k's frequency times it, the rest kept
                    freq = torch.where(changed, (new64 * float(new_sf[i])).to(device=cur.device, dtype=torch.float32),
                                       host_freq)
                    table = host if not bool(changed.any()) and length == host.shape[0] else _kandinsky_table(
                        freq, length).to(cur.dtype)
                    handle.last_bands[AXES[i]] = new64
                else:  # the rule replaces the call's interpolation on this axis
                    new64 = adjust_bands(theta64, r, theta, d)
                    freq = merge_bands(_kandinsky_freq(d, theta, cur.device), theta64, new64)
                    table = _kandinsky_table(freq, length).to(cur.dtype)
                    new_sf[i] = 1.0
                    handle.last_bands[AXES[i]] = new64
                setattr(module, n, table)
            a["scale_factor"] = tuple(new_sf)
            return (), a

        hook = rope.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def undo():
            hook.remove()
            for n, buf in zip(names, orig):
                cur = getattr(rope, n)
                setattr(rope, n, buf if (cur.dtype, cur.device) == (buf.dtype, buf.device)
                        else buf.to(device=cur.device, dtype=cur.dtype))

        return undo


# --------------------------------------------------------------------------------------------- ChronoEdit
def _chrono_dims(rope) -> Tuple[int, int, int]:
    """(t, h, w) rotary dims ChronoEdit builds its buffers with."""
    head = int(rope.attention_head_dim)
    h = w = 2 * (head // 6)
    return head - h - w, h, w


def _chrono_split(rope) -> Tuple[int, int, int]:
    """(t, h, w) column counts its forward splits the buffers into."""
    head = int(rope.attention_head_dim)
    return head - 2 * (head // 3), head // 3, head // 3


class ChronoEditStyle(Adapter):
    """ChronoEdit: Wan-style ``freqs_cos`` / ``freqs_sin`` buffers with the axis dims derived from
    ``attention_head_dim``; a two-latent-frame call (input and edited image) places its frames at temporal positions
    0 and ``temporal_skip_len - 1``."""

    name = "chronoedit-style"
    layout = ("`transformer.rope` holds buffers `freqs_cos`/`freqs_sin` (dims from `attention_head_dim`); two latent "
              "frames sit at positions 0 and `temporal_skip_len - 1`")

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == ["hidden_states"]
                and all(isinstance(getattr(rope, b, None), torch.Tensor) for b in ("freqs_cos", "freqs_sin"))
                and all(is_int(getattr(rope, a, None)) for a in ("attention_head_dim", "max_seq_len",
                                                                  "temporal_skip_len"))
                and len(getattr(rope, "patch_size", ()) or ()) == 3 and not hasattr(rope, "t_dim"))

    def patch(self, model):
        return tuple(int(p) for p in model.rope.patch_size)

    def n_components(self, model):
        return tuple(d // 2 for d in _chrono_dims(model.rope))

    def positions(self, model, axis, latent):
        # two latent frames are the image pair at positions 0 and temporal_skip_len - 1: that is their extent
        if axis == 0 and latent == 2:
            return float(model.rope.temporal_skip_len)
        return super().positions(model, axis, latent)

    def check(self, model) -> None:
        rope = model.rope
        if _chrono_split(rope) != _chrono_dims(rope):
            raise ValueError(
                f"{type(rope).__name__} with attention_head_dim {rope.attention_head_dim} builds its tables with axis "
                f"dims {_chrono_dims(rope)} but its forward splits them at {_chrono_split(rope)}: its axes overlap "
                "(head dims that are a multiple of 6 do not), so no per-axis rule is well defined")

    def install(self, handle, model, pipe):
        self.check(model)
        rope = model.rope
        dims = types.SimpleNamespace(**dict(zip(("t_dim", "h_dim", "w_dim"), _chrono_dims(rope))))
        orig_cos, orig_sin, orig_len = rope.freqs_cos, rope.freqs_sin, int(rope.max_seq_len)
        theta = 10000.0  # ChronoEditTransformer3DModel builds its rope with the default theta; checked below
        none = [ScalingRule("none")] * 3
        check_cos, check_sin = _wan_tables(dims, none, orig_len, theta)
        if not (orig_cos.shape == check_cos.shape
                and torch.equal(check_cos.to(orig_cos.dtype), orig_cos.detach().cpu())
                and torch.equal(check_sin.to(orig_sin.dtype), orig_sin.detach().cpu())):
            raise ValueError(f"{type(rope).__name__}: its {orig_cos.dtype} buffers freqs_cos/freqs_sin do not match RoPE "
                             f"base {theta:g} with axis dims {_chrono_dims(rope)}: vispos cannot rebuild them safely")
        skip = int(rope.temporal_skip_len)
        state = {"key": None}

        def pre_hook(module, args, kwargs):
            _, _, f, h, w = _hidden_states(args, kwargs).shape
            p_t, p_h, p_w = module.patch_size
            # two frames: the forward reads rows 0 and skip - 1, so the temporal extent is skip positions
            sizes = [skip if f == 2 else f // p_t, h // p_h, w // p_w]
            rules = handle.resolve(sizes)
            length = max(orig_len, *sizes)
            cur = module.freqs_cos
            key = (tuple(rules), length, cur.dtype, cur.device)
            if key == state["key"]:
                return None
            if length == orig_len and all(r.name == "none" for r in rules):
                cos, sin = orig_cos, orig_sin
                for i, d in enumerate(_chrono_dims(module)):
                    handle.last_bands[AXES[i]] = rope_freqs(d, theta)
            else:
                cos, sin = _wan_tables(dims, rules, length, theta, handle)
            module.freqs_cos = cos.to(device=cur.device, dtype=cur.dtype)
            module.freqs_sin = sin.to(device=cur.device, dtype=module.freqs_sin.dtype)
            state["key"] = key
            return None

        hook = rope.register_forward_pre_hook(pre_hook, with_kwargs=True)

        return _restore_wan_buffers(rope, hook, orig_cos, orig_sin)


# ------------------------------------------------------------------------------------------ LTX-2 video
_LTX2_FORWARD = ["coords", "device"]


def _ltx2_grid(rope, coords: torch.Tensor, device) -> torch.Tensor:
    """LTX-2's normalised grid ``(B, N, dims)``: patch midpoints over the base extent, as its forward builds it."""
    if coords.ndim == 4:
        start, end = coords.chunk(2, dim=-1)
        coords = ((start + end) / 2.0).squeeze(-1)
    maxp = (rope.base_num_frames, rope.base_height, rope.base_width)
    return torch.stack([coords[:, i] / maxp[i] for i in range(coords.shape[1])], dim=-1).to(device)


def _ltx2_tables(rope, grid: torch.Tensor, device, rules: Optional[Sequence[ScalingRule]] = None,
                 steps: Optional[List[float]] = None, handle: Optional[RuleHandle] = None):
    """LTX-2's video cos/sin of ``grid``, the rules applied per axis (per-position bands ``2 omega step``)."""
    n_dims = grid.shape[-1]
    n = rope.dim // (2 * n_dims)
    fd = torch.float64 if rope.double_precision else torch.float32
    freqs = (torch.pow(rope.theta, torch.linspace(0.0, 1.0, n, dtype=fd, device=device)) * torch.pi / 2.0).to(
        torch.float32)
    attn = [1.0] * n_dims
    if rules is not None:
        per_axis = []
        for a in range(n_dims):
            theta64 = ltx_bands(rope.theta, 2 * n_dims * n, steps[a])
            if rules[a].name == "none":
                per_axis.append(freqs)
                if handle is not None:
                    handle.last_bands[AXES[a]] = theta64
                continue
            if n < 2:
                raise ValueError(f"{type(rope).__name__} with dim {rope.dim} has a single band per axis: rules need 2")
            base_eff = ltx_band_base(rope.theta, n)
            new64 = adjust_bands(theta64, rules[a], base_eff, 2 * n, canonical=rope_freqs(2 * n, base_eff))
            if handle is not None:
                handle.last_bands[AXES[a]] = new64
            per_axis.append(_ltx_merge(freqs, theta64, new64, steps[a]))
            attn[a] = rule_attention_factor(rules[a])
        freqs = torch.stack(per_axis, dim=0)  # (dims, n): broadcasts as the host's (n,) bands do
    ang = (grid.unsqueeze(-1) * 2 - 1) * freqs
    ang = ang.transpose(-1, -2).flatten(2)
    cos, sin = ang.cos(), ang.sin()
    if any(f != 1.0 for f in attn):
        fac = torch.tensor(attn, dtype=cos.dtype, device=device).repeat(n)
        cos, sin = cos * fac, sin * fac
    n_elems = 2 * n_dims
    if rope.rope_type == "interleaved":
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        if rope.dim % n_elems != 0:
            pad = rope.dim % n_elems
            cos = torch.cat([torch.ones_like(cos[:, :, :pad]), cos], dim=-1)
            sin = torch.cat([torch.zeros_like(cos[:, :, :pad]), sin], dim=-1)
        return cos, sin
    pad = rope.dim // 2 - cos.shape[-1]
    if pad != 0:
        cos = torch.cat([torch.ones_like(cos[:, :, :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[:, :, :pad]), sin], dim=-1)
    b, t = cos.shape[0], cos.shape[1]
    cos = cos.reshape(b, t, rope.num_attention_heads, -1).swapaxes(1, 2)
    sin = sin.reshape(b, t, rope.num_attention_heads, -1).swapaxes(1, 2)
    return cos, sin


class LTX2VideoStyle(Adapter):
    """LTX-2's video stream: ``transformer.rope.forward(coords, device)`` on patch-boundary coordinates (frames in
    seconds, pixels), LTX-style bands. The audio stream (``audio_rope``) and the audio-video cross-attention RoPEs
    (``cross_attn_rope``, ``cross_attn_audio_rope``) are left unchanged."""

    name = "ltx2-video"
    layout = ("`transformer.rope.forward(coords, device)` (modality video): LTX bands on patch-midpoint coordinates; "
              "the audio and cross-attention RoPEs are left unchanged")
    vae = (8, 32)
    components = ("transformer",)

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _LTX2_FORWARD
                and getattr(rope, "modality", None) == "video" and callable(getattr(rope, "prepare_video_coords", None))
                and all(is_int(getattr(rope, a, None)) for a in ("dim", "patch_size", "patch_size_t",
                                                                  "num_attention_heads"))
                and all(is_number(getattr(rope, a, None)) for a in ("theta", "base_num_frames", "base_height",
                                                                     "base_width"))
                and getattr(rope, "rope_type", None) in ("interleaved", "split"))

    def patch(self, model):
        r = model.rope
        return int(r.patch_size_t), int(r.patch_size), int(r.patch_size)

    def n_components(self, model):
        n = model.rope.dim // 6
        return n, n, n

    def _verify(self, rope) -> None:
        with torch.no_grad():
            coords = rope.prepare_video_coords(1, 3, 2 * rope.patch_size, 2 * rope.patch_size, "cpu", fps=24.0)
            ref = type(rope).forward(rope, coords, device="cpu")
            got = _ltx2_tables(rope, _ltx2_grid(rope, coords, "cpu"), "cpu")
        if not all(torch.equal(a, b) for a, b in zip(got, ref)):
            raise ValueError(f"{type(rope).__name__} looks like LTX-2's video RoPE (forward(coords, device), modality "
                             "video) but its output differs from LTX-2's formula: vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        rope = model.rope
        if rope.dim // 6 < 2 and any(ax.active for ax in handle.axes.values()):
            raise ValueError(f"{type(rope).__name__} with dim {rope.dim} has a single band per axis: rules need 2 "
                             "(an inner dim of at least 12)")
        self._verify(rope)
        sig = inspect.signature(type(rope).forward)

        def post_hook(module, args, kwargs, output):
            call = sig.bind(module, *args, **kwargs)
            call.apply_defaults()
            coords = call.arguments["coords"]
            device = call.arguments["device"] or coords.device
            if coords.shape[1] != 3:
                raise ValueError(f"vispos rules on {type(module).__name__} need 3 coordinate axes (frame, height, "
                                 f"width), got {coords.shape[1]}")
            grid = _ltx2_grid(module, coords, device)
            steps, sizes = _coords_steps(grid)
            rules = handle.resolve(sizes)
            if all(r.name == "none" for r in rules):
                for a in range(3):
                    handle.last_bands[AXES[a]] = ltx_bands(module.theta, module.dim, steps[a])
                return None
            return _ltx2_tables(module, grid, device, rules, steps, handle)

        hook = rope.register_forward_hook(post_hook, with_kwargs=True)
        return hook.remove


# ------------------------------------------------------------------------------------------------ built-in
def builtin_rules(obj, scale_factor=None) -> Dict[str, ScalingRule]:
    """The RoPE scaling a model has built in, as vispos rules per axis (``time``, ``height``, ``width``).

    Cosmos: its config's ``rope_scale`` as ``ntk_base`` rules (``factor = rope_scale^(d/(d-2))``, the factor its
    forward uses). Kandinsky 5 / 6 / 6-SR: the per-axis ``scale_factor`` as ``pi`` rules with ``factor``
    (Kandinsky 6 holds it; Kandinsky 5's pipeline picks it per resolution, so pass ``scale_factor=``). ``none`` where
    the built-in scaling is 1. Pass them back (``apply_rule(m, time=r["time"], space=(r["height"], r["width"]))``)
    to reproduce the model bit-exactly, or replace any of them with another rule. Other models raise ``ValueError``.
    """
    from . import detect_host

    adapter, model, _ = detect_host(obj)
    if isinstance(adapter, KandinskyStyle):
        return adapter.builtin(model, scale_factor)
    if scale_factor is not None:
        raise ValueError(f"scale_factor= is a Kandinsky option; this is a {adapter.name} model")
    if isinstance(adapter, CosmosStyle):
        return adapter.builtin(model)
    raise ValueError(f"{type(model).__name__} ({adapter.name}) has no built-in RoPE scaling to express: its rules "
                     "start from its own bands (every axis 'none')")
