"""Mochi's learned RoPE frequencies as per-axis bands. Part of :data:`~vispos.integrations.diffusers.adapters.ADAPTERS`.

``MochiTransformer3DModel`` holds a learned parameter ``pos_frequencies`` of shape ``(3, heads, head_dim // 2)`` and
passes it to ``rope(pos_frequencies, num_frames, height, width)`` at every forward; the angle of token ``n``, head
``h``, pair ``f`` is ``sum_a pos[n, a] * pos_frequencies[a, h, f]`` with ``pos = (t, y, x)``: ``t`` the latent
frame index (Mochi does not patchify time), ``y, x`` centred and scaled so that the grid's area is
``base_height * base_width`` (its own spatial normalisation). The angle is linear in each coordinate, so axis ``a``
has its own table ``pos_frequencies[a]`` (heads x bands): per head, those coefficients are the axis's bands
(angular frequencies per coordinate unit, signed and unordered).

**Definition of a rule on an axis** (:func:`mochi_axis_bands`). Per head ``h`` the nonzero coefficients of
``pos_frequencies[a, h]`` are ordered by ``|f|``, highest first (stable), and :func:`vispos.freqs.apply_rule` is
applied to those magnitudes as one axis of bands; each result is put back at its coefficient's place with the
coefficient's sign. Zero coefficients do not rotate and are left alone (every rule maps 0 to 0; RIFLEx never picks an
infinite period). So ``pi`` divides the table by the factor (positions / s); RIFLEx picks per head the band whose
period ``round(2pi / |f|)`` best matches ``N`` (``k``: the ``k``-th largest ``|f|`` of that head; neither: the
smallest period ``>= train_frames``) and lowers its magnitude to ``min(|f|, 0.9 * 2pi / L')`` when ``L' > N_k``
(``mode="finetune"`` / ``"unchecked"`` as in :mod:`vispos.freqs`); YaRN is NTK-by-parts by wavelength: its paper ramp
``g = clamp((L |f| / 2pi - alpha) / (beta - alpha), 0, 1)`` keeps the bands that turn more than ``beta`` times over
the training length and interpolates (``/ s``) those that turn less than ``alpha`` times.

Refused, with the reason: the NTK base rules (``ntk``, ``ntk_base``) and YaRN's ``ramp="index"``, which are defined
by the band index of a geometric table ``b^(-2j/d)`` (a base) that a learned table has not; YaRN's attention factor,
a factor on cos/sin that cannot be confined to one axis here (the angle mixes the axes). On the spatial axes only
``none`` and ``pi`` with an explicit ``factor=`` are taken: Mochi already rescales ``y, x`` to a fixed area at every
resolution, so a length ratio in latent pixels is not the positions' scale there.

Lengths: latent frames (``units="latent"``) = RoPE positions of the time axis; ``units="pixel"`` converts video
frames with the VAE's temporal compression 6 (``(F - 1) / 6 + 1``). ``vispos riflex`` has no Mochi entry (its table
is for ``b^(-2j/d)`` bands of released checkpoints): Mochi is API-only, with the same ``N`` in latent frames.
"""
from __future__ import annotations

import inspect
from typing import List, Sequence

import torch

from ...freqs import ScalingRule, apply_rule, rule_attention_factor
from ...utils.checks import is_number
from .adapters import Adapter, _forward_params
from .handle import AXES

__all__ = ["MochiStyle", "mochi_axis_bands"]

_MOCHI_FORWARD = ["pos_frequencies", "num_frames", "height", "width", "device", "dtype"]
_DUMMY_BASE = 10000.0  # apply_rule checks a base; none of the rules taken here reads it (see the module docstring)


def _refusal(rule: ScalingRule, axis: int):
    """Why ``rule`` cannot act on Mochi axis ``axis`` (None if it can)."""
    name = rule.name
    if name == "none":
        return None
    if axis != 0:
        if name == "pi" and rule.factor is not None:
            return None
        return (f"rule {name!r} on the {AXES[axis]} axis: Mochi rescales its spatial coordinates to a fixed area "
                f"(base_height * base_width) at every resolution, so only 'none' or 'pi' with an explicit factor= "
                f"(divides the {AXES[axis]} table) act there")
    if name in ("ntk", "ntk_base"):
        return (f"rule {name!r}: an NTK base change multiplies band j of a geometric table b^(-2j/d) by "
                "lam^(-2j/d); Mochi's frequencies are learned (no base, no band order), so it has no meaning here: "
                "use 'yarn' with ramp='paper' (NTK-by-parts by wavelength), 'pi' or 'riflex'")
    if name == "yarn" and rule.ramp != "paper":
        return ("YaRN ramp='index' places its ramp by band index of a table of base b; Mochi's learned table has "
                "none: pass {'name': 'yarn', 'ramp': 'paper'} (the ramp by wavelength, r = L |f| / 2pi)")
    if name == "yarn" and rule.attn_factor:
        return ("YaRN attn_factor=True scales cos/sin, which Mochi's angle shares among its 3 axes (it cannot be "
                "confined to the time axis): pass attn_factor=False")
    return None


