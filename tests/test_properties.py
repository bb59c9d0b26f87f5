"""Property-based tests over the PE registry (issue 9).

Every registered PE (``vispos.list_pes()`` at collection time, so families that land later are covered) is driven
through a small host -- patch tokens, the token hook, ``vispos.attention.Attention`` with ``(layout, pe, index)``
per layer (attn_input / qk / bias / value hooks), the block hook -- on random grids (1x1, T=1, 1x17 and 17x1,
large grids), head dims, 0-3 prefix tokens and fp32 / bf16 / fp16, batch 1. Properties:

* every hook keeps the shape and dtype and gives finite values; the host output is finite;
* prefix tokens are never rotated (qk) nor biased (bias);
* the module equals its pure function (``PURE`` below: one reference per family, a missing one fails);
* a PE built on the meta device and materialised (``to_empty`` + the same seed + ``reset_parameters()`` /
  ``init_non_persistent_buffers()``) equals one built directly.

Profiles: see ``tests/hypothesis_profiles.py`` (``CI=true`` selects the longer one).
"""
from __future__ import annotations

import math

import hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vispos
from vispos.attention import Attention
from vispos.grid import GridLayout, grid_coords
from vispos.ops.attention import DecomposedBias
from vispos.ops.rope import apply_rope

PE_NAMES = [info.name for info in vispos.list_pes()]
NDIMS = {info.name: tuple(info.ndims) for info in vispos.list_pes()}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEPTH = 2

# (head_dim, num_heads): head dims divisible by 12 (2D halves, 3D Wan split, RoPE-Mixed 2*ndim) and widths
# divisible by 48 (3D sin-cos needs dim % 16).
HEADS = ((12, 4), (24, 2), (48, 1), (12, 8))

SHAPES = {
    1: st.one_of(st.sampled_from([(1,), (17,), (64,)]), st.tuples(st.integers(1, 12))),
    2: st.one_of(
        st.sampled_from([(1, 1), (1, 17), (17, 1), (16, 16), (2, 24)]),
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
    ),
    3: st.one_of(
        st.sampled_from([(1, 1, 1), (1, 4, 4), (1, 1, 17), (6, 1, 1), (4, 8, 8)]),
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
    ),
}


@st.composite
def geometries(draw, name):
    nd = draw(st.sampled_from(NDIMS[name]))
    train = draw(SHAPES[nd])
    test = draw(st.one_of(st.just(train), SHAPES[nd]))
    head_dim, heads = draw(st.sampled_from(HEADS))
    return dict(nd=nd, train=train, test=test, head_dim=head_dim, heads=heads, dim=head_dim * heads,
                prefix=draw(st.integers(0, 3)), dtype=draw(st.sampled_from(DTYPES)))


def build(name, g, dtype=None, device=None):
    return vispos.build_pe(name, dim=g["dim"], num_heads=g["heads"], depth=DEPTH, grid=g["train"],
                           num_prefix=g["prefix"], dtype=dtype, device=device)


def _finite(t, what):
    assert torch.isfinite(t.float()).all(), f"{what}: non-finite values"


def _check_bias(bias, B, H, N, dtype, what):
    if bias is None:
        return None
    if isinstance(bias, DecomposedBias):
        dense = bias.dense(torch.float32)
    else:
        assert isinstance(bias, torch.Tensor), f"{what}: bias is {type(bias).__name__}"
        dense = bias.float().expand(B, H, N, N)
    assert dense.shape == (B, H, N, N), f"{what}: bias dense shape {tuple(dense.shape)}"
    _finite(dense, what)
    return dense


