"""What a result was computed with: library versions, CPU / GPU, threads, seeds (recorded in every results.json).

Floating-point results of the same code can differ between machines (AVX2 vs AVX-512 kernels, GPU models, thread
counts change reduction orders); :func:`run_environment` records what is needed to tell whether two results.json
files are comparable bit for bit.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict, List, Optional

__all__ = ["cpu_info", "run_environment"]


def cpu_info() -> Dict[str, Any]:
    """``{"model": ..., "cores": n, "simd": [...]}``: the CPU model name and its widest vector extensions (Linux reads
    ``/proc/cpuinfo``; elsewhere ``platform.processor()`` and no SIMD list)."""
    model: Optional[str] = None
    flags: List[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if model is None and line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif not flags and line.lower().startswith(("flags", "features")):
                    flags = line.split(":", 1)[1].split()
                if model is not None and flags:
                    break
    except OSError:  # not Linux: fall back to what platform knows
        pass
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx2", "fma", "sse4_2", "neon", "asimd", "sve")
    return dict(model=model or platform.processor() or platform.machine(), cores=os.cpu_count(),
                simd=[f for f in wanted if f in flags])


def run_environment(device=None, seeds=None) -> Dict[str, Any]:
    """Versions (python, vispos, torch, timm, numpy, torchvision), platform, CPU (:func:`cpu_info`), torch threads,
    the device used and, on CUDA, the GPU name, CUDA and cuDNN versions; ``seeds`` as given."""
    import numpy
    import timm
    import torch
    import torchvision

    from .. import __version__

    env: Dict[str, Any] = dict(
        python=sys.version.split()[0], vispos=__version__, torch=torch.__version__, timm=timm.__version__,
        torchvision=torchvision.__version__, numpy=numpy.__version__, platform=platform.platform(),
        cpu=cpu_info(), torch_threads=torch.get_num_threads(),
        device=None if device is None else str(device), seeds=None if seeds is None else list(seeds))
    dev = None if device is None else torch.device(device)
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        env.update(gpu=torch.cuda.get_device_name(idx), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env.update(gpu=None, cuda=torch.version.cuda if torch.cuda.is_available() else None, cudnn=None)
    return env
