"""Model-free metrics for frame extrapolation: does a video extended beyond its training length repeat, slow down,
freeze, or keep moving as it should? Definitions, normalisation and thresholds: ``docs/video_metrics.md``.

Every metric reads frames as uint8 ``(T, H, W, 3)`` (or grey ``(T, H, W)``; see :func:`vispos.data.video.to_uint8`
for model outputs) and pre-processes them with :func:`preprocess` (grey, area-downsampled to 64 px short side,
float32 in ``[0, 255]``). A float32 ``(T, h, w)`` array is taken as already pre-processed, so
:func:`score_video` pre-processes once. Distances between frames are per-pixel RMSE in grey levels ``[0, 255]``.

============================ ======================================================================================
:func:`no_repeat`            RIFLEx App. D NoRepeat: ``s* = argmin_{|s - N_k| <= w} d(x_s, x_0)``,
                             ``D = mean_i d(x_{s*+i}, x_i)``; repetitive iff ``D <= tau`` (10 grey levels) or,
                             ``scale_free``, iff ``D / median_{s,s'} d(x_s, x_s') <= 0.5``.
:func:`self_similarity`      lag profile ``A(tau)`` of unit-norm, temporally centred frames; loop score and period
                             (harmonics resolved: a period 10.5 is 10.5, not 21; sub-frame peak).
:func:`find_loop`            the strongest loop in any suffix: loops that start after novel frames.
:func:`motion`               Farneback optical-flow speed, percent of the short side per frame (structure-weighted).
:func:`static_check`         static up to noise: flow displacement over lags 1..8 below a floor.
:func:`slowdown_ratio`       ``motion(x[L:]) / motion(x[:L])``: ~1 same speed, ~0.5 twice slower, 0 frozen.
:func:`speed_vs_reference`   ``motion(x) / motion(reference)``: uniform slow motion against a training-length video.
:func:`tail_novelty`         ``min_{s<L} d(x_t, x_s)`` for ``t >= L``, over the head's mean pairwise distance.
:func:`object_centres`       colour-blob centroids of objects on a plain background (synthetic videos).
:func:`trajectory_error`     pixel distance of extracted centres to the true (or constant-velocity) continuation.
============================ ======================================================================================
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.files import scan_files
from ..data.video import VIDEO_EXTENSIONS, VideoReadError, check_frames, read_video
from ..utils.checks import check_int as _check_len  # an int >= minimum (the shared validator)

__all__ = [
    "DEFAULT_TAU",
    "DEFAULT_TAU_REL",
    "DEFAULT_STATIC_FLOOR",
    "LOOP_KEYS",
    "preprocess",
    "frame_distance",
    "no_repeat",
    "self_similarity",
    "find_loop",
    "estimate_repetition_frame",
    "optical_flow",
    "flow_speeds",
    "motion",
    "frame_difference",
    "static_check",
    "slowdown_ratio",
    "speed_vs_reference",
    "tail_novelty",
    "object_centres",
    "extrapolate_centres",
    "trajectory_error",
    "score_video",
    "score_folder",
    "summarize_scores",
]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

DEFAULT_TAU = 10.0
"""NoRepeat threshold on ``D`` in per-pixel RMSE grey levels (0..255). See docs/video_metrics.md."""

DEFAULT_TAU_REL = 0.5
"""Scale-free NoRepeat threshold on ``D / (median distance between two frames of the video)``."""

DEFAULT_STATIC_FLOOR = 0.8
"""Optical-flow displacement (percent of the short side) below which a video is static up to noise."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# pre-processing


