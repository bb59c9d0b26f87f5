"""Variable-resolution batches (issue #17): PackedLayout, the attention mask, and every family per sample."""
import math

import pytest
import torch
from torch import nn

import vispos
from vispos.attention import Attention, attend
from vispos.grid import GridLayout, PackedLayout, grid_coords
from vispos.ops.attention import PackedDecomposedBias, sdpa
from vispos.pe.base import get_table_cache_size, set_table_cache_size

DIM, HEADS, DEPTH = 48, 2, 2
SHAPES = {2: [(4, 6), (7, 3), (5, 5), (4, 6)], 3: [(2, 3, 4), (3, 2, 2), (2, 2, 5)]}
TRAIN = {2: (5, 5), 3: (2, 3, 3)}
FAMILIES = [(info.name, nd) for info in vispos.list_pes() for nd in (2, 3) if nd in info.ndims]
#: smaller options for families whose default is slow to differentiate at these sizes (full-head matrix exponentials)
FAST_OPTIONS = {"lie_rope": dict(block_size=4)}


# ---- PackedLayout ------------------------------------------------------------------------------------------------
def test_layout_geometry():
    L = PackedLayout([(4, 6), (7, 3), (5, 5), (4, 6)], num_prefix=1)
    assert L.batch_size == 4 and L.ndim == 2 and L.length == 25 and L.num_tokens == 26
    assert L.sample(1) == GridLayout((7, 3), 1) and L.uniform is None
    assert [(g.shape, idx) for g, idx in L.groups()] == [((4, 6), (0, 3)), ((7, 3), (1,)), ((5, 5), (2,))]
    valid = L.valid_mask()
    assert valid.shape == (4, 26) and valid.sum(1).tolist() == [25, 22, 26, 25] and valid[:, 0].all()
    kp = L.key_padding_bias(torch.float32)
    assert kp.shape == (4, 1, 1, 26) and (kp[0, 0, 0, 25] == torch.finfo(torch.float32).min) and kp[2].eq(0).all()
    assert hash(L) == hash(PackedLayout([(4, 6), (7, 3), (5, 5), (4, 6)], 1)) and L == L.with_state(object(), 1)
    L.check_tokens(26)
    with pytest.raises(ValueError, match="26"):
        L.check_tokens(25)
    with pytest.raises(ValueError, match="batch of 3"):
        L.check_batch(3)
    u = PackedLayout([(3, 3), GridLayout((3, 3), 2)], num_prefix=2)
    assert u.uniform == GridLayout((3, 3), 2)
    assert PackedLayout([(3, 3), (3, 3)], length=10).uniform is None  # padding: not uniform
    idx = L.group_index()
    assert idx.shape == (4, 26) and idx[0, :25].tolist() == list(range(25)) and idx[3, :25].tolist() == list(range(25))
    assert idx[1, :22].tolist() == list(range(25, 47)) and (idx[1, 22:] == 25 + 22 + 26).all()


def test_layout_state_roundtrip():
    L = PackedLayout([(2, 2), (3, 1)])
    owner = object()
    S = L.with_state(owner, 5)
    assert S.state_of(owner) == 5 and S.without_state().state == () and S.state_of(object(), "d") == "d"


