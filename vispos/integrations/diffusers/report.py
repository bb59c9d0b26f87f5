"""The RIFLEx report for a released diffusers video model (its temporal RoPE facts come from the adapters)."""
from __future__ import annotations

import math
from typing import Dict, Optional

from ...freqs import bands_report, riflex_report
from .adapters import ADAPTERS, Released
from .bands import ltx_bands

__all__ = ["HOSTS", "WAN_COMMUNITY_RIFLEX", "riflex_table"]

#: the community's Wan RIFLEx (k = 6 without the ``L' > N_k`` check): ``theta_6 = 0.9 2pi / L'`` at every length.
#: Below 0.9 N_6 (about 46 latent frames, 181 video frames) it *raises* theta_6, so it changes Wan even at its
#: training length; the official check would leave RoPE untouched below 205 video frames (52 latent).
WAN_COMMUNITY_RIFLEX = {"name": "riflex", "k": 6, "mode": "unchecked"}

#: RIFLEx paper: extension that works without training / with light fine-tuning (4x degrades)
TRAINING_FREE_MAX, FINETUNED_MAX = 2.0, 3.0

#: released checkpoints by name (``--model-class``), each from the adapter of its RoPE layout
HOSTS: Dict[str, Released] = {name: rel for a in ADAPTERS for name, rel in a.released.items()}


def _positions(latent: float, p_t: int) -> float:
    return float(math.ceil(latent / p_t)) if p_t > 1 else float(latent)


def riflex_table(
    model_class: Optional[str] = None, frames: Optional[float] = None, train_frames: Optional[float] = None,
    N: Optional[float] = None, k: Optional[int] = None, base: Optional[float] = None, dim: Optional[int] = None,
    gamma: float = 0.9, frame_rate: float = 25.0, mode: str = "checked", vae_t: Optional[int] = None,
    time_step: float = 1.0,
) -> dict:
    """The RIFLEx report for a host's temporal axis.

    ``frames``, ``train_frames`` and ``N`` are latent frames, as the lengths of
    :func:`vispos.integrations.diffusers.apply_rule` (default ``units="latent"``): the same ``N`` picks the same
    ``k`` in both. ``model_class`` is a key of :data:`HOSTS` or ``None`` (then ``base``, ``dim`` and
    ``train_frames`` are required: plain ``b^(-2j/d)`` bands). ``base``/``dim`` override the host's values (LTX:
    ``dim`` is the transformer's inner dim, ``dim // 6`` bands). ``mode`` is a RIFLEx mode
    (:data:`vispos.freqs.RIFLEX_MODES`). The report's lengths are in temporal RoPE positions (``ceil(F / p_t)``);
    ``unit`` and ``p_t`` say which; ``acts_from_video_frames`` is the first video length the rule changes RoPE at
    (``None``: every length), ``extension`` the paper's guidance (about 2x training-free, 3x fine-tuned).
    ``time_step``: temporal RoPE positions per latent frame, for hosts whose positions are not frame indices (Cosmos
    with ``fps``: ``base_fps / fps``); the lengths are converted as ``apply_rule`` converts them (``* time_step``), so
    the same ``N`` picks the same ``k`` (b^(-2j/d) bands with a temporal patch of 1 only).
    """
    if isinstance(time_step, bool) or not isinstance(time_step, (int, float)) or not (
            math.isfinite(time_step) and time_step > 0):
        raise ValueError(f"time_step must be a positive number of RoPE positions per latent frame, got {time_step!r}")
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
    vt = int(vae_t) if vae_t is not None else host.vae_t
    source = host.source
    if model_class is not None and (b != host.base or d != host.dim):
        source = f"released: {host.source}; here base {b:g}, dim {d}"
    L = float(train_frames) if train_frames is not None else float(host.train)
    p_t = host.p_t
    if time_step != 1.0 and (host.bands == "ltx" or p_t != 1):
        raise ValueError(f"time_step is for b^(-2j/d) bands with one latent frame per position; {model_class} has "
                         f"{'LTX bands (use --frame-rate)' if host.bands == 'ltx' else f'a temporal patch of {p_t}'}")
    L_pos, L2_pos = _positions(L, p_t) * time_step, _positions(float(frames), p_t) * time_step
    N_pos = None if N is None else _positions(float(N), p_t) * time_step
    if host.bands == "ltx":
        step = vt / frame_rate * p_t / host.base_num_frames
        rep = bands_report(ltx_bands(b, d, step), L_pos, L2_pos, N=N_pos, k=k, gamma=gamma, mode=mode)
        rep.update(base=b, dim=d, frame_rate=frame_rate, bands_per_axis=d // 6)
    else:
        rep = riflex_report(b, d, L_pos, L2_pos, N=N_pos, k=k, gamma=gamma, mode=mode)
    if mode == "checked" and time_step != 1.0:
        lat = math.floor(rep["N_k"] / time_step) + 1  # the first latent length L with L * time_step > N_k
        acts = dict(acts_from_latent_frames=lat, acts_from_video_frames=(lat - 1) * vt + 1)
    elif mode == "checked":
        lat = int(rep["N_k"]) * p_t + 1  # the first latent length with ceil(F / p_t) > N_k
        acts = dict(acts_from_latent_frames=lat, acts_from_video_frames=(lat - 1) * vt + 1)
    else:
        acts = dict(acts_from_latent_frames=None, acts_from_video_frames=None)
    ratio = L2_pos / L_pos
    limit = FINETUNED_MAX if mode == "finetune" else TRAINING_FREE_MAX
    rep.update(
        model_class=model_class, source=source, p_t=p_t, vae_t=vt,
        unit=(f"temporal RoPE positions (1 latent frame = {time_step:g} positions)" if time_step != 1.0
              else "latent frames" if p_t == 1 else f"temporal RoPE positions (1 position = {p_t} latent frames)"),
        time_step=time_step,
        train_frames_latent=L, frames_latent=float(frames), **acts,
        extension=dict(ratio=ratio, training_free_max=TRAINING_FREE_MAX, finetuned_max=FINETUNED_MAX,
                       beyond_guidance=ratio > limit),
    )
    return rep
