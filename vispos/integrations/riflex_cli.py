"""``vispos riflex``: the RIFLEx table for a diffusers video model, and the band helpers the adapters share.

Nothing here needs diffusers: the temporal RoPE of each host is described by a few numbers (:data:`HOSTS`).

Units. Every length in the table is in *temporal RoPE positions*, which are latent frames for every host except
CogVideoX 1.5 (``patch_size_t = 2``: position ``i`` covers latent frames ``2i, 2i+1``; a latent length ``F`` has
``ceil(F / 2)`` positions). Pixel (video) frames map to latent frames as ``(F - 1) / t + 1`` with the VAE's
temporal compression ``t`` (4 for HunyuanVideo, Wan, SkyReels-V2, CogVideoX; 8 for LTX-Video), so ``F`` must be
``t*m + 1``.

LTX-Video has no ``b^(-2j/d)`` bands: its ``dim // 6`` frequencies per axis run geometrically from ``pi/2`` to
``theta * pi/2`` and multiply a normalised coordinate ``2 g - 1`` with ``g = p * s_t * p_t / base_num_frames``
(``s_t`` = VAE temporal compression / frame rate in the pipeline). Per temporal position the angular frequency is
``theta_j = pi * f_j * s_t * p_t / base_num_frames``; :func:`ltx_bands` returns these (highest first, so ``k``
counts from the highest frequency as for the other hosts) and :func:`ltx_band_base` the equivalent base for the
NTK rules.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Optional, Tuple

import torch

from ..freqs import (
    ScalingRule,
    apply_rule,
    bands_report,
    riflex_report,
)

__all__ = [
    "HOSTS",
    "latent_frames",
    "ltx_bands",
    "ltx_band_base",
    "adjust_bands",
    "bands_report",
    "riflex_table",
    "add_riflex_args",
    "run_riflex",
]

# Temporal RoPE of each host at its released configuration (latent units).
#   base, dim: temporal base and rotary dim (LTX: theta and the transformer's inner dim; it uses dim // 6 bands)
#   train: training length in latent frames; vae_t: VAE temporal compression; p_t: temporal patch size
HOSTS = {
    "hunyuanvideo": dict(base=256.0, dim=16, train=33, vae_t=4, p_t=1, bands="standard",
                         source="rope_axes_dim (16, 56, 56), rope_theta 256; trained on 129 frames"),
    "wan": dict(base=10000.0, dim=44, train=21, vae_t=4, p_t=1, bands="standard",
                source="attention_head_dim 128 -> t_dim 44; trained on 81 frames"),
    "skyreels-v2": dict(base=10000.0, dim=44, train=21, vae_t=4, p_t=1, bands="standard",
                        source="attention_head_dim 128 -> t_dim 44; trained on 81 frames (97 for some checkpoints)"),
    "cogvideox": dict(base=10000.0, dim=16, train=13, vae_t=4, p_t=1, bands="standard",
                      source="attention_head_dim 64 -> dim_t 16; trained on 49 frames"),
    "cogvideox1.5": dict(base=10000.0, dim=16, train=21, vae_t=4, p_t=2, bands="standard",
                         source="attention_head_dim 64 -> dim_t 16, patch_size_t 2; trained on 81 frames"),
    "ltx": dict(base=10000.0, dim=2048, train=16, vae_t=8, p_t=1, bands="ltx", base_num_frames=20,
                source="inner dim 2048 (341 bands per axis), base_num_frames 20; trained on 121 frames"),
}


def latent_frames(pixel_frames: int, vae_t: int) -> int:
    """Latent frames of a ``pixel_frames``-frame video under a causal VAE of temporal compression ``vae_t``."""
    if isinstance(pixel_frames, bool) or not isinstance(pixel_frames, int) or pixel_frames < 1:
        raise ValueError(f"pixel frames must be a positive int, got {pixel_frames!r}")
    if (pixel_frames - 1) % vae_t:
        raise ValueError(
            f"pixel frames must be {vae_t}*m + 1 for a VAE of temporal compression {vae_t}, got {pixel_frames}"
        )
    return (pixel_frames - 1) // vae_t + 1


def ltx_band_base(theta: float, n: int) -> float:
    """The base ``b`` with ``b^(-2i/(2n)) = theta^(-i/(n-1))``: LTX's bands written in the standard form."""
    if n < 2:
        raise ValueError(f"LTX-Video needs at least 2 bands per axis, got {n}")
    return float(theta) ** (n / (n - 1))


