"""``vispos eval frames`` results: aggregates per (rule, length), the table, plots and the video grid."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ...utils.io import atomic_savefig, markdown_table

#: Columns of table.md / results.csv and one PNG each (from :func:`vispos.eval.video_metrics.summarize_scores`).
TABLE_KEYS = ("norepeat_share", "repeat_share", "mean_loop_score", "mean_loop_period", "mean_motion",
              "motion_vs_L", "mean_slowdown_ratio", "mean_tail_novelty", "mean_traj_tail_px")
PLOT_KEYS = TABLE_KEYS
#: Plot titles / axis labels of the metrics (the JSON keys stay as they are).
METRIC_TITLES = {
    "norepeat_share": "NoRepeat share (videos with D > tau)",
    "repeat_share": "share of videos with a self-similarity loop",
    "mean_selfsim_score": "self-similarity loop score",
    "mean_selfsim_period": "loop period (frames)",
    "mean_motion": "motion",
    "motion_vs_L": "motion / motion at the training length",
    "mean_slowdown_ratio": "slow-down ratio (tail / head motion)",
    "mean_tail_novelty": "tail novelty",
    "mean_traj_tail_px": "trajectory error past the training length (px)",
}
_STYLES = [("o", "-"), ("s", "--"), ("D", "-."), ("^", ":"), ("v", "-"), ("P", "--"), ("X", "-."), ("*", ":")]


def aggregate(rows: List[Dict[str, Any]], train_len: int) -> List[Dict[str, Any]]:
    from .. import video_metrics as M

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


def is_finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def table_md(agg: List[Dict[str, Any]], keys: Sequence[str]) -> str:
    header = ["rule", "frames", "n"] + [k.replace("mean_", "") for k in keys]
    body = [[a["rule"], a["frames"], a["n"]] + ["–" if a.get(k) is None else float(a[k]) for k in keys]
            for a in agg]
    return markdown_table(header, body)


def write_plots(agg: List[Dict[str, Any]], keys: Sequence[str], out: Path, train_len: int) -> List[str]:
    """One PNG per metric (``<metric>.png``), a line per rule against the generated length. Each rule has its own
    marker and dash pattern and later rules are drawn thinner, so rules with equal values (PI and YaRN often
    coincide) stay visible. Without matplotlib: no plots, one warning (returns ``[]``)."""
    from ..plots import matplotlib_or_hint

    if matplotlib_or_hint(out / "*.png") is None:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    files = []
    rules = list(dict.fromkeys(a["rule"] for a in agg))
    for k in keys:
        fig = Figure(figsize=(5.5, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for i, rule in enumerate(rules):
            pts = sorted((a["frames"], a[k]) for a in agg if a["rule"] == rule and a.get(k) is not None)
            if pts:
                marker, ls = _STYLES[i % len(_STYLES)]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=ls, lw=max(0.8, 2.4 - 0.3 * i),
                        ms=max(3.0, 7.0 - 0.6 * i), label=rule)
        ax.axvline(train_len, color="gray", ls=":", lw=1)
        ax.set_xlabel("frames generated (dotted: training length)")
        name = k.replace("mean_", "")
        title = METRIC_TITLES.get(k, name)
        ax.set_ylabel(title if len(title) <= 28 else name)
        ax.set_title(f"{title} vs length", fontsize=10)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values (metric undefined at these lengths)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        atomic_savefig(fig, path, dpi=100)
        files.append(path.name)
    return files


def frame_counter(grid: np.ndarray, train_len=None, height: int = 12) -> np.ndarray:
    """``grid (T, H, W, 3)`` with a strip on top saying ``frame t / T`` on every frame; frames past ``train_len``
    say ``past training length L`` and get a red strip, so the extrapolated part is visible in the GIF / MP4."""
    from ...data.video import _label_strip

    T, _, W, _ = grid.shape
    rows = []
    for t in range(T):
        past = train_len is not None and t >= train_len
        text = f"frame {t + 1}/{T}" + (f"  past training length {train_len}" if past else "")
        strip = _label_strip(text, height, W).copy()
        if past:
            strip[..., 0] = np.maximum(strip[..., 0], 150)  # red background, white text stays white
        rows.append(strip)
    return np.concatenate([np.stack(rows), grid], axis=1)


def write_grid(rows_videos: Dict[str, List[np.ndarray]], out: Path, stem: str, fps: int,
               train_len=None) -> List[str]:
    """Rules as rows, samples as columns: ``<stem>.mp4`` and ``<stem>.gif``, upscaled to >= 256 px high, with a
    frame counter that marks the frames past ``train_len`` (:func:`frame_counter`)."""
    from ...data import video as V

    labels = list(rows_videos)
    grid = V.video_grid([rows_videos[r] for r in labels], labels)
    # upscale small videos so that the grid is visible (nearest: the pixels of a tiny model stay sharp)
    scale = max(1, 256 // max(grid.shape[1], 1))
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=1), scale, axis=2)
    grid = frame_counter(grid, train_len)
    names = []
    for ext, writer in (("mp4", V.write_video), ("gif", V.write_gif)):
        path = out / f"{stem}.{ext}"
        writer(str(path), grid, fps)  # atomic writers (vispos.data.video)
        names.append(path.name)
    return names


def table_header(cfg, L, n_max, tinfo, k_used, identified) -> str:
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
                 "share with a self-similarity loop (score >= 0.5 in some suffix of the video); loop_score: mean "
                 "score of the strongest suffix loop; loop_period: mean period over the videos with a detected loop "
                 "only; motion: optical-flow speed (% of the short side per frame); motion_vs_L: motion / the same "
                 "rule's motion at the training length; slowdown_ratio: tail motion / head motion; traj_tail_px: "
                 "object distance to the constant-velocity continuation of the first L frames.")
    return "\n".join(lines) + "\n\n"


#: ``--videos`` mode: the per-video metrics drawn in ``videos.png`` (one panel each, a point per file).
VIDEO_PLOT_KEYS = ("repetition_frame", "norepeat_D", "motion", "slowdown_ratio", "tail_novelty")
VIDEO_PLOT_TITLES = {"repetition_frame": "repetition frame (dotted: training length)",
                     "norepeat_D": "NoRepeat D (dotted: tau; at or below: repeats)", "motion": "motion",
                     "slowdown_ratio": "slow-down ratio (tail / head motion)", "tail_novelty": "tail novelty"}


def write_videos_plot(rows: List[Dict[str, Any]], out: Path, train_len: int, stem: str = "videos") -> List[str]:
    """``--videos`` mode: ``<stem>.png``, one panel per metric of :data:`VIDEO_PLOT_KEYS`, a point per video file
    (x: the files in table order; a missing value leaves a gap and a panel without values says so). The repetition
    panel marks ``train_len``, the NoRepeat panel the threshold ``tau`` used. Without matplotlib: no plot, one
    warning (returns ``[]``)."""
    from ..plots import matplotlib_or_hint

    if not rows:
        raise ValueError("write_videos_plot needs at least one scored video")
    path = out / f"{stem}.png"
    if matplotlib_or_hint(path) is None:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(r.get("file", i)) for i, r in enumerate(rows)]
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(5.5, 0.5 * len(rows) + 2.0), 2.2 * len(VIDEO_PLOT_KEYS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIDEO_PLOT_KEYS), 1, sharex=True)
    for ax, k in zip(axes, VIDEO_PLOT_KEYS):
        ys = [float(r[k]) if is_finite(r.get(k)) else float("nan") for r in rows]
        ax.plot(x, ys, marker="o", ls="none", ms=5)
        if k == "repetition_frame":
            ax.axhline(train_len, color="gray", ls=":", lw=1)
        taus = {float(r["norepeat_tau"]) for r in rows if is_finite(r.get("norepeat_tau"))}
        if k == "norepeat_D" and len(taus) == 1:
            ax.axhline(taus.pop(), color="gray", ls=":", lw=1)
        if not any(math.isfinite(v) for v in ys):
            ax.text(0.5, 0.5, "no values (undefined for these videos)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        ax.set_title(VIDEO_PLOT_TITLES.get(k, k), fontsize=9)
    axes[-1].set_xticks(x)
    crowded = len(rows) > 6 or max(len(n) for n in names) > 10
    axes[-1].set_xticklabels(names, rotation=45 if crowded else 0, ha="right" if crowded else "center", fontsize=7)
    axes[-1].set_xlabel(f"video file (training length {train_len} frames)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    return [path.name]
