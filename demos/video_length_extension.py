"""Video length extension through the Python API: train a tiny video DiT with 3D RoPE at 8 frames, generate 16
and 24 frames with each temporal rule, measure repetition and motion, and identify RIFLEx's k from the videos.

    python demos/video_length_extension.py --out results/video_api            # ~ the CPU demo, a few minutes
    python demos/video_length_extension.py --steps 200 --out /tmp/quick       # a quick look
    python demos/video_length_extension.py --diffusers-pipeline /path/to/local/pipeline --frames 45 --train-frames 33

The last part applies RIFLEx to a diffusers video pipeline (HunyuanVideo, Wan, CogVideoX, LTX) stored locally; it is
skipped with a message when no path is given (nothing is downloaded).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

import vispos
from vispos.eval import frames as FR


def train_and_extend(out: Path, steps: int, threads: int) -> dict:
    """The same pipeline as `vispos demo video --scale cpu`, spelled out with the library's functions."""
    preset = dict(FR.DEMO_PRESETS["cpu"], steps=steps, threads=threads)
    train_cfg, eval_cfg = FR.demo_configs(preset, out)

    # 1. train: rectified flow on synthetic moving objects, 8 frames, VideoDiT with 3D axial RoPE
    summary = FR.train_video(train_cfg)
    model, cfg = FR.load_checkpoint(summary["checkpoint"])
    info = model.temporal_info()
    print(f"trained {summary['steps']} steps, loss {summary['final_loss']:.4f}; temporal RoPE base "
          f"{info['base']:g}, dim {info['dim']}: default RIFLEx k = {info['default_k']} "
          f"(period N_k = {info['default_N_k']} frames vs training length {info['train_len']})")

    # 2. the rules by hand: the same noise, plain extrapolation vs RIFLEx at 3x the length
    noise = torch.randn(2, 3, 24, *model.video_size[1:], generator=torch.Generator().manual_seed(0))
    videos = {}
    for rule in ("none", "riflex"):
        model.set_temporal_rule(rule)  # riflex: k from vispos.freqs.default_k
        videos[rule] = FR.sample(model, noise, steps=16)
    model.set_temporal_rule("none")
    diff = (videos["none"] - videos["riflex"]).abs().mean().item()
    print(f"mean |plain - riflex| over 24 generated frames: {diff:.4f}")

    # 3. the full sweep (every rule, 8/16/24 frames), scored and written to `out`
    res = FR.eval_frames(eval_cfg, model=model, train_cfg=cfg)
    print((out / "table.md").read_text())
    return res


def riflex_on_diffusers(path: str, frames: int, train_frames: int) -> None:
    """RIFLEx on a local diffusers pipeline: report k, apply the rule for one generation, undo it."""
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed: pip install 'vispos[diffusers]'; skipping the diffusers part")
        return
    from vispos.integrations.diffusers import apply_rule

    pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True)
    handle = apply_rule(pipe, time="riflex", num_frames=frames, train_frames=train_frames, units="latent")
    print(f"applied: {handle!r}")
    try:
        pass  # generate here, e.g. pipe(prompt=..., num_frames=...), with the adjusted temporal RoPE
    finally:
        handle.remove()
    print("removed: the pipeline's RoPE is back to diffusers' own")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/video_api")
    p.add_argument("--steps", type=int, default=FR.DEMO_PRESETS["cpu"]["steps"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--diffusers-pipeline", default=None, help="path of a local diffusers video pipeline")
    p.add_argument("--frames", type=int, default=None, help="diffusers: target latent frames")
    p.add_argument("--train-frames", type=int, default=None, help="diffusers: training latent frames")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.diffusers_pipeline is not None:
        if not Path(args.diffusers_pipeline).is_dir():
            p.error(f"--diffusers-pipeline {args.diffusers_pipeline!r} is not a folder")
        if args.frames is None or args.train_frames is None:
            p.error("--diffusers-pipeline needs --frames and --train-frames (latent frames)")
    t0 = time.time()
    train_and_extend(Path(args.out), args.steps, args.threads)
    if args.diffusers_pipeline is None:
        print("no --diffusers-pipeline given: skipping RIFLEx on a diffusers pipeline (vispos downloads nothing)")
    else:
        riflex_on_diffusers(args.diffusers_pipeline, args.frames, args.train_frames)
    print(f"done in {time.time() - t0:.0f} s (vispos {vispos.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
