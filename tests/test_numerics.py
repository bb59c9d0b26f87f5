"""Numerics (issue 9): RoPE angles at large positions under bf16/fp16, fp16 relative bias, determinism.

See docs/robustness.md ("Numerics") for the measured numbers these tests pin.
"""
from __future__ import annotations

import math

import hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vispos
from vispos.freqs import ScalingRule
from vispos.grid import GridLayout, grid_coords
from vispos.ops.attention import sdpa
from vispos.pe.rope import AxialRoPE, MixedRoPE, VoPE

LOW = (torch.bfloat16, torch.float16)
MAX_POS = 1e4
ANGLE_TOL = 1e-3  # the bound (radians)
TABLE_TOL = 1e-5  # what vispos actually achieves: float64 angles, one cast of cos/sin to float32 (~1e-7 measured)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def _table_angles(cos, sin):
    return torch.atan2(sin.double(), cos.double())


def _reference_angles(pe, layout, index=0):
    """Exact angles in float64 from the module's own coordinates and (possibly low-precision) frequencies."""
    c = grid_coords(layout, pe.coords, pe.ref_shape, dtype=torch.float64)
    if isinstance(pe, MixedRoPE):
        return torch.einsum("na,ahj->hnj", c, pe.freqs[:, index].double())
    fr = pe.get_freqs(layout.shape)
    parts = [c[:, a, None] * f[None, :] for a, f in enumerate(fr)]
    ang = torch.cat(parts, dim=-1)
    pad = pe.head_dim // 2 - ang.shape[-1]
    return torch.cat([ang, ang.new_zeros(ang.shape[0], pad)], dim=-1) if pad else ang


@st.composite
def far_layouts(draw, ndim):
    shape = draw(st.tuples(*[st.integers(1, 3)] * ndim))
    pos = tuple(
        tuple(draw(st.floats(0.0, MAX_POS, allow_nan=False, allow_infinity=False)) for _ in range(s))
        for s in shape
    )
    # always include the far end
    pos = (tuple([MAX_POS] + list(pos[0][1:])),) + pos[1:]
    return GridLayout(shape, draw(st.integers(0, 2)), positions=pos)


def _make(kind, ndim, dtype):
    if kind == "rope_axial":
        return AxialRoPE(24, ndim, base=10000.0)
    if kind == "rope_axial_ntk":
        return AxialRoPE(24, ndim, base=10000.0, rules=ScalingRule("ntk", train_len=16, test_len=64))
    if kind == "vope":
        return VoPE(24, ndim, train_shape=(8,) * ndim, base=10000.0)
    return MixedRoPE(24, 2, 3, ndim=ndim, dtype=dtype)


KINDS = ["rope_axial", "rope_axial_ntk", "vope", "rope_mixed"]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_rope_angles_accurate_at_large_positions(kind, dtype, data):
    """Positions up to 1e4, model in bf16/fp16 and under autocast: the table's angles are exact to < 1e-5 rad."""
    ndim = data.draw(st.sampled_from([2, 3]))
    layout = data.draw(far_layouts(ndim))
    pe = _make(kind, ndim, dtype).to(dtype)  # a host casting the whole model
    with torch.autocast("cpu", dtype=dtype):
        if isinstance(pe, MixedRoPE):
            cos, sin = pe.build_table(layout, 1)
            ref = _reference_angles(pe, layout, 1)  # (heads, N, D/2)
            got = _table_angles(cos, sin)[:, layout.num_prefix:]
        else:
            cos, sin = pe.get_table(layout)
            ref = _reference_angles(pe, layout)
            got = _table_angles(cos, sin)[layout.num_prefix:]
    assert cos.dtype == torch.float32 and sin.dtype == torch.float32, "RoPE tables were lowered below float32"
    err = _wrap(got - ref).abs().max().item()
    assert err < TABLE_TOL < ANGLE_TOL, f"{kind}: angle error {err:.3g} rad at positions up to {MAX_POS}"
    # prefix rows: exactly the identity
    p = layout.num_prefix
    assert torch.equal(cos[..., :p, :], torch.ones_like(cos[..., :p, :]))
    assert torch.equal(sin[..., :p, :], torch.zeros_like(sin[..., :p, :]))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("kind", ["rope_axial", "vope", "rope_mixed"])
