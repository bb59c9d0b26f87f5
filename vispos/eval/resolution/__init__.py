"""Resolution scaling: train PE variants at one resolution, measure accuracy at others.

Three commands share this module (and :func:`run_experiment`, which the demo script calls too):

* ``vispos eval resolution`` -- evaluate one or more models (timm name + ``pe`` + checkpoint, or a YAML list of
  variants) at a sweep of test sizes (``--sizes 16,24,32x48``) on an ImageFolder (``--data DIR``; eval transform:
  resize so the image covers ``size / crop_pct`` keeping its aspect ratio -- for square sizes exactly timm's
  "shorter side to ``floor(size / crop_pct)``" -- then centre crop) or on a built-in synthetic task (rendered at
  the size directly, see :mod:`vispos.data.images`). Top-1, and top-5 where there are at least 5 classes.
* ``vispos train resolution`` -- train each variant from scratch at ``train_size`` (optionally a random size from
  ``train_sizes`` per batch, as ResFormer trains) for ``steps`` steps per seed, with atomic checkpoints and
  ``--resume``, then run the sweep.
* ``vispos demo resolution`` -- the training command with ``configs/resolution/demo_<scale>.yaml``.

Outputs (``out`` folder, checked writable before any work): ``results.json``, ``results.csv``, ``table.md`` (models
as rows, sizes as columns, the training size marked ``*``), ``accuracy_vs_resolution.png`` (one line per variant)
and ``config.yaml`` (the resolved configuration); training adds ``checkpoints/<variant>_seed<k>.pt``.

Under ``torchrun --nproc_per_node=N`` the same command shards evaluation (strided shards without padding, counts
summed over ranks: exact) and training (each global batch split over ranks, DDP averages the gradients: the same
update as one process up to float rounding); rank 0 writes the results. Training is deterministic given the
configuration: batch ``s`` holds fixed sample indices and its size is drawn from ``(seed, s)``, so ``--resume``
from a checkpoint (model, optimizer, RNG state, step) reproduces the uninterrupted run.

The package has one module per job: :mod:`.config` (defaults, variants, :func:`load_config`), :mod:`.models`
(timm models and checkpoints), :mod:`.data` (transforms, data sets, training batches), :mod:`.training`,
:mod:`.evaluation`, :mod:`.results` (rows, table, results folder), :mod:`.experiment` (:func:`run_experiment`)
and :mod:`.cli`; everything public is re-exported here. The schedule, autocast and the results folder are shared
with :mod:`vispos.eval.frames` through :mod:`vispos.eval.common`.
"""
from .cli import (
    add_demo_args,
    add_eval_args,
    add_train_args,
    demo_config_path,
    run_demo,
    run_eval,
    run_train,
)
from .config import (
    DEFAULTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRAJECTORY_KEYS,
    VARIANT_KEYS,
    Variant,
    load_config,
    parse_sizes,
    parse_variants,
    size_label,
)
from .data import Data, ResizeCenterCrop, make_eval_transform, plan_data, train_batch, train_step_plan
from .evaluation import evaluate
from .experiment import resolve_sizes, run_experiment
from .models import build_model, checkpoint_train_size, patch_size_of
from .results import deltas, make_result, result_row, results_table, summarize, write_results
from .training import checkpoint_path, train_variant

__all__ = [
    "DEFAULTS", "IMAGENET_MEAN", "IMAGENET_STD", "TRAJECTORY_KEYS", "VARIANT_KEYS", "Variant", "parse_sizes",
    "parse_variants", "load_config", "size_label", "build_model", "checkpoint_train_size", "patch_size_of", "Data",
    "ResizeCenterCrop", "make_eval_transform", "plan_data", "train_batch", "train_step_plan", "evaluate",
    "train_variant", "checkpoint_path", "result_row", "make_result", "summarize", "deltas", "results_table", "write_results",
    "run_experiment", "resolve_sizes", "add_eval_args", "add_train_args", "add_demo_args", "run_eval", "run_train", "run_demo",
    "demo_config_path",
]
