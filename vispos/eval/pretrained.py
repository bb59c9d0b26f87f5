"""A pretrained timm model at many resolutions under several training-free PE variants: ``vispos eval pretrained``.

The researcher's workflow in one command: a timm model name, its weights (``--checkpoint FILE`` -- a timm
``state_dict`` file, a timm training checkpoint with ``state_dict`` / ``model`` / EMA entries, or a vispos one -- or
``--pretrained`` for timm's hub weights), an ImageFolder (``--data DIR``), test sizes (``--sizes 224,288,384``) and
the variants to compare (``--variants``, default: every variant the model's PE admits). One results folder holds
``results.json`` (rows, data config, environment, variants, skipped variants), ``results.csv``, ``table.md`` (top-1
per variant and size, the training size marked ``*``), ``accuracy_vs_resolution.png`` and ``config.yaml``.

Evaluation follows timm's ``validate.py``: the model's data config (:func:`vispos.eval.timm_data.resolve_eval_config`,
overridable with ``--mean/--std/--crop-pct/--interpolation/--crop-mode``), ``timm.data.create_transform`` with the
input size set to each test size, timm's ``ImageDataset`` with ``--class-map``; ``--num-classes`` defaults to the
checkpoint's classifier rows, else the folder's classes.

Variants (:data:`VARIANTS`; none is trained, each only changes how positions reach the weights at a new grid):

* ``timm`` -- the model as timm runs it (``dynamic_img_size=True``: its own APE resampling / RoPE grid);
* ``ape-bicubic`` / ``ape-bilinear`` (antialiased), ``ape-nearest``, ``ape-area`` -- the learned APE table
  resampled to the test grid with that mode (:class:`vispos.pe.absolute.AbsolutePE`);
* ``rope-index`` (coordinates are token indices: extrapolation), ``rope-interpolated`` (coordinates rescaled to the
  training grid: position interpolation), ``rope-ntk`` and ``rope-yarn`` (index coordinates, frequencies rescaled
  per axis by the rule for the test/training grid ratio) -- axial RoPE (:class:`vispos.pe.rope.AxialRoPE`).

A model with an APE (ViT, DeiT, EVA-02) admits the ``ape-*`` variants; one with timm's axial RoPE (EVA-02, RoPE
ViTs) the ``rope-*`` variants (on EVA-02 the other PE stays as timm has it). **Parity first:** before the sweep every
variant is compared with ``timm`` at the training size (where each is the identity); a variant whose logits differ
by more than :data:`PARITY_TOL` (relative) is not evaluated, with a warning, and is listed under ``skipped``.
"""
from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from ..data.images import parse_size

__all__ = ["VARIANTS", "PARITY_TOL", "TFVariant", "default_variants", "parse_tf_variants", "build_variant_model",
           "accuracy", "pretrained_sweep", "results_table", "write_pretrained_results", "add_pretrained_args",
           "run_pretrained"]

log = logging.getLogger(__name__)

#: relative max-abs tolerance of a variant's logits against ``timm`` at the training size
PARITY_TOL = 1e-4


@dataclass(frozen=True)
class TFVariant:
    """A training-free variant: the vispos PE member it sets (``None`` for ``timm``) and that member's options.
    ``ref`` marks options that need the training grid (``ref_shape``)."""

    name: str
    member: Optional[str]
    options: Tuple[Tuple[str, Any], ...] = ()
    ref: bool = False
    description: str = ""


VARIANTS: Dict[str, TFVariant] = {v.name: v for v in (
    TFVariant("timm", None, description="the model as timm runs it (its own resampling)"),
    TFVariant("ape-bicubic", "ape", (("mode", "bicubic"), ("antialias", True)), description="APE resampled bicubic"),
    TFVariant("ape-bilinear", "ape", (("mode", "bilinear"), ("antialias", True)),
              description="APE resampled bilinear"),
    TFVariant("ape-nearest", "ape", (("mode", "nearest"), ("antialias", False)), description="APE resampled nearest"),
    TFVariant("ape-area", "ape", (("mode", "area"), ("antialias", False)), description="APE resampled area"),
    TFVariant("rope-index", "rope_axial", (("coords", "index"),), description="RoPE on token indices"),
    TFVariant("rope-interpolated", "rope_axial", (("coords", "interpolated"),), ref=True,
              description="RoPE positions interpolated to the training grid"),
    TFVariant("rope-ntk", "rope_axial", (("coords", "index"), ("rules", "ntk")), description="RoPE, NTK-aware base"),
    TFVariant("rope-yarn", "rope_axial", (("coords", "index"), ("rules", "yarn")), description="RoPE, YaRN"),
)}


