"""Allegro (pipeline-built RoPE), Qwen-Image layered, FLUX.2 / Flux3 (four-axis ids): each takes the rules equal to
the formula on its own RoPE, rules off bit-identical to diffusers, undo bit-exact (CPU, tiny random configs)."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.freqs import RULES, ScalingRule, apply_rule, rope_freqs, rule_attention_factor  # noqa: E402

RULE_CASES = {"none": "none", "pi": "pi", "ntk": "ntk", "ntk_base": "ntk_base", "yarn": "yarn",
              "riflex": {"name": "riflex", "k": 1}}


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _rule_bands(rule, per_pos, d, theta):
    """The rule on per-position bands ``per_pos`` (``b^(-2j/d) / c``); NTK rules rebuild from the base, so on a scaled
    band they act as the factor they put on ``b^(-2j/d)``."""
    canon = rope_freqs(d, theta)
    if rule.name in ("ntk", "ntk_base"):
        return per_pos * (apply_rule(canon, rule, theta, d) / canon)
    return apply_rule(per_pos, rule, theta, d)


# ---------------------------------------------------------------------------------------------------- Allegro
@pytest.fixture(scope="module")
def allegro():
    torch.manual_seed(0)
    model = diffusers.AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=1, attention_head_dim=12, in_channels=2, out_channels=2,
        num_layers=1, cross_attention_dim=12, sample_height=8, sample_width=8, sample_frames=8,
        caption_channels=8).eval()  # interpolation_scale (t, h, w) = (2.2, 2.0, 2.0), Allegro's defaults
    # the RoPE method reads only the transformer config and vae_scale_factor_spatial (8 without a VAE)
    return diffusers.AllegroPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=None)


def _allegro_rope(pipe, frames=20, h=64, w=48):
    return pipe._prepare_rotary_positional_embeddings(1, h, w, frames, "cpu")


def _allegro_forward(pipe, rope, frames=20, h=4, w=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, frames, 2 * h, 2 * w, generator=g)
    return pipe.transformer(x, encoder_hidden_states=torch.randn(1, 3, 8, generator=g), timestep=torch.tensor([500]),
                            image_rotary_emb=rope, return_dict=False)[0]


@torch.no_grad()
def test_allegro_rules_off_bit_identical_and_undo(allegro):
    ref = _allegro_rope(allegro)
    out = _allegro_forward(allegro, ref)
    for kw in (dict(time="none", space="none"),
               dict(time="pi", space="pi", num_frames=20, train_frames=20, height=8, width=6, train_height=8,
                    train_width=6)):  # scale 1
        with vd.apply_rule(allegro, **kw) as h:
            assert h.host == "allegro-pipeline"
            got = _allegro_rope(allegro)
            assert all(_same(a, b) for a, b in zip(got[0], ref[0])) and _same(got[1], ref[1])
            assert torch.equal(_allegro_forward(allegro, got), out)
    assert "_prepare_rotary_positional_embeddings" not in vars(allegro)  # the class method again
    with vd.apply_rule(allegro, time={"name": "riflex", "k": 1}, num_frames=20):
        assert not _same(_allegro_rope(allegro)[0][0], ref[0][0])
    got = _allegro_rope(allegro)
    assert all(_same(a, b) for a, b in zip(got[0], ref[0])) and _same(got[1], ref[1])
    assert "_prepare_rotary_positional_embeddings" not in vars(allegro)


@torch.no_grad()
def test_allegro_riflex_on_time_equals_the_formula(allegro):
    frames, train = 20, 8  # latent frames; component 1's period per latent frame: 2 pi * 2.2 = 13.8 < 20
    ref = _allegro_rope(allegro, frames)
    with vd.apply_rule(allegro, time="riflex", num_frames=frames, train_frames=train) as h:
        got = _allegro_rope(allegro, frames)
        (cos_t, sin_t), space_h, space_w = got[0]
        theta_k = 0.9 * 2 * math.pi / frames  # per latent frame (Allegro divides positions by 2.2)
        assert math.isclose(float(h.last_bands["time"][0]), theta_k, rel_tol=1e-12)
        assert torch.equal(h.last_bands["time"][1:], rope_freqs(4, 10000.0)[1:] / 2.2)
        pos = torch.arange(frames, dtype=torch.float64)
        for half in (0, 2):  # Allegro concatenates the two halves: column j and j + d/2 hold band j
            assert torch.allclose(cos_t[:, half].double(), torch.cos(pos * theta_k), atol=1e-6)
            assert torch.allclose(sin_t[:, half].double(), torch.sin(pos * theta_k), atol=1e-6)
            assert torch.equal(cos_t[:, half + 1], ref[0][0][0][:, half + 1])  # the other band untouched
        assert _same(space_h, ref[0][1]) and _same(space_w, ref[0][2]) and _same(got[1], ref[1])  # no rule on space
        assert torch.isfinite(_allegro_forward(allegro, got, frames)).all()
    assert all(_same(a, b) for a, b in zip(_allegro_rope(allegro, frames)[0], ref[0]))


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_allegro_equals_the_formula(allegro, name):
    hp, wp = 224, 64  # pixels: 14 x 4 tokens (vae 8, patch 2; 14 > 4 pi, RIFLEx k=1's period); trained at 2 x 2
    ref = _allegro_rope(allegro, 4, hp, wp)
    with vd.apply_rule(allegro, space=RULE_CASES[name], height=hp, width=wp, train_height=32, train_width=32,
                       units="pixel") as h:
        got = _allegro_rope(allegro, 4, hp, wp)[0]
        for i, (axis, n) in enumerate((("height", 14), ("width", 4)), start=1):
            rule = h.axes[axis].resolve(n)
            per_pos = rope_freqs(4, 10000.0) / 2.0
            new = _rule_bands(rule, per_pos, 4, 10000.0)
            assert torch.equal(h.last_bands[axis], new)
            fac = rule_attention_factor(rule)
            ang = torch.outer(torch.arange(n, dtype=torch.float64), new)
            exp = torch.cat([ang.cos(), ang.cos()], 1) * fac
            assert torch.allclose(got[i][0].double(), exp, atol=1e-6), axis
            unchanged = torch.cat([new == per_pos] * 2)
            if fac == 1.0:
                assert torch.equal(got[i][0][:, unchanged], ref[0][i][0][:, unchanged])
        assert _same(got[0], ref[0][0])  # the time axis has no rule
        if name != "none":
            assert not _same(got[1], ref[0][1])
    assert all(_same(a, b) for a, b in zip(_allegro_rope(allegro, 4, hp, wp)[0], ref[0]))


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_rule_on_allegros_time_axis_equals_the_formula(allegro, name):
    frames = 20  # latent frames; trained at 8
    ref = _allegro_rope(allegro, frames)
    with vd.apply_rule(allegro, time=RULE_CASES[name], num_frames=frames, train_frames=8) as h:
        got = _allegro_rope(allegro, frames)[0]
        rule = h.axes["time"].resolve(frames)
        new = _rule_bands(rule, rope_freqs(4, 10000.0) / 2.2, 4, 10000.0)
        assert torch.equal(h.last_bands["time"], new)
        ang = torch.outer(torch.arange(frames, dtype=torch.float64), new)
        fac = rule_attention_factor(rule)
        assert torch.allclose(got[0][0].double(), torch.cat([ang.cos(), ang.cos()], 1) * fac, atol=1e-6)
        assert torch.allclose(got[0][1].double(), torch.cat([ang.sin(), ang.sin()], 1) * fac, atol=1e-6)
        assert _same(got[1], ref[0][1]) and _same(got[2], ref[0][2])
        if name != "none":
            assert not _same(got[0], ref[0][0])
    assert all(_same(a, b) for a, b in zip(_allegro_rope(allegro, frames)[0], ref[0]))


def test_allegro_bare_transformer_and_look_alike_are_refused(allegro):
    with pytest.raises(ValueError, match="computed by the pipeline.*AllegroPipeline"):
        vd.apply_rule(allegro.transformer, time="riflex", train_frames=8)

    class Other(type(allegro)):
        def _prepare_rotary_positional_embeddings(self, batch_size, height, width, num_frames, device):
            (t, h, w), grids = super()._prepare_rotary_positional_embeddings(batch_size, height, width, num_frames,
                                                                             device)
            return (t, (h[0] * 2, h[1]), w), grids

    other = Other(tokenizer=None, text_encoder=None, vae=None, transformer=allegro.transformer, scheduler=None)
    with pytest.raises(ValueError, match="does not compute Allegro's RoPE"):
        vd.apply_rule(other, time="none")


# --------------------------------------------------------------------------------------- Qwen-Image layered
@pytest.fixture(scope="module")
def qwen_layered():
    torch.manual_seed(0)
    return diffusers.QwenImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=1,
        joint_attention_dim=8, axes_dims_rope=(4, 6, 6), use_layer3d_rope=True).eval()


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_qwen_layered_equals_the_formula_and_undoes(qwen_layered, name):
    h, w, txt, layers = 12, 8, 3, 2  # tokens; trained at 4 x 4; two layers and the condition image
    shapes = [[(1, h, w)] * (layers + 1)]

    def call():
        return qwen_layered.pos_embed(shapes, max_txt_seq_len=txt, device=torch.device("cpu"))

    ref = call()
    with vd.apply_rule(qwen_layered, space=RULE_CASES[name], height=h, width=w, train_height=4, train_width=4,
                       units="token") as hd:
        assert hd.host == "qwen-layer-style"
        vid, text = call()
        rows = torch.cat([torch.arange(-(h - h // 2), 0), torch.arange(0, h // 2)]).repeat_interleave(w)
        cols = torch.cat([torch.arange(-(w - w // 2), 0), torch.arange(0, w // 2)]).repeat(h)
        rows, cols = rows.repeat(layers + 1), cols.repeat(layers + 1)
        text_pos = torch.arange(max(h // 2, w // 2, layers), max(h // 2, w // 2, layers) + txt)
        for axis, (lo, n, pos) in {"height": (2, h, rows), "width": (5, w, cols)}.items():
            rule = hd.axes[axis].resolve(n)
            host = 1.0 / torch.pow(10000, torch.arange(0, 6, 2).to(torch.float32).div(6))
            new = apply_rule(rope_freqs(6, 10000.0), rule, 10000.0, 6)
            bands = torch.where(new != rope_freqs(6, 10000.0), new.float(), host)
            fac = rule_attention_factor(rule)
            for p, got in ((pos, vid), (text_pos, text)):
                ang = torch.outer(p, bands)
                assert torch.equal(got[:, lo:lo + 3], torch.polar(torch.full_like(ang, fac), ang)), axis
        assert torch.equal(vid[:, :2], ref[0][:, :2])  # the layer index axis: left alone
        index = torch.tensor([0, 1, -1]).repeat_interleave(h * w)  # layers 0, 1, the condition image at -1
        assert torch.equal(vid[:, 0], torch.polar(torch.ones(index.numel()), index * torch.tensor(1.0)))
        if name != "none":
            assert not _same((vid, text), ref)
        x = dict(hidden_states=torch.randn(1, (layers + 1) * h * w, 4), encoder_hidden_states=torch.randn(1, txt, 8),
                 encoder_hidden_states_mask=torch.ones(1, txt), timestep=torch.tensor([0.5]), img_shapes=shapes,
                 additional_t_cond=torch.tensor([0]), return_dict=False)
        assert torch.isfinite(qwen_layered(**x)[0]).all()
    assert _same(call(), ref) and not qwen_layered.pos_embed._forward_hooks


@torch.no_grad()
def test_qwen_layered_rules_off_bit_identical_and_index_rule_acts_on_layers(qwen_layered):
    shapes = [[(1, 6, 4)] * 3]
    x = dict(hidden_states=torch.randn(1, 72, 4, generator=torch.Generator().manual_seed(2)),
             encoder_hidden_states=torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(3)),
             encoder_hidden_states_mask=torch.ones(1, 3), timestep=torch.tensor([0.5]), img_shapes=shapes,
             additional_t_cond=torch.tensor([0]), return_dict=False)
    ref = qwen_layered(**x)[0]
    with vd.apply_rule(qwen_layered, time="none", space="none"):
        assert torch.equal(qwen_layered(**x)[0], ref)
    with vd.apply_rule(qwen_layered, space="pi", height=6, width=4, train_height=6, train_width=4, units="token"):
        assert torch.equal(qwen_layered(**x)[0], ref)  # scale 1
    # time= acts on the layer index axis (positions -1, 0, 1: 3 positions)
    with vd.apply_rule(qwen_layered, time={"name": "pi", "train_len": 1}, units="token") as h:
        vid, _ = qwen_layered.pos_embed(shapes, max_txt_seq_len=3, device=torch.device("cpu"))
        assert torch.equal(h.last_bands["index"], rope_freqs(4, 10000.0) / 3)
        assert torch.allclose(vid[24:48, 0], torch.polar(torch.ones(24), torch.full((24,), 1 / 3)))
    assert torch.equal(qwen_layered(**x)[0], ref)


# ------------------------------------------------------------------------------------------ FLUX.2 / Flux3
def _flux2():
    torch.manual_seed(0)
    return diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=1,
        joint_attention_dim=8, axes_dims_rope=(4, 4, 4, 4)).eval()  # rope_theta 2000, FLUX.2's


def _flux3():
    torch.manual_seed(0)
    return diffusers.Flux3Transformer2DModel(
        in_channels=4, cond_in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=1, joint_attention_dim=8, timestep_channels=8, axes_dims_rope=(4, 4, 4, 4)).eval()


def _img_ids(h, w, t=0):
    """(T, H, W, L) ids as Flux2Pipeline._prepare_latent_ids builds them."""
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(h), torch.arange(w), torch.tensor([0]))


def _txt_ids(n):
    return torch.cartesian_prod(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.arange(n))


def _flux4_inputs(model, h, w, t=0.9):
    g = torch.Generator().manual_seed(1)
    x = dict(hidden_states=torch.randn(1, h * w, 4, generator=g), encoder_hidden_states=torch.randn(1, 3, 8, generator=g),
             timestep=torch.tensor([t]), img_ids=_img_ids(h, w), txt_ids=_txt_ids(3), return_dict=False)
    if isinstance(model, diffusers.Flux2Transformer2DModel):
        x["guidance"] = torch.tensor([1.0])
    return x


@pytest.fixture(scope="module", params=["flux2", "flux3"])
def flux4(request):
    return _flux2() if request.param == "flux2" else _flux3()


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_four_axis_ids_equals_the_formula_and_undoes(flux4, name):
    h, w = 12, 8  # tokens; trained at 4 x 4 tokens
    rope = flux4.pos_embed
    theta = float(rope.theta)
    ids, txt = _img_ids(h, w).float(), _txt_ids(3).float()
    ref, ref_txt = rope(ids), rope(txt)
    x = _flux4_inputs(flux4, h, w)
    seen = []
    rec = rope.register_forward_hook(lambda m, a, out: seen.append(out))  # before the rule: sees the host's tables
    out_ref = flux4(**x)[0]
    rec.remove()
    with vd.apply_rule(flux4, space=RULE_CASES[name], height=h, width=w, train_height=4, train_width=4,
                       units="token") as hd:
        assert hd.host == "ids4-style"
        got = rope(ids)
        for axis, (lo, n, col) in {"height": (4, h, 1), "width": (8, w, 2)}.items():
            rule = hd.axes[axis].resolve(n)
            host = 1.0 / (theta ** (torch.arange(0, 4, 2, dtype=torch.float64) / 4))
            new = apply_rule(rope_freqs(4, theta), rule, theta, 4)
            bands = torch.where(new != rope_freqs(4, theta), new, host)
            ang = torch.outer(ids[:, col], bands)
            fac = rule_attention_factor(rule)
            assert torch.equal(got[0][:, lo:lo + 4], ang.cos().repeat_interleave(2, 1).float() * fac), axis
            assert torch.equal(got[1][:, lo:lo + 4], ang.sin().repeat_interleave(2, 1).float() * fac), axis
        for lo in (0, 12):  # the index and layer axes: the host's
            assert torch.equal(got[0][:, lo:lo + 4], ref[0][:, lo:lo + 4])
        if name != "none":
            assert not _same(got, ref)
        out = flux4(**x)[0]
        assert torch.isfinite(out).all() and (name == "none") == torch.equal(out, out_ref)
    assert _same(rope(ids), ref) and _same(rope(txt), ref_txt) and not rope._forward_hooks
    assert torch.equal(flux4(**x)[0], out_ref)


@torch.no_grad()
def test_four_axis_ids_text_gets_the_image_grids_rule_and_time_aware(flux4):
    """Text ids go through pos_embed in their own call: inside a transformer call the rules see the image grid
    (img_ids), so a YaRN attention factor reaches the text's row / column columns too."""
    rope, h, w = flux4.pos_embed, 12, 8
    theta = float(rope.theta)
    tables = []
    with vd.apply_rule(flux4, space="yarn", train_height=4, train_width=4, units="token"):
        rec = rope.register_forward_hook(lambda m, a, out: tables.append((a[0].clone(), out)))
        flux4(**_flux4_inputs(flux4, h, w))
        rec.remove()
    text = [out for ids, out in tables if ids.shape[0] == 3][0]
    fac = rule_attention_factor(ScalingRule("yarn", train_len=4.0, test_len=12.0))
    assert fac != 1.0 and torch.allclose(text[0][:, 4:8], torch.full((3, 4), fac))
    # time-aware: PI while sigma > 0.5, NTK base scaling after
    rule = vd.TimeAware(high_noise="pi", low_noise="ntk_base", switch=0.5)
    with vd.apply_rule(flux4, space=rule, train_height=4, train_width=4, units="token") as hd:
        flux4(**_flux4_inputs(flux4, h, w, t=0.9))
        high = hd.last_bands["height"].clone()
        flux4(**_flux4_inputs(flux4, h, w, t=0.2))
        low = hd.last_bands["height"].clone()
    assert torch.equal(high, rope_freqs(4, theta) / 3)
    assert torch.equal(low, apply_rule(rope_freqs(4, theta), {"name": "ntk_base", "train_len": 4.0,
                                                              "test_len": 12.0}, theta, 4))


