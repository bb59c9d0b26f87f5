"""YaRN: the official ramp (band index, HF transformers / jquesnelle/yarn) and the paper's ramp (rotation count)."""
import math
import types

import pytest
import torch

from vispos.freqs import (
    ScalingRule,
    apply_rule,
    rope_freqs,
    rule_attention_factor,
    yarn_correction_range,
    yarn_keep_list,
)

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers import modeling_rope_utils as hf_rope  # noqa: E402

# (base, rotary dim, L, L'): video time axes (HunyuanVideo, CogVideoX, Wan), ViT axes, an LLM-like case
CASES = [(256.0, 16, 33, 66), (1e4, 16, 13, 26), (1e4, 44, 21, 63), (100.0, 32, 14, 32), (1e4, 64, 16, 40),
         (1e4, 128, 4096, 16384), (5e5, 128, 8192, 32768), (1e4, 24, 8, 24)]


def _hf_config(base, dim, L, L2):
    return LlamaConfig(hidden_size=dim * 2, num_attention_heads=2, head_dim=dim, max_position_embeddings=L2,
                       rope_parameters={"rope_type": "yarn", "rope_theta": base, "factor": L2 / L,
                                        "original_max_position_embeddings": L})


class _Float64Torch(types.ModuleType):
    """``torch`` with ``torch.float`` and ``torch.float32`` = float64: HF's own YaRN code in double precision."""

    def __init__(self):
        super().__init__("torch64")
        self.float = self.float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("base,dim,L,L2", CASES)
def test_yarn_index_ramp_equals_hf_transformers(base, dim, L, L2, monkeypatch):
    ours = apply_rule(rope_freqs(dim, base), ScalingRule("yarn", train_len=L, test_len=L2), base, dim)
    hf32, attn = hf_rope._compute_yarn_parameters(_hf_config(base, dim, L, L2))
    # HF as shipped computes in float32: equal to float32 rounding
    torch.testing.assert_close(ours.float(), hf32, rtol=2e-6, atol=0)
    # the same HF code run in float64: equal to 1e-9 (absolute and relative)
    monkeypatch.setattr(hf_rope, "torch", _Float64Torch())
    hf64, attn64 = hf_rope._compute_yarn_parameters(_hf_config(base, dim, L, L2))
    assert hf64.dtype == torch.float64
    assert (ours - hf64).abs().max().item() <= 1e-9
    assert ((ours - hf64).abs() / hf64).max().item() <= 1e-9
    # mscale as the official code: always on for the index ramp
    rule = ScalingRule("yarn", train_len=L, test_len=L2)
    assert rule_attention_factor(rule) == pytest.approx(attn, abs=1e-12)
    assert attn == pytest.approx(0.1 * math.log(L2 / L) + 1)


def test_yarn_correction_range_is_the_official_formula():
    # HunyuanVideo time axis: c(32) = 16 ln(33/(64 pi)) / (2 ln 256) = -2.60 -> 0; c(1) = 2.40 -> 3
    assert yarn_correction_range(33, 256.0, 16) == (0, 3)
    for base, dim, L, _ in CASES:
        lo, hi = yarn_correction_range(L, base, dim)

        def c(r, dim=dim, L=L, base=base):
            return dim * math.log(L / (2 * math.pi * r)) / (2 * math.log(base))

        assert lo == max(math.floor(c(32)), 0) and hi == min(math.ceil(c(1)), dim - 1)


def test_yarn_paper_ramp_equals_its_equation():
    for base, dim, L, L2 in CASES:
        f = rope_freqs(dim, base)
        s = L2 / L
        y = apply_rule(f, ScalingRule("yarn", train_len=L, test_len=L2, ramp="paper"), base, dim)
        for j in range(dim // 2):
            r = L * float(f[j]) / (2 * math.pi)
            g = 0.0 if r < 1 else (1.0 if r > 32 else (r - 1) / 31)
            assert math.isclose(float(y[j]), g * float(f[j]) + (1 - g) * float(f[j]) / s, rel_tol=1e-12)
        # the paper variant has no mscale unless asked for
        assert rule_attention_factor(ScalingRule("yarn", train_len=L, test_len=L2, ramp="paper")) == 1.0
        assert rule_attention_factor(ScalingRule("yarn", train_len=L, test_len=L2, ramp="paper",
                                                 attn_factor=True)) == pytest.approx(0.1 * math.log(s) + 1)


def test_yarn_ramps_differ_on_a_short_axis():
    # the finding: on a short video axis the official code never interpolates the highest band
    base, dim, L, L2 = 256.0, 16, 33, 66
    f = rope_freqs(dim, base)
    idx = apply_rule(f, ScalingRule("yarn", train_len=L, test_len=L2), base, dim)
    pap = apply_rule(f, ScalingRule("yarn", train_len=L, test_len=L2, ramp="paper"), base, dim)
    assert float(idx[0]) == float(f[0])
    assert float(pap[0]) < float(f[0])
    assert yarn_keep_list(ScalingRule("yarn", train_len=L, test_len=L2), base, dim)[:4] == pytest.approx(
        [1.0, 2 / 3, 1 / 3, 0.0], abs=1e-15)


def test_yarn_attn_factor_off_and_bad_ramp():
    assert rule_attention_factor(ScalingRule("yarn", train_len=8, test_len=16, attn_factor=False)) == 1.0
    assert rule_attention_factor(ScalingRule("yarn", train_len=8, test_len=4)) == 1.0  # s = 1
    with pytest.raises(ValueError, match="ramp"):
        ScalingRule("yarn", ramp="rotations")
    with pytest.raises(TypeError, match="attn_factor"):
        ScalingRule("yarn", attn_factor=1.5)
