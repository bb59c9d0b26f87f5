"""Sin-cos APE with a fixed position scale (CogVideoX-2B) and Latte's layout, against diffusers; ViTAR fuzzy APE
(jittered sampling of the learned table): off in eval, seeded in train."""
import pytest
import torch

from vispos.grid import GridLayout
from vispos.pe.absolute import AbsolutePE, SinCosPE, build_sincos_3d, fuzzy_sample_abs_pe

emb = pytest.importorskip("diffusers.models.embeddings")


@pytest.mark.parametrize("grid", [(3, 4, 6), (2, 5, 3)])
def test_cogvideox_fixed_spatial_scale_at_every_grid(grid):
    pe = SinCosPE(64, (3, 4, 6), interpolation_scale=(1.0, 1.875, 1.875))
    T, H, W = grid
    ref = emb.get_3d_sincos_pos_embed(64, (W, H), T, spatial_interpolation_scale=1.875,
                                      temporal_interpolation_scale=1.0).reshape(-1, 64)
    ours = pe.full_table(GridLayout(grid))[0]
    assert (ours.double() - ref.double()).abs().max() < 1e-6
    plain = SinCosPE(64, (3, 4, 6)).full_table(GridLayout(grid))[0]
    assert (plain - ours).abs().max() > 1e-2  # the scale is applied


def test_latte_layout_equals_diffusers():
    T, S, D = 3, 4, 32
    pe = SinCosPE(D, (T, S, S), style="latte")
    spatial = emb.get_2d_sincos_pos_embed(D, S, base_size=S)  # (S*S, D)
    temporal = emb.get_1d_sincos_pos_embed_from_grid(D, torch.arange(T, dtype=torch.float32))  # (T, D)
    ref = (temporal[:, None, :] + spatial[None]).reshape(-1, D)
    ours = pe.full_table(GridLayout((T, S, S)))[0]
    assert (ours.double() - ref.double()).abs().max() < 1e-6
    cog = build_sincos_3d((T, S, S), D)
    assert (cog - ours).abs().max() > 1e-2
    with pytest.raises(ValueError, match="style"):
        SinCosPE(D, (T, S, S), style="mae")
    with pytest.raises(ValueError, match="interpolation_scale"):
        SinCosPE(D, (T, S, S), interpolation_scale=(1.0, 0.0, 1.0))


def test_fuzzy_ape_off_in_eval_seeded_in_train():
    torch.manual_seed(0)
    pe = AbsolutePE(8, (4, 4), num_prefix=1, fuzzy=0.5)
    lay = GridLayout((4, 4), num_prefix=1)
    x = torch.zeros(3, 17, 8)
    pe.eval()
    assert torch.equal(pe.forward_tokens(x, lay), pe.pos_embed.expand(3, -1, -1))
    pe.train()
    torch.manual_seed(1)
    a = pe.forward_tokens(x, lay)
    torch.manual_seed(1)
    b = pe.forward_tokens(x, lay)
    torch.manual_seed(2)
    c = pe.forward_tokens(x, lay)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-4
    assert (a[0] - a[1]).abs().max() > 1e-4  # one draw per sample
    assert torch.equal(a[:, :1], pe.pos_embed[:, :1].expand(3, -1, -1))  # prefix row unchanged
    # gradients reach the table
    a.sum().backward()
    assert pe.pos_embed.grad is not None and pe.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("grid", [(4, 4), (2, 3, 4)])
def test_fuzzy_zero_amount_is_the_table(grid):
    t = torch.randn(1, 1 + torch.Size(grid).numel(), 5)
    out = fuzzy_sample_abs_pe(t, grid, grid, 2, amount=0.0, num_prefix=1)
    assert out.shape == (2, t.shape[1], 5)
    assert (out - t).abs().max() < 1e-5
    big = tuple(2 * s for s in grid)
    assert fuzzy_sample_abs_pe(t, grid, big, 1, 0.5, 1).shape == (1, 1 + torch.Size(big).numel(), 5)


def test_fuzzy_bad_options():
    with pytest.raises(ValueError, match="fuzzy"):
        AbsolutePE(8, (4, 4), fuzzy=-1.0)
    with pytest.raises(ValueError, match="not both"):
        AbsolutePE(8, (4, 4), fuzzy=0.5, crop_aug=True)
