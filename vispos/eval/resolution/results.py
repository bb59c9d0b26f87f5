"""``vispos eval/train resolution`` results: rows, summary, Markdown table and the results folder."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ...data.images import parse_size
from ...utils.io import markdown_table
from ..common import write_results_folder
from .config import Variant, size_label
from .data import Data


def result_row(variant: Variant, seed: Optional[int], hw, acc: Dict[str, Any], checkpoint=None) -> Dict[str, Any]:
    """One row of the results: the variant, seed, size and the counts of :func:`evaluate`."""
    hw = tuple(hw)
    return dict(variant=variant.name, pe=variant.pe if isinstance(variant.pe, str) else "+".join(variant.pe),
                model=variant.model, seed=seed, size=size_label(hw), height=hw[0], width=hw[1], **acc,
                checkpoint=None if checkpoint is None else str(checkpoint))


def make_result(cfg, data: "Data", variants: Sequence[Variant], rows: List[Dict[str, Any]], *, train: bool = True,
                world_size: int = 1, wall_time_s: Optional[float] = None) -> Dict[str, Any]:
    """The results dict written by :func:`write_results`: metadata, ``rows``, ``summary`` and the ``table``."""
    result = dict(
        command="train" if train else "eval", data=data.source,
        task=cfg["task"] if cfg.get("data") is None else None, num_classes=data.num_classes, chance=data.chance,
        sizes=[size_label(tuple(s)) for s in cfg["sizes"]],
        train_size=None if cfg.get("train_size") is None else size_label(tuple(cfg["train_size"])),
        train_sizes=[size_label(tuple(s)) for s in cfg["train_sizes"]] if cfg.get("train_sizes") else None,
        batching=cfg.get("batching", "fixed"),
        max_tokens=cfg.get("max_tokens") if cfg.get("batching") == "naflex" else None,
        aspect_range=cfg.get("aspect_range") if cfg.get("batching") == "naflex" and cfg.get("data") is None
        else None,
        variants=[asdict(v) for v in variants], world_size=world_size, rows=rows,
        skipped_images={k: [list(x) for x in f.skipped] for k, f in (("data", data.eval_folder),
                                                                    ("train_data", data.train_folder))
                        if f is not None and getattr(f, "skipped", None)},
        wall_time_s=None if wall_time_s is None else round(wall_time_s, 2))
    result["summary"] = summarize(result)
    result["deltas"] = deltas(result)
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


def _mean_std(vals: List[float]) -> Dict[str, float]:
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return dict(mean=mean, std=std, n_seeds=len(vals))


def deltas(result) -> Optional[Dict[str, Dict[str, Dict[str, float]]]]:
    """Per variant and size: top-1 at that size minus top-1 at the training size, in points (mean / std over
    seeds, paired by seed). ``None`` when the training size is not among the test sizes."""
    ts = result.get("train_size")
    if ts is None or ts not in result["sizes"]:
        return None
    acc: Dict[str, Dict[Any, Dict[str, float]]] = {}
    for r in result["rows"]:
        acc.setdefault(r["variant"], {}).setdefault(r["seed"], {})[r["size"]] = r["top1"]
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for v, by_seed in acc.items():
        out[v] = {}
        for s in result["sizes"]:
            vals = [100 * (per[s] - per[ts]) for per in by_seed.values() if s in per and ts in per]
            if vals:
                out[v][s] = _mean_std(vals)
    return out


def results_table(result) -> str:
    """Markdown table: variants as rows, sizes as columns (top-1 %, mean +- std over seeds), training size ``*``."""
    from ..plots import size_axis

    ts = result.get("train_size")
    order = size_axis(result["sizes"])[0]
    result = {**result, "sizes": [result["sizes"][i] for i in order]}  # columns ordered by pixel count
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
    if result.get("batching") == "naflex":
        notes.append("Batching naflex: every image at its own aspect ratio within the tokens of the column's size"
                     + (f" (training: {result['max_tokens']} tokens per image)" if result.get("max_tokens") else "")
                     + ".")
    text = markdown_table(header, rows) + "\n" + " ".join(notes) + "\n"
    d = result.get("deltas")
    if d:
        drows = []
        for v, per in d.items():
            cells = [v]
            for s in result["sizes"]:
                e = per.get(s)
                if e is None or s == ts:
                    cells.append("" if e is None else "0")
                elif e["n_seeds"] > 1:
                    cells.append(f"{e['mean']:+.1f} ± {e['std']:.1f}")
                else:
                    cells.append(f"{e['mean']:+.1f}")
            drows.append(cells)
        n = max(e["n_seeds"] for per in d.values() for e in per.values())
        text += ("\nChange from the training size, in points (top-1 at the size minus top-1 at " + str(ts)
                 + f" px, paired by seed; mean ± std over {n} seed(s)):\n\n" + markdown_table(header, drows))
    return text


def write_results(out, result: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    """accuracy_vs_resolution.png, table.md, results.csv, config.yaml, then results.json (the "finished" marker)
    in ``out``, each written atomically: a run killed before results.json is never taken as finished."""
    out = Path(out)
    fields = ["variant", "pe", "model", "seed", "size", "height", "width", "n", "correct1", "top1", "correct5",
              "top5", "checkpoint"]
    plot_accuracy(out / "accuracy_vs_resolution.png", result)
    write_results_folder(out, {k: v for k, v in result.items() if k != "table"}, result["rows"], result["table"],
                         fields=fields, config=cfg)


def plot_accuracy(path, result: Dict[str, Any]):
    """Top-1 against test size, one line per variant (mean over seeds, error bars = std over seeds), sizes ordered
    by pixel count (:func:`vispos.eval.plots.size_axis`: non-square sizes get their own evenly spaced ticks), the
    training size and chance marked. Returns the path, or ``None`` without matplotlib."""
    from ..plots import line_plot, size_axis

    order, xs, ticks, logx = size_axis(result["sizes"])
    sizes = [result["sizes"][i] for i in order]
    summ = result["summary"]
    series = {v: [100 * per[s]["mean"] if s in per else None for s in sizes] for v, per in summ.items()}
    errs = {v: [100 * per[s]["std"] if s in per else None for s in sizes] for v, per in summ.items()}
    vlines = {}
    ts = result.get("train_size")
    if ts is not None:
        if ts in sizes:
            vlines[f"training size ({ts})"] = xs[sizes.index(ts)]
        elif logx:
            vlines[f"training size ({ts})"] = math.sqrt(parse_size(ts)[0] * parse_size(ts)[1])
    seeds = max((e["n_seeds"] for per in summ.values() for e in per.values()), default=1)
    return line_plot(path, xs, series, xlabel="test size (px, H x W)", ylabel="top-1 (%)",
                     title=f"accuracy vs resolution: {result['data']}" + (f" ({seeds} seeds, mean ± std)"
                                                                          if seeds > 1 else ""),
                     xticklabels=ticks, logx=logx, yerr=errs if seeds > 1 else None,
                     hlines={f"chance ({100 * result['chance']:.1f}%)": 100 * result["chance"]}, vlines=vlines,
                     ylim=(0, 100))