# ------------------------------------------------------------------------------------------------- Krea 2
@pytest.fixture(scope="module")
def krea2():
    torch.manual_seed(0)
    return diffusers.Krea2Transformer2DModel(
        in_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=1, num_key_value_heads=1,
        intermediate_size=8, timestep_embed_dim=8, text_hidden_dim=8, num_text_layers=2, text_num_attention_heads=1,
        text_num_key_value_heads=1, text_intermediate_size=8, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6)).eval()  # rope_theta 1000, Krea 2's


def _krea2_ids(h, w, text=3):
    """Krea2Pipeline.prepare_position_ids: text rows all zero, then image rows (0, row, column)."""
    img = torch.cartesian_prod(torch.tensor([0.0]), torch.arange(float(h)), torch.arange(float(w)))
    return torch.cat([torch.zeros(text, 3), img])


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_krea2_equals_the_formula_and_undoes(krea2, name):
    h, w = 12, 8  # tokens; trained at 4 x 4
    rope, ids = krea2.rotary_emb, _krea2_ids(12, 8)
    theta = float(rope.theta)
    g = torch.Generator().manual_seed(1)
    x = dict(hidden_states=torch.randn(1, h * w, 4, generator=g), encoder_hidden_states=torch.randn(1, 3, 2, 8, generator=g),
             timestep=torch.tensor([0.5]), position_ids=ids, return_dict=False)
    ref, out_ref = rope(ids), krea2(**x)[0]
    with vd.apply_rule(krea2, space=RULE_CASES[name], height=h, width=w, train_height=4, train_width=4,
                       units="token") as hd:
        assert hd.host == "ids-style"
        got = rope(ids)
        for axis, (lo, col) in {"height": (4, 1), "width": (10, 2)}.items():
            rule = hd.axes[axis].resolve(h if axis == "height" else w)
            host = 1.0 / (theta ** (torch.arange(0, 6, 2, dtype=torch.float64) / 6))
            new = apply_rule(rope_freqs(6, theta), rule, theta, 6)
            ang = torch.outer(ids[:, col], torch.where(new != rope_freqs(6, theta), new, host))
            fac = rule_attention_factor(rule)
            assert torch.equal(got[0][:, lo:lo + 6], ang.cos().repeat_interleave(2, 1).float() * fac), axis
        assert torch.equal(got[0][:, :4], ref[0][:, :4])
        out = krea2(**x)[0]
        assert torch.isfinite(out).all() and (name == "none") == torch.equal(out, out_ref)
    assert _same(rope(ids), ref) and torch.equal(krea2(**x)[0], out_ref) and not rope._forward_hooks


