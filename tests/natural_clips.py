"""Test videos with known answers built from scikit-image's bundled photographs (no download): pans and zooms with
exact sub-pixel positions, loops of any (also non-integer) period, slowed copies, sensor noise and H.264."""
import numpy as np

SIZE = 64  # frame side of the clips (pixels)


def photo(name: str = "astronaut", short_side: int = 256) -> np.ndarray:
    """A scikit-image sample photograph as uint8 RGB, area-resized so its short side is ``short_side``."""
    import cv2
    import skimage.data

    im = getattr(skimage.data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    im = np.ascontiguousarray(im[..., :3])
    h, w = im.shape[:2]
    s = short_side / min(h, w)
    return cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def render(img: np.ndarray, xs, ys, zooms=None, size: int = SIZE) -> np.ndarray:
    """Frame ``t`` shows ``img`` around centre ``(xs[t], ys[t])`` (image pixels) magnified ``zooms[t]`` (1 = a
    ``size`` x ``size`` window of image pixels), bicubic: uint8 ``(T, size, size, 3)``."""
    import cv2

    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    zs = np.ones_like(xs) if zooms is None else np.asarray(zooms, float)
    out = []
    c = (size - 1) / 2
    for x, y, z in zip(xs, ys, zs):
        M = np.float32([[z, 0, c - z * x], [0, z, c - z * y]])  # image -> frame
        out.append(cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def pan(img, phase, speed=(1.5, 0.6), start=(110.0, 120.0), size: int = SIZE) -> np.ndarray:
    """A pan at ``speed`` image pixels per unit of ``phase`` (one value per frame)."""
    phase = np.asarray(phase, float)
    return render(img, start[0] + speed[0] * phase, start[1] + speed[1] * phase, size=size)


def zoom(img, phase, rate=1.02, centre=(120.0, 110.0), size: int = SIZE) -> np.ndarray:
    """A zoom in by ``rate`` per unit of ``phase`` around ``centre``."""
    phase = np.asarray(phase, float)
    return render(img, np.full_like(phase, centre[0]), np.full_like(phase, centre[1]), rate ** phase, size=size)


def loop_phase(T: int, period: float, novel: int = 0) -> np.ndarray:
    """Phase of a sawtooth loop: ``novel`` frames of fresh motion, then ``t mod period`` (any real period),
    shifted so that the loop shows content never seen in the novel part."""
    t = np.arange(T, dtype=float)
    return np.where(t < novel, t, novel + 40.0 + np.mod(t - novel, period))


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0.0, sigma, frames.shape), 0, 255).astype(np.uint8)


def h264(frames: np.ndarray, tmp_path, crf: int = 28, name: str = "clip.mp4") -> np.ndarray:
    """Round trip through an H.264 MP4 (PyAV) at ``crf``."""
    from vispos.data.video import read_video, write_video

    return read_video(write_video(tmp_path / name, frames, crf=crf))
