"""One set of argument validators for the whole library.

Every validator returns the (normalised) value or raises before any work: ``TypeError`` when the value has the
wrong type, ``ValueError`` when it has the right type but is out of range. Messages name the argument, the bad
value and the expected form, e.g. ``steps must be an int >= 1, got 0``.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Tuple

import torch

__all__ = [
    "is_int",
    "is_number",
    "check_int",
    "check_number",
    "check_positive",
    "check_bool",
    "check_choice",
    "check_mapping",
    "check_size",
    "check_len",
    "check_path",
    "check_key",
    "check_grid",
    "check_float_dtype",
    "check_float_tensor",
    "check_common_options",
    "check_fits_in_memory",
]


def is_int(v) -> bool:
    """An integer (``int``, numpy integer) that is not a ``bool``."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A real number (``int``, ``float``, numpy scalar) that is not a ``bool``."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _range_text(minimum, maximum, min_open: bool, max_open: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum}")
    return " and ".join(parts)


def check_int(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None, *,
              multiple_of: Optional[int] = None, allow_none: bool = False) -> Optional[int]:
    """``value`` as an int in ``[minimum, maximum]`` (either bound optional), a multiple of ``multiple_of`` if
    given (``multiple_of=2``: even). ``None`` passes if ``allow_none``."""
    if value is None and allow_none:
        return None
    rng = _range_text(minimum, maximum, False, False)
    expected = f"an {'even int' if multiple_of == 2 else 'int'}{' ' + rng if rng else ''}"
    if multiple_of is not None and multiple_of != 2:
        expected += f" and a multiple of {multiple_of}"
    expected += " or None" if allow_none else ""
    if not is_int(value):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) or (
            multiple_of is not None and value % multiple_of):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_number(value, name: str, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
                 min_open: bool = False, max_open: bool = False, allow_none: bool = False,
                 finite: bool = True) -> Optional[float]:
    """``value`` in the range (``min_open`` / ``max_open``: exclusive bounds). Finite unless ``finite=False``.
    ``None`` passes if ``allow_none``. Returns the value unchanged (an int stays an int)."""
    if value is None and allow_none:
        return None
    rng = _range_text(minimum, maximum, min_open, max_open)
    expected = f"a{' finite' if finite else ''} number{' ' + rng if rng else ''}{' or None' if allow_none else ''}"
    if not is_number(value):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if minimum is not None and (value < minimum or (min_open and value == minimum)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if maximum is not None and (value > maximum or (max_open and value == maximum)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_positive(value, name: str, *, allow_none: bool = False) -> Optional[float]:
    """A finite number ``> 0``, returned as a float (``None`` passes if ``allow_none``)."""
    v = check_number(value, name, 0, min_open=True, allow_none=allow_none)
    return None if v is None else float(v)


def check_bool(value, name: str) -> bool:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(value, name: str, choices: Iterable[Any]) -> Any:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_mapping(value, name: str, *, allow_none: bool = True) -> Optional[dict]:
    """``value`` must be a ``dict`` (or ``None`` if ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a mapping{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_size(size, name: str = "size") -> Tuple[int, int]:
    """A positive int ``s`` (-> ``(s, s)``) or ``(H, W)`` / ``[H, W]`` of positive ints -> ``(H, W)``."""
    if is_int(size):
        size = (size, size)
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(s) for s in size)):
        raise TypeError(f"{name} must be a positive int or [H, W] of positive ints, got {size!r}")
    if not all(s > 0 for s in size):
        raise ValueError(f"{name} must be a positive int or [H, W] of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def check_len(value, name: str, minimum: float = 1, *, integer: bool = False,
              allow_none: bool = False) -> Optional[float]:
    """A length (frames, tokens, positions): a finite number ``>= minimum`` (an int if ``integer``).

    Returns a float (an int if ``integer``), or ``None`` if ``value`` is ``None`` and ``allow_none``.
    """
    if integer:
        return check_int(value, name, minimum, allow_none=allow_none)
    v = check_number(value, name, minimum, allow_none=allow_none)
    return None if v is None else float(v)


def check_path(value, name: str, *, kind: Optional[str] = None) -> Path:
    """A path-like ``value``; with ``kind="file"`` / ``"dir"`` it must exist as that."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise TypeError(f"{name} must be a {'folder' if kind == 'dir' else 'file' if kind == 'file' else ''} path"
                        .replace("a  path", "a path") + f", got {value!r}")
    p = Path(value)
    if kind == "file" and not p.is_file():
        raise ValueError(f"{name} {str(p)!r} does not exist (expected a file)")
    if kind == "dir" and not p.is_dir():
        raise ValueError(f"{name} {str(p)!r} is not a folder")
    return p


def check_key(cfg, key: str, check, *args, **kwargs):
    """``check(cfg[key], key, *args, **kwargs)``: validate one configuration entry, naming it by its key."""
    return check(cfg.get(key), key, *args, **kwargs)


# ---- the tensor contract of the PE hooks and the geometry build_pe passes to every family ---------------------------
# Hook inputs are floating-point tensors (integer, bool and complex inputs raise TypeError naming the dtype: an integer
# q would be rotated then truncated, an integer x plus a float table silently changes dtype) on the PE's device.
# Shapes stay with each hook (they depend on the family); an empty batch (B = 0) is valid everywhere.


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
    out = dict(dim=check_int(dim, f"{name}: dim", 1, allow_none=True),
               num_heads=check_int(num_heads, f"{name}: num_heads", 1, allow_none=True),
               depth=check_int(depth, f"{name}: depth", 1, allow_none=True),
               grid=check_grid(grid, f"{name}: grid"),
               num_prefix=check_int(num_prefix, f"{name}: num_prefix", 0),
               dtype=check_float_dtype(dtype, f"{name}: dtype"))
    if out["dim"] is not None and out["num_heads"] is not None and out["dim"] % out["num_heads"]:
        raise ValueError(f"{name}: dim={out['dim']} is not divisible by num_heads={out['num_heads']}")
    return out


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """``ValueError`` when one tensor of ``nbytes`` (e.g. a batch of input images) could not fit in this machine's
    physical memory: a setting such as ``batch_size=1e9`` is refused at once instead of running until the machine
    kills it. (Only the obvious cases: the model's activations need many times more.)"""
    total = _physical_memory()
    if total is not None and nbytes > total:
        raise ValueError(f"{what} needs {nbytes / 2 ** 30:.3g} GiB for its input tensor alone, more than this "
                         f"machine's {total / 2 ** 30:.3g} GiB of memory")
