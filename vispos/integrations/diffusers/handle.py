"""Rule arguments, their lengths in RoPE positions, and the handle that undoes an applied rule."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...freqs import ScalingRule, as_rule

AXES = ("time", "height", "width")
MARK = "_vispos_rule_handle"

RuleLike = Union[None, str, dict, ScalingRule]


def check_len(value, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def to_latent(value: Optional[int], units: str, factor: int, temporal: bool, name: str) -> Optional[int]:
    """A length in latent frames / latent pixels from ``units`` (``latent`` or ``pixel``)."""
    if value is None or units == "latent":
        return value
    if temporal:
        if (value - 1) % factor:
            raise ValueError(f"{name}={value} video frames must be {factor}*m + 1 (VAE temporal compression {factor})")
        return (value - 1) // factor + 1
    if value % factor:
        raise ValueError(f"{name}={value} pixels must be a multiple of the VAE spatial compression {factor}")
    return value // factor


def vae_scale_of(default: Tuple[int, int], pipe, vae_scale) -> Tuple[int, int]:
    """``(temporal, spatial)`` VAE compression: given, else the pipeline's, else the adapter's default."""
    if vae_scale is not None:
        if (not isinstance(vae_scale, (tuple, list)) or len(vae_scale) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vae_scale)):
            raise ValueError(f"vae_scale must be (temporal, spatial) positive ints, got {vae_scale!r}")
        return int(vae_scale[0]), int(vae_scale[1])
    if pipe is not None:
        for t_name, s_name in (("vae_scale_factor_temporal", "vae_scale_factor_spatial"),
                               ("vae_temporal_compression_ratio", "vae_spatial_compression_ratio")):
            t, s = getattr(pipe, t_name, None), getattr(pipe, s_name, None)
            if isinstance(t, int) and isinstance(s, int):
                return t, s
    return default


@dataclass(frozen=True)
class Axis:
    """The rule of one axis and its lengths in RoPE positions (``target`` None: the grid at call time)."""

    rule: ScalingRule
    target: Optional[float]
    train: Optional[float]

    def resolve(self, grid_len: int) -> ScalingRule:
        if self.rule.name == "none":
            return self.rule
        test = self.rule.test_len if self.rule.test_len is not None else (self.target or float(grid_len))
        train = self.rule.train_len if self.rule.train_len is not None else self.train
        return replace(self.rule, test_len=test, train_len=train)


def needs_train(rule: ScalingRule) -> bool:
    if rule.name in ("pi", "ntk", "yarn"):
        return True
    if rule.name == "ntk_base":
        return rule.factor is None
    if rule.name == "riflex":
        return rule.mode == "finetune" or (rule.k is None and rule.N is None)
    return False


def axis_rules(time: RuleLike, space) -> List[ScalingRule]:
    rt = as_rule(time)
    if isinstance(space, (tuple, list)):
        if len(space) != 2:
            raise ValueError(f"space must be one rule or a pair (height_rule, width_rule), got {space!r}")
        rh, rw = as_rule(space[0]), as_rule(space[1])
    else:
        rh = rw = as_rule(space)
    return [rt, rh, rw]


class RuleHandle:
    """An applied rule: :meth:`remove` undoes it; also a context manager (undo on exit).

    Attributes:
        host: the adapter (RoPE layout) that took the rule, e.g. ``"wan-style"``.
        model_class: the class name of the transformer.
        axes: per axis (``time``, ``height``, ``width``) the rule given and its lengths in RoPE positions.
        last_bands: per axis, the adjusted float64 bands (per RoPE position, highest first) at the last call.
    """

    def __init__(self, host: str, model_class: str, axes: Sequence[Axis]):
        self.host = host
        self.model_class = model_class
        self.axes: Dict[str, Axis] = dict(zip(AXES, axes))
        self.last_bands: Dict[str, torch.Tensor] = {}
        self._installed: List[Tuple[object, Callable[[], None]]] = []
        self.active = True

    def _add(self, target, undo: Callable[[], None]) -> None:
        self._installed.append((target, undo))
        setattr(target, MARK, self)

    def remove(self) -> None:
        """Undo the rule on every object it was installed on, last first (idempotent)."""
        if not self.active:
            return
        for target, undo in reversed(self._installed):
            undo()
            if getattr(target, MARK, None) is self:
                delattr(target, MARK)
        self._installed.clear()
        self.active = False

    def __enter__(self) -> "RuleHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        rules = ", ".join(f"{a}={ax.rule.name}" for a, ax in self.axes.items())
        return f"RuleHandle(host={self.host!r}, model={self.model_class}, {rules}, active={self.active})"

    def resolve(self, sizes: Sequence[int]) -> List[ScalingRule]:
        """The rules with their lengths filled in for a grid of ``sizes`` RoPE positions per axis."""
        return [ax.resolve(int(n)) for ax, n in zip(self.axes.values(), sizes)]