def test_rotated_q_error_does_not_grow_with_position(kind, dtype):
    """End to end through ``forward_qk`` with bf16/fp16 q: the rotated pair's angle error is the output dtype's
    rounding (about eps), the same at position 1e4 as at position 1 -- it does not grow with the position."""
    pe = _make(kind, 2, dtype)
    errs = {}
    for far in (1.0, MAX_POS):
        layout = GridLayout((1, 2), 1, positions=((far,), (far - 1.0, far)))
        q = torch.zeros(1, pe.num_heads if isinstance(pe, MixedRoPE) else 2, layout.num_tokens, 24)
        q[..., 0::2] = 1.0  # every interleaved pair is (1, 0): its rotation is (cos a, sin a)
        q = q.to(dtype)
        with torch.autocast("cpu", dtype=dtype):
            qr, _ = pe.forward_qk(q, q, layout, 0)
        assert qr.dtype == dtype
        got = torch.atan2(qr[..., 1::2].double(), qr[..., 0::2].double())[:, :, 1:]
        ref = _reference_angles(pe, layout)
        ref = ref if ref.dim() == 3 else ref[None]
        errs[far] = _wrap(got[0] - ref).abs().max().item()
    eps = torch.finfo(dtype).eps
    assert errs[MAX_POS] <= 2 * eps, f"{kind} {dtype}: angle error {errs[MAX_POS]:.3g} at 1e4 (eps {eps:.3g})"
    assert errs[MAX_POS] <= 2 * max(errs[1.0], eps)


def test_float32_angles_would_fail_the_bound():
    """Negative control: computing the same angles in float32 (p * theta) misses the 1e-5 bound at 1e4, so the
    test above would catch a regression to float32 angle math."""
    theta = vispos.rope_freqs(24, 10000.0)
    p = torch.tensor([MAX_POS - 0.37, 9876.543], dtype=torch.float64)
    exact = p[:, None] * theta[None]
    f32 = p.float()[:, None] * theta.float()[None]
    err = _wrap(torch.atan2(torch.sin(f32).double(), torch.cos(f32).double()) - exact).abs().max().item()
    assert err > TABLE_TOL


# ---- relative bias in fp16 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["fold", "dense", "chunked"])
@pytest.mark.parametrize("qscale", [30.0, 300.0])
def test_rel_decomposed_fp16_large_q_finite(impl, qscale):
    """Large q (std 30 and 300, |q| up to ~1e3) in fp16: bias and attention output finite and close to fp32."""
    torch.manual_seed(0)
    grid, hd, H = (6, 7), 32, 2
    pe = vispos.build_pe("rel_decomposed", dim=hd * H, num_heads=H, depth=1, grid=grid, num_prefix=1)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_(0.0, 1.0)
    layout = GridLayout(grid, 1)
    q = torch.randn(1, H, layout.num_tokens, hd) * qscale
    k = torch.randn(1, H, layout.num_tokens, hd)
    v = torch.randn(1, H, layout.num_tokens, hd)
    b32 = pe.attn_bias(q, layout, 0)
    pe16 = pe.to(torch.float16)
    b16 = pe16.attn_bias(q.half(), layout, 0)
    d16, d32 = b16.dense(torch.float32), b32.dense(torch.float32)
    assert torch.isfinite(d16).all(), "fp16 relative bias overflowed"
    rel = ((d16 - d32).abs().max() / d32.abs().max()).item()
    assert rel < 1e-2, f"fp16 bias relative error {rel:.3g}"
    out16 = sdpa(q.half(), k.half(), v.half(), b16, impl=impl, chunk_size=16)
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all(), f"{impl}: non-finite fp16 attention"
    out32 = sdpa(q, k, v, b32, impl="dense")
    # with logits in the thousands the softmax is nearly one-hot; compare where the fp32 result is not a near-tie
    close = (out16.float() - out32).abs() < 0.1 + 0.05 * out32.abs()
    assert close.float().mean() > 0.95, f"{impl}: fp16 output disagrees with fp32 on {1 - close.float().mean():.1%}"


# ---- determinism -----------------------------------------------------------------------------------------------
GEOM = dict(dim=48, num_heads=4, depth=2, grid=(3, 4), num_prefix=1)
RANDOM_INIT = {"ape", "peg", "glpe", "rope_mixed", "lape"}  # families whose init draws random numbers


def _host(pe, seed):
    torch.manual_seed(seed)
    layout = GridLayout(GEOM["grid"], GEOM["num_prefix"])
    attns = [vispos.Attention(GEOM["dim"], GEOM["num_heads"]) for _ in range(GEOM["depth"])]
    x = torch.randn(1, layout.num_tokens, GEOM["dim"])
    x = pe.forward_tokens(x, layout)
    for i, a in enumerate(attns):
        x = x + a(x, layout, pe, i)
        if i in pe.block_indices:
            x = pe.forward_block(x, layout, i)
    return x


@pytest.mark.parametrize("name", [i.name for i in vispos.list_pes()])
def test_deterministic_for_a_seed(name):
    outs, states = [], []
    for _ in range(2):
        torch.manual_seed(1234)
        pe = vispos.build_pe(name, **GEOM)
        states.append({k: v.clone() for k, v in pe.state_dict().items()})
        with torch.no_grad():
            outs.append(_host(pe, 7))
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), f"{name}: parameter {k} differs for the same seed"
    assert torch.equal(outs[0], outs[1]), f"{name}: output differs for the same seed"
    if name in RANDOM_INIT:  # the check can fail: another seed gives other parameters
        torch.manual_seed(4321)
        other = vispos.build_pe(name, **GEOM).state_dict()
        assert any(not torch.equal(other[k], states[0][k]) for k in other), f"{name}: init ignores the seed"
