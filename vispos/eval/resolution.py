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
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..data.images import TASKS, SyntheticPositionDataset, _mix, parse_size
from ..utils.io import (
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    markdown_table,
)

__all__ = [
    "DEFAULTS",
    "Variant",
    "parse_sizes",
    "parse_variants",
    "load_config",
    "build_model",
    "ResizeCenterCrop",
    "make_eval_transform",
    "evaluate",
    "train_variant",
    "plan_data",
    "result_row",
    "make_result",
    "summarize",
    "results_table",
    "checkpoint_path",
    "size_label",
    "run_experiment",
    "write_results",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULTS: Dict[str, Any] = dict(
    # models
    model="vit_tiny_patch16_224",   # timm name
    model_kwargs={},                # timm kwargs for every variant (patch_size, embed_dim, depth, num_heads, ...)
    pe=None,                        # variants as a string: "ape,rope_axial,ape+rope_axial" (overrides `variants`)
    pe_kwargs=None,                 # options of the PE when `pe` names a single variant
    variants=None,                  # list: a name, a list of names (combination) or a mapping (see Variant)
    checkpoint=None,                # eval: checkpoint of the single variant given by `pe`
    # data
    task="absolute",                # built-in task (used when `data` / `train_data` is not set)
    data=None,                      # ImageFolder root for evaluation
    train_data=None,                # ImageFolder root for training
    eval_samples=900,               # synthetic evaluation set size
    data_seed=0,
    crop_pct=0.875,
    interpolation="bicubic",
    mean=list(IMAGENET_MEAN),       # ImageFolder normalisation (synthetic data is normalised as (v - .5) / .5)
    std=list(IMAGENET_STD),
    num_workers=0,
    # sweep
    sizes="16,24,32,48,64,96",
    train_size=None,                # size the models are trained at / were trained at (their img_size: learned
                                    # APE tables and RoPE reference grids are built for it); eval default: timm's
    # training
    train_sizes=None,               # multi-resolution training: one of these sizes per batch
    steps=300,
    batch_size=64,
    eval_batch_size=128,
    lr=1e-3,
    weight_decay=0.05,
    warmup_steps=20,
    grad_clip=1.0,
    label_smoothing=0.0,
    seeds=[0],
    ckpt_every=100,
    resume=False,
    # run
    device="auto",
    amp=False,                      # bf16 autocast on CUDA
    threads=None,                   # torch.set_num_threads (None: leave as is)
    out="results/resolution",
)

_VARIANT_KEYS = ("name", "pe", "pe_kwargs", "model", "model_kwargs", "checkpoint")
# configuration keys that change a training trajectory: a checkpoint is resumed only if they all match
_TRAJECTORY_KEYS = ("task", "train_data", "data_seed", "train_size", "train_sizes", "steps", "batch_size", "lr",
                    "weight_decay", "warmup_steps", "grad_clip", "label_smoothing", "crop_pct", "interpolation",
                    "mean", "std")


# ---- parsing -----------------------------------------------------------------------------------------------------
def parse_sizes(sizes) -> List[Tuple[int, int]]:
    """``"16,24,32x48"`` / ``[16, "32x48"]`` -> ``[(16, 16), (24, 24), (32, 48)]`` (height, width)."""
    if isinstance(sizes, (int, str)) and not isinstance(sizes, bool):
        items = [s for s in str(sizes).replace(" ", "").split(",") if s] if isinstance(sizes, str) else [sizes]
    elif isinstance(sizes, (list, tuple)):
        items = list(sizes)
    else:
        raise TypeError(f"sizes must be like '16,24,32x48' or a list of sizes, got {sizes!r}")
    if not items:
        raise ValueError(f"sizes must name at least one size, got {sizes!r}")
    out = [parse_size(s) for s in items]
    if len(set(out)) != len(out):
        raise ValueError(f"sizes must not repeat, got {sizes!r}")
    return out


def size_label(hw: Tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


@dataclass
class Variant:
    """One model of the comparison: a timm model with a PE.

    ``pe``: a PE name, a list of names (combination) or ``"timm"`` (the timm model's own PE, unchanged).
    ``model_kwargs`` extend the configuration's ``model_kwargs``. ``checkpoint``: weights to evaluate.
    """

    name: str
    pe: Union[str, List[str]]
    pe_kwargs: Optional[dict] = None
    model: str = DEFAULTS["model"]
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None


def _pe_from_string(s: str) -> Union[str, List[str]]:
    parts = [p.strip() for p in s.split("+") if p.strip()]
    if not parts:
        raise ValueError(f"empty PE variant {s!r}; give a name like 'rope_axial' or 'ape+rope_axial'")
    return parts[0] if len(parts) == 1 else parts


def _check_pe_names(pe, where: str) -> None:
    from ..registry import get_pe_info

    names = [pe] if isinstance(pe, str) else list(pe)
    if names == ["timm"]:
        return
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"{where}: PE names must be strings, got {n!r}")
        try:
            get_pe_info(n)
        except ValueError as e:
            raise ValueError(f"{where}: {e} (or 'timm' for the timm model's own PE)") from None


def parse_variants(cfg: Dict[str, Any]) -> List[Variant]:
    """The variants of a configuration: ``pe`` (comma-separated string, '+' joins a combination) if given, else
    ``variants`` (a list of names, lists or mappings with keys ``name, pe, pe_kwargs, model, model_kwargs,
    checkpoint``). Validates every PE name and timm model name; raises ``ValueError`` naming the bad entry."""
    import timm

    base_kwargs = cfg.get("model_kwargs") or {}
    if not isinstance(base_kwargs, dict):
        raise TypeError(f"model_kwargs must be a mapping, got {base_kwargs!r}")
    raw: List[Any]
    if cfg.get("pe") is not None:
        pe = cfg["pe"]
        if isinstance(pe, str):
            raw = [_pe_from_string(s) for s in pe.split(",") if s.strip()]
        elif isinstance(pe, (list, tuple)):
            raw = [_pe_from_string(p) if isinstance(p, str) else list(p) for p in pe]
        else:
            raise TypeError(f"pe must be a string like 'ape,rope_axial,ape+rope_axial', got {pe!r}")
        if cfg.get("pe_kwargs") is not None or cfg.get("checkpoint") is not None:
            if len(raw) != 1:
                raise ValueError(f"pe_kwargs / checkpoint apply to a single variant, but pe names {len(raw)}: "
                                 f"{pe!r}; list several variants with their options under `variants` in a config")
            raw = [dict(pe=raw[0], pe_kwargs=cfg.get("pe_kwargs"), checkpoint=cfg.get("checkpoint"))]
    elif cfg.get("variants") is not None:
        raw = cfg["variants"]
        if not isinstance(raw, (list, tuple)):
            raise TypeError(f"variants must be a list, got {type(raw).__name__}")
        if cfg.get("checkpoint") is not None:
            raise ValueError("checkpoint applies to a single variant given with pe; give each variant of `variants` "
                             "its own checkpoint: key")
    else:
        raise ValueError("no models to evaluate: give --pe NAME[,NAME...] or a config with a `variants` list")
    if not raw:
        raise ValueError("the list of variants is empty")
    out: List[Variant] = []
    for i, v in enumerate(raw):
        where = f"variant {i}"
        if isinstance(v, str):
            v = dict(pe=_pe_from_string(v))
        elif isinstance(v, (list, tuple)):
            v = dict(pe=list(v))
        elif not isinstance(v, dict):
            raise TypeError(f"{where} must be a PE name, a list of names or a mapping, got {v!r}")
        unknown = sorted(set(v) - set(_VARIANT_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {list(_VARIANT_KEYS)}")
        if "pe" not in v or v["pe"] is None:
            raise ValueError(f"{where} needs a pe (a name, a list of names or 'timm'), got {v!r}")
        pe = v["pe"]
        if isinstance(pe, str):
            pe = _pe_from_string(pe)
        elif isinstance(pe, (list, tuple)):
            pe = list(pe)
            if len(pe) == 1:
                pe = pe[0]
        else:
            raise TypeError(f"{where}: pe must be a name or a list of names, got {pe!r}")
        _check_pe_names(pe, where)
        name = v.get("name") or (pe if isinstance(pe, str) else "+".join(pe))
        model = v.get("model") or cfg.get("model") or DEFAULTS["model"]
        if not isinstance(model, str) or not timm.is_model(timm.models.get_arch_name(model)):
            raise ValueError(f"{where}: unknown timm model {model!r} (see timm.list_models())")
        mk = dict(base_kwargs)
        if v.get("model_kwargs"):
            if not isinstance(v["model_kwargs"], dict):
                raise TypeError(f"{where}: model_kwargs must be a mapping, got {v['model_kwargs']!r}")
            mk.update(v["model_kwargs"])
        pk = v.get("pe_kwargs")
        if pk is not None and not isinstance(pk, dict):
            raise TypeError(f"{where}: pe_kwargs must be a mapping, got {pk!r}")
        ckpt = v.get("checkpoint")
        if ckpt is not None and not Path(ckpt).is_file():
            raise ValueError(f"{where}: checkpoint {str(ckpt)!r} does not exist")
        out.append(Variant(str(name), pe, pk, model, mk, None if ckpt is None else str(ckpt)))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique, got {dup} more than once; give each a `name`")
    return out


def _parse_mapping(s, what: str):
    if s is None or isinstance(s, dict):
        return s
    try:
        v = yaml.safe_load(s)
    except yaml.YAMLError as e:
        raise ValueError(f"{what} must be a YAML/JSON mapping like '{{patch_size: 4}}', got {s!r}: {e}") from None
    if not isinstance(v, dict):
        raise ValueError(f"{what} must be a YAML/JSON mapping like '{{patch_size: 4}}', got {s!r}")
    return v


def _check_number(cfg, key, kind=float, minimum=None, allow_none=False, strict=False):
    v = cfg.get(key)
    if v is None and allow_none:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else \
        isinstance(v, int) and not isinstance(v, bool)
    if not ok:
        raise TypeError(f"{key} must be {'a number' if kind is float else 'an int'}, got {v!r}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise ValueError(f"{key} must be {'>' if strict else '>='} {minimum}, got {v!r}")


def load_config(config_path=None, args: Optional[argparse.Namespace] = None, **overrides) -> Dict[str, Any]:
    """:data:`DEFAULTS` <- YAML ``config_path`` (or ``args.config``) <- given flags <- ``overrides``; checked.

    Returns the resolved configuration with ``sizes`` / ``train_size`` / ``train_sizes`` / ``seeds`` normalised.
    Raises ``ValueError`` / ``TypeError`` for any bad value, naming it.
    """
    from ..utils.config import resolve_config

    cfg = resolve_config(DEFAULTS, args, config_path=config_path, extra=overrides or None)
    cfg["model_kwargs"] = _parse_mapping(cfg.get("model_kwargs"), "model_kwargs") or {}
    cfg["pe_kwargs"] = _parse_mapping(cfg.get("pe_kwargs"), "pe_kwargs")
    cfg["sizes"] = [list(s) for s in parse_sizes(cfg["sizes"])]
    cfg["train_size"] = None if cfg.get("train_size") is None else list(parse_size(cfg["train_size"]))
    if cfg.get("train_sizes") is not None:
        cfg["train_sizes"] = [list(s) for s in parse_sizes(cfg["train_sizes"])]
    seeds = cfg.get("seeds")
    if isinstance(seeds, str):
        try:
            seeds = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"seeds must be like '0,1,2', got {cfg['seeds']!r}") from None
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {cfg.get('seeds')!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must not repeat, got {seeds}")
    cfg["seeds"] = list(seeds)
    if cfg.get("data") is None and cfg.get("task") not in TASKS:
        raise ValueError(f"unknown task {cfg.get('task')!r}; choose one of {sorted(TASKS)} or give --data DIR")
    for key, kind, mn, none, strict in (
            ("steps", int, 1, False, False), ("batch_size", int, 1, False, False),
            ("eval_batch_size", int, 1, False, False), ("eval_samples", int, 1, False, False),
            ("data_seed", int, None, False, False), ("lr", float, 0, False, True),
            ("weight_decay", float, 0, False, False), ("warmup_steps", int, 0, False, False),
            ("grad_clip", float, 0, True, True), ("label_smoothing", float, 0, False, False),
            ("ckpt_every", int, 1, False, False), ("crop_pct", float, 0, False, True),
            ("num_workers", int, 0, False, False), ("threads", int, 1, True, False)):
        _check_number(cfg, key, kind, mn, none, strict)
    if cfg["crop_pct"] > 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {cfg['crop_pct']}")
    if cfg["interpolation"] not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bicubic', 'bilinear' or 'nearest', got {cfg['interpolation']!r}")
    for key in ("mean", "std"):
        v = cfg[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ValueError(f"{key} must be three numbers (one per RGB channel), got {v!r}")
    if any(s <= 0 for s in cfg["std"]):
        raise ValueError(f"std must be positive, got {cfg['std']}")
    if not isinstance(cfg.get("out"), (str, Path)) or not str(cfg["out"]):
        raise ValueError(f"out must be a folder path, got {cfg.get('out')!r}")
    cfg["out"] = str(cfg["out"])
    for key in ("resume", "amp"):
        if not isinstance(cfg.get(key), bool):
            raise TypeError(f"{key} must be true or false, got {cfg.get(key)!r}")
    return cfg


# ---- models ------------------------------------------------------------------------------------------------------
def build_model(variant: Variant, num_classes: int, img_size: Optional[Sequence[int]] = None,
                checkpoint: Optional[str] = None) -> torch.nn.Module:
    """The timm model of ``variant`` (``dynamic_img_size=True``: it runs at any multiple of its patch size).

    Args:
        num_classes: classifier width.
        img_size: ``(H, W)`` the model is built for (its training size: learned APE tables have that grid).
        checkpoint: a file with a state dict (or a dict with a ``"model"`` / ``"state_dict"`` entry); loaded
            strictly. A timm-format checkpoint with ``pos_embed`` for a vispos PE is converted by
            :func:`vispos.create_model`.
    """
    import timm

    kw = dict(variant.model_kwargs)
    kw.setdefault("dynamic_img_size", True)
    kw["num_classes"] = num_classes
    if img_size is not None:
        kw["img_size"] = tuple(img_size)
    if variant.pe == "timm":
        model = timm.create_model(variant.model, **kw)
    else:
        from ..integrations.timm import create_model

        model = create_model(variant.model, pe=variant.pe, pe_kwargs=variant.pe_kwargs, **kw)
    if checkpoint is not None:
        _load_weights(model, variant, checkpoint, kw)
    return model


def _state_dict_of(obj, path) -> dict:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"checkpoint {str(path)!r} holds no state dict (expected a dict of tensors or a dict with a "
                     f"'model' / 'state_dict' entry)")


def _load_weights(model, variant: Variant, path, kw) -> None:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable / not a torch file: report which file and why
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    traj = obj.get("trajectory") if isinstance(obj, dict) else None
    if isinstance(traj, dict) and traj.get("train_size") is not None:
        built = list(kw.get("img_size") or [])
        if built and [int(v) for v in built] != [int(v) for v in traj["train_size"]]:
            raise ValueError(f"checkpoint {str(path)!r} was trained at {traj['train_size']} but the model is built "
                             f"for {built}; pass --train-size {size_label(tuple(traj['train_size']))}")
    sd = _state_dict_of(obj, path)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    if set(sd) == set(own):
        bad = [k for k in sd if sd[k].shape != own[k].shape]
        if bad:
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit variant {variant.name!r}: shape mismatch for {bad[:5]} "
                f"(e.g. {bad[0]}: {tuple(sd[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); build the model like "
                f"the checkpoint (model_kwargs, train_size for learned APE tables, number of classes)")
        model.load_state_dict(sd, strict=True)
        return
    if variant.pe != "timm" and "pos_embed" in sd:
        # a plain timm checkpoint for a vispos PE: let the timm integration convert it (pos_embed -> ape, ...)
        log.info("checkpoint %s is in timm format; converting it for PE %s", path, variant.pe)
        from ..integrations.timm import create_model

        new = create_model(variant.model, pe=variant.pe, pe_kwargs=variant.pe_kwargs, checkpoint_path=str(path), **kw)
        model.load_state_dict(new.state_dict(), strict=True)
        return
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    raise ValueError(f"checkpoint {str(path)!r} does not fit variant {variant.name!r} ({variant.model}, pe "
                     f"{variant.pe}): missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")


def _patch_size(model) -> Tuple[int, int]:
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is None:
        raise ValueError(f"cannot find the patch size of {type(model).__name__} (no patch_embed.patch_size)")
    return (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))


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
    from torchvision.datasets import ImageFolder

    p = Path(root)
    if not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is not a folder (expected an ImageFolder: one sub-folder per class)")
    try:
        ds = ImageFolder(str(p))
    except FileNotFoundError as e:
        raise ValueError(f"{what} {str(p)!r} holds no images in class sub-folders: {e}") from None
    if len(ds) == 0:
        raise ValueError(f"{what} {str(p)!r} holds no images")
    return ds


class _TrainImages(torch.utils.data.Dataset):
    """ImageFolder training items ``(index, (H, W), seed)`` -> ``(image, label)``; augmentation drawn from the
    item's own seed (deterministic, the same in any process)."""

    def __init__(self, folder, cfg):
        from torchvision import transforms as T

        self.folder = folder
        self.cfg = cfg
        self.T = T
        self.post = T.Compose([T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        i, size, seed = item
        path, label = self.folder.samples[i]
        img = self.folder.loader(path)
        mode = ResizeCenterCrop(size, 1.0, self.cfg["interpolation"]).interpolation
        aug = self.T.Compose([self.T.RandomResizedCrop(tuple(size), scale=(0.25, 1.0), interpolation=mode),
                              self.T.RandomHorizontalFlip()])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = aug(img)
        return self.post(img), label


@dataclass
class _Data:
    """The data of a run: class count and batch makers for training and evaluation."""

    num_classes: int
    chance: float
    source: str
    train_len: int
    eval_len: int
    eval_folder: Any = None
    train_folder: Any = None


def plan_data(cfg, train: bool) -> _Data:
    if cfg.get("data") is not None:
        folder = _open_image_folder(cfg["data"], "data folder")
        n_cls = len(folder.classes)
        src = f"ImageFolder {cfg['data']}"
        eval_len = len(folder)
    else:
        folder = None
        n_cls = TASKS[cfg["task"]].num_classes
        src = f"synthetic task {cfg['task']!r}"
        eval_len = cfg["eval_samples"]
    tfolder, train_len = None, 0
    if train:
        if cfg.get("train_data") is not None:
            tfolder = _open_image_folder(cfg["train_data"], "train_data folder")
            if len(tfolder.classes) != n_cls:
                raise ValueError(f"train_data has {len(tfolder.classes)} classes but the evaluation data has {n_cls}")
            train_len = len(tfolder)
            if train_len < cfg["batch_size"]:
                raise ValueError(f"train_data holds {train_len} images, fewer than batch_size {cfg['batch_size']}")
        else:
            if cfg.get("data") is not None:
                raise ValueError("training on the built-in task but evaluating on --data: give --train-data too, "
                                 "or leave --data out to evaluate on the built-in task")
            train_len = cfg["steps"] * cfg["batch_size"]  # every training sample is new
    return _Data(n_cls, 1.0 / n_cls, src, train_len, eval_len, folder, tfolder)


def _train_seed(cfg, seed: int) -> int:
    return _mix(cfg["data_seed"], 1, seed) & 0x7FFFFFFF


def _eval_seed(cfg) -> int:
    return _mix(cfg["data_seed"], 2) & 0x7FFFFFFF


def _train_step_plan(cfg, data: _Data, seed: int, step: int) -> Tuple[List[int], Tuple[int, int]]:
    """Global sample indices and the size of training batch ``step`` (a pure function of its arguments)."""
    b = cfg["batch_size"]
    if data.train_folder is None:
        idx = list(range(step * b, (step + 1) * b))
    else:
        per_epoch = data.train_len // b
        epoch, pos = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(_mix(seed, 3, epoch))
        perm = torch.randperm(data.train_len, generator=g)
        idx = perm[pos * b:(pos + 1) * b].tolist()
    sizes = cfg.get("train_sizes")
    if sizes:
        k = _mix(seed, 4, step) % len(sizes)
        size = tuple(sizes[k])
    else:
        size = tuple(cfg["train_size"])
    return idx, size


def _train_batch(cfg, data: _Data, seed: int, idx: List[int], size, step: int):
    if data.train_folder is None:
        ds = SyntheticPositionDataset(cfg["task"], size, data.train_len, _train_seed(cfg, seed))
        return ds.get_batch(idx)
    items = _TrainImages(data.train_folder, cfg)
    pairs = [items[(i, size, _mix(seed, 5, step, i) & 0x7FFFFFFF)] for i in idx]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)


# ---- evaluation --------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: Dict[str, Any], data: _Data, size, *, device=None, desc: str = "eval",
             progress: bool = True) -> Dict[str, Any]:
    """Accuracy of ``model`` at ``size`` on this rank's shard, summed over ranks (exact counts).

    Returns ``dict(n, correct1, correct5, top1, top5)`` (``top5`` / ``correct5`` ``None`` under 5 classes).
    """
    from tqdm.auto import tqdm

    from ..utils.dist import all_reduce_sum, get_rank, get_world_size, shard_indices

    device = torch.device("cpu") if device is None else torch.device(device)
    hw = parse_size(tuple(size) if isinstance(size, list) else size)
    model.eval()
    rank, world = get_rank(), get_world_size()
    idx = shard_indices(range(data.eval_len), rank, world)
    bs = cfg["eval_batch_size"]
    if data.eval_folder is None:
        ds = SyntheticPositionDataset(cfg["task"], hw, data.eval_len, _eval_seed(cfg))
        batches = (ds.get_batch(idx[i:i + bs]) for i in range(0, len(idx), bs))
    else:
        import copy

        folder = copy.copy(data.eval_folder)  # the scanned file list, with this size's transform
        folder.transform = make_eval_transform(hw, cfg["crop_pct"], cfg["interpolation"], cfg["mean"], cfg["std"])
        batches = iter(torch.utils.data.DataLoader(torch.utils.data.Subset(folder, idx), batch_size=bs,
                                                   shuffle=False, num_workers=cfg["num_workers"]))
    k5 = data.num_classes >= 5
    counts = torch.zeros(3, dtype=torch.int64)
    bar = tqdm(total=len(idx), desc=desc, leave=False, disable=not progress or rank != 0, unit="img")
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with _autocast(device, cfg.get("amp", False)):
            logits = model(x)
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


# ---- training ----------------------------------------------------------------------------------------------------
def _lr_at(cfg, step: int) -> float:
    lr, warm, total = cfg["lr"], cfg["warmup_steps"], cfg["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _trajectory(cfg, variant: Variant, seed: int) -> Dict[str, Any]:
    v = asdict(variant)
    v.pop("checkpoint", None)
    return dict(variant=v, seed=seed, **{k: cfg.get(k) for k in _TRAJECTORY_KEYS})


def checkpoint_path(out, variant: Variant, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_+." else "_" for c in variant.name)
    return Path(out) / "checkpoints" / f"{safe}_seed{seed}.pt"


def train_variant(variant: Variant, cfg: Dict[str, Any], data: _Data, seed: int, ckpt: Path, *, device=None,
                  callback: Optional[Callable[[int, torch.nn.Module], None]] = None,
                  progress: bool = True) -> torch.nn.Module:
    """Train ``variant`` from scratch (or resume from ``ckpt`` when ``cfg['resume']``) for ``cfg['steps']`` steps.

    The checkpoint (model, optimizer, torch RNG state, step, trajectory settings) is written atomically by rank 0
    every ``ckpt_every`` steps and at the end. ``callback(step, model)`` runs after each step (``step`` = steps
    done). Returns the trained model (unwrapped, in eval mode).
    """
    from timm.optim import create_optimizer_v2
    from tqdm.auto import tqdm

    from ..utils.dist import barrier, get_rank, get_world_size, unwrap_model

    device = torch.device("cpu") if device is None else torch.device(device)
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(seed)
    model = build_model(variant, data.num_classes, cfg["train_size"]).to(device)
    opt = create_optimizer_v2(model, "adamw", lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    traj = _trajectory(cfg, variant, seed)
    start = 0
    if cfg["resume"] and ckpt.is_file():
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        saved = state.get("trajectory")
        if saved != json.loads(json.dumps(traj)):
            diff = sorted(k for k in set(traj) | set(saved or {}) if (saved or {}).get(k) != traj.get(k))
            raise ValueError(f"cannot resume from {str(ckpt)!r}: it was trained with other settings ({diff}); "
                             f"drop --resume or use another --out")
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start = int(state["step"])
        log.info("resumed %s seed %d from %s at step %d", variant.name, seed, ckpt, start)
    elif ckpt.is_file():
        log.warning("overwriting checkpoint %s (pass --resume to continue it)", ckpt)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    steps = cfg["steps"]
    bar = tqdm(total=steps, initial=start, desc=f"train {variant.name} s{seed}", disable=not progress or rank != 0,
               unit="step")
    net.train()

    def save(done: int):
        if rank == 0:
            state = dict(model=unwrap_model(net).state_dict(), optimizer=opt.state_dict(), step=done,
                         rng=torch.get_rng_state(), trajectory=json.loads(json.dumps(traj)),
                         cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
            atomic_torch_save(state, ckpt)
        barrier()

    for step in range(start, steps):
        lr = _lr_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        idx, size = _train_step_plan(cfg, data, seed, step)
        x, y = _train_batch(cfg, data, seed, idx[rank::world], size, step)
        x, y = x.to(device), y.to(device)
        with _autocast(device, cfg["amp"]):
            loss = loss_fn(net(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training {variant.name} seed {seed}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", px=size_label(size))
        if done % cfg["ckpt_every"] == 0 or done == steps:
            save(done)
        if callback is not None:
            callback(done, model)
    bar.close()
    model.eval()
    return model


# ---- the experiment ----------------------------------------------------------------------------------------------
def run_experiment(cfg: Dict[str, Any], train: bool, *, callback=None, progress: bool = True) -> Dict[str, Any]:
    """Check everything, (train,) evaluate the sweep, write the results folder (rank 0). Returns the results dict
    (on every rank; ``table`` holds the Markdown table).

    ``cfg`` comes from :func:`load_config`. ``callback(step, model)`` is passed to :func:`train_variant`.
    """
    from ..utils.dist import cleanup_distributed, init_distributed

    t0 = time.time()
    variants = parse_variants(cfg)
    if train and any(v.checkpoint for v in variants):
        raise ValueError("train resolution trains from scratch; drop `checkpoint` from the variants "
                         "(or use `vispos eval resolution` to evaluate checkpoints)")
    if train and cfg.get("train_size") is None:
        raise ValueError("train resolution needs train_size (e.g. --train-size 32)")
    if not train and cfg.get("train_size") is None:
        found = _checkpoint_train_size(variants)
        if found is not None:
            log.info("train_size not given: using %s, recorded in the checkpoints", size_label(found))
            cfg = {**cfg, "train_size": found}
    data = plan_data(cfg, train)
    sizes = [tuple(s) for s in cfg["sizes"]]
    check_sizes = list(sizes)
    if train:
        check_sizes += [tuple(cfg["train_size"])] + [tuple(s) for s in (cfg.get("train_sizes") or [])]
    for v in variants:  # build each model once (cheap) to check its PE options and patch size before any work
        m = build_model(v, data.num_classes, cfg.get("train_size"))
        ph, pw = _patch_size(m)
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
        fingerprint = _eval_fingerprint(cfg, variants)
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
                    r = evaluate(model, cfg, data, hw, device=info.device, progress=progress,
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


def _eval_fingerprint(cfg: Dict[str, Any], variants) -> str:
    """What an evaluation's numbers depend on: a partial evaluation is resumed only if this matches."""
    keys = ("model", "model_kwargs", "task", "data", "sizes", "train_size", "eval_samples", "data_seed", "crop_pct",
            "interpolation", "mean", "std", "amp")
    body = {k: cfg.get(k) for k in keys}
    body["variants"] = [{k: getattr(v, k) for k in _VARIANT_KEYS} for v in variants]
    return json.dumps(body, sort_keys=True, default=str)


def _checkpoint_train_size(variants) -> Optional[Tuple[int, int]]:
    """The training size recorded in the variants' checkpoints (vispos ``train resolution`` checkpoints record it),
    so an eval without ``--train-size`` builds every model at the grid it was trained on. ``None`` if no checkpoint
    records one; ``ValueError`` if they disagree."""
    seen = {}
    for v in variants:
        if not v.checkpoint:
            continue
        try:
            obj = torch.load(str(v.checkpoint), map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable / not a torch file: report which file and why
            raise ValueError(f"cannot read checkpoint {str(v.checkpoint)!r}: {e}") from e
        traj = obj.get("trajectory") if isinstance(obj, dict) else None
        if isinstance(traj, dict) and traj.get("train_size") is not None:
            seen[v.name] = tuple(int(x) for x in traj["train_size"])
    sizes = set(seen.values())
    if len(sizes) > 1:
        raise ValueError(f"the checkpoints were trained at different sizes {seen}; pass --train-size and evaluate "
                         f"them separately")
    return sizes.pop() if sizes else None


def result_row(variant: Variant, seed: Optional[int], hw, acc: Dict[str, Any], checkpoint=None) -> Dict[str, Any]:
    """One row of the results: the variant, seed, size and the counts of :func:`evaluate`."""
    hw = tuple(hw)
    return dict(variant=variant.name, pe=variant.pe if isinstance(variant.pe, str) else "+".join(variant.pe),
                model=variant.model, seed=seed, size=size_label(hw), height=hw[0], width=hw[1], **acc,
                checkpoint=None if checkpoint is None else str(checkpoint))


def make_result(cfg, data: "_Data", variants: Sequence[Variant], rows: List[Dict[str, Any]], *, train: bool = True,
                world_size: int = 1, wall_time_s: Optional[float] = None) -> Dict[str, Any]:
    """The results dict written by :func:`write_results`: metadata, ``rows``, ``summary`` and the ``table``."""
    result = dict(
        command="train" if train else "eval", data=data.source,
        task=cfg["task"] if cfg.get("data") is None else None, num_classes=data.num_classes, chance=data.chance,
        sizes=[size_label(tuple(s)) for s in cfg["sizes"]],
        train_size=None if cfg.get("train_size") is None else size_label(tuple(cfg["train_size"])),
        train_sizes=[size_label(tuple(s)) for s in cfg["train_sizes"]] if cfg.get("train_sizes") else None,
        variants=[asdict(v) for v in variants], world_size=world_size, rows=rows,
        wall_time_s=None if wall_time_s is None else round(wall_time_s, 2))
    result["summary"] = summarize(result)
    result["table"] = results_table(result)
    return result


def summarize(result) -> Dict[str, Dict[str, Dict[str, float]]]:
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for r in result["rows"]:
        out.setdefault(r["variant"], {}).setdefault(r["size"], []).append(r["top1"])
    summ = {}
    for v, per in out.items():
        summ[v] = {}
        for s, vals in per.items():
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            summ[v][s] = dict(mean=mean, std=std, n_seeds=len(vals))
    return summ


def results_table(result) -> str:
    """Markdown table: variants as rows, sizes as columns (top-1 %, mean +- std over seeds), training size ``*``."""
    ts = result.get("train_size")
    header = ["PE"] + [f"{s}*" if s == ts else s for s in result["sizes"]]
    rows = []
    for v, per in result["summary"].items():
        cells = [v]
        for s in result["sizes"]:
            e = per.get(s)
            if e is None:
                cells.append("")
            elif e["n_seeds"] > 1:
                cells.append(f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}")
            else:
                cells.append(f"{100 * e['mean']:.1f}")
        rows.append(cells)
    notes = [f"Top-1 accuracy (%) on {result['data']}, {result['num_classes']} classes "
             f"(chance {100 * result['chance']:.1f}%)."]
    if ts is not None:
        notes.append(f"`*` training size ({ts} px)" + (f"; multi-resolution training over "
                                                       f"{', '.join(result['train_sizes'])}" if
                                                       result.get("train_sizes") else "") + ".")
    return markdown_table(header, rows) + "\n" + " ".join(notes) + "\n"


def write_results(out, result: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    """results.json, results.csv, table.md, accuracy_vs_resolution.png, config.yaml in ``out`` (atomic writes)."""
    from .plots import line_plot

    out = Path(out)
    atomic_write_json(out / "results.json", {k: v for k, v in result.items() if k != "table"})
    fields = ["variant", "pe", "model", "seed", "size", "height", "width", "n", "correct1", "top1", "correct5",
              "top5", "checkpoint"]
    atomic_write_csv(out / "results.csv", result["rows"], fieldnames=fields)
    atomic_write_text(out / "table.md", result["table"])
    cfg_out = {k: v for k, v in cfg.items()}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg_out)), sort_keys=False))
    sizes = result["sizes"]
    xs = [math.sqrt(parse_size(s)[0] * parse_size(s)[1]) for s in sizes]
    series = {v: [100 * per[s]["mean"] if s in per else None for s in sizes] for v, per in result["summary"].items()}
    vlines = {}
    if result.get("train_size") is not None:
        th, tw = parse_size(result["train_size"])
        vlines[f"training size ({result['train_size']})"] = math.sqrt(th * tw)
    line_plot(out / "accuracy_vs_resolution.png", xs, series, xlabel="test resolution (px)", ylabel="top-1 (%)",
              title=f"accuracy vs resolution: {result['data']}", xticklabels=sizes, logx=True,
              hlines={f"chance ({100 * result['chance']:.1f}%)": 100 * result["chance"]}, vlines=vlines,
              ylim=(0, 100))


# ---- CLI ---------------------------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (flags override it)")
    p.add_argument("--model", help=f"timm model name (default {DEFAULTS['model']})")
    p.add_argument("--model-kwargs", help="timm kwargs as YAML/JSON, e.g. '{patch_size: 4, embed_dim: 64}'")
    p.add_argument("--pe", help="variants: 'ape,rope_axial,ape+rope_axial' ('+' joins a combination; 'timm' = the "
                                "model's own PE)")
    p.add_argument("--pe-kwargs", help="options of the PE (single variant) as YAML/JSON")
    p.add_argument("--task", help=f"built-in task: {', '.join(sorted(TASKS))} (default {DEFAULTS['task']})")
    p.add_argument("--data", help="ImageFolder root for evaluation (default: the built-in task)")
    p.add_argument("--sizes", help=f"test sizes, e.g. '16,24,32x48' (default {DEFAULTS['sizes']})")
    p.add_argument("--train-size", help="training size: the models' img_size (APE tables, RoPE reference grids); "
                                        "marked in the table")
    p.add_argument("--eval-samples", type=int, help="synthetic evaluation samples")
    p.add_argument("--data-seed", type=int)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--interpolation", choices=["bicubic", "bilinear", "nearest"])
    p.add_argument("--num-workers", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help=f"results folder (default {DEFAULTS['out']})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--checkpoint", help="checkpoint of the single variant given by --pe")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue an interrupted evaluation in --out (finished cells are kept in partial_rows.json)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--train-data", help="ImageFolder root for training (default: the built-in task)")
    p.add_argument("--train-sizes", help="multi-resolution training: a random one of these sizes per batch")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split over torchrun ranks)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--seeds", help="model seeds, e.g. '0,1,2'")
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--resume", action="store_true", default=None, help="continue from the checkpoints in --out")


def run_eval(args) -> int:
    cfg = load_config(args=args)
    return _print_table(run_experiment(cfg, train=False, progress=not args.no_progress), cfg)


def run_train(args) -> int:
    cfg = load_config(args=args)
    return _print_table(run_experiment(cfg, train=True, progress=not args.no_progress), cfg)


def _print_table(result, cfg) -> int:
    import os

    if os.environ.get("RANK", "0") == "0":  # the process group is gone by now: read torchrun's rank
        print(result["table"] + f"\nresults in {cfg['out']} ({result['wall_time_s']:.0f} s)")
    return 0


def demo_config_path(scale: str) -> Path:
    """``configs/resolution/demo_<scale>.yaml`` of the source tree."""
    if scale not in ("cpu", "gpu"):
        raise ValueError(f"scale must be 'cpu' or 'gpu', got {scale!r}")
    p = Path(__file__).resolve().parents[2] / "configs" / "resolution" / f"demo_{scale}.yaml"
    if not p.is_file():
        raise ValueError(f"demo config {str(p)!r} not found (the demo runs from a source checkout); pass --config")
    return p


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/resolution", help="results folder (default results/resolution)")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="cpu: < 8 min on 2 cores; gpu: larger")
    p.add_argument("--config", help="another demo config (default configs/resolution/demo_<scale>.yaml)")
    p.add_argument("--steps", type=int, help="override the training steps")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (the cpu config uses 2; 1 is faster on a busy "
                                               "machine)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run_demo(args) -> int:
    path = args.config or demo_config_path(args.scale)
    overrides = dict(out=args.out)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = load_config(path, **overrides)
    return _print_table(run_experiment(cfg, train=True, progress=not args.no_progress), cfg)
