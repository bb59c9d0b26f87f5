"""``vispos bench``: side-by-side benchmarks against timm and the eager reference, in one process, as ratios.

Suites (``--suite``, default all):

* ``rope``: RoPE on q and k (2D and 3D, both pairings): timm ``apply_rot_embed_cat`` (full-width tables built once,
  outside the timing), the vispos eager reference, the vispos default path (``auto``: fast torch on CPU, Triton on
  CUDA) and, unless ``--quick``, the reference formula under ``torch.compile``; achieved GB/s and the share of the
  copy bandwidth measured in the same run (a ``copy_`` of q and k).
* ``vit``: whole ViT-S/16 forward: timm APE, timm ``vit_small_patch16_rope_224`` (axial) and ``..._rope_mixed_224``,
  vispos APE / RoPE axial / RoPE mixed (``vispos.create_model``), random weights, ``eval()``, no grad.
* ``relpos``: decomposed rel-pos attention at 32×32 and 64×64 token grids: timm SAM ``Attention(use_rel_pos=True)``
  vs vispos ``Attention`` + ``rel_decomposed`` (default path), and the bias paths ``fold`` / ``chunked`` / ``dense``
  on the same q, k, v and factors; forward (no grad) and forward+backward; time and peak extra memory.
* ``ape``: dynamic-size APE at a non-training resolution: timm ``dynamic_img_size=True`` vs vispos ``ape``.

CPU timings use ``torch.utils.benchmark`` with ``--threads`` set explicitly; CUDA timings use
``triton.testing.do_bench`` (CUDA events) when Triton is present. Peak memory: CUDA ``max_memory_allocated``; CPU
peak resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, with glibc's mmap threshold pinned
so large buffers are returned to the OS), minus the resident set before the call.

Writes ``bench.json`` and ``bench.md`` under ``--out``; prints the tables.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import time
from typing import Callable, Dict, List, Optional

import torch

SUITES = ("rope", "vit", "relpos", "ape")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/bench", help="results folder (bench.json, bench.md)")
    p.add_argument("--quick", action="store_true", help="small shapes and short timing (harness check)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (set explicitly)")
    p.add_argument("--suite", action="append", choices=SUITES, help="run only these suites (repeatable)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of timing per measurement")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")


# ---- measurement ----------------------------------------------------------------------------------------------------
class Timer:
    def __init__(self, device: torch.device, threads: int, min_time: float):
        self.device, self.threads, self.min_time = device, threads, min_time

    def __call__(self, fn: Callable[[], object]) -> float:
        """Median seconds per call."""
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            try:
                import triton.testing

                return triton.testing.do_bench(fn, warmup=25, rep=max(50, int(self.min_time * 1000)),
                                               return_mode="median") * 1e-3
            except ImportError:
                return self._cuda_events(fn)
        from torch.utils.benchmark import Timer as TBTimer

        m = TBTimer("fn()", globals={"fn": fn}, num_threads=self.threads).blocked_autorange(min_run_time=self.min_time)
        return m.median

    def _cuda_events(self, fn) -> float:
        times = []
        for _ in range(max(10, int(self.min_time * 200))):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) * 1e-3)
        times.sort()
        return times[len(times) // 2]


def _pin_malloc() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB: big buffers are mmapped and returned on free
    except OSError:
        pass


def _trim_malloc() -> None:
    """Return glibc's free heap memory to the OS (``malloc_trim(0)`` also drops the pages of free chunks inside the
    heap). Without it, a buffer that fits a free chunk left resident by earlier work costs no new RSS and the
    measured peak reads 0."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (no malloc_trim): the peak may read low there
        pass


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory above the level before ``fn()`` (bytes); ``None`` where it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    _trim_malloc()  # free heap chunks are made non-resident, so reusing one for fn() shows up in the peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _rss("VmHWM")  # read after the reset: memory other threads free in between cannot lower the peak's base
    fn()
    return max(_rss("VmHWM") - base, 0)


def env_info(device: torch.device, threads: int) -> Dict[str, object]:
    import timm

    info = dict(torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
                device=str(device), threads=threads, machine=platform.machine())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor()
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        info["cpu"] = f"{cpu} ({os.cpu_count()} logical cores)"
    return info


# ---- suites ---------------------------------------------------------------------------------------------------------
def _qk_packed(B, H, N, D, dtype, device):
    x = torch.randn(B, N, 3, H, D, dtype=dtype, device=device)
    q, k, _ = x.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k


