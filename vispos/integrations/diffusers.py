"""Length and resolution rules (RIFLEx, PI, NTK, YaRN) for diffusers' video transformers, in one call.

>>> handle = apply_rule(pipe_or_transformer, time="riflex", num_frames=45, train_frames=33)
>>> ...                      # generate; the host's RoPE now uses the adjusted temporal bands
>>> handle.remove()          # or: with apply_rule(...): ...

Hosts (detected from the object; a pipeline is recognised by its ``transformer``):

==================  ===============================================================================================
HunyuanVideo        ``transformer.rope`` (HunyuanVideoRotaryPosEmbed): its forward is replaced by one that computes
                    the same tensors with the adjusted bands (float32, as diffusers).
Wan, SkyReels-V2    ``transformer.rope``: the precomputed buffers ``freqs_cos`` / ``freqs_sin`` are rebuilt with the
                    adjusted bands (float64 angles, as diffusers) and lengthened when a grid is longer than
                    ``rope_max_seq_len`` (1024 by default), which diffusers cannot do.
CogVideoX 1.0/1.5   RoPE is computed by the *pipeline* (``_prepare_rotary_positional_embeddings``, ``grid_type``
                    ``"linspace"`` for 1.0, ``"slice"`` for 1.5); pass the pipeline, or compute the tensors for a
                    bare transformer with :func:`cogvideox_rotary_emb`. The official RIFLEx patch only changes the
                    1.0 branch: with CogVideoX 1.5 it silently does nothing. Both branches are patched here.
LTX-Video           ``transformer.rope``: bands ``theta^(j/(n-1)) pi/2`` on normalised coordinates, axes interleaved
                    per frequency; rules act on the per-position frequency ``2 omega_j step`` of each axis (see
                    :mod:`vispos.integrations.riflex_cli`). ``video_coords`` inputs are supported only by the rule
                    ``none``.
==================  ===============================================================================================

Units. ``num_frames`` / ``train_frames`` are latent frames and ``height`` / ``width`` / ``train_height`` /
``train_width`` latent pixels with ``units="latent"`` (default); with ``units="pixel"`` they are video frames
(``t*m + 1``) and image pixels, converted with the VAE compression ``(t, s)`` (taken from the pipeline, or
``vae_scale=``, or the host default: (4, 8), LTX (8, 32)). They are then converted to RoPE positions the way the
host patchifies (``F // p_t``, ``H // p``; CogVideoX 1.5: ``ceil(F / p_t)``). A target left as ``None`` is the grid
the host sees at each call. Lengths already set inside a :class:`~vispos.freqs.ScalingRule`, and RIFLEx ``N``,
are in RoPE positions. RIFLEx ``k`` is 1-indexed from the highest frequency of the axis.

Only the components a rule changes differ from diffusers: with every rule off (``none``, or scale 1) the RoPE
tensors are bit-identical to diffusers', and :meth:`RuleHandle.remove` restores the host exactly.
"""
from __future__ import annotations

import logging
import math
import types
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

try:
    import diffusers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'vispos.integrations.diffusers needs diffusers; install it with: pip install "vispos[diffusers]"'
    ) from e

import torch

from ..freqs import ScalingRule, as_rule, rope_freqs, rule_attention_factor
from .riflex_cli import adjust_bands, ltx_band_base, ltx_bands

logger = logging.getLogger(__name__)

__all__ = ["AXES", "SUPPORTED", "RuleHandle", "apply_rule", "cogvideox_rotary_emb", "detect_host"]

AXES = ("time", "height", "width")

RuleLike = Union[None, str, dict, ScalingRule]


def _import(module: str, name: str):
    """A diffusers class, or None when this diffusers version lacks it (that host is then unsupported)."""
    try:
        mod = __import__(f"diffusers.models.transformers.{module}", fromlist=[name])
    except ImportError as err:
        logger.debug("diffusers has no %s (%s): host unsupported", module, err)
        return None
    return getattr(mod, name, None)


