import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

import vispos
from vispos import GridLayout
from vispos.pe.absolute import (
    AbsolutePE,
    SinCosPE,
    build_sincos_2d,
    build_sincos_3d,
    crop_resample_abs_pe,
    resample_abs_pe,
    sample_crop_boxes,
)


# ---- resampling: parity with timm ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old,new,prefix,mode,aa",
    [
        ((4, 4), (6, 6), 0, "bicubic", False),  # square up
        ((6, 6), (4, 4), 1, "bicubic", True),  # square down, class token, antialias
        ((4, 6), (7, 5), 1, "bilinear", False),  # rectangular both ways
        ((4, 6), (3, 9), 4, "bicubic", True),  # class + 3 registers
        ((6, 4), (3, 2), 0, "area", False),
    ],
)
def test_resample_matches_timm(old, new, prefix, mode, aa):
    t = torch.randn(1, prefix + old[0] * old[1], 16)
    ours = resample_abs_pe(t, new, old, prefix, mode, aa)
    ref = resample_abs_pos_embed(t, list(new), list(old), num_prefix_tokens=prefix, interpolation=mode, antialias=aa)
    assert ours.shape == (1, prefix + new[0] * new[1], 16)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[:, :prefix], t[:, :prefix], rtol=0, atol=0)


def test_resample_same_grid_is_identity():
    t = torch.randn(1, 1 + 12, 8)
    assert resample_abs_pe(t, (3, 4), (3, 4), 1) is t
    t3 = torch.randn(1, 2 * 3 * 4, 8)
    assert resample_abs_pe(t3, (2, 3, 4), (2, 3, 4), 0, "trilinear") is t3
    # 2-D input keeps its rank
    assert resample_abs_pe(t[0], (5, 4), (3, 4), 1).shape == (1 + 20, 8)


def test_resample_3d():
    t = torch.randn(1, 1 + 2 * 3 * 4, 8)
    new = (3, 5, 6)
    tri = resample_abs_pe(t, new, (2, 3, 4), 1, "trilinear")
    vol = t[:, 1:].reshape(1, 2, 3, 4, 8).permute(0, 4, 1, 2, 3)
    ref = F.interpolate(vol, size=new, mode="trilinear", align_corners=False).permute(0, 2, 3, 4, 1).reshape(1, -1, 8)
    torch.testing.assert_close(tri[:, 1:], ref)
    torch.testing.assert_close(tri[:, :1], t[:, :1])
    # bilinear per frame + linear in time == trilinear
    torch.testing.assert_close(resample_abs_pe(t, new, (2, 3, 4), 1, "bilinear"), tri, atol=1e-6, rtol=0)
    # bicubic in 3D: each frame's plane equals the 2-D bicubic of that frame when T is unchanged
    bc = resample_abs_pe(t, (2, 5, 6), (2, 3, 4), 1, "bicubic")
    f1 = torch.cat([t[:, :0], t[:, 1 + 12:]], 1)
    torch.testing.assert_close(bc[:, 1 + 30:], resample_abs_pe(f1, (5, 6), (3, 4), 0, "bicubic"))


def test_resample_errors():
    t = torch.randn(1, 1 + 12, 8)
    with pytest.raises(ValueError, match="rows"):
        resample_abs_pe(t, (4, 4), (3, 3), 1)
    with pytest.raises(ValueError, match="trilinear"):
        resample_abs_pe(t, (4, 4), (3, 4), 1, "trilinear")
    with pytest.raises(ValueError, match="unknown resample mode"):
        resample_abs_pe(t, (4, 4), (3, 4), 1, "cubic")
    with pytest.raises(ValueError, match="antialias"):
        resample_abs_pe(t, (2, 2), (3, 4), 1, "area", True)
    with pytest.raises(ValueError, match="same number of axes"):
        resample_abs_pe(t, (1, 4, 4), (3, 4), 1)


# ---- sin-cos ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,dim,temp", [((5, 7), 32, 10000.0), ((4, 4), 16, 100.0)])
def test_sincos_2d_matches_timm(grid, dim, temp):
    ref = build_sincos2d_pos_embed(list(grid), dim, temperature=temp)
    torch.testing.assert_close(build_sincos_2d(grid, dim, temp, style="timm"), ref, atol=1e-5, rtol=0)


