"""Regenerate every demo number the README and docs quote, from the demos' own ``results.json`` files.

The docs hold the demo tables between marker comments ``<!-- demo-table:NAME begin -->`` and
``<!-- demo-table:NAME end -->``; this script rewrites what lies between them from the results of a run, so no demo
number in the docs is typed by hand:

    vispos demo all --out results --threads 1                       # rope, resolution, video demos
    vispos train resolution --config configs/resolution/absolute_cpu.yaml --out results/resolution_absolute
    vispos eval resolution --config configs/resolution/eval_example.yaml     # -> results/resolution_eval
    PYTHONPATH=. python benchmarks/demo_tables.py --results results --record   # rewrite the docs, keep the inputs
    PYTHONPATH=. python benchmarks/demo_tables.py --check               # docs == the recorded results? (exit 1 if not)

``--record`` also copies the parts of each ``results.json`` that the tables use (no per-video rows, no kernels) to
``benchmarks/demo_results/`` (with ``--note``, how the run was made, in ``run.json``), so ``tests/test_demo_tables.py`` can check that the committed docs are exactly this
script's output for the recorded run. A missing results folder leaves its blocks as they are (with a note on
stderr) unless ``--strict``.

Blocks (file: name):
  README.md: ``resolution-headline`` (points from the training size, mean of the seeds), ``demo-timing``
  docs/resolution.md: ``resolution-demo``, ``resolution-papers`` (the papers' findings, the demo's numbers and a
  verdict computed from them), ``resolution-absolute``, ``resolution-eval-example``
  docs/video.md: ``video-demo``;  docs/rope.md: ``rope-explorer``
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "benchmarks" / "demo_results"
#: results sub-folder of each demo (under ``--results``) and the recorded file name
SOURCES = {"resolution": "resolution", "absolute": "resolution_absolute", "eval_example": "resolution_eval",
           "video": "video", "rope": "rope"}
#: which document holds which blocks, and the source each block needs
BLOCKS = {
    "README.md": {"resolution-headline": "resolution", "demo-timing": "*"},
    "docs/resolution.md": {"resolution-demo": "resolution", "resolution-papers": "resolution",
                           "resolution-absolute": "absolute", "resolution-eval-example": "eval_example"},
    "docs/video.md": {"video-demo": "video"},
    "docs/rope.md": {"rope-explorer": "rope"},
}
_MARK = "<!-- demo-table:{name} {which} -->"


# ---- reading results ------------------------------------------------------------------------------------------------
def _trim(kind: str, res: Dict[str, Any], demo: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The parts of a results.json that the tables use (what ``--record`` keeps)."""
    if kind == "rope":
        return {k: res[k] for k in ("base", "dim", "train_len", "test_len", "k", "N_k", "rows")}
    if kind == "video":
        keep = ("mode", "environment", "config", "train_len", "lengths", "temporal_rope", "riflex_k_used",
                "identified", "aggregate", "generate_wall_s")
        out = {k: res.get(k) for k in keep}
        out["demo"] = None if demo is None else {k: demo.get(k) for k in ("scale", "train_wall_s", "total_wall_s")}
        return out
    keep = ("command", "data", "task", "num_classes", "chance", "sizes", "train_size", "train_sizes", "variants",
            "rows", "summary", "deltas", "wall_time_s", "environment", "warnings")
    out = {k: res.get(k) for k in keep}
    out["rows"] = [{k: r.get(k) for k in ("variant", "seed", "size", "n", "correct1", "top1")} for r in res["rows"]]
    return out


def load_results(results_dir: Path) -> Dict[str, Dict[str, Any]]:
    """``{kind: trimmed results}`` for every demo whose ``results.json`` is under ``results_dir``."""
    out = {}
    for kind, sub in SOURCES.items():
        f = Path(results_dir) / sub / "results.json"
        if not f.is_file():
            continue
        res = json.loads(f.read_text())
        demo = None
        if kind == "video" and (f.parent / "demo.json").is_file():
            demo = json.loads((f.parent / "demo.json").read_text())
        out[kind] = _trim(kind, res, demo)
    return out


