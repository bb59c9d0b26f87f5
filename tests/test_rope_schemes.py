"""timm's rotary schemes reproduced by vispos' RoPE families, tested against timm's classes directly.

RotaryEmbeddingCat (axis order xy / ij, grid offset, reference grid, half / interleaved), RotaryEmbeddingDinoV3
(each normalize_coords mode, temperature or min/max periods, offset, axis order) and RotaryEmbeddingMixed (ij and
xy), plus the train-time coordinate augmentation (timm's semantics and random stream; off in eval; seeded).
"""
import math

import pytest
import torch
from timm.layers.pos_embed_sincos import (
    RotaryEmbeddingCat,
    RotaryEmbeddingDinoV3,
    RotaryEmbeddingMixed,
    apply_rot_embed_cat,
)

from vispos.grid import CoordAug, GridLayout, axis_order, grid_coords
from vispos.pe.rope import AxialRoPE, MixedRoPE, dinov3_options

HD = 16  # head dim


def _qk(n, heads=2, seed=0, hd=HD):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, heads, n, hd, generator=g, dtype=torch.float64),
            torch.randn(2, heads, n, hd, generator=g, dtype=torch.float64))


def _assert_close(a, b, tol=2e-6):
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


def _timm_rot(x, emb, half):
    return apply_rot_embed_cat(x, emb.to(x.dtype), half=half)


@pytest.mark.parametrize("indexing", ["ij", "xy"])
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("ref", [None, (4, 6)])
def test_rotary_cat_axis_order_offset(indexing, offset, half, ref):
    timm_rope = RotaryEmbeddingCat(HD, temperature=100.0, in_pixels=False, grid_indexing=indexing,
                                   grid_offset=offset, rotate_half=half, ref_feat_shape=ref)
    ours = AxialRoPE(HD, base=100.0, pairing="half" if half else "interleaved", axis_order=indexing,
                     grid_offset=offset, coords="interpolated" if ref else "index", ref_shape=ref)
    for shape in [(4, 6), (5, 3), (7, 7)]:
        n = shape[0] * shape[1]
        q, k = _qk(n)
        emb = timm_rope.get_embed(list(shape))
        oq, ok = ours.forward_qk(q, k, GridLayout(shape))
        _assert_close(oq, _timm_rot(q, emb, half))
        _assert_close(ok, _timm_rot(k, emb, half))