def ltx_bands(theta: float, dim: int, step: float) -> torch.Tensor:
    """LTX-Video angular frequencies per position of one axis, float64, highest first, shape ``(dim // 6,)``.

    ``step`` is the normalised-coordinate increment per position (``s * patch / base``, or 1 without
    ``rope_interpolation_scale``); the angle of position ``p`` is ``omega_j (2 p step - 1)``.
    """
    n = dim // 6
    if n < 1:
        raise ValueError(f"LTX-Video rotary dim must be >= 6, got {dim}")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"LTX coordinate step per position must be positive, got {step!r}")
    omega = float(theta) ** torch.linspace(0.0, 1.0, n, dtype=torch.float64) * (math.pi / 2.0)
    return (2.0 * step * omega).flip(0)


def adjust_bands(
    freqs: torch.Tensor, rule: ScalingRule, base: float, dim: int, canonical: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Apply ``rule`` (lengths filled in) to the per-position bands ``freqs`` (float64, highest first).

    Components a rule does not touch come back bit-identical. ``canonical`` is given when ``freqs`` is not exactly
    ``rope_freqs(dim, base)`` up to a constant (LTX): the NTK rules, which rebuild bands from the base, are then
    applied as the factor they put on ``rope_freqs(dim, base)``.
    """
    freqs = freqs.to(torch.float64)
    if rule.name in ("ntk", "ntk_base") and canonical is not None:
        new = apply_rule(canonical, rule, base, dim)
        ratio = new / canonical
        return torch.where(ratio == 1.0, freqs, freqs * ratio)
    return apply_rule(freqs, rule, base, dim)


def _positions(latent: float, p_t: int) -> float:
    return float(math.ceil(latent / p_t)) if p_t > 1 else float(latent)


def riflex_table(
    model_class: Optional[str] = None, frames: Optional[float] = None, train_frames: Optional[float] = None,
    N: Optional[float] = None, k: Optional[int] = None, base: Optional[float] = None, dim: Optional[int] = None,
    gamma: float = 0.9, frame_rate: float = 25.0,
) -> dict:
    """The RIFLEx report for a host's temporal axis (lengths and ``N`` in latent frames).

    ``model_class`` is a key of :data:`HOSTS` or ``None`` (then ``base``, ``dim`` and ``train_frames`` are
    required: plain ``b^(-2j/d)`` bands). ``base``/``dim`` override the host's values. The report's lengths are in
    temporal RoPE positions (``ceil(F / p_t)``); ``unit`` and ``p_t`` say which.
    """
    if model_class is None:
        if base is None or dim is None or train_frames is None:
            raise ValueError("without --model-class, give --base, --dim and --train-frames")
        host = dict(base=base, dim=dim, train=train_frames, vae_t=4, p_t=1, bands="standard", source="given")
    elif model_class not in HOSTS:
        raise ValueError(f"unknown model class {model_class!r}; expected one of {sorted(HOSTS)}")
    else:
        host = dict(HOSTS[model_class])
    if frames is None:
        raise ValueError("the target length (--frames or --pixel-frames) is required")
    b = float(base) if base is not None else float(host["base"])
    d = int(dim) if dim is not None else int(host["dim"])
    L = float(train_frames) if train_frames is not None else float(host["train"])
    p_t = host["p_t"]
    L_pos, L2_pos = _positions(L, p_t), _positions(float(frames), p_t)
    N_pos = None if N is None else float(N) / p_t
    if host["bands"] == "ltx":
        step = host["vae_t"] / frame_rate * p_t / host["base_num_frames"]
        rep = bands_report(ltx_bands(b, d, step), L_pos, L2_pos, N=N_pos, k=k, gamma=gamma)
        rep.update(base=b, dim=d, frame_rate=frame_rate)
    else:
        rep = riflex_report(b, d, L_pos, L2_pos, N=N_pos, k=k, gamma=gamma)
    rep.update(
        model_class=model_class, source=host["source"], p_t=p_t, vae_t=host["vae_t"],
        unit="latent frames" if p_t == 1 else f"temporal RoPE positions (1 position = {p_t} latent frames)",
        train_frames_latent=L, frames_latent=float(frames),
    )
    return rep


def add_riflex_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``vispos riflex``."""
    p.add_argument("--model-class", choices=sorted(HOSTS), default=None, help="host whose temporal RoPE to tabulate")
    tgt = p.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--frames", type=int, help="target length L' in latent frames")
    tgt.add_argument("--pixel-frames", type=int, help="target length in video frames: latent = (F - 1) / t + 1")
    trn = p.add_mutually_exclusive_group()
    trn.add_argument("--train-frames", type=int, help="training length L in latent frames (default: the host's)")
    trn.add_argument("--train-pixel-frames", type=int, help="training length in video frames")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--N", type=float, default=None, help="first latent frame where repetition appears")
    sel.add_argument("--k", type=int, default=None, help="intrinsic component, 1-indexed from the highest frequency")
    p.add_argument("--base", type=float, default=None, help="temporal RoPE base (LTX: theta)")
    p.add_argument("--dim", type=int, default=None, help="temporal rotary dim (LTX: the transformer's inner dim)")
    p.add_argument("--vae-temporal", type=int, default=None, help="VAE temporal compression (default: the host's)")
    p.add_argument("--gamma", type=float, default=0.9, help="RIFLEx factor (0.9 official code, 1.0 paper)")
    p.add_argument("--frame-rate", type=float, default=25.0, help="LTX-Video only: frame rate given to the pipeline")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _to_latent(value: Optional[int], pixel: Optional[int], vae_t: int) -> Tuple[Optional[int], Optional[str]]:
    if pixel is not None:
        lat = latent_frames(pixel, vae_t)
        return lat, f"{pixel} video frames -> ({pixel} - 1) / {vae_t} + 1 = {lat} latent frames"
    return value, None


def run_riflex(args) -> int:
    """Print the RIFLEx table (or JSON). Returns 0."""
    vae_t = args.vae_temporal or (HOSTS[args.model_class]["vae_t"] if args.model_class else 4)
    frames, note_f = _to_latent(args.frames, args.pixel_frames, vae_t)
    train, note_t = _to_latent(args.train_frames, args.train_pixel_frames, vae_t)
    rep = riflex_table(
        args.model_class, frames=frames, train_frames=train, N=args.N, k=args.k, base=args.base, dim=args.dim,
        gamma=args.gamma, frame_rate=args.frame_rate,
    )
    rep["notes"] = [n for n in (note_f, note_t) if n]
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"model: {rep['model_class'] or 'custom'}  ({rep['source']})")
    print(f"base {rep['base']:g}, dim {rep['dim']}, unit: {rep['unit']}; video frames map as (F - 1) / {vae_t} + 1")
    for n in rep["notes"]:
        print(n)
    print(f"train L = {rep['train_len']:g}, target L' = {rep['test_len']:g}, gamma = {args.gamma}")
    print(f"k = {rep['k']} ({rep['chosen_by']}), N_k = {rep['N_k']}, "
          f"theta_k {rep['theta_k']:.6g} -> {rep['adjusted_theta_k']:.6g} "
          f"({'applied' if rep['applied'] else 'not applied: L_prime <= N_k'}); "
          f"loop length after: {rep['loop_length_after']:.4g}")
    print(f"{'':2}{'k':>4} {'theta':>12} {'period':>12} {'cycles@L':>10} {'cycles@Lp':>10} {'adjusted':>12}")
    for r in rep["components"]:
        mark = "*" if r["k"] == rep["k"] else " "
        print(f"{mark:2}{r['k']:>4} {r['theta']:>12.6g} {r['period']:>12.4f} {r['cycles_train']:>10.3f} "
              f"{r['cycles_test']:>10.3f} {r['adjusted_theta']:>12.6g}")
    return 0

