"""``vispos riflex``: the RIFLEx table for a diffusers video model (no diffusers needed).

The library pieces live in :mod:`vispos.integrations.diffusers` (:func:`~vispos.integrations.diffusers.report.riflex_table`,
the band helpers in :mod:`~vispos.integrations.diffusers.bands`); this module is only the command line.
Every length is in latent frames (``--frames``, ``--train-frames``, ``--N``) or video frames (``--pixel-frames``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Tuple

from ..freqs import RIFLEX_MODES
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
    trn.add_argument("--train-frames", type=int,
                     help="training length L in latent frames (default: the host's; mode finetune: the length "
                          "the checkpoint was fine-tuned at, the official N_k)")
    trn.add_argument("--train-pixel-frames", type=int, help="training length in video frames")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--N", type=float, default=None,
                     help="first latent frame where repetition appears (latent frames, as N in apply_rule)")
    sel.add_argument("--k", type=int, default=None, help="intrinsic component, 1-indexed from the highest frequency")
    p.add_argument("--mode", choices=RIFLEX_MODES, default="checked",
                   help="checked: training-free, only when L' > N_k (default); finetune: theta_k = gamma 2pi/L at "
                        "every length (official fine-tuned checkpoints); unchecked: theta_k = gamma 2pi/L' at every "
                        "length (the community's Wan k=6 variant: changes the model below N_k too)")
    p.add_argument("--base", type=float, default=None, help="temporal RoPE base (LTX: theta)")
    p.add_argument("--dim", type=int, default=None, help="temporal rotary dim (LTX: the transformer's inner dim)")
    p.add_argument("--vae-temporal", type=int, default=None, help="VAE temporal compression (default: the host's)")
    p.add_argument("--gamma", type=float, default=0.9, help="RIFLEx factor (0.9 official code, 1.0 paper)")
    p.add_argument("--frame-rate", type=float, default=25.0, help="LTX-Video only: frame rate given to the pipeline")
    p.add_argument("--time-step", type=float, default=1.0,
                   help="temporal RoPE positions per latent frame (Cosmos with fps: base_fps / fps, e.g. 1.5 at 16 "
                        "fps); lengths and N stay in latent frames, as in apply_rule (default: 1)")
    p.add_argument("--all", action="store_true", help=f"print every component (default: at most {_COMPACT} rows "
                                                      "around k)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


_COMPACT = 24  # rows shown around k when an axis has more components (LTX: 341)


def _to_latent(value: Optional[int], pixel: Optional[int], vae_t: int) -> Tuple[Optional[int], Optional[str]]:
    if pixel is not None:
        lat = latent_frames(pixel, vae_t)
        return lat, f"{pixel} video frames -> ({pixel} - 1) / {vae_t} + 1 = {lat} latent frames"
    return value, None


def _lines(rep: dict, gamma: float, show_all: bool):
    vae_t = rep["vae_t"]
    yield f"model: {rep['model_class'] or 'custom'}  ({rep['source']})"
    dim = f"inner dim {rep['dim']} ({rep['bands_per_axis']} bands per axis)" if "bands_per_axis" in rep \
        else f"dim {rep['dim']}"
    yield f"base {rep['base']:g}, {dim}, unit: {rep['unit']}; video frames map as (F - 1) / {vae_t} + 1"
    yield from rep["notes"]
    yield f"train L = {rep['train_len']:g}, target L' = {rep['test_len']:g}, gamma = {gamma}, mode = {rep['mode']}"
    state = "applied" if rep["applied"] else ("not applied: L' <= N_k" if rep["mode"] == "checked" else "unchanged")
    yield (f"k = {rep['k']} ({rep['chosen_by']}), N_k = {rep['N_k']}, theta_k {rep['theta_k']:.6g} -> "
           f"{rep['adjusted_theta_k']:.6g} ({state}); loop length after: {rep['loop_length_after']:.4g}")
    if rep["acts_from_video_frames"] is not None:
        yield (f"acts from {rep['acts_from_video_frames']} video frames ({rep['acts_from_latent_frames']} latent): "
               "shorter videos keep the model's own RoPE")
    else:
        yield f"mode {rep['mode']}: acts at every length (the model changes at its training length too)"
    ext = rep["extension"]
    yield (f"extension {ext['ratio']:.2f}x the training length; RIFLEx paper: about {ext['training_free_max']:g}x "
           f"training-free, {ext['finetuned_max']:g}x with fine-tuning, 4x degrades"
           + ("  <- beyond that guidance" if ext["beyond_guidance"] else ""))
    rows = rep["components"]
    shown = rows
    if not show_all and len(rows) > _COMPACT:
        lo = max(0, min(rep["k"] - 1 - _COMPACT // 2, len(rows) - _COMPACT))
        shown = rows[lo:lo + _COMPACT]
        yield f"({len(rows)} components; rows {lo + 1}..{lo + len(shown)} around k shown, --all for every row)"
    yield f"{'':2}{'k':>4} {'theta':>12} {'period':>12} {'cycles@L':>10} {'cycles@Lp':>10} {'adjusted':>12}"
    for r in shown:
        mark = "*" if r["k"] == rep["k"] else " "
        yield (f"{mark:2}{r['k']:>4} {r['theta']:>12.6g} {r['period']:>12.4f} {r['cycles_train']:>10.3f} "
               f"{r['cycles_test']:>10.3f} {r['adjusted_theta']:>12.6g}")


def run_riflex(args) -> int:
    """Print the RIFLEx table (or JSON). Returns 0 (also when the reader of a pipe, e.g. ``head``, stops early)."""
    vae_t = args.vae_temporal or (HOSTS[args.model_class].vae_t if args.model_class else 4)
    frames, note_f = _to_latent(args.frames, args.pixel_frames, vae_t)
    train, note_t = _to_latent(args.train_frames, args.train_pixel_frames, vae_t)
    rep = riflex_table(
        args.model_class, frames=frames, train_frames=train, N=args.N, k=args.k, base=args.base, dim=args.dim,
        gamma=args.gamma, frame_rate=args.frame_rate, mode=args.mode, vae_t=vae_t, time_step=args.time_step,
    )
    rep["notes"] = [n for n in (note_f, note_t) if n]
    text = json.dumps(rep, indent=2) if args.json else "\n".join(_lines(rep, args.gamma, args.all))
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader closed the pipe (`| head`): stop quietly, and keep the interpreter's final flush from failing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
