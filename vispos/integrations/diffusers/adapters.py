"""The table of diffusers RoPE layouts: one adapter per layout, each holding all of its model's facts.

An adapter is matched by the *structure* of the object (the rope module's forward signature and attributes, or the
pipeline method that builds RoPE), never by class identity, so a diffusers class that copies a supported RoPE
(``WanAnimateTransformer3DModel``, ``SanaVideoTransformer3DModel``, ``HunyuanVideo15Transformer3DModel``, ...) is
served with no new code. Before it changes anything an adapter checks that its formula reproduces the host's own
RoPE bit-exactly (a small probe through the class forward, or the buffers as stored, in their own dtype), so a
look-alike that computes something else is refused with the reason.

Install and undo go through torch forward pre-/post-hooks on the rope module (never by replacing an instance's
``forward``): diffusers' own hooks (``diffusers.hooks.HookRegistry``, which wrap ``forward``) keep running while a
rule is active, and hooks registered after the rule survive :meth:`RuleHandle.remove`.
"""
from __future__ import annotations

import inspect
import math
import types
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...freqs import ScalingRule, rope_freqs, rule_attention_factor
from ...utils.checks import is_int, is_number
from .bands import adjust_bands, interleaved_cos_sin, ltx_band_base, ltx_bands, merge_bands, standard_bands
from .handle import AXES, Axis, RuleHandle, TimeAware

__all__ = ["Adapter", "Released", "ADAPTERS", "find_adapter"]


@dataclass(frozen=True)
class Released:
    """The temporal RoPE of a released checkpoint (for ``vispos riflex``; lengths in latent frames)."""

    base: float
    dim: int
    train: int
    vae_t: int
    p_t: int
    source: str
    bands: str = "standard"  # "standard" (b^(-2j/d)) or "ltx"
    base_num_frames: Optional[int] = None


def _restore_wan_buffers(rope, hook, orig_cos, orig_sin):
    """The undo of a Wan-style adapter: remove its hook and put the original ``freqs_cos`` / ``freqs_sin`` back
    (the same tensors, or cast to where the model has moved since)."""
    def undo():
        hook.remove()
        cur, cur_s = rope.freqs_cos, rope.freqs_sin
        same = cur.dtype == orig_cos.dtype and cur.device == orig_cos.device
        rope.freqs_cos = orig_cos if same else orig_cos.to(device=cur.device, dtype=cur.dtype)
        rope.freqs_sin = orig_sin if same else orig_sin.to(device=cur_s.device, dtype=cur_s.dtype)

    return undo


def _hooks_undo(hooks, handle):
    """The undo of an adapter that acts only through torch hooks: remove them (last first), forget the timestep."""
    def undo():
        for h in reversed(hooks):
            h.remove()
        handle.sigma = None

    return undo


def _forward_params(module) -> List[str]:
    """Parameter names of the class's ``forward`` (without ``self``): the structure an adapter matches."""
    try:
        return list(inspect.signature(type(module).forward).parameters)[1:]
    except (TypeError, ValueError):
        return []


