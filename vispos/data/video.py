"""Video data: synthetic moving-object videos with a known continuation, a decord clip reader, and video I/O.

Conventions
-----------
* A *video tensor* is float ``(C, T, H, W)`` in ``[-1, 1]`` (what models eat).
* A *frames array* is numpy uint8 ``(T, H, W, 3)`` (what files hold and metrics read); :func:`to_uint8` converts.
* Pixel coordinates: pixel ``(x, y)`` has its centre at the integer point ``(x, y)``; a frame covers
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Object centres (:meth:`SyntheticVideos.trajectories`) use this convention,
  so the intensity centroid of a rendered object equals its centre.

Synthetic videos
----------------
:class:`SyntheticVideos` draws ``1..n`` discs/squares of distinct colours on a plain dark background, each moving at
a constant velocity and (``bounce=True``) reflecting off the walls. Positions are evaluated in closed form at any
(even fractional) time, so item ``i`` is a pure function of ``(seed, i)``: the first ``L`` frames of a longer video
equal the shorter video, and :meth:`~SyntheticVideos.render` / :meth:`~SyntheticVideos.trajectories` give the true
continuation from any start.

Writing and reading
-------------------
:func:`write_video` encodes MP4 with PyAV (libx264, yuv420p, ``crf`` quality; mpeg4 when PyAV's ffmpeg lacks
libx264) and :func:`write_gif` writes a looping GIF with PIL; both write atomically (encode in memory, temp file,
rename). :func:`read_video` / :func:`iter_video` decode a whole file in order, in bounded memory (PyAV; GIFs with
PIL; without PyAV a ``MissingExtraError`` naming ``pip install 'vispos[video]'``); :class:`VideoFolder` reads clips
at random frames with decord (PyAV when decord is not installed, one warning). yuv420p needs even sizes: odd heights/widths are padded
by repeating the last row/column (logged), so a read-back video can be one pixel larger than what was written.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils.checks import check_int, check_positive, check_size
from ..utils.io import atomic_path, atomic_write_bytes
from .files import scan_files

__all__ = [
    "SyntheticVideos",
    "VideoFolder",
    "VIDEO_EXTENSIONS",
    "write_video",
    "write_gif",
    "read_video",
    "video_backend",
    "iter_video",
    "shrink_frames",
    "to_uint8",
    "to_float",
    "video_grid",
    "check_frames",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")

# distinct, saturated colours (RGB in [0, 1]); an object's colour identifies it (see vispos.eval.video_metrics)
_PALETTE_RGB = (
    (0.95, 0.20, 0.20),  # red
    (0.20, 0.85, 0.30),  # green
    (0.25, 0.45, 1.00),  # blue
    (0.95, 0.90, 0.20),  # yellow
    (0.20, 0.90, 0.95),  # cyan
    (0.90, 0.30, 0.90),  # magenta
    (1.00, 0.60, 0.10),  # orange
    (0.95, 0.95, 0.95),  # white
)
_PALETTE_GRAY = (0.95, 0.75, 0.55, 0.40)
_SHAPES = ("disc", "square")


# ----------------------------------------------------------------------------------------------------------------
# synthetic videos


class SyntheticVideos(Dataset):
    """Moving discs/squares at constant velocity, bouncing off the walls, on a plain dark background.

    Args:
        num_videos: dataset length.
        length: frames per item ``T``.
        size: ``(H, W)`` or an int (square).
        num_objects: an int or an inclusive range ``(lo, hi)``; at most 8 (``channels=3``) or 4 (``channels=1``)
            so that every object in a video has its own colour / grey level.
        seed: non-negative int; item ``i`` depends only on ``(seed, i)`` (and the size/speed/radius settings).
        channels: 3 (RGB) or 1 (grey).
        bounce: reflect off the walls; ``False``: straight lines that may leave the frame.
        max_speed: pixels per frame; each object's speed is ``max_speed * U(0.4, 1)`` in a random direction.
            Default ``max(0.5, min(H, W) / 16)``. Halving it (same seed) halves every velocity exactly.
        radius: object radius (disc) or half-side (square) in pixels: a number or a range ``(lo, hi)``; default
            ``base * (0.8, 1.2)`` with ``base = max(1.5, min(H, W) / 8)``. Must leave room to move:
            ``radius < min(H, W) / 2 - 0.5``.

    ``dataset[i]`` is ``{"video": float (C, T, H, W) in [-1, 1], "index": i}``.
    """

    def __init__(
        self,
        num_videos: int,
        length: int,
        size=(32, 32),
        num_objects=(1, 3),
        seed: int = 0,
        channels: int = 3,
        bounce: bool = True,
        max_speed: Optional[float] = None,
        radius=None,
    ):
        self.num_videos = check_int(num_videos, "num_videos", 1)
        self.length = check_int(length, "length", 1)
        self.size = check_size(size)
        H, W = self.size
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.channels = int(channels)
        max_n = len(_PALETTE_RGB) if channels == 3 else len(_PALETTE_GRAY)
        if isinstance(num_objects, (int, np.integer)) and not isinstance(num_objects, bool):
            num_objects = (num_objects, num_objects)
        if not (isinstance(num_objects, (tuple, list)) and len(num_objects) == 2):
            raise TypeError(f"num_objects must be an int or a range (lo, hi), got {num_objects!r}")
        lo = check_int(num_objects[0], "num_objects[0]", 1)
        hi = check_int(num_objects[1], "num_objects[1]", 1)
        if lo > hi or hi > max_n:
            raise ValueError(f"num_objects must satisfy 1 <= lo <= hi <= {max_n} (channels={channels}), "
                             f"got {tuple(num_objects)!r}")
        self.num_objects = (lo, hi)
        self.seed = check_int(seed, "seed", 0)
        if not isinstance(bounce, bool):
            raise TypeError(f"bounce must be a bool, got {bounce!r}")
        self.bounce = bounce
        self.max_speed = max(0.5, min(H, W) / 16) if max_speed is None else check_positive(max_speed, "max_speed")
        if radius is None:
            base = max(1.5, min(H, W) / 8)
            r_lo, r_hi = 0.8 * base, 1.2 * base
        elif isinstance(radius, (tuple, list)) and len(radius) == 2:
            r_lo, r_hi = check_positive(radius[0], "radius[0]"), check_positive(radius[1], "radius[1]")
        else:
            r_lo = r_hi = check_positive(radius, "radius")
        if r_lo > r_hi or r_hi >= min(H, W) / 2 - 0.5:
            raise ValueError(f"radius range ({r_lo:g}, {r_hi:g}) must be increasing and below "
                             f"min(H, W)/2 - 0.5 = {min(H, W) / 2 - 0.5:g} for size {self.size}")
        self.radius = (r_lo, r_hi)

    def __len__(self) -> int:
        return self.num_videos

    def _check_index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {i!r}")
        if not -self.num_videos <= i < self.num_videos:
            raise IndexError(f"index {i} out of range for {self.num_videos} videos")
        return int(i) % self.num_videos

    def objects(self, i: int) -> Dict:
        """The parameters of video ``i`` (JSON-able): background level, and per object its shape, colour (in
        [0, 1], ``channels`` values), radius, start centre ``(x, y)`` and velocity ``(vx, vy)`` in pixels/frame."""
        i = self._check_index(i)
        rng = np.random.default_rng([self.seed, i])
        lo, hi = self.num_objects
        n = int(rng.integers(lo, hi + 1))
        bg = float(rng.uniform(0.0, 0.15))
        palette = _PALETTE_RGB if self.channels == 3 else _PALETTE_GRAY
        colour_idx = rng.permutation(len(palette))[:n]
        shapes = rng.integers(0, 2, size=n)
        u_r = rng.uniform(size=n)
        u_p = rng.uniform(size=(n, 2))
        u_s = rng.uniform(size=n)
        angle = rng.uniform(0.0, 2 * math.pi, size=n)
        H, W = self.size
        out = []
        for j in range(n):
            r = self.radius[0] + (self.radius[1] - self.radius[0]) * u_r[j]
            x0 = (r - 0.5) + u_p[j, 0] * (W - 2 * r)
            y0 = (r - 0.5) + u_p[j, 1] * (H - 2 * r)
            speed = self.max_speed * (0.4 + 0.6 * u_s[j])
            c = palette[colour_idx[j]]
            out.append({
                "shape": _SHAPES[int(shapes[j])],
                "colour": list(c) if self.channels == 3 else [c],
                "radius": float(r),
                "start": [float(x0), float(y0)],
                "velocity": [float(speed * math.cos(angle[j])), float(speed * math.sin(angle[j]))],
            })
        return {"background": bg, "objects": out}

    def trajectories(self, i: int, length: int, start: float = 0, time_scale: float = 1.0) -> np.ndarray:
        """Object centres at times ``start + t * time_scale``, ``t = 0..length-1``: float64 ``(T, n, 2)`` as
        ``(x, y)`` pixels (pixel centres at integers). ``time_scale=0.5`` is the same motion 2x slower."""
        length = check_int(length, "length", 1)
        if isinstance(start, bool) or not isinstance(start, (int, float, np.integer, np.floating)) \
                or not math.isfinite(start):
            raise TypeError(f"start must be a finite number (frame time), got {start!r}")
        time_scale = check_positive(time_scale, "time_scale")
        params = self.objects(i)["objects"]
        t = float(start) + np.arange(length, dtype=np.float64) * time_scale
        H, W = self.size
        out = np.empty((length, len(params), 2), dtype=np.float64)
        for j, o in enumerate(params):
            for a, extent in ((0, W), (1, H)):
                raw = o["start"][a] + o["velocity"][a] * t
                if self.bounce:
                    lo_w, hi_w = o["radius"] - 0.5, extent - 0.5 - o["radius"]
                    span = hi_w - lo_w
                    u = np.mod(raw - lo_w, 2 * span)
                    raw = lo_w + np.where(u <= span, u, 2 * span - u)
                out[:, j, a] = raw
        return out

    def render(self, i: int, length: int, start: float = 0, time_scale: float = 1.0) -> torch.Tensor:
        """Frames at times ``start + t * time_scale``: float32 ``(C, T, H, W)`` in ``[-1, 1]``.

        Edges are anti-aliased (coverage ramp of one pixel) so centroids are sub-pixel accurate.
        """
        info = self.objects(i)
        centres = self.trajectories(i, length, start=start, time_scale=time_scale)
        H, W = self.size
        C = self.channels
        canvas = np.full((C, length, H, W), info["background"], dtype=np.float32)
        xs = np.arange(W, dtype=np.float32)[None, None, :]
        ys = np.arange(H, dtype=np.float32)[None, :, None]
        for j, o in enumerate(info["objects"]):
            cx = centres[:, j, 0].astype(np.float32)[:, None, None]
            cy = centres[:, j, 1].astype(np.float32)[:, None, None]
            r = np.float32(o["radius"])
            if o["shape"] == "disc":
                dist = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
                alpha = np.clip(r + 0.5 - dist, 0.0, 1.0)
            else:
                alpha = np.clip(r + 0.5 - np.abs(xs - cx), 0.0, 1.0) * np.clip(r + 0.5 - np.abs(ys - cy), 0.0, 1.0)
            for c in range(C):
                canvas[c] = canvas[c] * (1.0 - alpha) + alpha * np.float32(o["colour"][c])
        return torch.from_numpy(canvas * 2.0 - 1.0)

    def __getitem__(self, i) -> Dict:
        i = self._check_index(i)
        return {"video": self.render(i, self.length), "index": i}

    def __repr__(self) -> str:
        return (f"SyntheticVideos(num_videos={self.num_videos}, length={self.length}, size={self.size}, "
                f"num_objects={self.num_objects}, seed={self.seed}, channels={self.channels}, bounce={self.bounce}, "
                f"max_speed={self.max_speed:g}, radius=({self.radius[0]:g}, {self.radius[1]:g}))")


# ----------------------------------------------------------------------------------------------------------------
# conversions


def check_frames(frames, name: str = "frames") -> np.ndarray:
    """Validate a frames array: numpy (or torch) uint8 ``(T, H, W, 3)``; grey ``(T, H, W)`` / ``(T, H, W, 1)`` are
    expanded to 3 channels. Returns a C-contiguous numpy uint8 ``(T, H, W, 3)``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{name} must be a uint8 numpy array (T, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (T, H, W, 3), got {frames.dtype}; "
                        "convert a (C, T, H, W) [-1, 1] tensor with to_uint8")
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"{name} must have shape (T, H, W, 3) (or grey (T, H, W)), got {tuple(frames.shape)}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"{name} is empty: shape {tuple(frames.shape)}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames)


