"""``vispos eval frames``: generate longer videos per temporal rule and score them; RIFLEx k identification."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ... import freqs as F_
from ...models.video_dit import VideoDiT
from ...utils.io import ensure_writable_dir, markdown_table
from ...utils.seeding import generator
from ..common import jsonable, write_results_folder
from .config import EVAL_DEFAULTS, check_eval_config
from .data import to_uint8_frames
from .models import load_checkpoint, sample
from .results import (
    PLOT_KEYS,
    TABLE_KEYS,
    aggregate,
    is_finite,
    table_header,
    table_md,
    write_grid,
    write_plots,
    write_videos_plot,
)

log = logging.getLogger(__name__)


def identify_k_from_frames(N_per_video: Sequence[Optional[float]], base: float, dim: int, temporal_patch: int = 1,
                           train_len: Optional[float] = None) -> Dict[str, Any]:
    """RIFLEx ``k`` from repetition frames ``N`` (in frames, ``None`` = no repetition found) of several videos.

    ``N`` = the median of the found ones, divided by ``temporal_patch`` (latent frames); ``k, N_k = identify_k(base,
    dim, N)``. Also reports the library default ``k`` for ``train_len`` (latent frames) when given.
    """
    found = [float(n) for n in N_per_video if n is not None and is_finite(n)]
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
    from .. import video_metrics as M

    return identify_k_from_frames([M.estimate_repetition_frame(v) for v in videos], base, dim, temporal_patch,
                                  train_len)


def eval_frames(cfg: Dict[str, Any], model: Optional[VideoDiT] = None, train_cfg: Optional[Dict[str, Any]] = None,
                progress: bool = True) -> Dict[str, Any]:
    """Generate at ``L' = s L`` per scale and rule, score, and write the results folder (see the module doc).

    ``cfg``: :data:`EVAL_DEFAULTS` keys (``checkpoint`` is loaded unless ``model`` and ``train_cfg`` are given).
    Returns the ``results.json`` content.
    """
    from ...utils.progress import progress_bar
    from .. import video_metrics as M

    cfg = dict(EVAL_DEFAULTS, **cfg)
    if model is not None:
        if train_cfg is None:
            raise ValueError("eval_frames: give train_cfg with an in-memory model")
        cfg = check_eval_config(dict(cfg, checkpoint="<in memory>"), need_file=False)
    else:
        cfg = check_eval_config(cfg)
    if cfg["videos"] is not None:
        return score_videos_dir(cfg, progress=progress)
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
    bar = progress_bar(total=len(rules) * len(lengths) * cfg["num_samples"], desc="eval frames", enabled=progress)
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
                gen = generator(cfg["seed"] * 100003 + n)  # the same noise for every rule
                noise = torch.randn(cfg["num_samples"], C, n, H, W, generator=gen)
                vids = []
                for b in range(0, cfg["num_samples"], cfg["batch_size"]):
                    x = sample(model, noise[b:b + cfg["batch_size"]].to(dev), cfg["sample_steps"], cfg["sampler"])
                    vids.extend(to_uint8_frames(v) for v in x.cpu())
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
    agg = aggregate(rows, L)
    order = {r: i for i, r in enumerate(cfg["rules"])}
    agg.sort(key=lambda a: (order[a["rule"]], a["frames"]))
    files: Dict[str, Any] = dict(table="table.md", json="results.json", csv="results.csv")
    files["plots"] = write_plots(agg, PLOT_KEYS, out, L)
    files["grid"] = write_grid({r: videos_by[(r, n_max)] for r in cfg["rules"]}, out, f"grid_{n_max}f", cfg["fps"],
                               train_len=L)
    head = table_header(cfg, L, n_max, tinfo, k_used, identified)
    from ...utils.env import run_environment

    res = dict(mode="generate", environment=run_environment(dev, [cfg["seed"]]), config=jsonable(cfg),
               train_config=jsonable(train_cfg), train_len=L,
               lengths=[n for _, n in lengths], temporal_rope=tinfo, riflex_k_used=k_used, identified=identified,
               aggregate=agg, per_video=rows, files=files, generate_wall_s=gen_s)
    write_results_folder(out, res, agg, head + table_md(agg, TABLE_KEYS))
    return res


def _identify(rows, n_max, tinfo, pt, L) -> Dict[str, Any]:
    Ns = [r.get("repetition_frame") for r in rows if r["rule"] == "none" and r["frames"] == n_max]
    if not Ns:
        raise ValueError("identifying k needs the plain-extrapolation ('none') videos")
    return identify_k_from_frames(Ns, tinfo["base"], tinfo["dim"], pt, train_len=L / pt)


def score_videos_dir(cfg: Dict[str, Any], progress: bool = False) -> Dict[str, Any]:
    """``--videos DIR`` mode: score every video file in the folder (no model). Writes the same outputs.

    With ``rope_base`` / ``rope_dim`` (the generating model's temporal RoPE) NoRepeat uses its default ``N_k`` (or
    ``n_k``) and the repetition frames found give RIFLEx's ``k`` (:func:`identify_k_from_frames`). Frames and latent
    frames: ``temporal_patch = s`` is the VAE's temporal stride, latent frames ``= (frames - 1) / s + 1``, a period
    of ``N`` latent frames spans ``s N`` video frames. With ``reference`` (training-length videos from the same
    prompts and seeds) every video also gets ``speed_vs_reference``: uniform slow motion (PI, YaRN).
    """
    from .. import video_metrics as M
    from .config import latent_frames

    cfg = check_eval_config(dict(EVAL_DEFAULTS, **cfg))
    out = ensure_writable_dir(cfg["out"], "eval output folder")
    L, tp = cfg["train_len"], cfg["temporal_patch"]
    L_lat = latent_frames(L, tp)
    N_k = cfg["n_k"]
    if N_k is None and cfg["rope_dim"] is not None:
        N_k = F_.default_k(float(cfg["rope_base"]), cfg["rope_dim"], L_lat)[1] * tp
    kw = dict(N_k=N_k, window=cfg["norepeat_window"], tau=cfg["tau"], scale_free=cfg["scale_free"],
              static_floor=cfg["static_floor"], fit_trajectories=cfg["trajectories"])
    rows, skipped = M.score_folder(cfg["videos"], L, reference=cfg["reference"], progress=progress, **kw)
    if not rows:
        raise ValueError(f"none of the video files in {cfg['videos']!r} could be read: {skipped}")
    for r in rows:
        r["file"] = os.path.relpath(r.pop("path"), cfg["videos"])
        if "reference" in r:
            r["reference"] = os.path.relpath(r["reference"], cfg["reference"])
    short = [r["file"] for r in rows if isinstance(r.get("num_frames"), int) and r["num_frames"] < L + 2]
    warnings = []
    if short:
        msg = (f"{len(short)} of {len(rows)} videos have fewer than train_len + 2 = {L + 2} frames ({short[:3]}"
               f"{' ...' if len(short) > 3 else ''}): their tail metrics (slowdown_ratio, tail_novelty, traj_tail_px) "
               f"are blank; is --train-len {L} the training length of the model that made them?")
        log.warning(msg)
        warnings.append(msg)
    keys = ["num_frames", "repetition_frame", "loop_score", "loop_start", "norepeat_D", "norepeat_repeats",
            "motion", "static", "slowdown_ratio"] + (["speed_vs_reference"] if cfg["reference"] else []) + \
        ["tail_novelty"] + (["traj_tail_px"] if cfg["trajectories"] else [])
    table = markdown_table(["file"] + keys, [[r["file"]] + ["–" if r.get(k) is None else r[k] for k in keys]
                                             for r in rows])
    summary = M.summarize_scores(rows)
    identified = None
    if cfg["rope_dim"] is not None:
        identified = identify_k_from_frames([r.get("repetition_frame") for r in rows], float(cfg["rope_base"]),
                                            cfg["rope_dim"], tp, train_len=L_lat)
    head = (f"Scored {len(rows)} video files from {str(cfg['videos'])!r}; training length {L} frames"
            + (f" = {L_lat:g} latent frames (temporal stride {tp})" if tp > 1 else "") + ".\n")
    if skipped:
        head += f"Skipped {len(skipped)} unreadable file(s): {[p for p, _ in skipped]}.\n"
    head += (f"Loops detected in {summary['n_loops']}/{summary['n']} videos"
             + (f" (median period {summary['median_loop_period']:g} frames)" if summary["n_loops"] else "")
             + f"; static: {summary['n_static']}/{summary['n']}")
    if N_k is not None:
        head += (f"; NoRepeat at N_k = {N_k:g} frames"
                 + (", scale-free" if cfg["scale_free"] else "")
                 + f": {summary['norepeat_share']} non-repetitive of {summary['n_norepeat']}")
    if cfg["reference"]:
        v = summary.get("mean_speed_vs_reference")
        head += f"; mean speed vs reference {'–' if v is None else f'{v:.3f}'}"
    head += ".\n"
    if identified:
        head += (f"Repetition frame N = {identified['N']} latent frames (median over "
                 f"{identified['videos_with_repetition']}/{identified['videos']} videos that repeat): RIFLEx k = "
                 f"{identified['k']}, N_k = {identified['N_k']}; library default k = {identified.get('default_k')} "
                 f"(N_k = {identified.get('default_N_k')}).\n")
    if warnings:
        head += "Warning: " + " ".join(warnings) + "\n"
    from ...utils.env import run_environment

    res = dict(mode="videos", environment=run_environment(), config=jsonable(cfg), train_len=L,
               train_len_latent=L_lat, N_k=N_k,
               summary=summary, per_video=rows, skipped=skipped, identified=identified, warnings=warnings,
               files=dict(table="table.md", json="results.json", csv="results.csv",
                          plots=write_videos_plot(rows, out, L)))
    write_results_folder(out, res, rows, head + "\n" + table)
    return res