def mochi_axis_bands(table: torch.Tensor, rule: ScalingRule) -> torch.Tensor:
    """One axis of ``pos_frequencies`` (``(heads, bands)``) with ``rule`` (lengths filled in) applied per head, float64.

    Per head: the nonzero coefficients by ``|f|`` highest first (stable), :func:`vispos.freqs.apply_rule` on those
    magnitudes, results put back in place with their signs; zeros unchanged.
    """
    t64 = table.detach().to(device="cpu", dtype=torch.float64)
    if rule.name == "none":
        return t64
    out = t64.clone()
    for h in range(t64.shape[0]):
        row = t64[h]
        nz = torch.nonzero(row != 0).flatten()
        if nz.numel() == 0:
            continue
        mag = row[nz].abs()
        order = torch.sort(mag, descending=True, stable=True).indices
        sorted_mag = mag[order]
        new = apply_rule(sorted_mag, rule, _DUMMY_BASE, 2 * sorted_mag.numel())
        vals = torch.empty_like(mag)
        vals[order] = new
        out[h, nz] = torch.where(vals == mag, row[nz], vals * row[nz].sign())
    return out


class MochiStyle(Adapter):
    """Mochi: ``transformer.rope(pos_frequencies, num_frames, height, width, device, dtype)`` with the learned
    ``(3, heads, bands)`` table the transformer passes in; a rule maps one axis's table (see the module docstring)."""

    name = "mochi-style"
    layout = ("`transformer.rope.forward(pos_frequencies, num_frames, height, width, device, dtype)`: angle "
              "`sum_a pos_a * pos_frequencies[a]`, learned per-head per-axis tables; rules map one axis's table")
    vae = (6, 8)
    components = ("transformer",)

    def match(self, model, pipe) -> bool:
        rope = getattr(model, "rope", None)
        return (isinstance(rope, torch.nn.Module) and _forward_params(rope) == _MOCHI_FORWARD
                and is_number(getattr(rope, "target_area", None)) and callable(getattr(rope, "_get_positions", None)))

    def patch(self, model):
        cfg = getattr(model, "config", None)
        p = int(getattr(cfg, "patch_size", 1) or 1) if cfg is not None else 1
        return 1, p, p

    def n_components(self, model):
        table = getattr(model, "pos_frequencies", None)
        # a bare rope (no transformer): its table arrives at each call; the install check still runs
        n = int(table.shape[-1]) if isinstance(table, torch.Tensor) and table.ndim == 3 else 0
        return n, n, n

    def _verify(self, rope) -> None:
        """The host's forward must be cos/sin of ``pos @ table`` with the frame index as time coordinate."""
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(3, 2, 3, generator=gen, dtype=torch.float32)
        with torch.no_grad():
            pos = rope._get_positions(4, 2, 3, device="cpu", dtype=torch.float32)
            ref = type(rope).forward(rope, probe, 4, 2, 3, device="cpu", dtype=torch.float32)
        ang = torch.einsum("nd,dhf->nhf", pos, probe)
        t_ok = pos.shape == (24, 3) and torch.equal(pos[:, 0], torch.arange(4, dtype=torch.float32).repeat_interleave(6))
        if not (t_ok and torch.equal(ref[0], ang.cos()) and torch.equal(ref[1], ang.sin())):
            raise ValueError(f"{type(rope).__name__} looks Mochi-style (forward(pos_frequencies, num_frames, height, "
                             "width, ...)) but its output is not cos/sin of frame-index positions times the table: "
                             "vispos cannot adjust it safely")

    def install(self, handle, model, pipe):
        for a, ax in enumerate(handle.axes.values()):
            rules = ax.rule.rules if hasattr(ax.rule, "rules") else (ax.rule,)
            for r in rules:
                why = _refusal(r, a)
                if why:
                    raise ValueError(f"{type(model).__name__} (mochi-style): {why}")
        rope = model.rope
        self._verify(rope)
        sig = inspect.signature(type(rope).forward)

        def pre_hook(module, args, kwargs):
            call = sig.bind(module, *args, **kwargs)
            call.apply_defaults()
            table = call.arguments["pos_frequencies"]
            if not (isinstance(table, torch.Tensor) and table.ndim == 3 and table.shape[0] == 3):
                raise ValueError(f"vispos rules on {type(module).__name__} need pos_frequencies of shape (3, heads, "
                                 f"bands), got {getattr(table, 'shape', type(table).__name__)}")
            sizes = (int(call.arguments["num_frames"]), int(call.arguments["height"]), int(call.arguments["width"]))
            rules: List[ScalingRule] = handle.resolve(sizes)
            for a, r in enumerate(rules):
                why = _refusal(r, a) or (None if rule_attention_factor(r) == 1.0 else "attention factor")
                if why:
                    raise ValueError(f"{type(module).__name__}: {why}")
            new = [mochi_axis_bands(table[a], r) for a, r in enumerate(rules)]
            for a in range(3):
                handle.last_bands[AXES[a]] = new[a]
            if all(r.name == "none" for r in rules):
                return None
            host32 = table.to(torch.float32)  # what the host's _create_rope computes with
            merged = _merge(host32, table, new)
            if merged is host32:
                return None
            call.arguments["pos_frequencies"] = merged
            return call.args[1:], call.kwargs

        hook = rope.register_forward_pre_hook(pre_hook, with_kwargs=True)
        return hook.remove


def _merge(host32: torch.Tensor, table: torch.Tensor, new: Sequence[torch.Tensor]) -> torch.Tensor:
    """The host's own float32 table where the rules left it, the rules' values (float32) elsewhere."""
    orig64 = table.detach().to(device="cpu", dtype=torch.float64)
    new64 = torch.stack(list(new), dim=0)
    changed = new64 != orig64
    if not bool(changed.any()):
        return host32
    return torch.where(changed.to(host32.device), new64.to(device=host32.device, dtype=torch.float32), host32)
