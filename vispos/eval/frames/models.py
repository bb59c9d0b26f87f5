"""The video model of ``vispos train video``: a :class:`VideoDiT`, its rectified-flow loss and sampler."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn.functional as F

from ...models.video_dit import VideoDiT
from ...utils.checks import check_size
from ...utils.dist import resolve_device
from ...utils.io import load_checkpoint_file
from .config import MODEL_KEYS, SAMPLERS


def rotary_split(head_dim: int) -> tuple:
    """The default per-axis rotary dims of ``vispos train video``: ``(head_dim / 2, head_dim / 4, head_dim / 4)``
    (time gets half, as the demo's 16/8/8 at head dim 32). ``ValueError`` naming ``--pe-kwargs`` when the head dim
    is not a multiple of 8."""
    if head_dim % 8:
        raise ValueError(f"the default rotary split (half the head dim to time, a quarter to H and W, each even) "
                         f"needs a head dim that is a multiple of 8, got dim / num_heads = {head_dim}; choose --dim / "
                         f"--num-heads accordingly or give the split, e.g. --pe-kwargs '{{dims: [8, 4, 4]}}' (even "
                         f"dims summing to at most the head dim)")
    return (head_dim // 2, head_dim // 4, head_dim // 4)


def build_model(cfg: Dict[str, Any]) -> VideoDiT:
    """A :class:`VideoDiT` from a config dict (keys :data:`MODEL_KEYS`, ``frames``, ``size``). An axial RoPE / VoPE
    without ``dims`` / ``rotary_dim`` in ``pe_kwargs`` gets :func:`rotary_split` of the head dim."""
    H, W = check_size(cfg["size"])
    kw = {k: cfg[k] for k in MODEL_KEYS if k in cfg}
    kw["patch"] = tuple(kw["patch"]) if isinstance(kw.get("patch"), list) else kw.get("patch", (1, 4, 4))
    pe_kwargs = dict(kw.pop("pe_kwargs", None) or {})
    names = [kw.get("pe")] if isinstance(kw.get("pe"), str) else list(kw.get("pe") or [])
    if {"rope_axial", "vope"} & set(names) and "dims" not in pe_kwargs and "rotary_dim" not in pe_kwargs \
            and "preset" not in pe_kwargs and isinstance(kw.get("pe"), str):
        dim, heads = kw.get("dim"), kw.get("num_heads")
        if isinstance(dim, int) and isinstance(heads, int) and heads > 0:
            if dim % heads:
                raise ValueError(f"dim {dim} must be a multiple of num_heads {heads}")
            pe_kwargs["dims"] = rotary_split(dim // heads)
    for key in ("dims", "base"):
        if isinstance(pe_kwargs.get(key), list):
            pe_kwargs[key] = tuple(pe_kwargs[key])
    return VideoDiT(video_size=(cfg["frames"], H, W), pe_kwargs=pe_kwargs, **kw)


def flow_loss(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y=None) -> torch.Tensor:
    """Rectified-flow loss: ``x_t = (1 - t) x0 + t noise``; MSE between ``model(x_t, t)`` and ``noise - x0``.

    ``x0, noise (B, C, T, H, W)``, ``t (B,)`` in ``[0, 1]``. Returns a scalar.
    """
    tt = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
    xt = (1 - tt) * x0 + tt * noise
    pred = model(xt, t, y)
    return F.mse_loss(pred.float(), (noise - x0).float())


@torch.no_grad()
def sample(model, noise: torch.Tensor, steps: int = 20, method: str = "euler", y=None) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``t = 1`` (``x = noise``) to ``t = 0`` on a uniform grid of ``steps``.

    ``noise (B, C, T, H, W)`` -> sample ``(B, C, T, H, W)``. ``method``: ``"euler"`` (``steps`` evaluations) or
    ``"heun"`` (second order, ``2 steps - 1`` evaluations).
    """
    if method not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sample steps must be an int >= 1, got {steps!r}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = noise
    B = x.shape[0]
    for i in range(steps):
        t0, t1 = ts[i], ts[i + 1]
        v0 = model(x, torch.full((B,), t0, device=x.device), y)
        x_e = x + (t1 - t0) * v0
        if method == "heun" and t1 > 0:
            v1 = model(x_e, torch.full((B,), t1, device=x.device), y)
            x = x + (t1 - t0) * 0.5 * (v0 + v1)
        else:
            x = x_e
    return x


def load_checkpoint(path, device="cpu", use_ema: bool = True):
    """``(model, train_config)`` from a ``vispos train video`` checkpoint (EMA weights when present and asked)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    ck = load_checkpoint_file(p, map_location="cpu")
    if not isinstance(ck, dict) or ck.get("format") != "vispos.video_dit/1":
        raise ValueError(f"{str(p)!r} is not a vispos video DiT checkpoint (written by `vispos train video`)")
    cfg = ck["train_config"]
    model = build_model(cfg)
    sd = ck["ema"] if (use_ema and ck.get("ema") is not None) else ck["model"]
    model.load_state_dict(sd)
    return model.to(resolve_device(device)).eval(), cfg
