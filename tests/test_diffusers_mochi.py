"""Mochi (learned per-head per-axis RoPE frequencies) as bands: rules off bit-identical to diffusers on the full
MochiTransformer3DModel forward, RIFLEx / PI / YaRN equal to their formulas on each head's table (and to
vispos.freqs applied to those bands), refusals naming why, bf16, units, undo bit-exact. Tiny random config, CPU."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.freqs import ScalingRule, apply_rule  # noqa: E402
from vispos.integrations.diffusers.adapters_mochi import mochi_axis_bands  # noqa: E402

HEADS, BANDS = 2, 8


def _mochi():
    torch.manual_seed(0)
    m = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=HEADS, attention_head_dim=2 * BANDS, num_layers=1, pooled_projection_dim=8,
        in_channels=2, text_embed_dim=8, time_embed_dim=8, activation_fn="swiglu").eval()
    with torch.no_grad():  # Mochi initialises the table to 0: random signed values so the RoPE matters
        m.pos_frequencies.copy_(torch.randn(3, HEADS, BANDS) * 0.8)
        m.pos_frequencies[0, 1, 3] = 0.0  # a zero coefficient: left alone by every rule
    return m


@pytest.fixture(scope="module")
def mochi():
    return _mochi()


def _inputs(frames=9):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 2, frames, 4, 4, generator=g), torch.randn(1, 3, 8, generator=g),
            torch.tensor([500]), torch.ones(1, 3, dtype=torch.bool))


def _run(m, inputs):
    x, e, t, mask = inputs
    return m(x, e, t, mask, return_dict=False)[0]


def _riflex_by_hand(row, N, L2, gamma=0.9):
    """Per head: the nonzero band whose period round(2pi/|f|) is nearest N (first by |f| descending on ties);
    |f| -> min(|f|, gamma 2pi / L2) when L2 > its period, sign kept."""
    out = [float(v) for v in row]
    cands = sorted((j for j, v in enumerate(out) if v != 0), key=lambda j: -abs(out[j]))
    per = {j: round(2 * math.pi / abs(out[j])) for j in cands}
    k = min(cands, key=lambda j: (abs(per[j] - N), cands.index(j)))
    if L2 > per[k]:
        out[k] = math.copysign(min(abs(out[k]), gamma * 2 * math.pi / L2), out[k])
    return out, k


@torch.no_grad()
def test_mochi_rules_off_bit_identical_on_the_full_forward_and_undo(mochi):
    inputs = _inputs()
    ref = _run(mochi, inputs)
    table = mochi.pos_frequencies.detach().clone()
    with vd.apply_rule(mochi, time="none", space="none") as h:
        assert h.host == "mochi-style"
        assert torch.equal(_run(mochi, inputs), ref)
        assert torch.equal(h.last_bands["time"], table[0].double())
    # a rule that acts on no band of this length (L' = 9 <= every chosen period) also leaves the forward identical
    with vd.apply_rule(mochi, time={"name": "riflex", "N": 1000}):
        assert torch.equal(_run(mochi, inputs), ref)
    h = vd.apply_rule(mochi, time={"name": "riflex", "N": 4})
    assert not torch.equal(_run(mochi, inputs), ref)
    h.remove()
    assert torch.equal(_run(mochi, inputs), ref)
    assert torch.equal(mochi.pos_frequencies, table)  # the parameter is never changed


@torch.no_grad()
def test_mochi_riflex_per_head_equals_the_formula_and_vispos_freqs(mochi):
    table = mochi.pos_frequencies.detach()
    frames, N = 9, 4
    with vd.apply_rule(mochi, time={"name": "riflex", "N": N}) as h:
        cos, sin = mochi.rope(mochi.pos_frequencies, frames, 2, 2, device="cpu", dtype=torch.float32)
        got = h.last_bands["time"]
    changed = 0
    for head in range(HEADS):
        want, k = _riflex_by_hand(table[0, head].tolist(), N, frames)
        assert got[head].tolist() == want
        changed += want != table[0, head].double().tolist()
        # the same through vispos.freqs on the magnitudes ordered highest first (signs put back)
        row = table[0, head].double()
        nz = [j for j in sorted(range(BANDS), key=lambda j: -abs(float(row[j]))) if row[j] != 0]
        mags = row[nz].abs()
        new = apply_rule(mags, ScalingRule("riflex", N=N, test_len=frames), 10000.0, 2 * len(nz))
        expect = row.clone()
        expect[nz] = torch.where(new == mags, row[nz], new * row[nz].sign())
        assert torch.equal(got[head], expect)
    assert changed == HEADS  # the test length is past every head's chosen period: the rule acts on each head
    # the rope output is cos/sin of the host positions times the adjusted table (host axes untouched)
    adj = table.double().clone()
    adj[0] = got
    pos = mochi.rope._get_positions(frames, 2, 2, device="cpu", dtype=torch.float32)
    ang = torch.einsum("nd,dhf->nhf", pos, adj.float())
    assert torch.equal(cos, ang.cos()) and torch.equal(sin, ang.sin())
    assert torch.equal(mochi_axis_bands(table[1], ScalingRule("none")), table[1].double())


@torch.no_grad()
def test_mochi_pi_yarn_and_spatial_pi(mochi):
    table = mochi.pos_frequencies.detach()
    frames = 9
    with vd.apply_rule(mochi, time="pi", train_frames=3) as h:  # s = 9 / 3
        cos, _ = mochi.rope(mochi.pos_frequencies, frames, 2, 2, device="cpu", dtype=torch.float32)
        assert torch.equal(h.last_bands["time"], table[0].double() / 3.0)
        scaled = table.clone()
        scaled[0] = scaled[0] / 3.0  # PI: the time table / s, i.e. positions / s
        ref, _ = type(mochi.rope).forward(mochi.rope, scaled, frames, 2, 2, device="cpu", dtype=torch.float32)
        torch.testing.assert_close(cos, ref, rtol=0, atol=1e-6)
    L, s = 3.0, 3.0
    with vd.apply_rule(mochi, time={"name": "yarn", "ramp": "paper", "alpha": 0.2, "beta": 0.6},
                       train_frames=3) as h:
        mochi.rope(mochi.pos_frequencies, frames, 2, 2, device="cpu", dtype=torch.float32)
        got = h.last_bands["time"]
    for head in range(HEADS):
        for j in range(BANDS):
            f = float(table[0, head, j])
            g = min(max((L * abs(f) / (2 * math.pi) - 0.2) / (0.6 - 0.2), 0.0), 1.0)
            assert math.isclose(float(got[head, j]), g * f + (1 - g) * f / s, rel_tol=1e-12, abs_tol=0.0)
    assert (got != table[0].double()).any() and (got == table[0].double()).any()  # kept and interpolated bands
    with vd.apply_rule(mochi, space=({"name": "pi", "factor": 2.0}, "none")) as h:
        mochi.rope(mochi.pos_frequencies, frames, 2, 2, device="cpu", dtype=torch.float32)
        assert torch.equal(h.last_bands["height"], table[1].double() / 2.0)
        assert torch.equal(h.last_bands["width"], table[2].double())
        assert torch.equal(h.last_bands["time"], table[0].double())


@pytest.mark.parametrize("kw, match", [
    (dict(time="ntk", train_frames=3), r"'ntk': an NTK base change .* learned"),
    (dict(time={"name": "ntk_base", "factor": 2.0}), r"'ntk_base'"),
    (dict(time="yarn", train_frames=3), r"ramp='index' .* learned table"),
    (dict(time={"name": "yarn", "ramp": "paper", "attn_factor": True}, train_frames=3), r"attn_factor=True"),
    (dict(space={"name": "riflex", "k": 1}), r"'riflex' on the height axis: Mochi rescales"),
    (dict(space="pi", train_height=2, train_width=2), r"'pi' on the height axis"),
])
def test_mochi_refusals_name_why(mochi, kw, match):
    with pytest.raises(ValueError, match=match):
        vd.apply_rule(mochi, **kw)
    assert not mochi.rope._forward_pre_hooks  # nothing left installed


@torch.no_grad()
def test_mochi_units_same_N_same_choice_and_bf16():
    m = _mochi()
    frames = 9
    picks = []
    for kw in (dict(N=4), dict(N=19, units="pixel")):  # 19 video frames = (19 - 1) / 6 + 1 = 4 latent frames
        units = kw.pop("units", "latent")
        with vd.apply_rule(m, time=dict(name="riflex", **kw), units=units) as h:
            m.rope(m.pos_frequencies, frames, 2, 2, device="cpu", dtype=torch.float32)
            picks.append(h.last_bands["time"])
    assert torch.equal(picks[0], picks[1])
    m = m.to(torch.bfloat16)
    inputs = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in _inputs()]
    ref = _run(m, inputs)
    with vd.apply_rule(m, time="none"):
        assert torch.equal(_run(m, inputs), ref)
    with vd.apply_rule(m, time={"name": "riflex", "N": 4}) as h:
        out = _run(m, inputs)
        assert out.dtype == torch.bfloat16 and not torch.equal(out, ref)
        want, _ = _riflex_by_hand(m.pos_frequencies[0, 0].double().tolist(), 4, frames)
        assert h.last_bands["time"][0].tolist() == want
    assert torch.equal(_run(m, inputs), ref)