# ------------------------------------------------------------------------------------------- HunyuanImage
@pytest.fixture(scope="module")
def hyimage():
    torch.manual_seed(0)
    return diffusers.HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=1, attention_head_dim=16, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, mlp_ratio=1.0, text_embed_dim=8, rope_axes_dim=(8, 8)).eval()  # theta 256


def _hy_x(h, w, t=500.0):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 4, h, w, generator=g), timestep=torch.tensor([t]),
                encoder_hidden_states=torch.randn(1, 3, 8, generator=g), encoder_attention_mask=torch.ones(1, 3),
                return_dict=False)


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_hunyuanimage_equals_the_formula_and_undoes(hyimage, name):
    h, w = 12, 8  # latent pixels = tokens (patch 1); trained at 4 x 4
    x = _hy_x(h, w)
    ref, out_ref = hyimage.rope(x["hidden_states"]), hyimage(**x)[0]
    rows = torch.arange(h, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float32).repeat(h)
    with vd.apply_rule(hyimage, space=RULE_CASES[name], train_height=4, train_width=4) as hd:
        assert hd.host == "hunyuanimage-style"
        got = hyimage.rope(x["hidden_states"])
        for axis, (lo, n, pos) in {"height": (0, h, rows), "width": (8, w, cols)}.items():
            rule = hd.axes[axis].resolve(n)
            host = 1.0 / (256.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
            new = apply_rule(rope_freqs(8, 256.0), rule, 256.0, 8)
            ang = torch.outer(pos, torch.where(new != rope_freqs(8, 256.0), new.float(), host))
            fac = rule_attention_factor(rule)
            assert torch.equal(got[0][:, lo:lo + 8], ang.cos().repeat_interleave(2, 1).float() * fac), axis
            assert torch.equal(got[1][:, lo:lo + 8], ang.sin().repeat_interleave(2, 1).float() * fac), axis
        out = hyimage(**x)[0]
        assert torch.isfinite(out).all() and (name == "none") == torch.equal(out, out_ref)
    assert _same(hyimage.rope(x["hidden_states"]), ref) and torch.equal(hyimage(**x)[0], out_ref)
    assert not hyimage.rope._forward_hooks and not hyimage._forward_pre_hooks


@torch.no_grad()
def test_hunyuanimage_units_time_aware_and_no_time_axis(hyimage):
    # pixels: HunyuanImage 2.1's VAE compresses 32x (patch 1): 384 x 256 px = 12 x 8 tokens
    with vd.apply_rule(hyimage, space="pi", height=384, width=256, train_height=128, train_width=128,
                       units="pixel") as h:
        hyimage.rope(torch.zeros(1, 4, 12, 8))
        assert torch.equal(h.last_bands["height"], rope_freqs(8, 256.0) / 3)
        assert torch.equal(h.last_bands["width"], rope_freqs(8, 256.0) / 2)
    # the pipeline passes the scheduler's timestep (sigma * 1000)
    with vd.apply_rule(hyimage, space=vd.TimeAware("pi", "ntk_base", switch=0.5), train_height=4,
                       train_width=4) as h:
        hyimage(**_hy_x(12, 8, t=900.0))
        high = h.last_bands["height"].clone()
        hyimage(**_hy_x(12, 8, t=200.0))
        low = h.last_bands["height"].clone()
    assert torch.equal(high, rope_freqs(8, 256.0) / 3)
    assert torch.equal(low, apply_rule(rope_freqs(8, 256.0), {"name": "ntk_base", "train_len": 4.0, "test_len": 12.0},
                                       256.0, 8))
    with pytest.raises(ValueError, match="time axis has 0 components"):  # a 2-axis rope has no frame axis
        vd.apply_rule(hyimage, time={"name": "riflex", "k": 1})
    with pytest.raises(ValueError, match="no rotary components"):
        vd.apply_rule(hyimage, time="pi", train_frames=1)


@torch.no_grad()
def test_hunyuanimage_three_axis_rope_takes_riflex_on_frames():
    """The refiner's layout: patch_size and rope_dim of three, 5-D latents (frames, rows, columns)."""
    torch.manual_seed(0)
    model = diffusers.HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=1, attention_head_dim=16, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, mlp_ratio=1.0, text_embed_dim=8, patch_size=(1, 1, 1), rope_axes_dim=(4, 6, 6)).eval()
    hs = torch.zeros(1, 4, 10, 2, 3)
    ref = model.rope(hs)
    with vd.apply_rule(model, time={"name": "riflex", "k": 1}, num_frames=10) as h:
        got = model.rope(hs)
        theta_k = 0.9 * 2 * math.pi / 10  # band 1 (1.0, period 6.3 < 10) lowered
        assert math.isclose(float(h.last_bands["time"][0]), theta_k, rel_tol=1e-12)
        frames = torch.arange(10, dtype=torch.float32).repeat_interleave(6)
        assert torch.equal(got[0][:, 0], torch.cos(frames * torch.tensor(theta_k, dtype=torch.float32)))
        assert torch.equal(got[0][:, 2:], ref[0][:, 2:])
    assert _same(model.rope(hs), ref)