@pytest.mark.parametrize("bad, exc, msg", [
    (dict(samples=[]), ValueError, "at least one"),
    (dict(samples=(4, 6)), TypeError, "single shape"),
    (dict(samples="ab"), TypeError, "sequence of grid shapes"),
    (dict(samples=[(4, 6), "ab"]), TypeError, "sample 1 grid shape"),
    (dict(samples=[(4, 6), (2, 3, 4)]), ValueError, "same number of grid axes"),
    (dict(samples=[(4, 0)]), ValueError, "positive"),
    (dict(samples=[(4, 6)], length=10), ValueError, "smaller than sample 0"),
    (dict(samples=[(4, 6)], length=2.5), TypeError, "length"),
    (dict(samples=[(4, 6)], num_prefix=-1), ValueError, "num_prefix"),
    (dict(samples=[GridLayout((4, 6), 1)], num_prefix=0), ValueError, "num_prefix=1"),
    (dict(samples=GridLayout((4, 6))), TypeError, "sequence"),
])
def test_layout_validation(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        PackedLayout(**bad)


def _naflex_coords(shapes, n):
    B = len(shapes)
    nd = len(shapes[0])
    pc = torch.zeros(B, n, nd, dtype=torch.long)
    pv = torch.zeros(B, n, dtype=torch.bool)
    for b, s in enumerate(shapes):
        m = math.prod(s)
        pc[b, :m] = grid_coords(s, dtype=torch.long)
        pv[b, :m] = True
    return pc, pv


def test_from_patch_coord():
    pc, pv = _naflex_coords([(4, 6), (7, 3), (5, 5)], 30)
    L = PackedLayout.from_patch_coord(pc, pv, num_prefix=1)
    assert L == PackedLayout([(4, 6), (7, 3), (5, 5)], 1, 30)
    assert PackedLayout.from_patch_coord(pc[:1, :24]) == PackedLayout([(4, 6)])
    # timm's own grid-size rule agrees
    from timm.models.naflexvit import calculate_naflex_grid_sizes
    assert [tuple(s) for s in calculate_naflex_grid_sizes(pc)] == list(L.shapes)


def test_from_patch_coord_rejects():
    pc, pv = _naflex_coords([(4, 6), (7, 3)], 30)
    with pytest.raises(ValueError, match="not the first"):
        bad = pv.clone()
        bad[0, 3] = False
        PackedLayout.from_patch_coord(pc, bad)
    with pytest.raises(ValueError, match="full row-major grid"):
        bad = pc.clone()
        bad[0, [0, 1]] = bad[0, [1, 0]]
        PackedLayout.from_patch_coord(bad, pv)
    with pytest.raises(ValueError, match="no valid"):
        bad = pv.clone()
        bad[1] = False
        PackedLayout.from_patch_coord(pc, bad)
    with pytest.raises(TypeError, match="integer"):
        PackedLayout.from_patch_coord(pc.float(), pv)
    with pytest.raises(ValueError, match=r"\(2, 30\) bool"):
        PackedLayout.from_patch_coord(pc, pv[:, :5])
    with pytest.raises(TypeError, match="bool"):
        PackedLayout.from_patch_coord(pc, pv.long())
    with pytest.raises(ValueError, match="full row-major"):  # without validity, padding coords are not a grid
        PackedLayout.from_patch_coord(pc)


# ---- attention ---------------------------------------------------------------------------------------------------
def test_attend_masks_padding_keys():
    L = PackedLayout([(4, 6), (7, 3), (5, 5)], num_prefix=1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, L.num_tokens, 8, generator=g) for _ in range(3))
    out = attend(q, k, v, None, L)
    assert out.isfinite().all()
    for b, s in enumerate(L.samples):
        n = s.num_tokens
        alone = attend(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], None, s)
        torch.testing.assert_close(out[b:b + 1, :, :n], alone, atol=1e-6, rtol=1e-5)
    # sdpa takes the layout directly; a tensor bias is combined with the mask
    bias = torch.randn(3, 2, L.num_tokens, L.num_tokens, generator=g)
    out = sdpa(q, k, v, bias, layout=L)
    for b, s in enumerate(L.samples):
        n = s.num_tokens
        alone = sdpa(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], bias[b:b + 1, :, :n, :n])
        torch.testing.assert_close(out[b:b + 1, :, :n], alone, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="batch of 2"):
        attend(q[:2], k[:2], v[:2], None, L)
    with pytest.raises(TypeError, match="layout"):
        attend(q, k, v, None, "grid")


