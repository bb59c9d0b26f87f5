"""``vispos eval resolution``, ``vispos train resolution``, ``vispos demo resolution``: flags and runners."""
from __future__ import annotations

import argparse
from pathlib import Path

from ...data.images import TASKS
from .config import DEFAULTS, load_config
from .experiment import run_experiment


# ---- CLI ---------------------------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--config", help="YAML config (flags override it)")
    p.add_argument("--model", help=f"timm model name (default {d['model']})")
    p.add_argument("--model-kwargs", help="timm kwargs as YAML/JSON, e.g. '{patch_size: 4, embed_dim: 64}'")
    p.add_argument("--pe", help="variants: 'ape,rope_axial,ape+rope_axial' ('+' joins a combination; 'timm' = the "
                                "model's own PE)")
    p.add_argument("--pe-kwargs", help="options of the PE (single variant) as YAML/JSON")
    p.add_argument("--task", help=f"built-in task: {', '.join(sorted(TASKS))} (default {d['task']})")
    p.add_argument("--data", help="ImageFolder root for evaluation, read as timm's validate.py does (default: the "
                                  "built-in task)")
    p.add_argument("--sizes", help="test sizes, e.g. '16,24,32x48' (default: the papers' 0.43, 1, 1.7, 2.3 and 3 x "
                                   "the training size, rounded to multiples of the patch size)")
    p.add_argument("--size-ratios", help="test sizes as ratios of the training size, rounded to patch multiples, "
                                         "e.g. '0.43,1,1.7,2.3,3' or 'paper' (overrides --sizes)")
    p.add_argument("--eval-samples", type=int, help=f"synthetic evaluation samples (default {d['eval_samples']})")
    p.add_argument("--data-seed", type=int, help=f"seed of the synthetic data (default {d['data_seed']})")
    p.add_argument("--eval-batch-size", type=int, help=f"default {d['eval_batch_size']}")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the checkpoint's head, else the "
                                                   "data's classes)")
    p.add_argument("--class-map", help="ImageFolder: a .txt file, line i = the folder name of output i (timm's)")
    p.add_argument("--mean", help="ImageFolder normalisation mean, e.g. '0.5,0.5,0.5' (default: the model's timm data "
                                  "config)")
    p.add_argument("--std", help="ImageFolder normalisation std (default: the model's data config)")
    p.add_argument("--crop-pct", type=float, help="ImageFolder centre-crop fraction (default: the model's data "
                                                  "config, e.g. 0.9 for augreg ViTs)")
    p.add_argument("--interpolation", help="resize interpolation: bicubic, bilinear, nearest, ... (default: the "
                                           "model's data config)")
    p.add_argument("--crop-mode", help="center | squash | border (default: the model's data config)")
    p.add_argument("--batching", choices=["fixed", "naflex"],
                   help="fixed (default): every batch one size. naflex: every image keeps its aspect ratio, resized "
                        "to fit a token budget (training: --max-tokens; evaluation: each test size's tokens), "
                        "patchified and padded by timm's NaFlex pipeline; only for timm NaFlexViT models "
                        "(--model naflexvit_*, or model_kwargs use_naflex: true), with any --pe")
    p.add_argument("--aspect-range", help="--batching naflex on a built-in task: image height/width drawn "
                                          "log-uniformly in 'lo,hi' (default 0.5,2)")
    p.add_argument("--num-workers", type=int, help=f"DataLoader workers (default {d['num_workers']})")
    p.add_argument("--device", help=f"auto | cpu | cuda | cuda:N (default {d['device']})")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", help="results folder (default: a fresh results/<train|eval>-resolution/<time>-<model>-"
                                 "<size>; an --out that holds files needs --resume or --overwrite)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the results of an earlier run in --out (its checkpoints included)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--train-size", help="size the models were trained at: their img_size (APE tables, RoPE reference "
                                        "grids), marked in the table (default: recorded in vispos checkpoints, "
                                        "else the model's)")
    p.add_argument("--checkpoint", help="weights: a checkpoint file, a timm run folder (model_best.pth.tar, ...) or "
                                        "a vispos train run folder (every checkpoints/*.pt with the variant, seed "
                                        "and training size it stores; --pe not needed)")
    p.add_argument("--pretrained", action="store_true", default=None, help="timm's pretrained weights")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue an interrupted evaluation in --out (finished cells are kept in partial_rows.json)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    _add_common(p)
    p.add_argument("--train-size", required=False,
                   help="REQUIRED (here or in --config): the training size, e.g. 32; the models' img_size")
    p.add_argument("--train-data", help="ImageFolder root for training (default: the built-in task)")
    p.add_argument("--train-sizes", help="multi-resolution training: a random one of these sizes per batch")
    p.add_argument("--rrc-scale", help="training random-resized-crop area range 'lo,hi', or 'off' (default 0.25,1 "
                                       "for ImageFolder and the tasks photos, relative, shape, landolt; absolute "
                                       "and quadrant take none: a crop changes their label)")
    p.add_argument("--max-tokens", type=int, help="--batching naflex: patch tokens per training image (default: "
                                                  "the --train-size grid's)")
    p.add_argument("--steps", type=int, help=f"optimisation steps per variant and seed (default {d['steps']})")
    p.add_argument("--batch-size", type=int, help=f"global batch size, split over torchrun ranks (default "
                                                  f"{d['batch_size']})")
    p.add_argument("--lr", type=float, help=f"AdamW peak learning rate, cosine schedule (default {d['lr']})")
    p.add_argument("--weight-decay", type=float, help=f"default {d['weight_decay']}")
    p.add_argument("--warmup-steps", type=int, help=f"linear warm-up steps (default {d['warmup_steps']})")
    p.add_argument("--seeds", help=f"model seeds, e.g. '0,1,2' (default {','.join(map(str, d['seeds']))})")
    p.add_argument("--ckpt-every", type=int, help=f"checkpoint every N steps (default {d['ckpt_every']})")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the checkpoints in --out")