def run_host(pe, layout, g, dtype, seed=0, record=None):
    """A minimal ViT-like host calling every hook the way timm/VideoDiT hosts do; checks each hook's output."""
    torch.manual_seed(seed)
    dim, H, hd = g["dim"], g["heads"], g["head_dim"]
    attns = [Attention(dim, H, dtype=dtype) for _ in range(DEPTH)]
    x = torch.randn(1, layout.num_tokens, dim, dtype=dtype)
    N = layout.num_tokens
    if "token" in pe.hooks:
        y = pe.forward_tokens(x, layout)
        assert y.shape == x.shape and y.dtype == x.dtype, f"token hook: {tuple(y.shape)} {y.dtype}"
        _finite(y, "token hook")
        x = y
    for i, attn in enumerate(attns):
        h = x
        if "attn_input" in pe.hooks:
            h2 = pe.forward_attn_input(h, layout, i)
            assert h2.shape == h.shape and h2.dtype == h.dtype, "attn_input hook changed shape/dtype"
            _finite(h2, "attn_input hook")
        q = torch.randn(1, H, N, hd, dtype=dtype)
        k = torch.randn(1, H, N, hd, dtype=dtype)
        v = torch.randn(1, H, N, hd, dtype=dtype)
        if "bias" in pe.hooks:
            dense = _check_bias(pe.attn_bias(q, layout, i), 1, H, N, dtype, "bias hook")
            if dense is not None and layout.num_prefix:
                p = layout.num_prefix
                assert (dense[:, :, :p] == 0).all() and (dense[:, :, :, :p] == 0).all(), "prefix tokens biased"
        if "qk" in pe.hooks:
            q2, k2 = pe.forward_qk(q, k, layout, i)
            for a, b, nm in ((q, q2, "q"), (k, k2, "k")):
                assert b.shape == a.shape and b.dtype == a.dtype, f"qk hook {nm}: {tuple(b.shape)} {b.dtype}"
                _finite(b, f"qk hook {nm}")
                p = layout.num_prefix
                assert torch.equal(b[:, :, :p], a[:, :, :p]), f"qk hook rotated the prefix tokens of {nm}"
        if "value" in pe.hooks:
            o = torch.randn(1, H, N, hd, dtype=dtype)
            o2 = pe.forward_value(o, v, layout, i)
            assert o2.shape == o.shape and o2.dtype == o.dtype, "value hook changed shape/dtype"
            _finite(o2, "value hook")
        x = x + attn(x, layout, pe, i)
        assert x.shape == (1, N, dim) and x.dtype == dtype
        _finite(x, f"host after attention {i}")
        if "block" in pe.hooks and i in pe.block_indices:
            y = pe.forward_block(x, layout, i)
            assert y.shape == x.shape and y.dtype == x.dtype, "block hook changed shape/dtype"
            _finite(y, "block hook")
            x = y
    return x


def test_registry_is_populated():
    # the lead's families must all be here; later families only add to the list
    assert {"rope_axial", "rope_mixed", "vope", "ape", "ape_sincos", "peg"} <= set(PE_NAMES)


@pytest.mark.parametrize("name", PE_NAMES)
@given(data=st.data())
def test_hooks_finite_and_shaped(name, data):
    g = data.draw(geometries(name))
    pe = build(name, g, dtype=g["dtype"])
    layout = GridLayout(g["test"], g["prefix"])
    with torch.no_grad():
        out = run_host(pe, layout, g, g["dtype"])
    assert out.shape == (1, layout.num_tokens, g["dim"])


@pytest.mark.parametrize("name", [n for n in PE_NAMES if n != "rope_axial"])
@hypothesis_profiles.scaled(0.5)
@given(data=st.data())
def test_combined_with_rope(name, data):
    """Every PE next to an attention-level RoPE (``[name, "rope_axial"]``), or the error for two qk PEs."""
    g = data.draw(geometries(name))
    info = {i.name: i for i in vispos.list_pes()}
    if "qk" in info[name].hooks:
        with pytest.raises(ValueError, match="incompatible PE combination"):
            vispos.build_pe([name, "rope_axial"], dim=g["dim"], num_heads=g["heads"], depth=DEPTH, grid=g["train"],
                            num_prefix=g["prefix"])
        return
    pe = vispos.build_pe([name, "rope_axial"], dim=g["dim"], num_heads=g["heads"], depth=DEPTH, grid=g["train"],
                         num_prefix=g["prefix"], dtype=g["dtype"])
    layout = GridLayout(g["test"], g["prefix"])
    with torch.no_grad():
        run_host(pe, layout, g, g["dtype"])


