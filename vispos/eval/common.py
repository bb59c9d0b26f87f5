"""What the evaluations (:mod:`vispos.eval.resolution`, :mod:`vispos.eval.frames`) share: the learning-rate
schedule, autocast, list parsing and the results folder (``results.json``, ``results.csv``, ``table.md`` and
optionally ``config.yaml``, all written atomically, ``results.json`` last).
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from ..utils.checks import check_choice, check_int, check_number
from ..utils.io import atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = ["SCHEDULES", "lr_at", "autocast", "parse_list", "jsonable", "write_results_folder"]

#: Learning-rate shapes after the linear warm-up.
SCHEDULES = ("constant", "cosine")


def lr_at(step: int, lr: float, warmup: int = 0, total: Optional[int] = None, schedule: str = "constant") -> float:
    """The learning rate of optimisation step ``step`` (0-indexed).

    Linear warm-up over the first ``warmup`` steps (``lr * (step + 1) / warmup``), then ``"constant"`` (``lr``) or
    ``"cosine"`` (half a cosine from ``lr`` to 0 over the remaining ``total - warmup`` steps; ``total`` required).
    """
    check_int(step, "step", 0)
    check_number(lr, "lr", 0.0)
    check_int(warmup, "warmup", 0)
    check_choice(schedule, "schedule", SCHEDULES)
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    check_int(total, "total", 1)
    t = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; otherwise a no-op context."""
    if amp and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parse_list(v, typ, name: str) -> Optional[List[Any]]:
    """``"1,2 3"`` / ``[1, 2]`` -> a non-empty list of ``typ``; ``None`` stays ``None``."""
    if v is None:
        return None
    if isinstance(v, str):
        v = [s for s in v.replace(",", " ").split() if s]
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"{name} must be a non-empty list like '1,2,3', got {v!r}")
    try:
        return [typ(s) for s in v]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a list of {typ.__name__}, got {v!r}") from e


def jsonable(cfg: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """A configuration with paths as strings (``None`` stays ``None``)."""
    if cfg is None:
        return None
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()}


def write_results_folder(out, results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], table: str, *,
                         fields: Optional[Iterable[str]] = None, config: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``table.md``, ``results.csv`` (``rows``; columns ``fields`` or those of the rows), ``config.yaml`` (if
    ``config`` is given) and ``results.json`` (``results``) into ``out``, each atomically."""
    import yaml

    out = Path(out)
    atomic_write_text(out / "table.md", table)
    atomic_write_csv(out / "results.csv", rows, fieldnames=fields)
    if config is not None:
        plain = json.loads(json.dumps(jsonable(config), default=str))
        atomic_write_text(out / "config.yaml", yaml.safe_dump(plain, sort_keys=False))
    atomic_write_json(out / "results.json", results)
