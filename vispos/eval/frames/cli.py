"""``vispos train video``, ``vispos eval frames``, ``vispos demo video``: flags and runners."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict

from ...utils.config import resolve_config
from ...utils.io import atomic_write_json, markdown_table
from ...utils.outdir import DEFAULT_ROOT, check_out, results_folder, timestamped_out
from .config import DEMO_PRESETS, EVAL_DEFAULTS, SAMPLERS, TRAIN_DEFAULTS, check_train_config
from .evaluation import eval_frames
from .training import train_video

log = logging.getLogger(__name__)

#: what each command writes into its folder (``--overwrite`` deletes these first)
TRAIN_OWNED = ["checkpoint.pt", "train.json", "summary.csv"]
EVAL_OWNED = ["results.json", "results.csv", "table.md", "*.png", "grid_*.mp4", "grid_*.gif"]
DEMO_OWNED = EVAL_OWNED + ["train", "demo.json"]

def add_train_args(p) -> None:
    p.add_argument("--config", help="YAML config (configs/video/*.yaml); flags override it")
    p.add_argument("--out", help="output folder: checkpoint.pt, train.json (default: a fresh "
                                 "results/train-video/<time>-<pe>-<frames>f; one that holds files needs --resume or "
                                 "--overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    p.add_argument("--data", help="'synthetic' or a folder of video files")
    p.add_argument("--num-videos", type=int, help="synthetic videos in the training set")
    p.add_argument("--frames", type=int, help="training clip length L (frames)")
    p.add_argument("--size", type=int, help="frame size (square), pixels")
    p.add_argument("--pe", help=f"PE name, e.g. rope_axial, ape_sincos, peg, rel_decomposed (default "
                                f"{TRAIN_DEFAULTS['pe']})")
    p.add_argument("--pe-kwargs", help="PE options as YAML/JSON, e.g. '{dims: [8, 4, 4], base: 100}' (default: base "
                                       "100, rotary split half the head dim to time, a quarter to H and W)")
    p.add_argument("--attention", choices=["full", "alternating"], help="attention layout")
    p.add_argument("--dim", type=int, help=f"model width (default {TRAIN_DEFAULTS['dim']})")
    p.add_argument("--depth", type=int, help=f"blocks (default {TRAIN_DEFAULTS['depth']})")
    p.add_argument("--num-heads", type=int, help=f"attention heads (default {TRAIN_DEFAULTS['num_heads']})")
    p.add_argument("--steps", type=int, help=f"total optimisation steps (default {TRAIN_DEFAULTS['steps']})")
    p.add_argument("--batch-size", type=int, help=f"global batch size, split across torchrun ranks (default "
                                                  f"{TRAIN_DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"default {TRAIN_DEFAULTS['lr']}")
    p.add_argument("--seed", type=int, help=f"default {TRAIN_DEFAULTS['seed']}")
    p.add_argument("--ckpt-every", type=int, help=f"default {TRAIN_DEFAULTS['ckpt_every']}")
    p.add_argument("--stop-after", type=int, help="stop after this many steps in this run (then --resume)")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (0: leave as is)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _train_cfg_from_args(args) -> Dict[str, Any]:
    cfg = resolve_config(dict(TRAIN_DEFAULTS, out=None), args)
    if isinstance(cfg.get("pe_kwargs"), str):
        import yaml

        try:
            cfg["pe_kwargs"] = yaml.safe_load(cfg["pe_kwargs"])
        except yaml.YAMLError as e:
            raise ValueError(f"--pe-kwargs must be a YAML/JSON mapping like '{{dims: [8, 4, 4]}}': {e}") from None
    if cfg["out"] is None:  # timm's convention: a fresh folder per run
        cfg["out"] = str(timestamped_out(Path(DEFAULT_ROOT) / "train-video", str(cfg["pe"]), f"{cfg['frames']}f"))
    return cfg


def run_train(args) -> int:
    cfg = _train_cfg_from_args(args)
    check_train_config(cfg)  # bad options fail before the folder is touched
    from .models import build_model

    build_model(cfg)  # the model's options (head dim, rotary split) too
    with results_folder(cfg["out"], resume=bool(args.resume), overwrite=bool(args.overwrite), owned=TRAIN_OWNED,
                        what="training output folder"):
        s = train_video(cfg, resume=args.resume, progress=not args.no_progress)
    print(markdown_table(["steps", "final loss", "wall s", "checkpoint"],
                         [[s["steps"], s["final_loss"], s["wall_s"], s["checkpoint"]]]), end="")
    return 0


def add_eval_args(p) -> None:
    p.add_argument("--config", help="YAML config; flags override it")
    p.add_argument("--checkpoint", help="a `vispos train video` checkpoint")
    p.add_argument("--videos", help="score the video files in this folder instead (no model)")
    p.add_argument("--out", help="results folder (default: a fresh results/eval-frames/<time>; one that holds files "
                                 "needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
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
    p.add_argument("--temporal-patch", type=int,
                   help="--videos: the VAE's temporal stride s (latent frames = (frames - 1) / s + 1)")
    p.add_argument("--trajectories", action="store_true", default=None,
                   help="--videos: score object trajectories (objects on a plain background)")
    p.add_argument("--reference", help="--videos: folder of training-length videos from the same prompts and seeds "
                                       "(same relative file names): reports speed_vs_reference (slow motion)")
    p.add_argument("--n-k", type=float, help="--videos: NoRepeat's expected repetition frame N_k (video frames; "
                                             "default from --rope-base/--rope-dim)")
    p.add_argument("--norepeat-window", type=int, help="--videos: NoRepeat search window w (frames)")
    p.add_argument("--tau", type=float, help="--videos: NoRepeat threshold (grey levels, default 10; with "
                                             "--scale-free a fraction of the typical frame distance, default 0.5)")
    p.add_argument("--scale-free", action="store_true", default=None,
                   help="--videos: NoRepeat on D / the video's median frame-to-frame distance")
    p.add_argument("--static-floor", type=float,
                   help="--videos: flow displacement (%% of the short side) below which a video is static (0.8)")
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")


def run_eval(args) -> int:
    cfg = resolve_config(dict(EVAL_DEFAULTS, out=None), args)
    if cfg["out"] is None:
        cfg["out"] = str(timestamped_out(Path(DEFAULT_ROOT) / "eval-frames", "videos" if cfg.get("videos")
                                         else Path(str(cfg.get("checkpoint") or "model")).stem))
    check_out(cfg["out"], overwrite=bool(args.overwrite), owned=EVAL_OWNED, what="eval output folder")
    with results_folder(cfg["out"], overwrite=bool(args.overwrite), owned=EVAL_OWNED, what="eval output folder"):
        res = eval_frames(cfg, progress=not args.no_progress)
    if res.get("mode") == "videos":
        print(_videos_summary(res))
    print((Path(cfg["out"]) / "table.md").read_text(), end="")
    if res.get("identified"):
        log.info("identified: %s", {k: res["identified"].get(k) for k in ("N", "k", "N_k")})
    return 0


def _videos_summary(res: Dict[str, Any]) -> str:
    """The aggregate of ``--videos`` mode (also in results.json ``summary``) as a small table."""
    summ = res.get("summary") or {}
    rows = [[k, "–" if v is None else v] for k, v in summ.items()]
    return "\nAggregate over the videos:\n" + markdown_table(["metric", "value"], rows)


def add_demo_args(p) -> None:
    p.add_argument("--out", default="results/video", help="results folder (default results/video; if it holds an "
                                                          "earlier demo: --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the earlier demo results in --out")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="demo size (cpu: < 8 min on 2 cores)")
    p.add_argument("--config", help="YAML overriding the preset (keys of train and eval configs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", help="auto | cpu | cuda (default: auto)")
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
    from ...utils.config import load_yaml

    preset = dict(DEMO_PRESETS[args.scale])
    if args.config:
        data = {k.replace("-", "_"): v for k, v in load_yaml(args.config).items()}
        preset.update(data)
    if args.threads is not None:
        preset["threads"] = args.threads
    if getattr(args, "device", None) is not None:
        preset["device"] = args.device
    out = Path(args.out)
    tr, ev = demo_configs(preset, out)
    check_train_config(tr)
    check_out(out, overwrite=bool(getattr(args, "overwrite", False)), owned=DEMO_OWNED, what="demo output folder")
    with results_folder(out, overwrite=bool(getattr(args, "overwrite", False)), owned=DEMO_OWNED,
                        what="demo output folder"):
        return _run_demo(args, out, tr, ev)


def _run_demo(args, out: Path, tr, ev) -> int:
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