# ---- which variants a model admits --------------------------------------------------------------------------------
def _host_pes(model: torch.nn.Module) -> List[str]:
    """The vispos members that reproduce a timm model's own PE: ``["ape"]``, ``["rope_axial"]`` or both."""
    members = []
    if getattr(model, "pos_embed", None) is not None:
        members.append("ape")
    rope = getattr(model, "rope", None)
    if rope is not None and type(rope).__name__ == "RotaryEmbeddingCat":
        members.append("rope_axial")
    return members


def default_variants(model: torch.nn.Module) -> List[str]:
    """``timm`` plus every variant whose member the model's PE has (see the module docstring)."""
    have = _host_pes(model)
    return ["timm"] + [n for n, v in VARIANTS.items() if v.member is not None and v.member in have]


def parse_tf_variants(spec: Union[None, str, Sequence[str]], model: torch.nn.Module) -> List[str]:
    """``"timm,ape-bilinear"`` / a list / ``None`` (the defaults) -> checked variant names for ``model``."""
    if spec is None:
        return default_variants(model)
    names = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not names:
        raise ValueError(f"variants must name at least one of {list(VARIANTS)}, got {spec!r}")
    have = _host_pes(model)
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"unknown training-free variant {n!r}; choose from {list(VARIANTS)}")
        m = VARIANTS[n].member
        if m is not None and m not in have:
            raise ValueError(f"variant {n!r} changes the model's {m!r} but {type(model).__name__} has "
                             f"{have or 'no supported PE'}; this model admits {default_variants(model)}")
    if len(set(names)) != len(names):
        raise ValueError(f"variants must not repeat, got {names}")
    return names


def _pe_spec(name: str, model: torch.nn.Module, train_grid: Tuple[int, int]):
    """``(pe, pe_kwargs)`` for :func:`vispos.integrations.timm.install_pe`."""
    v = VARIANTS[name]
    members = _host_pes(model)
    opts = dict(v.options)
    if v.ref:
        opts["ref_shape"] = tuple(train_grid)
    if len(members) == 1:
        return members[0], opts
    return members, {v.member: opts}


def build_variant_model(base: torch.nn.Module, name: str) -> torch.nn.Module:
    """A copy of the loaded timm model ``base`` with variant ``name`` installed (``timm``: the copy unchanged)."""
    from ..integrations.timm import install_pe

    m = copy.deepcopy(base)
    if name == "timm":
        return m.eval()
    pe, kw = _pe_spec(name, base, tuple(base.patch_embed.grid_size))
    return install_pe(m, pe, kw, convert=True).eval()


# ---- evaluation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: Iterable, num_classes: int, *, device=None, amp: bool = False,
             bar=None, resize: Optional[Tuple[int, int]] = None, interpolation: str = "bicubic") -> Dict[str, Any]:
    """Top-1 / top-5 of ``model`` over ``(x, y)`` batches: ``dict(n, correct1, correct5, top1, top5)`` (top-5 needs
    >= 5 classes, else ``None``). ``resize``: tensors are first resized to ``(H, W)`` (antialiased). Raises
    ``ValueError`` if the model's outputs do not match ``num_classes`` or a label is out of range."""
    import contextlib

    device = torch.device("cpu") if device is None else torch.device(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp and device.type == "cuda" else \
        contextlib.nullcontext
    model.eval()
    k5 = num_classes >= 5
    n = c1 = c5 = 0
    for x, y in batches:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise TypeError(f"batches must yield (images (B, 3, H, W) tensor, labels), got {type(x).__name__} "
                            f"{tuple(getattr(x, 'shape', ()))}")
        y = torch.as_tensor(y)
        if resize is not None and tuple(x.shape[-2:]) != tuple(resize):
            mode = interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
            x = torch.nn.functional.interpolate(x.float(), size=tuple(resize), mode=mode,
                                                antialias=mode != "nearest",
                                                **({} if mode == "nearest" else {"align_corners": False}))
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}; set "
                             f"num_classes or a class map")
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        if logits.shape[-1] != num_classes:
            raise ValueError(f"the model has {logits.shape[-1]} outputs but num_classes is {num_classes}")
        n += y.numel()
        c1 += int((logits.argmax(-1) == y).sum())
        if k5:
            c5 += int((logits.float().topk(5, dim=-1).indices == y[:, None]).any(-1).sum())
        if bar is not None:
            bar.update(y.numel())
    if n == 0:
        raise ValueError("no samples to evaluate (empty data)")
    return dict(n=n, correct1=c1, correct5=c5 if k5 else None, top1=c1 / n, top5=(c5 / n) if k5 else None)


