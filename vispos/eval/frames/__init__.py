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

The package has one module per job: :mod:`.config` (defaults, demo presets, checks), :mod:`.models` (the
:class:`VideoDiT`, loss, sampler, checkpoints), :mod:`.data`, :mod:`.training`, :mod:`.evaluation` (generation,
scoring, ``k`` identification), :mod:`.results` (aggregates, table, plots, video grid) and :mod:`.cli`; everything
public is re-exported here. The schedule and the results folder are shared with :mod:`vispos.eval.resolution`
through :mod:`vispos.eval.common`.
"""
from .cli import add_demo_args, add_eval_args, add_train_args, demo_configs, run_demo, run_eval, run_train
from .config import (
    DEMO_PRESETS,
    EVAL_DEFAULTS,
    MODEL_KEYS,
    SAMPLERS,
    TRAIN_DEFAULTS,
    check_eval_config,
    check_train_config,
)
from .data import build_dataset, item_video, to_uint8_frames
from .evaluation import eval_frames, identify_k_from_frames, identify_k_from_videos, score_videos_dir
from .models import build_model, flow_loss, load_checkpoint, sample
from .results import PLOT_KEYS, TABLE_KEYS, aggregate, table_md, write_grid, write_plots
from .training import train_video

__all__ = [
    "TRAIN_DEFAULTS", "EVAL_DEFAULTS", "DEMO_PRESETS", "MODEL_KEYS", "SAMPLERS", "check_train_config",
    "check_eval_config", "build_model", "flow_loss", "sample", "load_checkpoint", "build_dataset", "item_video",
    "to_uint8_frames", "train_video", "eval_frames", "score_videos_dir", "identify_k_from_frames",
    "identify_k_from_videos", "PLOT_KEYS", "TABLE_KEYS", "aggregate", "table_md", "write_plots", "write_grid",
    "add_train_args", "run_train", "add_eval_args", "run_eval", "add_demo_args", "run_demo", "demo_configs",
]