def to_uint8(video) -> np.ndarray:
    """``(C, T, H, W)`` float in ``[-1, 1]`` (torch or numpy; C = 1 or 3) → numpy uint8 ``(T, H, W, 3)``.

    Values are clamped to ``[-1, 1]`` and rounded; one channel is repeated to three.
    """
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(video)
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video must be a float tensor (C, T, H, W) in [-1, 1], got {type(video).__name__}")
    if not video.is_floating_point():
        raise TypeError(f"video must be a float tensor (C, T, H, W) in [-1, 1], got dtype {video.dtype}")
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"video must have shape (C, T, H, W) with C in (1, 3), got {tuple(video.shape)}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(1, 2, 3, 0)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:3], 3)
    return np.ascontiguousarray(x.numpy())


def to_float(frames) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` → float32 ``(3, T, H, W)`` in ``[-1, 1]`` (inverse of :func:`to_uint8`)."""
    f = check_frames(frames)
    return torch.from_numpy(f).permute(3, 0, 1, 2).float().div(127.5).sub(1.0).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# writing / reading


def _check_fps(fps) -> Fraction:
    fps = check_positive(fps, "fps")
    return Fraction(fps).limit_denominator(1001)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    T, H, W, _ = frames.shape
    ph, pw = H % 2, W % 2
    if ph or pw:
        logger.info("padding %dx%d frames to %dx%d (yuv420p needs even sizes)", H, W, H + ph, W + pw)
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _pick_codec(prefer: str = "libx264") -> str:
    import av

    if prefer == "mpeg4":
        return "mpeg4"
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except av.codec.codec.UnknownCodecError:
        logger.info("PyAV's ffmpeg has no libx264 encoder; writing MP4 with mpeg4")
        return "mpeg4"


def write_video(path: PathLike, frames, fps: float = 8, crf: int = 12, codec: str = "libx264") -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as an MP4 with PyAV, atomically.

    libx264 + yuv420p (``crf``: 0 lossless-luma … 51 worst; default 12 is near-transparent) when PyAV's bundled
    ffmpeg has it, else (or with ``codec="mpeg4"``) mpeg4 at ``-q:v 2``; ``movflags=faststart``. Odd sizes are padded by edge
    repetition to even ones. Encoded into a temp file in the same folder, then renamed: a reader never sees a
    half-written video.
    """
    import av

    frames = _pad_even(check_frames(frames))
    rate = _check_fps(fps)
    crf = check_int(crf, "crf", 0)
    if crf > 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    p = Path(path)
    if p.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise ValueError(f"write_video writes MP4: path must end in .mp4/.m4v/.mov, got {str(p)!r}")
    T, H, W, _ = frames.shape
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec must be 'libx264' or 'mpeg4', got {codec!r}")
    codec = _pick_codec(codec)
    # moov atom first (faststart) for streaming players; PyAV needs a real file: temp file + rename
    with atomic_path(p, suffix=p.suffix) as tmp:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "faststart"}) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "medium"}
            else:
                stream.codec_context.qscale = True  # constant quantiser (ffmpeg's -q:v 2)
                stream.codec_context.global_quality = 2 * 118  # FF_QP2LAMBDA = 118
            for t in range(T):
                frame = av.VideoFrame.from_ndarray(frames[t], format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return p


def write_gif(path: PathLike, frames, fps: float = 8) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as a looping GIF with PIL, atomically (256-colour palette per frame)."""
    from PIL import Image

    frames = check_frames(frames)
    fps = check_positive(fps, "fps")
    p = Path(path)
    if p.suffix.lower() != ".gif":
        raise ValueError(f"write_gif: path must end in .gif, got {str(p)!r}")
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)),
                   loop=0, optimize=False, disposal=1)
    atomic_write_bytes(p, buf.getvalue())
    os.chmod(p, 0o644)
    return p


class VideoReadError(ValueError):
    """A file could not be opened or decoded as a video."""


MAX_FRAME_PIXELS = 89_478_485
"""Frames with more pixels are refused from the header (PIL's default image limit: ~9459 x 9459)."""


class _GifReader:
    """decord cannot read GIFs; PIL decodes them (composited RGB frames)."""

    def __init__(self, path: Path):
        self.path = path
        with self._open() as img:
            self.n = int(getattr(img, "n_frames", 1))

    def _open(self):
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(self.path)
                w, h = img.size
                if w * h > MAX_FRAME_PIXELS:  # checked from the header, before any frame is decoded
                    img.close()
                    raise VideoReadError(f"GIF {str(self.path)!r} claims {w}x{h} frames ({w * h} pixels), more than "
                                         f"MAX_FRAME_PIXELS={MAX_FRAME_PIXELS} (decompression-bomb guard)")
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise VideoReadError(f"cannot open GIF {str(self.path)!r}: decompression-bomb guard: {e}") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if isinstance(e, VideoReadError):
                raise
            raise VideoReadError(f"cannot open GIF {str(self.path)!r}: {e}") from e
        return img

    def __len__(self) -> int:
        return self.n

    def get(self, indices: Sequence[int]) -> np.ndarray:
        out = []
        with self._open() as img:
            try:
                for i in indices:
                    img.seek(int(i))
                    out.append(np.asarray(img.convert("RGB")))
            except (OSError, EOFError, ValueError, SyntaxError) as e:
                raise VideoReadError(f"cannot decode frame {i} of GIF {str(self.path)!r}: {e}") from e
        return np.stack(out)


_QUIET = []


def _quiet_decord(decord) -> None:
    """decord's ffmpeg prints "moov atom not found", "partial file" ... to stderr for every bad file; those reasons
    reach the user as the skip reason instead (VideoFolder.skipped / the results' ``skipped``)."""
    if not _QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _QUIET.append(True)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while native code runs (its messages bypass Python's sys.stderr)."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no fd 2
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _DecordReader:
    def __init__(self, path: Path):
        import decord

        _quiet_decord(decord)

        try:
            with _native_stderr_silenced():  # decord logs "ERROR opening: ..." itself; the exception says it
                self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoReadError(f"cannot open video {str(path)!r}: {_first_line(e)}") from e
        self.path = path

    def __len__(self) -> int:
        return len(self._vr)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        import decord

        try:
            return self._vr.get_batch(list(indices)).asnumpy()
        except decord.DECORDError as e:
            if "DECORDArrayCopyFromTo" not in str(e):
                raise VideoReadError(f"cannot decode frames {indices[0]}..{indices[-1]} of {str(self.path)!r}: "
                                     f"{_first_line(e)}") from e
            # decord bug (dmlc/decord#336): some frame widths (e.g. 16, 24, 48, 72 px) have padded rows that
            # decord cannot copy out; PyAV decodes those files.
            logger.warning("decord cannot copy %s frames (dmlc/decord#336); decoding them with PyAV", self.path)
            return _pyav_frames(self.path, indices)
        except (RuntimeError, IndexError) as e:
            raise VideoReadError(f"cannot decode frames {indices[0]}..{indices[-1]} of {str(self.path)!r}: "
                                 f"{_first_line(e)}") from e


def _pyav_frames(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` (decode order) of the first video stream with PyAV: uint8 ``(len(indices), H, W, 3)``."""
    import av

    want = sorted(set(int(i) for i in indices))
    got: Dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            for n, frame in enumerate(container.decode(video=0)):
                if n in want:
                    got[n] = frame.to_ndarray(format="rgb24")
                if n >= want[-1]:
                    break
    except av.error.FFmpegError as e:
        raise VideoReadError(f"cannot decode {str(path)!r} with PyAV: {_first_line(e)}") from e
    missing = [i for i in want if i not in got]
    if missing:
        raise VideoReadError(f"{str(path)!r} ends before frame {missing[0]} (truncated?)")
    return np.stack([got[int(i)] for i in indices])


_DECORD_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # "[22:55:08] /src/video/video_reader.cc:486: "


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    s = s.splitlines()[0] if s else repr(e)
    return _DECORD_PREFIX.sub("", s)  # decord's time stamp and source line: the same file gives the same reason


class _PyAVReader:
    """PyAV reader, used when decord is not installed (slower: frames are decoded in order)."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoReadError(f"{str(path)!r} has no video stream")
                self.n = sum(1 for _ in container.decode(video=0))
        except av.error.FFmpegError as e:
            raise VideoReadError(f"cannot open video {str(path)!r} with PyAV: {_first_line(e)}") from e

    def __len__(self) -> int:
        return self.n

    def get(self, indices: Sequence[int]) -> np.ndarray:
        return _pyav_frames(self.path, indices)