def load_recorded(folder: Path = RECORDED) -> Dict[str, Dict[str, Any]]:
    """The recorded results (``{kind: trimmed results}``), and under ``"_run"`` the run's note (``run.json``)."""
    out = {kind: json.loads((Path(folder) / f"{kind}.json").read_text())
           for kind in SOURCES if (Path(folder) / f"{kind}.json").is_file()}
    if (Path(folder) / "run.json").is_file():
        out["_run"] = json.loads((Path(folder) / "run.json").read_text())
    return out


# ---- numbers --------------------------------------------------------------------------------------------------------
def _size_key(s) -> str:
    return str(s)


def per_seed_top1(res) -> Dict[str, Dict[int, Dict[str, float]]]:
    """``{variant: {seed: {size: top-1 in %}}}`` from the rows."""
    out: Dict[str, Dict[int, Dict[str, float]]] = {}
    for r in res["rows"]:
        out.setdefault(r["variant"], {}).setdefault(r["seed"], {})[_size_key(r["size"])] = 100.0 * r["top1"]
    return out


def _mean_std(vals: Sequence[float]) -> Tuple[float, float]:
    vals = list(vals)
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def delta(res, variant: str, size: str, minus: Optional[str] = None) -> List[float]:
    """Per seed: top-1 at ``size`` minus top-1 at the training size (points); with ``minus`` (another variant):
    that variant's change subtracted, seed by seed (``d_variant - d_minus``)."""
    ts = _size_key(res["train_size"])
    per = per_seed_top1(res)
    out = []
    for seed, by in sorted(per[variant].items()):
        d = by[size] - by[ts]
        if minus is not None:
            o = per[minus][seed]
            d -= o[size] - o[ts]
        out.append(d)
    return out


def ratio_label(size: str, train_size: str) -> str:
    r = int(str(size).split("x")[0]) / int(str(train_size).split("x")[0])
    return f"{r:.2g}x"


def _fmt_pm(vals: Sequence[float], sign: bool = True) -> str:
    m, s = _mean_std(vals)
    return (f"{m:+.1f}" if sign else f"{m:.1f}") + (f" ± {s:.1f}" if len(vals) > 1 else "")


def _minus(text: str) -> str:
    return text.replace("-", "−")


