"""RoPE explorer: what each scaling rule does to the attention-score kernel of one axis.

For one RoPE axis (rotary dim ``d``, base ``b``) trained at length ``L`` and run at ``L'``, the score between two
tokens with identical content ``q = k = 1`` is the kernel

    ``K(delta) = (2/d) * sum_j cos(delta * theta_j')``

(1 at ``delta = 0``). The explorer writes, per rule, ``K`` against the offset over ``[0, L')`` and a table:

* ``changed``: which components (1-indexed) the rule changed;
* ``new loops``: components that complete a full turn within the test length but did not within the training
  length (``theta'_j L' >= 2pi > theta_j L``): content repeats with their period (RIFLEx's diagnosis of repetition
  under plain extrapolation and NTK); none for PI and RIFLEx;
* ``top_ratio``: ``theta'_1 / theta_1``, the finest frequency after the rule (< 1 means local detail is blurred:
  PI slow motion);
* ``loop``: the loop length ``2pi / theta'_k`` of the RIFLEx intrinsic component ``k`` (the default rule's k);
* kernel values at offsets 1, ``L - 1`` and ``L' - 1``.

Rows: every rule of :data:`vispos.freqs.RULES` at its defaults (``yarn``: the official ramp over band indices),
plus ``yarn (paper ramp)``. The kernel omits YaRN's cos/sin factor ``mscale`` (a constant on every score).

A test length at or below the training length is accepted: every rule then leaves the bands unchanged (nothing to
extend), the kernels are drawn over ``[0, max(L, L'))`` and the table says so.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List

import torch

from ..freqs import RULES, ScalingRule, apply_rule, default_k, rope_freqs
from ..utils.io import atomic_savefig, atomic_write_json, atomic_write_text, markdown_table

__all__ = ["kernel", "explore", "add_demo_args", "run_demo"]

log = logging.getLogger(__name__)


def kernel(freqs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``K(delta) = mean_j cos(delta * theta_j)`` for ``offsets (M,)`` -> ``(M,)`` float64."""
    return torch.cos(offsets.to(torch.float64)[:, None] * freqs.to(torch.float64)[None, :]).mean(-1)


def explore(base: float = 256.0, dim: int = 16, train_len: int = 33, test_len: int = 66) -> Dict:
    """Per-rule kernels and summary rows for one axis. Returns ``{"rows": [...], "offsets": [...], "kernels": {}}``."""
    for name, v in (("train_len", train_len), ("test_len", test_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an int >= 2, got {v!r}")
    f = rope_freqs(dim, base)
    k, N_k = default_k(f, train_len=train_len)
    offsets = torch.arange(max(train_len, test_len), dtype=torch.float64)
    rows: List[dict] = []
    kernels = {}
    variants = [(name, ScalingRule(name, train_len=train_len, test_len=test_len)) for name in RULES]
    # YaRN's default is the official code's ramp (band index); the paper's ramp (rotation count) is shown next to it
    at = [n for n, _ in variants].index("yarn") + 1
    variants.insert(at, ("yarn (paper ramp)", ScalingRule("yarn", train_len=train_len, test_len=test_len,
                                                          ramp="paper")))
    for name, rule in variants:
        g = apply_rule(f, rule, base, dim)
        K = kernel(g, offsets)
        kernels[name] = K.tolist()
        changed = [j + 1 for j in range(f.numel()) if not math.isclose(float(g[j]), float(f[j]), rel_tol=1e-12)]
        two_pi = 2 * math.pi
        loops = [j + 1 for j in range(f.numel())
                 if float(g[j]) * test_len >= two_pi and float(f[j]) * train_len < two_pi]
        rows.append(dict(
            rule=name, changed=changed, new_loops=loops, top_ratio=float(g[0] / f[0]),
            loop=2 * math.pi / float(g[k - 1]), K_1=float(K[1]), K_L=float(K[train_len - 1]),
            K_Lp=float(K[test_len - 1]),
        ))
    if test_len <= train_len:
        log.warning("test length %d <= training length %d: no rule changes the frequencies (nothing to extend)",
                    test_len, train_len)
    return dict(base=base, dim=dim, train_len=train_len, test_len=test_len, k=k, N_k=N_k,
                offsets=offsets.tolist(), kernels=kernels, rows=rows)


def _table(res: Dict) -> str:
    L, L2 = res["train_len"], res["test_len"]
    head = ["rule", "changed", "new loops", "top freq ratio", f"loop of k={res['k']}", "K(1)",
            f"K({L - 1})", f"K({L2 - 1})"]
    body = [[r["rule"], ",".join(map(str, r["changed"])) or "-", ",".join(map(str, r["new_loops"])) or "-",
             r["top_ratio"], r["loop"], r["K_1"], r["K_L"], r["K_Lp"]] for r in res["rows"]]
    note = ""
    if L2 <= L:
        note = (f"\nTest length {L2} <= training length {L}: every rule is the identity here (the rules only act "
                f"when a sequence is longer than the training length).\n")
    return markdown_table(head, body) + note


def add_demo_args(p) -> None:
    p.add_argument("--out", default="results/rope", help="output folder (default results/rope; if it holds an "
                                                         "earlier run: --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the earlier results in --out")
    p.add_argument("--base", type=float, default=256.0, help="RoPE base of the axis (default 256, HunyuanVideo t)")
    p.add_argument("--dim", type=int, default=16, help="rotary dim of the axis (default 16)")
    p.add_argument("--train-len", type=int, default=33, help="training length L (default 33 latent frames)")
    p.add_argument("--test-len", type=int, default=66, help="test length L' (default 66)")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="accepted for `vispos demo all`; no effect")


OWNED = ["rope_kernel.png", "table.md", "results.json"]


def run_demo(args) -> int:
    from ..utils.outdir import check_out, results_folder

    res = explore(args.base, args.dim, args.train_len, args.test_len)  # bad lengths fail before the folder
    overwrite = bool(getattr(args, "overwrite", False))
    check_out(args.out, overwrite=overwrite, owned=OWNED)
    with results_folder(args.out, overwrite=overwrite, owned=OWNED) as out:
        return _write(out, res)


def _write(out, res) -> int:
    table = _table(res)
    atomic_write_text(out / "table.md", table)
    atomic_write_json(out / "results.json", res)
    print(table)
    from .plots import matplotlib_or_hint

    if matplotlib_or_hint(out / "rope_kernel.png") is None:
        print(f"wrote {out / 'table.md'}, {out / 'results.json'}")
        return 0
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, K in res["kernels"].items():
        ax.plot(res["offsets"], K, label=name, lw=1.5)
    ax.axvline(res["train_len"] - 1, color="k", ls="--", lw=1)
    if res["test_len"] != res["train_len"]:
        ax.axvline(res["test_len"] - 1, color="grey", ls=":", lw=1)
        ax.text(res["test_len"] - 1, 0.9, " test length", va="top", fontsize=8)
    ax.text(res["train_len"] - 1, 1.0, " train length", va="top", fontsize=8)
    ax.set_xlabel("relative offset (tokens / frames)")
    ax.set_ylabel("score kernel K(offset)")
    ax.set_title(f"RoPE kernel per scaling rule (base {res['base']:g}, dim {res['dim']}, "
                 f"L={res['train_len']} -> L'={res['test_len']})")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out / "rope_kernel.png", dpi=120)
    print(f"wrote {out / 'rope_kernel.png'}, {out / 'table.md'}, {out / 'results.json'}")
    return 0


def _main():  # pragma: no cover - convenience
    import argparse

    p = argparse.ArgumentParser()
    add_demo_args(p)
    return run_demo(p.parse_args())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
