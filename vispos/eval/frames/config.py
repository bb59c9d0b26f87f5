"""``vispos train video`` / ``vispos eval frames`` configuration: defaults, demo presets, checks."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict

from ... import freqs as F_
from ...utils.checks import check_bool, check_choice, check_int, check_mapping, check_number, check_size
from ..common import parse_list

MODEL_KEYS = ("in_channels", "patch", "dim", "depth", "num_heads", "mlp_ratio", "attention", "pe", "pe_kwargs",
              "num_classes", "qk_norm")

TRAIN_DEFAULTS: Dict[str, Any] = dict(
    out="results/video_train",
    # data
    data="synthetic",  # "synthetic" or a folder of video files
    num_videos=512,
    frames=8,
    size=16,  # int or [H, W]
    num_objects=2,
    clip_stride=1,
    data_seed=0,
    # model
    in_channels=3,
    patch=[1, 4, 4],
    dim=64,
    depth=4,
    num_heads=2,
    mlp_ratio=4.0,
    attention="full",
    pe="rope_axial",
    pe_kwargs={"base": 100.0},  # rope_axial / vope without "dims": half the head dim to time, a quarter to H and W
    num_classes=0,
    qk_norm=False,
    # optimisation
    steps=2000,
    batch_size=16,
    lr=1e-3,
    weight_decay=0.0,
    warmup=100,
    grad_clip=1.0,
    ema=0.999,
    t_sampling="uniform",  # "uniform" or "logit_normal"
    seed=0,
    ckpt_every=500,
    stop_after=None,  # stop this run after N more steps (time-boxed jobs; --resume continues)
    device="auto",
    threads=0,
)

EVAL_DEFAULTS: Dict[str, Any] = dict(
    checkpoint=None,
    videos=None,
    out="results/video_eval",
    scales=[1, 2, 3],
    rules=["none", "pi", "ntk", "yarn", "riflex"],
    riflex_k="default",  # "default", "identify" or an int (1-indexed)
    riflex_gamma=0.9,
    num_samples=8,
    sample_steps=20,
    sampler="euler",
    batch_size=8,
    seed=0,
    fps=8,
    grid_samples=4,
    use_ema=True,
    train_len=None,  # --videos mode: frames seen in training
    rope_base=None,  # --videos mode: temporal RoPE base and rotary dim of the generating model, to report k
    rope_dim=None,
    temporal_patch=1,  # --videos mode: the VAE's temporal stride s; latent frames = (frames - 1) / s + 1
    trajectories=False,  # --videos mode: fit constant-velocity object trajectories (plain-background videos)
    reference=None,  # --videos mode: folder of training-length videos from the same prompts/seeds (slow motion)
    n_k=None,  # --videos mode: NoRepeat's expected repetition frame N_k in video frames (default: from the RoPE)
    norepeat_window=None,  # --videos mode: NoRepeat's search window w (frames)
    tau=None,  # --videos mode: NoRepeat threshold (grey levels; with scale_free a fraction, default 0.5)
    scale_free=False,  # --videos mode: NoRepeat on D / the video's typical frame distance
    static_floor=0.8,  # --videos mode: optical-flow displacement (% of the short side) below which a video is static
    device="auto",
    threads=0,
)

_DEMO_COMMON = dict(data="synthetic", frames=8, num_objects=2, pe="rope_axial", attention="full",
                    rules=["none", "pi", "ntk", "yarn", "riflex"], scales=[1, 2, 3], riflex_k="default",
                    sampler="euler", seed=0)

#: `vispos demo video --scale cpu|gpu` (mirrored by configs/video/demo_cpu.yaml / demo_gpu.yaml).
DEMO_PRESETS: Dict[str, Dict[str, Any]] = {
    "cpu": dict(_DEMO_COMMON, num_videos=512, size=16, patch=[1, 4, 4], dim=64, depth=4, num_heads=2,
                pe_kwargs={"dims": [16, 8, 8], "base": 100.0}, steps=4000, batch_size=16, lr=1e-3, warmup=100,
                ema=0.995, num_samples=16, sample_steps=16, grid_samples=4, batch_size_eval=16),
    "gpu": dict(_DEMO_COMMON, num_videos=4096, size=32, patch=[1, 2, 2], dim=256, depth=8, num_heads=4,
                pe_kwargs={"dims": [32, 16, 16], "base": 100.0}, steps=20000, batch_size=64, lr=3e-4, warmup=500,
                ema=0.999, num_samples=32, sample_steps=50, grid_samples=6, batch_size_eval=16),
}


def check_train_config(cfg: Dict[str, Any]) -> None:
    """``ValueError`` / ``TypeError`` for a bad training config, before any work."""
    for k in ("num_videos", "frames", "num_objects", "clip_stride", "in_channels", "dim", "depth", "num_heads",
              "steps", "batch_size", "ckpt_every"):
        check_int(cfg[k], k, 1)
    for k in ("warmup", "threads", "seed", "data_seed"):
        check_int(cfg[k], k, 0)
    check_int(cfg["stop_after"], "stop_after", 1, allow_none=True)
    check_number(cfg["lr"], "lr", 0.0, min_open=True)
    check_number(cfg["weight_decay"], "weight_decay", 0.0)
    check_number(cfg["grad_clip"], "grad_clip", 0.0)
    check_number(cfg["ema"], "ema (0 = off)", 0.0, 1.0, max_open=True)
    H, W = check_size(cfg["size"], "size")
    from ...utils.checks import check_fits_in_memory

    check_fits_in_memory(cfg["batch_size"] * cfg["in_channels"] * cfg["frames"] * H * W * 4,
                         f"batch_size={cfg['batch_size']} of {cfg['frames']}x{H}x{W} videos")
    check_choice(cfg["t_sampling"], "t_sampling", ("uniform", "logit_normal"))
    if not isinstance(cfg["data"], str):
        raise TypeError(f"data must be 'synthetic' or a folder path, got {cfg['data']!r}")
    if cfg["data"] != "synthetic" and not Path(cfg["data"]).is_dir():
        raise ValueError(f"data must be 'synthetic' or an existing folder of videos, got {cfg['data']!r}")
    check_mapping(cfg["pe_kwargs"], "pe_kwargs (PE options)")
    if not isinstance(cfg["out"], (str, os.PathLike)):
        raise TypeError(f"out must be a folder path, got {cfg['out']!r}")


SAMPLERS = ("euler", "heun")


def check_eval_config(cfg: Dict[str, Any], need_file: bool = True) -> Dict[str, Any]:
    """Validate and normalise an eval config (lists parsed), before any work."""
    cfg = dict(cfg)
    cfg["scales"] = parse_list(cfg["scales"], float, "scales")
    cfg["rules"] = parse_list(cfg["rules"], str, "rules")
    for s in cfg["scales"]:
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"scales must be positive numbers, got {cfg['scales']}")
    for r in cfg["rules"]:
        if r not in F_.RULES:
            raise ValueError(f"unknown temporal rule {r!r}; expected some of {F_.RULES}")
    if len(set(cfg["rules"])) != len(cfg["rules"]):
        raise ValueError(f"a rule appears twice in {cfg['rules']}")
    rk = cfg["riflex_k"]
    if isinstance(rk, str) and rk.isdigit():
        rk = int(rk)
    if not (rk in ("default", "identify") or (isinstance(rk, int) and not isinstance(rk, bool) and rk >= 1)):
        raise ValueError(f"riflex_k must be 'default', 'identify' or an int >= 1, got {cfg['riflex_k']!r}")
    cfg["riflex_k"] = rk
    for k in ("num_samples", "sample_steps", "batch_size", "fps", "grid_samples", "temporal_patch"):
        check_int(cfg[k], k, 1)
    check_int(cfg["seed"], "seed", 0)
    check_int(cfg["threads"], "threads", 0)
    check_number(cfg["riflex_gamma"], "riflex_gamma", 0.0, 1.0, min_open=True)
    check_choice(cfg["sampler"], "sampler", SAMPLERS)
    if (cfg["checkpoint"] is None) == (cfg["videos"] is None):
        raise ValueError("give exactly one of --checkpoint (generate and score) or --videos DIR (score files)")
    if need_file and cfg["checkpoint"] is not None and not Path(cfg["checkpoint"]).is_file():
        raise ValueError(f"checkpoint {str(cfg['checkpoint'])!r} does not exist")
    check_bool(cfg["trajectories"], "trajectories")
    if cfg["videos"] is not None:
        if not Path(cfg["videos"]).is_dir():
            raise ValueError(f"--videos must be an existing folder of video files, got {cfg['videos']!r}")
        if cfg["train_len"] is None:
            raise ValueError("--videos needs --train-len: the number of frames the generating model was trained on "
                             "(the metrics compare the frames past it with the first train_len frames)")
        check_int(cfg["train_len"], "train_len", 1)
        if (cfg["rope_base"] is None) != (cfg["rope_dim"] is None):
            raise ValueError("give both --rope-base and --rope-dim (the temporal RoPE of the generating model), "
                             "or neither")
        if cfg["rope_dim"] is not None:
            check_int(cfg["rope_dim"], "rope_dim", 2)
            check_number(cfg["rope_base"], "rope_base", 0.0, min_open=True)
        tp = cfg["temporal_patch"]
        if (cfg["train_len"] - 1) % tp:
            raise ValueError(f"--train-len {cfg['train_len']} is not a whole number of latent frames for "
                             f"--temporal-patch {tp}: causal video VAEs (HunyuanVideo, CogVideoX, Wan) keep the first "
                             f"frame alone, so video frames = {tp} x (latent frames - 1) + 1 (e.g. 129 -> 33 latent)")
        if cfg["reference"] is not None and not Path(cfg["reference"]).is_dir():
            raise ValueError(f"--reference must be an existing folder of video files, got {cfg['reference']!r}")
        if cfg["n_k"] is not None:
            check_number(cfg["n_k"], "n_k", 0.0, min_open=True)
        if cfg["norepeat_window"] is not None:
            check_int(cfg["norepeat_window"], "norepeat_window", 0)
        check_bool(cfg["scale_free"], "scale_free")
        if cfg["tau"] is not None:
            check_number(cfg["tau"], "tau", 0.0)
        check_number(cfg["static_floor"], "static_floor", 0.0, min_open=True)
    else:
        given = [k for k in ("reference", "n_k", "norepeat_window", "tau") if cfg[k] is not None]
        given += ["scale_free"] if cfg["scale_free"] else []
        if given:
            raise ValueError(f"{given} apply to --videos mode only (the generate mode uses the model's N_k)")
    return cfg


def latent_frames(frames: int, temporal_patch: int) -> float:
    """Latent frames of a ``frames``-long video for a causal video VAE of temporal stride ``temporal_patch``:
    ``(frames - 1) / s + 1`` (HunyuanVideo: 129 -> 33, 33 -> 9); ``frames`` itself for ``s = 1``."""
    return (frames - 1) / temporal_patch + 1