def _md(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


# ---- blocks: resolution ---------------------------------------------------------------------------------------------
def _other_sizes(res) -> List[str]:
    ts = _size_key(res["train_size"])
    return [s for s in res["sizes"] if s != ts]


def resolution_headline(res) -> str:
    """README: mean change (points) from the training size per PE and size ratio."""
    sizes = _other_sizes(res)
    ts = res["train_size"]
    rows = [[v] + [_minus(f"{_mean_std(delta(res, v, s))[0]:+.1f}") for s in sizes] for v in res["summary"]]
    n = len(next(iter(per_seed_top1(res).values())))
    return (f"Resolution demo headline (top-1 change in points from the {ts} px training size, mean of {n} seeds; "
            f"the papers' findings and the verdicts beside them in [docs/resolution.md](docs/resolution.md#demo-results-cpu)):\n\n"
            + _md(["PE"] + [ratio_label(s, ts) for s in sizes], rows))


def resolution_demo(res) -> str:
    """docs/resolution.md: top-1 mean ± std per PE and size, the change from the training size in brackets."""
    ts = _size_key(res["train_size"])
    per = per_seed_top1(res)
    seeds = sorted(next(iter(per.values())))
    n_test = sorted({r["n"] for r in res["rows"]})
    header = ["PE"] + [f"{ratio_label(s, ts)} ({s} px)" for s in res["sizes"]]
    rows = []
    for v in res["summary"]:
        cells = [v]
        for s in res["sizes"]:
            top = _fmt_pm([per[v][k][s] for k in seeds], sign=False)
            cells.append(top if s == ts else f"{top} ({_minus(f'{_mean_std(delta(res, v, s))[0]:+.1f}')})")
        rows.append(cells)
    return (f"Top-1 (%) mean ± std over seeds {', '.join(map(str, seeds))} ({'/'.join(map(str, n_test))} test "
            f"crops per cell, chance {100 * res['chance']:.1f} %); in brackets the change from the training size "
            f"in points, paired by seed (`table.md` has it with its spread):\n\n" + _md(header, rows))


def at(res, ratio: float) -> str:
    """The test size whose ratio to the training size is nearest ``ratio``."""
    ts = int(str(res["train_size"]).split("x")[0])
    return min(res["sizes"], key=lambda s: abs(int(str(s).split("x")[0]) / ts - ratio))


def _loses_most_at_small(r) -> List[float]:
    """Per seed: ape's change at 0.43x minus its lowest change at the larger sizes (< 0: 0.43x loses most)."""
    small = at(r, 0.43)
    others = [s for s in _other_sizes(r) if s != small]
    return [d - min(o) for d, o in zip(delta(r, "ape", small), zip(*[delta(r, "ape", s) for s in others]))]


#: The papers' findings (ImageNet-1k, trained at 224 px; REFERENCES.md "Published resolution anchors"), each with
#: the demo quantity that tests it (per seed, in points) and the sign the paper's finding predicts for it.
FINDINGS: List[Dict[str, Any]] = [
    dict(finding="ResFormer Tab. 1: APE (DeiT-S) loses most at 0.43x", paper="−62.3 (96 px); −1.7 to −16.0 above",
         quantity="ape at 0.43x minus ape's lowest change above", f=_loses_most_at_small, sign=-1),
    dict(finding="ResFormer Tab. 1: APE loses more at 3x than at 1.7x", paper="−16.0 (640 px) vs −1.7 (384 px)",
         quantity="ape: change at 3x minus change at 1.7x",
         f=lambda r: [a - b for a, b in zip(delta(r, "ape", at(r, 3.0)), delta(r, "ape", at(r, 1.7)))], sign=-1),
    dict(finding="RoPE-ViT (ViT-S): RoPE-Mixed gains at 1.7x", paper="+0.9 (384 px)",
         quantity="rope_mixed at 1.7x", f=lambda r: delta(r, "rope_mixed", at(r, 1.7)), sign=+1),
    dict(finding="RoPE-ViT (ViT-S): APE loses at 1.7x", paper="−1.0 (384 px)",
         quantity="ape at 1.7x", f=lambda r: delta(r, "ape", at(r, 1.7)), sign=-1),
    dict(finding="RoPE-ViT (ViT-S): RoPE-Axial loses at 1.7x", paper="−0.9 (384 px)",
         quantity="rope_axial at 1.7x", f=lambda r: delta(r, "rope_axial", at(r, 1.7)), sign=-1),
    dict(finding="RoPE-ViT (ViT-S): RoPE-Mixed drops less than APE at 2.3x", paper="Mixed −1.8 vs APE −5.0 (512 px)",
         quantity="rope_mixed − ape at 2.3x", f=lambda r: delta(r, "rope_mixed", at(r, 2.3), "ape"), sign=+1),
    dict(finding="RoPE-ViT (ViT-S): RoPE-Mixed drops less than RoPE-Axial at 2.3x",
         paper="Mixed −1.8 vs Axial −4.8 (512 px)", quantity="rope_mixed − rope_axial at 2.3x",
         f=lambda r: delta(r, "rope_mixed", at(r, 2.3), "rope_axial"), sign=+1),
    dict(finding="CPVT Tab. 2 (Ti): PEG drops less than APE at 1.7x", paper="PEG +0.8 vs APE −1.0 (384 px)",
         quantity="peg − ape at 1.7x", f=lambda r: delta(r, "peg", at(r, 1.7), "ape"), sign=+1),
    dict(finding="CPVT Tab. 2 (Ti): PEG drops less than APE at 2.3x", paper="PEG −2.1 vs APE −6.3 (512 px)",
         quantity="peg − ape at 2.3x", f=lambda r: delta(r, "peg", at(r, 2.3), "ape"), sign=+1),
]
RESOLVED = "its mean is further from 0 than its std over seeds"


def verdict(vals: Sequence[float], sign: int) -> str:
    """``yes`` (the paper's sign, resolved), ``no`` (the opposite sign, resolved) or ``not resolved``, where
    resolved means :data:`RESOLVED`."""
    m, s = _mean_std(vals)
    if abs(m) <= s or m == 0:
        return "not resolved"
    return "yes" if (m > 0) == (sign > 0) else "no"


def resolution_papers(res) -> str:
    """docs/resolution.md: each paper finding, the demo's number (mean ± std over seeds) and the verdict."""
    order = [at(res, x) for x in (0.43, 1.7, 2.3, 3.0)]
    rows, counts = [], {"yes": 0, "no": 0, "not resolved": 0}
    for fd in FINDINGS:
        vals = fd["f"](res)
        v = verdict(vals, fd["sign"])
        counts[v] += 1
        rows.append([fd["finding"], fd["paper"], f"{fd['quantity']}: {_minus(_fmt_pm(vals))}", v])
    return (_md(["finding (paper, ImageNet, points from 224 px)", "paper",
                 f"vispos demo (points from {res['train_size']} px, mean ± std over seeds)", "agrees?"], rows)
            + f"\nVerdicts: **{counts['yes']} agree, {counts['no']} disagree, {counts['not resolved']} not "
              f"resolved** of {len(FINDINGS)} (resolved: {RESOLVED}; the size ratios are the demo's "
              f"{', '.join(ratio_label(s, res['train_size']) for s in order)}).\n")


def _plain_table(res, what: str) -> str:
    from vispos.eval.resolution.results import results_table

    one_seed = len({r["seed"] for r in res["rows"]}) == 1  # the change table would repeat the accuracies
    return (results_table({**res, "deltas": None} if one_seed else res)
            + f"\n{what}: wall time {res['wall_time_s']:.0f} s, {_env(res.get('environment'))}{_note(res)}.\n")


def resolution_absolute(res) -> str:
    return _plain_table(res, "Run")


def resolution_eval_example(res) -> str:
    n = sorted({r["n"] for r in res["rows"]})
    return _plain_table(res, f"Evaluation ({'/'.join(map(str, n))} test images per cell)")


# ---- blocks: video, rope, timing ------------------------------------------------------------------------------------
def video_demo(res) -> str:
    from vispos.eval.frames.results import TABLE_KEYS, table_header, table_md

    head = table_header(res["config"], res["train_len"], max(res["lengths"]), res["temporal_rope"],
                        res["riflex_k_used"], res["identified"])
    d = res.get("demo") or {}
    tail = ""
    if d.get("train_wall_s") is not None:
        tail = (f"\nVideo demo wall time {d['total_wall_s']:.0f} s: training {d['train_wall_s']:.0f} s, generation "
                f"and scoring {res['generate_wall_s']:.0f} s; {_env(res.get('environment'))}{_note(res)}.\n")
    return head + table_md(res["aggregate"], TABLE_KEYS) + tail


def rope_explorer(res) -> str:
    from vispos.eval.rope_explorer import _table

    return _table(res)


def _note(res) -> str:
    return f"; {res['_note']}" if res.get("_note") else ""


def _env(env: Optional[Dict[str, Any]]) -> str:
    if not env:
        return "environment not recorded"
    cpu = env.get("cpu") or {}
    simd = cpu.get("simd") or []
    kind = "AVX-512" if any(s.startswith("avx512") for s in simd) else ("AVX2" if "avx2" in simd else "no AVX2")
    dev = env.get("gpu") or f"{cpu.get('model', 'CPU')} ({cpu.get('cores', '?')} cores, {kind})"
    return f"torch {env.get('torch')} on {dev}, {env.get('torch_threads')} torch thread(s)"


def demo_timing(results: Dict[str, Dict[str, Any]]) -> str:
    parts = []
    if "resolution" in results:
        parts.append(f"resolution demo {results['resolution']['wall_time_s']:.0f} s")
    v = results.get("video")
    if v and (v.get("demo") or {}).get("total_wall_s") is not None:
        parts.append(f"video demo {v['demo']['total_wall_s']:.0f} s")
    env = (results.get("resolution") or results.get("video") or {}).get("environment")
    note = (results.get("_run") or {}).get("note")
    return (f"Wall times of the recorded run: {', '.join(parts)}; {_env(env)}" + (f"; {note}" if note else "")
            + ".\n")


RENDER: Dict[str, Callable] = {
    "resolution-headline": resolution_headline, "resolution-demo": resolution_demo,
    "resolution-papers": resolution_papers, "resolution-absolute": resolution_absolute,
    "resolution-eval-example": resolution_eval_example, "video-demo": video_demo, "rope-explorer": rope_explorer,
}


def render_blocks(results: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """``{block name: text}`` for every block whose source is in ``results``."""
    out = {}
    have = [k for k in results if k in SOURCES]
    for blocks in BLOCKS.values():
        for name, src in blocks.items():
            if src == "*":
                if have:
                    out[name] = demo_timing(results)
            elif src in results:
                out[name] = RENDER[name]({**results[src], "_note": (results.get("_run") or {}).get("note")})
    return out


# ---- rewriting the docs ---------------------------------------------------------------------------------------------
def find_block(text: str, name: str) -> Tuple[int, int]:
    """``(start, end)`` of the text between the markers of ``name``; ``ValueError`` unless each occurs once, in
    order."""
    b, e = _MARK.format(name=name, which="begin"), _MARK.format(name=name, which="end")
    if text.count(b) != 1 or text.count(e) != 1:
        raise ValueError(f"block {name!r}: expected one {b!r} and one {e!r}, found {text.count(b)} and "
                         f"{text.count(e)}")
    i, j = text.index(b) + len(b), text.index(e)
    if j < i:
        raise ValueError(f"block {name!r}: the end marker comes before the begin marker")
    return i, j


def replace_block(text: str, name: str, body: str) -> str:
    i, j = find_block(text, name)
    return text[:i] + "\n" + body.rstrip("\n") + "\n" + text[j:]


def block_text(text: str, name: str) -> str:
    i, j = find_block(text, name)
    return text[i:j].strip("\n")


def rewrite(root: Path, blocks: Dict[str, str], strict: bool = False) -> Dict[str, str]:
    """The new text of each document (not written)."""
    out = {}
    for doc, names in BLOCKS.items():
        text = (Path(root) / doc).read_text()
        for name in names:
            if name in blocks:
                text = replace_block(text, name, blocks[name])
            else:
                find_block(text, name)  # the markers must be there anyway
                if strict:
                    raise ValueError(f"no results for block {name!r} of {doc}")
                print(f"demo_tables: no results for {name!r} ({doc}): left as it is", file=sys.stderr)
        out[doc] = text
    return out


def record(results_dir: Path, dest: Path = RECORDED, note: Optional[str] = None) -> List[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    items = dict(load_results(results_dir))
    if note:
        items["run"] = {"note": note}
    for kind, res in items.items():
        p = dest / f"{kind}.json"
        p.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
        written.append(p)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, help="results root of the demos (default: the recorded results in "
                                                 "benchmarks/demo_results)")
    ap.add_argument("--record", action="store_true", help="copy the used parts of the results to "
                                                          "benchmarks/demo_results (with --results)")
    ap.add_argument("--note", help="how the run was made, printed after its wall times (e.g. 'a shared 2-core "
                                   "machine under a load average of 6'); recorded with --record")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a document differs")
    ap.add_argument("--strict", action="store_true", help="fail if a block has no results")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root holding the documents")
    args = ap.parse_args(argv)
    if args.record and args.results is None:
        ap.error("--record needs --results DIR")
    results = load_results(args.results) if args.results is not None else load_recorded()
    if args.note:
        results["_run"] = {"note": args.note}
    if not [k for k in results if k in SOURCES]:
        print(f"demo_tables: no results.json under {args.results or RECORDED}", file=sys.stderr)
        return 2
    new = rewrite(args.root, render_blocks(results), strict=args.strict)
    changed = [doc for doc, text in new.items() if (args.root / doc).read_text() != text]
    if args.check:
        for doc in changed:
            print(f"demo_tables: {doc} differs from the results", file=sys.stderr)
        return 1 if changed else 0
    if args.record:
        for p in record(args.results, note=args.note):
            print(f"recorded {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    for doc in changed:
        (args.root / doc).write_text(new[doc])
        print(f"rewrote {doc}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
