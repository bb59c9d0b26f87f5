"""``vispos eval resolution``: top-1 / top-5 of a model at one test size (sharded over ranks, exact)."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ...data.images import SyntheticPositionDataset, parse_size
from ..common import autocast
from .data import Data, eval_seed
from .naflex import to_device


def _naflex_batches(model, cfg, data: Data, hw, idx, bs):
    """Batching 'naflex': every image at its own aspect ratio within the tokens of the test size ``hw``."""
    from . import naflex
    from .models import patch_size_of

    naflex.check_naflex_model(model, "evaluate")
    patch = patch_size_of(model)
    budget = naflex.budget_of(hw, patch)
    if data.eval_folder is None:
        return (naflex.synthetic_batch(cfg["task"], eval_seed(cfg), "test", idx[i:i + bs], budget, patch,
                                       cfg["aspect_range"], None) for i in range(0, len(idx), bs))
    import copy
    import functools

    folder = copy.copy(data.eval_folder)
    folder.transform = naflex.eval_transform(patch, budget, data_config(model, cfg))
    return iter(torch.utils.data.DataLoader(torch.utils.data.Subset(folder, idx), batch_size=bs, shuffle=False,
                                            num_workers=cfg["num_workers"],
                                            collate_fn=functools.partial(naflex.collate, budget=budget)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: Dict[str, Any], data: Data, size, *, device=None, desc: str = "eval",
             progress: bool = True) -> Dict[str, Any]:
    """Accuracy of ``model`` at ``size`` on this rank's shard, summed over ranks (exact counts).

    An ImageFolder is transformed as timm's validation does: :func:`data_config` of the model (its resolved timm
    data config with the configuration's overrides), ``create_transform`` with the input size set to ``size``.

    Returns ``dict(n, correct1, correct5, top1, top5)`` (``top5`` / ``correct5`` ``None`` under 5 classes).
    """
    from ...utils.dist import all_reduce_sum, get_rank, get_world_size, shard_indices
    from ...utils.progress import progress_bar
    from ..timm_data import eval_transform

    device = torch.device("cpu") if device is None else torch.device(device)
    hw = parse_size(tuple(size) if isinstance(size, list) else size)
    model.eval()
    rank, world = get_rank(), get_world_size()
    idx = shard_indices(range(data.eval_len), rank, world)
    bs = cfg["eval_batch_size"]
    if cfg.get("batching") == "naflex":
        batches = _naflex_batches(model, cfg, data, hw, idx, bs)
    elif data.eval_folder is None:
        ds = SyntheticPositionDataset(cfg["task"], hw, data.eval_len, eval_seed(cfg), split="test")
        batches = (ds.get_batch(idx[i:i + bs]) for i in range(0, len(idx), bs))
    else:
        import copy

        folder = copy.copy(data.eval_folder)  # the scanned file list, with this size's transform
        folder.transform = eval_transform(data_config(model, cfg), hw)
        batches = iter(torch.utils.data.DataLoader(torch.utils.data.Subset(folder, idx), batch_size=bs,
                                                   shuffle=False, num_workers=cfg["num_workers"]))
    k5 = data.num_classes >= 5
    counts = torch.zeros(3, dtype=torch.int64)
    bar = progress_bar(total=len(idx), desc=desc, enabled=progress and rank == 0, leave=False, unit="img")
    for x, y in batches:
        x, y = to_device(x, device), y.to(device)
        with autocast(device, cfg.get("amp", False)):
            logits = model(x)
        if y.numel() and int(y.max()) >= logits.shape[-1]:
            raise ValueError(f"label {int(y.max())} but the model has {logits.shape[-1]} outputs; set --num-classes "
                             f"or a --class-map")
        if logits.shape[-1] != data.num_classes:
            raise ValueError(f"the model has {logits.shape[-1]} outputs but the data has {data.num_classes} classes")
        counts[0] += y.numel()
        counts[1] += int((logits.argmax(-1) == y).sum())
        if k5:
            top = logits.float().topk(5, dim=-1).indices
            counts[2] += int((top == y[:, None]).any(-1).sum())
        bar.update(y.numel())
    bar.close()
    all_reduce_sum(counts)
    n, c1, c5 = (int(v) for v in counts)
    if n != data.eval_len:  # pragma: no cover - internal invariant of the sharding
        raise RuntimeError(f"evaluated {n} samples, expected {data.eval_len}")
    return dict(n=n, correct1=c1, correct5=c5 if k5 else None, top1=c1 / n, top5=(c5 / n) if k5 else None)


def data_config(model, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The model's timm data config with the configuration's ``mean`` / ``std`` / ``crop_pct`` / ``interpolation`` /
    ``crop_mode`` overrides (``None`` keeps the model's)."""
    from ..timm_data import resolve_eval_config

    return resolve_eval_config(model, mean=cfg.get("mean"), std=cfg.get("std"), crop_pct=cfg.get("crop_pct"),
                               interpolation=cfg.get("interpolation"), crop_mode=cfg.get("crop_mode"))
