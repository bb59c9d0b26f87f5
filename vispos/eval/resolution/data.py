"""``vispos eval/train resolution`` data: eval transform, ImageFolder / synthetic sets, the training batches.

An evaluation ImageFolder is read as timm's ``validate.py`` reads it (:mod:`vispos.eval.timm_data`: timm's
``ImageDataset``, ``--class-map``, and per model the eval transform of its resolved data config at each test size);
:class:`ResizeCenterCrop` / :func:`make_eval_transform` remain for callers that want an aspect-keeping crop.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

import torch

from ...data.images import TASKS, SyntheticPositionDataset, parse_size
from ...utils.seeding import generator, mix_seed, torch_seed
from .config import IMAGENET_MEAN, IMAGENET_STD


# ---- data --------------------------------------------------------------------------------------------------------
class ResizeCenterCrop:
    """Eval transform on a PIL image: resize (keeping the aspect ratio) to cover ``size / crop_pct``, centre crop.

    For a square ``size`` this is timm's: the shorter side goes to ``floor(size / crop_pct)``. For ``(H, W)`` the
    image is scaled by ``max(floor(H / crop_pct) / h, floor(W / crop_pct) / w)`` (sides rounded down, never below
    the crop). ``crop_pct = 1`` resizes the shorter side straight to the size.
    """

    def __init__(self, size, crop_pct: float = 0.875, interpolation: str = "bicubic"):
        from torchvision.transforms import InterpolationMode

        self.size = parse_size(size)
        self.crop_pct = float(crop_pct)
        self.interpolation = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                              "nearest": InterpolationMode.NEAREST}[interpolation]

    def resized_size(self, w0: int, h0: int) -> Tuple[int, int]:
        """``(new_h, new_w)`` for an image of width ``w0`` and height ``h0``."""
        h, w = self.size
        th, tw = math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)
        if th == tw:  # torchvision's Resize(int): shorter side to th, longer side int(th * long / short)
            if w0 <= h0:
                return int(th * h0 / w0), th
            return th, int(th * w0 / h0)
        scale = max(th / h0, tw / w0)
        return max(th, int(h0 * scale)), max(tw, int(w0 * scale))

    def __call__(self, img):
        from torchvision.transforms import functional as TF

        nh, nw = self.resized_size(*img.size)
        img = TF.resize(img, [nh, nw], interpolation=self.interpolation, antialias=True)
        return TF.center_crop(img, list(self.size))


def make_eval_transform(size, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """PIL image -> normalised tensor ``(3, H, W)``: :class:`ResizeCenterCrop`, ``ToTensor``, ``Normalize``."""
    from torchvision import transforms as T

    return T.Compose([ResizeCenterCrop(size, crop_pct, interpolation), T.ToTensor(), T.Normalize(mean, std)])


def _open_image_folder(root, what: str):
    """A :class:`vispos.data.image_folder.CheckedImageFolder`: bad images are skipped, warned about and listed
    (``skipped`` in results.json); an empty class folder or no images at all is a ``ValueError`` naming it."""
    from ...data.image_folder import CheckedImageFolder

    p = Path(root)
    if not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is not a folder (expected an ImageFolder: one sub-folder per class)")
    ds = CheckedImageFolder(p, what=what)
    if len(ds) == 0:
        raise ValueError(f"{what} {str(p)!r} holds no images")
    return ds


class _TrainImages(torch.utils.data.Dataset):
    """ImageFolder training items ``(index, (H, W), seed)`` -> ``(image, label)``; augmentation drawn from the
    item's own seed (deterministic, the same in any process)."""

    def __init__(self, folder, cfg, label_map=None):
        from torchvision import transforms as T

        self.folder = folder
        self.cfg = cfg
        self.T = T
        self.label_map = label_map  # training folder index -> evaluation label (classes matched by name)
        if cfg.get("mean") is None or cfg.get("std") is None or cfg.get("interpolation") is None:
            # no model at hand (train_variant passes the model's data config): timm's defaults without a model
            from ..timm_data import resolve_eval_config

            dc = resolve_eval_config(pretrained_cfg={"input_size": (3, 224, 224)}, mean=cfg.get("mean"),
                                     std=cfg.get("std"), interpolation=cfg.get("interpolation"))
            cfg = {**cfg, "mean": list(dc["mean"]), "std": list(dc["std"]), "interpolation": dc["interpolation"]}
            self.cfg = cfg
        self.post = T.Compose([T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        i, size, seed = item
        img, label = self.folder.load(i)  # a file that fails to decode is replaced by the next one (named)
        if self.label_map is not None:
            label = self.label_map[label]
        from timm.data.transforms import str_to_interp_mode

        mode = str_to_interp_mode(self.cfg["interpolation"])
        aug = self.T.Compose([self.T.RandomResizedCrop(tuple(size), scale=tuple(self.cfg["rrc_scale"]),
                                                       interpolation=mode),
                              self.T.RandomHorizontalFlip()])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = aug(img)
        return self.post(img), label


@dataclass
class Data:
    """The data of a run: class count and batch makers for training and evaluation."""

    num_classes: int
    chance: float
    source: str
    train_len: int
    eval_len: int
    eval_folder: Any = None
    train_folder: Any = None
    class_to_idx: Any = None      # ImageFolder: folder name -> label (timm's order, or the class map)
    train_label_map: Any = None   # training ImageFolder index -> label


def plan_data(cfg, train: bool) -> Data:
    """The data of a run. ``num_classes``: ``cfg["num_classes"]`` when set (the model's outputs, e.g. a checkpoint's
    head; labels must fit), else the class map's largest index + 1, else the folder's / task's classes."""
    from ..timm_data import image_dataset, read_class_map

    if cfg.get("data") is not None:
        cmap = read_class_map(cfg.get("class_map"))
        folder = image_dataset(cfg["data"], class_map=cmap)
        c2i = dict(folder.reader.class_to_idx)
        n_cls = (max(c2i.values()) + 1) if c2i else 0
        src = f"ImageFolder {cfg['data']}"
        eval_len = len(folder)
    else:
        folder = None
        c2i = None
        n_cls = TASKS[cfg["task"]].num_classes
        src = f"synthetic task {cfg['task']!r}"
        eval_len = cfg["eval_samples"]
    data_classes = n_cls
    if cfg.get("num_classes") is not None:
        if cfg["num_classes"] < n_cls:
            raise ValueError(f"num_classes {cfg['num_classes']} is smaller than the data's labels (up to {n_cls - 1}); "
                             f"give a --class-map that maps the folders onto the model's outputs")
        n_cls = cfg["num_classes"]
    tfolder, train_len, tmap = None, 0, None
    if train:
        if cfg.get("train_data") is not None:
            tfolder = _open_image_folder(cfg["train_data"], "train_data folder")
            if c2i is not None:
                missing = [c for c in tfolder.classes if c not in c2i]
                if missing:
                    raise ValueError(f"train_data classes {missing[:5]} are not classes of the evaluation data "
                                     f"{sorted(c2i)[:5]}")
                tmap = [c2i[c] for c in tfolder.classes]
            elif len(tfolder.classes) != data_classes:
                raise ValueError(f"train_data has {len(tfolder.classes)} classes but the evaluation data has "
                                 f"{data_classes}")
            train_len = len(tfolder)
            if train_len < cfg["batch_size"]:
                raise ValueError(f"train_data holds {train_len} images, fewer than batch_size {cfg['batch_size']}")
        else:
            if cfg.get("data") is not None:
                raise ValueError("training on the built-in task but evaluating on --data: give --train-data too, "
                                 "or leave --data out to evaluate on the built-in task")
            train_len = cfg["steps"] * cfg["batch_size"]  # every training sample is new
    # chance: guessing among the classes the data holds (not the model's extra outputs)
    return Data(n_cls, 1.0 / data_classes, src, train_len, eval_len, folder, tfolder, c2i, tmap)


def train_seed(cfg, seed: int) -> int:
    return torch_seed(cfg["data_seed"], 1, seed)


def eval_seed(cfg) -> int:
    return torch_seed(cfg["data_seed"], 2)


def train_step_plan(cfg, data: Data, seed: int, step: int) -> Tuple[List[int], Tuple[int, int]]:
    """Global sample indices and the size of training batch ``step`` (a pure function of its arguments)."""
    b = cfg["batch_size"]
    if data.train_folder is None:
        idx = list(range(step * b, (step + 1) * b))
    else:
        per_epoch = data.train_len // b
        epoch, pos = divmod(step, per_epoch)
        g = generator(mix_seed(seed, 3, epoch))
        perm = torch.randperm(data.train_len, generator=g)
        idx = perm[pos * b:(pos + 1) * b].tolist()
    sizes = cfg.get("train_sizes")
    if sizes:
        k = mix_seed(seed, 4, step) % len(sizes)
        size = tuple(sizes[k])
    else:
        size = tuple(cfg["train_size"])
    return idx, size


def naflex_budget(cfg, patch) -> int:
    """Training token budget of batching 'naflex': ``max_tokens``, else the ``train_size`` grid's tokens."""
    from .naflex import budget_of

    return int(cfg["max_tokens"]) if cfg.get("max_tokens") else budget_of(cfg["train_size"], patch)


def naflex_train_batch(cfg, data: Data, seed: int, idx: List[int], step: int, patch):
    """A training batch of batching 'naflex': ``(dict(patches, patch_coord, patch_valid), labels)``, every image at
    its own aspect ratio within the token budget (synthetic: rendered so; ImageFolder: timm's NaFlex transform, its
    random crop drawn from the item's seed)."""
    from . import naflex

    budget = naflex_budget(cfg, patch)
    if data.train_folder is None:
        return naflex.synthetic_batch(cfg["task"], train_seed(cfg, seed), "train", idx, budget, patch,
                                      cfg["aspect_range"], tuple(cfg["rrc_scale"]) if cfg.get("rrc_scale") else "off")
    items = _TrainImages(data.train_folder, cfg, data.train_label_map)
    tf = naflex.train_transform(patch, budget, items.cfg)
    out = []
    for i in idx:
        img, label = items.folder.load(i)
        if items.label_map is not None:
            label = items.label_map[label]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(seed, 5, step, i))
            state = random.getstate()
            random.seed(torch_seed(seed, 6, step, i))  # timm's RandomResizedCropToSequence draws from `random`
            try:
                out.append((tf(img), label))
            finally:
                random.setstate(state)
    return naflex.collate(out, budget)


def train_batch(cfg, data: Data, seed: int, idx: List[int], size, step: int):
    if data.train_folder is None:
        rr = cfg.get("rrc_scale")
        ds = SyntheticPositionDataset(cfg["task"], size, data.train_len, train_seed(cfg, seed), split="train",
                                      rrc_scale=tuple(rr) if rr else "off")
        return ds.get_batch(idx)
    items = _TrainImages(data.train_folder, cfg, data.train_label_map)
    pairs = [items[(i, size, torch_seed(seed, 5, step, i))] for i in idx]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)