def test_axis_order_matters():
    """xy differs from ij on a non-square grid (the options are not no-ops)."""
    q, k = _qk(12)
    a = AxialRoPE(HD, axis_order="ij").forward_qk(q, k, GridLayout((3, 4)))[0]
    b = AxialRoPE(HD, axis_order="xy").forward_qk(q, k, GridLayout((3, 4)))[0]
    c = AxialRoPE(HD, grid_offset=1.0).forward_qk(q, k, GridLayout((3, 4)))[0]
    assert (a - b).abs().max() > 1e-2 and (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("normalize", ["separate", "max", "min"])
@pytest.mark.parametrize("periods", [None, (0.5, 40.0)])
@pytest.mark.parametrize("indexing,offset", [("ij", 0.0), ("xy", 0.5)])
def test_dinov3_schemes(normalize, periods, indexing, offset):
    kw = dict(normalize_coords=normalize, grid_offset=offset, grid_indexing=indexing, rotate_half=True)
    if periods is not None:
        kw.update(min_period=periods[0], max_period=periods[1])
    timm_rope = RotaryEmbeddingDinoV3(HD, temperature=100.0, **kw)
    ours = AxialRoPE(HD, **dinov3_options(temperature=100.0, **kw))
    for shape in [(4, 4), (3, 5), (6, 2)]:
        n = shape[0] * shape[1]
        q, k = _qk(n, seed=shape[1])
        emb = timm_rope.get_embed(list(shape))
        oq, ok = ours.forward_qk(q, k, GridLayout(shape, num_prefix=0))
        _assert_close(oq, _timm_rot(q, emb, True))
        _assert_close(ok, _timm_rot(k, emb, True))


def test_dinov3_prefix_tokens_untouched():
    ours = AxialRoPE(HD, **dinov3_options())
    q, k = (t.float() for t in _qk(1 + 4 + 12))
    oq, _ = ours.forward_qk(q, k, GridLayout((3, 4), num_prefix=5))
    assert torch.equal(oq[:, :, :5], q[:, :, :5])


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_rope_mixed_axis_order(indexing):
    depth, heads = 3, 2
    torch.manual_seed(0)
    timm_rope = RotaryEmbeddingMixed(HD * heads, depth, heads, grid_indexing=indexing)
    ours = MixedRoPE(HD, depth, heads, axis_order=indexing)
    with torch.no_grad():
        ours.freqs.copy_(timm_rope.freqs)  # same storage order: row 0 is timm's grid channel 0 in both
    for shape in [(4, 6), (5, 3)]:
        n = shape[0] * shape[1]
        emb = timm_rope.get_embed(list(shape))
        for i in range(depth):
            q, k = _qk(n, heads, seed=i)
            oq, ok = ours.forward_qk(q, k, GridLayout(shape), i)
            _assert_close(oq, _timm_rot(q, emb[i], False))
            _assert_close(ok, _timm_rot(k, emb[i], False))


def test_rope_mixed_init_same_per_grid_axis():
    """The init gives the same frequencies per grid axis whatever the storage order."""
    torch.manual_seed(3)
    a = MixedRoPE(HD, 2, 2, axis_order="ij").freqs
    torch.manual_seed(3)
    b = MixedRoPE(HD, 2, 2, axis_order="xy").freqs
    assert torch.equal(a, b.flip(0))


def test_3d_axis_order_permutes_blocks():
    dims = (4, 6, 6)
    ij = AxialRoPE(16, dims=dims, base=(10.0, 100.0, 1000.0))
    xy = AxialRoPE(16, dims=dims, base=(10.0, 100.0, 1000.0), axis_order="xy")
    perm = AxialRoPE(16, dims=dims, base=(10.0, 100.0, 1000.0), axis_order=(2, 0, 1))
    lay = GridLayout((2, 3, 4))
    c_ij, _ = ij.build_table(lay)
    t, h, w = c_ij[:, :2], c_ij[:, 2:5], c_ij[:, 5:8]
    assert torch.equal(xy.build_table(lay)[0], torch.cat([t, w, h], 1))
    assert torch.equal(perm.build_table(lay)[0], torch.cat([w, t, h], 1))
    assert axis_order("xy", 3) == (0, 2, 1) and axis_order("xy", 2) == (1, 0)


def test_3d_mixed_axis_order_is_storage_order():
    torch.manual_seed(0)
    a = MixedRoPE(12, 2, 2, ndim=3)
    b = MixedRoPE(12, 2, 2, ndim=3, axis_order="xy", grid_offset=(0.0, 2.0, 1.0))
    c = MixedRoPE(12, 2, 2, ndim=3, grid_offset=(0.0, 2.0, 1.0))
    with torch.no_grad():
        b.freqs.copy_(a.freqs[[0, 2, 1]])
        c.freqs.copy_(a.freqs)
    q, k = _qk(2 * 3 * 4, 2, hd=12)
    lay = GridLayout((2, 3, 4))
    _assert_close(b.forward_qk(q, k, lay, 1)[0], c.forward_qk(q, k, lay, 1)[0], 1e-12)
    # the offset matters
    assert (a.forward_qk(q, k, lay, 1)[0] - c.forward_qk(q, k, lay, 1)[0]).abs().max() > 1e-3


def test_centered_coords_modes():
    c = grid_coords((2, 4), "centered", normalize_coords="max", dtype=torch.float64)
    assert torch.allclose(c[:, 0].unique(), torch.tensor([-0.75, -0.25], dtype=torch.float64))
    c = grid_coords((2, 4), "centered", offset=1.0, dtype=torch.float64)
    assert torch.allclose(c[:, 1].unique(), torch.tensor([-0.25, 0.25, 0.75, 1.25], dtype=torch.float64))


# ---- augmentation ------------------------------------------------------------------------------------------------
AUG = dict(shift_coords=0.5, jitter_coords=1.5, rescale_coords=2.0)


@pytest.mark.parametrize("aug", [AUG, dict(rescale_coords=2.0), dict(shift_coords=0.3)])
def test_dinov3_augmentation_equals_timm_seeded(aug):
    timm_rope = RotaryEmbeddingDinoV3(HD, temperature=100.0, **aug).train()
    ours = AxialRoPE(HD, **dinov3_options(**aug)).train()
    shape = (3, 5)
    q, k = _qk(15)
    for seed in (0, 1):
        torch.manual_seed(seed)
        emb = timm_rope.get_embed(list(shape))
        torch.manual_seed(seed)
        lay = ours.prepare(torch.zeros(1, 15, 4), GridLayout(shape))  # the per-forward draw rides on the layout
        oq, _ = ours.forward_qk(q, k, lay)
        _assert_close(oq, _timm_rot(q, emb, True), 1e-5)


def test_rotary_cat_and_mixed_augmentation_equal_timm():
    shape = (4, 3)
    q, k = _qk(12)
    cat = RotaryEmbeddingCat(HD, temperature=100.0, in_pixels=False, grid_indexing="xy", **AUG).train()
    ours = AxialRoPE(HD, base=100.0, axis_order="xy", **AUG).train()
    torch.manual_seed(5)
    emb = cat.get_embed(list(shape))
    torch.manual_seed(5)
    ours.sample_coord_aug()
    _assert_close(ours.forward_qk(q, k, GridLayout(shape))[0], _timm_rot(q, emb, False), 1e-5)

    torch.manual_seed(0)
    mixed = RotaryEmbeddingMixed(HD * 2, 2, 2, grid_indexing="xy", **AUG).train()
    om = MixedRoPE(HD, 2, 2, axis_order="xy", **AUG).train()
    with torch.no_grad():
        om.freqs.copy_(mixed.freqs)
    torch.manual_seed(7)
    emb = mixed.get_embed(list(shape))
    torch.manual_seed(7)
    om.sample_coord_aug()
    for i in range(2):  # one draw shared by every layer, as timm
        _assert_close(om.forward_qk(q, k, GridLayout(shape), i)[0], _timm_rot(q, emb[i], False), 1e-5)


def test_augmentation_off_in_eval_and_seeded_in_train():
    lay = GridLayout((4, 4), num_prefix=1)
    q, k = (t.float() for t in _qk(17))
    plain = AxialRoPE(HD, **dinov3_options())
    rope = AxialRoPE(HD, **dinov3_options(**AUG))
    x = torch.zeros(1, 17, 4)
    rope.eval()
    assert rope.prepare(x, lay) is lay
    ref = plain.forward_qk(q, k, lay)[0]
    assert torch.equal(rope.forward_qk(q, k, lay)[0], ref)  # eval: no augmentation
    rope.train()
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(rope.forward_qk(q, k, rope.prepare(x, lay))[0])
    assert torch.equal(outs[0], outs[1])  # deterministic under a seed
    assert (outs[0] - outs[2]).abs().max() > 1e-3  # a new draw per forward
    assert (outs[0] - ref).abs().max() > 1e-3
    assert torch.equal(outs[2][:, :, :1], q[:, :, :1])  # prefix untouched
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert all(torch.equal(a, b) for a, b in zip(rope.sample_coord_aug(generator=g1),
                                                 rope.sample_coord_aug(generator=g2)))


def test_augmentation_needs_a_draw():
    rope = AxialRoPE(HD, shift_coords=1.0).train()
    q, k = _qk(4)
    with pytest.raises(RuntimeError, match="sample_coord_aug"):
        rope.forward_qk(q, k, GridLayout((2, 2)))


@pytest.mark.parametrize("bad", [dict(shift_coords=-1.0), dict(jitter_coords=0.5), dict(rescale_coords=True),
                                 dict(axis_order="yx"), dict(axis_order=(0, 0)), dict(grid_offset="1"),
                                 dict(normalize_coords="mean"), dict(periods=(1.0,)), dict(angle_scale=0.0)])
def test_bad_scheme_options(bad):
    with pytest.raises(ValueError):
        AxialRoPE(HD, **bad)


def test_coordaug_rescale_is_shared_and_ranges():
    aug = CoordAug(shift=0.5, jitter=2.0, rescale=3.0)
    torch.manual_seed(0)
    for _ in range(20):
        add, mul = aug.sample(3)
        assert add.abs().max() <= 0.5 and (mul > 0).all()
        assert mul.max() <= 2.0 * 3.0 + 1e-6 and mul.min() >= 1 / 6.0 - 1e-6
    assert not CoordAug().active
    assert math.isclose(CoordAug(rescale=2).rescale, 2.0)


# ---- options read from timm's modules (what conversion uses) ------------------------------------------------------
def test_options_from_timm_modules():
    from vispos.pe.rope import axial_options_from_timm, mixed_options_from_timm

    cases = [RotaryEmbeddingCat(HD, temperature=100.0, in_pixels=False, grid_indexing="xy", grid_offset=1.0,
                                ref_feat_shape=(4, 4), rotate_half=True),
             RotaryEmbeddingDinoV3(HD, temperature=100.0, normalize_coords="max", rescale_coords=2.0)]
    for timm_rope in cases:
        opts, desc = axial_options_from_timm(timm_rope)
        assert type(timm_rope).__name__ in desc
        ours = AxialRoPE(HD, **opts).eval()
        timm_rope.eval()
        half = bool(timm_rope.rotate_half)
        q, k = _qk(15)
        _assert_close(ours.forward_qk(q, k, GridLayout((3, 5)))[0], _timm_rot(q, timm_rope.get_embed([3, 5]), half))
    assert AxialRoPE(HD, **axial_options_from_timm(cases[1])[0]).coord_aug.rescale == 2.0
    with pytest.raises(ValueError, match="in_pixels"):
        axial_options_from_timm(RotaryEmbeddingCat(HD, in_pixels=True))
    torch.manual_seed(0)
    mixed = RotaryEmbeddingMixed(HD * 2, 2, 2, grid_indexing="ij")
    opts, _ = mixed_options_from_timm(mixed)
    assert opts["axis_order"] == "ij"
    with pytest.raises(ValueError, match="RoPE-Mixed"):
        mixed_options_from_timm(cases[0])


def test_param_block_per_family():
    import vispos

    rel = vispos.build_pe("rel_decomposed", head_dim=8, depth=3, grid=(4, 4))
    assert {rel.param_block(n) for n, _ in rel.named_parameters()} == {0, 1, 2}
    peg = vispos.build_pe("peg", dim=8, depth=4, grid=(4, 4), blocks=(0, 2))
    assert sorted({peg.param_block(n) for n, _ in peg.named_parameters()}) == [0, 2]
    mixed = vispos.build_pe("rope_mixed", dim=32, num_heads=2, depth=2, grid=(4, 4))
    assert mixed.param_block("freqs") == mixed.ALL_BLOCKS
    lape = vispos.build_pe("lape", dim=8, depth=3, grid=(4, 4))
    blocks = {n: lape.param_block(n) for n, _ in lape.named_parameters()}
    assert blocks["base.pos_embed"] is None and blocks["norms.2.weight"] == 2
    combo = vispos.build_pe(["ape", "rel_decomposed"], dim=16, num_heads=2, depth=2, grid=(4, 4))
    assert {combo.param_block(n) for n, _ in combo.named_parameters()} == {None, 0, 1}


def test_augmentation_draw_belongs_to_its_forward_layout():
    """Two forwards drawn before either is recomputed (activation checkpointing): each keeps its own draw."""
    rope = AxialRoPE(HD, **dinov3_options(**AUG)).train()
    q, k = (t.float() for t in _qk(16))
    x = torch.zeros(1, 16, 4)
    lay_a, lay_b = GridLayout((4, 4)), GridLayout((4, 4))  # equal, but two forwards' objects
    torch.manual_seed(0)
    lay_a = rope.prepare(x, lay_a)
    first = rope.forward_qk(q, k, lay_a)[0]
    torch.manual_seed(1)
    lay_b = rope.prepare(x, lay_b)
    assert torch.equal(rope.forward_qk(q, k, lay_a)[0], first)  # recomputing forward A: A's draw
    assert (rope.forward_qk(q, k, lay_b)[0] - first).abs().max() > 1e-3
    assert torch.equal(rope.forward_qk(q, k, GridLayout((4, 4)))[0], rope.forward_qk(q, k, lay_b)[0])  # latest
