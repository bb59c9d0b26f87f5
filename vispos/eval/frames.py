"""Video training and frame extrapolation: ``vispos train video``, ``vispos eval frames``, ``vispos demo video``.

* **Training** (:func:`train_video`): a :class:`vispos.models.VideoDiT` learns rectified flow (flow matching):
  ``x_t = (1 - t) x0 + t eps``, the model predicts the velocity ``v = eps - x0``; MSE loss. Data: the synthetic
  moving-object videos of :mod:`vispos.data.video` or a folder of video files (decord). Seeded, atomic checkpoints
  (model, EMA, optimizer, RNG states, step), ``--resume`` continues bit-exactly; under ``torchrun`` (DDP) every rank
  takes its share of the same global batch, so the result does not depend on the number of processes.
* **Sampling** (:func:`sample`): Euler or Heun integration of the velocity from ``t = 1`` (noise) to ``t = 0``.
* **Frame extrapolation** (:func:`eval_frames`): a checkpoint trained at ``L`` frames generates ``L' = s L`` frames
  for each scale ``s`` and each temporal rule (none / pi / ntk / yarn / riflex), with the *same noise* for every
  rule; every video is scored with :mod:`vispos.eval.video_metrics` (NoRepeat, self-similarity period score,
  motion, slow-down ratio, tail novelty, and the trajectory error of the objects against constant-velocity motion
  fitted on the first ``L`` frames). RIFLEx's ``k`` is the library's default (:func:`vispos.freqs.default_k`), a given
  int, or ``"identify"``: the repetition frame ``N`` is estimated from the plain-extrapolation videos
  (self-similarity period) and ``k, N_k = identify_k(base, dim, N)``. Outputs: ``results.json``, ``results.csv``,
  ``table.md``, one PNG per metric against length (a line per rule), an MP4 and a GIF grid (rules as rows).
* ``--videos DIR`` scores existing video files with the same metrics, without any model.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import freqs as F_
from ..models.video_dit import VideoDiT
from ..utils.config import resolve_config
from ..utils.io import (
    atomic_savefig,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    markdown_table,
)

__all__ = [
    "TRAIN_DEFAULTS", "EVAL_DEFAULTS", "DEMO_PRESETS", "MODEL_KEYS", "build_model", "flow_loss", "sample",
    "train_video", "load_checkpoint", "eval_frames", "score_videos_dir", "identify_k_from_videos",
    "add_train_args", "run_train", "add_eval_args", "run_eval", "add_demo_args", "run_demo",
]

log = logging.getLogger(__name__)

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
    pe_kwargs={"dims": [16, 8, 8], "base": 100.0},
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
    temporal_patch=1,  # --videos mode: frames per latent frame (k and N_k are in latent frames)
    trajectories=False,  # --videos mode: fit constant-velocity object trajectories (plain-background videos)
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


# ---------------------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------------------
def _size2(size) -> tuple:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"size must be a positive int or [H, W], got {size!r}")
    return tuple(size)


def _check_int(cfg, key, minimum=1, allow_none=False):
    v = cfg[key]
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {v!r}")


def _check_float(cfg, key, lo=0.0, hi=math.inf, lo_open=False):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key} must be a number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise ValueError(f"{key} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")


def check_train_config(cfg: Dict[str, Any]) -> None:
    """``ValueError`` / ``TypeError`` for a bad training config, before any work."""
    for k in ("num_videos", "frames", "num_objects", "clip_stride", "in_channels", "dim", "depth", "num_heads",
              "steps", "batch_size", "ckpt_every"):
        _check_int(cfg, k)
    _check_int(cfg, "warmup", 0)
    _check_int(cfg, "threads", 0)
    _check_int(cfg, "seed", 0)
    _check_int(cfg, "data_seed", 0)
    _check_int(cfg, "stop_after", 1, allow_none=True)
    _check_float(cfg, "lr", 0.0, lo_open=True)
    _check_float(cfg, "weight_decay", 0.0)
    _check_float(cfg, "grad_clip", 0.0)
    _check_float(cfg, "ema", 0.0, 1.0)
    if cfg["ema"] >= 1.0:
        raise ValueError(f"ema must be in [0, 1) (0 = off), got {cfg['ema']!r}")
    _size2(cfg["size"])
    if cfg["t_sampling"] not in ("uniform", "logit_normal"):
        raise ValueError(f"t_sampling must be 'uniform' or 'logit_normal', got {cfg['t_sampling']!r}")
    if not isinstance(cfg["data"], str):
        raise TypeError(f"data must be 'synthetic' or a folder path, got {cfg['data']!r}")
    if cfg["data"] != "synthetic" and not Path(cfg["data"]).is_dir():
        raise ValueError(f"data must be 'synthetic' or an existing folder of videos, got {cfg['data']!r}")
    if cfg["pe_kwargs"] is not None and not isinstance(cfg["pe_kwargs"], dict):
        raise TypeError(f"pe_kwargs must be a mapping of PE options, got {cfg['pe_kwargs']!r}")
    if not isinstance(cfg["out"], (str, os.PathLike)):
        raise TypeError(f"out must be a folder path, got {cfg['out']!r}")


def _device(name) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for CUDA, but CUDA is not available")
    return dev


# ---------------------------------------------------------------------------------------------------------------
# model, data, objective, sampler
# ---------------------------------------------------------------------------------------------------------------
def build_model(cfg: Dict[str, Any]) -> VideoDiT:
    """A :class:`VideoDiT` from a config dict (keys :data:`MODEL_KEYS`, ``frames``, ``size``)."""
    H, W = _size2(cfg["size"])
    kw = {k: cfg[k] for k in MODEL_KEYS if k in cfg}
    kw["patch"] = tuple(kw["patch"]) if isinstance(kw.get("patch"), list) else kw.get("patch", (1, 4, 4))
    pe_kwargs = dict(kw.pop("pe_kwargs", None) or {})
    for key in ("dims", "base"):
        if isinstance(pe_kwargs.get(key), list):
            pe_kwargs[key] = tuple(pe_kwargs[key])
    return VideoDiT(video_size=(cfg["frames"], H, W), pe_kwargs=pe_kwargs, **kw)


def build_dataset(cfg: Dict[str, Any]):
    """The training videos: ``(tensor (N, C, T, H, W) in [-1, 1], None)`` for synthetic data (precomputed, small)
    or ``(None, dataset)`` for a folder (:class:`vispos.data.video.VideoFolder`, read on the fly)."""
    from ..data import video as V

    H, W = _size2(cfg["size"])
    if cfg["data"] == "synthetic":
        ds = V.SyntheticVideos(cfg["num_videos"], cfg["frames"], size=(H, W), num_objects=cfg["num_objects"],
                               seed=cfg["data_seed"])
        data = torch.stack([_item_video(ds[i]) for i in range(len(ds))])
        return data, None
    ds = V.VideoFolder(cfg["data"], clip_length=cfg["frames"], stride=cfg["clip_stride"], size=(H, W))
    if len(ds) == 0:
        raise ValueError(f"no clips of {cfg['frames']} frames found in {cfg['data']!r}")
    return None, ds


def _item_video(item) -> torch.Tensor:
    v = item["video"] if isinstance(item, dict) else item
    v = torch.as_tensor(v)
    if v.dim() != 4:
        raise ValueError(f"a dataset item must be a video (C, T, H, W), got shape {tuple(v.shape)}")
    return v.float()


def flow_loss(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y=None) -> torch.Tensor:
    """Rectified-flow loss: ``x_t = (1 - t) x0 + t noise``; MSE between ``model(x_t, t)`` and ``noise - x0``.

    ``x0, noise (B, C, T, H, W)``, ``t (B,)`` in ``[0, 1]``. Returns a scalar.
    """
    tt = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
    xt = (1 - tt) * x0 + tt * noise
    pred = model(xt, t, y)
    return F.mse_loss(pred.float(), (noise - x0).float())


SAMPLERS = ("euler", "heun")


@torch.no_grad()
def sample(model, noise: torch.Tensor, steps: int = 20, method: str = "euler", y=None) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``t = 1`` (``x = noise``) to ``t = 0`` on a uniform grid of ``steps``.

    ``noise (B, C, T, H, W)`` -> sample ``(B, C, T, H, W)``. ``method``: ``"euler"`` (``steps`` evaluations) or
    ``"heun"`` (second order, ``2 steps - 1`` evaluations).
    """
    if method not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sample steps must be an int >= 1, got {steps!r}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = noise
    B = x.shape[0]
    for i in range(steps):
        t0, t1 = ts[i], ts[i + 1]
        v0 = model(x, torch.full((B,), t0, device=x.device), y)
        x_e = x + (t1 - t0) * v0
        if method == "heun" and t1 > 0:
            v1 = model(x_e, torch.full((B,), t1, device=x.device), y)
            x = x + (t1 - t0) * 0.5 * (v0 + v1)
        else:
            x = x_e
    return x


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def _lr_at(step: int, cfg) -> float:
    if cfg["warmup"] and step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    return cfg["lr"]


