"""Built-in image tasks where position matters, rendered at any resolution.

Every sample is a small *scene* drawn in continuous coordinates on the unit square (``x`` to the right, ``y``
down, both in ``[0, 1]``): a background shade and a few axis-aligned objects whose sizes are fractions of the image.
The scene and its label depend only on ``(task, seed, index)``; the resolution only decides how finely the scene is
rasterised (exact area coverage for boxes, a one-pixel ramp for discs). So the label of a sample is the same at
16 px and at 512 px, and a change of accuracy with resolution measures the model, not the data. Non-square sizes
stretch the unit square to ``(H, W)``.

Tasks (``TASKS``):

``absolute`` (9 classes, chance 1/9)
    Which cell of a 3x3 grid holds the red target square? The target (side 0.12-0.18 of the image) lies inside one
    cell with a margin, so the label is unambiguous; one or two green/blue distractor squares lie anywhere.
    Solving it needs absolute position: a model without PE is permutation invariant and stays at chance.
``quadrant`` (4 classes, chance 1/4)
    The same with a 2x2 grid (quadrants).
``relative`` (4 classes, chance 1/4)
    Is the red square A left of the blue square B, and is it above it? Label ``2 * above + left``. Both squares
    (side 0.1-0.16) are anywhere in the image, separated by at least 0.2 of the image along *both* axes, so the
    answer never depends on a pixel. Only relative position matters.
``shape`` (4 classes, chance 1/4) -- control
    Which shape is it: filled square, disc, frame (hollow square) or plus? One object (size 0.3-0.45 of the
    image, random colour) anywhere in the image: translation invariant, every PE (and none) should solve it.

Labels are exactly balanced: the indices ``[b*C, (b+1)*C)`` hold each of the ``C`` classes once, in an order
shuffled per block. Pixels are returned normalised as ``(v - 0.5) / 0.5`` (``v`` in ``[0, 1]``), shape
``(3, H, W)``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ..utils.checks import check_int
from ..utils.seeding import mix_seed

__all__ = [
    "TASKS",
    "TaskInfo",
    "parse_size",
    "scene",
    "render_scenes",
    "render",
    "task_label",
    "SyntheticPositionDataset",
]

@dataclass(frozen=True)
class TaskInfo:
    name: str
    classes: Tuple[str, ...]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)


TASKS = {
    "absolute": TaskInfo(
        "absolute", tuple(f"cell_r{r}c{c}" for r in range(3) for c in range(3)),
        "which cell of a 3x3 grid holds the red target (absolute position)"),
    "quadrant": TaskInfo(
        "quadrant", ("top_left", "top_right", "bottom_left", "bottom_right"),
        "which quadrant holds the red target (absolute position)"),
    "relative": TaskInfo(
        "relative", ("right_below", "left_below", "right_above", "left_above"),
        "is red A left of / above blue B (relative position); names say where A is"),
    "shape": TaskInfo(
        "shape", ("square", "disc", "frame", "plus"),
        "which shape (translation-invariant control)"),
}

# object kinds
_BOX, _DISC, _FRAME, _PLUS = 0, 1, 2, 3
_RED = (0.95, 0.15, 0.15)
_GREEN = (0.15, 0.85, 0.2)
_BLUE = (0.2, 0.35, 0.95)
_PALETTE = (_RED, _GREEN, _BLUE, (0.95, 0.85, 0.15), (0.9, 0.9, 0.9), (0.85, 0.3, 0.9))
_SLOTS = 3  # objects per scene (unused slots have alpha 0)


def _check_task(task) -> TaskInfo:
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def parse_size(size) -> Tuple[int, int]:
    """``32`` / ``"32"`` -> ``(32, 32)``; ``"32x48"`` / ``(32, 48)`` -> ``(32, 48)`` (height, width)."""
    if isinstance(size, bool):
        raise TypeError(f"a size must be an int, 'HxW' or (H, W), got {size!r}")
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, str):
        s = size.strip().lower()
        parts = s.split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"a size must look like '32' or '32x48' (height x width), got {size!r}")
        h = int(parts[0])
        w = int(parts[-1])
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        h, w = size
    else:
        raise TypeError(f"a size must be an int, 'HxW' or (H, W), got {size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"a size must be positive, got {size!r}")
    return int(h), int(w)


def _gen(*vals: int) -> random.Random:
    """A Python RNG (Mersenne Twister: the same stream on every platform) seeded from the integers ``vals``."""
    return random.Random(mix_seed(*vals))


def _check_index(seed, index) -> None:
    check_int(seed, "seed")
    check_int(index, "index", 0)


def task_label(task: str, seed: int, index: int) -> int:
    """The label of sample ``index`` (no rendering): a per-block shuffle of ``0..C-1`` -> exact balance."""
    info = _check_task(task)
    _check_index(seed, index)
    c = info.num_classes
    block, pos = divmod(index, c)
    perm = list(range(c))
    _gen(seed, 0x5EED, block).shuffle(perm)
    return perm[pos]


def _u(g: random.Random, lo: float, hi: float) -> float:
    return lo + (hi - lo) * g.random()


def scene(task: str, seed: int, index: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The resolution-free scene of one sample.

    Returns:
        objects ``(3, 8)``: per slot ``[kind, cx, cy, half, r, g, b, alpha]`` in unit-square coordinates (drawn in
        order, later on top; ``alpha`` 0 marks an unused slot), background ``(3,)`` in ``[0, 1]``, label ``int``.
    """
    info = _check_task(task)
    label = task_label(task, seed, index)
    g = _gen(seed, index)
    shade = _u(g, 0.0, 0.2)
    objs = [[0.0] * 8 for _ in range(_SLOTS)]

    def put(slot, kind, cx, cy, half, rgb):
        jitter = [min(1.0, max(0.0, c + _u(g, -0.05, 0.05))) for c in rgb]
        objs[slot] = [float(kind), cx, cy, half, *jitter, 1.0]

    if task in ("absolute", "quadrant"):
        n = 3 if task == "absolute" else 2
        row, col = divmod(label, n)
        cell = 1.0 / n
        half = _u(g, 0.06, 0.09)
        margin = 0.02
        lo_x, hi_x = col * cell + half + margin, (col + 1) * cell - half - margin
        lo_y, hi_y = row * cell + half + margin, (row + 1) * cell - half - margin
        n_distractors = 1 + g.randrange(2)
        for s in range(n_distractors):
            dh = _u(g, 0.05, 0.08)
            color = _GREEN if g.randrange(2) == 0 else _BLUE
            put(s, _BOX, _u(g, dh, 1 - dh), _u(g, dh, 1 - dh), dh, color)
        put(_SLOTS - 1, _BOX, _u(g, lo_x, hi_x), _u(g, lo_y, hi_y), half, _RED)
    elif task == "relative":
        left, above = label % 2, label // 2
        ha, hb = _u(g, 0.05, 0.08), _u(g, 0.05, 0.08)
        m, sep = 0.09, 0.2

        def pair():  # (a, b) centres along one axis with a < b, b - a >= sep, both in [m, 1 - m]
            d = _u(g, sep, 1 - 2 * m)
            a = _u(g, m, 1 - m - d)
            return a, a + d

        xa, xb = pair()
        if not left:
            xa, xb = xb, xa
        ya, yb = pair()
        if not above:
            ya, yb = yb, ya
        put(0, _BOX, xa, ya, ha, _RED)
        put(1, _BOX, xb, yb, hb, _BLUE)
    elif task == "shape":
        half = _u(g, 0.15, 0.225)
        color = _PALETTE[g.randrange(len(_PALETTE))]
        put(0, label, _u(g, half, 1 - half), _u(g, half, 1 - half), half, color)
    else:  # pragma: no cover - _check_task guards this
        raise ValueError(f"unknown task {task!r}")
    if info.num_classes <= label:  # pragma: no cover - internal invariant
        raise RuntimeError("label out of range")
    return torch.tensor(objs, dtype=torch.float32), torch.full((3,), shade), label


