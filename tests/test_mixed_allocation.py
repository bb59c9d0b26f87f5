"""rope_mixed's 3D frequency allocations (``allocation=``): the initial pair -> (axis, band) assignment equals
rope_axial's with the same allocation, scores stay offset-only, HoPE's time pairs stay unrotated, the learned
frequencies get gradients, and the default build is unchanged."""
import math

import pytest
import torch

import vispos
from vispos.grid import GridLayout
from vispos.models import VideoDiT
from vispos.pe.rope import ALLOCATIONS, AxialRoPE, MixedRoPE, allocation_plan, init_mixed_freqs

SHAPE = (3, 4, 5)
HD, HEADS, DEPTH, TEMP = 24, 3, 2, 100.0
DIMS = (8, 8, 8)


def _mixed(allocation, rotate=True, **kw):
    return MixedRoPE(HD, DEPTH, HEADS, ndim=3, temperature=TEMP, rotate=rotate, allocation=allocation,
                     dims=DIMS, **kw)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_initial_tables_equal_rope_axial(allocation):
    """Spatial mixing angle 0 (``rotate=False``): every layer's table is rope_axial's with the same allocation."""
    m = _mixed(allocation, rotate=False)
    ax = AxialRoPE(HD, dims=DIMS, base=TEMP, allocation=allocation, num_heads=HEADS, dtype=torch.float64)
    assert m.temporal_stride == ax.temporal_stride
    lay = GridLayout(SHAPE, 1)
    ac, as_ = ax.build_table(lay)
    for layer in range(DEPTH):
        mc, ms = m.build_table(lay, layer)
        assert mc.shape == (HEADS, 1 + math.prod(SHAPE), HD // 2)
        torch.testing.assert_close(mc.double(), ac.expand_as(mc), atol=1e-6, rtol=0)
        torch.testing.assert_close(ms.double(), as_.expand_as(ms), atol=1e-6, rtol=0)
    # and the (axis, band) per pair is the plan's: exactly one learned row (t or the (h, w) plane) per pair
    plan = allocation_plan(allocation, DIMS, TEMP, HEADS if allocation == "headwise" else None)
    for h in range(HEADS):
        for j, (axis, band) in enumerate(plan[h if len(plan) > 1 else 0]):
            col = m.freqs[:, :, h, j].double()
            want = torch.zeros(3, DEPTH, dtype=torch.float64)
            if not (allocation == "hope" and axis == 0):
                want[axis] = band
            torch.testing.assert_close(col, want, atol=1e-7, rtol=1e-6)
            assert m.freq_mask[0, 0, h, j] == (axis == 0 and allocation != "hope")
            assert bool(m.freq_mask[1, 0, h, j]) == (axis != 0)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_rotated_init_keeps_bands_and_axes(allocation):
    """With the random 2D angle, a spatial pair's (h, w) frequency has its band's magnitude and each head/layer's
    spatial pairs share one angle; time pairs are untouched by the rotation."""
    torch.manual_seed(1)
    m = _mixed(allocation)
    ref = _mixed(allocation, rotate=False)
    f, r = m.freqs.detach().double(), ref.freqs.detach().double()
    torch.testing.assert_close(f[0], r[0])
    torch.testing.assert_close(f[1:].norm(dim=0), r[1:].norm(dim=0), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(f[1:], r[1:])  # really rotated


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_scores_depend_only_on_offsets(allocation):
    torch.manual_seed(0)
    m = _mixed(allocation)
    with torch.no_grad():
        m.freqs.add_(torch.randn_like(m.freqs) * 0.3)  # as after training
    n = math.prod(SHAPE)
    q = torch.randn(1, HEADS, 1, HD).expand(1, HEADS, n, HD)
    k = torch.randn(1, HEADS, 1, HD).expand(1, HEADS, n, HD)

    def scores(lay):
        qr, kr = m(q, k, lay, 1)
        return qr @ kr.transpose(-1, -2)

    base = scores(GridLayout(SHAPE))
    shifted = GridLayout(SHAPE, positions=tuple(tuple(float(i + o) for i in range(s))
                                                 for s, o in zip(SHAPE, (5.0, -3.0, 7.0))))
    torch.testing.assert_close(scores(shifted), base, atol=1e-4, rtol=1e-4)
    assert base.std() > 1e-3  # the scores do vary with the offset


def test_hope_time_pairs_exactly_unrotated():
    torch.manual_seed(0)
    m = _mixed("hope")
    with torch.no_grad():
        m.freqs.add_(torch.randn_like(m.freqs))  # even arbitrary values there are not used
    plan = allocation_plan("hope", DIMS, TEMP)[0]
    t_pairs = [j for j, (a, _) in enumerate(plan) if a == 0]
    assert t_pairs == list(range(8, 12))  # VideoRoPE / HoPE: t on the lowest frequencies
    cos, sin = m.build_table(GridLayout(SHAPE), 0)
    assert torch.equal(cos[..., t_pairs], torch.ones_like(cos[..., t_pairs]))
    assert torch.equal(sin[..., t_pairs], torch.zeros_like(sin[..., t_pairs]))
    q = torch.randn(1, HEADS, math.prod(SHAPE), HD)
    qr, _ = m(q, q, GridLayout(SHAPE), 0)
    ch = [c for j in t_pairs for c in (2 * j, 2 * j + 1)]
    assert torch.equal(qr[..., ch], q[..., ch])
    assert not torch.allclose(qr, q)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_gradients_reach_the_learned_frequencies_only(allocation):
    torch.manual_seed(0)
    m = _mixed(allocation)
    q = torch.randn(2, HEADS, math.prod(SHAPE), HD)
    k = torch.randn(2, HEADS, math.prod(SHAPE), HD)
    qr, kr = m(q, k, GridLayout(SHAPE), 1)
    (qr @ kr.transpose(-1, -2)).square().mean().backward()
    g = m.freqs.grad[:, 1]
    learned = m.freq_mask[:, 0].bool().expand_as(g)
    assert torch.isfinite(g).all()
    assert (g[learned] != 0).float().mean() > 0.9
    assert torch.equal(g[~learned], torch.zeros_like(g[~learned]))
    assert torch.equal(m.freqs.grad[:, 0], torch.zeros_like(m.freqs.grad[:, 0]))  # layer 0 unused


def test_default_build_unchanged_bit_for_bit():
    torch.manual_seed(3)
    m = vispos.build_pe("rope_mixed", dim=2 * 12, num_heads=2, depth=2, grid=(3, 2, 2))
    torch.manual_seed(3)
    ref = init_mixed_freqs(12, 2, 2, 3, 10.0, True)
    assert m.allocation is None and m.temporal_stride == 1.0
    assert torch.equal(m.freqs.detach(), ref)
    # learned state is only `freqs` (`ref_grid` is the saved reference grid, not a parameter)
    assert set(m.state_dict()) == {"freqs", "ref_grid"} and [n for n, _ in m.named_parameters()] == ["freqs"]
    assert not hasattr(m, "freq_mask")
    lay = GridLayout((3, 2, 2), 1)
    c = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in (3, 2, 2)], indexing="ij"),
                    -1).reshape(-1, 3)
    ang = (c.t()[:, None, :, None] * ref[:, 1].double()[:, :, None, :]).sum(0)
    cos, sin = m.build_table(lay, 1)
    assert torch.equal(cos[:, 1:], torch.cos(ang).float()) and torch.equal(sin[:, 1:], torch.sin(ang).float())
    assert torch.equal(cos[:, 0], torch.ones_like(cos[:, 0]))


