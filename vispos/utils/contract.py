"""The tensor and option contract every PE checks at its entry points (issue 13, item 5).

* Hook inputs are floating-point tensors: integer, bool and complex inputs raise ``TypeError`` naming the dtype
  (an integer ``q`` would be rotated then truncated; an integer ``x`` plus a float table would silently change
  dtype). Their device must be the PE's (its parameters' / buffers'): ``ValueError`` naming both.
* Build options: ``dim`` / ``num_heads`` / ``depth`` are ints >= 1 (numpy integers accepted), ``num_prefix`` an
  int >= 0, ``grid`` a tuple of 1-3 positive ints, ``dtype`` a floating-point torch dtype.

Shapes stay with each hook (they depend on the family); an empty batch (``B = 0``) is valid everywhere.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch

__all__ = ["as_int", "check_float_tensor", "check_float_dtype", "check_grid", "check_common_options"]


def as_int(value, name: str, minimum: Optional[int] = None, allow_none: bool = False) -> Optional[int]:
    """``value`` as a Python int: ints and numpy integers (any ``numbers.Integral`` but ``bool``) are accepted.

    ``TypeError`` for other types (floats, strings, bools), ``ValueError`` below ``minimum``; both name ``name``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        want = "an int" if minimum is None else f"an int >= {minimum}"
        raise TypeError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_grid(grid, name: str = "grid", allow_none: bool = True) -> Optional[Tuple[int, ...]]:
    """A grid shape: a tuple / list / ``torch.Size`` of 1-3 positive ints (numpy integers accepted)."""
    if grid is None and allow_none:
        return None
    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        grid = (grid,)
    if isinstance(grid, (str, bytes)) or not isinstance(grid, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a tuple of ints like (H, W) or (T, H, W), got {grid!r}")
    out = []
    for s in grid:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{name} must contain ints, got {tuple(grid)!r}")
        if s <= 0:
            raise ValueError(f"{name} must contain positive sizes, got {tuple(int(v) for v in grid)!r}")
        out.append(int(s))
    if not 1 <= len(out) <= 3:
        raise ValueError(f"{name} must have 1, 2 or 3 axes ((L,), (H, W) or (T, H, W)), got {tuple(out)!r}")
    return tuple(out)


def check_float_dtype(dtype, name: str = "dtype") -> Optional[torch.dtype]:
    """``None`` or a floating-point ``torch.dtype`` (PE parameters and tables are real floats)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype (torch.float32, float64, bfloat16, float16), "
                        f"got {dtype}")
    return dtype


def _module_device(module) -> Optional[torch.device]:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


def check_float_tensor(t, what: str, module=None) -> None:
    """``t`` must be a floating-point tensor (``TypeError`` naming its dtype otherwise) on ``module``'s device
    (``ValueError`` naming both; skipped when the module holds no tensors or is on the meta device)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor (float32, float64, bfloat16, float16), got dtype "
                        f"{t.dtype}; cast it first (integer, bool and complex inputs are not supported)")
    if module is not None:
        dev = _module_device(module)
        if dev is not None and dev.type != "meta" and t.device != dev:
            raise ValueError(f"{what} is on {t.device}, the PE's parameters are on {dev}; move the PE or the "
                             f"input (.to(device))")


def check_common_options(name: str, dim=None, num_heads=None, depth=None, grid=None, num_prefix=0, dtype=None):
    """Validate and normalise the host geometry ``build_pe`` passes to every family; returns them as a dict."""
    out = dict(dim=as_int(dim, f"{name}: dim", 1, allow_none=True),
               num_heads=as_int(num_heads, f"{name}: num_heads", 1, allow_none=True),
               depth=as_int(depth, f"{name}: depth", 1, allow_none=True),
               grid=check_grid(grid, f"{name}: grid"),
               num_prefix=as_int(num_prefix, f"{name}: num_prefix", 0),
               dtype=check_float_dtype(dtype, f"{name}: dtype"))
    if out["dim"] is not None and out["num_heads"] is not None and out["dim"] % out["num_heads"]:
        raise ValueError(f"{name}: dim={out['dim']} is not divisible by num_heads={out['num_heads']}")
    return out