# ---- module == pure function ----------------------------------------------------------------------------------
def _pure_rope_axial(pe, layout, g):
    q = torch.randn(1, g["heads"], layout.num_tokens, g["head_dim"])
    k = torch.randn_like(q)
    cos, sin = pe.build_table(layout)
    return pe.forward_qk(q, k, layout), (apply_rope(q, cos, sin, pe.pairing), apply_rope(k, cos, sin, pe.pairing))


def _pure_rope_mixed(pe, layout, g):
    from vispos.ops.rope import rope_table

    q = torch.randn(1, g["heads"], layout.num_tokens, g["head_dim"])
    k = torch.randn_like(q)
    got = [pe.forward_qk(q, k, layout, i) for i in range(DEPTH)]
    c = grid_coords(layout, pe.coords, pe.ref_shape, dtype=torch.float64)
    want = []
    for i in range(DEPTH):
        ang = torch.einsum("na,ahj->hnj", c, pe.freqs[:, i].double())
        cos, sin = rope_table(ang, layout.num_prefix, g["head_dim"] // 2)
        want.append((apply_rope(q, cos, sin, pe.pairing), apply_rope(k, cos, sin, pe.pairing)))
    return got, want


def _pure_ape(pe, layout, g):
    from vispos.pe.absolute import resample_abs_pe

    x = torch.randn(1, layout.num_tokens, g["dim"])
    table = pe.pos_embed if layout.shape == pe.grid else resample_abs_pe(
        pe.pos_embed, layout.shape, pe.grid, pe.table_prefix, pe.mode, pe.antialias)
    return pe.forward_tokens(x, layout), x + table


def _pure_ape_sincos(pe, layout, g):
    from vispos.pe.absolute import build_sincos_2d, build_sincos_3d

    x = torch.randn(1, layout.num_tokens, g["dim"])
    c = grid_coords(layout, pe.coords, pe.ref_shape, dtype=torch.float64)
    if layout.ndim == 2:
        t = build_sincos_2d(layout.shape, pe.dim, pe.temperature, pe.style, coords=c)
    else:
        t = build_sincos_3d(layout.shape, pe.dim, pe.temperature, coords=c)
    t = torch.cat([t.new_zeros(layout.num_prefix, t.shape[-1]), t], 0)[None].to(x.dtype)
    return pe.forward_tokens(x, layout), x + t


def _pure_peg(pe, layout, g):
    from vispos.pe.conditional import apply_peg

    x = torch.randn(1, layout.num_tokens, g["dim"])
    i = pe.block_indices[0]
    c = pe.convs[0]
    return pe.forward_block(x, layout, i), apply_peg(x, layout, c.weight, c.bias)


def _randomise(params):
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.5)


def _pure_glpe(pe, layout, g):
    from vispos.pe.global_local import apply_glpe_global, apply_glpe_local, build_glpe_sincos

    _randomise(pe.parameters())  # the local convs are zero at init: make them matter
    x = torch.randn(1, layout.num_tokens, g["dim"])
    t = build_glpe_sincos(layout, pe.dim, pe.temperature, pe.eps)
    got = [pe.forward_tokens(x, layout)]
    want = [apply_glpe_global(x, layout, t, pe.global_conv.weight, pe.global_conv.bias)]
    for i in range(DEPTH):
        o = torch.randn(1, g["heads"], layout.num_tokens, g["head_dim"])
        v = torch.randn_like(o)
        c = pe.local_convs[i]
        got.append(pe.forward_value(o, v, layout, i))
        want.append(apply_glpe_local(o, v, layout, c.weight, c.bias, pe.per_head))
    return got, want


def _pure_lape(pe, layout, g):
    from vispos.pe.lape import lape_chain

    _randomise(n.weight for n in pe.norms)
    x = torch.randn(1, layout.num_tokens, g["dim"])
    w0 = pe.base.full_table(layout)
    ws, bs = [n.weight for n in pe.norms], [n.bias for n in pe.norms]
    got = [pe.forward_attn_input(x, layout, i) for i in range(DEPTH)]
    want = [x + lape_chain(w0, ws, bs, i, pe.sharing, pe.eps) for i in range(DEPTH)]
    return got, want


