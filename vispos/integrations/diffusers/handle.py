"""Rule arguments, their lengths in RoPE positions, and the handle that undoes an applied rule."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...freqs import ScalingRule, as_rule
from ...utils import checks as _checks

AXES = ("time", "height", "width")
MARK = "_vispos_rule_handle"
#: ``latent``: latent frames / latent pixels; ``pixel``: video frames / image pixels; ``token``: RoPE positions
UNITS = ("latent", "pixel", "token")

RuleLike = Union[None, str, dict, ScalingRule]


def check_len(value, name: str) -> Optional[int]:
    """A length in frames / tokens: an int >= 1, or None (shared validator)."""
    return _checks.check_int(value, name, minimum=1, allow_none=True)


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
class TimeAware:
    """Time-aware scaling (Lumina-Next): ``high_noise`` while the noise level ``sigma > switch``, ``low_noise`` after.

    ``sigma`` is the flow-matching noise level of the current denoising step (1: pure noise, 0: clean), read from
    the transformer's ``timestep``. Lumina-Next uses position interpolation early (global layout) and NTK base
    scaling late (detail); its ``scaling_watershed = w`` (on ``t = 1 - sigma``) is ``switch = 1 - w``. The default
    ``switch = 0.7`` is ``w = 0.3``, Lumina-Next's setting for larger images.
    """

    high_noise: RuleLike = "pi"
    low_noise: RuleLike = "ntk_base"
    switch: float = 0.7

    def __post_init__(self):
        object.__setattr__(self, "high_noise", as_rule(self.high_noise))
        object.__setattr__(self, "low_noise", as_rule(self.low_noise))
        if isinstance(self.switch, bool) or not isinstance(self.switch, (int, float)) or not 0 <= self.switch <= 1:
            raise ValueError(f"TimeAware switch is a noise level in [0, 1], got {self.switch!r}")

    name = "time_aware"

    @property
    def rules(self) -> Tuple[ScalingRule, ScalingRule]:
        return self.high_noise, self.low_noise

    def at(self, sigma: Optional[float]) -> ScalingRule:
        if sigma is None:
            raise ValueError("a TimeAware rule needs the denoising timestep: call the transformer (its timestep= "
                             "is read by vispos), not its rope module on its own")
        return self.high_noise if sigma > self.switch else self.low_noise


@dataclass(frozen=True)
class Axis:
    """The rule of one axis and its lengths in RoPE positions (``target`` None: the grid at call time)."""

    rule: Union[ScalingRule, TimeAware]
    target: Optional[float]
    train: Optional[float]

    def resolve(self, grid_len: int, sigma: Optional[float] = None) -> ScalingRule:
        rule = self.rule.at(sigma) if isinstance(self.rule, TimeAware) else self.rule
        if rule.name == "none":
            return rule
        test = rule.test_len if rule.test_len is not None else (self.target or float(grid_len))
        train = rule.train_len if rule.train_len is not None else self.train
        return replace(rule, test_len=test, train_len=train)

    @property
    def active(self) -> bool:
        """Whether the axis has a rule other than ``none``."""
        rules = self.rule.rules if isinstance(self.rule, TimeAware) else (self.rule,)
        return any(r.name != "none" for r in rules)


def needs_train(rule: ScalingRule) -> bool:
    if rule.name in ("ntk", "yarn"):
        return True
    if rule.name in ("pi", "ntk_base"):
        return rule.factor is None
    if rule.name == "riflex":
        return rule.mode == "finetune" or (rule.k is None and rule.N is None)
    return False


def _as_axis_rule(rule):
    return rule if isinstance(rule, TimeAware) else as_rule(rule)


def axis_rules(time: RuleLike, space) -> List[Union[ScalingRule, TimeAware]]:
    rt = _as_axis_rule(time)
    if isinstance(space, (tuple, list)):
        if len(space) != 2:
            raise ValueError(f"space must be one rule or a pair (height_rule, width_rule), got {space!r}")
        rh, rw = _as_axis_rule(space[0]), _as_axis_rule(space[1])
    else:
        rh = rw = _as_axis_rule(space)
    return [rt, rh, rw]


class RuleHandle:
    """An applied rule: :meth:`remove` undoes it; also a context manager (undo on exit).

    Attributes:
        host: the adapter (RoPE layout) that took the rule, e.g. ``"wan-style"``.
        model_class: the class name of the transformer.
        axes: per axis (``time``, ``height``, ``width``) the rule given and its lengths in RoPE positions.
        last_bands: per axis, the adjusted float64 bands (per RoPE position, highest first) at the last call.
    """

    def __init__(self, host: str, model_class: str, axes: Sequence[Axis], names: Sequence[str] = AXES):
        self.host = host
        self.model_class = model_class
        self.axes: Dict[str, Axis] = dict(zip(names, axes))
        self.last_bands: Dict[str, torch.Tensor] = {}
        self._installed: List[Tuple[object, Callable[[], None]]] = []
        self.active = True
        self.sigma: Optional[float] = None  # noise level of the current transformer call (TimeAware rules)

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
        return [ax.resolve(int(n), self.sigma) for ax, n in zip(self.axes.values(), sizes)]
