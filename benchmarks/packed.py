"""Variable-resolution batches (issue #17): a packed batch of 4 grid sizes vs the same tokens at one grid.

A small ViT made of vispos blocks (pre-norm ``vispos.attention.Attention`` + MLP, the PE's token hook and
``prepare``; random weights) runs, for each PE (``ape``, ``rope_axial``, ``rel_decomposed``):

* ``single``: ``B`` samples of one grid (``GridLayout``, today's path),
* ``packed``: ``B`` samples over 4 grids of (almost) the same token count, a ``PackedLayout`` padded to the longest
  (the same ``B x N`` tokens, so the ratio is the price of per-sample positions and the padding mask),

measured in one process: on CPU call by call alternately (single, packed, single, ...; the median per-call time
of each, so both see the same load of a shared machine), on CUDA with ``triton.testing.do_bench`` (best median of
``--rounds`` alternations); forward (``eval()``, no grad) and forward+backward (``train()``). Prints a Markdown
table with the ratio ``packed / single``; ``--out`` writes ``packed.json`` and ``packed.md`` there.

    .venv/bin/python benchmarks/packed.py --device cpu --threads 1 [--mix padded]
    .venv/bin/python benchmarks/packed.py --device cuda --out $OUT/packed
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

import vispos
from vispos.attention import Attention
from vispos.bench import Timer
from vispos.grid import GridLayout, PackedLayout

PES = ("ape", "rope_axial", "rel_decomposed")
#: ``--mix equal``: 4 grid sizes with the token count of 14x14 = 196 (no padding)
MIXED = ((14, 14), (12, 16), (16, 12), (7, 28))
#: ``--mix padded``: 4 grid sizes of 196, 180, 169 and 180 patches, padded to 196 slots (8 % of the slots padding)
MIXED_PADDED = ((14, 14), (12, 15), (13, 13), (10, 18))
MIXES = {"equal": MIXED, "padded": MIXED_PADDED}
SINGLE = (14, 14)


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, layout, pe, i):
        x = x + self.attn(self.n1(x), layout, pe, i)
        return x + self.mlp(self.n2(x))


class TinyViT(nn.Module):
    def __init__(self, pe, dim, heads, depth):
        super().__init__()
        self.pe = pe
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))

    def forward(self, x, layout):
        x = self.pe.forward_tokens(x, layout)
        layout = self.pe.prepare(x, layout)
        for i, blk in enumerate(self.blocks):
            x = blk(x, layout, self.pe, i)
            if i in self.pe.block_indices:
                x = self.pe.forward_block(x, layout, i)
        return x


def build(name, args, device, dtype):
    torch.manual_seed(0)
    pe = vispos.build_pe(name, dim=args.dim, num_heads=args.heads, depth=args.depth, grid=SINGLE, num_prefix=1)
    model = TinyViT(pe, args.dim, args.heads, args.depth).to(device, dtype)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_(0, 0.02)
    return model


def paired_times(timer, device, fns, rounds, min_time):
    """Seconds per call of each function. CPU: calls alternate one by one (A B A B ...) for ``rounds`` blocks of
    about ``min_time`` seconds each, so both see the same machine load; the median per-call time of each. CUDA: the
    Timer's median (``triton.testing.do_bench``), alternating ``rounds`` times, the best of each."""
    if device.type == "cuda":
        out = {}
        for _ in range(rounds):
            for k, fn in fns.items():
                out[k] = min(out.get(k, math.inf), timer(fn))
        return out
    times = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(rounds):
        start = time.perf_counter()
        while time.perf_counter() - start < min_time * len(fns):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _step(model, x, layout, inference: bool):
    if inference:
        with torch.no_grad():
            return model(x, layout)
    model(x, layout).float().square().mean().backward()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--batch", type=int, default=8, help="samples (a multiple of 4: each grid size twice for 8)")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per measurement")
    p.add_argument("--rounds", type=int, default=3, help="blocks of alternating calls (CPU) / alternations (CUDA)")
    p.add_argument("--pe", action="append", choices=PES, help="only these PEs (repeatable)")
    p.add_argument("--mix", choices=tuple(MIXES), default="equal",
                   help="equal: 4 grids of 196 patches each; padded: 196/180/169/180 patches padded to 196 slots")
    p.add_argument("--out", default=None, help="folder for packed.json / packed.md")
    args = p.parse_args(argv)
    mixed = MIXES[args.mix]
    if args.batch <= 0 or args.batch % len(MIXED):
        p.error(f"--batch must be a positive multiple of {len(MIXED)}, got {args.batch}")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.set_num_threads(args.threads)
    timer = Timer(device, args.threads, args.min_time)
    single = GridLayout(SINGLE, 1)
    packed = PackedLayout([mixed[b % len(mixed)] for b in range(args.batch)], num_prefix=1, length=math.prod(SINGLE))
    assert packed.num_tokens == single.num_tokens, (packed, single)
    rows = []
    for name in args.pe or PES:
        model = build(name, args, device, dtype)
        x = torch.randn(args.batch, single.num_tokens, args.dim, device=device, dtype=dtype)
        for mode in ("forward", "forward+backward"):
            model.train(mode != "forward")
            xi = x.detach().requires_grad_(mode != "forward")

            t = paired_times(timer, device, {"single": functools.partial(_step, model, xi, single, mode == "forward"),
                                             "packed": functools.partial(_step, model, xi, packed, mode == "forward")},
                             args.rounds, args.min_time)
            rows.append(dict(pe=name, mode=mode, single_ms=1e3 * t["single"], packed_ms=1e3 * t["packed"],
                             ratio=t["packed"] / t["single"]))
            print(f"{name:15s} {mode:17s} single {rows[-1]['single_ms']:8.2f} ms  packed "
                  f"{rows[-1]['packed_ms']:8.2f} ms  ratio {rows[-1]['ratio']:.3f}", flush=True)
    env = dict(rounds=args.rounds, min_time=args.min_time, torch=torch.__version__, python=platform.python_version(), device=str(device), dtype=str(dtype),
               threads=args.threads, batch=args.batch, dim=args.dim, heads=args.heads, depth=args.depth,
               mix=args.mix, mixed=[list(s) for s in mixed], single=list(SINGLE), tokens=single.num_tokens,
               cpu=platform.processor() or platform.machine(),
               gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    md = ["| PE | mode | single grid ms | packed 4 grids ms | packed / single |", "|---|---|---|---|---|"]
    md += [f"| `{r['pe']}` | {r['mode']} | {r['single_ms']:.2f} | {r['packed_ms']:.2f} | **{r['ratio']:.3f}x** |"
           for r in rows]
    text = "\n".join(md)
    print("\n" + " ".join(f"{k}={v}" for k, v in env.items()) + "\n\n" + text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "packed.json"), "w") as f:
            json.dump(dict(env=env, rows=rows), f, indent=1)
        with open(os.path.join(args.out, "packed.md"), "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
