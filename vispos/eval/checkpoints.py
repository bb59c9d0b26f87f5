"""Finding and reading checkpoints: files and run folders, timm's and vispos's.

* :func:`find_checkpoint` -- a file is itself; a folder is a training run: timm's ``model_best.pth.tar``, then
  ``last.pth.tar``, then the single ``*.pth`` / ``*.pt`` / ``*.bin`` / ``*.safetensors`` file in it (more than one:
  ``ValueError`` listing them).
* :func:`run_checkpoints` -- every ``checkpoints/*.pt`` of a ``vispos train resolution`` run folder with what each
  stores (:func:`checkpoint_record`): variant (PE, PE options, timm model and kwargs), seed and training size, so
  ``vispos eval resolution --checkpoint RUN_DIR`` needs none of them again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..utils.io import load_checkpoint_file

__all__ = ["CHECKPOINT_SUFFIXES", "find_checkpoint", "checkpoint_record", "run_checkpoints"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".tar", ".ckpt")


def find_checkpoint(path) -> Path:
    """The checkpoint file ``path`` names (see the module docstring). ``ValueError`` if there is none / several."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise ValueError(f"checkpoint {str(p)!r} does not exist (give a checkpoint file or a run folder)")
    for name in ("model_best.pth.tar", "last.pth.tar"):
        if (p / name).is_file():
            return p / name
    found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in CHECKPOINT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    if not found:
        sub = p / "checkpoints"
        hint = " (a vispos training run: its checkpoints/ hold one file per variant and seed; `vispos eval " \
               "resolution --checkpoint RUN_DIR` evaluates them all)" if sub.is_dir() else ""
        raise ValueError(f"checkpoint folder {str(p)!r} holds no model_best.pth.tar, last.pth.tar or checkpoint file "
                         f"({', '.join(CHECKPOINT_SUFFIXES)}){hint}")
    raise ValueError(f"checkpoint folder {str(p)!r} holds several checkpoints {[q.name for q in found]}; name one")


def checkpoint_record(path) -> Dict[str, Any]:
    """What a checkpoint file stores about its model: ``dict(path, variant, seed, train_size, step, arch,
    num_classes)`` (``None`` where it stores nothing: a plain state dict). vispos training checkpoints record their
    ``trajectory`` (variant, seed, train_size); timm training checkpoints their ``arch``."""
    p = Path(path)
    obj = load_checkpoint_file(p)  # weights only: a ValueError naming the file and why it cannot be read
    rec: Dict[str, Any] = dict(path=str(p), variant=None, seed=None, train_size=None, step=None, arch=None,
                               num_classes=None)
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(p)!r} holds a {type(obj).__name__}, not a dict")
    traj = obj.get("trajectory")
    if isinstance(traj, dict):
        rec.update(variant=traj.get("variant"), seed=traj.get("seed"), train_size=traj.get("train_size"))
        rec["step"] = obj.get("step")
    if isinstance(obj.get("arch"), str):
        rec["arch"] = obj["arch"]
    sd = obj.get("model") if isinstance(obj.get("model"), dict) else obj.get("state_dict", obj)
    if isinstance(sd, dict):
        for k in ("head.weight", "module.head.weight"):
            if isinstance(sd.get(k), torch.Tensor) and sd[k].dim() == 2:
                rec["num_classes"] = int(sd[k].shape[0])
    return rec


def run_checkpoints(folder) -> List[Dict[str, Any]]:
    """:func:`checkpoint_record` of every ``checkpoints/*.pt`` in a vispos run folder (sorted). ``ValueError`` when
    there are none or one records no variant."""
    p = Path(folder)
    files = sorted((p / "checkpoints").glob("*.pt")) if (p / "checkpoints").is_dir() else []
    if not files:
        raise ValueError(f"{str(p)!r} is not a vispos training run folder (no checkpoints/*.pt)")
    recs = [checkpoint_record(f) for f in files]
    bad = [r["path"] for r in recs if not isinstance(r["variant"], dict)]
    if bad:
        raise ValueError(f"checkpoints {bad} record no variant (not written by `vispos train resolution`)")
    return recs


def is_run_folder(path) -> bool:
    """Whether ``path`` is a vispos training run folder (has ``checkpoints/*.pt``)."""
    p = Path(path)
    return p.is_dir() and (p / "checkpoints").is_dir() and any((p / "checkpoints").glob("*.pt"))


def record_train_size(rec: Dict[str, Any]) -> Optional[tuple]:
    ts = rec.get("train_size")
    return None if ts is None else tuple(int(v) for v in ts)