def test_sincos_2d_mae_formula():
    H, W, D = 3, 5, 16
    out = build_sincos_2d((H, W), D, style="mae", dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D // 4))
    for h in range(H):
        for w in range(W):
            exp = torch.cat([torch.sin(w * omega), torch.cos(w * omega), torch.sin(h * omega), torch.cos(h * omega)])
            torch.testing.assert_close(out[h * W + w], exp)


def test_sincos_3d_latte_cogvideox_formula():
    T, H, W, D = 3, 2, 4, 32
    out = build_sincos_3d((T, H, W), D, dtype=torch.float64)
    dt, ds = D // 4, 3 * D // 8

    def one(p, d):
        om = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        return torch.cat([torch.sin(p * om), torch.cos(p * om)])

    for t in range(T):
        for h in range(H):
            for w in range(W):
                exp = torch.cat([one(t, dt), one(w, ds), one(h, ds)])
                torch.testing.assert_close(out[(t * H + h) * W + w], exp)
    # and diffusers' implementation (spatial_size is (width, height) there)
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    ref = get_3d_sincos_pos_embed(D, (W, H), T).reshape(-1, D)
    torch.testing.assert_close(out.float(), ref.float(), atol=1e-6, rtol=0)


def test_sincos_module_recompute_and_coords():
    pe = SinCosPE(16, (4, 6), num_prefix=1)
    lay = GridLayout((4, 6), 1)
    tab = pe.get_table(lay)
    assert pe.get_table(lay) is tab  # cached
    torch.testing.assert_close(tab, build_sincos_2d((4, 6), 16))  # recomputed at training grid == table
    x = torch.randn(2, 25, 16)
    y = pe(x, lay)
    torch.testing.assert_close(y[:, :1], x[:, :1])  # prefix gets zeros
    torch.testing.assert_close(y[:, 1:], x[:, 1:] + tab)
    # interpolated coordinates at another grid: positions p * ref / size
    pi = SinCosPE(16, (4, 6), coords="interpolated")
    c = vispos.grid_coords((8, 3), "interpolated", (4, 6), dtype=torch.float64)
    torch.testing.assert_close(pi.get_table(GridLayout((8, 3))), build_sincos_2d((8, 3), 16, coords=c))
    assert torch.allclose(pi.get_table(GridLayout((4, 6))), tab)
    # index coordinates at a larger grid extend the table (top-left block unchanged)
    big = pe.get_table(GridLayout((5, 6), 1))
    torch.testing.assert_close(big[:24], tab)
    # 3D
    p3 = SinCosPE(32, (2, 3, 4))
    torch.testing.assert_close(p3.get_table(GridLayout((2, 3, 4))), build_sincos_3d((2, 3, 4), 32))
    assert not list(pe.parameters()) and not pe.state_dict()


# ---- learned APE module ----------------------------------------------------------------------------------------
def test_ape_module_equals_function_and_timm_layout():
    pe = AbsolutePE(16, (4, 6), num_prefix=1)
    assert pe.pos_embed.shape == (1, 1 + 24, 16)
    x = torch.randn(2, 1 + 24, 16)
    torch.testing.assert_close(pe(x, GridLayout((4, 6), 1)), x + pe.pos_embed)
    x2 = torch.randn(2, 1 + 35, 16)
    exp = x2 + resample_abs_pe(pe.pos_embed, (5, 7), (4, 6), 1, "bicubic")
    torch.testing.assert_close(pe(x2, GridLayout((5, 7), 1)), exp)
    # no_embed_class: table has grid rows only, prefix tokens untouched, any number of them
    pn = AbsolutePE(16, (4, 6), num_prefix=1, embed_prefix=False)
    assert pn.pos_embed.shape == (1, 24, 16)
    x3 = torch.randn(2, 3 + 35, 16)
    y3 = pn(x3, GridLayout((5, 7), 3))
    torch.testing.assert_close(y3[:, :3], x3[:, :3])
    torch.testing.assert_close(y3[:, 3:], x3[:, 3:] + resample_abs_pe(pn.pos_embed, (5, 7), (4, 6), 0))
    assert set(pe.state_dict()) == {"pos_embed"}


def test_ape_cache_not_stale_and_grads():
    pe = AbsolutePE(8, (3, 4), num_prefix=1)
    with torch.no_grad():
        t1 = pe.get_table((5, 5))
        assert pe.get_table((5, 5)) is t1  # cached in no-grad
        pe.pos_embed.mul_(2.0)  # in-place update (as an optimizer step)
        t2 = pe.get_table((5, 5))
    torch.testing.assert_close(t2, 2 * t1)
    # grad mode: computed inline, gradients reach pos_embed at another grid
    pe.zero_grad()
    y = pe(torch.zeros(1, 1 + 25, 8), GridLayout((5, 5), 1))
    y.square().sum().backward()
    assert pe.pos_embed.grad is not None and pe.pos_embed.grad.abs().sum() > 0
    pe.cpu()  # _apply clears the cache
    assert pe._cache == {}


@pytest.mark.parametrize("name", ["ape", "ape_sincos"])
@pytest.mark.parametrize("grid,test_grid", [((4, 6), (3, 5)), ((2, 3, 4), (3, 2, 5))])
def test_forward_backward_two_grids(name, grid, test_grid):
    pe = vispos.build_pe(name, dim=32, num_heads=2, depth=2, grid=grid, num_prefix=1)
    for g in (grid, test_grid):
        lay = GridLayout(g, 1)
        x = torch.randn(2, lay.num_tokens, 32, requires_grad=True)
        y = pe(x, lay)
        assert y.shape == x.shape
        y.square().sum().backward()
        assert x.grad is not None
        if name == "ape":
            assert pe.pos_embed.grad.abs().sum() > 0
            pe.zero_grad()


def test_crop_aug():
    torch.testing.assert_close(
        crop_resample_abs_pe(t := torch.randn(1, 1 + 12, 8), (3, 4), (3, 4), torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]),
                             1, upsample=(3, 4)), t, atol=1e-6, rtol=0)
    b = sample_crop_boxes(64, generator=torch.Generator().manual_seed(1))
    area = b[:, 0, 1] * b[:, 1, 1]
    assert (area <= 1.0 + 1e-6).all() and (b[:, :, 0] >= 0).all() and (b[:, :, 0] + b[:, :, 1] <= 1 + 1e-6).all()
    pe = AbsolutePE(8, (4, 4), num_prefix=1, crop_aug=True)
    lay = GridLayout((4, 4), 1)
    x = torch.zeros(3, 17, 8)
    y = pe.train()(x, lay)
    assert not torch.allclose(y[0, 1:], y[1, 1:])  # one crop per sample
    torch.testing.assert_close(y[:, 0], pe.pos_embed[:, 0].expand(3, -1))  # prefix row untouched
    y.sum().backward()
    assert pe.pos_embed.grad.abs().sum() > 0
    torch.testing.assert_close(pe.eval()(x, lay), x + pe.pos_embed)  # off in eval
    with pytest.raises(ValueError, match="2D-only"):
        AbsolutePE(8, (2, 4, 4), crop_aug=True)