def _label(hw) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def _parity(base_logits: torch.Tensor, model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(x)
    return float((out - base_logits).abs().max() / base_logits.abs().max().clamp_min(1e-6))


def pretrained_sweep(base: torch.nn.Module, batches_at: Callable[[Tuple[int, int]], Iterable], sizes, num_classes: int,
                     *, variants=None, train_size=None, device=None, amp: bool = False, progress: bool = True,
                     model_name: Optional[str] = None, checkpoint: Optional[str] = None,
                     resize_tensors: bool = False, interpolation: str = "bicubic") -> Dict[str, Any]:
    """Evaluate every variant of the loaded timm model ``base`` at every size.

    ``batches_at(hw)`` gives the ``(x, y)`` batches at size ``hw`` (a fresh iterable each call). ``train_size``:
    the size the weights were trained at (default: the model's ``patch_embed.img_size``). Returns ``dict(rows,
    variants, skipped, parity, train_size, sizes)``; each row has ``variant, pe, model, seed, size, height, width,
    n, correct1, top1, correct5, top5, checkpoint``.
    """
    from ..utils.progress import progress_bar
    from .plots import size_axis

    device = torch.device("cpu") if device is None else torch.device(device)
    hws = [parse_size(s) if not isinstance(s, tuple) else s for s in sizes]
    names = parse_tf_variants(variants, base)
    ts = parse_size(tuple(train_size) if isinstance(train_size, list) else train_size) if train_size is not None \
        else tuple(int(v) for v in _as_pair(base.patch_embed.img_size))
    ps = _as_pair(base.patch_embed.patch_size)
    bad = [_label(s) for s in hws + [ts] if s[0] % ps[0] or s[1] % ps[1]]
    if bad:
        raise ValueError(f"sizes {bad} are not multiples of the model's patch size {ps[0]}x{ps[1]}")
    if not getattr(base, "dynamic_img_size", False) and any(tuple(s) != ts for s in hws):
        raise ValueError(f"{type(base).__name__} was built for {_label(ts)} px only; build it with "
                         f"dynamic_img_size=True (timm.create_model(..., dynamic_img_size=True)) to run it at "
                         f"{[_label(s) for s in hws]}")
    base = base.to(device).eval()
    models = {n: build_variant_model(base, n).to(device) for n in names}
    # parity first: every variant must reproduce the timm model at the training size
    x0 = next(iter(batches_at(ts)))[0][:8]
    if resize_tensors and tuple(x0.shape[-2:]) != ts:
        x0 = torch.nn.functional.interpolate(x0.float(), size=ts, mode="bicubic", antialias=True, align_corners=False)
    x0 = x0.to(device)
    with torch.no_grad():
        ref = base(x0)
    parity, skipped = {}, {}
    for n in list(models):
        err = _parity(ref, models[n], x0)
        parity[n] = err
        if err > PARITY_TOL:
            log.warning("variant %s does not reproduce %s at its training size %s (relative max diff %.2e > %.0e): "
                        "not evaluated", n, model_name or type(base).__name__, _label(ts), err, PARITY_TOL)
            skipped[n] = f"parity at {_label(ts)}: relative max diff {err:.2e}"
            del models[n]
    if not models:
        raise ValueError(f"no variant reproduces the model at its training size {_label(ts)}: {skipped}")
    order, _, _, _ = size_axis([_label(s) for s in hws])
    rows = []
    total = len(models) * len(hws)
    bar = progress_bar(total=total, desc="eval pretrained", enabled=progress, unit="cell")
    for n, m in models.items():
        v = VARIANTS[n]
        for hw in hws:
            bar.set_postfix_str(f"{n} {_label(hw)}", refresh=False)
            acc = accuracy(m, batches_at(hw), num_classes, device=device, amp=amp,
                           resize=hw if resize_tensors else None, interpolation=interpolation)
            rows.append(dict(variant=n, pe="timm" if v.member is None else v.member, model=model_name, seed=None,
                             size=_label(hw), height=hw[0], width=hw[1], **acc, checkpoint=checkpoint))
            bar.update(1)
    bar.close()
    return dict(rows=rows, variants=list(models), skipped=skipped, parity=parity, train_size=_label(ts),
                sizes=[_label(hws[i]) for i in order], num_classes=num_classes)


def _as_pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


# ---- results ---------------------------------------------------------------------------------------------------------
def results_table(result: Dict[str, Any]) -> str:
    """Markdown: variants as rows, sizes as columns (top-1 %), the training size marked ``*``, and the change from
    the training size in points at the largest size."""
    from ..utils.io import markdown_table

    sizes, ts = result["sizes"], result["train_size"]
    acc = {(r["variant"], r["size"]): r["top1"] for r in result["rows"]}
    last = sizes[-1]
    header = ["variant"] + [f"{s}*" if s == ts else s for s in sizes]
    with_delta = ts in sizes and last != ts
    if with_delta:
        header.append(f"Δ {last} vs {ts} (pts)")
    body = []
    for v in result["variants"]:
        cells = [v] + [f"{100 * acc[(v, s)]:.1f}" if (v, s) in acc else "" for s in sizes]
        if with_delta:
            cells.append(f"{100 * (acc[(v, last)] - acc[(v, ts)]):+.1f}")
        body.append(cells)
    note = (f"Top-1 (%) of {result.get('model')} on {result.get('data')}, {result['num_classes']} classes; "
            f"`*` training size ({ts} px); timm eval transforms (mean {result['data_config']['mean']}, crop_pct "
            f"{result['data_config']['crop_pct']}, {result['data_config']['interpolation']}).")
    if result.get("skipped"):
        note += " Not evaluated (no parity at the training size): " + ", ".join(
            f"{k} ({v})" for k, v in result["skipped"].items()) + "."
    return markdown_table(header, body) + "\n" + note + "\n"


ROW_FIELDS = ["variant", "pe", "model", "seed", "size", "height", "width", "n", "correct1", "top1", "correct5", "top5",
              "checkpoint"]


def write_pretrained_results(out: Path, result: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    """results.json, results.csv, table.md, accuracy_vs_resolution.png, config.yaml (atomic writes)."""
    import json

    import yaml

    from ..utils.io import atomic_write_csv, atomic_write_json, atomic_write_text
    from .plots import line_plot, size_axis

    out = Path(out)
    atomic_write_json(out / "results.json", {k: v for k, v in result.items() if k != "table"})
    atomic_write_csv(out / "results.csv", result["rows"], fieldnames=ROW_FIELDS)
    atomic_write_text(out / "table.md", result["table"])
    atomic_write_text(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False))
    order, xs, ticks, logx = size_axis(result["sizes"])
    sizes = [result["sizes"][i] for i in order]
    acc = {(r["variant"], r["size"]): 100 * r["top1"] for r in result["rows"]}
    series = {v: [acc.get((v, s)) for s in sizes] for v in result["variants"]}
    vlines = {}
    if result["train_size"] in sizes:
        vlines[f"training size ({result['train_size']})"] = xs[sizes.index(result["train_size"])]
    line_plot(out / "accuracy_vs_resolution.png", xs, series, xlabel="test size (px)", ylabel="top-1 (%)",
              title=f"{result.get('model')}: top-1 vs test size per training-free variant", xticklabels=ticks,
              logx=logx, vlines=vlines, ylim=(0, 100))


# ---- the command -------------------------------------------------------------------------------------------------------
OWNED = ["results.json", "results.csv", "table.md", "config.yaml", "accuracy_vs_resolution.png"]


def _num_classes_of_checkpoint(path) -> Optional[int]:
    from timm.models import load_state_dict

    sd = load_state_dict(str(path), weights_only=True)
    for k in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if k in sd and sd[k].dim() == 2:
            return int(sd[k].shape[0])
    return None


def load_pretrained(model: str, *, checkpoint=None, pretrained: bool = False, num_classes: Optional[int] = None,
                    train_size=None, model_kwargs: Optional[dict] = None, fallback_classes: Optional[int] = None):
    """The plain timm model ``model`` with its weights (``checkpoint`` file / folder, or timm's ``pretrained``),
    built with ``dynamic_img_size=True``. ``num_classes``: given, else the checkpoint's classifier rows, else
    ``fallback_classes`` (the data's). Returns ``(model, checkpoint file or None, num_classes)``."""
    import timm

    from ..integrations.timm import load_timm_checkpoint
    from .checkpoints import find_checkpoint

    if not isinstance(model, str) or not timm.is_model(timm.models.get_arch_name(model)):
        raise ValueError(f"unknown timm model {model!r} (see timm.list_models())")
    if checkpoint is not None and pretrained:
        raise ValueError("give either --checkpoint FILE or --pretrained (timm's weights), not both")
    ckpt = find_checkpoint(checkpoint) if checkpoint is not None else None
    nc = num_classes
    if nc is None and ckpt is not None:
        nc = _num_classes_of_checkpoint(ckpt)
    if nc is None:
        nc = fallback_classes
    if nc is None:
        raise ValueError("cannot tell the number of classes: pass --num-classes")
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {nc!r}")
    kw = dict(model_kwargs or {})
    kw.setdefault("dynamic_img_size", True)
    if train_size is not None:
        kw["img_size"] = parse_size(tuple(train_size) if isinstance(train_size, list) else train_size)
    m = timm.create_model(model, pretrained=pretrained, num_classes=nc, **kw)
    if ckpt is not None:
        try:
            load_timm_checkpoint(m, str(ckpt), strict=True)
        except RuntimeError as e:  # missing / unexpected keys or shape mismatches: say which and what to pass
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = "; ".join(lines[:3])
            raise ValueError(f"checkpoint {str(ckpt)!r} does not fit {model} with {nc} classes and "
                             f"{kw}: {detail} (check --num-classes, the classifier head rows, --model-kwargs and "
                             f"--train-size)") from None
    return m.eval(), (None if ckpt is None else str(ckpt)), nc


def add_pretrained_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="timm model name, e.g. vit_small_patch16_224.augreg_in21k_ft_in1k")
    p.add_argument("--checkpoint", help="weights: a timm/vispos checkpoint file, or a folder holding model_best.pth.tar "
                                        "/ last.pth.tar / one *.pth / *.pt / *.safetensors")
    p.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (hub or local cache)")
    p.add_argument("--data", required=True, help="ImageFolder (one sub-folder per class; a val/ split is used if "
                                                 "present)")
    p.add_argument("--sizes", required=True, help="test sizes, e.g. '224,288,384' or '224,224x320'")
    p.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)} (default: all the model admits)")
    p.add_argument("--train-size", help="size the weights were trained at (default: the model's img_size)")
    p.add_argument("--model-kwargs", help="timm kwargs as YAML/JSON, e.g. '{depth: 6}'")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the checkpoint's, else the folder's "
                                                   "classes)")
    p.add_argument("--class-map", help="a .txt file, line i = the folder name of output i (timm's --class-map)")
    p.add_argument("--mean", help="normalisation mean, e.g. '0.5,0.5,0.5' (default: the model's data config)")
    p.add_argument("--std", help="normalisation std (default: the model's data config)")
    p.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: the model's data config)")
    p.add_argument("--interpolation", help="resize interpolation (default: the model's data config)")
    p.add_argument("--crop-mode", help="center | squash | border (default: the model's data config)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", help="results folder (default: a fresh results/eval-pretrained/<time>-<model>)")
    p.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def evaluate_pretrained(cfg: Dict[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """The command without the folder: checks ``cfg`` (the flags as a dict), loads the model and data, runs
    :func:`pretrained_sweep`; returns the result dict (with ``table``, ``data_config`` and ``environment``)."""
    import yaml

    from ..utils.dist import _resolve_device
    from ..utils.env import run_environment
    from .timm_data import eval_transform, image_dataset, read_class_map, resolve_eval_config

    sizes = [parse_size(s) for s in str(cfg["sizes"]).replace(" ", "").split(",") if s] \
        if isinstance(cfg["sizes"], str) else [parse_size(s) for s in cfg["sizes"]]
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must name distinct sizes like '224,288,384', got {cfg['sizes']!r}")
    mk = cfg.get("model_kwargs")
    if isinstance(mk, str):
        mk = yaml.safe_load(mk)
    if mk is not None and not isinstance(mk, dict):
        raise ValueError(f"model_kwargs must be a mapping like '{{depth: 6}}', got {cfg.get('model_kwargs')!r}")
    for key in ("batch_size", "num_workers"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "batch_size" else 0):
            raise ValueError(f"{key} must be an int >= {1 if key == 'batch_size' else 0}, got {v!r}")
    cmap = read_class_map(cfg.get("class_map"))
    probe = image_dataset(cfg["data"], class_map=cmap)
    n_data = (max(cmap.values()) + 1) if cmap else len(probe.reader.class_to_idx)
    base, ckpt, nc = load_pretrained(cfg["model"], checkpoint=cfg.get("checkpoint"),
                                     pretrained=bool(cfg.get("pretrained")), num_classes=cfg.get("num_classes"),
                                     train_size=cfg.get("train_size"), model_kwargs=mk, fallback_classes=n_data)
    if n_data > nc:
        raise ValueError(f"the data has labels up to {n_data - 1} but the model has {nc} outputs; pass --num-classes "
                         f"or a --class-map that maps the folders onto the model's classes")
    dc = resolve_eval_config(base, mean=cfg.get("mean"), std=cfg.get("std"), crop_pct=cfg.get("crop_pct"),
                             interpolation=cfg.get("interpolation"), crop_mode=cfg.get("crop_mode"))
    device = _resolve_device(cfg.get("device", "auto"), 0)

    def batches_at(hw):
        ds = copy.copy(probe)
        ds.transform = eval_transform(dc, hw)
        return torch.utils.data.DataLoader(ds, batch_size=cfg["batch_size"], shuffle=False,
                                           num_workers=cfg["num_workers"])

    t0 = time.time()
    res = pretrained_sweep(base, batches_at, sizes, nc, variants=cfg.get("variants"),
                           train_size=cfg.get("train_size"), device=device, amp=bool(cfg.get("amp")),
                           progress=progress, model_name=cfg["model"], checkpoint=ckpt,
                           interpolation=dc["interpolation"])
    res.update(command="eval pretrained", model=cfg["model"], data=f"ImageFolder {cfg['data']}",
               data_config={k: list(v) if isinstance(v, tuple) else v for k, v in dc.items()},
               class_map=cmap, environment=run_environment(device), wall_time_s=round(time.time() - t0, 2))
    res["table"] = results_table(res)
    return res


def run_pretrained(args) -> int:
    from ..utils.outdir import DEFAULT_ROOT, check_out, results_folder, timestamped_out

    cfg = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("verbose", "config")}
    if cfg.get("threads") is not None:
        if cfg["threads"] < 1:
            raise ValueError(f"--threads must be >= 1, got {cfg['threads']}")
        torch.set_num_threads(cfg["threads"])
    out = cfg.get("out") or timestamped_out(Path(DEFAULT_ROOT) / "eval-pretrained", cfg["model"])
    cfg["out"] = str(out)
    check_out(out, overwrite=bool(cfg.get("overwrite")), owned=OWNED)  # refuse before any work
    res = evaluate_pretrained(cfg, progress=not cfg.get("no_progress"))
    with results_folder(out, overwrite=bool(cfg.get("overwrite")), owned=OWNED) as folder:
        write_pretrained_results(folder, res, cfg)
    print(res["table"] + f"\nresults in {out} ({res['wall_time_s']:.0f} s)")
    return 0
