"""Image DiT hosts (FLUX-style `pos_embed(ids)`): every spatial rule, time-aware scaling, undo (CPU, tiny)."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.freqs import RULES, apply_rule, rope_freqs, rule_attention_factor  # noqa: E402


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(4, 6, 6)).eval()


def _ids(h, w, text=3):
    """FLUX's ids: text tokens all zero, then image tokens (0, row, column), as FluxPipeline builds them."""
    img = torch.zeros(h, w, 3)
    img[..., 1] += torch.arange(h)[:, None]
    img[..., 2] += torch.arange(w)[None, :]
    return torch.cat([torch.zeros(text, 3), img.reshape(-1, 3)])


def _inputs(h, w, t=0.9):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, h * w, 4, generator=g),
                encoder_hidden_states=torch.randn(1, 3, 8, generator=g), pooled_projections=torch.randn(1, 8, generator=g),
                timestep=torch.tensor([t]), img_ids=_ids(h, w, 0)[:, :], txt_ids=torch.zeros(3, 3), return_dict=False)


def _expected(rule, d, theta, pos):
    """The formula on FLUX's own RoPE: float64 bands (as FluxPosEmbed), the rule's bands where it changes them."""
    host = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    new = apply_rule(rope_freqs(d, theta), rule, theta, d)
    bands = torch.where(new != rope_freqs(d, theta), new, host)
    ang = torch.outer(pos.float(), bands)
    fac = rule_attention_factor(rule)
    return (ang.cos().repeat_interleave(2, 1).float() * fac, ang.sin().repeat_interleave(2, 1).float() * fac)


RULE_CASES = {"none": "none", "pi": "pi", "ntk": "ntk", "ntk_base": "ntk_base", "yarn": "yarn",
              "riflex": {"name": "riflex", "k": 1}}  # period 6 < 8 and 12 tokens


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_flux_equals_the_formula_and_undoes(flux, name):
    h, w = 12, 8  # tokens; trained at 4 x 4 tokens
    ids = _ids(h, w)
    ref = flux.pos_embed(ids)
    with vd.apply_rule(flux, space=RULE_CASES[name], height=h, width=w, train_height=4, train_width=4,
                       units="token") as hd:
        assert hd.host == "ids-style"
        got = flux.pos_embed(ids)
        for axis, (lo, d, n) in {"height": (4, 6, h), "width": (10, 6, w)}.items():
            rule = hd.axes[axis].resolve(n)
            exp = _expected(rule, d, 10000.0, ids[:, 1 if axis == "height" else 2])
            assert torch.equal(got[0][:, lo:lo + d], exp[0]) and torch.equal(got[1][:, lo:lo + d], exp[1]), axis
        assert torch.equal(got[0][:, :4], ref[0][:, :4])  # the index axis has no rule
        if name != "none":
            assert not _same(got, ref)
        out = flux(**_inputs(h, w))[0]
        assert torch.isfinite(out).all()
    assert _same(flux.pos_embed(ids), ref) and not flux.pos_embed._forward_hooks


@torch.no_grad()
def test_flux_rule_off_bit_identical_and_pixel_units(flux):
    x = _inputs(12, 8)
    ref = flux(**x)[0]
    with vd.apply_rule(flux, space="none"):
        assert torch.equal(flux(**x)[0], ref)
    with vd.apply_rule(flux, space="pi", height=12, width=8, train_height=12, train_width=8, units="token"):
        assert torch.equal(flux(**x)[0], ref)  # scale 1
    # pixels: FLUX's VAE compresses 8x and packs 2x2 latents per token: 1024 px = 64 tokens
    with vd.apply_rule(flux, space="pi", height=192, width=128, train_height=64, train_width=64, units="pixel") as h:
        flux.pos_embed(_ids(12, 8))
        assert torch.equal(h.last_bands["height"], rope_freqs(6, 10000.0) / 3)
        assert torch.equal(h.last_bands["width"], rope_freqs(6, 10000.0) / 2)
    assert torch.equal(flux(**x)[0], ref)