def preprocess(frames, short_side: int = 64) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` (or grey ``(T, H, W)``) → float32 ``(T, h, w)`` grey in ``[0, 255]``.

    Grey = BT.601 luma ``0.299 R + 0.587 G + 0.114 B``; when ``min(H, W) > short_side`` the frames are
    area-downsampled so that the short side is ``short_side`` (never upsampled).
    """
    if isinstance(short_side, bool) or not isinstance(short_side, (int, np.integer)) or short_side < 1:
        raise ValueError(f"short_side must be an int >= 1, got {short_side!r}")
    f = check_frames(frames)
    grey = f.astype(np.float32) @ _LUMA  # (T, H, W)
    T, H, W = grey.shape
    m = min(H, W)
    if m > short_side:
        size = (max(1, round(H * short_side / m)), max(1, round(W * short_side / m)))
        grey = torch.nn.functional.interpolate(torch.from_numpy(grey)[:, None], size=size, mode="area")[:, 0].numpy()
    return np.ascontiguousarray(grey, dtype=np.float32)


def _prep(frames, short_side: int = 64) -> np.ndarray:
    if isinstance(frames, np.ndarray) and frames.dtype == np.float32 and frames.ndim == 3:
        if frames.shape[0] < 1 or not np.isfinite(frames).all():
            raise ValueError(f"pre-processed frames must be finite float32 (T, h, w) with T >= 1, "
                             f"got shape {frames.shape}")
        return frames
    if isinstance(frames, np.ndarray) and frames.dtype.kind == "f":
        raise TypeError(f"frames must be uint8 (T, H, W, 3) or pre-processed float32 (T, h, w); got {frames.dtype} "
                        f"{frames.shape}: convert a (C, T, H, W) [-1, 1] video with vispos.data.video.to_uint8")
    return preprocess(frames, short_side=short_side)


def frame_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel RMSE between pre-processed frames (broadcast over leading dims): ``sqrt(mean((a - b)^2))``."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return np.sqrt(np.mean(d * d, axis=(-2, -1)))


def _nan_to_none(v):
    if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
        return None
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# ----------------------------------------------------------------------------------------------------------------
# repetition


def _check_number(value, name: str, lo: float = 0.0, strict: bool = False, unit: str = "") -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(float(value)) and (float(value) > lo if strict else float(value) >= lo)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lo:g}{unit}, got {value!r}")
    return float(value)


def _typical_distance(x: np.ndarray) -> float:
    """Median per-pixel RMSE over all pairs of distinct frames: the video's own scale of "different frames"."""
    T = x.shape[0]
    if T < 2:
        return float("nan")
    F = x.reshape(T, -1).astype(np.float64)
    sq = (F * F).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * F @ F.T, 0.0) / F.shape[1]
    return float(np.median(np.sqrt(d2[np.triu_indices(T, 1)])))


def no_repeat(frames, N_k: float, window: Optional[int] = None, tau: Optional[float] = None,
              scale_free: bool = False) -> Dict:
    """RIFLEx App. D NoRepeat test for one video.

    ``s* = argmin_{s in [N_k - w, N_k + w], 1 <= s < T} d(x_s, x_0)`` and ``D = mean_{i=0}^{T-1-s*} d(x_{s*+i}, x_i)``
    with ``d`` the per-pixel RMSE of pre-processed frames; the video is *repetitive* iff ``D <= tau``.

    Args:
        frames: uint8 ``(T, H, W, 3)`` or pre-processed float32 ``(T, h, w)``.
        N_k: expected repetition frame (RIFLEx: the period of the intrinsic frequency, in frames).
        window: ``w``; default ``max(2, round(N_k / 4))``.
        tau: threshold on ``D``: grey levels (0..255, default :data:`DEFAULT_TAU`), or with ``scale_free`` a
            fraction of the video's typical frame distance (default :data:`DEFAULT_TAU_REL`).
        scale_free: compare ``D_rel = D / m`` with ``m`` the median distance between two frames of the same video,
            so the verdict does not depend on the content's contrast, noise or compression.

    Returns ``{"N_k", "window", "tau", "scale_free", "s_star", "d_s_star", "D", "D_rel", "repetitive",
    "non_repetitive"}``; when the video is shorter than ``N_k - w + 1`` frames the test cannot run: ``s_star``,
    ``D``, ``repetitive`` are ``None``.
    """
    if isinstance(N_k, bool) or not isinstance(N_k, (int, float, np.integer, np.floating)) or not N_k > 0 \
            or not math.isfinite(N_k):
        raise ValueError(f"N_k must be a positive finite number of frames, got {N_k!r}")
    w = max(2, round(N_k / 4)) if window is None else _check_len(window, "window", 0)
    if not isinstance(scale_free, bool):
        raise TypeError(f"scale_free must be a bool, got {scale_free!r}")
    if tau is None:
        tau = DEFAULT_TAU_REL if scale_free else DEFAULT_TAU
    tau = _check_number(tau, "tau", unit=" (a fraction of the typical frame distance)" if scale_free
                        else " (grey levels)")
    x = _prep(frames)
    T = x.shape[0]
    centre = int(round(N_k))
    lo, hi = max(1, centre - w), min(T - 1, centre + w)
    out = {"N_k": float(N_k), "window": int(w), "tau": float(tau), "scale_free": scale_free, "s_star": None,
           "d_s_star": None, "D": None, "D_rel": None, "repetitive": None, "non_repetitive": None}
    if lo > hi:
        return out
    cand = np.arange(lo, hi + 1)
    d0 = frame_distance(x[cand], x[0])
    s = int(cand[int(np.argmin(d0))])
    D = float(np.mean(frame_distance(x[s:], x[: T - s])))
    m = _typical_distance(x)
    D_rel = D / m if m > 0 else (0.0 if D == 0 else float("inf"))
    stat = D_rel if scale_free else D
    out.update(s_star=s, d_s_star=float(d0.min()), D=D, D_rel=float(D_rel), repetitive=bool(stat <= tau),
               non_repetitive=bool(stat > tau))
    return out


def _lag_profile(x: np.ndarray, max_lag: int) -> np.ndarray:
    T = x.shape[0]
    F = x.reshape(T, -1).astype(np.float64)
    F = F - F.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(F, axis=1, keepdims=True)
    scale = np.maximum(np.abs(F).max(), 1.0)
    F = np.where(norm > 1e-9 * scale * math.sqrt(F.shape[1]), F / np.maximum(norm, 1e-300), 0.0)
    G = F @ F.T
    return np.array([np.mean(np.diagonal(G, offset=tau)) for tau in range(max_lag + 1)])


def _near(A: np.ndarray, c: float) -> float:
    """Highest of ``A`` at the two integer lags around ``c``."""
    lo, hi = int(math.floor(c)), int(math.ceil(c))
    return float(max(A[i] for i in (lo, hi) if 0 <= i < len(A)))


def self_similarity(frames, max_lag: Optional[int] = None, tol: float = 0.5) -> Dict:
    """Temporal self-similarity: does the video come back to where it was, and after how many frames?

    Descriptors ``f_t`` are pre-processed frames minus the video's mean frame, scaled to unit norm (a frame equal to
    the mean gets ``0``). Lag profile ``A(tau) = mean_t <f_t, f_{t+tau}>`` for ``tau = 0..max_lag``; ``tau0`` is the
    first local minimum (``A(tau0) <= A(tau0 + 1)``); ``A* = A(tau*) = max_{tau > tau0} A(tau)``.

    The strongest peak ``tau*`` may be a multiple of the period (loops peak at ``P, 2P, ...``; a non-integer period
    10.5 peaks highest at 21, where the frames line up exactly): ``period = tau* / m`` for the largest ``m`` such
    that every ``j tau* / m`` (``j = 1..m-1``) also peaks, i.e. ``A`` at one of the integer lags around it reaches
    ``A(tau0) + tol * rise``. ``period_subframe`` refines ``tau*`` by a parabola through
    ``A(tau* - 1), A(tau*), A(tau* + 1)`` first (for a non-integer period whose multiples are out of range).

    Returns a dict: ``lag_profile`` (list), ``tau0``, ``rise = A* - A(tau0)`` (REFERENCES' score),
    ``score = rise / (1 - A(tau0))`` in ``[0, 1]`` (≈0 no loop, 1 an exact loop), ``period`` and
    ``period_subframe`` (float, frames), ``peak_lag = tau*``, ``harmonic = m``. Without a local minimum before ``max_lag`` (the video only drifts away)
    ``score = rise = 0`` and ``period = tau0 = None``.

    Args:
        frames: uint8 ``(T, H, W, 3)`` (T >= 4) or pre-processed float32 ``(T, h, w)``.
        max_lag: largest lag; default ``T - max(2, T // 4)`` so that every lag averages >= 2 pairs.
        tol: share of the rise a sub-multiple of ``tau*`` must reach to count as a peak.
    """
    x = _prep(frames)
    T = x.shape[0]
    if T < 4:
        raise ValueError(f"self_similarity needs at least 4 frames, got {T}")
    if max_lag is None:
        max_lag = T - max(2, T // 4)
    max_lag = _check_len(max_lag, "max_lag", 2)
    if max_lag > T - 1:
        raise ValueError(f"max_lag must be <= T - 1 = {T - 1}, got {max_lag}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    A = _lag_profile(x, max_lag)
    out = {"lag_profile": [float(a) for a in A], "tau0": None, "period": None, "period_subframe": None,
           "score": 0.0, "rise": 0.0, "peak": None, "peak_lag": None, "harmonic": None}
    tau0 = next((t for t in range(1, max_lag) if A[t] <= A[t + 1]), None)
    if tau0 is None:
        return out
    tail = A[tau0 + 1:]
    ts = tau0 + 1 + int(np.argmax(tail))
    peak = float(A[ts])
    rise = max(0.0, peak - float(A[tau0]))
    denom = 1.0 - float(A[tau0])
    score = min(1.0, rise / denom) if denom > 1e-12 else 0.0
    t_star = float(ts)
    if ts + 1 <= max_lag:
        a, b, c = A[ts - 1], A[ts], A[ts + 1]
        curv = a - 2 * b + c
        if curv < 0:
            t_star = ts + float(np.clip(0.5 * (a - c) / curv, -0.5, 0.5))
    level = float(A[tau0]) + tol * rise
    m = 1
    for cand in range(int(ts // (tau0 + 1)), 1, -1):
        p = ts / cand
        if p > tau0 and all(_near(A, j * p) >= level for j in range(1, cand)):
            m = cand
            break
    out.update(tau0=int(tau0), period=float(ts / m), period_subframe=float(t_star / m), score=float(score),
               rise=float(rise), peak=peak, peak_lag=int(ts), harmonic=int(m))
    return out


def find_loop(frames, min_len: int = 12, step: Optional[int] = None, **kwargs) -> Dict:
    """The strongest loop in any suffix ``x[s:]`` of the video (``s = 0, step, 2 step, ...``, suffixes of at least
    ``min_len`` frames): a loop that starts after novel frames (e.g. past the training length) is found at full
    strength instead of being averaged with the frames before it.

    Returns :func:`self_similarity`'s keys for the best suffix (highest ``score``; the earliest of scores within
    0.02) plus ``start = s`` (the loop has started by frame ``s``) and ``whole_clip_score`` (``s = 0``).
    ``step`` defaults to ``max(1, T // 32)``; ``kwargs`` go to :func:`self_similarity` (``max_lag`` is per suffix).
    """
    x = _prep(frames)
    T = x.shape[0]
    min_len = _check_len(min_len, "min_len", 4)
    step = max(1, T // 32) if step is None else _check_len(step, "step", 1)
    if "max_lag" in kwargs:
        raise TypeError("find_loop: max_lag is chosen per suffix; call self_similarity for a fixed max_lag")
    best, best_s, whole = None, 0, None
    for s in range(0, max(1, T - min_len + 1), step):
        if T - s < 4:
            break
        r = self_similarity(x[s:], **kwargs)
        if whole is None:
            whole = r["score"]
        if best is None or r["score"] > best["score"] + 0.02:
            best, best_s = r, s
    best = dict(best)
    best.update(start=int(best_s), whole_clip_score=float(whole))
    return best


def estimate_repetition_frame(frames, min_score: float = 0.5, **kwargs) -> Optional[float]:
    """First repetition frame ``N`` (the loop period in frames, sub-frame: frame ``t + N`` shows frame ``t`` again)
    of the strongest loop in any suffix of the video (:func:`find_loop`), or ``None`` when its score is below
    ``min_score``. Feed it to :func:`vispos.freqs.identify_k` to find RIFLEx's ``k``. ``kwargs`` go to
    :func:`find_loop`."""
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
        raise ValueError(f"min_score must be a number in [0, 1], got {min_score!r}")
    r = find_loop(frames, **kwargs)
    if r["period"] is None or r["score"] < min_score:
        return None
    return float(r["period"])


# ----------------------------------------------------------------------------------------------------------------
# motion and novelty


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
                                        poly_sigma=1.2, flags=0)


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("optical-flow motion needs OpenCV: pip install 'vispos[video]' "
                          "(opencv-python-headless)") from e
    return cv2


def optical_flow(frames, lag: int = 1) -> np.ndarray:
    """Farneback dense optical flow (OpenCV; pyramid 0.5 x 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2)
    between pre-processed frames ``x_t`` and ``x_{t+lag}``: float32 ``(T - lag, h, w, 2)`` in working pixels."""
    x = _prep(frames)
    lag = _check_len(lag, "lag", 1)
    if x.shape[0] <= lag:
        raise ValueError(f"optical flow at lag {lag} needs at least {lag + 1} frames, got {x.shape[0]}")
    if min(x.shape[1:]) < 8:
        raise ValueError(f"optical flow needs frames of at least 8 x 8 pixels, got {x.shape[1]} x {x.shape[2]}")
    return np.stack([_farneback(x[t], x[t + lag]) for t in range(x.shape[0] - lag)])


def _grad_energy(x: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(x.astype(np.float64), axis=(-2, -1))
    return gx * gx + gy * gy


def flow_speeds(frames, lag: int = 1) -> np.ndarray:
    """Per frame pair ``(x_t, x_{t+lag})``: optical-flow speed in percent of the frame's short side,
    ``100 * sum_p w_p |flow_p| / sum_p w_p / min(h, w)`` on the pre-processed frames, float64 ``(T - lag,)``.

    The weights ``w_p = |grad x_t|^2 + |grad x_{t+lag}|^2`` (image structure) count flow where it is observable:
    on flat regions Farneback only spreads the flow of nearby edges, so an unweighted mean would depend on how much
    flat background surrounds a moving object rather than on its speed. A uniform pan reads its speed either way.
    """
    x = _prep(frames)
    fl = optical_flow(x, lag)
    mag = np.linalg.norm(fl.astype(np.float64), axis=-1)
    g = _grad_energy(x)
    w = g[:-lag] + g[lag:]
    tot = w.sum(axis=(1, 2))
    speed = np.where(tot > 0, (w * mag).sum(axis=(1, 2)) / np.maximum(tot, 1e-300), mag.mean(axis=(1, 2)))
    return speed * 100.0 / min(x.shape[1:])


def motion(frames) -> float:
    """Speed of the video: mean optical-flow magnitude between consecutive frames, in percent of the frame's short
    side per frame (:func:`flow_speeds`; ~proportional to the speed of pans, zooms and moving objects). T >= 2."""
    x = _prep(frames)
    if x.shape[0] < 2:
        raise ValueError(f"motion needs at least 2 frames, got {x.shape[0]}")
    return float(np.mean(flow_speeds(x, 1)))


def frame_difference(frames) -> float:
    """Mean absolute frame difference ``mean_t mean |x_{t+1} - x_t| / 255`` of pre-processed frames (T >= 2): a
    change measure, not a speed (it saturates for motion larger than the texture scale and reads sensor noise)."""
    x = _prep(frames)
    if x.shape[0] < 2:
        raise ValueError(f"frame_difference needs at least 2 frames, got {x.shape[0]}")
    return float(np.mean(np.abs(np.diff(x.astype(np.float64), axis=0))) / 255.0)


def static_check(frames, floor: float = DEFAULT_STATIC_FLOOR, lags: Sequence[int] = (1, 2, 4, 8)) -> Dict:
    """Is the video static up to noise? ``displacement = max_{lag} mean_t flow_speed(x_t, x_{t+lag})`` over the
    ``lags`` shorter than the video; *static* iff ``displacement < floor`` (percent of the short side).

    Sensor noise and compression make flow of a fixed size at every lag, while real motion grows with the lag, so
    the longest lag separates slow motion from noise; the lag-1 term keeps short loops from reading static.
    Default floor 0.8 % (0.5 px at 64 px): measured noise flow on static photos, Gaussian sigma <= 15 grey levels
    with or without H.264, stays below 0.7 % (docs/video_metrics.md).
    """
    x = _prep(frames)
    floor = _check_number(floor, "floor", strict=True, unit=" (percent of the short side)")
    T = x.shape[0]
    if T < 2:
        raise ValueError(f"static_check needs at least 2 frames, got {T}")
    use = sorted({_check_len(g, "lag", 1) for g in lags})
    return _static_from({g: flow_speeds(x, g) for g in use if g < T} or {1: flow_speeds(x, 1)}, floor)


STATIC_LAGS = (1, 2, 4, 8)


def _static_from(speeds: Dict[int, np.ndarray], floor: float, frames: Optional[int] = None) -> Dict:
    """:func:`static_check` from per-lag speed arrays (index ``t`` = pair ``(t, t + lag)``), optionally over the
    first ``frames`` frames only (pairs inside them)."""
    per = {}
    for g, v in speeds.items():
        v = v if frames is None else v[: max(0, frames - g)]
        if len(v):
            per[g] = float(np.mean(v))
    disp = max(per.values())
    return {"static": bool(disp < floor), "displacement": disp, "floor": floor, "per_lag": per}


def _check_split(x: np.ndarray, train_len, need_tail: int) -> int:
    L = _check_len(train_len, "train_len", 2)
    if x.shape[0] < L + need_tail:
        raise ValueError(f"video has {x.shape[0]} frames; needs at least train_len + {need_tail} = {L + need_tail}")
    return L


def slowdown_ratio(frames, train_len: int, floor: float = DEFAULT_STATIC_FLOOR) -> float:
    """``motion(x[L:]) / motion(x[:L])`` (optical-flow speed; ``L = train_len``; needs ``T >= L + 2``). ≈1 same
    speed, ≈0.5 twice slower, 0 frozen, >1 faster. ``nan`` when the first ``L`` frames are static up to noise
    (:func:`static_check` with ``floor``): a ratio of two noise readings means nothing."""
    x = _prep(frames)
    L = _check_split(x, train_len, 2)
    if static_check(x[:L], floor)["static"]:
        return float("nan")
    return motion(x[L:]) / motion(x[:L])


def speed_vs_reference(frames, reference, floor: float = DEFAULT_STATIC_FLOOR) -> Optional[float]:
    """``motion(frames) / motion(reference)``: the speed of a generated long video relative to a training-length
    video made from the same prompt and seed. ≈1 same speed, ≈0.5 twice slower (position interpolation stretches
    the whole clip, head included, which :func:`slowdown_ratio` cannot see). ``None`` when the reference is static
    (:func:`static_check` with ``floor``)."""
    x, r = _prep(frames), _prep(reference)
    if r.shape[0] < 2 or x.shape[0] < 2:
        raise ValueError(f"speed_vs_reference needs >= 2 frames in both videos, got {x.shape[0]} and {r.shape[0]}")
    if static_check(r, floor)["static"]:
        return None
    return motion(x) / motion(r)


def tail_novelty(frames, train_len: int) -> Dict:
    """How new are the frames after ``L = train_len``? ``n_t = min_{s<L} d(x_t, x_s) / spread`` for ``t >= L``, with
    ``spread = mean_{s<s'<L} d(x_s, x_s')`` (the head's own mean pairwise distance).

    Returns ``{"novelty": mean_t n_t, "final": n_{T-1}, "per_frame": [n_t], "head_spread": spread}``; ≈0 when the
    tail repeats head frames (loop, freeze), ≳0.5 for new content. ``nan`` values when the head is static.
    """
    x = _prep(frames)
    L = _check_split(x, train_len, 1)
    head, tail = x[:L], x[L:]
    dh = frame_distance(head[:, None], head[None, :])
    spread = float(dh[np.triu_indices(L, 1)].mean())
    mins = frame_distance(tail[:, None], head[None, :]).min(axis=1)
    n = mins / spread if spread > 0 else np.full_like(mins, np.nan)
    return {"novelty": float(np.mean(n)), "final": float(n[-1]), "per_frame": [float(v) for v in n],
            "head_spread": spread}


# ----------------------------------------------------------------------------------------------------------------
# objects and trajectories


def _colour_centres(cols: np.ndarray, bg: np.ndarray, num_objects: Optional[int], min_share: float) -> List[np.ndarray]:
    """Dominant object colours among foreground pixel colours ``cols`` (N, 3): greedy modes of a 32-level histogram,
    rejecting blends of an accepted colour with the background and colours close to accepted ones."""
    q = np.clip(cols // 32, 0, 7).astype(np.int64)
    key = q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    centres: List[np.ndarray] = []
    min_count = max(2, min_share * len(cols))
    for b in order:
        if counts[b] < min_count or (num_objects is not None and len(centres) >= num_objects):
            break
        c = cols[inv == b].mean(axis=0)
        ok = True
        for ck in centres:
            u = ck - bg
            a = float(np.dot(c - bg, u) / max(np.dot(u, u), 1e-9))
            if np.linalg.norm(c - ck) < 60 or (0 < a < 1 and np.linalg.norm(c - bg - a * u) < 30):
                ok = False
                break
        if ok:
            centres.append(c)
    return centres


def object_centres(frames, num_objects: Optional[int] = None, threshold: float = 40.0, min_mass: float = 2.0,
                   return_radii: bool = False):
    """Centroids of coloured objects on a plain background (synthetic videos; full resolution, no pre-processing).

    Background = per-channel median over all pixels and frames; foreground = pixels farther than ``threshold``
    (Euclidean RGB, 0..255) from it. Object colours = the dominant foreground colours (``num_objects`` of them if
    given); each foreground pixel goes to the colour whose background blend explains it best and weighs its blend
    factor ``alpha`` in ``[0, 1]`` (sub-pixel centroids of anti-aliased edges). Objects are identified by colour, so
    two objects of one colour merge and overlaps shift centroids.

    Args:
        frames: uint8 ``(T, H, W, 3)``.
    Returns:
        float64 ``(T, K, 2)`` centres ``(x, y)`` (pixel centres at integers), ``nan`` where an object has less than
        ``min_mass`` pixels in a frame; with ``return_radii`` also ``(K,)`` half-extents (radius of a disc, half-side
        of a square): ``(max - min + 1) / 2`` of the pixels with ``alpha >= 0.5``, mean of x and y, median over
        frames (±0.5 px; objects cut by the frame edge or occluded read smaller). ``K`` may differ from the true count; :func:`trajectory_error` matches them.
    """
    f = check_frames(frames).astype(np.float32)
    if num_objects is not None:
        num_objects = _check_len(num_objects, "num_objects", 1)
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (RGB distance 0..255), got {threshold!r}")
    T, H, W, _ = f.shape
    bg = np.median(f.reshape(-1, 3), axis=0)
    d = f - bg
    fg = np.linalg.norm(d, axis=-1) > threshold
    cols = f[fg]
    centres = _colour_centres(cols, bg, num_objects, 0.02) if len(cols) else []
    K = len(centres)
    out = np.full((T, K, 2), np.nan)
    radii = np.full((K,), np.nan)
    if K == 0:
        return (out, radii) if return_radii else out
    U = np.stack([c - bg for c in centres])  # (K, 3)
    dv = d[fg]  # (N, 3)
    alpha = np.clip(dv @ U.T / np.maximum((U * U).sum(1), 1e-9), 0.0, 1.0)  # (N, K)
    resid = np.linalg.norm(dv[:, None, :] - alpha[:, :, None] * U[None], axis=-1)  # (N, K)
    k = np.argmin(resid, axis=1)
    w = alpha[np.arange(len(k)), k]
    tt, yy, xx = np.nonzero(fg)
    masses = np.zeros((T, K))  # alpha mass per frame and object
    for j in range(K):
        sel = k == j
        wt = w[sel]
        m = np.bincount(tt[sel], weights=wt, minlength=T)
        sx = np.bincount(tt[sel], weights=wt * xx[sel], minlength=T)
        sy = np.bincount(tt[sel], weights=wt * yy[sel], minlength=T)
        ok = m >= min_mass
        out[ok, j, 0] = sx[ok] / m[ok]
        out[ok, j, 1] = sy[ok] / m[ok]
        masses[:, j] = m
        solid = sel & (alpha[np.arange(len(k)), j] >= 0.5)
        if solid.any():
            ts, xs, ys = tt[solid], xx[solid], yy[solid]
            lo_x, hi_x = np.full(T, np.inf), np.full(T, -np.inf)
            lo_y, hi_y = np.full(T, np.inf), np.full(T, -np.inf)
            np.minimum.at(lo_x, ts, xs)
            np.maximum.at(hi_x, ts, xs)
            np.minimum.at(lo_y, ts, ys)
            np.maximum.at(hi_y, ts, ys)
            seen = ok & np.isfinite(lo_x)
            if seen.any():
                half = ((hi_x - lo_x + 1) + (hi_y - lo_y + 1))[seen] / 4.0
                radii[j] = float(np.median(half))
    return (out, radii) if return_radii else out


def _check_centres(c, name: str) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 3 or c.shape[-1] != 2:
        raise ValueError(f"{name} must be an array (T, K, 2) of (x, y) centres, got shape {c.shape}")
    return c


def extrapolate_centres(head, length: int, size: Tuple[int, int], radii=None, bounce: bool = True) -> np.ndarray:
    """Constant-velocity continuation of observed centres ``head`` ``(L, K, 2)`` to ``length`` frames ``(T, K, 2)``.

    Per object and axis the speed is the median ``|x_{t+1} - x_t|`` over the head (robust to a bounce) and the
    direction the sign of the last step; from the last observed centre it moves on, reflecting off the walls at
    ``radius - 0.5`` and ``size - 0.5 - radius`` (``bounce``; ``radii`` ``(K,)`` default 0.5). The first ``L`` rows are
    the observations. Approximate when a bounce falls inside the last step.
    """
    head = _check_centres(head, "head")
    L, K, _ = head.shape
    if L < 2:
        raise ValueError(f"head needs at least 2 frames, got {L}")
    length = _check_len(length, "length", L)
    H, W = size
    r = np.full(K, 0.5) if radii is None else np.asarray(radii, dtype=np.float64).reshape(K)
    out = np.full((length, K, 2), np.nan)
    out[:L] = head
    t = np.arange(1, length - L + 1, dtype=np.float64)
    for j in range(K):
        for a, extent in ((0, W), (1, H)):
            x = head[:, j, a]
            steps = np.diff(x)
            steps = steps[np.isfinite(steps)]
            if not len(steps) or not np.isfinite(x[-1]):
                continue
            speed = float(np.median(np.abs(steps)))
            v = math.copysign(speed, steps[-1]) if steps[-1] != 0 else 0.0
            raw = x[-1] + v * t
            rj = r[j] if np.isfinite(r[j]) else 0.5
            if bounce:
                lo, hi = rj - 0.5, extent - 0.5 - rj
                span = max(hi - lo, 1e-9)
                u = np.mod(raw - lo, 2 * span)
                raw = lo + np.where(u <= span, u, 2 * span - u)
            out[L:, j, a] = raw
    return out


def trajectory_error(pred, true, start: int = 0, match_frames: Optional[int] = None) -> Dict:
    """Distance in pixels between predicted and true object centres.

    Args:
        pred: ``(T, Kp, 2)`` extracted centres (``nan`` = not found), e.g. from :func:`object_centres`.
        true: ``(T, Kt, 2)`` true centres (e.g. :meth:`SyntheticVideos.trajectories`).
        start: first frame scored (e.g. ``train_len`` to score only the extrapolated frames).
        match_frames: objects are paired (one-to-one, exhaustive search) by their mean distance over the first
            ``match_frames`` frames; default ``start`` if ``start > 0`` else all frames.

    Returns ``{"mean_px", "final_px", "per_frame" (list, None where nothing matched), "missing" (share of true
    objects x frames >= start without a matched detection), "matching" (pred index per true object or None)}``.
    """
    pred, true = _check_centres(pred, "pred"), _check_centres(true, "true")
    if pred.shape[0] != true.shape[0]:
        raise ValueError(f"pred and true must have the same number of frames, got {pred.shape[0]} and {true.shape[0]}")
    T, Kp, Kt = true.shape[0], pred.shape[1], true.shape[1]
    start = _check_len(start, "start", 0)
    if start >= T:
        raise ValueError(f"start must be < T = {T}, got {start}")
    m = (start if start > 0 else T) if match_frames is None else _check_len(match_frames, "match_frames", 1)
    dist = np.linalg.norm(pred[:, :, None, :] - true[:, None, :, :], axis=-1)  # (T, Kp, Kt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices: handled below as "never seen"
        cost = np.nanmean(dist[:m], axis=0)  # (Kp, Kt)
    cost = np.where(np.isfinite(cost), cost, 1e9)
    best, best_cost = None, math.inf
    n_match = min(Kp, Kt)
    if n_match:
        for tsel in itertools.combinations(range(Kt), n_match):
            for perm in itertools.permutations(range(Kp), n_match):
                c = sum(cost[p, q] for p, q in zip(perm, tsel))
                if c < best_cost:
                    best, best_cost = (perm, tsel), c
    matching: List[Optional[int]] = [None] * Kt
    err = np.full((T, Kt), np.nan)
    if best is not None:
        for p, q in zip(*best):
            matching[q] = int(p)
            err[:, q] = dist[:, p, q]
    e = err[start:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_frame = np.nanmean(err, axis=1)
    mean_px = float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")
    return {"mean_px": mean_px, "final_px": float(per_frame[-1]),
            "per_frame": [None if not np.isfinite(v) else float(v) for v in per_frame],
            "missing": float(np.mean(~np.isfinite(e))) if Kt else 0.0, "matching": matching}


# ----------------------------------------------------------------------------------------------------------------
# all metrics


def _check_score_args(train_len, N_k=None, window=None, tau=None, scale_free=False, min_repeat_score=0.5,
                      static_floor=DEFAULT_STATIC_FLOOR, **_ignored) -> float:
    """Validate :func:`score_video`'s settings before any frame is read; returns the static floor."""
    _check_len(train_len, "train_len", 2)
    if isinstance(min_repeat_score, bool) or not isinstance(min_repeat_score, (int, float)) \
            or not 0 <= min_repeat_score <= 1:
        raise ValueError(f"min_repeat_score must be a number in [0, 1], got {min_repeat_score!r}")
    if N_k is not None:
        no_repeat(np.zeros((2, 1, 1), np.float32), N_k, window=window, tau=tau, scale_free=scale_free)
    return _check_number(static_floor, "static_floor", strict=True, unit=" (percent of the short side)")


def score_video(frames, train_len: int, N_k: Optional[float] = None, true_centres=None, num_objects=None,
                fit_trajectories: bool = False, window: Optional[int] = None, tau: Optional[float] = None,
                scale_free: bool = False, min_repeat_score: float = 0.5, short_side: int = 64,
                reference=None, static_floor: float = DEFAULT_STATIC_FLOOR) -> Dict:
    """Every metric for one video as a flat JSON-able dict (``nan`` → ``None``).

    Args:
        frames: uint8 ``(T, H, W, 3)``.
        train_len: ``L``, frames seen in training; tail metrics (slow-down, novelty, tail trajectory error) need
            ``T >= L + 2`` and are ``None`` otherwise.
        N_k: RIFLEx's expected repetition frame for NoRepeat; ``None`` skips NoRepeat (``norepeat_*`` are None).
        true_centres: ``(T, K, 2)`` true object centres (synthetic videos): adds ``traj_*`` errors.
        num_objects: objects to look for in :func:`object_centres` (default: found from colours).
        fit_trajectories: without ``true_centres``, compare the tail to the constant-velocity continuation
            (:func:`extrapolate_centres`) of the centres seen in the first ``L`` frames.
        window, tau, scale_free: NoRepeat settings (:func:`no_repeat`).
        min_repeat_score: loop score from which a loop counts as detected (``repetition_frame``, ``loop_*``).
        reference: uint8 frames of a training-length video from the same prompt and seed: adds
            ``speed_vs_reference`` (:func:`speed_vs_reference`) and ``reference_motion``.
        static_floor: :func:`static_check` floor (percent of the short side).

    Keys: ``num_frames, train_len, motion, motion_head, motion_tail, slowdown_ratio, frame_difference, static,
    static_displacement, speed_vs_reference, reference_motion, selfsim_score, selfsim_period, loop_score,
    loop_period, loop_period_subframe, loop_start, repetition_frame, tail_novelty, tail_novelty_final,
    norepeat_N_k, norepeat_window, norepeat_tau, norepeat_scale_free, norepeat_s_star, norepeat_D,
    norepeat_D_rel, norepeat_repeats`` (True when ``D <= tau``: the video repeats) and, with trajectories,
    ``traj_source, traj_mean_px, traj_tail_px, traj_final_px, traj_missing``. Periods are ``None`` unless a loop was detected.
    """
    static_floor = _check_score_args(train_len, N_k, window, tau, scale_free, min_repeat_score, static_floor)
    f = check_frames(frames)
    L = int(train_len)
    x = preprocess(f, short_side=short_side)
    T = x.shape[0]
    has_tail = T >= L + 2
    row: Dict = {"num_frames": T, "train_len": L}
    # flow once per lag; index t = pair (t, t + lag)
    speeds = {g: flow_speeds(x, g) for g in STATIC_LAGS if g < T}
    sp = speeds.get(1, np.zeros(0))
    row["motion"] = float(sp.mean()) if T >= 2 else None
    row["motion_head"] = float(sp[: L - 1].mean()) if T >= L else None
    row["motion_tail"] = float(sp[L:].mean()) if has_tail else None
    row["slowdown_ratio"] = None
    if has_tail and not _static_from(speeds, static_floor, frames=L)["static"]:
        row["slowdown_ratio"] = row["motion_tail"] / row["motion_head"]
    row["frame_difference"] = frame_difference(x) if T >= 2 else None
    if T >= 2:
        st = _static_from(speeds, static_floor)
        row["static"], row["static_displacement"] = st["static"], st["displacement"]
    else:
        row["static"] = row["static_displacement"] = None
    row["speed_vs_reference"] = row["reference_motion"] = None
    if reference is not None:
        r = preprocess(check_frames(reference, "reference"), short_side=short_side)
        if r.shape[0] < 2:
            raise ValueError(f"reference needs at least 2 frames, got {r.shape[0]}")
        rs = {g: flow_speeds(r, g) for g in STATIC_LAGS if g < r.shape[0]}
        row["reference_motion"] = float(rs[1].mean())
        if not _static_from(rs, static_floor)["static"] and T >= 2:
            row["speed_vs_reference"] = row["motion"] / row["reference_motion"]
    if T >= 4:
        ss = self_similarity(x)
        ok = ss["period"] is not None and ss["score"] >= min_repeat_score
        row.update(selfsim_score=ss["score"], selfsim_period=ss["period"] if ok else None)
        lp = find_loop(x)
        ok = lp["period"] is not None and lp["score"] >= min_repeat_score
        row.update(loop_score=lp["score"], loop_period=lp["period"] if ok else None,
                   loop_period_subframe=lp["period_subframe"] if ok else None, loop_start=lp["start"] if ok else None)
        row["repetition_frame"] = row["loop_period"]
    else:
        row.update(selfsim_score=None, selfsim_period=None, loop_score=None, loop_period=None,
                   loop_period_subframe=None, loop_start=None, repetition_frame=None)
    if T > L:
        nov = tail_novelty(x, L)
        row["tail_novelty"], row["tail_novelty_final"] = nov["novelty"], nov["final"]
    else:
        row["tail_novelty"] = row["tail_novelty_final"] = None
    # row key -> no_repeat key; the verdict is ``norepeat_repeats`` (True: D <= tau, the video repeats or freezes)
    nr_keys = {f"norepeat_{k}": k for k in ("N_k", "window", "tau", "scale_free", "s_star", "D", "D_rel")}
    nr_keys["norepeat_repeats"] = "repetitive"
    if N_k is not None:
        nr = no_repeat(x, N_k, window=window, tau=tau, scale_free=scale_free)
        row.update({rk: nr[k] for rk, k in nr_keys.items()})
    else:
        row.update({rk: None for rk in nr_keys})
    if true_centres is not None or fit_trajectories:
        pred, radii = object_centres(f, num_objects=num_objects, return_radii=True)
        if true_centres is not None:
            true = _check_centres(true_centres, "true_centres")
            if true.shape[0] != T:
                raise ValueError(f"true_centres has {true.shape[0]} frames, the video {T}")
            source = "given"
        else:
            H, W = f.shape[1:3]
            true = extrapolate_centres(pred[:L], T, (H, W), radii=radii)
            source = "constant_velocity_fit"
        whole = trajectory_error(pred, true, match_frames=L)
        row.update(traj_source=source, traj_mean_px=whole["mean_px"])
        if has_tail:
            tail = trajectory_error(pred, true, start=L)
            row.update(traj_tail_px=tail["mean_px"], traj_final_px=tail["final_px"], traj_missing=tail["missing"])
        else:
            row.update(traj_tail_px=None, traj_final_px=whole["final_px"], traj_missing=whole["missing"])
    return {k: _nan_to_none(v) for k, v in row.items()}


MIN_SCORE_FRAMES = 4
""":func:`score_folder` lists shorter videos as skipped (their metrics would all be None)."""

DECODE_SHORT_SIDE = 256
""":func:`score_folder` decodes videos chunk by chunk, area-downsampled to this short side (never upsampled):
memory stays bounded for any size and length (the grey metrics work at 64 px; trajectory errors are in pixels of
the decoded size, ``decoded_size`` in each row)."""


def score_folder(folder: PathLike, train_len: int, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 reference: Optional[PathLike] = None, progress: bool = False,
                 **kwargs) -> Tuple[List[Dict], List[Tuple[str, str]]]:
    """Score every video file under ``folder`` (recursive, sorted) with :func:`score_video` (``kwargs``), each
    decoded in bounded memory at a short side of at most :data:`DECODE_SHORT_SIDE`. Entries that are not readable
    files (dangling symlinks, symlink loops, a folder named ``x.mp4``) are listed in ``skipped``.

    ``reference``: a folder of training-length videos made from the same prompts and seeds; each video is paired
    with the reference file of the same relative path (any video extension) and gets ``speed_vs_reference``. A
    video without a reference raises ``ValueError`` before any file is decoded.

    Returns ``(rows, skipped)``: one row per readable file (``{"path": ..., "reference": ..., **metrics}``) and
    ``(path, reason)`` for each file that could not be read, or whose reference could not (each also warned about).
    Bad arguments raise before any file is read. A missing folder or one without video files raises ``ValueError``.
    ``progress``: a progress bar over the files (:func:`vispos.utils.progress.progress_bar`).
    """
    from ..utils.progress import progress_bar

    _check_score_args(train_len, **kwargs)
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"video folder {str(root)!r} does not exist or is not a folder")
    exts = tuple(e.lower() for e in extensions)
    files, skipped = scan_files(root, exts)  # dangling symlinks, loops, a folder named x.mp4 -> skipped, named
    for path, reason in skipped:
        warnings.warn(f"score_folder: skipping {path!r}: {reason}", RuntimeWarning, stacklevel=2)
    if not files:
        raise ValueError(f"video folder {str(root)!r} holds no files with extensions {exts}"
                         + (f"; skipped: {skipped}" if skipped else ""))
    refs: Dict[Path, Path] = {}
    if reference is not None:
        rroot = Path(reference)
        if not rroot.is_dir():
            raise ValueError(f"reference folder {str(rroot)!r} does not exist or is not a folder")
        by_stem = {p.relative_to(rroot).with_suffix(""): p for p in scan_files(rroot, exts)[0]}
        missing = [str(p.relative_to(root)) for p in files if p.relative_to(root).with_suffix("") not in by_stem]
        if missing:
            raise ValueError(f"no reference video in {str(rroot)!r} for {missing} (references are paired by "
                             f"relative path without extension)")
        refs = {p: by_stem[p.relative_to(root).with_suffix("")] for p in files}
    rows = []
    bar = progress_bar(total=len(files), desc="score videos", enabled=progress, unit="video")
    for p in files:
        bar.update(1)
        try:
            frames = read_video(p, max_short_side=DECODE_SHORT_SIDE)  # streamed: never held at full resolution
            if frames.shape[0] < MIN_SCORE_FRAMES:  # scored, it would be all None and dilute every share
                raise VideoReadError(f"too short to score: {frames.shape[0]} frame(s); the repetition metrics need "
                                     f">= {MIN_SCORE_FRAMES}")
            ref = read_video(refs[p], max_short_side=DECODE_SHORT_SIDE) if p in refs else None
            row = score_video(frames, train_len, reference=ref, **kwargs)
            row["decoded_size"] = list(frames.shape[1:3])
        except VideoReadError as e:
            reason = str(e)
        else:
            rows.append({"path": str(p), **({"reference": str(refs[p])} if p in refs else {}), **row})
            continue
        skipped.append((str(p), reason))
        warnings.warn(f"score_folder: skipping {str(p)!r}: {reason}", RuntimeWarning, stacklevel=2)
    bar.close()
    return rows, skipped


#: Row keys that only mean something for a video with a detected loop: averaged over those videos only.
LOOP_KEYS = ("selfsim_period", "loop_period", "loop_period_subframe", "loop_start", "repetition_frame")


def summarize_scores(rows: Sequence[Dict]) -> Dict:
    """Aggregate :func:`score_video` rows.

    ``n``; ``norepeat_share`` (share of non-repetitive videos among the ``n_norepeat`` with a NoRepeat verdict;
    RIFLEx's NoRepeat score in [0, 1]); ``repeat_share`` and ``n_loops`` (videos with a detected loop);
    ``static_share`` and ``n_static``; ``mean_<key>`` of every numeric metric over the videos where it is defined
    (``None`` when none), where the loop keys (:data:`LOOP_KEYS`) are defined only for videos with a detected loop;
    ``median_loop_period``.
    """
    rows = list(rows)
    out: Dict = {"n": len(rows)}
    verdicts = [r.get("norepeat_repeats") for r in rows if r.get("norepeat_repeats") is not None]
    out["n_norepeat"] = len(verdicts)
    out["norepeat_share"] = (sum(1 for v in verdicts if not v) / len(verdicts)) if verdicts else None
    loops = [r for r in rows if r.get("repetition_frame") is not None]
    out["n_loops"] = len(loops)
    out["repeat_share"] = len(loops) / len(rows) if rows else None
    st = [r.get("static") for r in rows if r.get("static") is not None]
    out["n_static"] = sum(1 for v in st if v)
    out["static_share"] = out["n_static"] / len(st) if st else None
    keys: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                and math.isfinite(float(r[k]))]
        out[f"mean_{k}"] = float(np.mean(vals)) if vals else None
    periods = [float(r["loop_period"]) for r in loops if r.get("loop_period") is not None]
    out["median_loop_period"] = float(np.median(periods)) if periods else None
    return out
