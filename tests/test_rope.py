import pytest
import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingMixed, apply_rot_embed_cat

import vispos
from vispos.freqs import RULES, ScalingRule
from vispos.grid import GridLayout, grid_coords
from vispos.ops.rope import apply_rope, rope_angles, rope_table
from vispos.pe.rope import PRESETS, AxialRoPE, MixedRoPE, VoPE


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("shape,ref", [((5, 7), None), ((6, 4), None), ((3, 9), (4, 4)), ((8, 6), (2, 5))])
def test_axial_2d_matches_timm(half, shape, ref):
    D = 32
    t = RotaryEmbeddingCat(D, in_pixels=False, temperature=100.0, ref_feat_shape=ref, rotate_half=half)
    emb = t.get_embed(list(shape))
    q = torch.randn(2, 3, shape[0] * shape[1], D)
    expected = apply_rot_embed_cat(q, emb, half=half)
    m = AxialRoPE(D, 2, base=100.0, pairing="half" if half else "interleaved",
                  coords="interpolated" if ref else "index", ref_shape=ref)
    out, _ = m(q, q, shape)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_mixed_matches_timm_given_same_freqs():
    tm = RotaryEmbeddingMixed(64, depth=3, num_heads=4, temperature=10.0)
    mm = MixedRoPE(16, 3, 4)
    with torch.no_grad():
        mm.freqs.copy_(tm.freqs.flip(0))  # timm stores (x, y); vispos (h, w) = (y, x)
    shape = (5, 6)
    emb = tm.get_embed(list(shape))
    q = torch.randn(2, 4, 30, 16)
    k = torch.randn(2, 4, 30, 16)
    for layer in range(3):
        oq, ok = mm(q, k, shape, layer)
        torch.testing.assert_close(oq, apply_rot_embed_cat(q, emb[layer]), atol=1e-6, rtol=0)
        torch.testing.assert_close(ok, apply_rot_embed_cat(k, emb[layer]), atol=1e-6, rtol=0)


def test_mixed_init_matches_timm_distribution_2d():
    torch.manual_seed(3)
    from timm.layers.pos_embed_sincos import init_random_2d_freqs
    a = init_random_2d_freqs(16, 2, 3, temperature=10.0, rotate=False)
    b = vispos.pe.rope.init_mixed_freqs(16, 2, 3, 2, 10.0, rotate=False)
    torch.testing.assert_close(b, a.flip(0))


def _scores(m, layout, q, k, index=0):
    qr, kr = m.forward_qk(q, k, layout, index)
    return qr @ kr.transpose(-1, -2)


def _all_rules(train_len):
    out = [None]
    for name in RULES[1:]:
        kw = dict(train_len=train_len)
        if name == "riflex":
            kw = dict(k=1, train_len=train_len)
        out.append(ScalingRule(name, **kw))
    return out