def run_eval(args) -> int:
    cfg = load_config(args=args)
    return _print_table(run_experiment(cfg, train=False, progress=not args.no_progress), cfg)


def run_train(args) -> int:
    cfg = load_config(args=args)
    return _print_table(run_experiment(cfg, train=True, progress=not args.no_progress), cfg)


def _print_table(result, cfg) -> int:
    import os

    if os.environ.get("RANK", "0") == "0":  # the process group is gone by now: read torchrun's rank
        print(result["table"] + f"\nresults in {result.get('out', cfg.get('out'))} ({result['wall_time_s']:.0f} s)")
    return 0


def demo_config_path(scale: str) -> Path:
    """``resolution/demo_<scale>.yaml`` of the shipped configs (the checkout's ``configs/`` or, installed, the
    package data ``vispos/configs/``: :func:`vispos.utils.resources.config_path`)."""
    from ...utils.resources import config_path

    if scale not in ("cpu", "gpu"):
        raise ValueError(f"scale must be 'cpu' or 'gpu', got {scale!r}")
    return config_path("resolution", f"demo_{scale}.yaml")


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/resolution", help="results folder (default results/resolution; if it "
                                                               "holds an earlier run: --overwrite or --resume)")
    p.add_argument("--overwrite", action="store_true", help="replace the earlier demo results in --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="cpu: < 8 min on 2 cores; gpu: larger")
    p.add_argument("--config", help="another demo config (default configs/resolution/demo_<scale>.yaml)")
    p.add_argument("--steps", type=int, help="override the training steps")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (the cpu config uses 2; 1 is faster on a busy "
                                               "machine)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run_demo(args) -> int:
    path = args.config or demo_config_path(args.scale)
    overrides = dict(out=args.out, overwrite=bool(args.overwrite), resume=bool(args.resume))
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = load_config(path, **overrides)
    return _print_table(run_experiment(cfg, train=True, progress=not args.no_progress), cfg)
