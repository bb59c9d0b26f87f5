"""``vispos train video``: rectified-flow training of a :class:`VideoDiT` (seeded, resumable, DDP)."""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Dict

import numpy as np
import torch

from ...utils.dist import resolve_device
from ...utils.io import atomic_torch_save, atomic_write_json, ensure_writable_dir, load_checkpoint_file
from ...utils.seeding import generator
from ..common import lr_at
from .config import MODEL_KEYS, TRAIN_DEFAULTS, check_train_config
from .data import build_dataset, item_video
from .models import build_model, flow_loss

log = logging.getLogger(__name__)

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
    from ...utils import dist as D
    from ...utils.progress import progress_bar

    cfg = dict(TRAIN_DEFAULTS, **cfg)
    check_train_config(cfg)
    out = ensure_writable_dir(cfg["out"], "training output folder")
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.is_file():  # like `train resolution`: --resume means "continue if there is one"
        log.warning("--resume: no checkpoint at %s; starting a fresh run", ckpt_path)
        resume = False
    info = D.init_distributed(cfg["device"])
    try:
        if cfg["batch_size"] % info.world_size:
            raise ValueError(f"batch_size {cfg['batch_size']} must be divisible by the number of processes "
                             f"{info.world_size}")
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        dev = info.device if info.distributed else resolve_device(cfg["device"])
        torch.manual_seed(cfg["seed"])
        model = build_model(cfg).to(dev)
        data, folder = build_dataset(cfg)
        n_data = len(data) if data is not None else len(folder)
        sample_shape = tuple(data.shape[1:]) if data is not None else tuple(item_video(folder[0]).shape)
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
        gen = generator(cfg["seed"])
        step, losses = 0, []
        if resume:
            ck = load_checkpoint_file(ckpt_path, map_location=dev, what="--resume: checkpoint")
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
        bar = progress_bar(total=cfg["steps"], initial=step, desc="train video", enabled=progress and info.is_main)
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
                x0 = torch.stack([item_video(folder[int(i)]) for i in idx[mine]])
            x0, t_m, n_m = x0.to(dev), t[mine].to(dev), noise[mine].to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg["lr"], cfg["warmup"], schedule="constant")
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
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
            if info.is_main and (step % cfg["ckpt_every"] == 0 or step == end):
                _save_checkpoint(ckpt_path, model, ema, opt, gen, step, losses, cfg)
            D.barrier()
        bar.close()
        summary = dict(steps=step, final_loss=float(np.mean(losses[-50:])) if losses else None,
                       checkpoint=str(ckpt_path), wall_s=time.time() - t_start, done=step >= cfg["steps"],
                       world_size=info.world_size,
                       skipped_videos=[list(x) for x in folder.skipped] if folder is not None else [])
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