def test_attention_module_accepts_packed():
    L = PackedLayout([(2, 3), (3, 3)], num_prefix=1)
    attn = Attention(16, 2)
    x = torch.randn(2, L.num_tokens, 16)
    out = attn(x, L)
    torch.testing.assert_close(out[1:], attn(x[1:], L.sample(1)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[:1, :7], attn(x[:1, :7], L.sample(0)), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="batch of 3"):
        attn(torch.randn(3, L.num_tokens, 16), L)


# ---- every family, per sample --------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    """Token hook, prepare, then DEPTH pre-norm attention layers with every attention hook and the block hook."""

    def __init__(self, pe):
        super().__init__()
        self.pe = pe
        self.norms = nn.ModuleList(nn.LayerNorm(DIM) for _ in range(DEPTH))
        self.attns = nn.ModuleList(Attention(DIM, HEADS) for _ in range(DEPTH))

    def forward(self, x, layout):
        x = self.pe.forward_tokens(x, layout)
        layout = self.pe.prepare(x, layout)
        for i in range(DEPTH):
            x = x + self.attns[i](self.norms[i](x), layout, self.pe, i)
            if i in self.pe.block_indices:
                x = self.pe.forward_block(x, layout, i)
        return x


def _model(pe_spec, nd, num_prefix):
    torch.manual_seed(0)
    kwargs = dict(dim=DIM, num_heads=HEADS, depth=DEPTH, grid=TRAIN[nd], num_prefix=num_prefix)
    if isinstance(pe_spec, (list, tuple)):
        pe = vispos.build_pe(list(pe_spec), **kwargs)
    else:
        pe = vispos.build_pe(pe_spec, **kwargs, **FAST_OPTIONS.get(pe_spec, {}))
    m = _Tiny(pe)
    with torch.no_grad():  # randomise every PE parameter so the PE matters (zero-initialised tables and convs)
        for p in pe.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m.eval()


def _check_per_sample(model, shapes, num_prefix, atol=2e-5):
    L = PackedLayout(shapes, num_prefix)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(L.batch_size, L.num_tokens, DIM, generator=g, requires_grad=True)
    w = torch.randn(L.batch_size, L.num_tokens, DIM, generator=g)
    valid = L.valid_mask()[..., None]
    out = model(x, L)
    ((out * w) * valid).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    gx = x.grad.clone()
    model.zero_grad()
    acc = {}
    for b, s in enumerate(L.samples):
        n = s.num_tokens
        xb = x.detach()[b:b + 1, :n].clone().requires_grad_(True)
        ob = model(xb, s)
        (ob * w[b:b + 1, :n]).sum().backward()
        torch.testing.assert_close(out[b:b + 1, :n], ob, atol=atol, rtol=1e-4, msg=f"sample {b} {s.shape} forward")
        torch.testing.assert_close(gx[b:b + 1, :n], xb.grad, atol=atol, rtol=1e-4, msg=f"sample {b} input grad")
        assert gx[b, n:].abs().max() == 0 if n < L.num_tokens else True  # padding gets no gradient from valid
        for nm, p in model.named_parameters():
            if p.grad is not None:
                acc[nm] = acc.get(nm, 0) + p.grad
        model.zero_grad()
    assert set(acc) == set(grads)
    for nm in grads:
        torch.testing.assert_close(grads[nm], acc[nm], atol=atol * 10, rtol=1e-4, msg=f"param grad {nm}")
    # padding content cannot change valid outputs
    with torch.no_grad():
        x2 = x.detach().clone()
        x2[~L.valid_mask()] = torch.randn(int((~L.valid_mask()).sum()), DIM, generator=g) * 100
        out2 = model(x2, L)
        torch.testing.assert_close(out2[valid.expand_as(out2)], out.detach()[valid.expand_as(out2)], atol=atol,
                                   rtol=1e-4)
        assert out2.isfinite().all()
    return out


@pytest.mark.parametrize("name, nd", FAMILIES)
def test_family_packed_equals_each_sample_alone(name, nd):
    model = _model(name, nd, num_prefix=1)
    _check_per_sample(model, SHAPES[nd], 1)


@pytest.mark.parametrize("name", ["ape", "rope_axial", "rel_decomposed", "peg"])
def test_family_packed_without_prefix(name):
    _check_per_sample(_model(name, 2, num_prefix=0), SHAPES[2], 0)


@pytest.mark.parametrize("spec", [["ape", "rope_axial"], ["ape_sincos", "rel_decomposed"], ["peg", "glpe"],
                                  ["lape", "ape"]])
def test_combination_packed(spec):
    _check_per_sample(_model(spec, 2, num_prefix=1), SHAPES[2], 1)


@pytest.mark.parametrize("name", ["rope_axial", "vope"])
def test_rope_1d_packed(name):
    torch.manual_seed(0)
    pe = vispos.build_pe(name, dim=DIM, num_heads=HEADS, grid=(8,))
    L = PackedLayout([(5,), (8,), (3,)], num_prefix=1)
    q, k = torch.randn(2, 3, HEADS, L.num_tokens, DIM // HEADS).unbind(0)
    qo, ko = pe.forward_qk(q, k, L)
    for b, s in enumerate(L.samples):
        n = s.num_tokens
        qa, ka = pe.forward_qk(q[b:b + 1, :, :n], k[b:b + 1, :, :n], s)
        torch.testing.assert_close(qo[b:b + 1, :, :n], qa)
        torch.testing.assert_close(ko[b:b + 1, :, :n], ka)


def test_packed_decomposed_bias_fold_equals_dense():
    torch.manual_seed(0)
    pe = _model("rel_decomposed", 2, 1).pe
    L = PackedLayout(SHAPES[2], 1)
    q, k, v = torch.randn(3, L.batch_size, HEADS, L.num_tokens, DIM // HEADS).unbind(0)
    bias = pe.attn_bias(q, L, 0)
    assert isinstance(bias, PackedDecomposedBias) and bias.rel.shape == (4, HEADS, 25, 10)  # max(h + w) = 10
    fold = sdpa(q, k, v, bias, layout=L)
    dense = sdpa(q, k, v, bias, layout=L, impl="dense")
    torch.testing.assert_close(fold, dense, atol=1e-5, rtol=1e-5)
    d = bias.dense()
    assert d.shape == (4, HEADS, 26, 26) and d[:, :, 0].eq(0).all() and d[:, :, :, 0].eq(0).all()
    assert d[1, :, 22:].eq(0).all() and d[1, :, :, 22:].eq(0).all()  # padding rows and columns of sample 1
    with pytest.raises(ValueError, match="same PackedLayout"):
        sdpa(q, k, v, bias, layout=PackedLayout([(5, 5)] * 4, 1))


@pytest.mark.parametrize("name, nd", FAMILIES)
def test_uniform_packed_and_grid_paths_are_bit_identical(name, nd):
    """A PackedLayout of one grid without padding takes the single-grid path: the very same numbers, and the
    GridLayout path is the family's hook as written (see the next test)."""
    model = _model(name, nd, 1)
    s = TRAIN[nd]
    g = GridLayout(s, 1)
    x = torch.randn(3, g.num_tokens, DIM)
    with torch.no_grad():
        a = model(x, g)
        b = model(x, PackedLayout([s] * 3, 1))
    assert torch.equal(a, b)


def test_grid_layout_hook_is_the_unwrapped_function():
    pe = _model("peg", 2, 1).pe
    g = GridLayout((5, 5), 1)
    x = torch.randn(2, 26, DIM)
    with torch.no_grad():
        assert torch.equal(pe.forward_block(x, g, 0), type(pe).forward_block.__wrapped__(pe, x, g, 0))


def test_packed_rejects_bad_tensors():
    pe = _model("peg", 2, 1).pe
    L = PackedLayout(SHAPES[2], 1)
    with pytest.raises(ValueError, match="batch of 3"):
        pe.forward_block(torch.randn(3, L.num_tokens, DIM), L, 0)
    with pytest.raises(ValueError, match="26"):
        pe.forward_block(torch.randn(4, 20, DIM), L, 0)
    rope = _model("rope_axial", 2, 1).pe
    q = torch.randn(3, HEADS, L.num_tokens, DIM // HEADS)
    with pytest.raises(ValueError, match="batch of 3"):
        rope.forward_qk(q, q, L)


# ---- the table cache bound ----------------------------------------------------------------------------------------
def _sweep(pe, n=100):
    q = torch.randn(1, HEADS, 1 + 100, DIM // HEADS)
    sizes = []
    for i in range(n):
        h, w = 1 + i % 10, 1 + i // 10
        L = GridLayout((h, w), 1)
        pe.forward_qk(q[:, :, :L.num_tokens], q[:, :, :L.num_tokens], L)
        sizes.append(len(pe._cache))
    return sizes


def test_cache_bound_on_a_sweep_of_100_grids():
    pe = vispos.build_pe("rope_axial", dim=DIM, num_heads=HEADS, grid=(5, 5))
    bound = get_table_cache_size()
    assert 0 < bound <= 64
    sizes = _sweep(pe)
    assert max(sizes) == bound  # filled to the bound, never past it
    pe.table_cache_size = 5  # per-PE override
    pe.clear_cache()
    assert max(_sweep(pe)) == 5
    pe.table_cache_size = None
    old = set_table_cache_size(3)
    try:
        assert old == bound and max(_sweep(pe)) == 3
        set_table_cache_size(0)
        pe.clear_cache()
        assert max(_sweep(pe)) == 0
    finally:
        set_table_cache_size(old)
    with pytest.raises(ValueError, match="int >= 0"):
        set_table_cache_size(-1)
    pe.table_cache_size = "big"
    with pytest.raises(ValueError, match="table_cache_size"):
        _sweep(pe, 1)


def test_cache_bound_on_a_sweep_of_100_packed_batches():
    """Per-sample grids: 100 different PackedLayouts through RoPE (per-grid and gathered tables), sin-cos APE and
    rel-pos keep every cache under the bound (vispos.set_table_cache_size is the same setting)."""
    assert vispos.set_table_cache_size is set_table_cache_size
    rope = vispos.build_pe("rope_axial", dim=DIM, num_heads=HEADS, grid=(5, 5))
    sincos = vispos.build_pe("ape_sincos", dim=DIM, grid=(5, 5), num_prefix=1)
    bound = get_table_cache_size()
    for i in range(100):
        L = PackedLayout([(1 + i % 10, 1 + i // 10), (3, 4)], num_prefix=1)
        q = torch.randn(2, HEADS, L.num_tokens, DIM // HEADS)
        rope.forward_qk(q, q, L)
        sincos.forward_tokens(torch.randn(2, L.num_tokens, DIM), L)
        assert len(rope._cache) <= bound and len(sincos._cache) <= bound
    assert len(rope._cache) == bound


def test_cache_is_lru():
    pe = vispos.build_pe("rope_axial", dim=DIM, num_heads=HEADS, grid=(5, 5))
    pe.table_cache_size = 2
    calls = []
    pe.cached("a", lambda: calls.append("a") or 1)
    pe.cached("b", lambda: calls.append("b") or 2)
    pe.cached("a", lambda: calls.append("a2") or 1)  # hit: "a" becomes most recent
    pe.cached("c", lambda: calls.append("c") or 3)  # evicts "b"
    assert list(pe._cache) == ["a", "c"] and calls == ["a", "b", "c"]


def test_ape_cache_bounded_in_eval():
    pe = vispos.build_pe("ape", dim=DIM, grid=(5, 5), num_prefix=1)
    with torch.no_grad():
        for i in range(100):
            h, w = 1 + i % 10, 1 + i // 10
            L = GridLayout((h, w), 1)
            pe.forward_tokens(torch.randn(1, L.num_tokens, DIM), L)
            assert len(pe._cache) <= get_table_cache_size()


def test_cache_size_from_environment():
    import subprocess
    import sys

    code = "import vispos.pe.base as b; print(b.get_table_cache_size())"
    env = {**__import__("os").environ, "VISPOS_TABLE_CACHE_SIZE": "7"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "7", r.stderr[-1000:]
    env["VISPOS_TABLE_CACHE_SIZE"] = "lots"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "VISPOS_TABLE_CACHE_SIZE" in r.stderr


# ---- parity with timm NaFlex --------------------------------------------------------------------------------------
@pytest.mark.parametrize("antialias", [True, False])
def test_ape_matches_timm_naflex_pos_embed_sampling(antialias):
    """``ape`` on a PackedLayout adds what timm NaFlexEmbeds._apply_learned_naflex_pos_embed adds (per unique grid,
    bicubic, timm's default antialias), with its table copied (timm stores ``(1, H, W, C)``, no prefix rows)."""
    from timm.models.naflexvit import NaFlexEmbeds

    torch.manual_seed(0)
    emb = NaFlexEmbeds(patch_size=4, embed_dim=DIM, class_token=False, pos_embed_grid_size=(5, 5),
                       pos_embed_antialias=antialias)
    with torch.no_grad():
        emb.pos_embed.normal_()
    pe = vispos.build_pe("ape", dim=DIM, grid=(5, 5), num_prefix=0, embed_prefix=False, mode="bicubic",
                         antialias=antialias)
    with torch.no_grad():
        pe.pos_embed.copy_(emb.pos_embed.reshape(1, 25, DIM))
    shapes = [(4, 6), (7, 3), (5, 5), (9, 8), (4, 6)]
    pc, pv = _naflex_coords(shapes, 72)
    L = PackedLayout.from_patch_coord(pc, pv)
    x = torch.randn(len(shapes), 72, DIM)
    ref = x.clone()
    with torch.no_grad():
        emb._apply_learned_naflex_pos_embed(ref, pc)
        ours = pe.forward_tokens(x, L)
    valid = pv[..., None].expand_as(x)
    torch.testing.assert_close(ours[valid], ref[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["rope_axial", "rope_mixed"])
def test_coordinate_augmentation_one_draw_per_packed_forward(name):
    """In training with DINOv3-style coordinate augmentation, prepare draws once for the packed batch; each sample
    alone with that same draw gives the same rotation."""
    kwargs = dict(dim=DIM, num_heads=HEADS, depth=DEPTH, grid=(5, 5), shift_coords=0.5, jitter_coords=1.5)
    pe = vispos.build_pe(name, **kwargs).train()
    L = PackedLayout(SHAPES[2], 1)
    x = torch.randn(4, L.num_tokens, DIM)
    q, k = torch.randn(2, 4, HEADS, L.num_tokens, DIM // HEADS).unbind(0)
    torch.manual_seed(3)
    P = pe.prepare(x, L)
    draw = P.state_of(pe)
    assert draw is not None
    qo, ko = pe.forward_qk(q, k, P, 1)
    for b, s in enumerate(L.samples):
        n = s.num_tokens
        qa, ka = pe.forward_qk(q[b:b + 1, :, :n], k[b:b + 1, :, :n], s.with_state(pe, draw), 1)
        torch.testing.assert_close(qo[b:b + 1, :, :n], qa)
        torch.testing.assert_close(ko[b:b + 1, :, :n], ka)
    torch.manual_seed(4)
    other = pe.forward_qk(q, k, pe.prepare(x, L), 1)[0]
    assert not torch.allclose(other, qo)  # a new forward draws a new transform


def test_generic_decomposed_bias_stays_factored():
    """A family returning a DecomposedBias per grid (ALiBi Manhattan) gets a PackedDecomposedBias from the generic
    path (no N x N tensor), equal to its dense per-sample blocks; a tensor bias (Euclidean) is blocked densely."""
    L = PackedLayout(SHAPES[2], 1)
    q, k, v = torch.randn(3, 4, HEADS, L.num_tokens, DIM // HEADS).unbind(0)
    man = vispos.build_pe("alibi", num_heads=HEADS, grid=(5, 5))
    bias = man.attn_bias(q, L, 0)
    assert isinstance(bias, PackedDecomposedBias)
    dense = bias.dense()
    for b, s in enumerate(L.samples):
        n = s.num_tokens
        torch.testing.assert_close(dense[b:b + 1, :, :n, :n], man.attn_bias(q[b:b + 1, :, :n], s, 0).dense())
    torch.testing.assert_close(sdpa(q, k, v, bias, layout=L), sdpa(q, k, v, dense, layout=L), atol=1e-5, rtol=1e-5)
    euc = vispos.build_pe("alibi", num_heads=HEADS, grid=(5, 5), distance="euclidean")
    t = euc.attn_bias(q, L, 0)
    assert isinstance(t, torch.Tensor) and t.shape == (4, HEADS, L.num_tokens, L.num_tokens)
    torch.testing.assert_close(t[1:2, :, :22, :22], euc.attn_bias(q[1:2, :, :22], L.sample(1), 0).expand(1, -1, -1, -1))


@pytest.mark.parametrize("name", ["rope_axial", "ape_sincos"])
def test_samples_with_explicit_positions(name):
    """A sample given as a GridLayout with explicit positions keeps them (e.g. strided frames / columns)."""
    s0 = GridLayout((3, 4), 1, positions=((0.0, 2.0, 4.0), None))
    L = PackedLayout([s0, (4, 4), s0], num_prefix=1)
    assert L.sample(0).positions == s0.positions and len(L.groups()) == 2
    model = _model(name, 2, 1)
    x = torch.randn(3, L.num_tokens, DIM)
    with torch.no_grad():
        out = model(x, L)
        for b in range(3):
            s = L.sample(b)
            torch.testing.assert_close(out[b:b + 1, :s.num_tokens], model(x[b:b + 1, :s.num_tokens], s),
                                       atol=2e-5, rtol=1e-4)
        plain = model(x[:1, :13], GridLayout((3, 4), 1))
    assert not torch.allclose(plain, out[:1, :13], atol=1e-3)  # the positions matter