def _sample_t(n: int, how: str, gen: torch.Generator) -> torch.Tensor:
    if how == "uniform":
        return torch.rand(n, generator=gen)
    return torch.sigmoid(torch.randn(n, generator=gen))


def train_video(cfg: Dict[str, Any], resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train a :class:`VideoDiT` with rectified flow. ``cfg``: :data:`TRAIN_DEFAULTS` keys.

    Writes ``<out>/checkpoint.pt`` (atomically, every ``ckpt_every`` steps and at the end) and ``<out>/train.json``.
    With ``resume=True`` continues from ``<out>/checkpoint.pt`` (model, EMA, optimizer, RNG, step) and reaches
    the same weights as an uninterrupted run. Returns a summary dict (``steps``, ``final_loss``, ``checkpoint``).
    """
    from tqdm import tqdm

    from ..utils import dist as D

    cfg = dict(TRAIN_DEFAULTS, **cfg)
    check_train_config(cfg)
    out = ensure_writable_dir(cfg["out"], "training output folder")
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise ValueError(f"--resume: no checkpoint at {str(ckpt_path)!r}")
    info = D.init_distributed(cfg["device"])
    try:
        if cfg["batch_size"] % info.world_size:
            raise ValueError(f"batch_size {cfg['batch_size']} must be divisible by the number of processes "
                             f"{info.world_size}")
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        dev = info.device if info.distributed else _device(cfg["device"])
        torch.manual_seed(cfg["seed"])
        model = build_model(cfg).to(dev)
        data, folder = build_dataset(cfg)
        n_data = len(data) if data is not None else len(folder)
        sample_shape = tuple(data.shape[1:]) if data is not None else tuple(_item_video(folder[0]).shape)
        if sample_shape[0] != cfg["in_channels"]:
            raise ValueError(f"the videos have {sample_shape[0]} channels, in_channels is {cfg['in_channels']}")
        decay, no_decay = [], []
        nwd = set()
        if model.pe is not None:
            for m in model.pe.modules():
                if hasattr(m, "no_weight_decay"):
                    nwd |= {id(getattr(m, n)) for n in m.no_weight_decay()}
        for p in model.parameters():
            (no_decay if (p.dim() < 2 or id(p) in nwd) else decay).append(p)
        opt = torch.optim.AdamW([dict(params=decay, weight_decay=cfg["weight_decay"]),
                                 dict(params=no_decay, weight_decay=0.0)], lr=cfg["lr"], betas=(0.9, 0.999))
        ema = copy.deepcopy(model).requires_grad_(False) if cfg["ema"] > 0 else None
        gen = torch.Generator().manual_seed(cfg["seed"])
        step, losses = 0, []
        if resume:
            ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
            _check_resume_config(ck["train_config"], cfg)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if ema is not None:
                ema.load_state_dict(ck["ema"])
            gen.set_state(ck["rng"]["generator"])
            torch.set_rng_state(ck["rng"]["torch"])
            step, losses = ck["step"], list(ck.get("losses", []))
            log.info("resumed from %s at step %d", ckpt_path, step)
        net = model
        if info.distributed:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda"
                                                            else None)
        end = cfg["steps"] if cfg["stop_after"] is None else min(cfg["steps"], step + cfg["stop_after"])
        B = cfg["batch_size"]
        bar = tqdm(total=cfg["steps"], initial=step, desc="train video", disable=not (progress and info.is_main),
                   dynamic_ncols=True)
        model.train()
        t_start = time.time()
        while step < end:
            idx = torch.randint(0, n_data, (B,), generator=gen)
            t = _sample_t(B, cfg["t_sampling"], gen)
            noise = torch.randn((B,) + sample_shape, generator=gen)
            mine = D.shard_indices(list(range(B)), info.rank, info.world_size)
            if data is not None:
                x0 = data[idx[mine]]
            else:
                x0 = torch.stack([_item_video(folder[int(i)]) for i in idx[mine]])
            x0, t_m, n_m = x0.to(dev), t[mine].to(dev), noise[mine].to(dev)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            loss = flow_loss(net, x0, t_m, n_m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            if ema is not None:
                d = min(cfg["ema"], (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe_, pm in zip(ema.parameters(), model.parameters()):
                        pe_.lerp_(pm, 1 - d)
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"training loss is {lv} at step {step}; lower lr (now {cfg['lr']})")
            losses.append(lv)
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if info.is_main and (step % cfg["ckpt_every"] == 0 or step == end):
                _save_checkpoint(ckpt_path, model, ema, opt, gen, step, losses, cfg)
            D.barrier()
        bar.close()
        summary = dict(steps=step, final_loss=float(np.mean(losses[-50:])) if losses else None,
                       checkpoint=str(ckpt_path), wall_s=time.time() - t_start, done=step >= cfg["steps"],
                       world_size=info.world_size)
        if info.is_main:
            atomic_write_json(out / "train.json", dict(summary=summary, config=cfg,
                                                       loss_every_50=losses[::50]))
        return summary
    finally:
        D.cleanup_distributed(info)


_RESUME_FIXED = ("data", "num_videos", "frames", "size", "num_objects", "data_seed", "seed", "batch_size", "lr",
                 "warmup", "t_sampling", "ema", "weight_decay", "grad_clip") + MODEL_KEYS


def _check_resume_config(old: Dict[str, Any], new: Dict[str, Any]) -> None:
    diff = [k for k in _RESUME_FIXED if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"--resume: the config differs from the checkpoint's in {diff} "
                         f"(checkpoint: {[old.get(k) for k in diff]}, now: {[new.get(k) for k in diff]})")


def _save_checkpoint(path, model, ema, opt, gen, step, losses, cfg) -> None:
    atomic_torch_save(dict(
        model=model.state_dict(), ema=ema.state_dict() if ema is not None else None, optimizer=opt.state_dict(),
        rng=dict(generator=gen.get_state(), torch=torch.get_rng_state()), step=step, losses=losses,
        train_config=cfg, model_config=model.config, format="vispos.video_dit/1",
    ), path)


def load_checkpoint(path, device="cpu", use_ema: bool = True):
    """``(model, train_config)`` from a ``vispos train video`` checkpoint (EMA weights when present and asked)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    ck = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or ck.get("format") != "vispos.video_dit/1":
        raise ValueError(f"{str(p)!r} is not a vispos video DiT checkpoint (written by `vispos train video`)")
    cfg = ck["train_config"]
    model = build_model(cfg)
    sd = ck["ema"] if (use_ema and ck.get("ema") is not None) else ck["model"]
    model.load_state_dict(sd)
    return model.to(_device(device)).eval(), cfg


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------
#: Columns of table.md / results.csv and one PNG each (from :func:`vispos.eval.video_metrics.summarize_scores`).
TABLE_KEYS = ("norepeat_share", "repeat_share", "mean_selfsim_score", "mean_selfsim_period", "mean_motion",
              "motion_vs_L", "mean_slowdown_ratio", "mean_tail_novelty", "mean_traj_tail_px")
PLOT_KEYS = TABLE_KEYS


def _to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(C, T, H, W)`` in ``[-1, 1]`` -> ``(T, H, W, 3)`` uint8."""
    from ..data import video as V

    return V.to_uint8(video)


def identify_k_from_frames(N_per_video: Sequence[Optional[float]], base: float, dim: int, temporal_patch: int = 1,
                           train_len: Optional[float] = None) -> Dict[str, Any]:
    """RIFLEx ``k`` from repetition frames ``N`` (in frames, ``None`` = no repetition found) of several videos.

    ``N`` = the median of the found ones, divided by ``temporal_patch`` (latent frames); ``k, N_k = identify_k(base,
    dim, N)``. Also reports the library default ``k`` for ``train_len`` (latent frames) when given.
    """
    found = [float(n) for n in N_per_video if n is not None and _finite(n)]
    out: Dict[str, Any] = dict(N_per_video=[None if n is None else float(n) for n in N_per_video], base=base,
                               dim=dim, temporal_patch=temporal_patch, videos=len(N_per_video),
                               videos_with_repetition=len(found))
    if train_len is not None:
        out["default_k"], out["default_N_k"] = F_.default_k(base, dim, train_len)
    if not found:
        out.update(N=None, k=None, N_k=None, note="no repetition found in any video")
        return out
    N = float(np.median(found)) / temporal_patch
    k, N_k = F_.identify_k(base, dim, N)
    out.update(N=N, k=k, N_k=N_k)
    return out


def identify_k_from_videos(videos: Sequence[np.ndarray], base: float, dim: int, temporal_patch: int = 1,
                           train_len: Optional[float] = None) -> Dict[str, Any]:
    """Estimate RIFLEx's ``k`` from plain-extrapolation videos, uint8 ``(T, H, W, 3)`` each.

    Each video's repetition frame is :func:`vispos.eval.video_metrics.estimate_repetition_frame` (self-similarity
    period); see :func:`identify_k_from_frames`.
    """
    from . import video_metrics as M

    return identify_k_from_frames([M.estimate_repetition_frame(v) for v in videos], base, dim, temporal_patch,
                                  train_len)


def _aggregate(rows: List[Dict[str, Any]], train_len: int) -> List[Dict[str, Any]]:
    from . import video_metrics as M

    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["rule"], r["frames"]), []).append(r)
    out = []
    for (rule, frames), rs in groups.items():
        summ = M.summarize_scores(rs)
        out.append(dict(rule=rule, frames=frames, scale=rs[0]["scale"], **summ))
    # motion relative to the same rule at the training length: PI/YaRN slow the whole video, head included,
    # which the tail/head slow-down ratio cannot see
    for a in out:
        base = [b for b in out if b["rule"] == a["rule"] and b["frames"] == train_len]
        m0 = base[0].get("mean_motion") if base else None
        a["motion_vs_L"] = a["mean_motion"] / m0 if (m0 and a.get("mean_motion") is not None) else None
    return out


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _table_md(agg: List[Dict[str, Any]], keys: Sequence[str]) -> str:
    header = ["rule", "frames", "n"] + [k.replace("mean_", "") for k in keys]
    body = [[a["rule"], a["frames"], a["n"]] + ["–" if a.get(k) is None else float(a[k]) for k in keys]
            for a in agg]
    return markdown_table(header, body)


def _plots(agg: List[Dict[str, Any]], keys: Sequence[str], out: Path, train_len: int) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    rules = list(dict.fromkeys(a["rule"] for a in agg))
    for k in keys:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for rule in rules:
            pts = sorted((a["frames"], a[k]) for a in agg if a["rule"] == rule and a.get(k) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rule)
        ax.axvline(train_len, color="gray", ls=":", lw=1)
        ax.set_xlabel("frames generated (dotted: training length)")
        name = k.replace("mean_", "")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs length")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values (metric undefined at these lengths)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        atomic_savefig(fig, path, dpi=100)
        plt.close(fig)
        files.append(path.name)
    return files


def _write_grid(rows_videos: Dict[str, List[np.ndarray]], out: Path, stem: str, fps: int) -> List[str]:
    """Rules as rows, samples as columns: ``<stem>.mp4`` and ``<stem>.gif``."""
    from ..data import video as V

    labels = list(rows_videos)
    grid = V.video_grid([rows_videos[r] for r in labels], labels)
    # upscale small videos so that the grid is visible
    scale = max(1, 256 // max(grid.shape[1], 1))
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=1), scale, axis=2)
    names = []
    for ext, writer in (("mp4", V.write_video), ("gif", V.write_gif)):
        path = out / f"{stem}.{ext}"
        writer(str(path), grid, fps)  # atomic writers (vispos.data.video)
        names.append(path.name)
    return names


# ---------------------------------------------------------------------------------------------------------------
# eval frames
# ---------------------------------------------------------------------------------------------------------------
def _parse_list(v, typ, name):
    if v is None:
        return None
    if isinstance(v, str):
        v = [s for s in v.replace(",", " ").split() if s]
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"{name} must be a non-empty list, got {v!r}")
    try:
        return [typ(s) for s in v]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a list of {typ.__name__}, got {v!r}") from e


def check_eval_config(cfg: Dict[str, Any], need_file: bool = True) -> Dict[str, Any]:
    """Validate and normalise an eval config (lists parsed), before any work."""
    cfg = dict(cfg)
    cfg["scales"] = _parse_list(cfg["scales"], float, "scales")
    cfg["rules"] = _parse_list(cfg["rules"], str, "rules")
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
        _check_int(cfg, k)
    _check_int(cfg, "seed", 0)
    _check_int(cfg, "threads", 0)
    _check_float(cfg, "riflex_gamma", 0.0, 1.0, lo_open=True)
    if cfg["sampler"] not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {cfg['sampler']!r}")
    if (cfg["checkpoint"] is None) == (cfg["videos"] is None):
        raise ValueError("give exactly one of --checkpoint (generate and score) or --videos DIR (score files)")
    if need_file and cfg["checkpoint"] is not None and not Path(cfg["checkpoint"]).is_file():
        raise ValueError(f"checkpoint {str(cfg['checkpoint'])!r} does not exist")
    if not isinstance(cfg["trajectories"], bool):
        raise TypeError(f"trajectories must be true or false, got {cfg['trajectories']!r}")
    if cfg["videos"] is not None:
        if not Path(cfg["videos"]).is_dir():
            raise ValueError(f"--videos must be an existing folder of video files, got {cfg['videos']!r}")
        if cfg["train_len"] is None:
            raise ValueError("--videos needs --train-len: the number of frames the generating model was trained on "
                             "(the metrics compare the frames past it with the first train_len frames)")
        _check_int(cfg, "train_len")
        if (cfg["rope_base"] is None) != (cfg["rope_dim"] is None):
            raise ValueError("give both --rope-base and --rope-dim (the temporal RoPE of the generating model), "
                             "or neither")
        if cfg["rope_dim"] is not None:
            _check_int(cfg, "rope_dim", 2)
            _check_float(cfg, "rope_base", 0.0, lo_open=True)
    return cfg


def eval_frames(cfg: Dict[str, Any], model: Optional[VideoDiT] = None, train_cfg: Optional[Dict[str, Any]] = None,
                progress: bool = True) -> Dict[str, Any]:
    """Generate at ``L' = s L`` per scale and rule, score, and write the results folder (see the module doc).

    ``cfg``: :data:`EVAL_DEFAULTS` keys (``checkpoint`` is loaded unless ``model`` and ``train_cfg`` are given).
    Returns the ``results.json`` content.
    """
    from tqdm import tqdm

    from . import video_metrics as M

    cfg = dict(EVAL_DEFAULTS, **cfg)
    if model is not None:
        if train_cfg is None:
            raise ValueError("eval_frames: give train_cfg with an in-memory model")
        cfg = check_eval_config(dict(cfg, checkpoint="<in memory>"), need_file=False)
    else:
        cfg = check_eval_config(cfg)
    if cfg["videos"] is not None:
        return score_videos_dir(cfg)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if model is None:
        model, train_cfg = load_checkpoint(cfg["checkpoint"], cfg["device"], cfg["use_ema"])
    model.eval()
    dev = next(model.parameters()).device
    pt = model.patch[0]
    L = model.video_size[0]
    lengths = []
    for s in cfg["scales"]:
        n = int(round(s * L / pt)) * pt
        if n < max(pt, 4) or abs(n - s * L) > 1e-6:
            raise ValueError(f"scale {s:g} x {L} frames = {s * L:g} is not a whole number (>= 4) of frames in "
                             f"temporal patches of {pt}")
        lengths.append((s, n))
    has_rope = bool(model.rope_modules())
    if any(r != "none" for r in cfg["rules"]) and not has_rope:
        model.temporal_rope()  # raises: rules need an axial RoPE
    tinfo = model.temporal_info() if has_rope else None
    N_k_frames = tinfo["default_N_k"] * pt if tinfo else None
    synthetic = train_cfg.get("data") == "synthetic"
    num_obj = train_cfg.get("num_objects") if synthetic else None
    C, _, H, W = (model.in_channels,) + model.video_size
    rules = list(cfg["rules"])
    if cfg["riflex_k"] == "identify" and "riflex" in rules:
        if "none" not in rules:
            raise ValueError("riflex_k='identify' needs the 'none' rule (plain extrapolation) in the rule list")
        rules = ["none"] + [r for r in rules if r != "none"]  # plain extrapolation first: it identifies k
    out = ensure_writable_dir(cfg["out"], "eval output folder")  # after every other check
    n_max = max(n for _, n in lengths)
    rows: List[Dict[str, Any]] = []
    videos_by: Dict[tuple, List[np.ndarray]] = {}
    identified, k_used = None, None
    t0 = time.time()
    bar = tqdm(total=len(rules) * len(lengths) * cfg["num_samples"], desc="eval frames", disable=not progress,
               dynamic_ncols=True)
    try:
        for rule in rules:
            kw: Dict[str, Any] = {}
            if rule == "riflex":
                kw["gamma"] = cfg["riflex_gamma"]
                if isinstance(cfg["riflex_k"], int):
                    kw["k"] = cfg["riflex_k"]
                elif cfg["riflex_k"] == "identify":
                    identified = _identify(rows, n_max, tinfo, pt, L)
                    if identified["k"] is None:
                        raise ValueError("riflex_k='identify': no repetition found in the plain-extrapolation "
                                         "videos; give riflex_k as an int or 'default'")
                    kw["k"] = identified["k"]
                else:
                    kw["k"] = tinfo["default_k"]
                k_used = kw["k"]
            model.set_temporal_rule(rule, **kw)
            for s, n in lengths:
                gen = torch.Generator().manual_seed(cfg["seed"] * 100003 + n)  # the same noise for every rule
                noise = torch.randn(cfg["num_samples"], C, n, H, W, generator=gen)
                vids = []
                for b in range(0, cfg["num_samples"], cfg["batch_size"]):
                    x = sample(model, noise[b:b + cfg["batch_size"]].to(dev), cfg["sample_steps"], cfg["sampler"])
                    vids.extend(_to_uint8_frames(v) for v in x.cpu())
                    bar.update(x.shape[0])
                videos_by[(rule, n)] = vids[: cfg["grid_samples"]]
                for i, v in enumerate(vids):
                    r = dict(rule=rule, scale=s, frames=n, sample=i)
                    r.update(M.score_video(v, L, N_k=N_k_frames if n > L else None, num_objects=num_obj,
                                           fit_trajectories=synthetic))
                    rows.append(r)
    finally:
        bar.close()
        model.set_temporal_rule("none")
    gen_s = time.time() - t0
    if identified is None and has_rope and "none" in rules:
        identified = _identify(rows, n_max, tinfo, pt, L)
    agg = _aggregate(rows, L)
    order = {r: i for i, r in enumerate(cfg["rules"])}
    agg.sort(key=lambda a: (order[a["rule"]], a["frames"]))
    files: Dict[str, Any] = dict(table="table.md", json="results.json", csv="results.csv")
    files["plots"] = _plots(agg, PLOT_KEYS, out, L)
    files["grid"] = _write_grid({r: videos_by[(r, n_max)] for r in cfg["rules"]}, out, f"grid_{n_max}f", cfg["fps"])
    head = _table_header(cfg, L, n_max, tinfo, k_used, identified)
    atomic_write_text(out / "table.md", head + _table_md(agg, TABLE_KEYS))
    atomic_write_csv(out / "results.csv", agg)
    res = dict(mode="generate", config=_jsonable(cfg), train_config=_jsonable(train_cfg), train_len=L,
               lengths=[n for _, n in lengths], temporal_rope=tinfo, riflex_k_used=k_used, identified=identified,
               aggregate=agg, per_video=rows, files=files, generate_wall_s=gen_s)
    atomic_write_json(out / "results.json", res)
    return res


def _table_header(cfg, L, n_max, tinfo, k_used, identified) -> str:
    lines = [f"Frame extrapolation: trained at {L} frames; {cfg['num_samples']} samples per cell, the same noise "
             f"for every rule; {cfg['sampler']} sampler, {cfg['sample_steps']} steps."]
    if tinfo:
        lines.append(f"Temporal RoPE: base {tinfo['base']:g}, rotary dim {tinfo['dim']}; library default k = "
                     f"{tinfo['default_k']} (N_k = {tinfo['default_N_k']} latent frames); RIFLEx used k = {k_used}.")
    if identified:
        lines.append(f"Identified from plain extrapolation at {n_max} frames: N = {identified.get('N')} "
                     f"({identified.get('videos_with_repetition')}/{identified.get('videos')} videos repeat), "
                     f"k = {identified.get('k')}, N_k = {identified.get('N_k')}.")
    lines.append("norepeat_share: share of videos with NoRepeat D > tau (RIFLEx App. D, N_k above); repeat_share: "
                 "share with a self-similarity loop (score >= 0.5); selfsim_period: mean lag of the strongest "
                 "self-similarity peak; motion_vs_L: motion / the same rule's motion at the training length; "
                 "slowdown_ratio: tail motion / head motion; traj_tail_px: object distance to the "
                 "constant-velocity continuation of the first L frames.")
    return "\n".join(lines) + "\n\n"


def _identify(rows, n_max, tinfo, pt, L) -> Dict[str, Any]:
    Ns = [r.get("repetition_frame") for r in rows if r["rule"] == "none" and r["frames"] == n_max]
    if not Ns:
        raise ValueError("identifying k needs the plain-extrapolation ('none') videos")
    return identify_k_from_frames(Ns, tinfo["base"], tinfo["dim"], pt, train_len=L / pt)


def _jsonable(cfg):
    if cfg is None:
        return None
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()}


def score_videos_dir(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``--videos DIR`` mode: score every video file in the folder (no model). Writes the same outputs.

    With ``rope_base`` / ``rope_dim`` (the generating model's temporal RoPE) NoRepeat uses its default ``N_k`` and
    the repetition frames found give RIFLEx's ``k`` (:func:`identify_k_from_frames`).
    """
    from . import video_metrics as M

    cfg = check_eval_config(dict(EVAL_DEFAULTS, **cfg))
    out = ensure_writable_dir(cfg["out"], "eval output folder")
    L, tp = cfg["train_len"], cfg["temporal_patch"]
    N_k = None
    if cfg["rope_dim"] is not None:
        N_k = F_.default_k(float(cfg["rope_base"]), cfg["rope_dim"], L / tp)[1] * tp
    rows, skipped = M.score_folder(cfg["videos"], L, N_k=N_k, fit_trajectories=cfg["trajectories"])
    if not rows:
        raise ValueError(f"none of the video files in {cfg['videos']!r} could be read: {skipped}")
    for r in rows:
        r["file"] = os.path.relpath(r.pop("path"), cfg["videos"])
    keys = ["num_frames", "repetition_frame", "selfsim_score", "norepeat_D", "norepeat_repetitive", "motion",
            "slowdown_ratio", "tail_novelty"] + (["traj_tail_px"] if cfg["trajectories"] else [])
    table = markdown_table(["file"] + keys, [[r["file"]] + ["–" if r.get(k) is None else r[k] for k in keys]
                                             for r in rows])
    summary = M.summarize_scores(rows)
    identified = None
    if cfg["rope_dim"] is not None:
        identified = identify_k_from_frames([r.get("repetition_frame") for r in rows], float(cfg["rope_base"]),
                                            cfg["rope_dim"], tp, train_len=L / tp)
    head = f"Scored {len(rows)} video files from {str(cfg['videos'])!r}; training length {L} frames.\n"
    if skipped:
        head += f"Skipped {len(skipped)} unreadable file(s): {[p for p, _ in skipped]}.\n"
    if identified:
        head += (f"Repetition frame N = {identified['N']} latent frames (median over "
                 f"{identified['videos_with_repetition']}/{identified['videos']} videos that repeat): RIFLEx k = "
                 f"{identified['k']}, N_k = {identified['N_k']}; library default k = {identified.get('default_k')} "
                 f"(N_k = {identified.get('default_N_k')}).\n")
    atomic_write_text(out / "table.md", head + "\n" + table)
    atomic_write_csv(out / "results.csv", rows)
    res = dict(mode="videos", config=_jsonable(cfg), train_len=L, summary=summary, per_video=rows,
               skipped=skipped, identified=identified, files=dict(table="table.md", json="results.json",
                                                                  csv="results.csv"))
    atomic_write_json(out / "results.json", res)
    return res


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def add_train_args(p) -> None:
    p.add_argument("--config", help="YAML config (configs/video/*.yaml); flags override it")
    p.add_argument("--out", help="output folder (checkpoint.pt, train.json)")
    p.add_argument("--data", help="'synthetic' or a folder of video files")
    p.add_argument("--num-videos", type=int, help="synthetic videos in the training set")
    p.add_argument("--frames", type=int, help="training clip length L (frames)")
    p.add_argument("--size", type=int, help="frame size (square), pixels")
    p.add_argument("--pe", help="PE name, e.g. rope_axial, ape_sincos, peg, rel_decomposed")
    p.add_argument("--attention", choices=["full", "alternating"], help="attention layout")
    p.add_argument("--dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--steps", type=int, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, help="global batch size (split across torchrun ranks)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--stop-after", type=int, help="stop after this many steps in this run (then --resume)")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (0: leave as is)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _train_cfg_from_args(args) -> Dict[str, Any]:
    return resolve_config(TRAIN_DEFAULTS, args)