@torch.no_grad()
def test_time_aware_scaling_picks_the_rule_by_noise_level(flux):
    """Lumina-Next style: PI while sigma > switch (global layout), NTK base scaling after (detail)."""
    rule = vd.TimeAware(high_noise="pi", low_noise="ntk_base", switch=0.5)
    seen = []
    with vd.apply_rule(flux, space=rule, train_height=4, train_width=4, units="token") as h:
        # registered after the rule: torch runs post-hooks in order, so this one sees the adjusted tables
        rec = flux.pos_embed.register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
        flux(**_inputs(12, 8, t=0.9))
        high = h.last_bands["height"].clone()
        flux(**_inputs(12, 8, t=0.2))
        low = h.last_bands["height"].clone()
        with pytest.raises(ValueError, match="timestep"):
            flux.pos_embed(_ids(12, 8))  # called on its own: no timestep to choose by
    assert torch.equal(high, rope_freqs(6, 10000.0) / 3)  # PI, s = 12 / 4
    assert torch.equal(low, apply_rule(rope_freqs(6, 10000.0), {"name": "ntk_base", "train_len": 4.0,
                                                                 "test_len": 12.0}, 10000.0, 6))
    assert not torch.equal(seen[0], seen[1])
    flux(**_inputs(12, 8, t=0.9))
    rec.remove()
    assert torch.equal(seen[-1], flux.pos_embed(torch.cat([torch.zeros(3, 3), _ids(12, 8, 0)]))[0])  # undone
    with pytest.raises(ValueError, match="noise level"):
        vd.TimeAware(switch=1.5)
    assert math.isclose(vd.TimeAware().switch, 0.7)


@pytest.fixture(scope="module")
def qwen():
    torch.manual_seed(0)
    return diffusers.QwenImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=1,
        joint_attention_dim=8, axes_dims_rope=(4, 6, 6)).eval()


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_qwen_image_equals_the_formula_and_undoes(qwen, name):
    h, w, txt = 12, 8, 3  # tokens; trained at 4 x 4; rows / columns are signed, centred on 0 (scale_rope)
    shapes = [[(1, h, w)]]

    def call():
        return qwen.pos_embed(shapes, device=torch.device("cpu"), max_txt_seq_len=txt)

    ref = call()
    with vd.apply_rule(qwen, space=RULE_CASES[name], height=h, width=w, train_height=4, train_width=4,
                       units="token") as hd:
        assert hd.host == "qwen-style"
        vid, text = call()
        rows = torch.cat([torch.arange(-(h - h // 2), 0), torch.arange(0, h // 2)]).repeat_interleave(w)
        cols = torch.cat([torch.arange(-(w - w // 2), 0), torch.arange(0, w // 2)]).repeat(h)
        text_pos = torch.arange(max(h // 2, w // 2), max(h // 2, w // 2) + txt)
        for axis, (lo, n, pos) in {"height": (2, h, rows), "width": (5, w, cols)}.items():
            rule = hd.axes[axis].resolve(n)
            host = 1.0 / torch.pow(10000, torch.arange(0, 6, 2).to(torch.float32).div(6))
            new = apply_rule(rope_freqs(6, 10000.0), rule, 10000.0, 6)
            bands = torch.where(new != rope_freqs(6, 10000.0), new.float(), host)
            fac = rule_attention_factor(rule)
            for p, got in ((pos, vid), (text_pos, text)):
                ang = torch.outer(p, bands)
                assert torch.equal(got[:, lo:lo + 3], torch.polar(torch.full_like(ang, fac), ang)), axis
        assert torch.equal(vid[:, :2], ref[0][:, :2])
        if name != "none":
            assert not _same((vid, text), ref)
        x = dict(hidden_states=torch.randn(1, h * w, 4), encoder_hidden_states=torch.randn(1, txt, 8),
                 encoder_hidden_states_mask=torch.ones(1, txt), timestep=torch.tensor([0.5]), img_shapes=shapes,
                 return_dict=False)
        assert torch.isfinite(qwen(**x)[0]).all()
    assert _same(call(), ref) and not qwen.pos_embed._forward_hooks