# ---------------------------------------------------------------------------------- Z-Image RopeEmbedder
@pytest.fixture(scope="module")
def zimage():
    torch.manual_seed(0)
    return diffusers.ZImageTransformer2DModel(
        in_channels=4, dim=16, n_layers=1, n_refiner_layers=1, n_heads=1, n_kv_heads=1, cap_feat_dim=8,
        axes_dims=[4, 6, 6], axes_lens=[64, 16, 16]).eval()  # theta 256; tables of 16 rows / columns


def _z_run(model, h=24, w=16):
    g = torch.Generator().manual_seed(1)
    return model([torch.randn(4, 1, h, w, generator=g)], torch.tensor([0.5]), [torch.randn(5, 8, generator=g)],
                 return_dict=False)[0][0]


@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_zimage_equals_the_formula_and_undoes(zimage, name):
    emb = zimage.rope_embedder
    ids = torch.cat([torch.cartesian_prod(torch.arange(1, 33), torch.tensor([0]), torch.tensor([0])),  # caption
                     torch.cartesian_prod(torch.tensor([33]), torch.arange(12), torch.arange(8))])  # image (cap + 1)
    ref, out_ref = emb(ids), _z_run(zimage)
    with vd.apply_rule(zimage, space=RULE_CASES[name], height=12, width=8, train_height=4, train_width=4,
                       units="token") as hd:
        assert hd.host == "rope-embedder"
        got = zimage.rope_embedder(ids)
        for axis, (lo, col) in {"height": (2, 1), "width": (5, 2)}.items():
            rule = hd.axes[axis].resolve(12 if axis == "height" else 8)
            host = 1.0 / (256.0 ** (torch.arange(0, 6, 2, dtype=torch.float64) / 6))
            new = apply_rule(rope_freqs(6, 256.0), rule, 256.0, 6)
            ang = torch.outer(ids[:, col].double(), torch.where(new != rope_freqs(6, 256.0), new, host)).float()
            exp = torch.polar(torch.full_like(ang, rule_attention_factor(rule)), ang)
            assert torch.equal(got[:, lo:lo + 3], exp), axis
        assert torch.equal(got[:, :2], ref[:, :2])  # the index axis has no rule
        out = _z_run(zimage)
        assert torch.isfinite(out).all() and (name == "none") == torch.equal(out, out_ref)
    assert zimage.rope_embedder is emb and torch.equal(emb(ids), ref) and torch.equal(_z_run(zimage), out_ref)
    assert not zimage._forward_pre_hooks