def run_train(args) -> int:
    cfg = _train_cfg_from_args(args)
    s = train_video(cfg, resume=args.resume, progress=not args.no_progress)
    print(markdown_table(["steps", "final loss", "wall s", "checkpoint"],
                         [[s["steps"], s["final_loss"], s["wall_s"], s["checkpoint"]]]), end="")
    return 0


def add_eval_args(p) -> None:
    p.add_argument("--config", help="YAML config; flags override it")
    p.add_argument("--checkpoint", help="a `vispos train video` checkpoint")
    p.add_argument("--videos", help="score the video files in this folder instead (no model)")
    p.add_argument("--out", help="results folder")
    p.add_argument("--scales", help="length multiples of the training length, e.g. '1,2,3'")
    p.add_argument("--rules", help="temporal rules, e.g. 'none,pi,ntk,yarn,riflex'")
    p.add_argument("--riflex-k", help="'default' (library rule), 'identify' (from plain extrapolation) or an int")
    p.add_argument("--num-samples", type=int, help="videos per (rule, length)")
    p.add_argument("--sample-steps", type=int, help="sampler steps")
    p.add_argument("--sampler", choices=list(SAMPLERS))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--train-len", type=int, help="--videos: training length in frames")
    p.add_argument("--rope-base", type=float, help="--videos: temporal RoPE base of the generating model")
    p.add_argument("--rope-dim", type=int, help="--videos: temporal rotary dim of the generating model")
    p.add_argument("--temporal-patch", type=int, help="--videos: frames per latent frame")
    p.add_argument("--trajectories", action="store_true", default=None,
                   help="--videos: score object trajectories (objects on a plain background)")
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")