def test_videorope_default_stride_and_bad_input():
    assert _mixed("videorope").temporal_stride == 2.0 and _mixed("mrope").temporal_stride == 1.0
    assert _mixed("videorope", temporal_stride=1.0).temporal_stride == 1.0
    with pytest.raises(ValueError, match="unknown allocation 'bogus'"):
        _mixed("bogus")
    with pytest.raises(ValueError, match="3D"):
        MixedRoPE(24, 1, 2, ndim=2, allocation="mrope")
    with pytest.raises(ValueError, match="axis_order"):
        _mixed("mrope", axis_order="xy")
    with pytest.raises(ValueError, match="dims"):
        MixedRoPE(24, 1, 2, ndim=3, allocation="mrope", dims=(8, 8, 10))
    with pytest.raises(ValueError, match="give allocation="):
        MixedRoPE(24, 1, 2, ndim=3, dims=(8, 8, 8))
    with pytest.raises(ValueError, match="interleaved"):
        MixedRoPE(24, 1, 2, ndim=3, allocation="mrope_interleaved", dims=(8, 4, 12))
    with pytest.raises(ValueError, match="num_heads >= 3"):
        MixedRoPE(24, 1, 2, ndim=3, allocation="headwise")


def test_reset_parameters_restores_the_allocation_init():
    torch.manual_seed(0)
    m = _mixed("mrope", rotate=False)
    init = m.freqs.detach().clone()
    with torch.no_grad():
        m.freqs.mul_(3.0)
    m.reset_parameters()
    assert torch.equal(m.freqs.detach(), init)


@pytest.mark.parametrize("allocation", ["videorope", "hope", "headwise"])
def test_video_dit_forward_backward(allocation):
    torch.manual_seed(0)
    m = VideoDiT(3, (4, 8, 8), (1, 4, 4), dim=48, num_heads=4, depth=2, pe="rope_mixed",
                 pe_kwargs=dict(allocation=allocation))
    assert m.pe.allocation == allocation and m.pe.dims == (4, 4, 4)
    with torch.no_grad():  # adaLN-zero: give the zero-initialised layers weights so the PE matters
        for lin in [m.final, m.final_adaLN[1]] + [b.adaLN[1] for b in m.blocks]:
            lin.weight.normal_(0, 0.05)
            lin.bias.normal_(0, 0.05)
    x = torch.randn(2, 3, 4, 8, 8)
    out = m(x, torch.rand(2))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert m.pe.freqs.grad is not None and m.pe.freqs.grad.abs().sum() > 0
