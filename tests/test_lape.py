import pytest
import torch
from torch import nn

import vispos
from vispos import Attention, GridLayout
from vispos.pe.absolute import AbsolutePE, SinCosPE, resample_abs_pe
from vispos.pe.lape import LaPE


def randomize_norms(pe):
    with torch.no_grad():
        for n in pe.norms:
            n.weight.normal_()
            n.bias.normal_()


def test_chain_and_sharing_formula():
    base = AbsolutePE(16, (3, 4), num_prefix=1)
    pe = LaPE(base, depth=3)
    randomize_norms(pe)
    lay = GridLayout((3, 4), 1)
    w = base.pos_embed
    chain = []
    for n in pe.norms:  # written out: omega_{l+1} = LN_l(omega_l)
        w = nn.functional.layer_norm(w, (16,), n.weight, n.bias, 1e-6)
        chain.append(w)
    x = torch.randn(2, 13, 16)
    for i in range(3):  # sequential calls (memo path) == formula
        torch.testing.assert_close(pe.forward_attn_input(x, lay, i), x + chain[i])
    for i in (2, 0, 1):  # out-of-order calls recompute
        torch.testing.assert_close(pe.layer_pe(lay, i), chain[i])
    torch.testing.assert_close(torch.stack(pe.layer_pes(lay)), torch.stack(chain))
    sh = LaPE(base, depth=3, sharing=True)
    sh.load_state_dict(pe.state_dict())
    for i, n in enumerate(pe.norms):
        torch.testing.assert_close(sh.layer_pe(lay, i), n(base.pos_embed))
    assert torch.equal(pe.forward_tokens(x, lay), x)  # nothing enters the residual stream
    assert pe.hooks == frozenset({"attn_input"})


def test_memo_not_stale_after_update():
    pe = LaPE(AbsolutePE(8, (2, 2)), depth=2)
    lay = GridLayout((2, 2))
    pe.layer_pe(lay, 0)
    with torch.no_grad():
        pe.norms[0].bias.add_(1.0)  # parameter changes between layer 0 and layer 1
    exp = pe.norms[1](pe.norms[0](pe.base.pos_embed))
    torch.testing.assert_close(pe.layer_pe(lay, 1), exp)


def test_resampling_acts_on_base_before_chain():
    pe = vispos.build_pe(["ape", "lape"], dim=16, num_heads=2, depth=2, grid=(3, 4), num_prefix=1)
    assert isinstance(pe, LaPE) and isinstance(pe.base, AbsolutePE)
    randomize_norms(pe)
    lay = GridLayout((5, 6), 1)
    w0 = resample_abs_pe(pe.base.pos_embed, (5, 6), (3, 4), 1)
    torch.testing.assert_close(pe.layer_pe(lay, 1), pe.norms[1](pe.norms[0](w0)))


def test_zero_init_leaves_attention_unchanged():
    pe = vispos.build_pe("lape", dim=16, num_heads=2, depth=2, grid=(3, 4), num_prefix=1, init="zero")
    attn = Attention(16, 2)
    lay = GridLayout((3, 4), 1)
    x = torch.randn(2, 13, 16)
    torch.testing.assert_close(attn(x, lay, pe, 1), attn(x, lay, None), rtol=0, atol=0)
    dflt = vispos.build_pe("lape", dim=16, num_heads=2, depth=2, grid=(3, 4), num_prefix=1)
    assert not torch.allclose(attn(x, lay, dflt, 1), attn(x, lay, None))


def test_sincos_base_by_name():
    pe = vispos.build_pe("lape", dim=32, num_heads=2, depth=2, grid=(2, 3, 4), base="ape_sincos")
    assert isinstance(pe.base, SinCosPE) and pe.ndims == (3,)
    lay = GridLayout((2, 3, 4))
    exp = pe.norms[0](pe.base.get_table(lay))[None]
    torch.testing.assert_close(pe.layer_pe(lay, 0), exp)
    sd = pe.state_dict()
    assert set(sd) == {"norms.0.weight", "norms.0.bias", "norms.1.weight", "norms.1.bias"}


@pytest.mark.parametrize("grid,test_grid", [((4, 6), (5, 3)), ((2, 3, 4), (3, 4, 2))])
def test_forward_backward_two_grids(grid, test_grid):
    pe = vispos.build_pe(["ape", "lape"], dim=32, num_heads=2, depth=2, grid=grid, num_prefix=1)
    attn = Attention(32, 2)
    for g in (grid, test_grid):
        lay = GridLayout(g, 1)
        x = torch.randn(2, lay.num_tokens, 32)
        y = attn(x, lay, pe, 0)
        y = attn(y, lay, pe, 1)
        y.square().sum().backward()
        assert pe.base.pos_embed.grad.abs().sum() > 0
        assert pe.norms[0].weight.grad.abs().sum() > 0 and pe.norms[1].bias.grad.abs().sum() > 0
        pe.zero_grad()


def test_errors():
    with pytest.raises(TypeError, match="base"):
        LaPE(nn.Linear(2, 2), depth=2)
    with pytest.raises(ValueError, match="base"):
        vispos.build_pe("lape", dim=16, depth=2, grid=(3, 4), base="peg")
    pe = vispos.build_pe("lape", dim=16, depth=2, grid=(3, 4), num_prefix=1)
    with pytest.raises(ValueError, match="13"):
        pe.forward_attn_input(torch.randn(1, 12, 16), GridLayout((3, 4), 1), 0)
    with pytest.raises(ValueError, match="out of range"):
        pe.forward_attn_input(torch.randn(1, 13, 16), GridLayout((3, 4), 1), 2)
    with pytest.raises(ValueError, match="3-D grid"):
        pe.forward_attn_input(torch.randn(1, 25, 16), GridLayout((2, 3, 4), 1), 0)
    with pytest.raises(ValueError, match="init"):
        vispos.build_pe("lape", dim=16, depth=2, grid=(3, 4), init="identity")


@pytest.mark.parametrize("sharing", [False, True])
def test_crop_aug_base_draws_one_crop_per_forward(sharing):
    """With an RO-ViT crop_aug base in training, every layer must see the same omega_0 (one crop per forward)."""
    base = AbsolutePE(16, (4, 4), num_prefix=1, crop_aug=True)
    pe = LaPE(base, depth=3, sharing=sharing)
    pe.train()
    lay = GridLayout((4, 4), 1)
    x = torch.zeros(2, 17, 16)
    torch.manual_seed(0)
    prepared = pe.prepare(x, lay)  # the host's once-per-forward step: one crop, carried by the layout
    assert prepared == lay  # the chain is per-forward state, not part of the layout's identity
    outs = [pe.forward_attn_input(x, prepared, i) for i in range(3)]
    if sharing:  # equal norms (default init) -> equal per-layer PE when omega_0 is shared
        torch.testing.assert_close(outs[0], outs[1])
        torch.testing.assert_close(outs[1], outs[2])
    else:  # chain of identical LayerNorms: LN(LN(w)) ~= LN(w)
        torch.testing.assert_close(outs[0], outs[1], atol=5e-2, rtol=0)  # eps makes LN not quite idempotent
    # a new forward draws a new crop
    torch.manual_seed(1)
    again = pe.forward_attn_input(x, pe.prepare(x, lay), 0)
    assert not torch.allclose(again, outs[0])
    with pytest.raises(ValueError, match="prepare"):  # without the prepared layout each layer would draw its own
        pe.forward_attn_input(x, lay, 1)
