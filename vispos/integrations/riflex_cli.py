"""``vispos riflex``: the RIFLEx table for a diffusers video model (no diffusers needed).

The library pieces live in :mod:`vispos.integrations.diffusers` (:func:`~vispos.integrations.diffusers.report.riflex_table`,
the band helpers in :mod:`~vispos.integrations.diffusers.bands`); this module is only the command line.
Every length is in latent frames (``--frames``, ``--train-frames``, ``--N``) or video frames (``--pixel-frames``).
"""
from __future__ import annotations

import argparse
import json
from typing import Optional, Tuple

from .diffusers.bands import latent_frames
from .diffusers.report import HOSTS, riflex_table

__all__ = ["add_riflex_args", "run_riflex"]


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
    vae_t = args.vae_temporal or (HOSTS[args.model_class].vae_t if args.model_class else 4)
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