@torch.no_grad()
def test_zimage_rule_reaches_past_axes_lens_and_refuses_time_aware(zimage):
    with pytest.raises(IndexError):
        _z_run(zimage, h=48)  # 24 token rows > the 16-row tables: diffusers alone fails here
    with vd.apply_rule(zimage, space="pi", train_height=8, train_width=8, units="token") as h:
        out = _z_run(zimage, h=48)
        assert out.shape == (4, 1, 48, 16) and torch.isfinite(out).all()
        assert torch.equal(h.last_bands["height"], rope_freqs(6, 256.0) / 3)  # 24 rows / 8
    with pytest.raises(ValueError, match="no timestep argument"):  # Z-Image's forward takes `t`
        vd.apply_rule(zimage, space=vd.TimeAware(), train_height=8, train_width=8)
    assert type(zimage.rope_embedder).__name__ == "RopeEmbedder"


@torch.no_grad()
def test_briafibo2_rope_embedder_copy_takes_rules_like_zimage():
    from diffusers.models.transformers import transformer_bria_fibo2, transformer_z_image

    ids = torch.cartesian_prod(torch.tensor([1]), torch.arange(12), torch.arange(8))
    outs = []
    for module in (transformer_z_image, transformer_bria_fibo2):
        holder = torch.nn.Module()
        holder.rope_embedder = module.RopeEmbedder(theta=256.0, axes_dims=[4, 6, 6], axes_lens=[8, 16, 16])
        ref = holder.rope_embedder(ids)
        with vd.apply_rule(holder, space="yarn", height=12, width=8, train_height=4, train_width=4,
                           units="token") as h:
            assert h.host == "rope-embedder"
            outs.append(holder.rope_embedder(ids))
        assert torch.equal(holder.rope_embedder(ids), ref) and not torch.equal(outs[-1], ref)
    assert torch.equal(outs[0], outs[1])