def _hidden_states(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class Adapter:
    """One RoPE layout. Subclasses fill in the facts and the hooks."""

    name: str = ""
    layout: str = ""  # where the RoPE lives, one line
    axes: Tuple[str, str, str] = AXES  # names of the three RoPE axes
    vae: Tuple[int, int] = (4, 8)  # default (temporal, spatial) VAE compression
    components: Tuple[str, ...] = ("transformer", "transformer_2")  # pipeline attributes that take the rule
    on_pipeline = False  # the rule is installed on the pipeline (RoPE built there), not on the transformer
    bare_hint = ""  # for an on-pipeline adapter: what to do with a bare transformer (appended to the error)
    released: Dict[str, Released] = {}

    def match(self, model, pipe) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def patch(self, model) -> Tuple[int, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def n_components(self, model) -> Tuple[int, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def positions(self, model, axis: int, latent: Optional[int]) -> Optional[float]:
        """RoPE positions of ``latent`` latent frames / pixels on ``axis`` (the host's patchify)."""
        if latent is None:
            return None
        p = self.patch(model)[axis]
        return float(latent // p) if p > 1 else float(latent)

    def check(self, model) -> None:
        """Raise ``ValueError`` naming why a structurally matching ``model`` cannot take a rule (default: none)."""

    def target(self, model, pipe):
        return pipe if self.on_pipeline else model.rope

    def install(self, handle: RuleHandle, model, pipe) -> Callable[[], None]:  # pragma: no cover - abstract
        """Check the host, install the rule, return the undo."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ Hunyuan-style
def _grid_cos_sin(rope, grids, device, rules: Optional[Sequence[ScalingRule]], fd: torch.dtype, handle=None,
                  keep=None):
    """cos/sin of a Hunyuan-style rope for the (T, H, W) grid of 1-D float32 positions ``grids``; ``keep`` = the
    host's output, whose columns are kept on every axis the rules leave alone."""
    grid = torch.stack(torch.meshgrid(*grids, indexing="ij"), dim=0)
    cos_l, sin_l, start = [], [], 0
    for i in range(3):
        d = int(rope.rope_dim[i])
        rule = rules[i] if rules is not None else ScalingRule("none")
        host = 1.0 / (float(rope.theta) ** (torch.arange(0, d, 2, dtype=fd, device=device)[: d // 2] / d))
        freqs, new64 = standard_bands(host, rule, float(rope.theta), d)
        attn = rule_attention_factor(rule)
        if handle is not None:
            handle.last_bands[AXES[i]] = new64
        if keep is not None and freqs is host and attn == 1.0:
            c, s = keep[0][:, start:start + d], keep[1][:, start:start + d]
        else:
            c, s = interleaved_cos_sin(grid[i].reshape(-1), freqs, attn)
        cos_l.append(c)
        sin_l.append(s)
        start += d
    return torch.cat(cos_l, dim=1), torch.cat(sin_l, dim=1)


_FRAME_INDEX_FORWARD = ["frame_indices", "height", "width", "device"]


def _arange(n: int, device) -> torch.Tensor:
    return torch.arange(0, n, device=device, dtype=torch.float32)


def _hunyuan_call(module, args, kwargs):
    """``(positions per axis, grid lengths for the rules)`` of one call of a Hunyuan-style rope. Explicit frame
    indices (FramePack) are the temporal positions; their length for the rules is ``max index + 1``."""
    p = int(module.patch_size)
    if _forward_params(module) == ["hidden_states"]:
        _, _, f, h, w = _hidden_states(args, kwargs).shape
        dev = _hidden_states(args, kwargs).device
        sizes = (f // int(module.patch_size_t), h // p, w // p)
        return [_arange(n, dev) for n in sizes], sizes
    call = dict(zip(_FRAME_INDEX_FORWARD, args), **kwargs)
    idx = call["frame_indices"].to(device=call["device"], dtype=torch.float32)
    h, w = call["height"] // p, call["width"] // p
    t_len = int(idx.max().item()) + 1 if idx.numel() else 0
    return [idx, _arange(h, call["device"]), _arange(w, call["device"])], (t_len, h, w)


class HunyuanStyle(Adapter):
    """RoPE computed in ``rope.forward`` from ``theta`` and ``rope_dim`` on integer grids (HunyuanVideo, its 1.5,
    Motif-Video), or with explicit frame indices ``forward(frame_indices, height, width, device)`` (FramePack)."""

    name = "hunyuan-style"
    layout = ("`transformer.rope.forward(hidden_states)` (or `(frame_indices, height, width, device)`: explicit "
              "frame positions) computes cos/sin from `theta`, `rope_dim` (T, H, W), `patch_size`, `patch_size_t`")
    released = {"hunyuanvideo": Released(256.0, 16, 33, 4, 1,
                                         "rope_axes_dim (16, 56, 56), rope_theta 256; trained on 129 frames")}

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module)
                and _forward_params(rope) in (["hidden_states"], _FRAME_INDEX_FORWARD)
                and is_int(getattr(rope, "patch_size", None)) and is_int(getattr(rope, "patch_size_t", None))
                and is_number(getattr(rope, "theta", None)) and len(getattr(rope, "rope_dim", ()) or ()) == 3
                and not hasattr(rope, "freqs_cos"))

    def patch(self, model):
        r = model.rope
        return int(r.patch_size_t), int(r.patch_size), int(r.patch_size)

    def n_components(self, model):
        return tuple(int(d) // 2 for d in model.rope.rope_dim)

    def _host_dtype(self, rope) -> torch.dtype:
        """The dtype the host builds its bands in, found by reproducing its forward on a probe grid."""
        p, pt = int(rope.patch_size), int(rope.patch_size_t)
        if _forward_params(rope) == ["hidden_states"]:
            args = (torch.zeros(1, 1, 24 * pt, 3 * p, 3 * p),)
        else:
            args = (torch.arange(24), 3 * p, 3 * p, torch.device("cpu"))
        with torch.no_grad():
            ref = type(rope).forward(rope, *args)
            grids, _ = _hunyuan_call(rope, args, {})
            for fd in (torch.float32, torch.float64):
                got = _grid_cos_sin(rope, grids, "cpu", None, fd)
                if all(torch.equal(a, b) for a, b in zip(got, ref)):
                    return fd
        raise ValueError(
            f"{type(rope).__name__} looks Hunyuan-style (forward(hidden_states), theta, rope_dim) but its output is "
            "not cos/sin of b^(-2j/d) bands on integer grids (float32 or float64): vispos cannot adjust it safely"
        )

    def install(self, handle, model, pipe):
        rope = model.rope
        fd = self._host_dtype(rope)

        def post_hook(module, args, kwargs, output):
            grids, sizes = _hunyuan_call(module, args, kwargs)
            rules = handle.resolve(sizes)
            if sum(1 for r in rules if r.name != "none") == 0:
                for i in range(3):
                    handle.last_bands[AXES[i]] = rope_freqs(int(module.rope_dim[i]), float(module.theta))
                return None
            n = grids[0].numel() * grids[1].numel() * grids[2].numel()
            if output[0].shape[0] != n:
                raise RuntimeError(
                    f"{type(module).__name__} returned {output[0].shape[0]} rows for a grid of {n} positions: a "
                    "hook inside its forward (context parallelism?) changed them; vispos rules need the full table"
                )
            cos, sin = _grid_cos_sin(module, grids, grids[1].device, rules, fd, handle, keep=output)
            return cos.to(output[0].dtype), sin.to(output[1].dtype)

        hook = rope.register_forward_hook(post_hook, with_kwargs=True)
        return hook.remove


# --------------------------------------------------------------------------------------------- Wan-style
def _wan_dtype() -> torch.dtype:
    return torch.float32 if torch.backends.mps.is_available() else torch.float64


def _wan_tables(rope, rules: Sequence[ScalingRule], length: int, theta: float, handle=None):
    fd = _wan_dtype()
    cos_l, sin_l = [], []
    for i, d in enumerate((rope.t_dim, rope.h_dim, rope.w_dim)):
        host = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=fd)[: d // 2] / d))
        freqs, new64 = standard_bands(host, rules[i], theta, d)
        if handle is not None:
            handle.last_bands[AXES[i]] = new64
        c, s = interleaved_cos_sin(torch.arange(length), freqs, rule_attention_factor(rules[i]))
        cos_l.append(c)
        sin_l.append(s)
    return torch.cat(cos_l, dim=1), torch.cat(sin_l, dim=1)


class WanStyle(Adapter):
    """Precomputed ``freqs_cos`` / ``freqs_sin`` buffers read by ``rope.forward(hidden_states)`` (Wan 2.1 / 2.2,
    VACE, SkyReels-V2, WanAnimate, SanaVideo)."""

    name = "wan-style"
    layout = ("`transformer.rope` holds buffers `freqs_cos`/`freqs_sin` for positions < `max_seq_len`, split "
              "(`t_dim`, `h_dim`, `w_dim`)")
    released = {
        "wan": Released(10000.0, 44, 21, 4, 1, "attention_head_dim 128 -> t_dim 44; trained on 81 frames"),
        "skyreels-v2": Released(10000.0, 44, 21, 4, 1,
                                "attention_head_dim 128 -> t_dim 44; trained on 81 frames (97 for some checkpoints)"),
    }

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == ["hidden_states"]
                and all(isinstance(getattr(rope, b, None), torch.Tensor) for b in ("freqs_cos", "freqs_sin"))
                and all(is_int(getattr(rope, a, None)) for a in ("t_dim", "h_dim", "w_dim", "max_seq_len"))
                and len(getattr(rope, "patch_size", ()) or ()) == 3)

    def patch(self, model):
        p_t, p_h, p_w = model.rope.patch_size
        return int(p_t), int(p_h), int(p_w)

    def n_components(self, model):
        r = model.rope
        return r.t_dim // 2, r.h_dim // 2, r.w_dim // 2

    def install(self, handle, model, pipe):
        rope = model.rope
        orig_cos, orig_sin, orig_len = rope.freqs_cos, rope.freqs_sin, int(rope.max_seq_len)
        theta = float(getattr(rope, "theta", 10000.0))
        none = [ScalingRule("none")] * 3
        check_cos, check_sin = _wan_tables(rope, none, orig_len, theta)
        dtype = orig_cos.dtype
        # compare in the buffers' own dtype: a model cast with .to(bfloat16) holds the float32 tables, cast
        if not (orig_cos.shape == check_cos.shape
                and torch.equal(check_cos.to(dtype), orig_cos.detach().cpu())
                and torch.equal(check_sin.to(orig_sin.dtype), orig_sin.detach().cpu())):
            raise ValueError(
                f"{type(rope).__name__}: its {dtype} buffers freqs_cos/freqs_sin do not match RoPE base {theta} "
                f"(diffusers' float32 tables cast to {dtype}); the model was changed after construction, so vispos "
                "cannot rebuild them safely"
            )
        state = {"key": None}

        def pre_hook(module, args, kwargs):
            hs = _hidden_states(args, kwargs)
            _, _, f, h, w = hs.shape
            p_t, p_h, p_w = module.patch_size
            sizes = [f // p_t, h // p_h, w // p_w]
            rules = handle.resolve(sizes)
            length = max(orig_len, *sizes)
            cur = module.freqs_cos
            key = (tuple(rules), length, cur.dtype, cur.device)
            if key == state["key"]:
                return None
            if length == orig_len and all(r.name == "none" for r in rules):
                cos, sin = orig_cos, orig_sin
                for i in range(3):
                    handle.last_bands[AXES[i]] = rope_freqs((module.t_dim, module.h_dim, module.w_dim)[i], theta)
            else:
                cos, sin = _wan_tables(module, rules, length, theta, handle)
            module.freqs_cos = cos.to(device=cur.device, dtype=cur.dtype)
            module.freqs_sin = sin.to(device=cur.device, dtype=module.freqs_sin.dtype)
            state["key"] = key
            return None

        hook = rope.register_forward_pre_hook(pre_hook, with_kwargs=True)

        return _restore_wan_buffers(rope, hook, orig_cos, orig_sin)


# ----------------------------------------------------------------------------------- Helios-style (bands)
_BAND_BUFFERS = ("freqs_base_t", "freqs_base_y", "freqs_base_x")


class BandBufferStyle(Adapter):
    """Band buffers ``freqs_base_t/_y/_x`` read by ``rope.forward(frame_indices, height, width, device)``: explicit
    frame indices as temporal positions (Helios)."""

    name = "band-buffers"
    layout = ("`transformer.rope.forward(frame_indices, height, width, device)` reads band buffers "
              "`freqs_base_t`/`_y`/`_x`; frame indices are the temporal positions")

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _FRAME_INDEX_FORWARD
                and all(isinstance(getattr(rope, b, None), torch.Tensor) for b in _BAND_BUFFERS)
                and all(is_int(getattr(rope, a, None)) for a in ("DT", "DY", "DX"))
                and is_number(getattr(rope, "theta", None)))

    def patch(self, model):
        p = getattr(getattr(model, "config", None), "patch_size", (1, 1, 1))
        return tuple(int(v) for v in p) if len(p) == 3 else (1, int(p[0]), int(p[0]))

    def n_components(self, model):
        r = model.rope
        return r.DT // 2, r.DY // 2, r.DX // 2

    def install(self, handle, model, pipe):
        rope = model.rope
        theta = float(rope.theta)
        dims = (int(rope.DT), int(rope.DY), int(rope.DX))
        orig = [getattr(rope, b) for b in _BAND_BUFFERS]
        for b, d, buf in zip(_BAND_BUFFERS, dims, orig):
            ref = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32)[: d // 2] / d))
            if not torch.equal(ref.to(buf.dtype), buf.detach().cpu()):
                raise ValueError(f"{type(rope).__name__}.{b} ({buf.dtype}) is not theta^(-2j/d) for theta {theta:g}, "
                                 f"d {d} (float32, cast to {buf.dtype}): the model was changed, vispos cannot adjust it")

        for axis, ax in handle.axes.items():
            if ax.rule.name == "yarn" and ax.rule.attn_factor is not False:
                raise ValueError(f"{type(rope).__name__} builds cos/sin inside its forward from band buffers: YaRN's "
                                 f"attention factor cannot be applied there ({axis} axis); pass attn_factor=False")

        def pre_hook(module, args, kwargs):
            call = dict(zip(_FRAME_INDEX_FORWARD, args), **kwargs)
            idx = call["frame_indices"]
            sizes = (int(idx.max().item()) + 1 if idx.numel() else 0, int(call["height"]), int(call["width"]))
            rules = handle.resolve(sizes)
            for i, (b, d) in enumerate(zip(_BAND_BUFFERS, dims)):
                cur = getattr(module, b)
                host = orig[i]
                if (host.dtype, host.device) != (cur.dtype, cur.device):  # the module was cast / moved since
                    host = host.to(device=cur.device, dtype=cur.dtype)
                freqs, new64 = standard_bands(host, rules[i], theta, d)
                handle.last_bands[AXES[i]] = new64
                setattr(module, b, freqs)
            return None

        hook = rope.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def undo():
            hook.remove()
            for b, buf in zip(_BAND_BUFFERS, orig):
                cur = getattr(rope, b)
                setattr(rope, b, buf if (cur.dtype, cur.device) == (buf.dtype, buf.device)
                        else buf.to(device=cur.device, dtype=cur.dtype))

        return undo


# --------------------------------------------------------------------------------------------- LTX-style
def _ltx_step(ris, axis: int, rope) -> float:
    if ris is None:
        return 1.0
    v = ris[axis]
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"LTX rope_interpolation_scale[{axis}] must be a scalar, got shape {tuple(v.shape)}")
        v = float(v)
    patch = rope.patch_size_t if axis == 0 else rope.patch_size
    base = (rope.base_num_frames, rope.base_height, rope.base_width)[axis]
    return float(v) * patch / base


def _ltx_merge(freqs: torch.Tensor, theta64: torch.Tensor, new64: torch.Tensor, step: float) -> torch.Tensor:
    """LTX omegas (lowest first, float32): the host's where unchanged, ``new / (2 step)`` elsewhere."""
    changed = (new64 != theta64).flip(0).to(freqs.device)
    if not bool(changed.any()):
        return freqs
    omega_new = (new64 / (2.0 * step)).flip(0).to(device=freqs.device, dtype=freqs.dtype)
    return torch.where(changed, omega_new, freqs)


def _coords_grid(rope, video_coords: torch.Tensor) -> torch.Tensor:
    """LTX's normalised grid ``(B, N, 3)`` from explicit ``video_coords`` ``(B, 3, N)``, as its forward builds it."""
    return torch.stack([video_coords[:, 0] / rope.base_num_frames, video_coords[:, 1] / rope.base_height,
                        video_coords[:, 2] / rope.base_width], dim=-1)


def _coords_steps(grid: torch.Tensor) -> Tuple[List[float], List[int]]:
    """Per axis of explicit coordinates: the step of one position (the median gap between distinct coordinates,
    so a clamped first frame does not set it) and the number of positions (the distinct coordinates, or the span
    in steps when gaps make that longer)."""
    steps, sizes = [], []
    for a in range(3):
        vals = torch.unique(grid[..., a].detach().to(torch.float64).cpu())
        if vals.numel() < 2:
            steps.append(1.0)
            sizes.append(1)
            continue
        step = float(torch.median(vals[1:] - vals[:-1]))
        steps.append(step)
        sizes.append(max(vals.numel(), int(round(float(vals[-1] - vals[0]) / step)) + 1))
    return steps, sizes


def _ltx_tables(rope, hidden_states, num_frames, height, width, ris, rules: Sequence[ScalingRule], handle=None,
                grid=None, steps=None):
    """LTX's cos/sin with the rules applied: on its regular grid (``rope_interpolation_scale``), or on an explicit
    normalised ``grid`` with per-axis position ``steps`` (``video_coords``)."""
    dev = hidden_states.device
    if grid is None:
        grid = rope._prepare_video_coords(hidden_states.size(0), num_frames, height, width,
                                          rope_interpolation_scale=ris, device=dev)
        steps = [_ltx_step(ris, a, rope) for a in range(3)]
    n = rope.dim // 6
    freqs = rope.theta ** torch.linspace(math.log(1.0, rope.theta), math.log(rope.theta, rope.theta), n,
                                         device=dev, dtype=torch.float32)
    freqs = freqs * math.pi / 2.0
    per_axis, attn = [], []
    for a in range(3):
        step = steps[a]
        theta64 = ltx_bands(rope.theta, rope.dim, step)
        if rules[a].name == "none":
            per_axis.append(freqs)
            if handle is not None:
                handle.last_bands[AXES[a]] = theta64
            attn.append(1.0)
            continue
        if n < 2:
            raise ValueError("LTX-Video with dim // 6 == 1 has a single band per axis: rules need at least 2")
        base_eff = ltx_band_base(rope.theta, n)
        new64 = adjust_bands(theta64, rules[a], base_eff, 2 * n, canonical=rope_freqs(2 * n, base_eff))
        if handle is not None:
            handle.last_bands[AXES[a]] = new64
        per_axis.append(_ltx_merge(freqs, theta64, new64, step))  # back to LTX order and to omega
        attn.append(rule_attention_factor(rules[a]))
    freqs3 = torch.stack(per_axis, dim=0)  # (3, n)
    ang = freqs3 * (grid.unsqueeze(-1) * 2 - 1)  # (B, N, 3, n)
    ang = ang.transpose(-1, -2).flatten(2)
    cos, sin = ang.cos(), ang.sin()
    if any(f != 1.0 for f in attn):
        fac = torch.tensor(attn, dtype=cos.dtype, device=dev).repeat(n)
        cos, sin = cos * fac, sin * fac
    cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    if rope.dim % 6 != 0:
        pad = rope.dim % 6
        cos = torch.cat([torch.ones_like(cos[:, :, :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(cos[:, :, :pad]), sin], dim=-1)
    return cos, sin


_LTX_FORWARD = ["hidden_states", "num_frames", "height", "width", "rope_interpolation_scale", "video_coords"]


class LTXStyle(Adapter):
    """Bands ``theta^(j/(n-1)) pi/2`` on normalised coordinates, axes interleaved per band (LTX-Video 0.9.x)."""

    name = "ltx-style"
    layout = ("`transformer.rope.forward(hidden_states, num_frames, height, width, rope_interpolation_scale, "
              "video_coords)`: normalised coordinates, `dim // 6` bands per axis")
    vae = (8, 32)
    released = {"ltx": Released(10000.0, 2048, 16, 8, 1, "inner dim 2048 (341 bands per axis), base_num_frames 20; "
                                "trained on 121 frames", bands="ltx", base_num_frames=20)}

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _LTX_FORWARD
                and callable(getattr(rope, "_prepare_video_coords", None))
                and all(is_int(getattr(rope, a, None)) for a in ("dim", "base_num_frames", "base_height",
                                                                  "base_width", "patch_size", "patch_size_t"))
                and is_number(getattr(rope, "theta", None)))

    def patch(self, model):
        r = model.rope
        return int(r.patch_size_t), int(r.patch_size), int(r.patch_size)

    def n_components(self, model):
        n = model.rope.dim // 6
        return n, n, n

    def _verify(self, rope) -> None:
        hs = torch.zeros(1, 2 * 2 * 3, 1)
        args = (hs, 2, 2, 3, (8 / 25, 32, 32))
        coords = torch.rand(1, 3, 12, generator=torch.Generator().manual_seed(0)) * 40
        none = [ScalingRule("none")] * 3
        with torch.no_grad():
            ref = type(rope).forward(rope, *args)
            got = _ltx_tables(rope, *args, none)
            ref_c = type(rope).forward(rope, hs, video_coords=coords)
            grid = _coords_grid(rope, coords)
            got_c = _ltx_tables(rope, hs, None, None, None, None, none, grid=grid, steps=_coords_steps(grid)[0])
        if not all(torch.equal(a, b) for a, b in zip((*got, *got_c), (*ref, *ref_c))):
            raise ValueError(f"{type(rope).__name__} looks LTX-style (its forward signature and attributes) but its "
                             "output differs from LTX-Video's RoPE: vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        rope = model.rope
        self._verify(rope)
        sig = inspect.signature(type(rope).forward)

        def post_hook(module, args, kwargs, output):
            call = sig.bind(module, *args, **kwargs)
            call.apply_defaults()
            a = call.arguments
            active = any(ax.active for ax in handle.axes.values())
            if not active:
                return None
            hs = a["hidden_states"]
            if a["video_coords"] is not None:
                # explicit coordinates (the LTX condition pipeline): positions in units of the median coordinate
                # gap per axis, so a rule sees how many positions the coordinates span
                grid = _coords_grid(module, a["video_coords"])
                steps, sizes = _coords_steps(grid)
                return _ltx_tables(module, hs, None, None, None, None, handle.resolve(sizes), handle, grid=grid,
                                   steps=steps)
            rules = handle.resolve([a["num_frames"], a["height"], a["width"]])
            if output[0].shape[1] != a["num_frames"] * a["height"] * a["width"]:
                raise RuntimeError(f"{type(module).__name__} returned {output[0].shape[1]} positions for its grid: a "
                                   "hook inside its forward (context parallelism?) changed them; vispos rules need "
                                   "the full table")
            return _ltx_tables(module, hs, a["num_frames"], a["height"], a["width"], a["rope_interpolation_scale"],
                               rules, handle)

        hook = rope.register_forward_hook(post_hook, with_kwargs=True)
        return hook.remove


# ----------------------------------------------------------------------------------------- CogVideoX-style
def _crop_region(grid_hw: Tuple[int, int], base_w: int, base_h: int):
    """Top-left and bottom-right of a ``grid_hw`` grid resized to fit the base grid and centred (CogVideoX 1.0)."""
    h, w = grid_hw
    if h / w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / h * w))
    else:
        rw, rh = base_w, int(round(base_w / w * h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def cog_cos_sin(model, axes: Sequence[Axis], latent_frames: int, grid_h: int, grid_w: int, device,
                handle: Optional[RuleHandle] = None):
    """CogVideoX's pipeline RoPE (1.0 ``linspace`` grid without ``patch_size_t``, 1.5 ``slice`` grid with it),
    with the axes' rules applied; grids beyond the base size extend the same positions."""
    cfg = model.config
    p, p_t = int(cfg.patch_size), getattr(cfg, "patch_size_t", None)
    base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
    f32 = torch.float32
    if p_t is None:
        (y0, x0), (y1, x1) = _crop_region((grid_h, grid_w), base_w, base_h)
        pos_h = torch.linspace(y0, y1 * (grid_h - 1) / grid_h, grid_h, device=device, dtype=f32)
        pos_w = torch.linspace(x0, x1 * (grid_w - 1) / grid_w, grid_w, device=device, dtype=f32)
        t = latent_frames
        pos_t = torch.linspace(0, t * (t - 1) / t, t, device=device, dtype=f32)
        # 1.0 squeezes any grid into the base crop region: rules see that extent (<= the base grid) as L'
        rule_sizes = (t, y1 - y0, x1 - x0)
    else:
        t = (latent_frames + p_t - 1) // p_t
        pos_h = torch.arange(max(base_h, grid_h), device=device, dtype=f32)
        pos_w = torch.arange(max(base_w, grid_w), device=device, dtype=f32)
        pos_t = torch.arange(t, device=device, dtype=f32)
        rule_sizes = (t, grid_h, grid_w)
    d = int(cfg.attention_head_dim)
    dims = (d // 4, d // 8 * 3, d // 8 * 3)
    sizes = (t, grid_h, grid_w)
    rules = [ax.resolve(n) for ax, n in zip(axes, rule_sizes)]
    tables = []
    for i, pos in enumerate((pos_t, pos_h, pos_w)):
        host = 1.0 / (10000.0 ** (torch.arange(0, dims[i], 2, dtype=f32, device=device) / dims[i]))
        freqs, new64 = standard_bands(host, rules[i], 10000.0, dims[i])
        if handle is not None:
            handle.last_bands[AXES[i]] = new64
        c, s = interleaved_cos_sin(pos, freqs, rule_attention_factor(rules[i]))
        tables.append((c[: sizes[i]], s[: sizes[i]]))

    def combine(ft, fh, fw):
        ft = ft[:, None, None, :].expand(-1, grid_h, grid_w, -1)
        fh = fh[None, :, None, :].expand(t, -1, grid_w, -1)
        fw = fw[None, None, :, :].expand(t, grid_h, -1, -1)
        return torch.cat([ft, fh, fw], dim=-1).view(t * grid_h * grid_w, -1)

    return combine(*(c for c, _ in tables)), combine(*(s for _, s in tables))


_COG_METHOD = "_prepare_rotary_positional_embeddings"
_COG_CONFIG = ("patch_size", "attention_head_dim", "sample_width", "sample_height", "use_rotary_positional_embeddings")
_COG_SIGNATURE = ["height", "width", "num_frames", "device"]


class CogVideoXStyle(Adapter):
    """RoPE built by the pipeline's ``_prepare_rotary_positional_embeddings(height, width, num_frames, device)``
    (CogVideoX 1.0 / 1.5 and the pipelines that copy it, e.g. ConsisID)."""

    name = "cogvideox-pipeline"
    bare_hint = ", or build image_rotary_emb for a bare transformer with cogvideox_rotary_emb(transformer, ...)"
    layout = ("the pipeline's `_prepare_rotary_positional_embeddings(height, width, num_frames, device)` builds "
              "cos/sin (`linspace` grid without `patch_size_t`, `slice` with it)")
    on_pipeline = True
    components = ()
    released = {
        "cogvideox": Released(10000.0, 16, 13, 4, 1, "attention_head_dim 64 -> dim_t 16; trained on 49 frames"),
        "cogvideox1.5": Released(10000.0, 16, 21, 4, 2,
                                 "attention_head_dim 64 -> dim_t 16, patch_size_t 2; trained on 81 frames"),
    }

    def match(self, model, pipe) -> bool:
        cfg = getattr(model, "config", None)
        if getattr(model, "rope", None) is not None or cfg is None:
            return False
        if not all(hasattr(cfg, a) for a in _COG_CONFIG):
            return False
        if pipe is None:
            return True
        method = getattr(pipe, _COG_METHOD, None)
        return callable(method) and list(inspect.signature(method).parameters) == _COG_SIGNATURE

    def patch(self, model):
        p = int(model.config.patch_size)
        return int(getattr(model.config, "patch_size_t", None) or 1), p, p

    def positions(self, model, axis, latent):
        if latent is not None and axis == 0:
            return float(math.ceil(latent / self.patch(model)[0]))
        return super().positions(model, axis, latent)

    def n_components(self, model):
        d = int(model.config.attention_head_dim)
        return d // 8, d // 16 * 3, d // 16 * 3

    def check(self, model) -> None:
        if not model.config.use_rotary_positional_embeddings:
            raise ValueError(f"this {type(model).__name__} has use_rotary_positional_embeddings=False: it has no RoPE")

    def install(self, handle, model, pipe):
        self.check(model)
        before = getattr(pipe, _COG_METHOD)
        s = pipe.vae_scale_factor_spatial * model.config.patch_size
        cfg = model.config
        ph, pw, pf = cfg.sample_height // cfg.patch_size * s, cfg.sample_width // cfg.patch_size * s, 2
        with torch.no_grad():
            ref = before(ph, pw, pf, "cpu")
            got = cog_cos_sin(model, [Axis(ScalingRule("none"), None, None)] * 3, pf, ph // s, pw // s, "cpu")
        if not all(torch.equal(a, b) for a, b in zip(got, ref)):
            raise ValueError(f"{type(pipe).__name__}.{_COG_METHOD} does not compute CogVideoX's RoPE "
                             "(its output differs on the base grid): vispos cannot adjust it safely")
        had = _COG_METHOD in vars(pipe)
        saved = vars(pipe).get(_COG_METHOD)

        def prepare(self, height: int, width: int, num_frames: int, device):
            return cog_cos_sin(model, list(handle.axes.values()), num_frames, height // s, width // s, device, handle)

        setattr(pipe, _COG_METHOD, types.MethodType(prepare, pipe))

        def undo():
            if had:
                setattr(pipe, _COG_METHOD, saved)
            else:
                vars(pipe).pop(_COG_METHOD, None)

        return undo


# ------------------------------------------------------------------------------------- Allegro (pipeline)
_ALLEGRO_METHOD = "_prepare_rotary_positional_embeddings"
_ALLEGRO_SIGNATURE = ["batch_size", "height", "width", "num_frames", "device"]
_ALLEGRO_CONFIG = ("patch_size", "attention_head_dim", "interpolation_scale_t", "interpolation_scale_h",
                   "interpolation_scale_w")
_ALLEGRO_THETA = 10000.0


def _allegro_scales(cfg) -> Tuple[float, float, float]:
    scales = (cfg.interpolation_scale_t, cfg.interpolation_scale_h, cfg.interpolation_scale_w)
    if not all(is_number(v) and v > 0 for v in scales):
        raise ValueError(f"Allegro's interpolation_scale_t/_h/_w must be positive numbers in the transformer config, "
                         f"got {scales}")
    return tuple(float(v) for v in scales)


def allegro_tables(model, rules: Optional[Sequence[ScalingRule]], grid_sizes: Sequence[int], device,
                   handle: Optional[RuleHandle] = None, keep=None):
    """Allegro's per-axis RoPE tables ``((cos_t, sin_t), (cos_h, sin_h), (cos_w, sin_w))`` as
    ``get_3d_rotary_pos_embed_allegro`` builds them (float32 bands of ``head_dim // 3`` per axis, positions
    ``linspace(0, n - 1, n) / interpolation_scale``, halves concatenated), the rules applied to the bands *per token
    position* (``b^(-2j/d) / interpolation_scale``: the host's built-in interpolation stays, a rule acts on top of
    it); ``keep``: the host's tables, kept on the axes the rules leave alone."""
    cfg = model.config
    d = int(cfg.attention_head_dim) // 3
    scales = _allegro_scales(cfg)
    out = []
    for i, n in enumerate(grid_sizes):
        rule = rules[i] if rules is not None else ScalingRule("none")
        host = 1.0 / (_ALLEGRO_THETA ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        theta64 = rope_freqs(d, _ALLEGRO_THETA)
        per_pos = theta64 / scales[i]
        attn = rule_attention_factor(rule)
        if rule.name == "none":
            new, freqs = per_pos, host
        else:
            new = adjust_bands(per_pos, rule, _ALLEGRO_THETA, d, canonical=theta64)
            freqs = merge_bands(host, theta64, new * scales[i])
        if handle is not None:
            handle.last_bands[AXES[i]] = new
        if keep is not None and freqs is host and attn == 1.0:
            out.append(keep[i])
            continue
        grid = torch.linspace(0, n * (n - 1) / n, n, device=device, dtype=torch.float32) if n else \
            torch.zeros(0, device=device)
        ang = torch.outer(grid / scales[i], freqs)
        c, s = torch.cat([ang.cos(), ang.cos()], dim=-1).float(), torch.cat([ang.sin(), ang.sin()], dim=-1).float()
        out.append((c * attn, s * attn) if attn != 1.0 else (c, s))
    return tuple(out)


class AllegroStyle(Adapter):
    """RoPE built by the pipeline's ``_prepare_rotary_positional_embeddings(batch_size, height, width, num_frames,
    device)``: per-axis tables (``head_dim // 3`` each) indexed by integer token positions, with Allegro's built-in
    ``interpolation_scale_t/_h/_w`` dividing the positions (AllegroPipeline)."""

    name = "allegro-pipeline"
    layout = ("the pipeline's `_prepare_rotary_positional_embeddings(batch_size, height, width, num_frames, device)`"
              " builds per-axis cos/sin tables (positions / `interpolation_scale_t/_h/_w`) and the token positions")
    on_pipeline = True
    components = ()
    bare_hint = ("; a bare AllegroTransformer3DModel takes image_rotary_emb from the pipeline method, so wrap it in "
                 "AllegroPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=..., scheduler=None)")

    def match(self, model, pipe) -> bool:
        cfg = getattr(model, "config", None)
        if getattr(model, "rope", None) is not None or cfg is None:
            return False
        if not all(hasattr(cfg, a) for a in _ALLEGRO_CONFIG) or hasattr(cfg, "use_rotary_positional_embeddings"):
            return False
        if pipe is None:
            return True
        method = getattr(pipe, _ALLEGRO_METHOD, None)
        return callable(method) and list(inspect.signature(method).parameters) == _ALLEGRO_SIGNATURE

    def patch(self, model):
        p = int(model.config.patch_size)
        return 1, p, p  # the pipeline's temporal grid is latents.size(2): one position per latent frame

    def n_components(self, model):
        d = int(model.config.attention_head_dim) // 3 // 2
        return d, d, d

    def check(self, model) -> None:
        _allegro_scales(model.config)
        if int(model.config.attention_head_dim) // 3 % 2:
            raise ValueError(f"Allegro's attention_head_dim // 3 must be even, got {model.config.attention_head_dim}")

    def install(self, handle, model, pipe):
        self.check(model)
        before = getattr(pipe, _ALLEGRO_METHOD)
        s = int(pipe.vae_scale_factor_spatial) * int(model.config.patch_size)
        with torch.no_grad():
            ref, _ = before(1, 3 * s, 5 * s, 4, "cpu")
            got = allegro_tables(model, None, (4, 3, 5), "cpu")
        if not all(torch.equal(a, b) for pa, pb in zip(got, ref) for a, b in zip(pa, pb)):
            raise ValueError(f"{type(pipe).__name__}.{_ALLEGRO_METHOD} does not compute Allegro's RoPE (its tables "
                             "differ on a probe grid): vispos cannot adjust it safely")
        had = _ALLEGRO_METHOD in vars(pipe)
        saved = vars(pipe).get(_ALLEGRO_METHOD)

        def prepare(self, batch_size: int, height: int, width: int, num_frames: int, device):
            tables, positions = before(batch_size, height, width, num_frames, device)
            sizes = (int(num_frames), int(height) // s, int(width) // s)
            rules = handle.resolve(sizes)
            return allegro_tables(model, rules, sizes, device, handle, keep=tables), positions

        setattr(pipe, _ALLEGRO_METHOD, types.MethodType(prepare, pipe))

        def undo():
            if had:
                setattr(pipe, _ALLEGRO_METHOD, saved)
            else:
                vars(pipe).pop(_ALLEGRO_METHOD, None)

        return undo


# ------------------------------------------------------------------------------------ image DiTs: ids-style
def _ids_cos_sin(rope, ids: torch.Tensor, rules: Optional[Sequence[ScalingRule]], fd: torch.dtype, names,
                 handle=None, keep=None):
    """cos/sin of a FLUX-style ``pos_embed(ids)`` (ids ``(N, n_axes)``), the rules applied per axis; ``keep``: the
    host's output, kept on the axes the rules leave alone."""
    pos = ids.float()
    cos_l, sin_l, start = [], [], 0
    for i in range(ids.shape[-1]):
        d = int(rope.axes_dim[i])
        rule = rules[i] if rules is not None else ScalingRule("none")
        host = 1.0 / (float(rope.theta) ** (torch.arange(0, d, 2, dtype=fd, device=ids.device)[: d // 2] / d))
        freqs, new64 = standard_bands(host, rule, float(rope.theta), d)
        attn = rule_attention_factor(rule)
        if handle is not None:
            handle.last_bands[names[i]] = new64
        if keep is not None and freqs is host and attn == 1.0:
            c, s = keep[0][:, start:start + d], keep[1][:, start:start + d]
        else:
            c, s = interleaved_cos_sin(pos[:, i], freqs, attn)
        cos_l.append(c)
        sin_l.append(s)
        start += d
    return torch.cat(cos_l, dim=-1).to(ids.device), torch.cat(sin_l, dim=-1).to(ids.device)


def _sigma_of(kwargs, args, position: int, scale: float) -> Optional[float]:
    t = kwargs.get("timestep", args[position] if len(args) > position else None)
    if t is None:
        return None
    t = t.flatten()[0] if isinstance(t, torch.Tensor) else t
    return float(t) / scale


def _timestep_hooks(handle, model, scale: float) -> list:
    """For ``TimeAware`` rules: hooks on the transformer that hand its call's noise level to the rope hook."""
    if not any(isinstance(ax.rule, TimeAware) for ax in handle.axes.values()):
        return []
    params = _forward_params(model)
    if "timestep" not in params:
        raise ValueError(f"{type(model).__name__}.forward has no timestep argument: a TimeAware rule needs it")
    where = params.index("timestep")

    def record(module, args, kwargs):
        handle.sigma = _sigma_of(kwargs, args, where, scale)

    def forget(module, args, kwargs, output):
        handle.sigma = None

    return [model.register_forward_pre_hook(record, with_kwargs=True),
            model.register_forward_hook(forget, with_kwargs=True)]


class IdsStyle(Adapter):
    """Image DiTs whose ``pos_embed.forward(ids)`` builds cos/sin from per-token ids ``(index, row, column)`` with
    ``theta`` and ``axes_dim`` (FLUX.1 and its copies; Krea 2 keeps the same module as ``rotary_emb``). Rules act on
    the row / column axes (``space``); the first axis (``index``: 0 for generated images, the reference index in FLUX
    Kontext) takes ``time``."""

    name = "ids-style"
    layout = ("`transformer.pos_embed.forward(ids)` (or `rotary_emb`): cos/sin of per-token ids (index, row, column) "
              "with `theta`, `axes_dim`; FLUX packs 2x2 latents per token")
    rope_attrs: Tuple[str, ...] = ("pos_embed", "rotary_emb")  # where the transformer keeps the module
    n_axes = 3

    axes = ("index", "height", "width")
    vae = (1, 8)
    components = ("transformer",)
    timestep_scale = 1.0  # FLUX pipelines pass timestep / 1000: already the noise level sigma

    def _rope(self, model):
        """The transformer's ids rope module (the first of ``rope_attrs`` with this layout), or None."""
        for attr in self.rope_attrs:
            rope = getattr(model, attr, None)
            if (isinstance(rope, torch.nn.Module) and _forward_params(rope) == ["ids"]
                    and is_number(getattr(rope, "theta", None))
                    and len(getattr(rope, "axes_dim", ()) or ()) == self.n_axes):
                return rope
        return None

    def match(self, model, pipe) -> bool:
        return self._rope(model) is not None

    def target(self, model, pipe):
        return self._rope(model)

    def patch(self, model):
        return 1, 2, 2

    def n_components(self, model):
        return tuple(int(d) // 2 for d in self._rope(model).axes_dim[:3])

    def _host_dtype(self, rope) -> torch.dtype:
        ids = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(12), torch.arange(12), indexing="ij"), -1)
        ids = ids.reshape(-1, 3).float()
        with torch.no_grad():
            ref = type(rope).forward(rope, ids)
            for fd in (torch.float64, torch.float32):
                if all(torch.equal(a, b) for a, b in zip(_ids_cos_sin(rope, ids, None, fd, self.axes), ref)):
                    return fd
        raise ValueError(f"{type(rope).__name__} looks ids-style (forward(ids), theta, axes_dim) but its output is not "
                         "cos/sin of b^(-2j/d) bands of the ids (float64 or float32): vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        rope = self._rope(model)
        fd = self._host_dtype(rope)
        names = self.axes
        hooks = _timestep_hooks(handle, model, self.timestep_scale)

        def post_hook(module, args, kwargs, output):
            ids = args[0] if args else kwargs["ids"]
            if ids.dim() != 2 or ids.shape[-1] != 3:
                raise ValueError(f"{type(module).__name__}: vispos rules need ids of shape (N, 3), got "
                                 f"{tuple(ids.shape)}")
            sizes = [int(ids[:, i].max().item()) + 1 if ids.numel() else 0 for i in range(3)]
            rules = handle.resolve(sizes)
            if all(r.name == "none" for r in rules):
                for i in range(3):
                    handle.last_bands[names[i]] = rope_freqs(int(module.axes_dim[i]), float(module.theta))
                return None
            return _ids_cos_sin(module, ids, rules, fd, names, handle, keep=output)

        hooks.append(rope.register_forward_hook(post_hook, with_kwargs=True))

        return _hooks_undo(hooks, handle)


# ------------------------------------------------------------------------ image DiTs: four-axis ids (FLUX.2)
_IDS4_NAMES = ("index", "height", "width", "layer")


class Ids4Style(IdsStyle):
    """FLUX.2 / Flux3: ``pos_embed.forward(ids)`` with four-axis ids ``(index, row, column, layer)`` (``axes_dim`` of
    four), called once for the image ids and once for the text ids. Rules act on the row / column axes (``space``)
    and the index axis (``time``: 0 for the generated image, 10, 20, ... for reference images); the fourth axis (the
    text token's sequence position, 0 for image tokens) is always the host's. The grid the rules see is the image's
    (``img_ids`` of the transformer call), for the text ids too, so both streams get the same bands."""

    name = "ids4-style"
    layout = ("`transformer.pos_embed.forward(ids)`: cos/sin of four-axis ids (index, row, column, layer) with "
              "`theta`, `axes_dim`, image and text ids in separate calls")

    rope_attrs = ("pos_embed",)
    n_axes = 4

    def _host_dtype(self, rope) -> torch.dtype:
        ids = torch.cartesian_prod(torch.tensor([0, 10]), torch.arange(6), torch.arange(5), torch.arange(3)).float()
        with torch.no_grad():
            ref = type(rope).forward(rope, ids)
            for fd in (torch.float64, torch.float32):
                if all(torch.equal(a, b) for a, b in zip(_ids_cos_sin(rope, ids, None, fd, _IDS4_NAMES), ref)):
                    return fd
        raise ValueError(f"{type(rope).__name__} looks like four-axis ids (forward(ids), theta, axes_dim of 4) but its "
                         "output is not cos/sin of b^(-2j/d) bands of the ids (float64 or float32): vispos cannot "
                         "adjust it safely")

    def install(self, handle, model, pipe):
        rope = self._rope(model)
        fd = self._host_dtype(rope)
        hooks = _timestep_hooks(handle, model, self.timestep_scale)
        params = _forward_params(model)
        state = {"sizes": None}

        def sizes_of(ids: torch.Tensor, what: str) -> List[int]:
            if ids.dim() == 3:  # the transformer takes (B, N, 4) and uses the first sample's ids
                ids = ids[0]
            if ids.dim() != 2 or ids.shape[-1] != 4:
                raise ValueError(f"{type(rope).__name__}: vispos rules need {what} of shape (N, 4) or (B, N, 4), got "
                                 f"{tuple(ids.shape)}")
            return [int(ids[:, i].max().item()) + 1 if ids.numel() else 0 for i in range(3)]

        def record(module, args, kwargs):
            where = params.index("img_ids")
            img = kwargs.get("img_ids", args[where] if len(args) > where else None)
            state["sizes"] = sizes_of(img, "img_ids") if isinstance(img, torch.Tensor) else None

        def forget(module, args, kwargs, output):
            state["sizes"] = None

        if "img_ids" in params:  # a transformer (not a bare holder of the rope): its image grid sets the rules
            hooks += [model.register_forward_pre_hook(record, with_kwargs=True),
                      model.register_forward_hook(forget, with_kwargs=True)]

        def post_hook(module, args, kwargs, output):
            ids = args[0] if args else kwargs["ids"]
            if ids.dim() != 2:
                raise ValueError(f"{type(module).__name__}: vispos rules need ids of shape (N, 4), got "
                                 f"{tuple(ids.shape)}")
            own = sizes_of(ids, "ids")
            rules = handle.resolve(state["sizes"] or own) + [ScalingRule("none")]
            if all(r.name == "none" for r in rules):
                for i in range(4):
                    handle.last_bands[_IDS4_NAMES[i]] = rope_freqs(int(module.axes_dim[i]), float(module.theta))
                return None
            return _ids_cos_sin(module, ids, rules, fd, _IDS4_NAMES, handle, keep=output)

        hooks.append(rope.register_forward_hook(post_hook, with_kwargs=True))

        return _hooks_undo(hooks, handle)


# ---------------------------------------------------------------------- image DiTs: HunyuanImage-style
def _hyimage_sizes(rope, hs: torch.Tensor) -> List[int]:
    """The RoPE grid of a HunyuanImage-style rope for ``hidden_states`` (4-D: rows, columns; 5-D: frames too)."""
    patch = [int(p) for p in rope.patch_size]
    if hs.dim() != len(patch) + 2:
        raise ValueError(f"{type(rope).__name__} with patch_size {tuple(patch)} takes {len(patch) + 2}-D "
                         f"hidden_states, got shape {tuple(hs.shape)}")
    return [n // p for n, p in zip(hs.shape[2:], patch)]


def _hyimage_cos_sin(rope, sizes: Sequence[int], device, rules: Optional[Sequence[ScalingRule]], names, handle=None,
                     keep=None):
    """cos/sin of a HunyuanImage-style rope (float32 ``b^(-2j/d)`` bands on integer grids, pairs interleaved, axes
    concatenated) with ``rules`` per axis; ``keep``: the host's output, kept on the axes the rules leave alone."""
    grids = torch.meshgrid(*[torch.arange(0, n, device=device, dtype=torch.float32) for n in sizes], indexing="ij")
    cos_l, sin_l, start = [], [], 0
    for i in range(len(sizes)):
        d = int(rope.rope_dim[i])
        rule = rules[i] if rules is not None else ScalingRule("none")
        host = 1.0 / (float(rope.theta) ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        freqs, new64 = standard_bands(host, rule, float(rope.theta), d)
        attn = rule_attention_factor(rule)
        if handle is not None:
            handle.last_bands[names[i]] = new64
        if keep is not None and freqs is host and attn == 1.0:
            c, s = keep[0][:, start:start + d], keep[1][:, start:start + d]
        else:
            c, s = interleaved_cos_sin(grids[i].reshape(-1), freqs, attn)
        cos_l.append(c)
        sin_l.append(s)
        start += d
    return torch.cat(cos_l, dim=1), torch.cat(sin_l, dim=1)


class HunyuanImageStyle(Adapter):
    """HunyuanImage 2.1 (and its refiner): ``rope.forward(hidden_states)`` computes cos/sin from ``theta`` and
    ``rope_dim`` on the integer grid of ``hidden_states // patch_size``, with two axes (rows, columns: 4-D latents) or
    three (frames too: 5-D). Rules act on rows / columns (``space``) and, for a 3-axis rope, frames (``time``)."""

    name = "hunyuanimage-style"
    layout = ("`transformer.rope.forward(hidden_states)`: cos/sin from `theta`, `rope_dim` and a per-axis "
              "`patch_size` tuple on the (rows, columns) or (frames, rows, columns) grid")
    vae = (1, 32)  # HunyuanImage 2.1's 32x VAE
    components = ("transformer",)
    timestep_scale = 1000.0  # HunyuanImagePipeline passes the scheduler's timestep (sigma * 1000)

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        patch, dims = getattr(rope, "patch_size", None), getattr(rope, "rope_dim", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == ["hidden_states"]
                and isinstance(patch, (tuple, list)) and isinstance(dims, (tuple, list))
                and len(patch) == len(dims) and len(dims) in (2, 3) and all(is_int(p) for p in patch)
                and is_number(getattr(rope, "theta", None)) and not hasattr(rope, "freqs_cos"))

    def _n(self, model) -> int:
        return len(model.rope.rope_dim)

    def patch(self, model):
        p = [int(v) for v in model.rope.patch_size]
        return tuple(p) if len(p) == 3 else (1, p[0], p[1])

    def n_components(self, model):
        d = [int(v) // 2 for v in model.rope.rope_dim]
        return tuple(d) if len(d) == 3 else (0, d[0], d[1])

    def _verify(self, rope) -> None:
        n = len(rope.rope_dim)
        patch = [int(p) for p in rope.patch_size]
        probe = torch.zeros(1, 1, *[k * p for k, p in zip((3, 5, 4)[-n:], patch)])
        names = AXES[-n:]
        with torch.no_grad():
            ref = type(rope).forward(rope, probe)
            got = _hyimage_cos_sin(rope, _hyimage_sizes(rope, probe), "cpu", None, names)
        if not _same_pair(got, ref):
            raise ValueError(f"{type(rope).__name__} looks HunyuanImage-style (forward(hidden_states), theta, rope_dim, "
                             "patch_size per axis) but its output is not float32 cos/sin of b^(-2j/d) bands on integer "
                             "grids: vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        rope = model.rope
        self._verify(rope)
        n = len(rope.rope_dim)
        names = AXES[-n:]
        hooks = _timestep_hooks(handle, model, self.timestep_scale)

        def post_hook(module, args, kwargs, output):
            hs = _hidden_states(args, kwargs)
            sizes = _hyimage_sizes(module, hs)
            rules = handle.resolve(sizes if n == 3 else [1, *sizes])[-n:]
            if all(r.name == "none" for r in rules):
                for i in range(n):
                    handle.last_bands[names[i]] = rope_freqs(int(module.rope_dim[i]), float(module.theta))
                return None
            return _hyimage_cos_sin(module, sizes, hs.device, rules, names, handle, keep=output)

        hooks.append(rope.register_forward_hook(post_hook, with_kwargs=True))

        return _hooks_undo(hooks, handle)


def _same_pair(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------ image DiTs: GLM-Image style
def _glm_cos_sin(rope, h: int, w: int, rules: Optional[Sequence[ScalingRule]], names, handle=None, keep=None):
    """GLM-Image's cos/sin: ``dim // 2`` float32 bands per axis on integer rows / columns, angles laid out
    ``[rows, columns, rows, columns]`` (halves concatenated); ``keep``: the host's output, kept on the axes the rules
    leave alone."""
    d = int(rope.dim) // 2
    q = d // 2
    per_axis = []
    for i, n in enumerate((h, w)):
        rule = rules[i] if rules is not None else ScalingRule("none")
        host = 1.0 / (float(rope.theta) ** (torch.arange(0, d, 2, dtype=torch.float32)[:q].float() / d))
        freqs, new64 = standard_bands(host, rule, float(rope.theta), d)
        if handle is not None:
            handle.last_bands[names[i]] = new64
        per_axis.append((freqs is host, torch.outer(torch.arange(n), freqs), rule_attention_factor(rule)))
    ang = torch.cat([per_axis[0][1].unsqueeze(1).expand(h, w, -1), per_axis[1][1].unsqueeze(0).expand(h, w, -1)], -1)
    ang = torch.cat([ang, ang], dim=-1).reshape(h * w, -1)
    cos, sin = ang.cos(), ang.sin()
    for i, (same, _, attn) in enumerate(per_axis):
        cols = torch.cat([torch.arange(i * q, (i + 1) * q), torch.arange((2 + i) * q, (3 + i) * q)])
        if keep is not None and same and attn == 1.0:
            cos[:, cols], sin[:, cols] = keep[0][:, cols].to(cos), keep[1][:, cols].to(sin)
        elif attn != 1.0:
            cos[:, cols], sin[:, cols] = cos[:, cols] * attn, sin[:, cols] * attn
    return cos, sin


class GlmImageStyle(Adapter):
    """GLM-Image: ``rope.forward(hidden_states)`` computes cos/sin from ``dim``, ``patch_size``, ``theta`` on the
    integer (rows, columns) grid of 4-D latents, the two axes' angles concatenated twice. Rules act on rows / columns
    (``space``); there is no time axis."""

    name = "glm-image-style"
    layout = ("`transformer.rope.forward(hidden_states)`: `dim // 2` bands per axis from `dim`, `patch_size`, `theta` "
              "on the (rows, columns) grid, angles `[rows, columns, rows, columns]`")
    vae = (1, 8)
    components = ("transformer",)
    timestep_scale = 1000.0  # GlmImagePipeline passes the scheduler's timestep - 1 (sigma * 1000 - 1)

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == ["hidden_states"]
                and is_int(getattr(rope, "dim", None)) and is_int(getattr(rope, "patch_size", None))
                and is_number(getattr(rope, "theta", None))
                and not any(hasattr(rope, a) for a in ("rope_axes_dim", "rope_dim", "patch_size_t", "freqs_cos")))

    def patch(self, model):
        p = int(model.rope.patch_size)
        return 1, p, p

    def n_components(self, model):
        q = int(model.rope.dim) // 4
        return 0, q, q

    def _verify(self, rope) -> None:
        p = int(rope.patch_size)
        with torch.no_grad():
            ref = type(rope).forward(rope, torch.zeros(1, 1, 5 * p, 3 * p))
            got = _glm_cos_sin(rope, 5, 3, None, AXES[1:])
        if not _same_pair(got, ref):
            raise ValueError(f"{type(rope).__name__} looks GLM-Image-style (forward(hidden_states), dim, patch_size, "
                             "theta) but its output is not GLM-Image's RoPE: vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        rope = model.rope
        self._verify(rope)
        names = AXES[1:]
        hooks = _timestep_hooks(handle, model, self.timestep_scale)

        def post_hook(module, args, kwargs, output):
            hs = _hidden_states(args, kwargs)
            if hs.dim() != 4:
                raise ValueError(f"{type(module).__name__} takes 4-D hidden_states, got shape {tuple(hs.shape)}")
            p = int(module.patch_size)
            h, w = hs.shape[2] // p, hs.shape[3] // p
            rules = handle.resolve([1, h, w])[1:]
            if all(r.name == "none" for r in rules):
                for i in range(2):
                    handle.last_bands[names[i]] = rope_freqs(int(module.dim) // 2, float(module.theta))
                return None
            cos, sin = _glm_cos_sin(module, h, w, rules, names, handle, keep=output)
            return cos.to(output[0].device), sin.to(output[1].device)

        hooks.append(rope.register_forward_hook(post_hook, with_kwargs=True))

        return _hooks_undo(hooks, handle)


# ---------------------------------------------------------------- image DiTs: RopeEmbedder (Z-Image style)
def _embedder_tables(emb, lengths: Sequence[int], rules: Optional[Sequence[ScalingRule]], names, handle=None):
    """Per-axis complex64 tables of a Z-Image-style ``RopeEmbedder`` (float64 ``b^(-2j/d)`` bands times float64
    positions, angles cast to float32, then ``polar``) for ``lengths`` positions, with the rules applied."""
    tables = []
    for i, (d, n) in enumerate(zip(emb.axes_dims, lengths)):
        d = int(d)
        rule = rules[i] if rules is not None else ScalingRule("none")
        host = 1.0 / (float(emb.theta) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        freqs, new64 = standard_bands(host, rule, float(emb.theta), d)
        if handle is not None:
            handle.last_bands[names[i]] = new64
        ang = torch.outer(torch.arange(int(n), dtype=torch.float64), freqs).float()
        tables.append(torch.polar(torch.full_like(ang, rule_attention_factor(rule)), ang).to(torch.complex64))
    return tables


class _RuledEmbedder:
    """Stands in for a ``RopeEmbedder`` (a plain object, not a module: torch hooks cannot reach it) while a rule is
    applied: the host's own output on the axes the rules leave alone, the adjusted tables elsewhere (lengthened past
    ``axes_lens`` when ids reach beyond it)."""

    def __init__(self, host, handle, names, state):
        self.host, self.handle, self.names, self.state = host, handle, names, state

    def __getattr__(self, item):  # theta, axes_dims, axes_lens, freqs_cis: the host's
        if item == "host":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(item)
        return getattr(self.host, item)

    def __call__(self, ids: torch.Tensor):
        emb = self.host
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[-1] != len(emb.axes_dims):
            raise ValueError(f"{type(emb).__name__}: ids must be a (N, {len(emb.axes_dims)}) tensor, got "
                             f"{getattr(ids, 'shape', type(ids).__name__)}")
        reach = [int(ids[:, i].max().item()) + 1 if ids.numel() else 0 for i in range(3)]
        seen = self.state.get("sizes")
        sizes = [max(a, b) for a, b in zip(reach, seen)] if seen else reach
        if self.state.get("in_call"):
            self.state["sizes"] = sizes
        rules = self.handle.resolve(sizes)
        if all(r.name == "none" for r in rules):
            for i in range(3):
                self.handle.last_bands[self.names[i]] = rope_freqs(int(emb.axes_dims[i]), float(emb.theta))
            return emb(ids)
        lengths = [max(int(n), r) for n, r in zip(emb.axes_lens, reach)]
        tables = _embedder_tables(emb, lengths, rules, self.names, self.handle)
        inside = all(r <= int(n) for r, n in zip(reach, emb.axes_lens))
        out = emb(ids) if inside else None
        cols, start = [], 0
        for i, d in enumerate(emb.axes_dims):
            half = int(d) // 2
            if out is not None and rules[i].name == "none":
                cols.append(out[:, start:start + half])
            else:
                cols.append(tables[i].to(ids.device)[ids[:, i]])
            start += half
        return torch.cat(cols, dim=-1)


class RopeEmbedderStyle(Adapter):
    """Z-Image's ``RopeEmbedder`` (and BriaFibo2's copy): a plain object ``rope_embedder(ids)`` that looks the ids
    ``(index, row, column)`` up in complex tables of ``axes_lens`` positions per axis. Rules act on rows / columns
    (``space``) and the index axis (``time``: Z-Image puts the caption on it and the image after it)."""

    name = "rope-embedder"
    layout = ("`transformer.rope_embedder(ids)` (a plain object): complex tables of `axes_lens` positions per axis "
              "from `theta`, `axes_dims`, looked up by (index, row, column) ids")
    axes = ("index", "height", "width")
    vae = (1, 8)
    components = ("transformer",)
    timestep_scale = 1.0  # BriaFibo2Pipeline passes sigma; Z-Image's forward has no timestep (TimeAware refused)

    def match(self, model, pipe) -> bool:
        emb = getattr(model, "rope_embedder", None)
        return (emb is not None and not isinstance(emb, torch.nn.Module) and callable(emb)
                and callable(getattr(emb, "precompute_freqs_cis", None)) and is_number(getattr(emb, "theta", None))
                and len(getattr(emb, "axes_dims", ()) or ()) == 3 and len(getattr(emb, "axes_lens", ()) or ()) == 3)

    def target(self, model, pipe):
        return model

    def patch(self, model):
        cfg = getattr(model, "config", None)
        p = getattr(cfg, "patch_size", None) or (getattr(cfg, "all_patch_size", None) or (2,))[0]
        return 1, int(p), int(p)

    def n_components(self, model):
        return tuple(int(d) // 2 for d in model.rope_embedder.axes_dims)

    def _verify(self, emb) -> None:
        if isinstance(emb, _RuledEmbedder):
            raise ValueError("a vispos rule is already applied to this rope_embedder; remove() it first")
        ids = torch.cartesian_prod(torch.arange(3), torch.arange(min(5, int(emb.axes_lens[1]))),
                                   torch.arange(min(4, int(emb.axes_lens[2]))))
        try:  # a fresh instance, so the host's cached tables are left as they are
            probe = type(emb)(theta=emb.theta, axes_dims=list(emb.axes_dims), axes_lens=list(emb.axes_lens))
        except TypeError as err:
            raise ValueError(f"{type(emb).__name__} looks like Z-Image's RopeEmbedder but is not built as one "
                             f"(theta, axes_dims, axes_lens): {err}") from err
        ref = probe(ids)
        got = torch.cat([t[ids[:, i]] for i, t in enumerate(_embedder_tables(emb, emb.axes_lens, None, self.axes))],
                        dim=-1)
        if not torch.equal(got, ref):
            raise ValueError(f"{type(emb).__name__} looks like Z-Image's RopeEmbedder but its tables are not complex64 "
                             "polar(b^(-2j/d) x position): vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        emb = model.rope_embedder
        self._verify(emb)
        hooks = _timestep_hooks(handle, model, self.timestep_scale)
        state: dict = {}

        def begin(module, args, kwargs):
            state.clear()
            state["in_call"] = True

        def end(module, args, kwargs, output):
            state.clear()

        if isinstance(model, torch.nn.Module):  # inside one transformer call, every rope call sees the largest grid
            hooks += [model.register_forward_pre_hook(begin, with_kwargs=True),
                      model.register_forward_hook(end, with_kwargs=True)]
        had = "rope_embedder" in vars(model)
        model.rope_embedder = _RuledEmbedder(emb, handle, self.axes, state)

        def undo():
            for h in reversed(hooks):
                h.remove()
            handle.sigma = None
            if had:
                model.rope_embedder = emb
            else:
                vars(model).pop("rope_embedder", None)

        return undo


# ------------------------------------------------------------------------------- image DiTs: Qwen-Image
_QWEN_FORWARD = ["video_fhw", "device", "max_txt_seq_len"]


def _qwen_bands(theta: float, d: int, device=None) -> torch.Tensor:
    """Qwen-Image's float32 bands of one axis (``1 / theta^(2j/d)``)."""
    return 1.0 / torch.pow(theta, torch.arange(0, d, 2, device=device).to(torch.float32).div(d))


def _qwen_positions(rope, video_fhw, max_txt):
    """Per axis, the positions of every image token (frame, row, column order; signed rows / columns centred on 0
    with ``scale_rope``) and of the text tokens, as ``QwenEmbedRope.forward`` lays them out."""
    fhws = video_fhw[0] if isinstance(video_fhw, list) else video_fhw
    fhws = fhws if isinstance(fhws, list) else [fhws]
    cols = [[], [], []]
    max_vid, sizes = 0, [0, 0, 0]
    for idx, (f, h, w) in enumerate(fhws):
        if rope.scale_rope:
            ph = torch.cat([torch.arange(-(h - h // 2), 0), torch.arange(0, h // 2)])
            pw = torch.cat([torch.arange(-(w - w // 2), 0), torch.arange(0, w // 2)])
            max_vid = max(h // 2, w // 2, max_vid)
        else:
            ph, pw = torch.arange(h), torch.arange(w)
            max_vid = max(h, w, max_vid)
        grid = torch.meshgrid(torch.arange(idx, idx + f), ph, pw, indexing="ij")
        for i in range(3):
            cols[i].append(grid[i].reshape(-1))
        sizes = [max(sizes[0], idx + f), max(sizes[1], h), max(sizes[2], w)]
    txt = torch.arange(max_vid, max_vid + int(max_txt))
    return [torch.cat(c) for c in cols], txt, sizes


class QwenStyle(Adapter):
    """Qwen-Image: complex tables ``pos_freqs`` / ``neg_freqs`` for signed positions, read by
    ``pos_embed.forward(video_fhw, device, max_txt_seq_len)``; text tokens continue after the image extent."""

    name = "qwen-style"
    layout = ("`transformer.pos_embed.forward(video_fhw, device, max_txt_seq_len)`: complex tables of signed "
              "positions (`scale_rope`: rows / columns centred on 0), text after the image extent")
    axes = ("index", "height", "width")
    vae = (1, 8)
    components = ("transformer",)
    timestep_scale = 1.0  # QwenImagePipeline passes timestep / 1000

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "pos_embed", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _QWEN_FORWARD
                and is_number(getattr(rope, "theta", None)) and len(getattr(rope, "axes_dim", ()) or ()) == 3
                and all(isinstance(getattr(rope, t, None), torch.Tensor) and getattr(rope, t).is_complex()
                        for t in ("pos_freqs", "neg_freqs")))

    def target(self, model, pipe):
        return model.pos_embed

    def patch(self, model):
        return 1, 2, 2  # QwenImagePipeline packs 2x2 latents per token

    def n_components(self, model):
        return tuple(int(d) // 2 for d in model.pos_embed.axes_dim)

    def _positions(self, rope, video_fhw, max_txt):
        return _qwen_positions(rope, video_fhw, max_txt)

    def _verify(self, rope) -> None:
        n = rope.pos_freqs.shape[0]
        for name, index in (("pos_freqs", torch.arange(n)), ("neg_freqs", torch.arange(n).flip(0) * -1 - 1)):
            table = torch.cat([torch.polar(torch.ones(n, int(d) // 2), torch.outer(index, _qwen_bands(rope.theta, d)))
                               for d in rope.axes_dim], dim=1)
            if not torch.equal(table, getattr(rope, name).detach().cpu()):
                raise ValueError(f"{type(rope).__name__}.{name} is not Qwen-Image's table of theta {rope.theta}: the "
                                 "model was changed after construction, vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        rope = model.pos_embed
        self._verify(rope)
        sig = inspect.signature(type(rope).forward)
        names = self.axes
        hooks = _timestep_hooks(handle, model, self.timestep_scale)

        def post_hook(module, args, kwargs, output):
            call = sig.bind(module, *args, **kwargs)
            call.apply_defaults()
            a = call.arguments
            vid_pos, txt_pos, sizes = self._positions(module, a["video_fhw"], a["max_txt_seq_len"])
            rules = handle.resolve(sizes)
            vid, txt = output
            if all(r.name == "none" for r in rules):
                for i in range(3):
                    handle.last_bands[names[i]] = rope_freqs(int(module.axes_dim[i]), float(module.theta))
                return None
            vid_cols, txt_cols, start = [], [], 0
            for i in range(3):
                d = int(module.axes_dim[i])
                host = _qwen_bands(module.theta, d, vid.device)
                freqs, new64 = standard_bands(host, rules[i], float(module.theta), d)
                attn = rule_attention_factor(rules[i])
                handle.last_bands[names[i]] = new64
                sl = slice(start, start + d // 2)
                start += d // 2
                if freqs is host and attn == 1.0:
                    vid_cols.append(vid[:, sl])
                    txt_cols.append(txt[:, sl])
                    continue
                for pos, out in ((vid_pos[i], vid_cols), (txt_pos, txt_cols)):
                    ang = torch.outer(pos.to(vid.device), freqs)
                    out.append(torch.polar(torch.full_like(ang, attn), ang))
            return torch.cat(vid_cols, dim=1), torch.cat(txt_cols, dim=1)

        hooks.append(rope.register_forward_hook(post_hook, with_kwargs=True))

        return _hooks_undo(hooks, handle)


# ----------------------------------------------------------------------- image DiTs: Qwen-Image layered
_QWEN_LAYER_FORWARD = ["video_fhw", "max_txt_seq_len", "device"]


def _qwen_layer_positions(rope, video_fhw, max_txt):
    """As :func:`_qwen_positions`, for ``QwenEmbedLayer3DRope``: layers ``0 .. n-2`` at index ``idx .. idx+f-1``,
    the last entry (the condition image) at index -1; text after ``max(image extent, number of layers)``. The index
    axis's length for the rules is the span of its indices (``n`` entries: -1 .. n-2)."""
    fhws = video_fhw[0] if isinstance(video_fhw, list) else video_fhw
    fhws = fhws if isinstance(fhws, list) else [fhws]
    cols = [[], [], []]
    layers = len(fhws) - 1
    max_vid, sizes = 0, [0, 0, 0]
    for idx, (f, h, w) in enumerate(fhws):
        if rope.scale_rope:
            ph = torch.cat([torch.arange(-(h - h // 2), 0), torch.arange(0, h // 2)])
            pw = torch.cat([torch.arange(-(w - w // 2), 0), torch.arange(0, w // 2)])
            max_vid = max(h // 2, w // 2, max_vid)
        else:
            ph, pw = torch.arange(h), torch.arange(w)
            max_vid = max(h, w, max_vid)
        index = torch.arange(idx, idx + f) if idx != layers else torch.full((f,), -1)
        grid = torch.meshgrid(index, ph, pw, indexing="ij")
        for i in range(3):
            cols[i].append(grid[i].reshape(-1))
        top = idx + f if idx != layers else 0
        sizes = [max(sizes[0], top), max(sizes[1], h), max(sizes[2], w)]
    sizes[0] += 1  # the condition image's -1
    max_vid = max(max_vid, layers)
    txt = torch.arange(max_vid, max_vid + int(max_txt))
    return [torch.cat(c) for c in cols], txt, sizes


class QwenLayerStyle(QwenStyle):
    """Qwen-Image layered (``QwenEmbedLayer3DRope``): Qwen-Image's complex tables, images stacked on the index axis
    (layers 0, 1, ..., the condition image at -1), read by ``pos_embed.forward(video_fhw, max_txt_seq_len, device)``.
    Rules act on the signed row / column axes (``space``); the index axis is left alone unless ``time=`` is given."""

    name = "qwen-layer-style"
    layout = ("`transformer.pos_embed.forward(video_fhw, max_txt_seq_len, device)`: Qwen-Image's complex tables, "
              "image layers stacked on the index axis (condition image at -1), text after the extent")

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "pos_embed", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _QWEN_LAYER_FORWARD
                and is_number(getattr(rope, "theta", None)) and len(getattr(rope, "axes_dim", ()) or ()) == 3
                and all(isinstance(getattr(rope, t, None), torch.Tensor) and getattr(rope, t).is_complex()
                        for t in ("pos_freqs", "neg_freqs")))

    def _positions(self, rope, video_fhw, max_txt):
        return _qwen_layer_positions(rope, video_fhw, max_txt)

    def _verify(self, rope) -> None:
        super()._verify(rope)
        # the layout, through the class forward: two layers and a condition image
        shapes = [[(1, 4, 3), (1, 4, 3), (1, 4, 3)]]
        with torch.no_grad():
            vid, txt = type(rope).forward(rope, shapes, 5, torch.device("cpu"))
        vid_pos, txt_pos, _ = self._positions(rope, shapes, 5)
        start = 0
        for i, d in enumerate(rope.axes_dim):
            bands = _qwen_bands(rope.theta, int(d))
            sl = slice(start, start + int(d) // 2)
            start += int(d) // 2
            for pos, got in ((vid_pos[i], vid), (txt_pos, txt)):
                ang = torch.outer(pos, bands)
                if not torch.equal(torch.polar(torch.ones_like(ang), ang), got[:, sl]):
                    raise ValueError(f"{type(rope).__name__} looks like Qwen-Image's layered RoPE but its output is "
                                     "not the layout vispos reproduces (layers on the index axis, condition image "
                                     "at -1): vispos cannot adjust it safely")


# --------------------------------------------------------------------------------------------------- table
# adapters_builtin imports this module's base class and helpers, defined above
from .adapters_builtin import ChronoEditStyle, CosmosStyle, KandinskyStyle, LTX2VideoStyle  # noqa: E402
from .adapters_mochi import MochiStyle  # noqa: E402

ADAPTERS: Tuple[Adapter, ...] = (HunyuanStyle(), WanStyle(), BandBufferStyle(), LTXStyle(), CogVideoXStyle(),
                                  AllegroStyle(), IdsStyle(), Ids4Style(), HunyuanImageStyle(), GlmImageStyle(),
                                  RopeEmbedderStyle(), QwenStyle(), QwenLayerStyle(),
                                  CosmosStyle(), KandinskyStyle(), ChronoEditStyle(), LTX2VideoStyle(), MochiStyle())


def find_adapter(model, pipe=None) -> Optional[Adapter]:
    """The adapter whose structure ``model`` (and ``pipe``) has, or None."""
    for adapter in ADAPTERS:
        if adapter.match(model, pipe):
            return adapter
    return None