_HunyuanRope = _import("transformer_hunyuan_video", "HunyuanVideoRotaryPosEmbed")
_WanRope = _import("transformer_wan", "WanRotaryPosEmbed")
_SkyRope = _import("transformer_skyreels_v2", "SkyReelsV2RotaryPosEmbed")
_LTXRope = _import("transformer_ltx", "LTXVideoRotaryPosEmbed")
_CogModel = _import("cogvideox_transformer_3d", "CogVideoXTransformer3DModel")

SUPPORTED = (
    "HunyuanVideoTransformer3DModel (rope: HunyuanVideoRotaryPosEmbed)",
    "WanTransformer3DModel (rope: WanRotaryPosEmbed)",
    "SkyReelsV2Transformer3DModel (rope: SkyReelsV2RotaryPosEmbed)",
    "CogVideoXTransformer3DModel via its pipeline (_prepare_rotary_positional_embeddings), 1.0 and 1.5",
    "LTXVideoTransformer3DModel (rope: LTXVideoRotaryPosEmbed)",
    "any pipeline whose .transformer is one of these",
)

_VAE_DEFAULT = {"hunyuanvideo": (4, 8), "wan": (4, 8), "skyreels-v2": (4, 8), "cogvideox": (4, 8),
                "cogvideox1.5": (4, 8), "ltx": (8, 32)}
_MARK = "_vispos_rule_handle"


# --------------------------------------------------------------------------------------------------- detection
def _is(obj, cls) -> bool:
    return cls is not None and isinstance(obj, cls)


def detect_host(obj) -> Tuple[str, object, Optional[object]]:
    """``(host, transformer, pipeline)`` for a diffusers video transformer or pipeline.

    ``host`` is one of ``hunyuanvideo``, ``wan``, ``skyreels-v2``, ``cogvideox``, ``cogvideox1.5``, ``ltx``.
    Raises ``ValueError`` naming the supported classes for anything else.
    """
    pipe = None
    model = obj
    if not isinstance(obj, torch.nn.Module) and isinstance(getattr(obj, "transformer", None), torch.nn.Module):
        pipe, model = obj, obj.transformer
    rope = getattr(model, "rope", None)
    if _is(rope, _HunyuanRope):
        return "hunyuanvideo", model, pipe
    if _is(rope, _SkyRope):
        return "skyreels-v2", model, pipe
    if _is(rope, _WanRope):
        return "wan", model, pipe
    if _is(rope, _LTXRope):
        return "ltx", model, pipe
    if _is(model, _CogModel):
        if not model.config.use_rotary_positional_embeddings:
            raise ValueError("this CogVideoX transformer has use_rotary_positional_embeddings=False: it has no RoPE")
        return ("cogvideox" if model.config.patch_size_t is None else "cogvideox1.5"), model, pipe
    raise ValueError(
        f"unsupported object {type(obj).__name__}: expected a diffusers video transformer or pipeline, one of "
        + "; ".join(SUPPORTED)
    )


# ----------------------------------------------------------------------------------------------- arguments
def _check_len(value, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _to_latent(value: Optional[int], units: str, factor: int, temporal: bool, name: str) -> Optional[int]:
    if value is None or units == "latent":
        return value
    if temporal:
        if (value - 1) % factor:
            raise ValueError(f"{name}={value} video frames must be {factor}*m + 1 (VAE temporal compression {factor})")
        return (value - 1) // factor + 1
    if value % factor:
        raise ValueError(f"{name}={value} pixels must be a multiple of the VAE spatial compression {factor}")
    return value // factor


def _vae_scale(host: str, pipe, vae_scale) -> Tuple[int, int]:
    if vae_scale is not None:
        if (not isinstance(vae_scale, (tuple, list)) or len(vae_scale) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vae_scale)):
            raise ValueError(f"vae_scale must be (temporal, spatial) positive ints, got {vae_scale!r}")
        return int(vae_scale[0]), int(vae_scale[1])
    if pipe is not None:
        for t_name, s_name in (("vae_scale_factor_temporal", "vae_scale_factor_spatial"),
                               ("vae_temporal_compression_ratio", "vae_spatial_compression_ratio")):
            t, s = getattr(pipe, t_name, None), getattr(pipe, s_name, None)
            if isinstance(t, int) and isinstance(s, int):
                return t, s
    return _VAE_DEFAULT[host]