@pytest.mark.parametrize("ndim,shape", [(1, (12,)), (2, (4, 6)), (3, (3, 4, 5))])
@pytest.mark.parametrize("rule_i", range(len(RULES)))
@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_scores_depend_only_on_offsets(ndim, shape, rule_i, pairing):
    """q·k after rotation is a function of the coordinate offset: shifting every position leaves it unchanged."""
    D = 24 if ndim == 3 else 16
    train = tuple(max(1, s // 2) for s in shape)
    rules = _all_rules(train[0])[rule_i]
    m = AxialRoPE(D, ndim, base=50.0, pairing=pairing, train_shape=train, rules=rules)
    n = 1
    for s in shape:
        n *= s
    q = torch.randn(1, 2, 1, D).expand(1, 2, n, D).contiguous()  # same content everywhere
    k = torch.randn(1, 2, 1, D).expand(1, 2, n, D).contiguous()
    lay = GridLayout(shape)
    shift = tuple(tuple(float(i + 3 + a) for i in range(s)) for a, s in enumerate(shape))
    lay_shift = GridLayout(shape, positions=shift)
    s0 = _scores(m, lay, q, k)
    s1 = _scores(m, lay_shift, q, k)
    torch.testing.assert_close(s0, s1, atol=1e-5, rtol=1e-5)
    # and the scores do depend on the offset (the test can fail)
    assert (s0[0, 0, 0] - s0[0, 0, 0, 0]).abs().max() > 1e-3


def test_mixed_scores_depend_only_on_offsets_3d():
    m = MixedRoPE(24, depth=2, num_heads=2, ndim=3)
    shape = (2, 3, 4)
    q = torch.randn(1, 2, 1, 24).expand(1, 2, 24, 24).contiguous()
    k = torch.randn(1, 2, 1, 24).expand(1, 2, 24, 24).contiguous()
    lay_shift = GridLayout(shape, positions=tuple(tuple(float(i + 7) for i in range(s)) for s in shape))
    torch.testing.assert_close(_scores(m, GridLayout(shape), q, k, 1), _scores(m, lay_shift, q, k, 1), atol=1e-4,
                               rtol=1e-5)


@pytest.mark.parametrize("cls", ["axial", "mixed", "vope"])
def test_prefix_tokens_untouched_and_patches_rotated(cls):
    D, shape, P = 16, (3, 4), 2
    if cls == "axial":
        m = AxialRoPE(D, 2)
    elif cls == "mixed":
        m = MixedRoPE(D, 1, 2)
    else:
        m = VoPE(D, 2, train_shape=(2, 2))
    q = torch.randn(2, 2, P + 12, D).to(torch.bfloat16)
    qr, kr = m(q, q.clone(), GridLayout(shape, P))
    assert torch.equal(qr[:, :, :P], q[:, :, :P])
    assert torch.equal(kr[:, :, :P], q[:, :, :P])
    assert not torch.equal(qr[:, :, P + 1:], q[:, :, P + 1:])
    assert qr.dtype == torch.bfloat16


@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_partial_rotary_dim_passes_channels_through(pairing):
    m = AxialRoPE(32, 2, rotary_dim=16, pairing=pairing)
    q = torch.randn(1, 1, 12, 32)
    out, _ = m(q, q, (3, 4))
    assert torch.equal(out[..., 16:], q[..., 16:])
    assert not torch.equal(out[..., :16], q[..., :16])
    # the first 16 channels are exactly a 16-dim RoPE of the same axes and pairing
    full = AxialRoPE(16, 2, pairing=pairing)
    torch.testing.assert_close(out[..., :16], full(q[..., :16], q[..., :16], (3, 4))[0], atol=1e-6, rtol=0)


def test_tables_fp32_under_bf16_autocast_and_accurate_at_large_positions():
    m = AxialRoPE(64, 1, base=1e4)
    lay = GridLayout((8,), positions=(tuple(float(10000 - i) for i in range(8)),))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = m.build_table(lay)
    assert cos.dtype == torch.float32 and sin.dtype == torch.float32
    ang = torch.atan2(sin, cos).double()
    ref = rope_angles(torch.tensor([[10000.0 - i] for i in range(8)], dtype=torch.float64), [vispos.rope_freqs(64, 1e4)])
    err = torch.remainder(ang - ref + torch.pi, 2 * torch.pi) - torch.pi
    assert err.abs().max() < 1e-3


def test_mixed_angles_fp32_under_autocast_and_grads_reach_freqs():
    m = MixedRoPE(16, 2, 2)
    q = torch.randn(1, 2, 9, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, _ = m.build_table(GridLayout((3, 3)), 1)
        out, _ = m(q, q, (3, 3), 1)
    assert cos.dtype == torch.float32
    out.float().sum().backward()
    assert m.freqs.grad is not None and m.freqs.grad[:, 1].abs().sum() > 0
    assert m.freqs.grad[:, 0].abs().sum() == 0


def test_vope_definition_and_resolution_behaviour():
    m = VoPE(16, 2, train_shape=(4, 4), base=10.0)
    c8 = vispos.grid_coords((8, 8), "normalized", (4, 4))
    assert c8.min() == -2 + 0.25 and c8.max() == 2 - 0.25  # same extent [-2, 2] sampled finer
    # at the training grid VoPE equals plain index RoPE up to a shift, which RoPE ignores: same scores
    plain = AxialRoPE(16, 2, base=10.0)
    q = torch.randn(1, 1, 16, 16)
    k = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(_scores(m, GridLayout((4, 4)), q, k), _scores(plain, GridLayout((4, 4)), q, k),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="train_shape"):
        VoPE(16, 2)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets(preset):
    p = PRESETS[preset]
    m = AxialRoPE(p["head_dim"], preset=preset)
    assert m.dims == p["dims"] and sum(m.dims) == p["head_dim"] and m.bases[0] == p["base"]
    q = torch.randn(1, 1, 2 * 2 * 3, p["head_dim"])
    out, _ = m(q, q, (2, 2, 3))
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="head_dim"):
        AxialRoPE(p["head_dim"] * 2, preset=preset)


def test_table_cached_per_layout_and_rules_fill_lengths():
    m = AxialRoPE(16, 2, train_shape=(4, 4), rules="pi")
    t1 = m.get_table(GridLayout((8, 8)))
    assert m.get_table(GridLayout((8, 8))) is t1
    assert len(m._cache) == 1
    # PI at (8, 8) from (4, 4) == interpolated coordinates onto (4, 4)
    interp = AxialRoPE(16, 2, coords="interpolated", ref_shape=(4, 4))
    torch.testing.assert_close(t1[0], interp.get_table(GridLayout((8, 8)))[0], atol=1e-6, rtol=0)
    m.float()
    assert len(m._cache) == 0


def test_reference_apply_matches_complex_rotation():
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    ang = torch.rand(10, 4, dtype=torch.float64) * 6
    cos, sin = rope_table(ang, dtype=torch.float64)
    y = apply_rope(x, cos, sin, "interleaved")
    z = torch.view_as_complex(x.reshape(3, 10, 4, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
    torch.testing.assert_close(y, torch.view_as_real(z).reshape(3, 10, 8))
    yh = apply_rope(x, cos, sin, "half")
    zh = torch.complex(x[..., :4], x[..., 4:]) * torch.polar(torch.ones_like(ang), ang)
    torch.testing.assert_close(yh, torch.cat([zh.real, zh.imag], -1))


def test_errors_name_values():
    with pytest.raises(ValueError, match="RoPE head_dim must be an even int >= 2, got 15"):
        AxialRoPE(15, 2)
    with pytest.raises(ValueError, match=r"sum to 40, more than head_dim=32"):
        AxialRoPE(32, dims=(8, 16, 16))
    with pytest.raises(ValueError, match=r"positive even ints"):
        AxialRoPE(32, dims=(7, 9))
    with pytest.raises(ValueError, match="multiple of 4"):
        AxialRoPE(18, 2)
    with pytest.raises(ValueError, match="unknown RoPE pairing 'rotate'"):
        AxialRoPE(16, 2, pairing="rotate")
    with pytest.raises(ValueError, match="unknown scaling rule 'bogus'"):
        AxialRoPE(16, 2, rules="bogus")
    m = AxialRoPE(16, 2)
    q = torch.randn(1, 1, 11, 16)
    with pytest.raises(ValueError, match="11 tokens"):
        m(q, q, (3, 4))
    with pytest.raises(ValueError, match=r"\(B, heads, N, head_dim\)"):
        m(q[0], q[0], (3, 4))
    with pytest.raises(ValueError, match="head dim 8"):
        m(q[..., :8], q[..., :8], (3, 4))
    with pytest.raises(ValueError, match="supports grids with"):
        m(torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16), (2, 2, 2))
    with pytest.raises(ValueError, match="positive sizes"):
        m(q, q, (0, 4))
    with pytest.raises(ValueError, match="depth"):
        vispos.build_pe("rope_mixed", dim=32, num_heads=2)


def test_rules_use_the_span_of_explicit_positions():
    """A strided clip (frames 0, 2, ..., 64) spans 65 frames: RIFLEx must see L' = 65, not 33 tokens."""
    m = AxialRoPE(16, 1, base=256.0, train_shape=(33,), rules=ScalingRule("riflex", k=4))
    strided = GridLayout((33,), positions=(tuple(float(2 * i) for i in range(33)),))
    contiguous = GridLayout((65,))
    f_strided = m.get_freqs(strided)[0]
    torch.testing.assert_close(f_strided, m.get_freqs(contiguous)[0])
    assert float(f_strided[3]) == pytest.approx(0.9 * 2 * 3.141592653589793 / 65)
    assert float(m.get_freqs(GridLayout((33,)))[0][3]) == pytest.approx(0.125)  # L' = 33 <= N_k = 50: unchanged


@pytest.mark.parametrize("name", [r for r in RULES if r != "none"])
def test_each_rule_changes_the_bands_when_extended(name):
    """Guards the shift-invariance test above: every rule really acts at 4x the training length."""
    kw = dict(k=2) if name == "riflex" else {}
    m = AxialRoPE(16, 1, base=100.0, train_shape=(8,), rules=ScalingRule(name, **kw))
    plain = AxialRoPE(16, 1, base=100.0, train_shape=(8,))
    assert not torch.equal(m.get_freqs((32,))[0], plain.get_freqs((32,))[0])
    assert torch.equal(m.get_freqs((8,))[0], plain.get_freqs((8,))[0])


def test_yarn_attention_factor_per_axis_block():
    import math

    m = AxialRoPE(16, 2, train_shape=(4, 4), rules=[ScalingRule("yarn", attn_factor=True), None])
    cos, sin = m.get_table(GridLayout((16, 4)))
    mag = (cos ** 2 + sin ** 2).sqrt()
    torch.testing.assert_close(mag[:, :4], torch.full_like(mag[:, :4], 0.1 * math.log(4) + 1))  # row axis, s = 4
    torch.testing.assert_close(mag[:, 4:], torch.ones_like(mag[:, 4:]))  # the other axis has no rule


def test_changing_rules_or_coords_invalidates_cached_tables():
    m = AxialRoPE(16, 2, train_shape=(4, 4))
    lay = GridLayout((8, 8))
    before = m.get_table(lay)[0].clone()
    m.coords = "interpolated"
    after = m.get_table(lay)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, AxialRoPE(16, 2, coords="interpolated", ref_shape=(4, 4)).get_table(lay)[0])
    m.rules = (ScalingRule("pi"), ScalingRule("none"))
    assert not torch.allclose(after, m.get_table(lay)[0])


def test_axial_rope_honours_dtype_and_device():
    """``dtype=`` is the tables' dtype (float64 tables make the rotation itself float64); ``device=`` is where
    tables go when asked without a device; a non-float dtype is refused."""
    r32 = AxialRoPE(16, 2, base=100.0)
    r64 = AxialRoPE(16, 2, base=100.0, dtype=torch.float64)
    rbf = AxialRoPE(16, 2, base=100.0, dtype=torch.bfloat16, device="cpu")
    lay = GridLayout((5, 7))
    assert r32.get_table(lay)[0].dtype == torch.float32
    c64, s64 = r64.get_table(lay)
    assert c64.dtype == s64.dtype == torch.float64
    assert rbf.get_table(lay)[0].dtype == torch.bfloat16 and rbf.get_table(lay)[0].device.type == "cpu"
    torch.testing.assert_close(c64.float(), r32.get_table(lay)[0], atol=1e-6, rtol=0)
    # float64 tables: float64 q, k are rotated without the float32 round trip of the default tables
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 35, 16, generator=g, dtype=torch.float64) * 1e3
    k = torch.randn(1, 2, 35, 16, generator=g, dtype=torch.float64) * 1e3
    q64, _ = r64(q, k, lay)
    q32, _ = r32(q, k, lay)
    ang = rope_angles(grid_coords(lay, dtype=torch.float64), [f.double() for f in r64.get_freqs(lay)])
    exact = apply_rope(q, torch.cos(ang), torch.sin(ang))
    err64, err32 = (q64 - exact).abs().max().item(), (q32 - exact).abs().max().item()
    assert err64 < 1e-9 < err32
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        AxialRoPE(16, 2, dtype=torch.int32)
