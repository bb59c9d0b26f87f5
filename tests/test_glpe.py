import math

import pytest
import torch
import torch.nn.functional as F

import vispos
from vispos import Attention, GridLayout
from vispos.pe.global_local import GlobalLocalPE, apply_glpe_local, build_glpe_sincos


def detr_block(pos, n, d, temperature=10000.0, eps=1e-6):
    """DETR PositionEmbeddingSine for one axis, written out: channel 2j sin, 2j+1 cos, t_k = T^(2 floor(k/2)/d)."""
    c = (pos + 1) / (n + eps) * 2 * math.pi
    out = []
    for k in range(d):
        t = temperature ** (2 * (k // 2) / d)
        out.append(math.sin(c / t) if k % 2 == 0 else math.cos(c / t))
    return out


def test_global_sincos_formula_rectangular():
    H, W, D = 3, 5, 16
    tab = build_glpe_sincos(GridLayout((H, W)), D, dtype=torch.float64)
    for h in range(H):
        for w in range(W):
            exp = detr_block(h, H, D // 2) + detr_block(w, W, D // 2)  # y block then x block
            torch.testing.assert_close(tab[h * W + w], torch.tensor(exp, dtype=torch.float64))
    T = 2
    tab3 = build_glpe_sincos(GridLayout((T, H, W)), 32, dtype=torch.float64)
    t, h, w = 1, 2, 3
    exp = detr_block(t, T, 8) + detr_block(h, H, 12) + detr_block(w, W, 12)
    torch.testing.assert_close(tab3[(t * H + h) * W + w], torch.tensor(exp, dtype=torch.float64))


def test_global_sincos_bottom_right_identical_for_every_grid():
    ref2 = build_glpe_sincos(GridLayout((2, 2)), 16)[-1]
    for shape in [(3, 3), (4, 7), (9, 5), (16, 16)]:
        torch.testing.assert_close(build_glpe_sincos(GridLayout(shape), 16)[-1], ref2, atol=1e-5, rtol=0)
    ref3 = build_glpe_sincos(GridLayout((2, 2, 2)), 32)[-1]
    for shape in [(3, 4, 5), (8, 2, 3)]:
        torch.testing.assert_close(build_glpe_sincos(GridLayout(shape), 32)[-1], ref3, atol=1e-5, rtol=0)
    # and the top-left corner does depend on the grid size (normalised, not indexed)
    assert not torch.allclose(build_glpe_sincos(GridLayout((2, 2)), 16)[0], build_glpe_sincos(GridLayout((8, 8)), 16)[0])


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_global_token_hook_equals_formula(shape):
    D = 16 if len(shape) == 2 else 32
    pe = GlobalLocalPE(D, 2, 2, ndim=len(shape))
    lay = GridLayout(shape, 1)
    x = torch.randn(2, lay.num_tokens, D)
    y = pe.forward_tokens(x, lay)
    g = build_glpe_sincos(lay, D).t().reshape(1, D, *shape)
    conv = F.conv2d if len(shape) == 2 else F.conv3d
    exp = conv(g, pe.global_conv.weight, pe.global_conv.bias, padding=1, groups=D).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y[:, 1:], x[:, 1:] + exp)
    torch.testing.assert_close(y[:, :1], x[:, :1], rtol=0, atol=0)  # class token gets zeros


@pytest.mark.parametrize("per_head", [False, True])
def test_local_zero_init_then_formula(per_head):
    dim, heads = 16, 2
    pe = vispos.build_pe("glpe", dim=dim, num_heads=heads, depth=2, grid=(3, 4), per_head=per_head)
    lay = GridLayout((3, 4), 1)
    attn = Attention(dim, heads)
    x = torch.randn(2, lay.num_tokens, dim)
    torch.testing.assert_close(attn(x, lay, pe, 1), attn(x, lay, None), rtol=0, atol=0)  # zero-init: unchanged
    with torch.no_grad():
        for p in pe.local_convs.parameters():
            p.normal_()
    out = torch.randn(2, heads, lay.num_tokens, 8)
    v = torch.randn(2, heads, lay.num_tokens, 8)
    y = pe.forward_value(out, v, lay, 1)
    c = pe.local_convs[1]
    exp = out.clone()
    for h in range(heads):
        vh = v[:, h, 1:].transpose(1, 2).reshape(2, 8, 3, 4)
        w = c.weight[h * 8:(h + 1) * 8] if per_head else c.weight
        b = c.bias[h * 8:(h + 1) * 8] if per_head else c.bias
        exp[:, h, 1:] += F.conv2d(vh, w, b, padding=1, groups=8).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y, exp)
    torch.testing.assert_close(y[:, :, :1], out[:, :, :1], rtol=0, atol=0)
    assert not torch.allclose(attn(x, lay, pe, 1), attn(x, lay, None))
    torch.testing.assert_close(y, apply_glpe_local(out, v, lay, c.weight, c.bias, per_head))


def test_per_head_with_equal_weights_equals_shared():
    shared = GlobalLocalPE(16, 2, 1)
    ph = GlobalLocalPE(16, 2, 1, per_head=True)
    with torch.no_grad():
        shared.local_convs[0].weight.normal_()
        shared.local_convs[0].bias.normal_()
        ph.local_convs[0].weight.copy_(shared.local_convs[0].weight.repeat(2, 1, 1, 1))
        ph.local_convs[0].bias.copy_(shared.local_convs[0].bias.repeat(2))
    lay = GridLayout((3, 3))
    out, v = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(shared.forward_value(out, v, lay, 0), ph.forward_value(out, v, lay, 0))


@pytest.mark.parametrize("grid,test_grid", [((4, 6), (5, 3)), ((2, 3, 4), (3, 4, 2))])
def test_forward_backward_two_grids(grid, test_grid):
    dim = 32
    pe = vispos.build_pe("glpe", dim=dim, num_heads=2, depth=2, grid=grid, num_prefix=1)
    attn = Attention(dim, 2)
    for g in (grid, test_grid):
        lay = GridLayout(g, 1)
        x = torch.randn(2, lay.num_tokens, dim)
        attn(pe.forward_tokens(x, lay), lay, pe, 1).square().sum().backward()
        assert pe.global_conv.weight.grad.abs().sum() > 0
        assert pe.local_convs[1].weight.grad.abs().sum() > 0  # zero-init still learns
        pe.zero_grad()


def test_errors():
    with pytest.raises(ValueError, match="odd"):
        GlobalLocalPE(16, 2, 2, kernel_size=2)
    with pytest.raises(ValueError, match="divisible by 16"):
        GlobalLocalPE(24, 2, 2, ndim=3)
    pe = GlobalLocalPE(16, 2, 2)
    with pytest.raises(ValueError, match="13"):
        pe.forward_tokens(torch.randn(1, 12, 16), GridLayout((3, 4), 1))
    with pytest.raises(ValueError, match="3-D grid"):
        pe.forward_tokens(torch.randn(1, 24, 16), GridLayout((2, 3, 4)))
    with pytest.raises(ValueError, match="out of range"):
        pe.forward_value(torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8), GridLayout((3, 4)), 2)
    with pytest.raises(ValueError, match="needs dim"):
        vispos.build_pe("glpe", dim=16, grid=(3, 4))
