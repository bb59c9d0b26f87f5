"""Line plots for evaluation results (matplotlib, Agg canvas; no pyplot, so no global backend state).

:func:`line_plot` draws one line per series against shared x positions and writes the figure atomically.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Optional, Sequence

from ..utils.io import atomic_savefig

__all__ = ["line_plot"]

log = logging.getLogger(__name__)

_MARKERS = "osD^v<>ph*Xd"


def line_plot(
    path,
    x: Sequence[float],
    series: Mapping[str, Sequence[Optional[float]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    xticklabels: Optional[Sequence[str]] = None,
    hlines: Optional[Mapping[str, float]] = None,
    vlines: Optional[Mapping[str, float]] = None,
    ylim: Optional[Sequence[float]] = None,
    logx: bool = False,
    figsize=(9.0, 4.5),
    dpi: int = 120,
):
    """One line per entry of ``series`` (name -> y values aligned with ``x``; ``None`` / NaN leave a gap).

    Args:
        path: output file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``). Written atomically.
        x: x positions, shape ``(P,)``.
        series: ``{label: (P,) values}``.
        xticklabels: labels for the ticks at ``x`` (e.g. ``"32x48"``); default: the x values.
        hlines / vlines: dashed reference lines ``{label: value}`` (e.g. chance level, training size).
        ylim: ``(low, high)``; logx: logarithmic x axis (base 2).

    Returns:
        the written path (a :class:`pathlib.Path`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = [float(v) for v in x]
    if not x:
        raise ValueError("line_plot needs at least one x position")
    if any(math.isnan(v) for v in x):
        raise ValueError(f"x positions must be numbers, got {x}")
    if not series:
        raise ValueError("line_plot needs at least one series")
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(x)} x positions")
    if xticklabels is not None and len(xticklabels) != len(x):
        raise ValueError(f"{len(xticklabels)} xticklabels for {len(x)} x positions")

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, ys) in enumerate(series.items()):
        vals = [float("nan") if v is None else float(v) for v in ys]
        ls = "-" if i < 10 else "--"
        ax.plot(x, vals, marker=_MARKERS[i % len(_MARKERS)], linestyle=ls, linewidth=1.5, markersize=4, label=name)
    for name, v in (hlines or {}).items():
        ax.axhline(v, color="grey", linestyle=":", linewidth=1.2, label=name)
    for name, v in (vlines or {}).items():
        ax.axvline(v, color="black", linestyle="--", linewidth=0.9, alpha=0.6, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    ax.set_xticklabels(list(xticklabels) if xticklabels is not None else [f"{v:g}" for v in x])
    ax.minorticks_off()
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    n = len(series) + len(hlines or {}) + len(vlines or {})
    ax.legend(fontsize=8, ncol=1 if n <= 14 else 2, loc="center left", bbox_to_anchor=(1.01, 0.5), framealpha=0.8)
    fig.tight_layout()
    return atomic_savefig(fig, path)
