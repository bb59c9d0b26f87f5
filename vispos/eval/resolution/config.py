"""``vispos eval/train resolution`` configuration: defaults, variants, sizes, :func:`load_config`."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from ...data.images import TASKS, parse_size
from ...utils.checks import check_bool, check_choice, check_int, check_mapping, check_number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULTS: Dict[str, Any] = dict(
    # models
    model="vit_tiny_patch16_224",   # timm name
    model_kwargs={},                # timm kwargs for every variant (patch_size, embed_dim, depth, num_heads, ...)
    pe=None,                        # variants as a string: "ape,rope_axial,ape+rope_axial" (overrides `variants`)
    pe_kwargs=None,                 # options of the PE when `pe` names a single variant
    variants=None,                  # list: a name, a list of names (combination) or a mapping (see Variant)
    checkpoint=None,                # eval: a checkpoint file or run folder (what it stores is read from it)
    pretrained=False,               # eval: timm's pretrained weights for every variant
    num_classes=None,               # classifier outputs (default: the checkpoint's head, else the data's classes)
    class_map=None,                 # ImageFolder: .txt file, line i = the folder name of output i (timm's)
    # data
    task="absolute",                # built-in task (used when `data` / `train_data` is not set)
    data=None,                      # ImageFolder root for evaluation
    train_data=None,                # ImageFolder root for training
    eval_samples=900,               # synthetic evaluation set size
    data_seed=0,
    crop_pct=None,                  # ImageFolder eval transform: None = the model's data config (timm's
    interpolation=None,             # resolve_data_config: augreg ViTs mean = std = 0.5, crop 0.9; EVA-02 CLIP
    mean=None,                      # statistics; ImageNet's otherwise). Synthetic data is normalised as
    std=None,                       # (v - .5) / .5 and rendered at the size directly.
    crop_mode=None,
    num_workers=0,
    rrc_scale=None,                 # training random-resized-crop area range 'lo,hi' or 'off'; None: 0.25,1 for
                                    # ImageFolder and the tasks that take one (photos, relative, shape, landolt),
                                    # off for absolute / quadrant (they refuse one: a crop changes their label)
    # sweep
    sizes=None,                     # None: DEFAULT_SIZE_RATIOS x the training size, multiples of the patch
    size_ratios=None,               # test sizes as ratios of train_size (overrides sizes), e.g. the papers'
                                    # 0.43,1,1.7,2.3,3 (224 -> 96, 384, 512, 640); rounded to patch multiples
    train_size=None,                # size the models are trained at / were trained at (their img_size: learned
                                    # APE tables and RoPE reference grids are built for it); eval default: timm's
    # training
    train_sizes=None,               # multi-resolution training: one of these sizes per batch
    batching="fixed",               # "fixed": every batch one size; "naflex": every image its own aspect ratio and
                                    # size within a token budget, padded (timm's NaFlex pipeline; NaFlexViT models)
    max_tokens=None,                # naflex training: patch tokens per image (default: the train_size grid's)
    aspect_range=[0.5, 2.0],        # naflex, synthetic tasks: image height/width drawn log-uniformly in this range
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
    overwrite=False,                # replace the results of an earlier run in `out`
    # run
    device="auto",
    amp=False,                      # bf16 autocast on CUDA
    threads=None,                   # torch.set_num_threads (None: leave as is)
    out=None,                       # None: a fresh results/<command>/<time>-<model>-<size> folder per run
)

VARIANT_KEYS = ("name", "pe", "pe_kwargs", "model", "model_kwargs", "checkpoint", "seed")
# configuration keys that change a training trajectory: a checkpoint is resumed only if they all match
TRAJECTORY_KEYS = ("task", "train_data", "data_seed", "train_size", "train_sizes", "steps", "batch_size", "lr",
                    "weight_decay", "warmup_steps", "grad_clip", "label_smoothing", "crop_pct", "interpolation",
                    "mean", "std", "rrc_scale", "batching", "max_tokens", "aspect_range")

#: The papers' test/train size ratios at ImageNet's 224 px: 96 (ResFormer), 224, 384 (RoPE-ViT, CPVT),
#: 512 (RoPE-ViT, CPVT), 640 (ResFormer).
PAPER_RATIOS = (0.43, 1.0, 1.7, 2.3, 3.0)
#: ratios of the training size of the default test sizes (no sizes / size_ratios given): the papers', rounded to
#: multiples of the patch size, repeats dropped
DEFAULT_SIZE_RATIOS = PAPER_RATIOS


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


def parse_ratios(ratios) -> Optional[List[float]]:
    """``"0.43,1,1.7"`` / ``[0.43, 1, 1.7]`` / ``"paper"`` (:data:`PAPER_RATIOS`) -> a list of positive floats."""
    if ratios is None:
        return None
    if isinstance(ratios, str):
        if ratios.strip() == "paper":
            return list(PAPER_RATIOS)
        try:
            ratios = [float(v) for v in ratios.replace(" ", "").split(",") if v]
        except ValueError:
            raise ValueError(f"size_ratios must be like '0.43,1,1.7,2.3,3' or 'paper', got {ratios!r}") from None
    if not isinstance(ratios, (list, tuple)) or not ratios or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in ratios):
        raise ValueError(f"size_ratios must be positive numbers like '0.43,1,1.7,2.3,3', got {ratios!r}")
    if 1 not in [float(r) for r in ratios]:
        raise ValueError(f"size_ratios must include 1 (the training size: deltas are measured from it), got {ratios}")
    return [float(r) for r in ratios]


def sizes_from_ratios(ratios, train_size, multiple: int) -> List[List[int]]:
    """``round(r * side / multiple) * multiple`` per side (at least one multiple); repeated sizes are an error."""
    out = []
    for r in ratios:
        out.append([max(multiple, int(round(r * v / multiple)) * multiple) for v in train_size])
    if len({tuple(s) for s in out}) != len(out):
        raise ValueError(f"size_ratios {ratios} at train_size {train_size} give repeated sizes {out} in multiples "
                         f"of the patch size {multiple}; use a larger train_size")
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
    seed: Optional[int] = None


def default_sizes(train_size: Tuple[int, int], patch: Tuple[int, int]) -> List[Tuple[int, int]]:
    """:data:`DEFAULT_SIZE_RATIOS` x ``train_size``, each side rounded to a multiple of ``patch`` (at least one
    patch), duplicates dropped."""
    out: List[Tuple[int, int]] = []
    for r in DEFAULT_SIZE_RATIOS:
        hw = tuple(max(p, int(round(t * r / p)) * p) for t, p in zip(train_size, patch))
        if hw not in out:
            out.append(hw)
    return out


def variants_from_checkpoint(path) -> List[Dict[str, Any]]:
    """Variant mappings for ``--checkpoint`` without ``--pe``: every checkpoint of a vispos run folder, or one
    file (a folder is searched with :func:`vispos.eval.checkpoints.find_checkpoint`), each with the variant, seed and
    model kwargs it stores; a checkpoint that stores none (a timm / plain state dict) is evaluated as ``pe: timm``."""
    from ..checkpoints import checkpoint_record, find_checkpoint, is_run_folder, run_checkpoints

    recs = run_checkpoints(path) if is_run_folder(path) else [checkpoint_record(find_checkpoint(path))]
    out = []
    for r in recs:
        v = r["variant"]
        if isinstance(v, dict):
            out.append(dict(name=v.get("name"), pe=v.get("pe"), pe_kwargs=v.get("pe_kwargs"), model=v.get("model"),
                            model_kwargs=v.get("model_kwargs") or {}, checkpoint=r["path"], seed=r["seed"]))
        else:
            out.append(dict(pe="timm", checkpoint=r["path"]))
    return out


def _pe_from_string(s: str) -> Union[str, List[str]]:
    parts = [p.strip() for p in s.split("+") if p.strip()]
    if not parts:
        raise ValueError(f"empty PE variant {s!r}; give a name like 'rope_axial' or 'ape+rope_axial'")
    return parts[0] if len(parts) == 1 else parts


def _check_pe_names(pe, where: str) -> None:
    from ...registry import get_pe_info

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
    check_mapping(base_kwargs, "model_kwargs")
    raw: List[Any]
    if cfg.get("checkpoint") is not None and cfg.get("pe") is None and cfg.get("variants") is None:
        raw = variants_from_checkpoint(cfg["checkpoint"])
    elif cfg.get("pe") is not None:
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
            ck = cfg.get("checkpoint")
            if ck is not None:
                from ..checkpoints import find_checkpoint

                ck = str(find_checkpoint(ck))
            raw = [dict(pe=raw[0], pe_kwargs=cfg.get("pe_kwargs"), checkpoint=ck)]
    elif cfg.get("variants") is not None:
        raw = cfg["variants"]
        if not isinstance(raw, (list, tuple)):
            raise TypeError(f"variants must be a list, got {type(raw).__name__}")
        if cfg.get("checkpoint") is not None:
            raise ValueError("checkpoint applies to a single variant given with pe; give each variant of `variants` "
                             "its own checkpoint: key")
    else:
        raise ValueError("no models to evaluate: give --pe NAME[,NAME...], --checkpoint FILE_OR_RUN_FOLDER or a "
                         "config with a `variants` list")
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
        unknown = sorted(set(v) - set(VARIANT_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {list(VARIANT_KEYS)}")
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
        seed = v.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"{where}: seed must be an int, got {seed!r}")
        out.append(Variant(str(name), pe, pk, model, mk, None if ckpt is None else str(ckpt), seed))
    names = [(v.name, v.seed) for v in out]
    dup = sorted({n for n, s in names if names.count((n, s)) > 1})
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


def _check_model_kwargs(kw: Dict[str, Any]) -> None:
    """The timm geometry keys that otherwise fail deep in timm (AssertionError, ZeroDivisionError)."""
    for key in ("embed_dim", "num_heads", "depth", "in_chans"):
        if key in kw:
            check_int(kw[key], f"model_kwargs.{key}", 1)
    if "patch_size" in kw:
        ps = kw["patch_size"]
        for v in (ps if isinstance(ps, (list, tuple)) else [ps]):
            check_int(v, "model_kwargs.patch_size", 1)
    if "mlp_ratio" in kw:
        check_number(kw["mlp_ratio"], "model_kwargs.mlp_ratio", 0, min_open=True)
    if "embed_dim" in kw and "num_heads" in kw and kw["embed_dim"] % kw["num_heads"]:
        raise ValueError(f"model_kwargs: embed_dim={kw['embed_dim']} is not divisible by "
                         f"num_heads={kw['num_heads']}")


def _resolve_rrc(cfg) -> Any:
    """``rrc_scale`` of a run: ``[lo, hi]`` or ``False`` (no crop). ImageFolder training always crops (default
    ``0.25,1``); a built-in task takes its own default and refuses what would change its labels
    (:func:`vispos.data.images.resolve_rrc_scale`)."""
    from ...data.images import DEFAULT_RRC_SCALE, RRC_TASKS, _check_rrc_scale, resolve_rrc_scale

    rr = cfg.get("rrc_scale")
    off = rr is False or (isinstance(rr, str) and rr.strip().lower() in ("off", "none"))
    if isinstance(rr, str) and not off:
        try:
            rr = [float(v) for v in rr.split(",")]
        except ValueError:
            raise ValueError(f"rrc_scale must be like '0.25,1' (area fractions lo,hi) or 'off', got {rr!r}") from None
    if cfg.get("train_data") is not None or cfg.get("data") is not None:  # ImageFolder: timm's RandomResizedCrop
        if off:
            raise ValueError("rrc_scale 'off' applies to the built-in scene tasks; ImageFolder training always uses "
                             "a random-resized crop: give lo,hi (e.g. 1,1 for the whole image)")
        return list(DEFAULT_RRC_SCALE if rr is None else _check_rrc_scale(rr))
    if rr is None:  # the training protocol's default: a crop wherever the task takes one
        rr = DEFAULT_RRC_SCALE if cfg["task"] in RRC_TASKS else False
    got = resolve_rrc_scale(cfg["task"], False if off else rr)
    return False if got is None else list(got)


def load_config(config_path=None, args: Optional[argparse.Namespace] = None, **overrides) -> Dict[str, Any]:
    """:data:`DEFAULTS` <- YAML ``config_path`` (or ``args.config``) <- given flags <- ``overrides``; checked.

    Returns the resolved configuration with ``sizes`` / ``train_size`` / ``train_sizes`` / ``seeds`` normalised.
    Raises ``ValueError`` / ``TypeError`` for any bad value, naming it.
    """
    from ...utils.config import resolve_config

    cfg = resolve_config(DEFAULTS, args, config_path=config_path, extra=overrides or None)
    cfg["model_kwargs"] = _parse_mapping(cfg.get("model_kwargs"), "model_kwargs") or {}
    cfg["pe_kwargs"] = _parse_mapping(cfg.get("pe_kwargs"), "pe_kwargs")
    cfg["sizes"] = None if cfg.get("sizes") is None else [list(s) for s in parse_sizes(cfg["sizes"])]
    cfg["size_ratios"] = parse_ratios(cfg.get("size_ratios"))
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
    cfg["rrc_scale"] = _resolve_rrc(cfg)
    for key, minimum in (("steps", 1), ("batch_size", 1), ("eval_batch_size", 1), ("eval_samples", 1),
                         ("data_seed", None), ("warmup_steps", 0), ("ckpt_every", 1), ("num_workers", 0)):
        check_int(cfg.get(key), key, minimum)
    check_int(cfg.get("threads"), "threads", 1, allow_none=True)
    check_choice(cfg.get("batching"), "batching", ("fixed", "naflex"))
    check_int(cfg.get("max_tokens"), "max_tokens", 1, allow_none=True)
    if cfg.get("max_tokens") is not None and cfg["batching"] != "naflex":
        raise ValueError(f"max_tokens={cfg['max_tokens']} is the token budget of batching 'naflex'; give "
                         f"--batching naflex too (batching is {cfg['batching']!r})")
    ar = cfg.get("aspect_range")
    if isinstance(ar, str):
        try:
            ar = [float(v) for v in ar.split(",")]
        except ValueError:
            raise ValueError(f"aspect_range must be like '0.5,2' (height/width lo,hi), got {ar!r}") from None
    if not isinstance(ar, (list, tuple)) or len(ar) != 2 or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < math.inf for a in ar) \
            or ar[0] > ar[1]:
        raise ValueError(f"aspect_range must be two positive numbers lo <= hi (height/width), got {ar!r}")
    cfg["aspect_range"] = [float(a) for a in ar]
    if cfg["batching"] == "naflex" and cfg.get("train_sizes"):
        raise ValueError("train_sizes (one size per batch) and batching 'naflex' (a size per image) exclude each "
                         "other; give max_tokens for the naflex token budget")
    check_number(cfg.get("lr"), "lr", 0, min_open=True)
    check_number(cfg.get("weight_decay"), "weight_decay", 0)
    check_number(cfg.get("grad_clip"), "grad_clip", 0, min_open=True, allow_none=True)
    check_number(cfg.get("label_smoothing"), "label_smoothing", 0, 1, max_open=True)
    _check_model_kwargs(cfg["model_kwargs"])
    # a batch whose input images alone exceed the machine's memory is refused now, not when it is allocated
    from ...utils.checks import check_fits_in_memory

    pix = [parse_size(sz) for sz in [cfg.get("train_size")] + list(cfg.get("train_sizes") or []) if sz is not None]
    if pix:
        h, w = max(pix, key=lambda hw: hw[0] * hw[1])
        check_fits_in_memory(cfg["batch_size"] * 3 * h * w * 4, f"batch_size={cfg['batch_size']} at {h}x{w}")
    if cfg.get("sizes"):
        h, w = max((parse_size(sz) for sz in cfg["sizes"]),
                   key=lambda hw: hw[0] * hw[1])
        check_fits_in_memory(cfg["eval_batch_size"] * 3 * h * w * 4,
                             f"eval_batch_size={cfg['eval_batch_size']} at {h}x{w}")
    from ..timm_data import CROP_MODES, INTERPOLATIONS, read_class_map, resolve_eval_config

    check_number(cfg.get("crop_pct"), "crop_pct", 0, 1, min_open=True, allow_none=True)
    if cfg.get("interpolation") is not None:
        check_choice(cfg["interpolation"], "interpolation", INTERPOLATIONS)
    if cfg.get("crop_mode") is not None:
        check_choice(cfg["crop_mode"], "crop_mode", CROP_MODES)
    # mean / std: three numbers, one, or 'a,b,c' (checked the way the eval transform will use them)
    checked = resolve_eval_config(pretrained_cfg={"input_size": (3, 224, 224)}, mean=cfg.get("mean"),
                                  std=cfg.get("std"))
    for key in ("mean", "std"):
        if cfg.get(key) is not None:
            cfg[key] = list(checked[key])
    check_int(cfg.get("num_classes"), "num_classes", 1, allow_none=True)
    if cfg.get("class_map") is not None:
        if cfg.get("data") is None:
            raise ValueError("class_map maps ImageFolder class folders to model outputs: give --data DIR too")
        read_class_map(cfg["class_map"])  # checked now, read again where the data is opened
    if cfg.get("out") is not None:
        if not isinstance(cfg.get("out"), (str, Path)) or not str(cfg["out"]):
            raise ValueError(f"out must be a folder path, got {cfg.get('out')!r}")
        cfg["out"] = str(cfg["out"])
    for key in ("resume", "amp", "pretrained", "overwrite"):
        check_bool(cfg.get(key), key)
    if cfg["resume"] and cfg["overwrite"]:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in --out, overwrite "
                         "replaces it")
    if cfg["pretrained"] and cfg.get("checkpoint") is not None:
        raise ValueError("give either --checkpoint or --pretrained (timm's weights), not both")
    return cfg