def run_eval(args) -> int:
    cfg = resolve_config(EVAL_DEFAULTS, args)
    res = eval_frames(cfg, progress=not args.no_progress)
    print((Path(cfg["out"]) / "table.md").read_text(), end="")
    if res.get("identified"):
        log.info("identified: %s", {k: res["identified"].get(k) for k in ("N", "k", "N_k")})
    return 0


def add_demo_args(p) -> None:
    p.add_argument("--out", default="results/video", help="results folder (default results/video)")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="demo size (cpu: < 8 min on 2 cores)")
    p.add_argument("--config", help="YAML overriding the preset (keys of train and eval configs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")


def demo_configs(preset: Dict[str, Any], out: Path) -> tuple:
    """Split a demo preset into ``(train_cfg, eval_cfg)`` (train in ``out/train``, results in ``out``)."""
    tr = {k: v for k, v in preset.items() if k in TRAIN_DEFAULTS}
    ev = {k: v for k, v in preset.items() if k in EVAL_DEFAULTS and k not in ("batch_size",)}
    if "batch_size_eval" in preset:
        ev["batch_size"] = preset["batch_size_eval"]
    unknown = sorted(set(preset) - set(TRAIN_DEFAULTS) - set(EVAL_DEFAULTS) - {"batch_size_eval"})
    if unknown:
        raise ValueError(f"unknown demo key(s) {unknown}; allowed: train and eval config keys, batch_size_eval")
    tr["out"] = str(out / "train")
    ev["out"] = str(out)
    return dict(TRAIN_DEFAULTS, **tr), dict(EVAL_DEFAULTS, **ev)


def run_demo(args) -> int:
    from ..utils.config import load_yaml

    out = ensure_writable_dir(args.out, "demo output folder")
    preset = dict(DEMO_PRESETS[args.scale])
    if args.config:
        data = {k.replace("-", "_"): v for k, v in load_yaml(args.config).items()}
        preset.update(data)
    if args.threads is not None:
        preset["threads"] = args.threads
    tr, ev = demo_configs(preset, out)
    check_train_config(tr)
    t0 = time.time()
    summary = train_video(tr, resume=False, progress=not args.no_progress)
    t_train = time.time() - t0
    ev["checkpoint"] = summary["checkpoint"]
    eval_frames(ev, progress=not args.no_progress)
    wall = time.time() - t0
    atomic_write_json(out / "demo.json", dict(scale=args.scale, train_wall_s=t_train, total_wall_s=wall,
                                              train=summary))
    text = (out / "table.md").read_text()
    print(text + f"\ntrain {t_train:.0f} s, total {wall:.0f} s; results in {out}")
    return 0

