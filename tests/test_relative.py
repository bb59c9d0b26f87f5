import pytest
import torch
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias

import vispos
from vispos import Attention, GridLayout
from vispos.ops.attention import DecomposedBias
from vispos.pe.relative import DecomposedRelPos, decomposed_rel_pos_factors, get_rel_pos, resize_rel_pos


@pytest.mark.parametrize(
    "qs,ks,lens",
    [
        ((4, 5), (4, 5), None),  # equal sizes, exact tables
        ((4, 6), (2, 3), None),  # pooled keys (MViTv2)
        ((3, 3), (6, 5), None),  # more keys than queries
        ((5, 4), (5, 4), (5, 9)),  # tables of another length: linear interpolation (SAM)
    ],
)
def test_bias_matches_timm_sam(qs, ks, lens):
    B, Hh, C = 2, 3, 8
    q = torch.randn(B, Hh, qs[0] * qs[1], C)
    lh = 2 * max(qs[0], ks[0]) - 1 if lens is None else lens[0]
    lw = 2 * max(qs[1], ks[1]) - 1 if lens is None else lens[1]
    th, tw = torch.randn(lh, C), torch.randn(lw, C)
    f = decomposed_rel_pos_factors(q, [th, tw], qs, ks)
    assert [t.shape for t in f] == [(B, Hh, qs[0] * qs[1], ks[0]), (B, Hh, qs[0] * qs[1], ks[1])]
    ours = DecomposedBias(f, GridLayout(qs), GridLayout(ks)).dense()
    ref = get_decomposed_rel_pos_bias(q.reshape(B * Hh, -1, C), th, tw, qs, ks)
    torch.testing.assert_close(ours.reshape(B * Hh, *ours.shape[2:]), ref, atol=1e-5, rtol=1e-5)


def test_temporal_axis_formula():
    B, Hh, C = 1, 2, 4
    T, H, W = 3, 2, 3
    q = torch.randn(B, Hh, T * H * W, C, dtype=torch.float64)
    tt, th, tw = (torch.randn(2 * s - 1, C, dtype=torch.float64) for s in (T, H, W))
    f = decomposed_rel_pos_factors(q, [tt, th, tw], (T, H, W))
    dense = DecomposedBias(f, GridLayout((T, H, W)), GridLayout((T, H, W))).dense()
    exp = torch.zeros(B, Hh, T * H * W, T * H * W, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            for w in range(W):
                i = (t * H + h) * W + w
                for kt in range(T):
                    for kh in range(H):
                        for kw in range(W):
                            j = (kt * H + kh) * W + kw
                            qi = q[:, :, i]
                            exp[:, :, i, j] = (qi @ tt[t - kt + T - 1]) + (qi @ th[h - kh + H - 1]) + \
                                (qi @ tw[w - kw + W - 1])
    torch.testing.assert_close(dense, exp)


def test_table_resize_rules():
    t = torch.randn(7, 4)
    assert resize_rel_pos(t, 7) is t
    torch.testing.assert_close(resize_rel_pos(t, 5, interpolate=False), t[1:6])  # centre crop keeps offsets
    with pytest.raises(ValueError, match="interpolate"):
        resize_rel_pos(t, 9, interpolate=False)  # table too small
    with pytest.raises(ValueError, match="interpolate"):
        get_rel_pos(6, 6, t, interpolate=False)
    assert resize_rel_pos(t, 11).shape == (11, 4)


def test_module_semantics_prefix_unscaled_q_and_attention():
    torch.manual_seed(0)
    dim, heads, depth, grid = 16, 2, 2, (3, 4)
    pe = vispos.build_pe("rel_decomposed", dim=dim, num_heads=heads, depth=depth, grid=grid, num_prefix=1)
    assert pe.layers[0].rel_pos_h.shape == (5, 8) and pe.layers[0].rel_pos_w.shape == (7, 8)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in pe.parameters())  # SAM zero init
    lay = GridLayout(grid, 1)
    attn = Attention(dim, heads)
    x = torch.randn(2, lay.num_tokens, dim)
    torch.testing.assert_close(attn(x, lay, pe, 1), attn(x, lay, None))  # zero tables: output unchanged
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_()
    q = torch.randn(2, heads, lay.num_tokens, 8)
    b = pe.attn_bias(q, lay, 1)
    d = b.dense()
    assert torch.equal(d[:, :, 0], torch.zeros_like(d[:, :, 0])) and torch.equal(d[:, :, :, 0], d[:, :, :, 0] * 0)
    ref = get_decomposed_rel_pos_bias(q[:, :, 1:].reshape(4, 12, 8), pe.layers[1].rel_pos_h, pe.layers[1].rel_pos_w,
                                      grid, grid)  # unscaled q: the reference quirk
    torch.testing.assert_close(d[:, :, 1:, 1:].reshape(4, 12, 12), ref, atol=1e-5, rtol=1e-5)
    ps = DecomposedRelPos(8, depth, grid, scaled_q=True)
    ps.load_state_dict(pe.state_dict())
    torch.testing.assert_close(ps.attn_bias(q, lay, 1).dense(), d * 8 ** -0.5, atol=1e-5, rtol=1e-5)
    # through the attention module: softmax(scale q k + bias) v
    out = attn(x, lay, pe, 1)
    qkv = attn.qkv(x).reshape(2, lay.num_tokens, 3, heads, 8).permute(2, 0, 3, 1, 4)
    qq, kk, vv = qkv.unbind(0)
    logits = qq @ kk.transpose(-1, -2) * 8 ** -0.5 + pe.attn_bias(qq, lay, 1).dense()
    exp = attn.proj((logits.softmax(-1) @ vv).transpose(1, 2).reshape(2, lay.num_tokens, dim))
    torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid,test_grid", [((4, 6), (5, 3)), ((2, 3, 4), (3, 4, 2))])