def test_errors():
    pe = AbsolutePE(8, (3, 4), num_prefix=1)
    with pytest.raises(ValueError, match="13"):
        pe(torch.randn(1, 14, 8), GridLayout((3, 4), 1))  # grid/token mismatch
    with pytest.raises(ValueError, match="prefix"):
        pe(torch.randn(1, 14, 8), GridLayout((3, 4), 2))
    with pytest.raises(ValueError, match="axes"):
        pe(torch.randn(1, 25, 8), GridLayout((2, 3, 4), 1))
    with pytest.raises(ValueError, match="channels"):
        pe(torch.randn(1, 13, 4), GridLayout((3, 4), 1))
    with pytest.raises(ValueError, match="2D-only"):
        SinCosPE(32, (2, 3, 4), style="timm")
    with pytest.raises(ValueError, match="divisible by 16"):
        SinCosPE(24, (2, 3, 4))
    with pytest.raises(ValueError, match="explicit positions"):
        pe(torch.randn(1, 13, 8), GridLayout((3, 4), 1, positions=((0, 2, 4), (0, 1, 2, 3))))
    with pytest.raises(ValueError, match="grid"):
        vispos.build_pe("ape", dim=8)


def test_registry_rows():
    rows = {r.name: r for r in vispos.list_pes()}
    for n in ("ape", "ape_sincos"):
        assert rows[n].ndims == (2, 3) and rows[n].hooks == ("token",)
    assert math.isclose(AbsolutePE(8, (2, 2), init_std=0.02).pos_embed.std().item(), 0.02, rel_tol=0.8)
