import pytest
import torch
from torch import nn

import vispos
from vispos import Attention, GridLayout
from vispos.pe.conditional import PEG, apply_peg


class TinyViT(nn.Module):
    """A minimal pre-norm ViT stack calling every PE hook (the host contract)."""

    def __init__(self, dim, heads, depth):
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.norm1, b.attn, b.norm2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
            b.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.blocks.append(b)

    def forward(self, x, layout, pe=None):
        if pe is not None:
            x = pe.forward_tokens(x, layout)
        for i, b in enumerate(self.blocks):
            x = x + b.attn(b.norm1(x), layout, pe, i)
            x = x + b.mlp(b.norm2(x))
            if pe is not None and i in pe.block_indices:
                x = pe.forward_block(x, layout, i)
        return x


def hand_dwconv(g, w, b):
    """Depthwise conv with zero padding written as shifted sums: g (B, C, *S), w (C, 1, k, ...), b (C,)."""
    k = w.shape[-1]
    r = (k - 1) // 2
    nd = g.dim() - 2
    gp = torch.nn.functional.pad(g, [r, r] * nd)
    out = torch.zeros_like(g) + b.view(1, -1, *([1] * nd))
    S = g.shape[2:]
    for off in torch.cartesian_prod(*[torch.arange(k)] * nd).reshape(-1, nd).tolist():
        sl = tuple(slice(o, o + s) for o, s in zip(off, S))
        out = out + gp[(slice(None), slice(None)) + sl] * w[(slice(None), 0) + tuple(off)].view(1, -1, *([1] * nd))
    return out


@pytest.mark.parametrize("shape,k", [((4, 6), 3), ((5, 5), 5), ((2, 3, 4), 3)])
def test_peg_matches_hand_built_conv(shape, k):
    lay = GridLayout(shape, 2)
    C = 8
    pe = PEG(C, ndim=len(shape), kernel_size=k)
    with torch.no_grad():
        pe.convs[0].bias.normal_()
    x = torch.randn(2, lay.num_tokens, C)
    y = pe.forward_block(x, lay, 0)
    g = x[:, 2:].transpose(1, 2).reshape(2, C, *shape)
    exp = (hand_dwconv(g, pe.convs[0].weight, pe.convs[0].bias) + g).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y[:, 2:], exp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[:, :2], x[:, :2], rtol=0, atol=0)  # prefix passes through
    torch.testing.assert_close(y, apply_peg(x, lay, pe.convs[0].weight, pe.convs[0].bias))  # module == function
    torch.testing.assert_close(pe.forward_block(x, lay, 1), x)  # identity at unlisted blocks


def test_peg_interior_translation_equivariance():
    pe = PEG(4, ndim=2)
    H, W = 8, 9
    g = torch.randn(1, 4, H, W)
    gs = torch.roll(g, shifts=(1, 2), dims=(2, 3))
    lay = GridLayout((H, W))

    def run(m):
        return pe.forward_block(m.flatten(2).transpose(1, 2), lay, 0).transpose(1, 2).reshape(1, 4, H, W)

    y, ys = run(g), run(gs)
    # interior (away from the zero-padded border and the roll's wrap-around): shifted output == output of shift
    torch.testing.assert_close(ys[..., 2:-1, 3:-1], torch.roll(y, shifts=(1, 2), dims=(2, 3))[..., 2:-1, 3:-1])
    # but not at the border: the padding carries absolute position
    assert not torch.allclose(ys[..., 0, :], torch.roll(y, shifts=(1, 2), dims=(2, 3))[..., 0, :])


def test_peg_zero_init_identity_in_model_and_default_init():
    torch.manual_seed(0)
    model = TinyViT(16, 2, 3).eval()
    lay = GridLayout((3, 4), 1)
    x = torch.randn(2, lay.num_tokens, 16)
    pe = vispos.build_pe("peg", dim=16, num_heads=2, depth=3, grid=(3, 4), zero_init=True, blocks=[0, 2])
    assert pe.block_indices == (0, 2)
    torch.testing.assert_close(model(x, lay, pe), model(x, lay, None), rtol=0, atol=0)
    pd = PEG(16, blocks=(0,))
    w = pd.convs[0].weight
    assert torch.equal(pd.convs[0].bias, torch.zeros(16))
    assert abs(w.std().item() - (2 / 9) ** 0.5) < 0.15  # CPVT init normal(0, sqrt(2/9))
    assert not torch.allclose(model(x, lay, pd), model(x, lay, None))


@pytest.mark.parametrize("grid,test_grid", [((4, 6), (5, 3)), ((2, 3, 4), (3, 4, 2))])
def test_forward_backward_two_grids(grid, test_grid):
    pe = vispos.build_pe("peg", dim=16, num_heads=2, depth=2, grid=grid, num_prefix=1)
    for g in (grid, test_grid):
        lay = GridLayout(g, 1)
        x = torch.randn(2, lay.num_tokens, 16, requires_grad=True)
        pe.forward_block(x, lay, 0).square().sum().backward()
        assert pe.convs[0].weight.grad.abs().sum() > 0 and x.grad is not None
        pe.zero_grad()


def test_peg_errors():
    with pytest.raises(ValueError, match="odd"):
        PEG(8, kernel_size=4)
    with pytest.raises(ValueError, match="odd"):
        vispos.build_pe("peg", dim=8, grid=(2, 3, 4), kernel_size=2)
    pe = PEG(8, ndim=2)
    with pytest.raises(ValueError, match="13"):
        pe.forward_block(torch.randn(1, 12, 8), GridLayout((3, 4), 1), 0)
    with pytest.raises(ValueError, match="3-D grid"):
        pe.forward_block(torch.randn(1, 24, 8), GridLayout((2, 3, 4)), 0)  # 2D PEG on a 3D grid
    with pytest.raises(ValueError, match="block indices"):
        PEG(8, blocks=(0, 5), depth=3)
    with pytest.raises(ValueError, match="channels"):
        pe.forward_block(torch.randn(1, 12, 4), GridLayout((3, 4)), 0)