def _patch(host: str, model) -> Tuple[int, int, int]:
    """(p_t, p_h, p_w) by which the host turns latents into RoPE positions."""
    if host in ("wan", "skyreels-v2"):
        p_t, p_h, p_w = model.rope.patch_size
        return int(p_t), int(p_h), int(p_w)
    if host in ("hunyuanvideo", "ltx"):
        return int(model.rope.patch_size_t), int(model.rope.patch_size), int(model.rope.patch_size)
    p = int(model.config.patch_size)
    return int(model.config.patch_size_t or 1), p, p


def _positions(host: str, patch: Tuple[int, int, int], axis: int, latent: Optional[int]) -> Optional[float]:
    if latent is None:
        return None
    if axis == 0 and host == "cogvideox1.5":
        return float(math.ceil(latent / patch[0]))
    return float(latent // patch[axis])


@dataclass(frozen=True)
class _Axis:
    """The rule of one axis and its lengths in RoPE positions (``target`` None: the grid at call time)."""

    rule: ScalingRule
    target: Optional[float]
    train: Optional[float]

    def resolve(self, grid_len: int) -> ScalingRule:
        if self.rule.name == "none":
            return self.rule
        test = self.rule.test_len if self.rule.test_len is not None else (self.target or float(grid_len))
        train = self.rule.train_len if self.rule.train_len is not None else self.train
        return replace(self.rule, test_len=test, train_len=train)


def _needs_train(rule: ScalingRule) -> bool:
    if rule.name in ("pi", "ntk", "yarn"):
        return True
    if rule.name == "ntk_base":
        return rule.factor is None
    if rule.name == "riflex":
        return rule.k is None and rule.N is None
    return False


def _axis_rules(time: RuleLike, space) -> List[ScalingRule]:
    rt = as_rule(time)
    if isinstance(space, (tuple, list)):
        if len(space) != 2:
            raise ValueError(f"space must be one rule or a pair (height_rule, width_rule), got {space!r}")
        rh, rw = as_rule(space[0]), as_rule(space[1])
    else:
        rh = rw = as_rule(space)
    return [rt, rh, rw]


def _n_components(host: str, model) -> Tuple[int, int, int]:
    if host == "hunyuanvideo":
        return tuple(int(d) // 2 for d in model.rope.rope_dim)
    if host in ("wan", "skyreels-v2"):
        r = model.rope
        return r.t_dim // 2, r.h_dim // 2, r.w_dim // 2
    if host == "ltx":
        n = model.rope.dim // 6
        return n, n, n
    d = int(model.config.attention_head_dim)
    return d // 8, d // 16 * 3, d // 16 * 3


def _build_axes(host, model, pipe, time, space, num_frames, height, width, train_frames, train_height,
                train_width, units, vae_scale) -> List[_Axis]:
    if units not in ("latent", "pixel"):
        raise ValueError(f"units must be 'latent' or 'pixel', got {units!r}")
    names = ("num_frames", "height", "width", "train_frames", "train_height", "train_width")
    vals = [_check_len(v, n) for v, n in zip((num_frames, height, width, train_frames, train_height, train_width),
                                               names)]
    rules = _axis_rules(time, space)
    t_vae, s_vae = _vae_scale(host, pipe, vae_scale) if units == "pixel" else (1, 1)
    patch = _patch(host, model)
    ncomp = _n_components(host, model)
    axes = []
    for a in range(3):
        f = t_vae if a == 0 else s_vae
        target = _positions(host, patch, a, _to_latent(vals[a], units, f, a == 0, names[a]))
        train = _positions(host, patch, a, _to_latent(vals[3 + a], units, f, a == 0, names[3 + a]))
        rule = rules[a]
        if rule.name != "none" and train is None and rule.train_len is None and _needs_train(rule):
            raise ValueError(f"rule {rule.name!r} on the {AXES[a]} axis needs its training length: pass "
                             f"{names[3 + a]}= (or k=/N= for riflex, factor= for ntk_base)")
        if rule.name == "riflex" and rule.k is not None and rule.k > ncomp[a]:
            raise ValueError(f"RIFLEx k={rule.k} is out of range: the {AXES[a]} axis has {ncomp[a]} components")
        if ncomp[a] == 0 and rule.name != "none":
            raise ValueError(f"the {AXES[a]} axis of this {host} model has no rotary components")
        axes.append(_Axis(rule, target, train))
    return axes


# -------------------------------------------------------------------------------------------- band helpers
def _merge(host_freqs: torch.Tensor, theta64: torch.Tensor, new64: torch.Tensor) -> torch.Tensor:
    """The host's own bands where the rule left them alone, the rule's (cast to the host dtype) elsewhere."""
    changed = (new64 != theta64).to(host_freqs.device)
    if not bool(changed.any()):
        return host_freqs
    return torch.where(changed, new64.to(device=host_freqs.device, dtype=host_freqs.dtype), host_freqs)


def _standard_bands(host_freqs: torch.Tensor, rule: ScalingRule, base: float, dim: int) -> Tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """(bands for the host computation, adjusted float64 bands) of a ``b^(-2j/d)`` axis."""
    if rule.name == "none":
        return host_freqs, rope_freqs(dim, base)
    theta64 = rope_freqs(dim, base)
    new64 = adjust_bands(theta64, rule, base, dim)
    return _merge(host_freqs, theta64, new64), new64


def _interleaved_cos_sin(pos: torch.Tensor, freqs: torch.Tensor, attn: float = 1.0):
    """cos/sin of ``pos x freqs``, each band repeated for its pair, float32 (diffusers' ``use_real`` path)."""
    ang = torch.outer(pos, freqs)
    n = ang.shape[1] * 2
    cos = ang.cos().repeat_interleave(2, dim=1, output_size=n).float()
    sin = ang.sin().repeat_interleave(2, dim=1, output_size=n).float()
    if attn != 1.0:
        cos, sin = cos * attn, sin * attn
    return cos, sin


# ------------------------------------------------------------------------------------------------- handle
class RuleHandle:
    """An applied rule: :meth:`remove` undoes it; also a context manager (undo on exit).

    Attributes:
        host: the detected host name.
        axes: per axis (``time``, ``height``, ``width``) the rule given and its lengths in RoPE positions.
        last_bands: per axis, the adjusted float64 bands (per RoPE position, highest first) at the last call.
    """

    def __init__(self, host: str, target, axes: Sequence[_Axis], undo):
        self.host = host
        self.axes: Dict[str, _Axis] = dict(zip(AXES, axes))
        self.last_bands: Dict[str, torch.Tensor] = {}
        self._target = target
        self._undo = undo
        self.active = True

    def remove(self) -> None:
        """Undo the rule (idempotent)."""
        if not self.active:
            return
        self._undo()
        if getattr(self._target, _MARK, None) is self:
            delattr(self._target, _MARK)
        self.active = False

    def __enter__(self) -> "RuleHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        rules = ", ".join(f"{a}={ax.rule.name}" for a, ax in self.axes.items())
        return f"RuleHandle(host={self.host!r}, {rules}, active={self.active})"

    def _resolve(self, sizes: Sequence[int]) -> List[ScalingRule]:
        return [ax.resolve(int(n)) for ax, n in zip(self.axes.values(), sizes)]


def _patch_forward(rope, forward):
    """Install ``forward`` on this instance only; the returned undo restores whatever was there before (an
    instance-level forward set by accelerate hooks or the user, or none)."""
    had = "forward" in vars(rope)
    before = vars(rope).get("forward")
    rope.forward = forward

    def undo():
        if had:
            rope.forward = before
        else:
            vars(rope).pop("forward", None)

    return undo


# ------------------------------------------------------------------------------------------ HunyuanVideo
def _install_hunyuan(handle: RuleHandle, rope) -> None:
    def forward(hidden_states: torch.Tensor, *args, **kwargs):
        _, _, f, h, w = hidden_states.shape
        sizes = [f // rope.patch_size_t, h // rope.patch_size, w // rope.patch_size]
        dev = hidden_states.device
        grids = [torch.arange(0, n, device=dev, dtype=torch.float32) for n in sizes]
        grid = torch.stack(torch.meshgrid(*grids, indexing="ij"), dim=0)
        rules = handle._resolve(sizes)
        cos_l, sin_l = [], []
        for i in range(3):
            d = int(rope.rope_dim[i])
            host = 1.0 / (float(rope.theta) ** (torch.arange(0, d, 2, dtype=torch.float32, device=dev) / d))
            freqs, new64 = _standard_bands(host, rules[i], float(rope.theta), d)
            handle.last_bands[AXES[i]] = new64
            c, s = _interleaved_cos_sin(grid[i].reshape(-1), freqs, rule_attention_factor(rules[i]))
            cos_l.append(c)
            sin_l.append(s)
        return torch.cat(cos_l, dim=1), torch.cat(sin_l, dim=1)

    handle._undo = _patch_forward(rope, forward)


# ---------------------------------------------------------------------------------------------- Wan family
def _wan_dtype() -> torch.dtype:
    return torch.float32 if torch.backends.mps.is_available() else torch.float64


def _wan_tables(rope, rules: Sequence[ScalingRule], length: int, theta: float, handle=None):
    fd = _wan_dtype()
    cos_l, sin_l = [], []
    for i, d in enumerate((rope.t_dim, rope.h_dim, rope.w_dim)):
        host = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=fd) / d))
        freqs, new64 = _standard_bands(host, rules[i], theta, d)
        if handle is not None:
            handle.last_bands[AXES[i]] = new64
        c, s = _interleaved_cos_sin(torch.arange(length), freqs, rule_attention_factor(rules[i]))
        cos_l.append(c)
        sin_l.append(s)
    return torch.cat(cos_l, dim=1), torch.cat(sin_l, dim=1)


