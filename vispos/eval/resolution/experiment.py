"""The resolution experiment: check everything, (train,) evaluate the sweep, write the results."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, List

import torch

from ...utils.io import atomic_write_json, ensure_writable_dir
from . import evaluation
from .config import VARIANT_KEYS, parse_variants, size_label, sizes_from_ratios
from .data import plan_data
from .models import build_model, checkpoint_train_size, patch_size_of
from .results import make_result, result_row, write_results
from .training import checkpoint_path, train_variant

log = logging.getLogger(__name__)

# ---- the experiment ----------------------------------------------------------------------------------------------
def run_experiment(cfg: Dict[str, Any], train: bool, *, callback=None, progress: bool = True) -> Dict[str, Any]:
    """Check everything, (train,) evaluate the sweep, write the results folder (rank 0). Returns the results dict
    (on every rank; ``table`` holds the Markdown table).

    ``cfg`` comes from :func:`load_config`. ``callback(step, model)`` is passed to :func:`train_variant`.
    """
    from ...utils.dist import cleanup_distributed, init_distributed

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
    data = plan_data(cfg, train)
    cfg = resolve_sizes(cfg, variants, data.num_classes)
    sizes = [tuple(s) for s in cfg["sizes"]]
    check_sizes = list(sizes)
    if train:
        check_sizes += [tuple(cfg["train_size"])] + [tuple(s) for s in (cfg.get("train_sizes") or [])]
    for v in variants:  # build each model once (cheap) to check its PE options and patch size before any work
        m = build_model(v, data.num_classes, cfg.get("train_size"))
        ph, pw = patch_size_of(m)
        bad = [size_label(s) for s in check_sizes if s[0] % ph or s[1] % pw]
        if bad:
            raise ValueError(f"variant {v.name!r}: sizes {bad} are not multiples of its patch size {ph}x{pw}")
        del m
    out = ensure_writable_dir(cfg["out"])  # checked (and created) once everything else is known to be valid
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
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
            saved = json.loads(partial.read_text())
            if saved.get("fingerprint") != fingerprint:
                raise ValueError(f"cannot resume from {str(partial)!r}: it was made with other settings; drop "
                                 f"--resume or use another --out")
            done = {(r["variant"], r["size"]): r for r in saved["rows"]}
            log.info("resuming the evaluation: %d of %d cells done", len(done), len(variants) * len(sizes))
        for v in variants:
            for seed in (cfg["seeds"] if train else [None]):
                if train:
                    ckpt = checkpoint_path(out, v, seed)
                    model = train_variant(v, cfg, data, seed, ckpt, device=info.device, callback=callback,
                                          progress=progress)
                else:
                    ckpt = v.checkpoint
                    if all((v.name, size_label(hw)) in done for hw in sizes):  # --resume: this variant is done
                        rows.extend(done[(v.name, size_label(hw))] for hw in sizes)
                        continue
                    if v.checkpoint is None:
                        log.warning("variant %s has no checkpoint: evaluating randomly initialised weights", v.name)
                    model = build_model(v, data.num_classes, cfg.get("train_size"), ckpt).to(info.device)
                for hw in sizes:
                    if not train and (v.name, size_label(hw)) in done:
                        rows.append(done[(v.name, size_label(hw))])
                        continue
                    r = evaluation.evaluate(model, cfg, data, hw, device=info.device, progress=progress,
                                 desc=f"eval {v.name} {size_label(hw)}")
                    rows.append(result_row(v, seed, hw, r, ckpt))
                    log.info("%s seed %s at %s: top-1 %.4f", v.name, seed, size_label(hw), r["top1"])
                    if not train and info.is_main:  # every finished cell is kept: an interrupted eval resumes
                        atomic_write_json(partial, {"fingerprint": fingerprint, "rows": rows})
                del model
        result = make_result(cfg, data, variants, rows, train=train, world_size=info.world_size,
                             wall_time_s=time.time() - t0)
        if info.is_main:
            write_results(out, result, cfg)
            if partial.is_file():
                partial.unlink()
        return result
    finally:
        cleanup_distributed(info)


def resolve_sizes(cfg: Dict[str, Any], variants=None, num_classes: int = 2) -> Dict[str, Any]:
    """``cfg`` with ``sizes`` computed from ``size_ratios`` (if given): ``round(ratio * train_size / p) * p`` per
    side, ``p`` the patch size of the first variant's model. Returns ``cfg`` unchanged without ``size_ratios``."""
    if not cfg.get("size_ratios"):
        return cfg
    if cfg.get("train_size") is None:
        raise ValueError("size_ratios needs train_size (the test sizes are ratios of it)")
    variants = parse_variants(cfg) if variants is None else variants
    m = build_model(variants[0], num_classes, cfg["train_size"])
    ph, pw = patch_size_of(m)
    del m
    return {**cfg, "sizes": sizes_from_ratios(cfg["size_ratios"], cfg["train_size"], max(ph, pw))}


def eval_fingerprint(cfg: Dict[str, Any], variants) -> str:
    """What an evaluation's numbers depend on: a partial evaluation is resumed only if this matches."""
    keys = ("model", "model_kwargs", "task", "data", "sizes", "train_size", "eval_samples", "data_seed", "crop_pct",
            "interpolation", "mean", "std", "amp")
    body = {k: cfg.get(k) for k in keys}
    body["variants"] = [{k: getattr(v, k) for k in VARIANT_KEYS} for v in variants]
    return json.dumps(body, sort_keys=True, default=str)
