"""ALiBi on grids: slopes = ALiBi's geometric sequence (and transformers' BLOOM code), the Manhattan decomposed
form equals the dense bias, Euclidean form, prefix tokens, hosts."""
import math

import pytest
import torch

import vispos
from vispos.grid import GridLayout
from vispos.ops.attention import DecomposedBias, sdpa
from vispos.pe.alibi import ALiBi, alibi_dense, alibi_slopes


def _press_slopes(n):
    """ofirpress/attention_with_linear_biases get_slopes, re-expressed."""
    def p2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return p2(n)
    c = 2 ** math.floor(math.log2(n))
    return p2(c) + _press_slopes(2 * c)[0::2][: n - c]


@pytest.mark.parametrize("n", [1, 2, 3, 6, 8, 12, 16, 24])
def test_slopes_are_alibis_geometric_sequence(n):
    s = alibi_slopes(n)
    assert s == pytest.approx(_press_slopes(n), rel=1e-12)
    if math.log2(n).is_integer():
        assert s == pytest.approx([2 ** (-8 * h / n) for h in range(1, n + 1)], rel=1e-12)
    tr = pytest.importorskip("transformers")
    del tr
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    ref = build_alibi_tensor(torch.ones(1, 2), n, torch.float32).reshape(n, 2)[:, 1]  # slope * position 1
    torch.testing.assert_close(torch.tensor(s, dtype=torch.float32), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape,prefix", [((4, 5), 1), ((3, 4, 5), 2), ((6, 3), 0)])
def test_manhattan_decomposed_equals_dense(shape, prefix):
    pe = ALiBi(6, len(shape))
    lay = GridLayout(shape, prefix)
    q = torch.randn(2, 6, lay.num_tokens, 16)
    b = pe.attn_bias(q, lay)
    assert isinstance(b, DecomposedBias)
    dense = alibi_dense(pe.slopes, lay, "manhattan")
    torch.testing.assert_close(b.dense(), dense.expand(2, -1, -1, -1), atol=1e-5, rtol=0)
    # explicit definition: -m_h * (|dt| + |dy| + |dx|) between patches, zero for prefix
    from vispos.grid import grid_coords

    c = grid_coords(shape, dtype=torch.float64)
    d = (c[:, None] - c[None]).abs().sum(-1)
    for h in (0, 5):
        torch.testing.assert_close(dense[0, h, prefix:, prefix:].double(), -pe.slopes[h] * d, atol=1e-5, rtol=0)
    assert (dense[0, :, :prefix] == 0).all() and (dense[0, :, :, :prefix] == 0).all()
    # attention through the fold path equals the dense-mask path, and no N x N bias is built
    k, v = torch.randn_like(q), torch.randn_like(q)
    torch.testing.assert_close(sdpa(q, k, v, b, impl="fold"), sdpa(q, k, v, dense), atol=1e-5, rtol=1e-4)


def test_euclidean_dense_and_explicit_positions():
    pe = ALiBi(4, 2, distance="euclidean")
    lay = GridLayout((3, 4), 1)
    q = torch.randn(1, 4, 13, 8)
    b = pe.attn_bias(q, lay)
    assert b.shape == (1, 4, 13, 13)
    # tokens (0, 0) and (2, 3): distance sqrt(13)
    assert b[0, 0, 1, 1 + 2 * 4 + 3].item() == pytest.approx(-alibi_slopes(4)[0] * math.sqrt(13), rel=1e-6)
    # explicit positions (a strided clip) use the positions, in both forms
    m = ALiBi(2, 3)
    lay3 = GridLayout((2, 1, 2), positions=((0.0, 4.0), None, (0.0, 1.0)))
    db = m.attn_bias(torch.zeros(1, 2, 4, 8), lay3).dense()
    assert db[0, 0, 0, 3].item() == pytest.approx(-alibi_slopes(2)[0] * 5, rel=1e-6)
    torch.testing.assert_close(db, alibi_dense(m.slopes, lay3, "manhattan").expand(1, -1, -1, -1))


def test_alibi_errors_and_registry():
    with pytest.raises(ValueError, match="distance"):
        ALiBi(4, 2, distance="cosine")
    with pytest.raises(ValueError, match="heads"):
        ALiBi(4, 2).attn_bias(torch.zeros(1, 3, 4, 8), (2, 2))
    with pytest.raises(ValueError, match="num_heads"):
        vispos.build_pe("alibi", grid=(4, 4))
    pe = vispos.build_pe("alibi", dim=64, num_heads=4, grid=(2, 4, 4), axis_scale=(2.0, 1.0, 1.0))
    assert pe.ndims == (3,) and pe.axis_scale == (2.0, 1.0, 1.0)
    assert dict(pe.state_dict()) == {}


def test_manhattan_with_pooled_keys():
    pe = ALiBi(2, 2)
    q_lay, k_lay = GridLayout((4, 4), 1), GridLayout((2, 2), 1)
    b = pe.attn_bias(torch.zeros(1, 2, 17, 8), q_lay, k_layout=k_lay)
    assert [f.shape[-1] for f in b.factors] == [2, 2]
    dense = b.dense()
    assert dense.shape == (1, 2, 17, 5)
    # query (3, 1) against key (1, 0): |3 - 1| + |1 - 0| = 3
    assert dense[0, 1, 1 + 3 * 4 + 1, 1 + 1 * 2 + 0].item() == pytest.approx(-alibi_slopes(2)[1] * 3, rel=1e-6)
