import math

import pytest
import torch

from vispos import freqs as F
from vispos.freqs import ScalingRule, apply_rule, default_k, identify_k, rope_freqs


def test_rope_freqs_formula():
    f = rope_freqs(16, 100.0)
    assert f.dtype == torch.float64 and f.shape == (8,)
    assert torch.allclose(f, torch.tensor([100.0 ** (-2 * j / 16) for j in range(8)], dtype=torch.float64))


@pytest.mark.parametrize("base,dim,N,expected", [(256, 16, 48, (4, 50)), (1e4, 16, 20, (2, 20)), (1e4, 44, 51, (6, 51))])
def test_identify_k_anchors(base, dim, N, expected):
    assert identify_k(base, dim, N) == expected


def test_default_k_anchors():
    assert default_k(256, 16, 33) == (4, 50)  # HunyuanVideo, 33 latent frames
    assert default_k(1e4, 16, 13) == (2, 20)  # CogVideoX, 13 latent frames
    assert default_k(1e4, 44, 21) == (4, 22)  # Wan t-dim 44, 21 latent frames
    with pytest.raises(ValueError, match="period"):
        default_k(1.5, 4, 1e6)


@pytest.mark.parametrize("base,dim,N,L2", [(256, 16, 48, 97), (1e4, 16, 20, 26), (1e4, 44, 51, 60), (100, 32, 30, 64)])
def test_riflex_changes_exactly_one_component(base, dim, N, L2):
    f = rope_freqs(dim, base)
    k, Nk = identify_k(base, dim, N)
    g = apply_rule(f, ScalingRule("riflex", N=N, test_len=L2), base, dim)
    diff = (g != f).nonzero().flatten().tolist()
    assert L2 > Nk
    assert diff == [k - 1]
    assert math.isclose(float(g[k - 1]), min(float(f[k - 1]), 0.9 * 2 * math.pi / L2), rel_tol=0, abs_tol=1e-15)


def test_riflex_identity_when_short_and_never_raises():
    f = rope_freqs(16, 256)
    for L2 in (10, 40, 50):  # L' <= N_k = 50
        assert torch.equal(apply_rule(f, ScalingRule("riflex", k=4, test_len=L2), 256, 16), f)
    # gamma=1, L' just above N_k: 2pi/L' could exceed theta_k? no: min() keeps it
    for L2 in (51, 60, 200):
        g = apply_rule(f, ScalingRule("riflex", k=4, test_len=L2, gamma=1.0), 256, 16)
        assert (g <= f).all()
    # just above N_k = 50 with gamma = 1, 2pi/L' (0.12516) exceeds theta_4 (0.125): min() keeps theta_4
    g = apply_rule(f, ScalingRule("riflex", k=4, test_len=50.2, gamma=1.0), 256, 16)
    assert torch.equal(g, f)


def test_pi_ntk_ntk_base_yarn_formulas():
    d, b, L, L2 = 16, 1e4, 10, 30
    f = rope_freqs(d, b)
    s = L2 / L
    pi = apply_rule(f, ScalingRule("pi", train_len=L, test_len=L2), b, d)
    assert torch.allclose(pi, f / s)
    ntk = apply_rule(f, ScalingRule("ntk", train_len=L, test_len=L2), b, d)
    lam = s ** (d / (d - 2))
    assert torch.allclose(ntk, torch.tensor([(lam * b) ** (-2 * j / d) for j in range(d // 2)], dtype=torch.float64))
    nb = apply_rule(f, ScalingRule("ntk_base", factor=4.0), b, d)
    assert torch.allclose(nb, rope_freqs(d, 4 * b))
    y = apply_rule(f, ScalingRule("yarn", train_len=L, test_len=L2, ramp="paper"), b, d)
    for j in range(d // 2):
        r = L * float(f[j]) / (2 * math.pi)
        g = 0.0 if r < 1 else (1.0 if r > 32 else (r - 1) / 31)
        assert math.isclose(float(y[j]), g * float(f[j]) + (1 - g) * float(f[j]) / s, rel_tol=1e-12)
    # first component: r = 10/(2pi) = 1.59 -> partially interpolated
    assert float(y[-1]) == pytest.approx(float(f[-1]) / s)


def test_rules_identity_at_scale_one_or_shorter():
    d, b = 16, 100.0
    f = rope_freqs(d, b)
    for name in ("none", "pi", "ntk", "ntk_base", "yarn"):
        for L2 in (8, 10):
            g = apply_rule(f, ScalingRule(name, train_len=10, test_len=L2), b, d)
            assert torch.allclose(g, f), name


def test_axis_freqs_compose_per_axis():
    fs = F.axis_freqs([16, 24, 24], 1e4, [ScalingRule("riflex", k=2, test_len=40),
                                          ScalingRule("pi", train_len=8, test_len=16), None])
    assert torch.allclose(fs[1], rope_freqs(24, 1e4) / 2)
    assert torch.equal(fs[2], rope_freqs(24, 1e4))
    assert (fs[0] != rope_freqs(16, 1e4)).sum() == 1


def test_predicted_loop_length_and_report():
    assert F.predicted_loop_length(256, 16, 4) == pytest.approx(2 * math.pi * 8)
    rep = F.riflex_report(256, 16, train_len=33, test_len=66, N=48)
    assert (rep["k"], rep["N_k"], rep["applied"]) == (4, 50, True)
    assert rep["adjusted_theta_k"] == pytest.approx(0.9 * 2 * math.pi / 66)
    assert rep["loop_length_after"] == pytest.approx(66 / 0.9)
    assert len(rep["components"]) == 8


def test_rule_errors_name_values():
    with pytest.raises(ValueError, match="unknown scaling rule 'linear'"):
        ScalingRule("linear")
    with pytest.raises(ValueError, match="train_len"):
        ScalingRule("pi", train_len=0, test_len=3)
    with pytest.raises(ValueError, match="-4"):
        ScalingRule("riflex", test_len=-4, k=1)
    with pytest.raises(ValueError, match="1-indexed"):
        ScalingRule("riflex", k=0, test_len=3)
    with pytest.raises(ValueError, match="needs factor=, or train_len and test_len"):
        apply_rule(rope_freqs(8), ScalingRule("pi"), 1e4, 8)
    with pytest.raises(ValueError, match="even"):
        rope_freqs(7)
    with pytest.raises(ValueError, match="out of range"):
        apply_rule(rope_freqs(8), ScalingRule("riflex", k=9, test_len=100), 1e4, 8)
    with pytest.raises(TypeError):
        F.as_rule(3)


def test_apply_rule_checks_and_uses_base():
    """``base`` is validated for every rule, and YaRN's index ramp places its correction range with it."""
    f = rope_freqs(16, 256)
    for bad in (-1.0, 0, None, "256"):
        with pytest.raises((ValueError, TypeError), match="base"):
            apply_rule(f, "none", bad, 16)
    rule = ScalingRule("yarn", train_len=33, test_len=66)
    assert not torch.equal(apply_rule(f, rule, 256, 16), apply_rule(f, rule, 1e4, 16))