def _look_alikes():
    """Each new layout's rope module, subclassed to compute something else (the structure kept)."""
    from diffusers.models.transformers import (
        transformer_flux2,
        transformer_glm_image,
        transformer_hunyuanimage,
        transformer_qwenimage,
        transformer_z_image,
    )

    class Flux2Off(transformer_flux2.Flux2PosEmbed):
        def forward(self, ids):
            cos, sin = super().forward(ids)
            return cos * 0.5, sin

    class HyOff(transformer_hunyuanimage.HunyuanImageRotaryPosEmbed):
        def forward(self, hidden_states):
            cos, sin = super().forward(hidden_states)
            return cos.flip(0), sin

    class QwenOff(transformer_qwenimage.QwenEmbedLayer3DRope):
        def forward(self, video_fhw, max_txt_seq_len, device=None):
            vid, txt = super().forward(video_fhw, max_txt_seq_len, device)
            return vid.flip(0), txt

    class GlmOff(transformer_glm_image.GlmImageRotaryPosEmbed):
        def forward(self, hidden_states):
            cos, sin = super().forward(hidden_states)
            return sin, cos

    class ZOff(transformer_z_image.RopeEmbedder):
        def __call__(self, ids):
            return super().__call__(ids.flip(0))

    return [("pos_embed", Flux2Off(2000, [4, 4, 4, 4]), "four-axis ids"),
            ("rope", HyOff([1, 1], [8, 8], 256.0), "HunyuanImage-style"),
            ("pos_embed", QwenOff(10000, [4, 6, 6], scale_rope=True), "layered RoPE"),
            ("rope_embedder", ZOff(256.0, [4, 6, 6], [8, 16, 16]), "RopeEmbedder"),
            ("rope", GlmOff(24, 2), "GLM-Image-style")]


