"""The resolution experiment: check everything, (train,) evaluate the sweep, write the results."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from ...utils.io import atomic_write_csv, atomic_write_json, file_fingerprint, folder_fingerprint
from . import evaluation
from .config import VARIANT_KEYS, default_sizes, parse_variants, size_label, sizes_from_ratios
from .data import plan_data
from .models import build_model, checkpoint_num_classes, checkpoint_train_size, img_size_of, patch_size_of
from .results import make_result, result_row, write_results
from .training import LOSS_FIELDS, checkpoint_path, train_variant

#: what a resolution run writes into its folder (``--overwrite`` deletes these first)
OWNED = ["results.json", "results.csv", "table.md", "config.yaml", "accuracy_vs_resolution.png", "partial_rows.json",
         "summary.csv", "checkpoints"]

log = logging.getLogger(__name__)

# ---- the experiment ----------------------------------------------------------------------------------------------
def run_experiment(cfg: Dict[str, Any], train: bool, *, callback=None, progress: bool = True) -> Dict[str, Any]:
    """Check everything, (train,) evaluate the sweep, write the results folder (rank 0). Returns the results dict
    (on every rank; ``table`` holds the Markdown table).

    ``cfg`` comes from :func:`load_config`. ``callback(step, model)`` is passed to :func:`train_variant`.

    The output folder follows :mod:`vispos.utils.outdir`: without ``out`` a fresh
    ``results/<train|eval>-resolution/<time>-<model>-<size>`` folder; a given ``out`` that holds files is refused
    unless ``resume`` or ``overwrite``; a run that fails before writing anything leaves no folder behind. The
    folder used is ``result["out"]``.
    """
    t0 = time.time()
    variants = parse_variants(cfg)
    if train and any(v.checkpoint for v in variants):
        raise ValueError("train resolution trains from scratch; drop `checkpoint` from the variants "
                         "(or use `vispos eval resolution` to evaluate checkpoints)")
    if train and cfg.get("train_size") is None:
        raise ValueError("train resolution needs train_size (e.g. --train-size 32)")
    if not train and cfg.get("train_size") is None:
        found = checkpoint_train_size(variants)
        if found is not None:
            log.info("train_size not given: using %s, recorded in the checkpoints", size_label(found))
            cfg = {**cfg, "train_size": found}
    if not train and cfg.get("num_classes") is None:
        found = checkpoint_num_classes(variants)
        if found is not None:
            cfg = {**cfg, "num_classes": found}
    data = plan_data(cfg, train)
    cfg = resolve_sizes(cfg, variants, data.num_classes)
    sizes = [tuple(s) for s in cfg["sizes"]]
    check_sizes = list(sizes)
    if train:
        check_sizes += [tuple(cfg["train_size"])] + [tuple(s) for s in (cfg.get("train_sizes") or [])]
    for v in variants:  # build each model once (cheap) to check its PE options and patch size before any work
        try:
            m = build_model(v, data.num_classes, cfg.get("train_size"))
        except (AssertionError, ZeroDivisionError, RuntimeError) as e:  # timm's own checks, named
            raise ValueError(f"variant {v.name!r}: cannot build {cfg['model']!r} with model_kwargs "
                             f"{cfg['model_kwargs']}: {type(e).__name__}: {e}") from e
        ph, pw = patch_size_of(m)
        if cfg.get("batching") == "naflex":
            from .naflex import check_naflex_model

            check_naflex_model(m, f"variant {v.name!r} ({v.model})")
        bad = [size_label(s) for s in check_sizes if s[0] % ph or s[1] % pw]
        if bad:
            raise ValueError(f"variant {v.name!r}: sizes {bad} are not multiples of its patch size {ph}x{pw}")
        del m
    from ...utils.outdir import DEFAULT_ROOT, check_out, results_folder, timestamped_out

    if cfg.get("out") is None:  # timm's convention: a fresh folder per run
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("under torchrun give --out: every process must write into the same folder")
        tags = [variants[0].model.split(".")[0]] + ([size_label(tuple(cfg["train_size"]))] if cfg.get("train_size")
                                                    else [])
        cfg = {**cfg, "out": str(timestamped_out(Path(DEFAULT_ROOT) / f"{'train' if train else 'eval'}-resolution",
                                                 *tags))}
    main_rank = os.environ.get("RANK", "0") == "0"
    check_out(cfg["out"], resume=cfg["resume"], overwrite=cfg.get("overwrite", False), owned=OWNED)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    with results_folder(cfg["out"], resume=cfg["resume"], overwrite=cfg.get("overwrite", False), owned=OWNED,
                        main=main_rank) as out:
        return _run(cfg, train, variants, data, sizes, out, t0, callback, progress)


def _run(cfg, train, variants, data, sizes, out, t0, callback, progress) -> Dict[str, Any]:
    from ...utils.dist import cleanup_distributed, init_distributed
    from ...utils.env import run_environment

    info = init_distributed(cfg["device"])
    try:
        if train and cfg["batch_size"] % info.world_size:
            raise ValueError(f"batch_size {cfg['batch_size']} must be a multiple of the number of processes "
                             f"({info.world_size}) so that every rank gets the same share of each batch")
        rows: List[Dict[str, Any]] = []
        partial = out / "partial_rows.json"
        fingerprint = eval_fingerprint(cfg, variants)
        done: Dict[tuple, Dict[str, Any]] = {}
        if not train and cfg.get("resume") and partial.is_file():
            try:
                saved = json.loads(partial.read_text())
                if not isinstance(saved, dict) or not isinstance(saved.get("rows"), list):
                    raise ValueError("not a mapping with 'rows'")
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"cannot resume from {str(partial)!r}: the file is damaged ({e}); delete it to "
                                 f"evaluate every cell again") from None
            if saved.get("fingerprint") != fingerprint:
                try:
                    old, new = json.loads(saved.get("fingerprint") or "{}"), json.loads(fingerprint)
                    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                except (ValueError, TypeError, AttributeError):
                    diff = ["(unreadable fingerprint)"]
                raise ValueError(f"cannot resume from {str(partial)!r}: it was made with other settings or files "
                                 f"({', '.join(diff)} differ); drop --resume or use another --out")
            done = {(r["variant"], r["size"]): r for r in saved["rows"]}
            log.info("resuming the evaluation: %d of %d cells done", len(done), len(variants) * len(sizes))
        loss_log: List[Dict[str, Any]] = []
        warnings: List[str] = []
        for v in variants:
            for seed in (cfg["seeds"] if train else [v.seed]):
                if train:
                    ckpt = checkpoint_path(out, v, seed)
                    model = train_variant(v, cfg, data, seed, ckpt, device=info.device, callback=callback,
                                          progress=progress, loss_log=loss_log, warnings=warnings)
                    if info.is_main:  # the loss log so far (timm's summary.csv): kept if a later variant fails
                        atomic_write_csv(out / "summary.csv", loss_log, fieldnames=LOSS_FIELDS)
                else:
                    ckpt = v.checkpoint
                    if all((v.name, size_label(hw)) in done for hw in sizes):  # --resume: this variant is done
                        rows.extend(done[(v.name, size_label(hw))] for hw in sizes)
                        continue
                    if v.checkpoint is None and not cfg.get("pretrained"):
                        log.warning("variant %s has no checkpoint: evaluating randomly initialised weights", v.name)
                    model = build_model(v, data.num_classes, cfg.get("train_size"), ckpt,
                                        pretrained=cfg.get("pretrained", False)).to(info.device)
                for hw in sizes:
                    if not train and (v.name, size_label(hw)) in done:
                        rows.append(done[(v.name, size_label(hw))])
                        continue
                    seed_tag = "" if seed is None else f" s{seed}"
                    r = evaluation.evaluate(model, cfg, data, hw, device=info.device, progress=progress,
                                            desc=f"eval {v.name}{seed_tag} {size_label(hw)}")
                    rows.append(result_row(v, seed, hw, r, ckpt))
                    log.info("%s seed %s at %s: top-1 %.4f", v.name, seed, size_label(hw), r["top1"])
                    if not train and info.is_main:  # every finished cell is kept: an interrupted eval resumes
                        atomic_write_json(partial, {"fingerprint": fingerprint, "rows": rows})
                del model
        warnings += near_chance(rows, cfg, data)
        result = make_result(cfg, data, variants, rows, train=train, world_size=info.world_size,
                             wall_time_s=time.time() - t0)
        result["environment"] = run_environment(info.device, cfg["seeds"] if train else
                                                sorted({v.seed for v in variants if v.seed is not None}))
        result["warnings"] = warnings
        result["out"] = str(out)
        if data.eval_folder is not None:
            m = build_model(variants[0], data.num_classes, cfg.get("train_size"))
            dc = evaluation.data_config(m, cfg)
            result["data_config"] = {k: list(x) if isinstance(x, tuple) else x for k, x in dc.items()}
            result["class_to_idx"] = data.class_to_idx
        if info.is_main:
            write_results(out, result, cfg)
            if partial.is_file():
                partial.unlink()
        return result
    finally:
        cleanup_distributed(info)


def resolve_sizes(cfg: Dict[str, Any], variants=None, num_classes: int = 2) -> Dict[str, Any]:
    """``cfg`` with ``sizes`` computed from ``size_ratios`` (if given): ``round(ratio * train_size / p) * p`` per
    side, ``p`` the patch size of the first variant's model. Without ``size_ratios``: ``cfg`` unchanged when it has
    ``sizes``, else the default sweep (:func:`~vispos.eval.resolution.config.default_sizes` of the training size, or
    of the model's own img_size for an evaluation without one), so the defaults always fit the patch size."""
    if not cfg.get("size_ratios"):
        if cfg.get("sizes") is not None:
            return cfg
        # default sweep: DEFAULT_SIZE_RATIOS x the training size (the model's img_size when not given)
        variants = parse_variants(cfg) if variants is None else variants
        m = build_model(variants[0], num_classes, cfg.get("train_size"))
        ts = tuple(cfg["train_size"]) if cfg.get("train_size") else img_size_of(m)
        sizes = default_sizes(ts, patch_size_of(m))
        del m
        return {**cfg, "sizes": [list(s) for s in sizes]}
    if cfg.get("train_size") is None:
        raise ValueError("size_ratios needs train_size (the test sizes are ratios of it)")
    variants = parse_variants(cfg) if variants is None else variants
    m = build_model(variants[0], num_classes, cfg["train_size"])
    ph, pw = patch_size_of(m)
    del m
    return {**cfg, "sizes": sizes_from_ratios(cfg["size_ratios"], cfg["train_size"], max(ph, pw))}


def near_chance(rows: List[Dict[str, Any]], cfg: Dict[str, Any], data) -> List[str]:
    """A warning (logged, and returned for results.json) per variant and seed whose top-1 at the training size is
    within 3 binomial standard errors of chance: the model did not learn the task (too few steps, a bad lr)."""
    ts = cfg.get("train_size")
    if ts is None:
        return []
    label = size_label(tuple(ts))
    out = []
    for r in rows:
        if r["size"] != label or not r.get("n"):
            continue
        c = data.chance
        if r["top1"] <= c + 3 * math.sqrt(c * (1 - c) / r["n"]):
            msg = (f"{r['variant']} (seed {r['seed']}) scores {100 * r['top1']:.1f}% top-1 at its training size "
                   f"{label}, near chance ({100 * c:.1f}%): it has not learned the task (more --steps, another --lr, "
                   f"or check the data)")
            log.warning(msg)
            out.append(msg)
    return out


def eval_fingerprint(cfg: Dict[str, Any], variants) -> str:
    """What an evaluation's numbers depend on: a partial evaluation is resumed only if this matches (settings,
    each checkpoint's size + mtime + sha256, the data folder's listing)."""
    keys = ("model", "model_kwargs", "task", "data", "sizes", "train_size", "eval_samples", "data_seed", "crop_pct",
            "interpolation", "mean", "std", "crop_mode", "num_classes", "class_map", "pretrained", "amp", "batching",
            "aspect_range")
    body = {k: cfg.get(k) for k in keys}
    body["variants"] = [{k: getattr(v, k) for k in VARIANT_KEYS} for v in variants]
    # content, not only paths: a checkpoint replaced at the same path (or data changed in place) invalidates it
    body["checkpoint_content"] = [file_fingerprint(v.checkpoint) if v.checkpoint else None for v in variants]
    if cfg.get("data"):
        body["data_content"] = folder_fingerprint(cfg["data"])
    return json.dumps(body, sort_keys=True, default=str)
