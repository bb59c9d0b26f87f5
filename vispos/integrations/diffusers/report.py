"""The RIFLEx report for a released diffusers video model (its temporal RoPE facts come from the adapters)."""
from __future__ import annotations

import math
from typing import Dict, Optional

from ...freqs import bands_report, riflex_report
from .adapters import ADAPTERS, Released
from .bands import ltx_bands

__all__ = ["HOSTS", "riflex_table"]

#: released checkpoints by name (``--model-class``), each from the adapter of its RoPE layout
HOSTS: Dict[str, Released] = {name: rel for a in ADAPTERS for name, rel in a.released.items()}


def _positions(latent: float, p_t: int) -> float:
    return float(math.ceil(latent / p_t)) if p_t > 1 else float(latent)


def riflex_table(
    model_class: Optional[str] = None, frames: Optional[float] = None, train_frames: Optional[float] = None,
    N: Optional[float] = None, k: Optional[int] = None, base: Optional[float] = None, dim: Optional[int] = None,
    gamma: float = 0.9, frame_rate: float = 25.0,
) -> dict:
    """The RIFLEx report for a host's temporal axis (lengths and ``N`` in latent frames).

    ``model_class`` is a key of :data:`HOSTS` or ``None`` (then ``base``, ``dim`` and ``train_frames`` are
    required: plain ``b^(-2j/d)`` bands). ``base``/``dim`` override the host's values. The report's lengths are in
    temporal RoPE positions (``ceil(F / p_t)``); ``unit`` and ``p_t`` say which.
    """
    if model_class is None:
        if base is None or dim is None or train_frames is None:
            raise ValueError("without --model-class, give --base, --dim and --train-frames")
        host = Released(float(base), int(dim), int(train_frames), 4, 1, "given")
    elif model_class not in HOSTS:
        raise ValueError(f"unknown model class {model_class!r}; expected one of {sorted(HOSTS)}")
    else:
        host = HOSTS[model_class]
    if frames is None:
        raise ValueError("the target length (--frames or --pixel-frames) is required")
    b = float(base) if base is not None else float(host.base)
    d = int(dim) if dim is not None else int(host.dim)
    L = float(train_frames) if train_frames is not None else float(host.train)
    p_t = host.p_t
    L_pos, L2_pos = _positions(L, p_t), _positions(float(frames), p_t)
    N_pos = None if N is None else float(N) / p_t
    if host.bands == "ltx":
        step = host.vae_t / frame_rate * p_t / host.base_num_frames
        rep = bands_report(ltx_bands(b, d, step), L_pos, L2_pos, N=N_pos, k=k, gamma=gamma)
        rep.update(base=b, dim=d, frame_rate=frame_rate)
    else:
        rep = riflex_report(b, d, L_pos, L2_pos, N=N_pos, k=k, gamma=gamma)
    rep.update(
        model_class=model_class, source=host.source, p_t=p_t, vae_t=host.vae_t,
        unit="latent frames" if p_t == 1 else f"temporal RoPE positions (1 position = {p_t} latent frames)",
        train_frames_latent=L, frames_latent=float(frames),
    )
    return rep