def _pure_rel_decomposed(pe, layout, g):
    from vispos.pe.relative import get_rel_pos

    _randomise(pe.parameters())  # zero at init (SAM)
    q = torch.randn(1, g["heads"], layout.num_tokens, g["head_dim"])
    got, want = [], []
    P, shape = layout.num_prefix, layout.shape
    for i in range(DEPTH):
        got.append(pe.attn_bias(q, layout, i).dense())
        qg = q[:, :, P:].reshape(1, g["heads"], *shape, g["head_dim"])
        dense = torch.zeros(1, g["heads"], layout.num_tokens, layout.num_tokens)
        acc = 0
        for a, table in enumerate(pe.tables(i)):
            R = get_rel_pos(shape[a], shape[a], table, pe.interpolate)  # (q_a, k_a, C)
            # bias[..., query grid..., key index along axis a] = sum_c q[..., c] R[q_a, k_a, c]
            qa = qg.movedim(2 + a, -2)  # (..., q_a, C)
            term = torch.einsum("...qc,qkc->...qk", qa, R).movedim(-2, 2 + a)  # (1, h, *shape, k_a)
            view = [1] * len(shape)
            view[a] = shape[a]
            acc = acc + term.reshape(*term.shape[:-1], *view)
        acc = acc.expand(*acc.shape[: 2 + len(shape)], *shape)
        dense[:, :, P:, P:] = acc.reshape(1, g["heads"], layout.num_patches, layout.num_patches)
        want.append(dense)
    return got, want


#: one pure-function reference per family: ``fn(pe, layout, geometry) -> (module output, function output)``
PURE = {
    "rope_axial": _pure_rope_axial,
    "vope": _pure_rope_axial,
    "rope_mixed": _pure_rope_mixed,
    "ape": _pure_ape,
    "ape_sincos": _pure_ape_sincos,
    "peg": _pure_peg,
    "glpe": _pure_glpe,
    "lape": _pure_lape,
    "rel_decomposed": _pure_rel_decomposed,
    "alibi": lambda pe, layout, g: _pure_alibi(pe, layout, g),
    "lie_rope": lambda pe, layout, g: _pure_generator_rope(pe, layout, g),
    "comrope": lambda pe, layout, g: _pure_generator_rope(pe, layout, g),
}


def _pure_alibi(pe, layout, g):
    """-m_h * (sum_a |dp_a|) between grid tokens, zero for prefix tokens."""
    from vispos.pe.alibi import alibi_slopes

    q = torch.randn(1, g["heads"], layout.num_tokens, g["head_dim"])
    c = grid_coords(layout.shape, dtype=torch.float64)
    d = (c[:, None] - c[None]).abs().sum(-1)
    want = torch.zeros(1, g["heads"], layout.num_tokens, layout.num_tokens)
    P = layout.num_prefix
    for h, m in enumerate(alibi_slopes(g["heads"])):
        want[0, h, P:, P:] = (-m * d).float()
    return pe.attn_bias(q, layout, 0).dense(), want


def _pure_generator_rope(pe, layout, g):
    """Per token: the dense block-diagonal ``exp(sum_i p_i A_i)`` (``torch.block_diag`` of the generators)."""
    q = torch.randn(1, g["heads"], layout.num_tokens, g["head_dim"])
    i = DEPTH - 1
    A = pe.generators(i).double()  # (ndim, H, nb, b, b)
    c = grid_coords(layout.shape, dtype=torch.float64)
    P = layout.num_prefix
    want = q.clone()
    for h in range(g["heads"]):
        gens = [torch.block_diag(*A[a, h]) for a in range(A.shape[0])]  # (D, D) per axis
        for n in range(c.shape[0]):
            R = torch.linalg.matrix_exp(sum(c[n, a] * gens[a] for a in range(len(gens))))
            want[0, h, P + n] = (R @ q[0, h, P + n].double()).float()
    return pe.forward_qk(q, q, layout, i)[0], want


