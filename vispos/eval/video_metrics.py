"""Model-free metrics for frame extrapolation: does a video extended beyond its training length repeat, slow down,
freeze, or keep moving as it should? Definitions, normalisation and thresholds: ``docs/video_metrics.md``.

Every metric reads frames as uint8 ``(T, H, W, 3)`` (or grey ``(T, H, W)``; see :func:`vispos.data.video.to_uint8`
for model outputs) and pre-processes them with :func:`preprocess` (grey, area-downsampled to 64 px short side,
float32 in ``[0, 255]``). A float32 ``(T, h, w)`` array is taken as already pre-processed, so
:func:`score_video` pre-processes once. Distances between frames are per-pixel RMSE in grey levels ``[0, 255]``.

========================= =========================================================================================
:func:`no_repeat`         RIFLEx App. D NoRepeat: ``s* = argmin_{|s - N_k| <= w} d(x_s, x_0)``,
                          ``D = mean_i d(x_{s*+i}, x_i)``; repetitive iff ``D <= tau`` (default 10 grey levels).
:func:`self_similarity`   lag profile ``A(tau)`` of unit-norm, temporally centred frames; loop score and period.
:func:`motion`            ``mean_t mean |x_{t+1} - x_t| / 255``.
:func:`slowdown_ratio`    ``motion(x[L:]) / motion(x[:L])``: ~1 same speed, ~0.5 twice slower, 0 frozen.
:func:`tail_novelty`      ``min_{s<L} d(x_t, x_s)`` for ``t >= L``, over the head's mean pairwise distance.
:func:`object_centres`    colour-blob centroids of objects on a plain background (synthetic videos).
:func:`trajectory_error`  pixel distance of extracted centres to the true (or constant-velocity) continuation.
========================= =========================================================================================
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

from ..data.video import VIDEO_EXTENSIONS, VideoReadError, check_frames, read_video
from ..utils.checks import check_int as _check_len  # an int >= minimum (the shared validator)

__all__ = [
    "DEFAULT_TAU",
    "preprocess",
    "frame_distance",
    "no_repeat",
    "self_similarity",
    "estimate_repetition_frame",
    "motion",
    "slowdown_ratio",
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


def no_repeat(frames, N_k: float, window: Optional[int] = None, tau: float = DEFAULT_TAU) -> Dict:
    """RIFLEx App. D NoRepeat test for one video.

    ``s* = argmin_{s in [N_k - w, N_k + w], 1 <= s < T} d(x_s, x_0)`` and ``D = mean_{i=0}^{T-1-s*} d(x_{s*+i}, x_i)``
    with ``d`` the per-pixel RMSE of pre-processed frames; the video is *repetitive* iff ``D <= tau``.

    Args:
        frames: uint8 ``(T, H, W, 3)`` or pre-processed float32 ``(T, h, w)``.
        N_k: expected repetition frame (RIFLEx: the period of the intrinsic frequency, in frames).
        window: ``w``; default ``max(2, round(N_k / 4))``.
        tau: threshold on ``D`` (grey levels, 0..255).

    Returns ``{"N_k", "window", "tau", "s_star", "d_s_star", "D", "repetitive", "non_repetitive"}``; when the video is
    shorter than ``N_k - w + 1`` frames the test cannot run: ``s_star``, ``D``, ``repetitive`` are ``None``.
    """
    if isinstance(N_k, bool) or not isinstance(N_k, (int, float, np.integer, np.floating)) or not N_k > 0 \
            or not math.isfinite(N_k):
        raise ValueError(f"N_k must be a positive finite number of frames, got {N_k!r}")
    w = max(2, round(N_k / 4)) if window is None else _check_len(window, "window", 0)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0:
        raise ValueError(f"tau must be a number >= 0 (grey levels), got {tau!r}")
    x = _prep(frames)
    T = x.shape[0]
    centre = int(round(N_k))
    lo, hi = max(1, centre - w), min(T - 1, centre + w)
    out = {"N_k": float(N_k), "window": int(w), "tau": float(tau), "s_star": None, "d_s_star": None, "D": None,
           "repetitive": None, "non_repetitive": None}
    if lo > hi:
        return out
    cand = np.arange(lo, hi + 1)
    d0 = frame_distance(x[cand], x[0])
    s = int(cand[int(np.argmin(d0))])
    D = float(np.mean(frame_distance(x[s:], x[: T - s])))
    out.update(s_star=s, d_s_star=float(d0.min()), D=D, repetitive=bool(D <= tau), non_repetitive=bool(D > tau))
    return out


def self_similarity(frames, max_lag: Optional[int] = None, tol: float = 0.1) -> Dict:
    """Temporal self-similarity: does the video come back to where it was?

    Descriptors ``f_t`` are pre-processed frames minus the video's mean frame, scaled to unit norm (a frame equal to
    the mean gets ``0``). Lag profile ``A(tau) = mean_t <f_t, f_{t+tau}>`` for ``tau = 0..max_lag``; ``tau0`` is the
    first local minimum (``A(tau0) <= A(tau0 + 1)``); ``A* = max_{tau > tau0} A(tau)``.

    Returns a dict: ``lag_profile`` (list), ``tau0``, ``rise = A* - A(tau0)`` (REFERENCES' score),
    ``score = rise / (1 - A(tau0))`` in ``[0, 1]`` (≈0 no loop, 1 an exact loop), ``period`` = the smallest
    ``tau > tau0`` with ``A(tau) >= A* - tol * rise``. Without a local minimum before ``max_lag`` (the video only drifts
    away) ``score = rise = 0`` and ``period = tau0 = None``.

    Args:
        frames: uint8 ``(T, H, W, 3)`` (T >= 4) or pre-processed float32 ``(T, h, w)``.
        max_lag: largest lag; default ``T - max(2, T // 4)`` so that every lag averages >= 2 pairs.
        tol: relative tolerance that picks the first of near-equal peaks (loops peak at P, 2P, ...).
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
    if not 0 <= tol < 1:
        raise ValueError(f"tol must be in [0, 1), got {tol!r}")
    F = x.reshape(T, -1).astype(np.float64)
    F = F - F.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(F, axis=1, keepdims=True)
    scale = np.maximum(np.abs(F).max(), 1.0)
    F = np.where(norm > 1e-9 * scale * math.sqrt(F.shape[1]), F / np.maximum(norm, 1e-300), 0.0)
    G = F @ F.T
    A = np.array([np.mean(np.diagonal(G, offset=tau)) for tau in range(max_lag + 1)])
    out = {"lag_profile": [float(a) for a in A], "tau0": None, "period": None, "score": 0.0, "rise": 0.0,
           "peak": None}
    tau0 = next((t for t in range(1, max_lag) if A[t] <= A[t + 1]), None)
    if tau0 is None:
        return out
    tail = A[tau0 + 1:]
    peak = float(tail.max())
    rise = max(0.0, peak - float(A[tau0]))
    denom = 1.0 - float(A[tau0])
    score = min(1.0, rise / denom) if denom > 1e-12 else 0.0
    period = tau0 + 1 + int(np.argmax(tail >= peak - tol * rise))
    out.update(tau0=int(tau0), period=int(period), score=float(score), rise=float(rise), peak=peak)
    return out


def estimate_repetition_frame(frames, min_score: float = 0.5, **kwargs) -> Optional[int]:
    """First repetition frame ``N`` (the self-similarity period: frame ``N`` shows frame 0 again) or ``None`` when
    the loop score is below ``min_score``. Feed it to :func:`vispos.freqs.identify_k` to find RIFLEx's ``k``.
    ``kwargs`` go to :func:`self_similarity`."""
    if not 0 <= min_score <= 1:
        raise ValueError(f"min_score must be in [0, 1], got {min_score!r}")
    r = self_similarity(frames, **kwargs)
    if r["period"] is None or r["score"] < min_score:
        return None
    return int(r["period"])


# ----------------------------------------------------------------------------------------------------------------
# motion and novelty


def motion(frames) -> float:
    """Mean absolute frame difference ``mean_t mean |x_{t+1} - x_t| / 255`` of pre-processed frames (T >= 2)."""
    x = _prep(frames)
    if x.shape[0] < 2:
        raise ValueError(f"motion needs at least 2 frames, got {x.shape[0]}")
    return float(np.mean(np.abs(np.diff(x.astype(np.float64), axis=0))) / 255.0)


def _check_split(x: np.ndarray, train_len, need_tail: int) -> int:
    L = _check_len(train_len, "train_len", 2)
    if x.shape[0] < L + need_tail:
        raise ValueError(f"video has {x.shape[0]} frames; needs at least train_len + {need_tail} = {L + need_tail}")
    return L


def slowdown_ratio(frames, train_len: int) -> float:
    """``motion(x[L:]) / motion(x[:L])`` (``L = train_len``; needs ``T >= L + 2``). ≈1 same speed, ≈0.5 motion
    twice slower, 0 frozen, >1 faster. ``nan`` when the first ``L`` frames do not move at all."""
    x = _prep(frames)
    L = _check_split(x, train_len, 2)
    head, tail = motion(x[:L]), motion(x[L:])
    return tail / head if head > 0 else float("nan")


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


def score_video(frames, train_len: int, N_k: Optional[float] = None, true_centres=None, num_objects=None,
                fit_trajectories: bool = False, window: Optional[int] = None, tau: float = DEFAULT_TAU,
                min_repeat_score: float = 0.5, short_side: int = 64) -> Dict:
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
        window, tau: NoRepeat settings; min_repeat_score: :func:`estimate_repetition_frame` threshold.

    Keys: ``num_frames, train_len, motion, motion_head, motion_tail, slowdown_ratio, selfsim_score, selfsim_rise,
    selfsim_period, selfsim_tau0, repetition_frame, tail_novelty, tail_novelty_final, norepeat_N_k,
    norepeat_window, norepeat_tau, norepeat_s_star, norepeat_D, norepeat_repetitive`` and, with trajectories,
    ``traj_source, traj_mean_px, traj_tail_px, traj_final_px, traj_missing``.
    """
    f = check_frames(frames)
    x = preprocess(f, short_side=short_side)
    T = x.shape[0]
    L = _check_len(train_len, "train_len", 2)
    has_tail = T >= L + 2
    row: Dict = {"num_frames": T, "train_len": L}
    row["motion"] = motion(x) if T >= 2 else None
    row["motion_head"] = motion(x[:L]) if T >= L else None
    row["motion_tail"] = motion(x[L:]) if has_tail else None
    row["slowdown_ratio"] = slowdown_ratio(x, L) if has_tail else None
    if T >= 4:
        ss = self_similarity(x)
        row.update(selfsim_score=ss["score"], selfsim_rise=ss["rise"], selfsim_period=ss["period"],
                   selfsim_tau0=ss["tau0"])
        ok = ss["period"] is not None and ss["score"] >= min_repeat_score
        row["repetition_frame"] = ss["period"] if ok else None
    else:
        row.update(selfsim_score=None, selfsim_rise=None, selfsim_period=None, selfsim_tau0=None,
                   repetition_frame=None)
    if T > L:
        nov = tail_novelty(x, L)
        row["tail_novelty"], row["tail_novelty_final"] = nov["novelty"], nov["final"]
    else:
        row["tail_novelty"] = row["tail_novelty_final"] = None
    if N_k is not None:
        nr = no_repeat(x, N_k, window=window, tau=tau)
        row.update({f"norepeat_{k}": nr[k] for k in ("N_k", "window", "tau", "s_star", "D", "repetitive")})
    else:
        row.update({f"norepeat_{k}": None for k in ("N_k", "window", "tau", "s_star", "D", "repetitive")})
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


def score_folder(folder: PathLike, train_len: int, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 **kwargs) -> Tuple[List[Dict], List[Tuple[str, str]]]:
    """Score every video file under ``folder`` (recursive, sorted) with :func:`score_video` (``kwargs``).

    Returns ``(rows, skipped)``: one row per readable file (``{"path": ..., **metrics}``) and ``(path, reason)`` for
    each file that could not be read (each also warned about). Bad arguments raise before any file is read. A missing folder or one without video
    files raises ``ValueError``.
    """
    _check_len(train_len, "train_len", 2)
    if kwargs.get("N_k") is not None:
        no_repeat(np.zeros((2, 1, 1), np.float32), kwargs["N_k"], window=kwargs.get("window"),
                  tau=kwargs.get("tau", DEFAULT_TAU))  # validates N_k, window, tau before any decoding
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"video folder {str(root)!r} does not exist or is not a folder")
    exts = tuple(e.lower() for e in extensions)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise ValueError(f"video folder {str(root)!r} holds no files with extensions {exts}")
    rows, skipped = [], []
    for p in files:
        try:
            frames = read_video(p)
            row = score_video(frames, train_len, **kwargs)
        except VideoReadError as e:
            reason = str(e)
        else:
            rows.append({"path": str(p), **row})
            continue
        skipped.append((str(p), reason))
        warnings.warn(f"score_folder: skipping {str(p)!r}: {reason}", RuntimeWarning, stacklevel=2)
    return rows, skipped


def summarize_scores(rows: Sequence[Dict]) -> Dict:
    """Aggregate :func:`score_video` rows: ``n``, ``norepeat_share`` (share of non-repetitive videos among those with a
    NoRepeat verdict; RIFLEx's NoRepeat score in [0, 1]), ``repeat_share`` (share with a detected repetition frame),
    and the mean of every numeric metric (``None`` values ignored; ``None`` when no value)."""
    rows = list(rows)
    out: Dict = {"n": len(rows)}
    verdicts = [r.get("norepeat_repetitive") for r in rows if r.get("norepeat_repetitive") is not None]
    out["norepeat_share"] = (sum(1 for v in verdicts if not v) / len(verdicts)) if verdicts else None
    out["repeat_share"] = (sum(1 for r in rows if r.get("repetition_frame") is not None) / len(rows)) if rows else None
    keys: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                and math.isfinite(float(r[k]))]
        out[f"mean_{k}"] = float(np.mean(vals)) if vals else None
    return out