_warned_no_decord = []


def video_backend() -> str:
    """``"decord"`` when it is installed, else ``"pyav"`` (one warning), else :class:`MissingExtraError` with the
    install line. GIFs are always read with PIL."""
    from ..utils.extras import have, require

    if have("decord"):
        return "decord"
    require("av", "video", "reading video files (decord or PyAV)")
    if not _warned_no_decord:
        _warned_no_decord.append(True)
        logger.warning("decord is not installed: reading videos with PyAV (slower); pip install 'vispos[video]' "
                       "for decord")
    return "pyav"


def _open_reader(path: PathLike):
    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"video file {str(p)!r} does not exist")
    if p.suffix.lower() == ".gif":
        return _GifReader(p)
    return _DecordReader(p) if video_backend() == "decord" else _PyAVReader(p)


def _decode(reader, indices: Sequence[int], path) -> np.ndarray:
    indices = list(indices)
    out = reader.get(indices)
    if out.ndim != 4 or out.shape[0] != len(indices) or out.shape[-1] != 3:
        raise VideoReadError(f"decoded an array of shape {tuple(out.shape)} instead of {len(indices)} RGB frames "
                             f"from {str(path)!r}")
    return out


CHUNK_BYTES = 64 * 2 ** 20
"""Decoded frames held at once by :func:`iter_video` (a chunk is at least one frame)."""