@pytest.mark.parametrize("name", PE_NAMES)
def test_every_family_has_a_pure_reference(name):
    assert name in PURE, f"no pure-function reference for PE {name!r}: add one to PURE in tests/test_properties.py"


@pytest.mark.parametrize("name", [n for n in PE_NAMES if n in PURE])
@given(data=st.data())
def test_module_equals_function(name, data):
    g = data.draw(geometries(name))
    pe = build(name, g)
    layout = GridLayout(g["test"], g["prefix"])
    with torch.no_grad():
        got, want = PURE[name](pe, layout, g)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


# ---- meta device -----------------------------------------------------------------------------------------------
def materialize(pe, device, seed):
    """The vispos recipe: ``to_empty(device)``, re-seed, the PE's own ``reset_parameters()`` (which must
    re-initialise all of its parameters in the constructor's RNG order; a combination resets each member), then
    ``init_non_persistent_buffers()`` on every submodule that defines it."""
    pe.to_empty(device=device)
    torch.manual_seed(seed)
    if any(True for _ in pe.parameters()):
        assert hasattr(pe, "reset_parameters"), f"PE {pe.name!r} has parameters but no reset_parameters()"
        pe.reset_parameters()
    for m in pe.modules():
        if hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()
    return pe


@pytest.mark.parametrize("how", ["device_kwarg", "device_context"])
@pytest.mark.parametrize("name", PE_NAMES)
@hypothesis_profiles.scaled(0.5)
@given(data=st.data())
def test_meta_materialised_equals_direct(name, how, data):
    g = data.draw(geometries(name))
    seed = data.draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    direct = build(name, g)
    torch.manual_seed(seed)
    if how == "device_kwarg":
        meta = build(name, g, device="meta")
    else:
        with torch.device("meta"):
            meta = build(name, g)
    assert all(t.is_meta for t in meta.state_dict().values())
    materialize(meta, "cpu", seed)
    sd_d, sd_m = direct.state_dict(), meta.state_dict()
    assert sd_d.keys() == sd_m.keys()
    for key in sd_d:
        torch.testing.assert_close(sd_m[key], sd_d[key], atol=0, rtol=0, msg=f"{name}: state {key!r} differs")
    layout = GridLayout(g["test"], g["prefix"])
    with torch.no_grad():
        a = run_host(direct, layout, g, torch.float32, seed=1)
        b = run_host(meta, layout, g, torch.float32, seed=1)
    torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_materialize_recipe_rejects_meta_leftovers():
    """The recipe is not vacuous: skipping ``reset_parameters`` leaves a learned table different from direct."""
    g = dict(dim=48, heads=4, head_dim=12, train=(3, 3), prefix=1)
    torch.manual_seed(5)
    direct = build("ape", g)
    meta = build("ape", g, device="meta")
    meta.to_empty(device="cpu")
    with torch.no_grad():
        meta.pos_embed.fill_(math.pi)
    assert not torch.equal(meta.pos_embed, direct.pos_embed)


def test_meta_materialised_combination_equals_direct():
    """``PECombination.reset_parameters`` resets its members in build order (same RNG stream as building)."""
    g = dict(dim=48, heads=4, head_dim=12, train=(3, 4), test=(3, 4), prefix=1)
    names = ["ape", "rope_mixed"]

    def make(device=None):
        return vispos.build_pe(names, dim=48, num_heads=4, depth=DEPTH, grid=(3, 4), num_prefix=1, device=device)

    torch.manual_seed(11)
    direct = make()
    meta = materialize(make("meta"), "cpu", 11)
    for k, v in direct.state_dict().items():
        assert torch.equal(meta.state_dict()[k], v), k
    layout = GridLayout(g["test"], g["prefix"])
    with torch.no_grad():
        torch.testing.assert_close(run_host(meta, layout, g, torch.float32), run_host(direct, layout, g, torch.float32),
                                   atol=0, rtol=0)