def _timm_emb(cos, sin, pairing):
    rep = (lambda t: t.repeat_interleave(2, -1)) if pairing == "interleaved" else (lambda t: torch.cat([t, t], -1))
    return torch.cat([rep(sin), rep(cos)], -1)


def bench_rope(timer: Timer, device, dtype, quick: bool, compile_: bool) -> List[dict]:
    if device.type == "cuda":
        shapes = [("2D ViT-B@1024 (anchor)", 32, 12, (64, 64), 64), ("3D Wan-like 480p 81f", 1, 12, (21, 30, 52), 128)]
    else:
        shapes = [("2D ViT-S@224 (CPU goal)", 8, 6, (14, 14), 64),
                  ("3D Wan-like (few frames)", 1, 12, (3 if quick else 5, 30, 52), 128)]
    rows = []
    for name, B, H, grid, D in shapes:
        rows += _rope_shape(timer, device, dtype, compile_, name, B, H, math.prod(grid), D)
    return rows


def _rope_shape(timer, device, dtype, compile_, name, B, H, N, D) -> List[dict]:
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    from .ops.rope import apply_rope, apply_rope_qk

    q, k = _qk_packed(B, H, N, D, dtype, device)
    ang = torch.rand(N, D // 2, device=device) * 6
    cos, sin = ang.cos(), ang.sin()
    nbytes = 4 * q.numel() * q.element_size() + 2 * cos.numel() * cos.element_size()
    qc, kc = q.contiguous(), k.contiguous()
    oq, ok = torch.empty_like(qc), torch.empty_like(kc)
    t_copy = timer(lambda: (oq.copy_(qc), ok.copy_(kc)))
    rows = []
    for pairing in ("interleaved", "half"):
        rows += _rope_pairing(timer, device, compile_, f"{name} B{B} H{H} N{N} D{D} {pairing}", q, k, cos, sin,
                              pairing, nbytes, t_copy, apply_rot_embed_cat, apply_rope, apply_rope_qk)
    return rows


def _rope_pairing(timer, device, compile_, workload, q, k, cos, sin, pairing, nbytes, t_copy, timm_fn, ref_fn,
                  qk_fn) -> List[dict]:
    emb = _timm_emb(cos, sin, pairing)
    half = pairing == "half"
    cands = {
        "timm apply_rot_embed_cat": lambda: (timm_fn(q, emb, half), timm_fn(k, emb, half)),
        "vispos reference": lambda: (ref_fn(q, cos, sin, pairing), ref_fn(k, cos, sin, pairing)),
        "vispos default": lambda: qk_fn(q, k, cos, sin, pairing),
    }
    if compile_:
        cf = torch.compile(lambda q_, k_, c_, s_: qk_fn(q_, k_, c_, s_, pairing), dynamic=False)
        cands["vispos compiled"] = lambda: cf(q, k, cos, sin)
    times = {n: timer(f) for n, f in cands.items()}
    base = times["timm apply_rot_embed_cat"]
    goal = ">= 2.0x timm (CPU)" if device.type == "cpu" else ">= 80% of copy bandwidth"
    return [dict(suite="rope", workload=workload, path=n, ms=t * 1e3, gbps=nbytes / t / 1e9, copy_share=t_copy / t,
                 vs_timm=base / t, goal=goal if n == "vispos default" else "") for n, t in times.items()]


def _vit_models(quick: bool):
    import timm

    import vispos

    kw = dict(pretrained=False, num_classes=0)
    if quick:
        kw["depth"] = 2
    return [
        ("timm APE vit_small_patch16_224", lambda: timm.create_model("vit_small_patch16_224", **kw)),
        ("timm RoPE vit_small_patch16_rope_224", lambda: timm.create_model("vit_small_patch16_rope_224", **kw)),
        ("timm RoPE-mixed vit_small_patch16_rope_mixed_224",
         lambda: timm.create_model("vit_small_patch16_rope_mixed_224", **kw)),
        ("vispos ape", lambda: vispos.create_model("vit_small_patch16_224", pe="ape", **kw)),
        ("vispos rope_axial", lambda: vispos.create_model("vit_small_patch16_224", pe="rope_axial", **kw)),
        ("vispos rope_mixed", lambda: vispos.create_model("vit_small_patch16_224", pe="rope_mixed", **kw)),
    ]


def bench_vit(timer: Timer, device, dtype, quick: bool) -> List[dict]:
    B = (2 if quick else 8) if device.type == "cpu" else 256
    x = torch.randn(B, 3, 224, 224, device=device)
    rows, times = [], {}
    amp = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" and dtype != torch.float32 else None
    for name, make in _vit_models(quick):
        times[name] = _time_model(timer, make().to(device).eval(), x, amp)
    ape = times["timm APE vit_small_patch16_224"]
    for name, t in times.items():
        rows.append(dict(suite="vit", workload=f"ViT-S/16 224px B{B}{' depth2' if quick else ''} forward", path=name,
                         ms=t * 1e3, img_s=B / t, vs_timm_ape=ape / t,
                         vs_timm_rope=times["timm RoPE vit_small_patch16_rope_224"] / t,
                         goal="vispos rope_axial >= timm RoPE (CPU); >= 0.95x APE (GPU)"
                         if name == "vispos rope_axial" else ""))
    return rows


def _time_model(timer, m, x, amp) -> float:
    with torch.no_grad():
        if amp is None:
            return timer(lambda: m(x))
        with amp:
            return timer(lambda: m(x))


def bench_relpos(timer: Timer, device, dtype, quick: bool) -> List[dict]:
    if device.type == "cpu":
        B, H, D, grids = 1, 2, 64, ([(32, 32)] if quick else [(32, 32), (64, 64)])
    else:
        B, H, D, grids = 8, 12, 64, [(32, 32), (64, 64)]
    rows = []
    for g in grids:
        rows += _relpos_grid(timer, device, dtype, B, H, D, g)
    return rows


def _relpos_grid(timer, device, dtype, B, H, D, g) -> List[dict]:
    from timm.models.vision_transformer_sam import Attention as SamAttention

    from .attention import Attention, attend
    from .grid import GridLayout
    from .ops.attention import DecomposedBias, sdpa
    from .registry import build_pe

    rows = []
    N = g[0] * g[1]
    dim = H * D
    lay = GridLayout(g)
    dd = dict(device=device, dtype=dtype)
    sam = SamAttention(dim, H, use_rel_pos=True, input_size=g).to(**dd)
    pe = build_pe("rel_decomposed", head_dim=D, depth=1, grid=g, init_std=0.02).to(**dd)
    ours = Attention(dim, H).to(**dd)
    with torch.no_grad():
        ours.load_state_dict({k_: v for k_, v in sam.state_dict().items() if not k_.startswith("rel_pos")},
                             strict=False)
    x = torch.randn(B, g[0], g[1], dim, **dd)
    xf = x.flatten(1, 2)
    q, k, v = (torch.randn(B, H, N, D, **dd) for _ in range(3))
    bias = pe.attn_bias(q, lay, 0)
    factors = [f.detach() for f in bias.factors]

    def mk_bias(fs):
        return DecomposedBias(list(fs), bias.q_layout, bias.k_layout)

    def fwd_bwd(fn, leaves):
        def run():
            out = fn()
            out.float().sum().backward()
            for t in leaves:
                t.grad = None
        return run

    def path(qq, kk, vv, fs, impl):
        return lambda: sdpa(qq, kk, vv, mk_bias(fs), impl=impl, chunk_size=512)

    cands_fwd = {
        "timm SAM Attention (dense bias)": lambda: sam(x),
        "vispos Attention + rel_decomposed": lambda: ours(xf, lay, pe),
        "sdpa no bias": lambda: sdpa(q, k, v),
    }
    for impl in ("fold", "chunked", "dense"):
        cands_fwd[f"sdpa {impl}"] = path(q, k, v, factors, impl)
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    fg = [f.clone().requires_grad_(True) for f in factors]
    xg = x.clone().requires_grad_(True)
    xfg = xf.clone().requires_grad_(True)
    cands_bwd = {
        "timm SAM Attention (dense bias)": fwd_bwd(lambda: sam(xg), [xg, *sam.parameters()]),
        "vispos Attention + rel_decomposed": fwd_bwd(lambda: attend(*_split_qkv(ours, xfg), pe, lay),
                                                     [xfg, *ours.parameters(), *pe.parameters()]),
        "sdpa no bias": fwd_bwd(lambda: sdpa(qg, kg, vg), [qg, kg, vg]),
    }
    for impl in ("fold", "chunked", "dense"):
        cands_bwd[f"sdpa {impl}"] = fwd_bwd(path(qg, kg, vg, fg, impl), [qg, kg, vg, *fg])
    for mode, cands in (("forward", cands_fwd), ("forward+backward", cands_bwd)):
        res = {}
        for n, f in cands.items():
            with torch.no_grad() if mode == "forward" else torch.enable_grad():
                mem = peak_extra_bytes(f, device)
                t = timer(f)
            res[n] = (t, mem)
        t0 = res["timm SAM Attention (dense bias)"][0]
        tn = res["sdpa no bias"][0]
        md = res["sdpa dense"][1]
        for n, (t, mem) in res.items():
            rows.append(dict(suite="relpos", workload=f"{g[0]}x{g[1]} tokens B{B} H{H} D{D} {mode}", path=n,
                             ms=t * 1e3, peak_mb=None if mem is None else mem / 2**20, vs_timm=t0 / t,
                             vs_nobias_time=t / tn, mem_vs_dense=None if (mem is None or not md) else mem / md,
                             goal="<= 0.25x dense memory (CPU); <= 2x no-bias time, <= 0.2 GB (GPU)"
                             if n == "sdpa fold" else ""))
    return rows


def _split_qkv(attn, x):
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def bench_ape(timer: Timer, device, dtype, quick: bool) -> List[dict]:
    import timm

    import vispos

    kw = dict(pretrained=False, num_classes=0, dynamic_img_size=True, depth=2 if quick else 12)
    B = 2 if device.type == "cpu" else 64
    size = 320
    x = torch.randn(B, 3, size, size, device=device)
    models = {
        "timm vit_small dynamic_img_size": timm.create_model("vit_small_patch16_224", **kw),
        "vispos ape (cached resample)": vispos.create_model("vit_small_patch16_224", pe="ape", **kw),
    }
    times = {n: _time_model(timer, m.to(device).eval(), x, None) for n, m in models.items()}
    base = times["timm vit_small dynamic_img_size"]
    return [dict(suite="ape", workload=f"ViT-S/16 trained 224, run {size}px B{B}{' depth2' if quick else ''}",
                 path=n, ms=t * 1e3, vs_timm=base / t, goal=">= 1.0x timm" if n.startswith("vispos") else "")
            for n, t in times.items()]


# ---- output ---------------------------------------------------------------------------------------------------------
_COLS = ("workload", "path", "ms", "vs_timm", "gbps", "copy_share", "img_s", "vs_timm_ape", "vs_timm_rope",
         "peak_mb", "mem_vs_dense", "vs_nobias_time", "goal")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def to_markdown(rows: List[dict], info: dict, command: str) -> str:
    out = [f"command: `{command}`", "", "environment: " + ", ".join(f"{k}={v}" for k, v in info.items()), ""]
    for suite in SUITES:
        rs = [r for r in rows if r["suite"] == suite]
        if not rs:
            continue
        cols = [c for c in _COLS if any(c in r for r in rs)]
        out += [f"### {suite}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rs]
        out.append("")
    return "\n".join(out)


def _argv(args) -> List[str]:
    out = []
    for k in ("out", "device", "threads", "dtype", "min_time", "quick", "no_compile", "suite"):
        v = getattr(args, k, None)
        flag = "--" + k.replace("_", "-")
        if v is None or v is False:
            continue
        if v is True:
            out.append(flag)
        elif isinstance(v, list):
            out += [f"{flag} {x}" for x in v]
        else:
            out.append(f"{flag} {v}")
    return out


def run_bench(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("vispos bench: --device cuda but CUDA is not available")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.set_num_threads(args.threads)
    _pin_malloc()
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 1.0)
    timer = Timer(device, args.threads, min_time)
    suites = args.suite or list(SUITES)
    info = env_info(device, args.threads)
    info["dtype"] = str(dtype).replace("torch.", "")
    print("vispos bench:", ", ".join(f"{k}={v}" for k, v in info.items()))
    rows: List[dict] = []
    t0 = time.time()
    for s in suites:
        if s == "rope":
            rows += bench_rope(timer, device, dtype, args.quick, not (args.quick or args.no_compile))
        elif s == "vit":
            rows += bench_vit(timer, device, dtype, args.quick)
        elif s == "relpos":
            rows += bench_relpos(timer, device, dtype, args.quick)
        elif s == "ape":
            rows += bench_ape(timer, device, dtype, args.quick)
    command = "vispos bench " + " ".join(_argv(args))
    md = to_markdown(rows, info, command)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(dict(info=info, command=command, seconds=time.time() - t0, rows=rows), f, indent=1)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0