def test_forward_backward_two_grids(grid, test_grid):
    pe = vispos.build_pe("rel_decomposed", dim=16, num_heads=2, depth=2, grid=grid, num_prefix=1)
    attn = Attention(16, 2)
    for g in (grid, test_grid):
        lay = GridLayout(g, 1)
        x = torch.randn(2, lay.num_tokens, 16)
        attn(x, lay, pe, 1).square().sum().backward()
        names = ["rel_pos_t", "rel_pos_h", "rel_pos_w"][3 - len(grid):]
        for n in names:
            assert getattr(pe.layers[1], n).grad.abs().sum() > 0
        pe.zero_grad()


def test_errors():
    pe = DecomposedRelPos(8, 2, (3, 4), interpolate=False)
    with pytest.raises(ValueError, match="13"):
        pe.attn_bias(torch.randn(1, 2, 12, 8), GridLayout((3, 4), 1))  # grid/token mismatch
    with pytest.raises(ValueError, match="3-D grid"):
        pe.attn_bias(torch.randn(1, 2, 24, 8), GridLayout((2, 3, 4)))  # 2D tables, 3D grid
    with pytest.raises(ValueError, match="interpolate"):
        pe.attn_bias(torch.randn(1, 2, 20, 8), GridLayout((4, 5)))  # table too small, no interpolation
    pe.attn_bias(torch.randn(1, 2, 6, 8), GridLayout((2, 3)))  # smaller grid: centre crop works
    with pytest.raises(ValueError, match="head dim"):
        pe.attn_bias(torch.randn(1, 2, 12, 4), GridLayout((3, 4)))
    with pytest.raises(ValueError, match="out of range"):
        pe.attn_bias(torch.randn(1, 2, 12, 8), GridLayout((3, 4)), 2)
    with pytest.raises(ValueError, match="depth"):
        vispos.build_pe("rel_decomposed", dim=16, num_heads=2, grid=(3, 4))


def test_tables_excluded_from_weight_decay():
    pe = vispos.build_pe("rel_decomposed", dim=32, num_heads=2, depth=2, grid=(4, 4))
    names = {n for n, _ in pe.named_parameters()}
    assert names and pe.no_weight_decay() == names
