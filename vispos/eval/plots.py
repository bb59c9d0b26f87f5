"""Line plots for evaluation results (matplotlib, Agg canvas; no pyplot, so no global backend state).

:func:`line_plot` draws one line per series against shared x positions and writes the figure atomically;
:func:`size_axis` orders test sizes (``"32x64"``, ``"48"``) for a resolution axis. matplotlib is the optional
``plots`` extra: without it every plot is skipped with one warning naming the file and the install line
(:func:`matplotlib_or_hint`), and the tables and JSON are written as usual.
"""
from __future__ import annotations

import logging
import math
from typing import List, Mapping, Optional, Sequence, Tuple

from ..utils.io import atomic_savefig

__all__ = ["PLOTS_HINT", "line_plot", "matplotlib_or_hint", "size_axis"]

#: How to get the plots: printed when matplotlib is missing.
PLOTS_HINT = "pip install 'vispos[plots]' (or pip install matplotlib)"

log = logging.getLogger(__name__)

_MARKERS = "osD^v<>ph*Xd"


def matplotlib_or_hint(path=None):
    """The ``matplotlib`` module, or ``None`` after one ``WARNING`` saying which plot is skipped and how to get it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (the canvas every plot uses)
    except ImportError as e:
        what = f"skipping the plot {str(path)!r}" if path is not None else "skipping the plots"
        log.warning("matplotlib is not installed (%s): %s; %s", e, what, PLOTS_HINT)
        return None
    return matplotlib


def size_axis(labels: Sequence[str]) -> Tuple[List[int], List[float], List[str], bool]:
    """Order test sizes for a resolution axis: ``(order, x, ticklabels, logx)``.

    ``labels`` are size labels (``"48"`` or ``"32x64"``, height x width). ``order`` sorts them by pixel count, then
    height, then width, so the line never zig-zags. With square sizes only, ``x`` is the side (log axis); as soon as
    a non-square size appears two sizes can share a pixel count (``32x64`` and ``64x32``), so the sizes get evenly
    spaced categorical positions ``0, 1, ...`` in that order instead (``logx`` False) and every size its own tick.
    """
    from ..data.images import parse_size

    hw = [parse_size(s) for s in labels]
    if len(set(hw)) != len(hw):
        raise ValueError(f"sizes must not repeat, got {list(labels)}")
    order = sorted(range(len(hw)), key=lambda i: (hw[i][0] * hw[i][1], hw[i][0], hw[i][1]))
    ticks = [str(labels[i]) for i in order]
    if all(h == w for h, w in hw):
        return order, [float(hw[i][0]) for i in order], ticks, True
    return order, [float(j) for j in range(len(order))], ticks, False


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
    yerr: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
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
        yerr: ``{label: (P,) half-widths}`` drawn as error bars on that series (e.g. the std over seeds).

    Returns:
        the written path (a :class:`pathlib.Path`), or ``None`` when matplotlib is not installed (one warning).
    """

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
    for name, es in (yerr or {}).items():
        if name not in series or len(es) != len(x):
            raise ValueError(f"yerr {name!r} must name a series and give {len(x)} values")
    if matplotlib_or_hint(path) is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, ys) in enumerate(series.items()):
        vals = [float("nan") if v is None else float(v) for v in ys]
        ls = "-" if i < 10 else "--"
        # later series are drawn thinner, so a series that coincides with an earlier one stays visible under it
        lw = max(0.8, 2.6 - 0.25 * i)
        errs = (yerr or {}).get(name)
        if errs is not None and any(e for e in errs):
            e = [0.0 if v is None else float(v) for v in errs]
            ax.errorbar(x, vals, yerr=e, marker=_MARKERS[i % len(_MARKERS)], linestyle=ls, linewidth=lw,
                        markersize=4, capsize=2, label=name)
        else:
            ax.plot(x, vals, marker=_MARKERS[i % len(_MARKERS)], linestyle=ls, linewidth=lw, markersize=4,
                    label=name)
    for name, v in (hlines or {}).items():
        ax.axhline(v, color="grey", linestyle=":", linewidth=1.2, label=name)
    for name, v in (vlines or {}).items():
        ax.axvline(v, color="black", linestyle="--", linewidth=0.9, alpha=0.6, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    labels = list(xticklabels) if xticklabels is not None else [f"{v:g}" for v in x]
    crowded = len(labels) > 8 or max(len(t) for t in labels) > 4
    ax.set_xticklabels(labels, rotation=45 if crowded else 0, ha="right" if crowded else "center")
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