@pytest.mark.parametrize("case", range(5))
def test_a_look_alike_of_each_new_layout_is_refused(case):
    attr, rope, why = _look_alikes()[case]
    holder = torch.nn.Module()
    setattr(holder, attr, rope)
    with pytest.raises(ValueError, match=why):
        vd.apply_rule(holder, space="pi", train_height=4, train_width=4)


# ------------------------------------------------------------------------------------------------ GLM-Image
@pytest.mark.parametrize("name", RULES)
@torch.no_grad()
def test_every_spatial_rule_on_glm_image_equals_the_formula_and_undoes(name):
    from diffusers.models.transformers.transformer_glm_image import GlmImageRotaryPosEmbed

    holder = torch.nn.Module()  # GlmImageTransformer2DModel keeps exactly this module as `rope`
    holder.rope = GlmImageRotaryPosEmbed(24, 2, theta=10000.0)  # attention_head_dim 24: 6 bands per axis
    hs = torch.zeros(1, 4, 24, 16)  # 12 x 8 tokens (patch 2); trained at 4 x 4
    ref = holder.rope(hs)
    with vd.apply_rule(holder, space=RULE_CASES[name], train_height=4, train_width=4) as hd:
        assert hd.host == "glm-image-style"
        got = holder.rope(hs)
        rows, cols = torch.arange(12).repeat_interleave(8), torch.arange(8).repeat(12)
        for i, (axis, n, pos) in enumerate((("height", 12, rows), ("width", 8, cols))):
            rule = hd.axes[axis].resolve(n)
            host = 1.0 / (10000.0 ** (torch.arange(0, 12, 2, dtype=torch.float32) / 12))
            new = apply_rule(rope_freqs(12, 10000.0), rule, 10000.0, 12)
            ang = torch.outer(pos, torch.where(new != rope_freqs(12, 10000.0), new.float(), host))
            fac = rule_attention_factor(rule)
            for lo in (6 * i, 12 + 6 * i):  # [rows, columns, rows, columns]
                assert torch.equal(got[0][:, lo:lo + 6], ang.cos() * fac), (axis, lo)
                assert torch.equal(got[1][:, lo:lo + 6], ang.sin() * fac), (axis, lo)
        if name != "none":
            assert not _same(got, ref)
    assert _same(holder.rope(hs), ref) and not holder.rope._forward_hooks
    with pytest.raises(ValueError, match="time axis has 0 components|no rotary components"):
        vd.apply_rule(holder, time="pi", train_frames=1)
