"""Built-in image tasks where position matters, rendered at any resolution.

Every sample is a small *scene* drawn in continuous coordinates on the unit square (``x`` to the right, ``y``
down, both in ``[0, 1]``): a background shade and a few axis-aligned objects whose sizes are fractions of the image.
The scene and its label depend only on ``(task, seed, index)``; the resolution only decides how finely the scene is
rasterised (exact area coverage for boxes, a one-pixel ramp for discs). So the label of a sample is the same at
16 px and at 512 px, and a change of accuracy with resolution measures the model, not the data. Non-square sizes
stretch the unit square to ``(H, W)``.

Tasks (``TASKS``):

``absolute`` (9 classes, chance 1/9) -- the adversarial case; takes no random-resized crop
    Which cell of a 3x3 grid holds the red target square? The target (side 0.12-0.18 of the image) lies inside one
    cell with a margin, so the label is unambiguous; one or two green/blue distractor squares lie anywhere.
    Solving it needs absolute position: a model without PE is permutation invariant and stays at chance. The label
    is a fixed fraction of the image, so a crop would move the target into another cell: ``rrc_scale`` is refused.
``quadrant`` (4 classes, chance 1/4) -- takes no random-resized crop
    The same with a 2x2 grid (quadrants); ``rrc_scale`` is refused for the same reason.
``relative`` (4 classes, chance 1/4)
    Is the red square A left of the blue square B, and is it above it? Label ``2 * above + left``. Both squares
    (side 0.1-0.16) are anywhere in the image, separated by at least 0.2 of the image along *both* axes, so the
    answer never depends on a pixel. Only relative position matters.
``landolt`` (4 classes, chance 1/4) -- relative geometry at the object's own scale
    Where is the gap of a Landolt ring (right, below, left, above its centre)? One ring (outer radius 0.1-0.45 of
    the image, inner radius 0.6 of it, gap 0.4 of the radius wide, random colour) anywhere in the image, and one
    gap-less ring of another colour as a distractor. Position and size are random, so every offset that decides the
    label is a fraction of the ring, seen at a 4.5x range of scales in training: the task resizes the way
    photographs do, which ``absolute`` (fixed fractions of the image) does not.
``photos`` (12 classes, chance 1/12) -- natural images
    Which of 12 scikit-image sample photographs (bundled with scikit-image, no download) does a crop come from?
    Each photo's long side is split into a training region (first 60 %) and a test region (last 40 %), so test
    crops never overlap training crops. Training crops are random-resized crops (area fraction ``rrc_scale`` of the
    largest crop, aspect 3/4-4/3, random flip); test crops are square, 0.875 of the largest crop, at a random place
    in the test region. Resampled from the photo (antialiased) at the requested size. Needs ``scikit-image``.
``shape`` (4 classes, chance 1/4) -- control
    Which shape is it: filled square, disc, frame (hollow square) or plus? One object (size 0.3-0.45 of the
    image, random colour) anywhere in the image: translation invariant, every PE (and none) should solve it.

Random-resized crop of the scene tasks (``rrc_scale``, train split only; :func:`crop_view`): ``relative``,
``landolt`` and ``shape`` take one, drawn from ``(seed, index)`` alone (a stream of its own: the scene is the
same with and without it). The crop is a window ``(x0, y0, x1, y1)`` of the unit square with area ``U(rrc_scale)``
and aspect (width / height) log-uniform in [3/4, 4/3], placed uniformly among the positions that keep every
*label-deciding* object whole (both squares of ``relative``, the gapped ring of ``landolt``, the shape of
``shape``); a window too small to hold them is widened / heightened just enough. Distractors may be cut. The window
is rasterised exactly (area coverage) at the requested size, so objects are magnified and stretched as a
random-resized crop does, and the label stays true: crops and scaling keep left/above orderings, the gap's
direction and the shape's kind (no flip: it would swap left and right). ``absolute`` / ``quadrant`` refuse it.
Without ``rrc_scale`` the scene tasks render the whole scene (``vispos train resolution`` passes its own default,
``0.25,1``, for every task that takes a crop).

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
    "SCENE_TASKS",
    "DEFAULT_RRC_SCALE",
    "RRC_TASKS",
    "resolve_rrc_scale",
    "crop_view",
    "load_photo",
    "photo_region",
    "photo_crop",
    "photo_box",
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
    "landolt": TaskInfo(
        "landolt", ("gap_right", "gap_below", "gap_left", "gap_above"),
        "where is the gap of a Landolt ring of random size and place (relative geometry at the object's scale)"),
    "photos": TaskInfo(
        "photos", ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field",
                   "immunohistochemistry", "retina", "moon", "brick", "grass"),
        "which scikit-image sample photo a crop comes from (natural images; disjoint train/test regions)"),
}

#: Tasks drawn as scenes of objects (:func:`scene`); the others are crops of photographs.
SCENE_TASKS = ("absolute", "quadrant", "relative", "shape", "landolt")
DEFAULT_RRC_SCALE = (0.25, 1.0)
#: Tasks that take a train-time random-resized crop without changing their labels.
RRC_TASKS = ("photos", "relative", "shape", "landolt")
#: Why the other tasks refuse one.
NO_RRC_REASON = {
    "absolute": "its label is the 3x3 cell (a fixed fraction of the image) that holds the target, and a crop moves "
                "the target into another cell; it is the adversarial case, trained on the whole image",
    "quadrant": "its label is the quadrant (a fixed fraction of the image) that holds the target, and a crop moves "
                "the target into another quadrant",
}
# the objects (slots of scene()) that decide a scene task's label: a crop keeps them whole
_LABEL_SLOTS = {"relative": (0, 1), "landolt": (1,), "shape": (0,)}
_OFF = ("off", "none")

# object kinds; _RING + d is a Landolt ring with its gap in direction d (0 right, 1 below, 2 left, 3 above),
# _RING + 4 a ring without a gap
_BOX, _DISC, _FRAME, _PLUS = 0, 1, 2, 3
_RING = 4
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
    if task not in SCENE_TASKS:
        raise ValueError(f"task {task!r} is not drawn from a scene; render it with SyntheticPositionDataset")
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
    elif task == "landolt":
        r = _u(g, 0.1, 0.45)
        cx, cy = _u(g, r, 1 - r), _u(g, r, 1 - r)
        ci, cj = g.sample(range(len(_PALETTE)), 2)
        rd = _u(g, 0.1, 0.3)
        put(0, _RING + 4, _u(g, rd, 1 - rd), _u(g, rd, 1 - rd), rd, _PALETTE[cj])
        put(1, _RING + label, cx, cy, r, _PALETTE[ci])
    elif task == "shape":
        half = _u(g, 0.15, 0.225)
        color = _PALETTE[g.randrange(len(_PALETTE))]
        put(0, label, _u(g, half, 1 - half), _u(g, half, 1 - half), half, color)
    else:  # pragma: no cover - _check_task guards this
        raise ValueError(f"unknown task {task!r}")
    if info.num_classes <= label:  # pragma: no cover - internal invariant
        raise RuntimeError("label out of range")
    return torch.tensor(objs, dtype=torch.float32), torch.full((3,), shade), label


def _overlap(lo: torch.Tensor, hi: torch.Tensor, n: int, span=None) -> torch.Tensor:
    """Fraction of each of ``n`` pixels covered by ``[lo, hi]``: ``(B,)`` -> ``(B, n)``. The pixels tile ``[0, 1]``
    (``[i/n, (i+1)/n)``), or per sample the window ``span = (a, b)`` (two ``(B,)`` tensors)."""
    if span is None:
        edges = torch.arange(n + 1, dtype=torch.float32) / n
        a = torch.maximum(lo[:, None], edges[None, :-1])
        b = torch.minimum(hi[:, None], edges[None, 1:])
        return (b - a).clamp(min=0) * n
    v0, v1 = span
    edges = v0[:, None] + (v1 - v0)[:, None] * (torch.arange(n + 1, dtype=torch.float32) / n)[None, :]
    a = torch.maximum(lo[:, None], edges[:, :-1])
    b = torch.minimum(hi[:, None], edges[:, 1:])
    return (b - a).clamp(min=0) * (n / (v1 - v0))[:, None]


def _box(cx, cy, hx, hy, h, w, view=None) -> torch.Tensor:
    ys, xs = (None, None) if view is None else ((view[:, 1], view[:, 3]), (view[:, 0], view[:, 2]))
    return _overlap(cy - hy, cy + hy, h, ys)[:, :, None] * _overlap(cx - hx, cx + hx, w, xs)[:, None, :]


def _disc(x, y, r, h, w, view=None) -> torch.Tensor:
    if view is None:
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        d = torch.sqrt((ys[None, :, None] - y[:, None, None]) ** 2 + (xs[None, None, :] - x[:, None, None]) ** 2)
        return ((r[:, None, None] - d) * math.sqrt(h * w) + 0.5).clamp(0, 1)
    vh, vw = view[:, 3] - view[:, 1], view[:, 2] - view[:, 0]
    ys = view[:, 1, None] + vh[:, None] * ((torch.arange(h, dtype=torch.float32) + 0.5) / h)[None, :]
    xs = view[:, 0, None] + vw[:, None] * ((torch.arange(w, dtype=torch.float32) + 0.5) / w)[None, :]
    d = torch.sqrt((ys[:, :, None] - y[:, None, None]) ** 2 + (xs[:, None, :] - x[:, None, None]) ** 2)
    px = torch.sqrt(h * w / (vh * vw))  # pixels per unit length (geometric mean of the two axes)
    return ((r[:, None, None] - d) * px[:, None, None] + 0.5).clamp(0, 1)


def _coverage(kind, cx, cy, half, h, w, views=None) -> torch.Tensor:
    """Area coverage ``(B, H, W)`` in ``[0, 1]`` of one object per sample (each kind computed for its samples),
    over the unit square or per sample over the window ``views (B, 4)`` = ``(x0, y0, x1, y1)``."""
    out = torch.zeros(kind.shape[0], h, w)
    kind = kind.long()
    for k in kind.unique().tolist():
        sel = (kind == k).nonzero().flatten()
        x, y, r = cx[sel], cy[sel], half[sel]
        v = None if views is None else views[sel]
        if k == _BOX:
            cov = _box(x, y, r, r, h, w, v)
        elif k == _FRAME:
            cov = (_box(x, y, r, r, h, w, v) - _box(x, y, r * 0.55, r * 0.55, h, w, v)).clamp(0, 1)
        elif k == _PLUS:
            t = r / 3
            cov = (_box(x, y, r, t, h, w, v) + _box(x, y, t, r, h, w, v) - _box(x, y, t, t, h, w, v)).clamp(0, 1)
        elif k == _DISC:
            cov = _disc(x, y, r, h, w, v)
        elif _RING <= k <= _RING + 4:
            cov = (_disc(x, y, r, h, w, v) - _disc(x, y, 0.6 * r, h, w, v)).clamp(0, 1)
            if k < _RING + 4:
                t = 0.2 * r  # half-width of the gap
                zero = torch.zeros_like(r)
                dx, dy = [(0.7, 0.0), (0.0, 0.7), (-0.7, 0.0), (0.0, -0.7)][k - _RING]
                hx = torch.where(zero + dx != 0, 0.35 * r, t)
                hy = torch.where(zero + dy != 0, 0.35 * r, t)
                cov = cov * (1 - _box(x + dx * r, y + dy * r, hx, hy, h, w, v))
        else:  # pragma: no cover - scenes only hold the four kinds
            raise ValueError(f"unknown object kind {k}")
        out[sel] = cov
    return out


def render_scenes(objects: torch.Tensor, background: torch.Tensor, size, views=None) -> torch.Tensor:
    """Rasterise scenes: ``objects (B, S, 8)``, ``background (B, 3)`` -> images ``(B, 3, H, W)``, normalised.

    ``views (B, 4)``: per sample the window ``(x0, y0, x1, y1)`` of the unit square to rasterise (a crop, see
    :func:`crop_view`); default the whole square."""
    h, w = parse_size(size)
    if views is not None:
        views = torch.as_tensor(views, dtype=torch.float32)
        if views.shape != (objects.shape[0], 4) or not bool(
                ((views[:, 2] > views[:, 0]) & (views[:, 3] > views[:, 1])).all()):
            raise ValueError(f"views must be (B, 4) windows (x0, y0, x1, y1) with x1 > x0 and y1 > y0 for "
                             f"B = {objects.shape[0]} scenes, got shape {tuple(views.shape)}")
    img = background[:, :, None, None].expand(-1, 3, h, w).clone()
    for s in range(objects.shape[1]):
        o = objects[:, s]
        if not bool((o[:, 7] > 0).any()):
            continue
        cov = (_coverage(o[:, 0], o[:, 1], o[:, 2], o[:, 3], h, w, views) * o[:, 7, None, None])[:, None]
        img = img * (1 - cov) + o[:, 4:7, None, None] * cov
    return (img - 0.5) / 0.5


def resolve_rrc_scale(task: str, rrc_scale):
    """The train-time crop of ``task``: ``(lo, hi)`` or ``None`` (no crop), checked.

    ``rrc_scale``: ``None`` (the task's default: ``DEFAULT_RRC_SCALE`` for ``photos``, no crop for the scene tasks),
    ``"off"`` / ``False`` (no crop; scene tasks only: ``photos`` is always a crop), or ``(lo, hi)`` with
    ``0 < lo <= hi <= 1``. ``absolute`` / ``quadrant`` refuse a crop (``NO_RRC_REASON``).
    """
    info = _check_task(task)
    off = rrc_scale is False or (isinstance(rrc_scale, str) and rrc_scale.strip().lower() in _OFF)
    if rrc_scale is None:
        return DEFAULT_RRC_SCALE if task == "photos" else None
    if off:
        if task == "photos":
            raise ValueError("rrc_scale 'off' does not apply to the photos task (its training samples are crops); "
                             "give lo,hi, e.g. (1, 1) for the largest crop")
        return None
    if task in NO_RRC_REASON:
        raise ValueError(f"task {info.name!r} takes no random-resized crop (rrc_scale {rrc_scale!r}): "
                         f"{NO_RRC_REASON[task]}. Leave rrc_scale unset (or 'off'); the tasks that take one are "
                         f"{list(RRC_TASKS)}")
    return _check_rrc_scale(rrc_scale)


def crop_view(task: str, seed: int, index: int, rrc_scale, objects=None) -> Tuple[float, float, float, float]:
    """The random-resized-crop window ``(x0, y0, x1, y1)`` (unit-square coordinates) of training sample ``index`` of
    a scene task that takes one (``relative``, ``landolt``, ``shape``).

    Area ``U(rrc_scale)`` of the image, aspect (width / height) log-uniform in [3/4, 4/3] (sides capped at 1),
    widened / heightened where needed to hold the label-deciding objects whole, then placed uniformly among the
    positions that hold them. Drawn from its own stream of ``(seed, index)``; ``objects`` (:func:`scene`'s) saves
    recomputing the scene.
    """
    if task not in _LABEL_SLOTS:
        _check_task(task)
        reason = NO_RRC_REASON.get(task, "it is not drawn from a scene (photos crops its photographs itself)")
        raise ValueError(f"task {task!r} takes no scene crop: {reason}")
    lo, hi = _check_rrc_scale(rrc_scale)
    if objects is None:
        objects = scene(task, seed, index)[0]
    keep = objects[list(_LABEL_SLOTS[task])]
    bx0, bx1 = float((keep[:, 1] - keep[:, 3]).min()), float((keep[:, 1] + keep[:, 3]).max())
    by0, by1 = float((keep[:, 2] - keep[:, 3]).min()), float((keep[:, 2] + keep[:, 3]).max())
    g = _gen(seed, index, 0x4C0D)
    area = _u(g, lo, hi)
    ar = math.exp(_u(g, math.log(3 / 4), math.log(4 / 3)))
    cw = min(1.0, max(math.sqrt(area * ar), bx1 - bx0))
    ch = min(1.0, max(math.sqrt(area / ar), by1 - by0))
    x0 = _u(g, max(0.0, bx1 - cw), min(bx0, 1.0 - cw))
    y0 = _u(g, max(0.0, by1 - ch), min(by0, 1.0 - ch))
    return x0, y0, x0 + cw, y0 + ch


# ---- natural images: crops of scikit-image's sample photographs ----------------------------------------------------
_PHOTO_SHORT_SIDE = 384
_PHOTO_CACHE: dict = {}
_TRAIN_SHARE = 0.6  # of each photo's long side; the rest is the test region


def load_photo(name: str) -> torch.Tensor:
    """A scikit-image sample photograph (shipped with the package, no download) as float32 ``(3, H, W)`` in
    ``[0, 1]``, antialiased to a short side of 384 px. Grey photos are repeated to RGB."""
    if name not in TASKS["photos"].classes:
        raise ValueError(f"unknown photo {name!r}; the photos task uses {list(TASKS['photos'].classes)}")
    if name not in _PHOTO_CACHE:
        try:
            import skimage.data
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the 'photos' task needs scikit-image: pip install scikit-image") from e
        import numpy as np

        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        t = torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1).float() / 255.0
        h, w = t.shape[1:]
        sc = _PHOTO_SHORT_SIDE / min(h, w)
        t = torch.nn.functional.interpolate(t[None], size=(round(h * sc), round(w * sc)), mode="bilinear",
                                            antialias=True, align_corners=False)[0].clamp(0, 1)
        _PHOTO_CACHE[name] = t.contiguous()
    return _PHOTO_CACHE[name]


def photo_region(shape, split: str) -> Tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the ``split`` region of a photo of ``shape (C, H, W)``: the long side is cut at
    60 %; ``train`` is the first part, ``test`` the rest (disjoint)."""
    _, h, w = shape
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    long_h = h >= w
    n = h if long_h else w
    cut = round(_TRAIN_SHARE * n)
    a, b = (0, cut) if split == "train" else (cut, n)
    return (a, b, 0, w) if long_h else (0, h, a, b)


def _max_crop(shape) -> float:
    """The largest crop side (pixels): 0.9 of the test region's short side, the same for both splits."""
    y0, y1, x0, x1 = photo_region(shape, "test")
    return 0.9 * min(y1 - y0, x1 - x0)


def photo_crop(seed: int, index: int, size, split: str = "train",
               rrc_scale: Tuple[float, float] = DEFAULT_RRC_SCALE) -> Tuple[torch.Tensor, int]:
    """Sample ``index`` of the ``photos`` task: a crop of photo ``label`` from its ``split`` region, resampled to
    ``size`` (antialiased bilinear), normalised ``(v - 0.5) / 0.5``. ``train``: a random-resized crop, area
    ``U(rrc_scale)`` x the largest crop, aspect log-uniform in [3/4, 4/3], random horizontal flip; ``test``: a
    square crop of 0.875 x the largest crop side. The position is uniform inside the region."""
    h, w = parse_size(size)
    label, (top, left, ch, cw), flip = photo_box(seed, index, split, rrc_scale)
    img = load_photo(TASKS["photos"].classes[label])
    crop = img[None, :, top:top + ch, left:left + cw]
    out = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", antialias=True,
                                          align_corners=False)[0].clamp(0, 1)
    if flip:
        out = out.flip(-1)
    return (out - 0.5) / 0.5, label


def photo_box(seed: int, index: int, split: str = "train", rrc_scale: Tuple[float, float] = DEFAULT_RRC_SCALE):
    """``(label, (top, left, height, width), flip)`` of sample ``index`` of the ``photos`` task (see
    :func:`photo_crop`), in the pixels of :func:`load_photo`'s image."""
    _check_index(seed, index)
    rrc_scale = _check_rrc_scale(rrc_scale)
    label = task_label("photos", seed, index)
    shape = load_photo(TASKS["photos"].classes[label]).shape
    y0, y1, x0, x1 = photo_region(shape, split)
    g = _gen(seed, index, 0x9407, 0 if split == "train" else 1)
    smax = _max_crop(shape)
    if split == "train":
        side = math.sqrt(_u(g, *rrc_scale)) * smax
        ar = math.exp(_u(g, math.log(3 / 4), math.log(4 / 3)))
        ch, cw = side / math.sqrt(ar), side * math.sqrt(ar)
    else:
        ch = cw = 0.875 * smax
    ch, cw = max(1, min(round(ch), y1 - y0)), max(1, min(round(cw), x1 - x0))
    top = y0 + int(g.random() * (y1 - y0 - ch + 1))
    left = x0 + int(g.random() * (x1 - x0 - cw + 1))
    flip = split == "train" and g.random() < 0.5
    return label, (top, left, ch, cw), flip


def _check_rrc_scale(rrc_scale) -> Tuple[float, float]:
    ok = isinstance(rrc_scale, (tuple, list)) and len(rrc_scale) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in rrc_scale)
    if not ok or not 0 < rrc_scale[0] <= rrc_scale[1] <= 1:
        raise ValueError(f"rrc_scale must be two numbers (lo, hi) with 0 < lo <= hi <= 1 (area fractions), "
                         f"got {rrc_scale!r}")
    return float(rrc_scale[0]), float(rrc_scale[1])