def _overlap(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """Fraction of each of ``n`` pixels ``[i/n, (i+1)/n)`` covered by ``[lo, hi]``: ``(B,)`` -> ``(B, n)``."""
    edges = torch.arange(n + 1, dtype=torch.float32) / n
    a = torch.maximum(lo[:, None], edges[None, :-1])
    b = torch.minimum(hi[:, None], edges[None, 1:])
    return (b - a).clamp(min=0) * n


def _box(cx, cy, hx, hy, h, w) -> torch.Tensor:
    return _overlap(cy - hy, cy + hy, h)[:, :, None] * _overlap(cx - hx, cx + hx, w)[:, None, :]


def _coverage(kind, cx, cy, half, h, w) -> torch.Tensor:
    """Area coverage ``(B, H, W)`` in ``[0, 1]`` of one object per sample (each kind computed for its samples)."""
    out = torch.zeros(kind.shape[0], h, w)
    kind = kind.long()
    for k in kind.unique().tolist():
        sel = (kind == k).nonzero().flatten()
        x, y, r = cx[sel], cy[sel], half[sel]
        if k == _BOX:
            cov = _box(x, y, r, r, h, w)
        elif k == _FRAME:
            cov = (_box(x, y, r, r, h, w) - _box(x, y, r * 0.55, r * 0.55, h, w)).clamp(0, 1)
        elif k == _PLUS:
            t = r / 3
            cov = (_box(x, y, r, t, h, w) + _box(x, y, t, r, h, w) - _box(x, y, t, t, h, w)).clamp(0, 1)
        elif k == _DISC:
            ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
            d = torch.sqrt((ys[None, :, None] - y[:, None, None]) ** 2 + (xs[None, None, :] - x[:, None, None]) ** 2)
            cov = ((r[:, None, None] - d) * math.sqrt(h * w) + 0.5).clamp(0, 1)
        else:  # pragma: no cover - scenes only hold the four kinds
            raise ValueError(f"unknown object kind {k}")
        out[sel] = cov
    return out


def render_scenes(objects: torch.Tensor, background: torch.Tensor, size) -> torch.Tensor:
    """Rasterise scenes: ``objects (B, S, 8)``, ``background (B, 3)`` -> images ``(B, 3, H, W)``, normalised."""
    h, w = parse_size(size)
    img = background[:, :, None, None].expand(-1, 3, h, w).clone()
    for s in range(objects.shape[1]):
        o = objects[:, s]
        if not bool((o[:, 7] > 0).any()):
            continue
        cov = (_coverage(o[:, 0], o[:, 1], o[:, 2], o[:, 3], h, w) * o[:, 7, None, None])[:, None]
        img = img * (1 - cov) + o[:, 4:7, None, None] * cov
    return (img - 0.5) / 0.5


def render(task: str, seed: int, index: int, size) -> Tuple[torch.Tensor, int]:
    """One sample: image ``(3, H, W)`` (normalised) and its label."""
    objs, bg, label = scene(task, seed, index)
    return render_scenes(objs[None], bg[None], size)[0], label


class SyntheticPositionDataset(Dataset):
    """``length`` samples of ``task`` rendered at ``size``, generated from ``(seed, index)``.

    Args:
        task: one of :data:`TASKS`.
        size: ``int`` / ``"HxW"`` / ``(H, W)``: the rendering resolution.
        length: number of samples (a multiple of the class count gives exactly balanced classes).
        seed: data seed; sample ``i`` is the same at every size and in every process.

    ``ds[i]`` -> ``(image (3, H, W), label)``; ``ds[(i, size)]`` renders sample ``i`` at another size (used for
    multi-resolution batches). :meth:`get_batch` renders many samples at once (fast path for training loops).
    """

    def __init__(self, task: str, size, length: int, seed: int = 0):
        self.info = _check_task(task)
        self.task = task
        self.size = parse_size(size)
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.length = length
        self.seed = seed

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def classes(self) -> List[str]:
        return list(self.info.classes)

    @property
    def chance(self) -> float:
        return self.info.chance

    def __len__(self) -> int:
        return self.length

    def _check(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"dataset index must be an int, got {i!r}")
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of {self.length} samples")
        return i % self.length

    def __getitem__(self, item):
        if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], tuple):
            i, size = item
        else:
            i, size = item, self.size
        return render(self.task, self.seed, self._check(i), size)

    def labels(self) -> List[int]:
        """All labels, without rendering."""
        return [task_label(self.task, self.seed, i) for i in range(self.length)]

    def get_batch(self, indices: Sequence[int], size=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Render ``indices`` at ``size`` (default: the dataset's): images ``(B, 3, H, W)``, labels ``(B,)``."""
        idx = [self._check(int(i)) for i in indices]
        if not idx:
            raise ValueError("get_batch needs at least one index")
        scenes = [scene(self.task, self.seed, i) for i in idx]
        objs = torch.stack([s[0] for s in scenes])
        bg = torch.stack([s[1] for s in scenes])
        labels = torch.tensor([s[2] for s in scenes], dtype=torch.long)
        return render_scenes(objs, bg, self.size if size is None else size), labels

    def __repr__(self) -> str:
        return (f"SyntheticPositionDataset(task={self.task!r}, size={self.size}, length={self.length}, "
                f"seed={self.seed})")


SizeLike = Union[int, str, Tuple[int, int]]