def _install_wan(handle: RuleHandle, rope) -> None:
    orig_cos, orig_sin, orig_len = rope.freqs_cos, rope.freqs_sin, int(rope.max_seq_len)
    theta = float(getattr(rope, "theta", 10000.0))
    none = [ScalingRule("none")] * 3
    check_cos, check_sin = _wan_tables(rope, none, orig_len, theta)
    if not (torch.equal(check_cos, orig_cos.detach().cpu().to(check_cos.dtype))
            and torch.equal(check_sin, orig_sin.detach().cpu().to(check_sin.dtype))):
        raise ValueError(
            f"{type(rope).__name__}: its buffers do not match RoPE base {theta} (diffusers builds them with 10000 "
            "and stores no base); the model was changed after construction, so vispos cannot rebuild them safely"
        )
    state = {"key": None}

    def pre_hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        _, _, f, h, w = hs.shape
        p_t, p_h, p_w = module.patch_size
        sizes = [f // p_t, h // p_h, w // p_w]
        rules = handle._resolve(sizes)
        length = max(orig_len, *sizes)
        key = (tuple(rules), length)
        if key == state["key"]:
            return None
        cur = module.freqs_cos
        if length == orig_len and all(r.name == "none" for r in rules):
            cos, sin = orig_cos, orig_sin
            for i in range(3):
                handle.last_bands[AXES[i]] = rope_freqs((module.t_dim, module.h_dim, module.w_dim)[i], theta)
        else:
            cos, sin = _wan_tables(module, rules, length, theta, handle)
        module.freqs_cos = cos.to(device=cur.device, dtype=cur.dtype)
        module.freqs_sin = sin.to(device=cur.device, dtype=cur.dtype)
        state["key"] = key
        return None

    hook = rope.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def undo():
        hook.remove()
        cur = rope.freqs_cos
        rope.freqs_cos = orig_cos.to(device=cur.device, dtype=cur.dtype)
        rope.freqs_sin = orig_sin.to(device=cur.device, dtype=cur.dtype)

    handle._undo = undo


# ------------------------------------------------------------------------------------------------ LTX-Video
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


def _install_ltx(handle: RuleHandle, rope) -> None:
    cls_forward = type(rope).forward

    def forward(hidden_states, num_frames=None, height=None, width=None, rope_interpolation_scale=None,
                video_coords=None):
        if video_coords is not None:
            if any(ax.rule.name != "none" for ax in handle.axes.values()):
                raise ValueError("LTX-Video with video_coords: vispos rules need rope_interpolation_scale mode "
                                 "(positions on a regular grid); only the rule 'none' is supported here")
            return cls_forward(rope, hidden_states, num_frames, height, width, rope_interpolation_scale,
                               video_coords)
        dev = hidden_states.device
        grid = rope._prepare_video_coords(hidden_states.size(0), num_frames, height, width,
                                          rope_interpolation_scale=rope_interpolation_scale, device=dev)
        n = rope.dim // 6
        freqs = rope.theta ** torch.linspace(math.log(1.0, rope.theta), math.log(rope.theta, rope.theta), n,
                                             device=dev, dtype=torch.float32)
        freqs = freqs * math.pi / 2.0
        rules = handle._resolve([num_frames, height, width])
        per_axis, attn = [], []
        base_eff = ltx_band_base(rope.theta, n) if n > 1 else None
        for a in range(3):
            step = _ltx_step(rope_interpolation_scale, a, rope)
            theta64 = ltx_bands(rope.theta, rope.dim, step)
            if rules[a].name == "none":
                per_axis.append(freqs)
                handle.last_bands[AXES[a]] = theta64
                attn.append(1.0)
                continue
            if base_eff is None:
                raise ValueError("LTX-Video with dim // 6 == 1 has a single band per axis: rules need at least 2")
            canonical = rope_freqs(2 * n, base_eff)
            new64 = adjust_bands(theta64, rules[a], base_eff, 2 * n, canonical=canonical)
            handle.last_bands[AXES[a]] = new64
            # back to LTX order (lowest first) and to omega = theta / (2 step)
            per_axis.append(_ltx_merge(freqs, theta64, new64, step))
            attn.append(rule_attention_factor(rules[a]))
        freqs3 = torch.stack(per_axis, dim=0)  # (3, n)
        ang = freqs3 * (grid.unsqueeze(-1) * 2 - 1)  # (B, N, 3, n)
        ang = ang.transpose(-1, -2).flatten(2)
        cos = ang.cos()
        sin = ang.sin()
        if any(f != 1.0 for f in attn):
            fac = torch.tensor(attn, dtype=cos.dtype, device=dev).repeat(n)
            cos, sin = cos * fac, sin * fac
        cos = cos.repeat_interleave(2, dim=-1)
        sin = sin.repeat_interleave(2, dim=-1)
        if rope.dim % 6 != 0:
            pad = rope.dim % 6
            cos = torch.cat([torch.ones_like(cos[:, :, :pad]), cos], dim=-1)
            sin = torch.cat([torch.zeros_like(cos[:, :, :pad]), sin], dim=-1)
        return cos, sin

    handle._undo = _patch_forward(rope, forward)


def _ltx_merge(freqs: torch.Tensor, theta64: torch.Tensor, new64: torch.Tensor, step: float) -> torch.Tensor:
    """LTX omegas (lowest first, float32): the host's where unchanged, ``new / (2 step)`` elsewhere."""
    changed = (new64 != theta64).flip(0).to(freqs.device)
    if not bool(changed.any()):
        return freqs
    omega_new = (new64 / (2.0 * step)).flip(0).to(device=freqs.device, dtype=freqs.dtype)
    return torch.where(changed, omega_new, freqs)


# ------------------------------------------------------------------------------------------------ CogVideoX
def _crop_region(grid_hw: Tuple[int, int], base_w: int, base_h: int):
    """Top-left and bottom-right of a ``grid_hw`` grid resized to fit the base grid and centred (CogVideoX 1.0)."""
    h, w = grid_hw
    if h / w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / h * w))
    else:
        rw, rh = base_w, int(round(base_w / w * h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def _cog_cos_sin(model, axes: Sequence[_Axis], latent_frames: int, grid_h: int, grid_w: int, device,
                 handle: Optional[RuleHandle] = None):
    cfg = model.config
    p, p_t = int(cfg.patch_size), cfg.patch_size_t
    base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
    f32 = torch.float32
    if p_t is None:
        (y0, x0), (y1, x1) = _crop_region((grid_h, grid_w), base_w, base_h)
        pos_h = torch.linspace(y0, y1 * (grid_h - 1) / grid_h, grid_h, device=device, dtype=f32)
        pos_w = torch.linspace(x0, x1 * (grid_w - 1) / grid_w, grid_w, device=device, dtype=f32)
        t = latent_frames
        pos_t = torch.linspace(0, t * (t - 1) / t, t, device=device, dtype=f32)
    else:
        t = (latent_frames + p_t - 1) // p_t
        # diffusers builds base-size tables and slices them; longer grids extend the same positions
        pos_h = torch.arange(max(base_h, grid_h), device=device, dtype=f32)
        pos_w = torch.arange(max(base_w, grid_w), device=device, dtype=f32)
        pos_t = torch.arange(t, device=device, dtype=f32)
    d = int(cfg.attention_head_dim)
    dims = (d // 4, d // 8 * 3, d // 8 * 3)
    sizes = (t, grid_h, grid_w)
    if p_t is None:
        # 1.0 already squeezes any grid into the base crop region: its spatial positions span the crop extent, so
        # rules see that extent (<= the base grid) as L', not the token count, and never squeeze twice
        rule_sizes = (t, y1 - y0, x1 - x0)
    else:
        rule_sizes = sizes
    rules = [ax.resolve(n) for ax, n in zip(axes, rule_sizes)]
    tables = []
    for i, pos in enumerate((pos_t, pos_h, pos_w)):
        host = 1.0 / (10000.0 ** (torch.arange(0, dims[i], 2, dtype=f32, device=device) / dims[i]))
        freqs, new64 = _standard_bands(host, rules[i], 10000.0, dims[i])
        if handle is not None:
            handle.last_bands[AXES[i]] = new64
        c, s = _interleaved_cos_sin(pos, freqs, rule_attention_factor(rules[i]))
        tables.append((c[: sizes[i]], s[: sizes[i]]))

    def combine(ft, fh, fw):
        ft = ft[:, None, None, :].expand(-1, grid_h, grid_w, -1)
        fh = fh[None, :, None, :].expand(t, -1, grid_w, -1)
        fw = fw[None, None, :, :].expand(t, grid_h, -1, -1)
        return torch.cat([ft, fh, fw], dim=-1).view(t * grid_h * grid_w, -1)

    return combine(*(c for c, _ in tables)), combine(*(s for _, s in tables))


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
    host, model, _ = detect_host(transformer)
    if host not in ("cogvideox", "cogvideox1.5"):
        raise ValueError(f"cogvideox_rotary_emb needs a CogVideoXTransformer3DModel, got a {host} model")
    for v, n in ((num_frames, "num_frames"), (height, "height"), (width, "width")):
        if v is None:
            raise ValueError(f"{n} is required (the size to embed), got None")
    axes = _build_axes(host, model, None, time, space, num_frames, height, width, train_frames, train_height,
                       train_width, units, vae_scale)
    t_vae, s_vae = _vae_scale(host, None, vae_scale) if units == "pixel" else (1, 1)
    lat_f = _to_latent(num_frames, units, t_vae, True, "num_frames")
    lat_h = _to_latent(height, units, s_vae, False, "height")
    lat_w = _to_latent(width, units, s_vae, False, "width")
    p = int(model.config.patch_size)
    return _cog_cos_sin(model, axes, lat_f, lat_h // p, lat_w // p, device)


def _install_cog_pipeline(handle: RuleHandle, pipe, model) -> None:
    name = "_prepare_rotary_positional_embeddings"
    if not callable(getattr(pipe, name, None)):
        raise ValueError(f"{type(pipe).__name__} has no {name}: not a CogVideoX pipeline")
    had = name in vars(pipe)
    before = vars(pipe).get(name)

    def prepare(self, height: int, width: int, num_frames: int, device):
        s = self.vae_scale_factor_spatial * model.config.patch_size
        return _cog_cos_sin(model, list(handle.axes.values()), num_frames, height // s, width // s, device, handle)

    setattr(pipe, name, types.MethodType(prepare, pipe))

    def undo():
        if had:
            setattr(pipe, name, before)
        else:
            vars(pipe).pop(name, None)

    handle._undo = undo


# ---------------------------------------------------------------------------------------------------- entry
def apply_rule(
    obj, time: RuleLike = None, space=None, *, num_frames: Optional[int] = None, height: Optional[int] = None,
    width: Optional[int] = None, train_frames: Optional[int] = None, train_height: Optional[int] = None,
    train_width: Optional[int] = None, units: str = "latent", vae_scale: Optional[Tuple[int, int]] = None,
) -> RuleHandle:
    """Apply a frequency scaling rule per axis to a diffusers video transformer or pipeline.

    Args:
        obj: a HunyuanVideo / Wan / SkyReels-V2 / LTX-Video transformer, or a pipeline holding one, or a CogVideoX
            pipeline (1.0 or 1.5). Anything else raises ``ValueError`` naming the supported classes.
        time: rule for the temporal axis: a name in :data:`vispos.freqs.RULES`, a dict of
            :class:`~vispos.freqs.ScalingRule` fields (e.g. ``{"name": "riflex", "k": 4}``) or a ScalingRule.
        space: rule for both spatial axes, or a pair ``(height_rule, width_rule)``.
        num_frames, height, width: target lengths (see the module docstring for units); ``None``: the grid the
            host sees at each call.
        train_frames, train_height, train_width: training lengths, required by the rules that use them.
        units: ``"latent"`` (default) or ``"pixel"``.
        vae_scale: ``(temporal, spatial)`` VAE compression for ``units="pixel"`` (default: the pipeline's, else
            the host's usual one).

    Returns:
        a :class:`RuleHandle`; ``handle.remove()`` (or leaving a ``with`` block) restores the host bit-exactly.
    """
    host, model, pipe = detect_host(obj)
    if host.startswith("cogvideox") and pipe is None:
        raise ValueError(
            "CogVideoX computes RoPE in its pipeline, not in the transformer: pass the pipeline to apply_rule, or "
            "build image_rotary_emb for a bare transformer with cogvideox_rotary_emb(transformer, ...)"
        )
    axes = _build_axes(host, model, pipe, time, space, num_frames, height, width, train_frames, train_height,
                       train_width, units, vae_scale)
    target = pipe if host.startswith("cogvideox") else model.rope
    if getattr(target, _MARK, None) is not None:
        raise ValueError(f"a vispos rule is already applied to this {host} model; remove() it first")
    handle = RuleHandle(host, target, axes, undo=None)
    if host == "hunyuanvideo":
        _install_hunyuan(handle, model.rope)
    elif host in ("wan", "skyreels-v2"):
        _install_wan(handle, model.rope)
    elif host == "ltx":
        _install_ltx(handle, model.rope)
    else:
        _install_cog_pipeline(handle, pipe, model)
    setattr(target, _MARK, handle)
    second = getattr(pipe, "transformer_2", None) if pipe is not None else None
    if isinstance(second, torch.nn.Module) and not host.startswith("cogvideox"):
        # two-expert pipelines (Wan 2.2 high/low-noise, its I2V and VACE variants): the same rule on both
        host2, model2, _ = detect_host(second)
        if host2 != host:
            handle.remove()
            raise ValueError(f"pipeline holds a {host} transformer and a {host2} transformer_2; expected one kind")
        if getattr(model2.rope, _MARK, None) is not None:
            handle.remove()
            raise ValueError("a vispos rule is already applied to this pipeline's transformer_2; remove() it first")
        handle2 = RuleHandle(host, model2.rope, axes, undo=None)
        if host == "hunyuanvideo":
            _install_hunyuan(handle2, model2.rope)
        elif host in ("wan", "skyreels-v2"):
            _install_wan(handle2, model2.rope)
        else:
            _install_ltx(handle2, model2.rope)
        setattr(model2.rope, _MARK, handle2)
        first_undo = handle._undo

        def undo_both():
            first_undo()
            handle2.remove()

        handle._undo = undo_both
        handle.second = handle2
    logger.info("vispos: %r", handle)
    return handle