def shrink_frames(frames: np.ndarray, max_short_side: int) -> np.ndarray:
    """Area-downsample uint8 ``(T, H, W, 3)`` frames so the short side is at most ``max_short_side`` (never
    upsampled), one frame at a time (float memory: one frame)."""
    T, H, W, _ = frames.shape
    m = min(H, W)
    if m <= max_short_side:
        return frames
    size = (max(1, round(H * max_short_side / m)), max(1, round(W * max_short_side / m)))
    out = np.empty((T, *size, 3), np.uint8)
    for t in range(T):
        x = torch.from_numpy(np.ascontiguousarray(frames[t])).permute(2, 0, 1)[None].float()
        y = torch.nn.functional.interpolate(x, size=size, mode="area")[0].permute(1, 2, 0)
        out[t] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _gif_frames(path: Path):
    reader = _GifReader(path)
    for i in range(len(reader)):
        yield reader.get([i])[0]


def _pyav_sequential(path: Path):
    """Every frame of the first video stream, decoded in order with PyAV (no random access, so nothing is cached:
    decord's reader grows by tens of MB per large frame it has seen)."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"cannot open video {str(path)!r}: {_first_line(e)}") from e
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{str(path)!r} has no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoReadError(f"cannot decode {str(path)!r}: {_first_line(e)}") from e


def iter_video(path: PathLike, max_short_side: Optional[int] = None, chunk_bytes: int = CHUNK_BYTES):
    """Decode a video in order, in chunks: yields uint8 ``(t, H', W', 3)`` arrays, each holding about
    ``chunk_bytes`` of decoded frames (at least one frame) and, with ``max_short_side``, area-downsampled frame by
    frame as soon as decoded (:func:`shrink_frames`). Memory is bounded by one chunk, whatever the video's length
    and size. Videos are decoded with PyAV (sequential), GIFs with PIL."""
    if max_short_side is not None:
        max_short_side = check_int(max_short_side, "max_short_side", 1)
    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"video file {str(p)!r} does not exist")
    if p.suffix.lower() != ".gif":
        from ..utils.extras import require

        require("av", "video", "reading video files")
    frames = _gif_frames(p) if p.suffix.lower() == ".gif" else _pyav_sequential(p)
    block: List[np.ndarray] = []
    size = 0
    n = 0
    for f in frames:
        if f.ndim != 3 or f.shape[-1] != 3:
            raise VideoReadError(f"decoded a frame of shape {tuple(f.shape)} instead of (H, W, 3) from {str(p)!r}")
        if max_short_side is not None:
            f = shrink_frames(f[None], max_short_side)[0]
        block.append(f)
        size += f.nbytes
        n += 1
        if size >= chunk_bytes:
            yield np.stack(block)
            block, size = [], 0
    if block:
        yield np.stack(block)
    if n == 0:
        raise VideoReadError(f"video {str(p)!r} has no frames")


def read_video(path: PathLike, max_short_side: Optional[int] = None) -> np.ndarray:
    """Decode every frame of a video file: uint8 ``(T, H, W, 3)``.

    Frames are decoded in order, chunk by chunk (:func:`iter_video`: PyAV for videos, PIL for GIFs).
    ``max_short_side`` area-downsamples each frame as soon as it is decoded, so a long or large video never sits in
    memory at full resolution (what the ``--videos`` scorer uses: a 48-frame 2048x2048 MP4 needs ~250 MB above the
    interpreter's RSS, see ``tests/test_video_memory.py``).

    Raises :class:`VideoReadError` (a ``ValueError``) naming the file when it is missing, unreadable or truncated.
    """
    return np.ascontiguousarray(np.concatenate(list(iter_video(path, max_short_side)), axis=0))


# ----------------------------------------------------------------------------------------------------------------
# grid of videos


def _label_strip(text: str, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    box = draw.textbbox((0, 0), text, font=font)
    th = box[3] - box[1]
    draw.text((2, max(0, (height - th) // 2) - box[1]), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def _text_width(text: str) -> int:
    from PIL import Image, ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    box = draw.textbbox((0, 0), text, font=ImageFont.load_default())
    return box[2] - box[0]


def _extend(frames: np.ndarray, T: int, fill: str) -> np.ndarray:
    if frames.shape[0] == T:
        return frames
    extra = T - frames.shape[0]
    tail = np.repeat(frames[-1:], extra, axis=0) if fill == "last" else np.zeros((extra, *frames.shape[1:]), np.uint8)
    return np.concatenate([frames, tail], axis=0)


def video_grid(rows, labels: Optional[Sequence[str]] = None, pad: int = 2, fill: str = "last") -> np.ndarray:
    """Stack videos into one uint8 video ``(T, H_total, W_total, 3)`` (e.g. one row per scaling rule).

    Args:
        rows: a list; each entry is one frames array uint8 ``(T_i, H_i, W_i, 3)`` or a list of them (placed side by
            side, ``pad`` pixels apart). Rows are stacked top to bottom, ``pad`` black pixels apart.
        labels: optional text per row, drawn white on black with PIL's default font in a column on the left.
        pad: black gap in pixels between cells (>= 0).
        fill: how a video shorter than the longest one is extended: ``"last"`` holds its last frame, ``"black"``
            shows black frames.

    Cells narrower or lower than their row/column are padded with black (top-left aligned). The output may have
    odd sizes; :func:`write_video` pads them.
    """
    if not isinstance(rows, (list, tuple)) or len(rows) == 0:
        raise ValueError(f"rows must be a non-empty list of frames arrays (or lists of them), got {type(rows).__name__}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    if fill not in ("last", "black"):
        raise ValueError(f"fill must be 'last' or 'black', got {fill!r}")
    cells: List[List[np.ndarray]] = []
    for r, row in enumerate(rows):
        items = list(row) if isinstance(row, (list, tuple)) else [row]
        if not items:
            raise ValueError(f"row {r} is empty")
        cells.append([check_frames(v, name=f"rows[{r}]") for v in items])
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != len(rows):
            raise ValueError(f"labels has {len(labels)} entries for {len(rows)} rows")
    T = max(v.shape[0] for row in cells for v in row)
    row_imgs = []
    for row in cells:
        h = max(v.shape[1] for v in row)
        parts = []
        for c, v in enumerate(row):
            v = _extend(v, T, fill)
            v = np.pad(v, ((0, 0), (0, h - v.shape[1]), (0, 0), (0, 0)))
            if c:
                parts.append(np.zeros((T, h, pad, 3), np.uint8))
            parts.append(v)
        row_imgs.append(np.concatenate(parts, axis=2))
    width = max(r.shape[2] for r in row_imgs)
    label_w = 0
    if labels is not None:
        label_w = max(_text_width(s) for s in labels) + 6
    out_rows = []
    for r, img in enumerate(row_imgs):
        img = np.pad(img, ((0, 0), (0, 0), (0, width - img.shape[2]), (0, 0)))
        if labels is not None:
            strip = _label_strip(labels[r], img.shape[1], label_w)
            img = np.concatenate([np.broadcast_to(strip, (T, *strip.shape)), img], axis=2)
        if r:
            out_rows.append(np.zeros((T, pad, img.shape[2], 3), np.uint8))
        out_rows.append(img)
    return np.ascontiguousarray(np.concatenate(out_rows, axis=1))


# ----------------------------------------------------------------------------------------------------------------
# folder of real videos


class VideoFolder(Dataset):
    """Clips from the video files under ``root`` (searched recursively, sorted), decoded with decord.

    Item ``i`` is clip ``i % clips_per_video`` of file ``i // clips_per_video``: ``clip_length`` frames taken every
    ``stride`` frames, from a start drawn from ``(seed, epoch, i)`` (``random_start=True``; call
    :meth:`set_epoch` each epoch for fresh starts) or from frame 0. Returns
    ``{"video": float (3, T, H, W) in [-1, 1], "index": i, "path": str, "start": int}``.

    ``size``: ``None`` keeps the native size (files of different sizes then cannot be batched), ``(H, W)`` resizes
    (aspect not kept), an int ``s`` resizes the short side to ``s`` and centre-crops ``s x s``. Resizing is
    antialiased bilinear.

    Files that cannot be opened, hold fewer than ``(clip_length - 1) * stride + 1`` frames, or whose last needed
    frame cannot be decoded (truncated files) are skipped with a warning and recorded in :attr:`skipped` as
    ``(path, reason)``. A clip that fails to decode later is recorded too, with a warning, and the next file's clip
    is returned instead. A missing folder or one with no video files raises ``ValueError`` naming it; so does a
    folder whose every file is skipped.
    """

    def __init__(
        self,
        root: PathLike,
        clip_length: int,
        stride: int = 1,
        size=None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        seed: int = 0,
        clips_per_video: int = 1,
        random_start: bool = True,
    ):
        self.root = Path(root)
        self.clip_length = check_int(clip_length, "clip_length", 1)
        self.stride = check_int(stride, "stride", 1)
        self.size = None if size is None else (size if isinstance(size, (int, np.integer)) and not
                                               isinstance(size, bool) else check_size(size))
        if isinstance(self.size, (int, np.integer)):
            self.size = check_int(self.size, "size", 1)
        if isinstance(extensions, str) or not all(isinstance(e, str) for e in extensions) or not extensions:
            raise TypeError(f"extensions must be a non-empty sequence of suffixes like '.mp4', got {extensions!r}")
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.seed = check_int(seed, "seed", 0)
        self.clips_per_video = check_int(clips_per_video, "clips_per_video", 1)
        self.random_start = bool(random_start)
        self.epoch = 0
        if not self.root.exists():
            raise ValueError(f"video folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise ValueError(f"video folder {str(self.root)!r} is not a folder")
        files, unusable = scan_files(self.root, self.extensions)
        self.skipped: List[Tuple[str, str]] = []
        for path, reason in unusable:  # dangling symlinks, loops, a folder named x.mp4: listed, not dropped
            self._skip(path, reason)
        if not files:
            raise ValueError(f"video folder {str(self.root)!r} holds no files with extensions {self.extensions}"
                             + (f"; skipped: {self.skipped}" if self.skipped else ""))
        self.files: List[str] = []
        self.num_frames: List[int] = []
        span = self.span
        for p in files:
            try:
                reader = _open_reader(p)
                n = len(reader)
                if n < span:
                    self._skip(p, f"too short: {n} frames < {span} needed (clip_length={self.clip_length}, "
                                  f"stride={self.stride})")
                    continue
                _decode(reader, [span - 1, n - 1] if n - 1 != span - 1 else [n - 1], p)
            except VideoReadError as e:
                self._skip(p, str(e))
                continue
            self.files.append(str(p))
            self.num_frames.append(n)
        if not self.files:
            raise ValueError(f"video folder {str(self.root)!r}: none of its {len(files)} video files is usable; "
                             f"skipped: {self.skipped}")

    @property
    def span(self) -> int:
        """Frames a clip covers: ``(clip_length - 1) * stride + 1``."""
        return (self.clip_length - 1) * self.stride + 1

    def _skip(self, path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        warnings.warn(f"VideoFolder: skipping {str(path)!r}: {reason}", RuntimeWarning, stacklevel=3)

    def set_epoch(self, epoch: int) -> None:
        """Reseed clip starts for a new epoch (``random_start=True``)."""
        self.epoch = check_int(epoch, "epoch", 0)

    def __len__(self) -> int:
        return len(self.files) * self.clips_per_video

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        # x: (T, 3, H, W) float
        if self.size is None:
            return x
        H, W = x.shape[-2:]
        if isinstance(self.size, int):
            s = self.size
            scale = s / min(H, W)
            nh, nw = max(s, round(H * scale)), max(s, round(W * scale))
            if (nh, nw) != (H, W):
                x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True,
                                                    align_corners=False)
            top, left = (nh - s) // 2, (nw - s) // 2
            return x[..., top:top + s, left:left + s]
        if tuple(self.size) != (H, W):
            x = torch.nn.functional.interpolate(x, size=tuple(self.size), mode="bilinear", antialias=True,
                                                align_corners=False)
        return x

    def clip(self, file_index: int, start: int) -> torch.Tensor:
        """Clip of file ``file_index`` from frame ``start``: float32 ``(3, clip_length, H, W)`` in ``[-1, 1]``."""
        n = self.num_frames[file_index]
        if not 0 <= start <= n - self.span:
            raise ValueError(f"start must be in 0..{n - self.span} for {self.files[file_index]!r}, got {start}")
        idx = list(range(start, start + self.span, self.stride))
        frames = _decode(_open_reader(self.files[file_index]), idx, self.files[file_index])
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        x = self._resize(x).clamp(0, 255).div(127.5).sub(1.0)
        return x.permute(1, 0, 2, 3).contiguous()

    def __getitem__(self, i) -> Dict:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {i!r}")
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        i = int(i)
        nfiles = len(self.files)
        f0 = i // self.clips_per_video
        for attempt in range(nfiles):
            f = (f0 + attempt) % nfiles
            n = self.num_frames[f]
            if self.random_start:
                rng = np.random.default_rng([self.seed, self.epoch, i])
                start = int(rng.integers(0, n - self.span + 1))
            else:
                start = 0
            try:
                video = self.clip(f, start)
            except VideoReadError as e:
                self._skip(self.files[f], f"clip decode failed: {e}")
                continue
            return {"video": video, "index": i, "path": self.files[f], "start": start}
        raise RuntimeError(f"VideoFolder {str(self.root)!r}: no file could be decoded for item {i}; "
                           f"skipped: {self.skipped}")