def render(task: str, seed: int, index: int, size, split: str = "train", rrc_scale=None) -> Tuple[torch.Tensor, int]:
    """One sample: image ``(3, H, W)`` (normalised) and its label. ``rrc_scale`` (:func:`resolve_rrc_scale`; default
    the task's: a crop for ``photos``, the whole scene otherwise) applies to the ``train`` split."""
    _check_task(task)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rr = resolve_rrc_scale(task, rrc_scale)
    if task == "photos":
        return photo_crop(seed, index, size, split, rr)
    objs, bg, label = scene(task, seed, index)
    view = None if (rr is None or split != "train") else torch.tensor([crop_view(task, seed, index, rr, objs)])
    return render_scenes(objs[None], bg[None], size, view)[0], label


class SyntheticPositionDataset(Dataset):
    """``length`` samples of ``task`` rendered at ``size``, generated from ``(seed, index)``.

    Args:
        task: one of :data:`TASKS`.
        size: ``int`` / ``"HxW"`` / ``(H, W)``: the rendering resolution.
        length: number of samples (a multiple of the class count gives exactly balanced classes).
        seed: data seed; sample ``i`` is the same at every size and in every process.
        split: ``"train"`` or ``"test"`` (``photos``: disjoint regions; the crop below is for ``train`` only).
        rrc_scale: the training random-resized crop (:func:`resolve_rrc_scale`): ``None`` = the task's default
            (``(0.25, 1)`` for ``photos``, the whole scene for the scene tasks), ``"off"``, or ``(lo, hi)``;
            ``absolute`` / ``quadrant`` refuse one. The crop window depends on ``(seed, i)`` only, so a sample is
            the same view at every size.

    ``ds[i]`` -> ``(image (3, H, W), label)``; ``ds[(i, size)]`` renders sample ``i`` at another size (used for
    multi-resolution batches). :meth:`get_batch` renders many samples at once (fast path for training loops).
    """

    def __init__(self, task: str, size, length: int, seed: int = 0, split: str = "train", rrc_scale=None):
        self.info = _check_task(task)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.rrc_scale = resolve_rrc_scale(task, rrc_scale)
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
        return render(self.task, self.seed, self._check(i), size, self.split, self.rrc_scale)

    def labels(self) -> List[int]:
        """All labels, without rendering."""
        return [task_label(self.task, self.seed, i) for i in range(self.length)]

    def get_batch(self, indices: Sequence[int], size=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Render ``indices`` at ``size`` (default: the dataset's): images ``(B, 3, H, W)``, labels ``(B,)``."""
        idx = [self._check(int(i)) for i in indices]
        if not idx:
            raise ValueError("get_batch needs at least one index")
        if self.task not in SCENE_TASKS:
            items = [photo_crop(self.seed, i, self.size if size is None else size, self.split, self.rrc_scale)
                     for i in idx]
            return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)
        scenes = [scene(self.task, self.seed, i) for i in idx]
        objs = torch.stack([s[0] for s in scenes])
        bg = torch.stack([s[1] for s in scenes])
        labels = torch.tensor([s[2] for s in scenes], dtype=torch.long)
        views = None
        if self.rrc_scale is not None and self.split == "train":
            views = torch.tensor([crop_view(self.task, self.seed, i, self.rrc_scale, s[0]) for i, s in zip(idx, scenes)])
        return render_scenes(objs, bg, self.size if size is None else size, views), labels

    def __repr__(self) -> str:
        return (f"SyntheticPositionDataset(task={self.task!r}, size={self.size}, length={self.length}, "
                f"seed={self.seed}, split={self.split!r}, rrc_scale={self.rrc_scale})")


SizeLike = Union[int, str, Tuple[int, int]]
