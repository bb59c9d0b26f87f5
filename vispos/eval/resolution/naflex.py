"""Variable-resolution, aspect-preserving batches for ``vispos train/eval resolution --batching naflex``.

Every image keeps its own aspect ratio and is resized to the largest size whose patch grid fits a token budget
(timm's :func:`timm.data.naflex_transforms.get_image_size_for_seq`), patchified (timm's ``Patchify``) and padded
into one batch by timm's ``NaFlexCollator``: the dict ``patches (B, N, P*P*C)``, ``patch_coord (B, N, 2)``,
``patch_valid (B, N)`` that a NaFlexViT takes (vispos: a :class:`~vispos.grid.PackedLayout`, padding masked in
attention and pooling).

* ImageFolder data go through timm's own NaFlex transforms (``transforms_imagenet_train(naflex=True, ...)``:
  ``RandomResizedCropToSequence`` + flip; ``transforms_imagenet_eval(naflex=True, ...)``: ``ResizeToSequence``).
* The synthetic tasks render each sample directly at its budget size, with an aspect ratio drawn (log-uniform in
  ``aspect_range``, from the sample's seed) so a batch mixes grids.

Budget: ``max_tokens`` patch tokens per image in training (default: the training size's grid); in evaluation the
grid of each test size (a test size ``S`` = "the tokens of ``S`` at any aspect ratio").
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ...utils.seeding import generator, mix_seed

__all__ = ["is_naflex_model", "check_naflex_model", "budget_of", "sample_hw", "synthetic_batch", "collate",
           "to_device", "train_transform", "eval_transform"]


def is_naflex_model(model) -> bool:
    """Whether ``model`` takes NaFlex batches: a timm ``NaFlexVit`` (plain or with a vispos PE) with a linear patch
    embedding."""
    from timm.models.naflexvit import NaFlexVit

    return isinstance(model, NaFlexVit) and bool(getattr(model.embeds, "is_linear", False))


def check_naflex_model(model, where: str) -> None:
    """``ValueError`` unless :func:`is_naflex_model`."""
    if not is_naflex_model(model):
        raise ValueError(f"{where}: batching 'naflex' needs a timm NaFlexViT with a linear patch embedding "
                         f"(a naflexvit_* model, or model_kwargs use_naflex: true), got {type(model).__name__}; use "
                         f"batching 'fixed' for other models")


def budget_of(size: Sequence[int], patch: Tuple[int, int]) -> int:
    """Patch tokens of an ``(H, W)`` image: the token budget a test size stands for."""
    return (int(size[0]) // patch[0]) * (int(size[1]) // patch[1])


def sample_aspect(seed: int, index: int, aspect_range: Sequence[float]) -> float:
    """Height / width of sample ``index``: log-uniform in ``aspect_range``, a pure function of its arguments."""
    lo, hi = (math.log(float(a)) for a in aspect_range)
    u = float(torch.rand((), generator=generator(mix_seed(seed, 7, index)), dtype=torch.float64))
    return math.exp(lo + (hi - lo) * u)


def sample_hw(aspect: float, budget: int, patch: Tuple[int, int]) -> Tuple[int, int]:
    """The largest patch-multiple size of an image of this aspect ratio within ``budget`` tokens (timm's
    ``get_image_size_for_seq``)."""
    from timm.data.naflex_transforms import get_image_size_for_seq

    h0 = max(1, round(1024 * math.sqrt(aspect)))
    w0 = max(1, round(1024 / math.sqrt(aspect)))
    _, hw = get_image_size_for_seq((h0, w0), patch, budget, divisible_by_patch=True)
    return int(hw[0]), int(hw[1])


def collate(items: List[Tuple[Dict[str, torch.Tensor], int]], budget: int):
    """timm's ``NaFlexCollator`` with ``max_seq_len = budget``: ``(dict batch, targets)``."""
    from timm.data.naflex_dataset import NaFlexCollator

    return NaFlexCollator(max_seq_len=budget)(items)


def synthetic_batch(task: str, seed: int, split: str, idx: Sequence[int], budget: int, patch: Tuple[int, int],
                    aspect_range: Sequence[float], rrc_scale) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """Samples ``idx`` of a synthetic task, each rendered at its own aspect ratio within ``budget`` tokens,
    patchified and collated (``rrc_scale``: the training crop, as :func:`vispos.data.images.render` takes it)."""
    from timm.data.naflex_transforms import Patchify

    from ...data.images import render

    patchify = Patchify(patch_size=tuple(patch))
    items = []
    for i in idx:
        hw = sample_hw(sample_aspect(seed, int(i), aspect_range), budget, patch)
        img, label = render(task, seed, int(i), hw, split, rrc_scale)
        items.append((patchify(img), int(label)))
    return collate(items, budget)


def train_transform(patch: Tuple[int, int], budget: int, cfg: Dict[str, Any]):
    """timm's NaFlex training transform for ImageFolder images: random-resized crop to the budget (area
    ``rrc_scale``), flip, normalise, patchify."""
    from timm.data.transforms_factory import transforms_imagenet_train

    return transforms_imagenet_train(naflex=True, patch_size=tuple(patch), max_seq_len=budget,
                                     scale=tuple(cfg["rrc_scale"]), interpolation=cfg["interpolation"],
                                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), patchify=True)


def eval_transform(patch: Tuple[int, int], budget: int, data_config: Dict[str, Any]):
    """timm's NaFlex evaluation transform: aspect-preserving resize to the budget, normalise, patchify."""
    from timm.data.transforms_factory import transforms_imagenet_eval

    return transforms_imagenet_eval(naflex=True, patch_size=tuple(patch), max_seq_len=budget,
                                    interpolation=data_config["interpolation"], mean=tuple(data_config["mean"]),
                                    std=tuple(data_config["std"]), patchify=True)


def to_device(x, device):
    """A tensor or a NaFlex dict batch on ``device``."""
    if isinstance(x, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x.to(device)
