"""RoPE frequency bands and the rules that rescale them for longer sequences or larger grids.

One axis has a rotary dim ``d`` (even) and a base ``b``: ``theta_j = b^(-2j/d)``, ``j = 0..d/2-1``; a token at
position ``p`` rotates pair ``j`` by ``p * theta_j``. A *scaling rule* changes the ``theta`` of one axis given the
training length ``L`` and the test length ``L'`` of that axis (``s = L'/L``):

========== ===============================================================================================
``none``   plain extrapolation: unchanged.
``pi``     position interpolation: ``theta_j / s`` (``s = factor`` when given: a fixed interpolation factor, e.g.
           Kandinsky's ``scale_factor``).
``ntk``    NTK-aware: ``theta_j = (lam * b)^(-2j/d)``, ``lam = s^(d/(d-2))``.
``ntk_base`` plain base multiplier (diffusers' ``ntk_factor``): ``theta_j = (f * b)^(-2j/d)``, ``f`` given or ``s``.
           Both NTK rules multiply the bands they are given by ``lam^(-2j/d)`` (equal to rebuilding with base
           ``lam * b`` for standard bands), so they compose with other changes.
``yarn``   ``theta_j' = g_j theta_j + (1 - g_j) theta_j / s`` (``g_j`` = 1 keeps band ``j``, 0 interpolates it).
           ``ramp="index"`` (default; the official code jquesnelle/yarn, HF transformers, FiT): linear in the band
           index ``j`` between the correction dims ``low = max(floor(c(beta)), 0)`` and
           ``high = min(ceil(c(alpha)), d - 1)``, ``c(r) = d ln(L / (2pi r)) / (2 ln b)``:
           ``g_j = 1 - clamp((j - low) / (high - low), 0, 1)``; cos/sin scaled by ``mscale = 0.1 ln s + 1``
           (the official code always applies it). ``ramp="paper"`` (the paper's Eq.; vispos' first release):
           linear in the rotation count ``r_j = L theta_j / 2pi``, ``g_j = clamp((r_j - alpha) / (beta - alpha),
           0, 1)``, no mscale unless ``attn_factor=True``. ``alpha = beta_slow = 1``, ``beta = beta_fast = 32``.
``riflex`` RIFLEx: only the intrinsic component ``k`` (1-indexed) changes: ``theta_k' = min(theta_k, gamma 2pi/L')``
           and only when ``L' > N_k`` (its rounded period); ``gamma = 0.9`` as in the official code. Modes
           (:data:`RIFLEX_MODES`): ``checked`` (that, training-free, default); ``finetune`` (the official fine-tuned
           checkpoints: ``theta_k' = gamma 2pi/L`` at every length, ``L`` = the length the checkpoint was fine-tuned
           at, the official ``N_k``); ``unchecked`` (the community's variant: ``theta_k' = gamma 2pi/L'`` at every
           ``L'``, without the check and without the ``min``, so it also changes the model below ``N_k``).
========== ===============================================================================================

For ``pi`` and ``ntk_base`` (without ``factor``), ``ntk`` and ``yarn`` the scale is ``max(L'/L, 1)``: a shorter test length leaves the bands unchanged
(use ``interpolated`` coordinates in :mod:`vispos.grid` to squeeze a grid instead). Bands are built and rescaled in
float64 and returned in float64; callers cast once (float32) after computing angles.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .utils.checks import check_int, check_positive

__all__ = [
    "RULES",
    "RIFLEX_MODES",
    "ScalingRule",
    "as_rule",
    "rope_freqs",
    "apply_rule",
    "rule_attention_factor",
    "periods",
    "identify_k",
    "default_k",
    "riflex_freqs",
    "predicted_loop_length",
    "riflex_report",
]

RULES = ("none", "pi", "ntk", "ntk_base", "yarn", "riflex")
RIFLEX_MODES = ("checked", "finetune", "unchecked")

#: YaRN ramps: ``index`` (official code, HF transformers) and ``paper`` (the paper's equation in r_j).
YARN_RAMPS = ("index", "paper")


# the options each rule reads (besides train_len / test_len), and the defaults that mean "not given"
_RULE_OPTIONS = {"riflex": ("k", "N", "gamma"), "yarn": ("alpha", "beta", "attn_factor", "ramp"),
                 "ntk_base": ("factor",), "pi": ("factor",)}
_OPTION_DEFAULTS = {"k": None, "N": None, "gamma": 0.9, "alpha": 1.0, "beta": 32.0, "factor": None,
                    "attn_factor": None, "ramp": "index"}


@dataclass(frozen=True)
class ScalingRule:
    """A frequency scaling rule for one axis.

    Args:
        name: one of :data:`RULES`.
        train_len: ``L``, the axis length (tokens / latent frames) seen in training.
        test_len: ``L'``, the axis length at test time.
        k: RIFLEx intrinsic component (1-indexed). ``None``: found from ``N`` with :func:`identify_k`, or from
            ``train_len`` with :func:`default_k`.
        N: RIFLEx: the first frame at which repetition appears (optional).
        gamma: RIFLEx safety factor (0.9 in the official code; 1.0 is the paper's equation).
        alpha, beta: YaRN ramp bounds in rotations over ``train_len`` (official names ``beta_slow``,
            ``beta_fast``).
        factor: ``ntk_base`` base multiplier; ``pi`` interpolation factor (both default ``s``; any positive value,
            so ``pi`` with ``factor < 1`` extrapolates).
        attn_factor: YaRN only: scale cos/sin by ``mscale = 0.1 ln s + 1`` (YaRN attention temperature).
            ``None`` (default): as the ramp's source does -- on for ``ramp="index"`` (the official code always
            applies it), off for ``ramp="paper"``.
        ramp: YaRN only: ``"index"`` (official code, default) or ``"paper"``; see :data:`YARN_RAMPS`.
        mode: RIFLEx only, one of :data:`RIFLEX_MODES`: ``"checked"`` (default, training-free), ``"finetune"``
            (``theta_k = gamma 2pi/train_len`` at every length, for checkpoints fine-tuned at ``train_len``; needs
            ``k`` or ``N``) or ``"unchecked"`` (``theta_k = gamma 2pi/L'`` at every length, no ``L' > N_k`` check).
    """

    name: str = "none"
    train_len: Optional[float] = None
    test_len: Optional[float] = None
    k: Optional[int] = None
    N: Optional[float] = None
    gamma: float = 0.9
    alpha: float = 1.0
    beta: float = 32.0
    factor: Optional[float] = None
    attn_factor: Optional[bool] = None
    ramp: str = "index"
    mode: str = "checked"

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(f"unknown scaling rule {self.name!r}; expected one of {RULES}")
        check_positive(self.train_len, "train_len", allow_none=True)
        check_positive(self.test_len, "test_len", allow_none=True)
        check_positive(self.N, "N", allow_none=True)
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1):
            raise ValueError(f"RIFLEx k is 1-indexed and must be an int >= 1, got {self.k!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not self.beta > self.alpha:
            raise ValueError(f"YaRN needs beta > alpha, got alpha={self.alpha}, beta={self.beta}")
        if self.factor is not None:
            check_positive(self.factor, "factor")
        if self.ramp not in YARN_RAMPS:
            raise ValueError(f"unknown YaRN ramp {self.ramp!r}; expected one of {YARN_RAMPS}")
        if self.attn_factor is not None and not isinstance(self.attn_factor, bool):
            raise TypeError(f"attn_factor must be None, True or False, got {self.attn_factor!r}")
        if self.mode not in RIFLEX_MODES:
            raise ValueError(f"unknown RIFLEx mode {self.mode!r}; expected one of {RIFLEX_MODES}")
        if self.mode != "checked" and self.name != "riflex":
            raise ValueError(f"mode={self.mode!r} is a RIFLEx option; rule {self.name!r} takes no mode")
        # options that a rule does not read are refused rather than silently ignored
        used = _RULE_OPTIONS.get(self.name, ())
        given = [k for k, default in _OPTION_DEFAULTS.items() if getattr(self, k) != default and k not in used]
        if given:
            raise ValueError(f"rule {self.name!r} does not use option(s) {given}; its options are "
                             f"{sorted(used) or 'none'} (plus train_len, test_len)")
    @property
    def scale(self) -> float:
        """``s = max(L'/L, 1)`` (1 when either length is unknown)."""
        if self.train_len is None or self.test_len is None:
            return 1.0
        return max(self.test_len / self.train_len, 1.0)

    def with_lengths(self, train_len=None, test_len=None) -> "ScalingRule":
        """A copy with new lengths (``None`` keeps the current one)."""
        return replace(
            self,
            train_len=self.train_len if train_len is None else train_len,
            test_len=self.test_len if test_len is None else test_len,
        )


def _require_lengths(rule: "ScalingRule") -> None:
    """Lengths may be filled in late (from the grid at forward time); check them when the rule is applied."""
    if rule.name in ("ntk", "yarn") and (rule.train_len is None or rule.test_len is None):
        raise ValueError(f"rule {rule.name!r} needs train_len and test_len, got {rule.train_len}, {rule.test_len}")
    if rule.name in ("pi", "ntk_base") and rule.factor is None and (rule.train_len is None or rule.test_len is None):
        raise ValueError(f"rule {rule.name!r} needs factor=, or train_len and test_len")
    if rule.name == "riflex" and rule.mode == "finetune":
        if rule.train_len is None:
            raise ValueError("rule 'riflex' mode 'finetune' needs train_len: the length the checkpoint was "
                             "fine-tuned at (the official N_k)")
        if rule.k is None and rule.N is None:
            raise ValueError("rule 'riflex' mode 'finetune' needs k= (or N=) of the fine-tuned checkpoint")
        return
    if rule.name == "riflex" and rule.test_len is None:
        raise ValueError("rule 'riflex' needs test_len (L')")
    if rule.name == "riflex" and rule.k is None and rule.N is None and rule.train_len is None:
        raise ValueError("rule 'riflex' needs k=, N= (repetition frame) or train_len= to choose the component")


def as_rule(rule: Union[None, str, dict, ScalingRule], **kwargs) -> ScalingRule:
    """Coerce ``None`` / a rule name / a dict / a :class:`ScalingRule` into a :class:`ScalingRule`."""
    if rule is None:
        return ScalingRule("none", **kwargs) if kwargs else ScalingRule("none")
    if isinstance(rule, ScalingRule):
        return replace(rule, **kwargs) if kwargs else rule
    if isinstance(rule, str):
        return ScalingRule(rule, **kwargs)
    if isinstance(rule, dict):
        return ScalingRule(**{**rule, **kwargs})
    raise TypeError(f"a scaling rule must be a name in {RULES}, a dict or a ScalingRule, got {type(rule).__name__}")


def _to_list(freqs) -> List[float]:
    if isinstance(freqs, torch.Tensor):
        if freqs.dim() != 1:
            raise ValueError(f"frequencies must be a 1-D tensor (dim // 2,), got shape {tuple(freqs.shape)}")
        return [float(f) for f in freqs.detach().cpu().to(torch.float64)]
    return [float(f) for f in freqs]


def rope_freqs_list(dim: int, base: float = 10000.0) -> List[float]:
    """Pure-Python bands ``base^(-2j/dim)`` (float64). Rules run on Python floats, so under ``torch.compile`` the
    frequencies are trace-time constants: no graph break, no recompilation."""
    check_int(dim, "rotary dim", 2, multiple_of=2)
    base = check_positive(base, "base")
    return [base ** (-2.0 * j / dim) for j in range(dim // 2)]


def rope_freqs(dim: int, base: float = 10000.0, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """RoPE bands of one axis: ``theta_j = base^(-2j/dim)``, shape ``(dim // 2,)``, float64 by default."""
    return torch.tensor(rope_freqs_list(dim, base), dtype=torch.float64, device=device).to(dtype)


def periods(freqs, rounded: bool = True) -> List[float]:
    """Period ``2pi/theta_j`` of each component (rounded to ints as in the RIFLEx code by default)."""
    out = [2 * math.pi / f if f > 0 else math.inf for f in _to_list(freqs)]
    return [round(p) if (rounded and math.isfinite(p)) else p for p in out]


def _freqs_of(base_or_freqs, dim) -> List[float]:
    if isinstance(base_or_freqs, (torch.Tensor, list, tuple)):
        return _to_list(base_or_freqs)
    if dim is None:
        raise ValueError("dim is needed when a base (not a frequency tensor) is given")
    return rope_freqs_list(dim, base_or_freqs)


def identify_k(base: Union[float, torch.Tensor], dim: Optional[int] = None, N: float = None) -> Tuple[int, int]:
    """RIFLEx: the intrinsic component for a repetition at frame ``N``.

    ``k = argmin_j |N_j - N|`` with ``N_j = round(2pi / theta_j)``, 1-indexed as in the paper; returns ``(k, N_k)``.
    ``base`` may also be a frequency tensor (then ``dim`` is ignored).
    """
    N = check_positive(N, "N")
    per = periods(_freqs_of(base, dim))
    diffs = [abs(p - N) for p in per]
    k = diffs.index(min(diffs)) + 1
    return k, per[k - 1]


def default_k(base: Union[float, torch.Tensor], dim: Optional[int] = None, train_len: float = None) -> Tuple[int, int]:
    """RIFLEx default when ``N`` is unknown: the component with the smallest period ``N_j >= train_len``.

    Returns ``(k, N_k)``, 1-indexed. Raises ``ValueError`` if no period reaches ``train_len``.
    """
    L = check_positive(train_len, "train_len")
    per = periods(_freqs_of(base, dim))
    cands = [(p, j) for j, p in enumerate(per) if p >= L]
    if not cands:
        raise ValueError(f"no RoPE component has a period >= train_len={L}; periods are {per}")
    p, j = min(cands)
    return j + 1, p


def _resolve_k(freqs: List[float], rule: ScalingRule) -> Tuple[int, int]:
    per = periods(freqs)
    if rule.k is not None:
        if rule.k > len(per):
            raise ValueError(f"RIFLEx k={rule.k} is out of range: this axis has {len(per)} components (1-indexed)")
        return rule.k, per[rule.k - 1]
    if rule.N is not None:
        return identify_k(freqs, N=rule.N)
    return default_k(freqs, train_len=rule.train_len)


def _riflex_list(freqs: List[float], k: int, test_len: Optional[float], gamma: float, mode: str = "checked",
                 train_len: Optional[float] = None) -> List[float]:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(freqs):
        raise ValueError(f"RIFLEx k={k!r} is out of range 1..{len(freqs)}")
    out = list(freqs)
    if mode == "finetune":
        out[k - 1] = gamma * 2 * math.pi / check_positive(train_len, "train_len")
        return out
    L2 = check_positive(test_len, "test_len")
    if mode == "unchecked":
        out[k - 1] = gamma * 2 * math.pi / L2
        return out
    N_k = periods(out[k - 1 : k])[0]
    if L2 > N_k:
        out[k - 1] = min(out[k - 1], gamma * 2 * math.pi / L2)
    return out


def riflex_freqs(freqs, k: int, test_len: float, gamma: float = 0.9) -> torch.Tensor:
    """Lower the ``k``-th (1-indexed) component to ``min(theta_k, gamma 2pi/L')`` when ``L' > N_k``. Float64."""
    return torch.tensor(_riflex_list(_to_list(freqs), k, test_len, gamma), dtype=torch.float64)


def apply_rule_list(freqs, rule: Union[None, str, dict, ScalingRule], base: float, dim: int) -> List[float]:
    """:func:`apply_rule` on Python floats (the implementation; compile-friendly)."""
    rule = as_rule(rule)
    dim = check_int(dim, "rotary dim", 2, multiple_of=2)
    base = check_positive(base, "base")
    _require_lengths(rule)
    f = _to_list(freqs)
    if len(f) != dim // 2:
        raise ValueError(f"freqs has {len(f)} components, rotary dim {dim} needs {dim // 2}")
    name = rule.name
    if name == "none":
        return f
    s = rule.scale
    if name == "pi":
        fac = rule.factor if rule.factor is not None else s
        return [x / fac for x in f]
    if name == "ntk":
        if dim <= 2 or s == 1.0:
            return f
        lam = s ** (dim / (dim - 2))
        # (lam * b)^(-2j/d) = b^(-2j/d) * lam^(-2j/d): applied to the given bands, so rules compose
        return [x * lam ** (-2.0 * j / dim) for j, x in enumerate(f)]
    if name == "ntk_base":
        fac = rule.factor if rule.factor is not None else s
        return [x * fac ** (-2.0 * j / dim) for j, x in enumerate(f)]
    if name == "yarn":
        if s == 1.0:
            return f
        keep = yarn_keep_list(rule, base, dim, f)
        return [g * x + (1 - g) * x / s for g, x in zip(keep, f)]
    # riflex
    k, _ = _resolve_k(f, rule)
    return _riflex_list(f, k, rule.test_len, rule.gamma, rule.mode, rule.train_len)


def yarn_correction_range(train_len: float, base: float, dim: int, alpha: float = 1.0, beta: float = 32.0
                          ) -> Tuple[int, int]:
    """YaRN's correction range ``(low, high)`` in band indices, as the official code computes it.

    ``c(r) = dim ln(L / (2pi r)) / (2 ln base)`` is the (fractional) band index whose frequency turns ``r`` times
    over ``L``; ``low = max(floor(c(beta)), 0)``, ``high = min(ceil(c(alpha)), dim - 1)`` (jquesnelle/yarn
    ``find_correction_range``; the upper clamp ``dim - 1`` is the official one, in rotary-dim units).
    """
    L = check_positive(train_len, "train_len")
    base = check_positive(base, "base")
    dim = check_int(dim, "rotary dim", 2, multiple_of=2)

    def corr(r):
        return dim * math.log(L / (r * 2 * math.pi)) / (2 * math.log(base))

    return max(math.floor(corr(beta)), 0), min(math.ceil(corr(alpha)), dim - 1)


def yarn_keep_list(rule: "ScalingRule", base: float, dim: int, freqs=None) -> List[float]:
    """YaRN's per-band weight ``g_j`` on the original band (1 = kept / extrapolated, 0 = interpolated by ``s``).

    ``ramp="index"``: ``1 - clamp((j - low) / (high - low), 0, 1)`` over ``j = 0..dim/2-1`` with
    :func:`yarn_correction_range` (``high += 0.001`` when equal, as the official ``linear_ramp_mask``).
    ``ramp="paper"``: ``clamp((r_j - alpha) / (beta - alpha), 0, 1)``, ``r_j = L theta_j / 2pi`` of ``freqs``
    (default the standard bands of ``base``).
    """
    rule = as_rule(rule)
    dim = check_int(dim, "rotary dim", 2, multiple_of=2)
    if rule.train_len is None:
        raise ValueError("YaRN needs train_len (L) to place its ramp")
    if rule.ramp == "paper":
        f = rope_freqs_list(dim, base) if freqs is None else _to_list(freqs)
        return [min(max((rule.train_len * x / (2 * math.pi) - rule.alpha) / (rule.beta - rule.alpha), 0.0), 1.0)
                for x in f]
    low, high = yarn_correction_range(rule.train_len, base, dim, rule.alpha, rule.beta)
    if low == high:
        high += 0.001
    return [1.0 - min(max((j - low) / (high - low), 0.0), 1.0) for j in range(dim // 2)]


def apply_rule(freqs, rule: Union[None, str, dict, ScalingRule], base: float, dim: int) -> torch.Tensor:
    """Rescale the bands ``freqs`` (``(dim//2,)``, built with ``base``) of one axis by ``rule``. Float64 out.

    ``base`` is checked (a positive number) and used where a rule needs it: YaRN's ``ramp="index"`` places its
    correction range with it (:func:`yarn_correction_range`); the other rules act on the given bands alone (the NTK
    rules as the factor ``lam^(-2j/d)`` that rebuilding with base ``lam * base`` would put on standard bands).
    """
    device = freqs.device if isinstance(freqs, torch.Tensor) else None
    return torch.tensor(apply_rule_list(freqs, rule, base, dim), dtype=torch.float64, device=device)


def rule_attention_factor(rule: Union[None, str, dict, ScalingRule]) -> float:
    """The factor on cos/sin a rule asks for: YaRN's ``mscale = 0.1 ln s + 1`` (1 at ``s <= 1``) when
    ``attn_factor`` is True, or None with ``ramp="index"`` (the official code); else 1."""
    rule = as_rule(rule)
    if rule.name == "yarn":
        on = rule.attn_factor if rule.attn_factor is not None else rule.ramp == "index"
        if on:
            return 0.1 * math.log(rule.scale) + 1.0
    return 1.0


def predicted_loop_length(base: Union[float, torch.Tensor], dim: Optional[int] = None, k: int = None) -> float:
    """Frames after which the ``k``-th (1-indexed) component completes a cycle: ``2pi/theta_k`` (not rounded).

    Plain extrapolation repeats content at about this length (RIFLEx Sec. 3); pass the *adjusted* frequencies to see
    the loop length after a rule.
    """
    freqs = _freqs_of(base, dim)
    if k is None or not 1 <= k <= len(freqs):
        raise ValueError(f"k must be in 1..{len(freqs)}, got {k!r}")
    return 2 * math.pi / freqs[k - 1]


def bands_report(
    freqs, train_len: float, test_len: float, N: Optional[float] = None, k: Optional[int] = None, gamma: float = 0.9,
    mode: str = "checked",
) -> dict:
    """RIFLEx table for any bands (``(n,)`` tensor or list, highest frequency first), e.g. LTX's.

    Returns ``components`` (one row per band: ``k`` (1-based), theta, period, cycles over the train and test length,
    adjusted theta), the chosen ``k`` and ``N_k``, how it was chosen, whether the adjustment applies (``L' > N_k``),
    the adjusted theta and the loop length after it. ``mode`` is a RIFLEx mode (:data:`RIFLEX_MODES`).
    """
    f = _to_list(freqs)
    rule = ScalingRule("riflex", train_len=train_len, test_len=test_len, N=N, k=k, gamma=gamma, mode=mode)
    kk, N_k = _resolve_k(f, rule)
    new = _riflex_list(f, kk, test_len, gamma, mode, train_len)
    two_pi = 2 * math.pi
    rows = [
        {"k": j + 1, "theta": th, "period": two_pi / th, "cycles_train": train_len * th / two_pi,
         "cycles_test": test_len * th / two_pi, "adjusted_theta": new[j]}
        for j, th in enumerate(f)
    ]
    how = "given" if k is not None else ("identify_k(N)" if N is not None else "default (smallest period >= L)")
    return {
        "train_len": train_len,
        "test_len": test_len,
        "k": kk,
        "N_k": N_k,
        "chosen_by": how,
        "mode": mode,
        "applied": new[kk - 1] != f[kk - 1],
        "theta_k": f[kk - 1],
        "adjusted_theta_k": new[kk - 1],
        "loop_length_after": two_pi / new[kk - 1],
        "components": rows,
    }


def riflex_report(
    base: float, dim: int, train_len: float, test_len: float, N: Optional[float] = None, k: Optional[int] = None,
    gamma: float = 0.9, mode: str = "checked",
) -> dict:
    """Everything a user computes by hand before applying RIFLEx to one axis of bands ``base^(-2j/dim)``.

    :func:`bands_report` plus ``base`` and ``dim``.
    """
    return {"base": base, "dim": dim,
            **bands_report(rope_freqs_list(dim, base), train_len, test_len, N=N, k=k, gamma=gamma, mode=mode)}


def _as_list(x, n: int, name: str) -> list:
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise ValueError(f"{name} must give one value per axis ({n}), got {x!r}")
        return list(x)
    return [x] * n


def axis_freqs(
    dims: Sequence[int],
    bases: Union[float, Sequence[float]] = 10000.0,
    rules: Union[None, str, ScalingRule, Sequence] = None,
) -> List[torch.Tensor]:
    """Bands of every axis after its rule: a list of float64 tensors ``(dims[a] // 2,)``."""
    n = len(dims)
    bases = _as_list(bases, n, "bases")
    rules = _as_list(rules, n, "rules")
    return [torch.tensor(apply_rule_list(rope_freqs_list(d, b), r, b, d), dtype=torch.float64)
            for d, b, r in zip(dims, bases, rules)]


__all__ += ["axis_freqs", "rope_freqs_list", "apply_rule_list", "bands_report", "YARN_RAMPS",
            "yarn_correction_range", "yarn_keep_list"]
