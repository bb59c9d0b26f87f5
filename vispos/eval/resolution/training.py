"""``vispos train resolution``: train one variant from scratch (deterministic, resumable, DDP)."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ...utils.io import atomic_torch_save, load_checkpoint_file
from ..common import autocast, lr_at
from .config import TRAJECTORY_KEYS, Variant, size_label
from .data import Data, naflex_train_batch, train_batch, train_step_plan
from .models import build_model, patch_size_of
from .naflex import to_device

log = logging.getLogger(__name__)

#: columns of ``summary.csv``, the training loss log (one row per step; timm writes one per epoch)
LOSS_FIELDS = ["variant", "seed", "step", "lr", "loss", "size"]

def _trajectory(cfg, variant: Variant, seed: int) -> Dict[str, Any]:
    v = asdict(variant)
    v.pop("checkpoint", None)
    return dict(variant=v, seed=seed, **{k: cfg.get(k) for k in TRAJECTORY_KEYS})


def checkpoint_path(out, variant: Variant, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_+." else "_" for c in variant.name)
    return Path(out) / "checkpoints" / f"{safe}_seed{seed}.pt"


def train_variant(variant: Variant, cfg: Dict[str, Any], data: Data, seed: int, ckpt: Path, *, device=None,
                  callback: Optional[Callable[[int, torch.nn.Module], None]] = None,
                  progress: bool = True, loss_log: Optional[List[Dict[str, Any]]] = None,
                  warnings: Optional[List[str]] = None) -> torch.nn.Module:
    """Train ``variant`` from scratch (or resume from ``ckpt`` when ``cfg['resume']``) for ``cfg['steps']`` steps.

    The checkpoint (model, optimizer, torch RNG state, step, trajectory settings) is written atomically by rank 0
    every ``ckpt_every`` steps and at the end. ``callback(step, model)`` runs after each step (``step`` = steps
    done). Returns the trained model (unwrapped, in eval mode).

    ``loss_log``: a list that gets one :data:`LOSS_FIELDS` row per step (the checkpoint keeps the history, so a
    resumed run logs every step once). When the mean loss of the last tenth of the steps is still above 90% of
    ``ln(classes)`` (the loss of a uniform guess) a warning is logged and appended to ``warnings``.
    """
    from timm.optim import create_optimizer_v2

    from ...utils.dist import barrier, get_rank, get_world_size, unwrap_model
    from ...utils.progress import progress_bar

    device = torch.device("cpu") if device is None else torch.device(device)
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(seed)
    model = build_model(variant, data.num_classes, cfg["train_size"]).to(device)
    opt = create_optimizer_v2(model, "adamw", lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    traj = _trajectory(cfg, variant, seed)
    if data.train_folder is not None:  # ImageFolder training: normalise as the model's data config says
        from .evaluation import data_config

        dc = data_config(model, cfg)
        cfg = {**cfg, "mean": list(dc["mean"]), "std": list(dc["std"]), "interpolation": dc["interpolation"]}
    start = 0
    history: List[Dict[str, Any]] = []
    if cfg["resume"] and ckpt.is_file():
        state = load_checkpoint_file(ckpt, what="--resume: checkpoint")
        saved = state.get("trajectory")
        if saved != json.loads(json.dumps(traj)):
            diff = sorted(k for k in set(traj) | set(saved or {}) if (saved or {}).get(k) != traj.get(k))
            raise ValueError(f"cannot resume from {str(ckpt)!r}: it was trained with other settings ({diff}); "
                             f"drop --resume or use another --out")
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start = int(state["step"])
        history = list(state.get("losses") or [])
        log.info("resumed %s seed %d from %s at step %d", variant.name, seed, ckpt, start)
    elif ckpt.is_file():
        log.warning("overwriting checkpoint %s (pass --resume to continue it)", ckpt)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    steps = cfg["steps"]
    bar = progress_bar(total=steps, initial=start, desc=f"train {variant.name} s{seed}",
                       enabled=progress and rank == 0, unit="step")
    net.train()

    def save(done: int):
        if rank == 0:
            state = dict(model=unwrap_model(net).state_dict(), optimizer=opt.state_dict(), step=done,
                         rng=torch.get_rng_state(), trajectory=json.loads(json.dumps(traj)), losses=history,
                         cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
            atomic_torch_save(state, ckpt)
        barrier()

    for step in range(start, steps):
        lr = lr_at(step, cfg["lr"], cfg["warmup_steps"], cfg["steps"], schedule="cosine")
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        idx, size = train_step_plan(cfg, data, seed, step)
        if cfg.get("batching") == "naflex":
            x, y = naflex_train_batch(cfg, data, seed, idx[rank::world], step, patch_size_of(model))
            size = tuple(cfg["train_size"])  # the budget's size (each image has its own)
        else:
            x, y = train_batch(cfg, data, seed, idx[rank::world], size, step)
        x, y = to_device(x, device), y.to(device)
        with autocast(device, cfg["amp"]):
            loss = loss_fn(net(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training {variant.name} seed {seed}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        done = step + 1
        history.append(dict(variant=variant.name, seed=seed, step=done, lr=lr, loss=float(loss.item()),
                            size=size_label(size)))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", px=size_label(size), refresh=False)
        if done % cfg["ckpt_every"] == 0 or done == steps:
            save(done)
        if callback is not None:
            callback(done, model)
    bar.close()
    if loss_log is not None:
        loss_log.extend(history)
    tail = [h["loss"] for h in history[-max(1, len(history) // 10):]]
    uniform = math.log(max(2, data.num_classes))
    if tail and sum(tail) / len(tail) > 0.9 * uniform:
        msg = (f"training {variant.name} seed {seed} ended near chance: mean loss {sum(tail) / len(tail):.3f} over the "
               f"last {len(tail)} steps vs {uniform:.3f} for a uniform guess over {data.num_classes} classes (more "
               f"--steps, another --lr?)")
        log.warning(msg)
        if warnings is not None:
            warnings.append(msg)
    model.eval()
    return model
