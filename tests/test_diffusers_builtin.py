"""Cosmos and Kandinsky 5 / 6 (built-in RoPE scaling as vispos rules), ChronoEdit and LTX-2's video stream: rules
off bit-identical to diffusers, RIFLEx equal to the formula on their own RoPE, the built-in scaling reproduced
bit-exactly as vispos rules and replaceable, undo bit-exact. Tiny random configs built here (CPU, no downloads)."""
import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.freqs import ScalingRule, apply_rule, rope_freqs  # noqa: E402


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _riflex(theta, length):
    period = round(2 * math.pi / theta)
    return min(theta, 0.9 * 2 * math.pi / length) if length > period else theta


# ------------------------------------------------------------------------------------------------------ Cosmos
def _cosmos(rope_scale):
    torch.manual_seed(0)
    return diffusers.CosmosTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=24, num_layers=1, text_embed_dim=8,
        adaln_lora_dim=4, max_size=(32, 16, 16), patch_size=(1, 1, 1), rope_scale=rope_scale,
        concat_padding_mask=False, extra_pos_embed_type=None).eval()


@pytest.fixture(scope="module")
def cosmos():
    return _cosmos((2.0, 3.0, 3.0))


FRAMES, FPS = 20, 30  # positions i * 24 / 30


@torch.no_grad()
def test_cosmos_rules_off_builtin_ntk_as_rules_and_undo(cosmos):
    x = torch.zeros(1, 2, FRAMES, 3, 4)
    own = {fps: cosmos.rope(x, fps=fps) for fps in (None, FPS)}
    rules = vd.builtin_rules(cosmos)
    d = 8  # dim_t = dim_h = dim_w = 8 for head dim 24
    assert rules["time"] == ScalingRule("ntk_base", factor=2.0 ** (d / (d - 2)))
    assert rules["height"] == rules["width"] == ScalingRule("ntk_base", factor=3.0 ** (d / (d - 2)))
    with vd.apply_rule(cosmos, time="none", space="none") as h:
        assert h.host == "cosmos-style"
        assert all(_same(cosmos.rope(x, fps=f), own[f]) for f in own)
    # the built-in NTK as vispos rules: bit-identical, on this model and on one built without it
    neutral = _cosmos((1.0, 1.0, 1.0))
    assert not _same(neutral.rope(x, fps=FPS), own[FPS])
    for model in (cosmos, neutral):
        with vd.apply_rule(model, time=rules["time"], space=(rules["height"], rules["width"])):
            assert all(_same(model.rope(x, fps=f), own[f]) for f in own)
    # the NTK rule at scale rope_scale (lengths 1 -> 2 and 1 -> 3) is the same base multiplier
    with vd.apply_rule(neutral, time={"name": "ntk", "train_len": 1, "test_len": 2},
                       space={"name": "ntk", "train_len": 1, "test_len": 3}, units="token"):
        assert _same(neutral.rope(x, fps=FPS), own[FPS])
    assert all(_same(cosmos.rope(x, fps=f), own[f]) for f in own) and not cosmos.rope._forward_hooks
    assert not neutral.rope._forward_hooks
    # Cosmos's fps-scaled time is position interpolation by fps / base_fps on its per-latent-frame bands
    with vd.apply_rule(cosmos) as h:
        cosmos.rope(x, fps=16)
        pi = apply_rule(rope_freqs(d, 10000.0 * rules["time"].factor), {"name": "pi", "factor": 16 / 24}, 1e4, d)
        assert torch.allclose(h.last_bands["time"], pi, rtol=1e-15, atol=0)


@torch.no_grad()
def test_cosmos_builtin_factor_below_one_is_reproduced():
    model = _cosmos((20 / 24, 2.0, 2.0))  # Cosmos 2.0 14B's rope_scale: a temporal NTK factor below 1
    x = torch.zeros(1, 2, 12, 2, 2)
    own = model.rope(x, fps=16)
    rules = vd.builtin_rules(model)
    assert rules["time"].factor == (20 / 24) ** (8 / 6) < 1
    for m in (model, _cosmos((1.0, 1.0, 1.0))):
        with vd.apply_rule(m, time=rules["time"], space=(rules["height"], rules["width"])):
            assert _same(m.rope(x, fps=16), own)


@torch.no_grad()
def test_cosmos_riflex_on_time_keeps_the_builtin_ntk_and_yarn_on_space_replaces_it(cosmos):
    x = torch.zeros(1, 2, FRAMES, 3, 4)
    own = cosmos.rope(x, fps=FPS)
    step = 24 / FPS  # Cosmos's temporal position of latent frame i is i * base_fps / fps
    bands = [10000.0 ** (-2 * j / 8) for j in range(4)]
    new = _riflex(bands[0], FRAMES * step)  # k = 1 (period 6 positions) over 16 positions
    assert new != bands[0]
    with vd.apply_rule(cosmos, time={"name": "riflex", "k": 1}, num_frames=FRAMES) as h:
        cos, sin = cosmos.rope(x, fps=FPS)
        # per latent frame: 0.9 * 2pi / L' in latent frames
        assert h.last_bands["time"][0].item() == pytest.approx(0.9 * 2 * math.pi / FRAMES, rel=1e-12)
    pos = torch.arange(FRAMES, dtype=torch.float32) / FPS * 24
    time_cols = cos.reshape(FRAMES, 3, 4, -1)[:, 0, 0]  # (T, 24): [t(4), h(4), w(4)] * 2
    own_cols = own[0].reshape(FRAMES, 3, 4, -1)[:, 0, 0]
    for j in range(4):  # RIFLEx acts on the model's own (NTK-scaled) bands: the k-th lowered, the others the host's
        if j:
            assert torch.equal(time_cols[:, j], own_cols[:, j])
        else:
            assert torch.equal(time_cols[:, j], (pos * torch.tensor(new, dtype=torch.float32)).cos())
        assert torch.equal(time_cols[:, 12 + j], time_cols[:, j])
    spatial = [c for c in range(24) if c % 12 >= 4]
    assert torch.equal(cos[:, spatial], own[0][:, spatial]) and torch.equal(sin[:, spatial], own[1][:, spatial])
    # YaRN on space instead of the built-in NTK: vispos's YaRN bands of base 10000
    yarn = {"name": "yarn", "attn_factor": False}
    with vd.apply_rule(cosmos, space=yarn, height=6, width=8, train_height=3, train_width=4) as h:
        got = cosmos.rope(torch.zeros(1, 2, 2, 6, 8), fps=FPS)
        want = apply_rule(rope_freqs(8, 10000.0), ScalingRule("yarn", 3.0, 6.0, attn_factor=False), 10000.0, 8)
        assert torch.equal(h.last_bands["height"], want)
    rows = got[0].reshape(2, 6, 8, -1)[0, :, 0, 4:8]
    assert torch.allclose(rows, (torch.arange(6.0)[:, None] * want.float()).cos(), atol=1e-6)
    assert _same(cosmos.rope(x, fps=FPS), own)


@torch.no_grad()
def test_cosmos_transformer_forward_takes_the_rule_and_undoes(cosmos):
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 2, FRAMES, 2, 2, generator=g), timestep=torch.tensor([0.5]),
                  encoder_hidden_states=torch.randn(1, 3, 8, generator=g), fps=FPS, return_dict=False)
    ref = cosmos(**inputs)[0]
    with vd.apply_rule(cosmos, time="none"):
        assert torch.equal(cosmos(**inputs)[0], ref)
    with vd.apply_rule(cosmos, time={"name": "riflex", "k": 1}, num_frames=FRAMES):
        assert not torch.equal(cosmos(**inputs)[0], ref)
    assert torch.equal(cosmos(**inputs)[0], ref)


# --------------------------------------------------------------------------------------------------- Kandinsky
def _kandinsky(cls_name):
    torch.manual_seed(0)
    cls = getattr(diffusers, cls_name)
    if cls_name == "Kandinsky5Transformer3DModel":
        return cls(in_visual_dim=2, in_text_dim=8, in_text_dim2=8, time_dim=8, out_visual_dim=2, model_dim=16,
                   ff_dim=16, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6)).eval()
    if cls_name == "Kandinsky6Transformer3DModel":
        return cls(in_visual_dim=2, out_visual_dim=2, in_text_dim=8, in_text_dim2=8, time_dim=8, model_dim=16,
                   ff_dim=16, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6), visual_cond=False,
                   in_audio_dim=2, out_audio_dim=2, model_dim_a=16, time_dim_a=8, ff_dim_a=16,
                   axes_dims_a=(16,)).eval()
    return cls(in_visual_dim=2, out_visual_dim=2, time_dim=8, model_dim=16, ff_dim=16, num_visual_blocks=1,
               axes_dims=(4, 6, 6)).eval()


def _k_call(model, pos, sf):
    rope = model.visual_rope_embeddings
    if isinstance(model, diffusers.Kandinsky5Transformer3DModel):
        return rope((1, *(len(p) for p in pos)), pos, sf)
    return rope(pos, sf)


KANDINSKY = ["Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel", "Kandinsky6SRTransformer3DModel"]


@pytest.mark.parametrize("cls_name", KANDINSKY)
@torch.no_grad()
def test_kandinsky_builtin_pi_as_rules_riflex_formula_and_undo(cls_name):
    model = _kandinsky(cls_name)
    rope = model.visual_rope_embeddings
    frames = 30
    pos = [torch.arange(frames), torch.arange(3), torch.arange(4)]
    sf = (1.0, 2.0, 2.0)  # Kandinsky 6's default; Kandinsky 5's pipeline picks (1, 2, 2) at 480p-854
    own = _k_call(model, pos, sf)
    bufs = [getattr(rope, n) for n in vars(rope)["_buffers"]]
    with vd.apply_rule(model, time="none", space="none") as h:
        assert h.host == "kandinsky-style" and _same(_k_call(model, pos, sf), own)
    if cls_name == "Kandinsky5Transformer3DModel":
        with pytest.raises(ValueError, match=r"pass scale_factor=\(t, h, w\)"):
            vd.builtin_rules(model)
        rules = vd.builtin_rules(model, scale_factor=sf)
    else:
        rules = vd.builtin_rules(model)  # held by the transformer
    assert rules == {"time": ScalingRule("none"), "height": ScalingRule("pi", factor=2.0),
                     "width": ScalingRule("pi", factor=2.0)}
    # the built-in interpolation as vispos rules: bit-identical, also when the call passes no scale_factor
    with vd.apply_rule(model, time=rules["time"], space=(rules["height"], rules["width"])):
        assert _same(_k_call(model, pos, sf), own) and _same(_k_call(model, pos, (1.0, 1.0, 1.0)), own)
    # replaceable: RIFLEx on time, NTK on the width instead of its interpolation
    theta = 10000.0 ** (-2 * 0 / 4)  # time dim 4: bands 1, 0.01; k = 1 (period 6) over 30 frames
    new = _riflex(theta, frames)
    with vd.apply_rule(model, time={"name": "riflex", "k": 1}, space=("none", "ntk"), num_frames=frames,
                       train_width=2, units="token") as h:
        got = _k_call(model, pos, sf)
        assert h.last_bands["time"][0].item() == new
        one_d = [m for n, m in model.named_modules() if type(m).__name__.endswith("RoPE1D")]  # text / audio
        assert len(one_d) == {"Kandinsky5Transformer3DModel": 1, "Kandinsky6Transformer3DModel": 3}.get(cls_name, 0)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in one_d)  # left untouched
        assert torch.equal(h.last_bands["width"], apply_rule(rope_freqs(6, 10000.0), ScalingRule("ntk", 2, 4),
                                                            10000.0, 6))
    flat, ref = got.reshape(-1, 8, 2, 2), own.reshape(-1, 8, 2, 2)  # (T*H*W, 2 + 3 + 3 bands, 2, 2)
    t_pos = torch.arange(frames).repeat_interleave(12).float()
    assert torch.equal(flat[:, 0, 0, 0], (t_pos * torch.tensor(new, dtype=torch.float32)).cos())
    assert torch.equal(flat[:, 1], ref[:, 1])  # the other time band: untouched (its scale factor is 1)
    assert torch.equal(flat[:, 2:5], ref[:, 2:5])  # height keeps its interpolation (rule none)
    assert not torch.equal(flat[:, 5:], ref[:, 5:])  # width: NTK replaced the interpolation
    assert _same(_k_call(model, pos, sf), own) and not rope._forward_pre_hooks
    assert all(a is b for a, b in zip([getattr(rope, n) for n in vars(rope)["_buffers"]], bufs))


@torch.no_grad()
def test_kandinsky_text_rope_untouched_and_positions_past_the_buffer():
    model = _kandinsky("Kandinsky5Transformer3DModel")
    text = model.text_rope_embeddings(torch.arange(5))
    pos = [torch.arange(140), torch.arange(2), torch.arange(2)]  # 140 > max_pos 128: diffusers alone fails
    with pytest.raises(IndexError):
        _k_call(model, pos, (1, 1, 1))
    with vd.apply_rule(model, time={"name": "riflex", "k": 1}):
        assert torch.equal(model.text_rope_embeddings(torch.arange(5)), text)
        assert not model.text_rope_embeddings._forward_pre_hooks and not model.text_rope_embeddings._forward_hooks
        out = _k_call(model, pos, (1, 1, 1))
        assert out.shape[1] == 140
    assert model.visual_rope_embeddings.args_0.shape[0] == 128


@torch.no_grad()
def test_kandinsky5_transformer_forward_takes_the_rule_and_undoes():
    model = _kandinsky("Kandinsky5Transformer3DModel")
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():  # diffusers zero-initialises the modulation and output layers: randomise them
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    frames = 6
    inputs = dict(hidden_states=torch.randn(1, frames, 4, 4, 2, generator=g),
                  encoder_hidden_states=torch.randn(1, 3, 8, generator=g), timestep=torch.tensor([500.0]),
                  pooled_projections=torch.randn(1, 8, generator=g),
                  visual_rope_pos=[torch.arange(frames), torch.arange(2), torch.arange(2)],
                  text_rope_pos=torch.arange(3), scale_factor=(1, 2, 2), return_dict=False)
    ref = model(**inputs)[0]
    with vd.apply_rule(model, time="none", space="none"):
        assert torch.equal(model(**inputs)[0], ref)
    rules = vd.builtin_rules(model, scale_factor=(1, 2, 2))
    with vd.apply_rule(model, time=rules["time"], space=(rules["height"], rules["width"])):
        assert torch.equal(model(**{**inputs, "scale_factor": (1, 1, 1)})[0], ref)
    with vd.apply_rule(model, time={"name": "riflex", "k": 1, "mode": "unchecked"}):
        assert not torch.equal(model(**inputs)[0], ref)
    assert torch.equal(model(**inputs)[0], ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_kandinsky6_and_chronoedit_take_riflex_and_undo(dtype):
    k6 = _kandinsky("Kandinsky6Transformer3DModel").to(dtype)
    pos = [torch.arange(30), torch.arange(2), torch.arange(2)]
    own = _k_call(k6, pos, (1.0, 2.0, 2.0))
    with vd.apply_rule(k6, time={"name": "riflex", "k": 1}, num_frames=30) as h:
        got = _k_call(k6, pos, (1.0, 2.0, 2.0))
        assert h.last_bands["time"][0].item() == _riflex(1.0, 30) and not torch.equal(got, own)
    assert torch.equal(_k_call(k6, pos, (1.0, 2.0, 2.0)), own) and k6.visual_rope_embeddings.angles_0.dtype == dtype
    chrono = _chronoedit().to(dtype)
    x = torch.zeros(1, 2, 20, 2, 2, dtype=dtype)
    own = chrono.rope(x)
    with vd.apply_rule(chrono, time={"name": "riflex", "k": 1}, num_frames=20):
        assert not _same(chrono.rope(x), own) and chrono.rope.freqs_cos.dtype == dtype
    assert _same(chrono.rope(x), own)


# -------------------------------------------------------------------------------------------------- ChronoEdit
def _chronoedit(head_dim=24):
    torch.manual_seed(0)
    return diffusers.ChronoEditTransformer3DModel(
        patch_size=(1, 1, 1), num_attention_heads=1, attention_head_dim=head_dim, in_channels=2, out_channels=2,
        text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1).eval()


@torch.no_grad()
def test_chronoedit_riflex_formula_two_frame_case_and_undo():
    model = _chronoedit()
    buf = model.rope.freqs_cos
    for frames, extent in ((20, 20), (2, 8)):  # two latent frames sit at positions 0 and temporal_skip_len - 1
        x = torch.zeros(1, 2, frames, 2, 2)
        own = model.rope(x)
        with vd.apply_rule(model, time="none") as h:
            assert h.host == "chronoedit-style" and _same(model.rope(x), own)
        new = _riflex(1.0, extent)  # t_dim 8: band k = 1 is 1 rad / position (period 6)
        assert new != 1.0
        with vd.apply_rule(model, time={"name": "riflex", "k": 1}, num_frames=frames) as h:
            cos, sin = model.rope(x)
            assert h.last_bands["time"][0].item() == new
        pos = torch.tensor([0.0, 7.0]) if frames == 2 else torch.arange(frames, dtype=torch.float64)
        expect = (pos.double() * new).cos().float()
        cols = cos[0, :, 0].reshape(frames, 4, -1)[:, 0]
        assert torch.equal(cols[:, 0], expect) and torch.equal(cols[:, 1], expect)
        assert torch.equal(cos[..., 2:], own[0][..., 2:]) and torch.equal(sin[..., 2:], own[1][..., 2:])
        assert _same(model.rope(x), own) and model.rope.freqs_cos is buf


def test_chronoedit_with_overlapping_axes_is_refused_naming_why():
    model = _chronoedit(head_dim=16)  # builds dims (8, 4, 4) but its forward splits at (6, 5, 5)
    with pytest.raises(ValueError, match=r"builds its tables with axis dims \(8, 4, 4\) but its forward splits them "
                                         r"at \(6, 5, 5\)"):
        vd.apply_rule(model, time={"name": "riflex", "k": 1}, num_frames=20)


# ------------------------------------------------------------------------------------------------------- LTX-2
def _ltx2(rope_type="interleaved", cls_name="LTX2VideoTransformer3DModel"):
    torch.manual_seed(0)
    return getattr(diffusers, cls_name)(
        in_channels=2, out_channels=2, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
        audio_in_channels=2, audio_out_channels=2, audio_num_attention_heads=1, audio_attention_head_dim=12,
        audio_cross_attention_dim=12, num_layers=1, caption_channels=8, rope_type=rope_type).eval()


@pytest.mark.parametrize("cls_name, rope_type", [("LTX2VideoTransformer3DModel", "interleaved"),
                                                ("LTX2VideoTransformer3DModel", "split"),
                                                ("SanaWMLTX2RefinerTransformer3DModel", "interleaved")])
@torch.no_grad()
def test_ltx2_video_stream_takes_riflex_equal_to_the_formula_audio_unchanged(cls_name, rope_type):
    model = _ltx2(rope_type, cls_name)  # SanaWM's refiner copies LTX-2's RoPE
    frames, fps = 40, 24.0
    coords = model.rope.prepare_video_coords(1, frames, 1, 2, "cpu", fps=fps)
    audio_coords = model.audio_rope.prepare_audio_coords(1, 10, "cpu")
    own = model.rope(coords, device="cpu")
    others = {n: getattr(model, n)(c, device="cpu") for n, c in (
        ("audio_rope", audio_coords), ("cross_attn_rope", coords[:, 0:1]), ("cross_attn_audio_rope", audio_coords[:, 0:1]))}
    with vd.apply_rule(model, time="none", space="none") as h:
        assert h.host == "ltx2-video" and _same(model.rope(coords, device="cpu"), own)
    # dim 24 -> 4 bands per axis, omega_j = 1e4^(j/3) pi/2; a latent frame is 8 / fps seconds of 20 (base)
    step = 8 / fps / 20
    omega = [1e4 ** (j / 3) * math.pi / 2 for j in range(4)]
    theta_k = 2 * omega[1] * step  # k = 3 counts from the highest band: LTX band 1
    new = _riflex(theta_k, frames)
    assert new != theta_k
    with vd.apply_rule(model, time={"name": "riflex", "k": 3}, num_frames=frames) as h:
        cos, sin = model.rope(coords, device="cpu")
        assert h.last_bands["time"][2].item() == pytest.approx(new, rel=1e-6)
        for n, c in (("audio_rope", audio_coords), ("cross_attn_rope", coords[:, 0:1]),
                     ("cross_attn_audio_rope", audio_coords[:, 0:1])):
            assert _same(getattr(model, n)(c, device="cpu"), others[n]) and not getattr(model, n)._forward_hooks
    mid = coords[0, 0].mean(-1)  # patch midpoints in seconds
    g = (mid / 20).float()
    expect = ((g * 2 - 1) * torch.tensor(new / (2 * step), dtype=torch.float32)).cos()
    if rope_type == "interleaved":  # (B, N, 24): (t, h, w) per band, each twice
        col, got, ref = 6, cos[0], own[0][0]
        changed = [c for c in range(24) if not torch.equal(got[:, c], ref[:, c])]
        assert changed == [6, 7]
        assert torch.allclose(got[:, col], expect, atol=1e-6)
    else:  # (B, heads, N, 6): the 12 (band, axis) columns split over 2 heads
        flat, ref = cos[0].transpose(0, 1).reshape(cos.shape[2], -1), own[0][0].transpose(0, 1).reshape(cos.shape[2], -1)
        changed = [c for c in range(12) if not torch.equal(flat[:, c], ref[:, c])]
        assert changed == [3]
        assert torch.allclose(flat[:, 3], expect, atol=1e-6)
    assert _same(model.rope(coords, device="cpu"), own) and not model.rope._forward_hooks


@torch.no_grad()
def test_ltx2_transformer_forward_rules_off_bit_identical_and_undo():
    model = _ltx2()
    frames, h, w = 8, 1, 2
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, frames * h * w, 2, generator=g),
                  audio_hidden_states=torch.randn(1, 4, 2, generator=g),
                  encoder_hidden_states=torch.randn(1, 3, 8, generator=g),
                  audio_encoder_hidden_states=torch.randn(1, 3, 8, generator=g), timestep=torch.tensor([500]),
                  num_frames=frames, height=h, width=w, audio_num_frames=4, return_dict=False)
    ref = model(**inputs)
    with vd.apply_rule(model, time="none"):
        assert all(torch.equal(a, b) for a, b in zip(model(**inputs), ref))
    with vd.apply_rule(model, time={"name": "riflex", "k": 1, "mode": "unchecked"}):
        out = model(**inputs)
        assert not torch.equal(out[0], ref[0])
    assert all(torch.equal(a, b) for a, b in zip(model(**inputs), ref))


# ------------------------------------------------------------------------------------------------------ errors
def test_builtin_rules_of_a_model_without_builtin_scaling_and_pi_factor():
    torch.manual_seed(0)
    wan = diffusers.WanTransformer3DModel(patch_size=(1, 1, 1), num_attention_heads=1, attention_head_dim=24,
                                          in_channels=2, out_channels=2, text_dim=8, freq_dim=8, ffn_dim=8,
                                          num_layers=1)
    with pytest.raises(ValueError, match=r"WanTransformer3DModel \(wan-style\) has no built-in RoPE scaling"):
        vd.builtin_rules(wan)
    with pytest.raises(ValueError, match=r"scale_factor= is a Kandinsky option"):
        vd.builtin_rules(wan, scale_factor=(1, 2, 2))
    f = rope_freqs(8)
    assert torch.equal(apply_rule(f, {"name": "pi", "factor": 2.0}, 10000.0, 8), f / 2)
    assert torch.equal(apply_rule(f, {"name": "pi", "factor": 0.5}, 10000.0, 8), f / 0.5)  # < 1 extrapolates


# ------------------------------------------------------------------------- RIFLEx on the model's own bands
@pytest.mark.parametrize("hd, rope_scale, fps", [(24, (2.0, 1.0, 1.0), 30), (30, (20 / 24, 2.0, 2.0), 16),
                                                 (36, (2.0, 2.0, 2.0), None)])
@torch.no_grad()
def test_cosmos_riflex_changes_only_band_k_of_the_models_own_ntk_bands(hd, rope_scale, fps):
    """RIFLEx lowers one band of the checkpoint's RoPE: with a temporal NTK built in (Cosmos 1.0 (2, 1, 1), 2.0 14B
    (20/24, 2, 2)) the other temporal bands stay the host's scaled ones, bit-exactly, and band k is the formula on
    the host's own band (recomputed here from vispos.freqs on base 10000 * rope_scale^(d/(d-2)))."""
    torch.manual_seed(0)
    model = diffusers.CosmosTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=hd, num_layers=1, text_embed_dim=8,
        adaln_lora_dim=4, max_size=(64, 16, 16), patch_size=(1, 1, 1), rope_scale=rope_scale,
        concat_padding_mask=False, extra_pos_embed_type=None).eval()
    frames = 40
    x = torch.zeros(1, 2, frames, 2, 2)
    own = model.rope(x, fps=fps)
    d = model.rope.dim_t
    step = 1.0 if fps is None else 24 / fps
    lam = rope_scale[0] ** (d / (d - 2))
    bands = rope_freqs(d, 10000.0 * lam)  # the model's own temporal bands per position
    rule = ScalingRule("riflex", k=2, test_len=frames * step, mode="unchecked")
    want = apply_rule(bands, rule, 10000.0 * lam, d)
    assert (want != bands).tolist() == [j == 1 for j in range(d // 2)]
    with vd.apply_rule(model, time={"name": "riflex", "k": 2, "mode": "unchecked"}, num_frames=frames) as h:
        cos, sin = model.rope(x, fps=fps)
        assert torch.allclose(h.last_bands["time"], want * step, rtol=1e-12, atol=0)
    changed = [c for c in range(2 * hd // 2) if not torch.equal(cos[:, c], own[0][:, c])]
    half = hd // 2 * 1  # halves layout [t, h, w] * 2: column 1 of each half
    assert changed == [1, half + 1]
    pos = torch.arange(frames, dtype=torch.float32) if fps is None else torch.arange(frames) / fps * 24
    assert torch.equal(cos.reshape(frames, 4, -1)[:, 0, 1], (pos.float() * want[1].float()).cos())
    assert _same(model.rope(x, fps=fps), own)


@torch.no_grad()
def test_kandinsky_riflex_on_an_interpolated_axis_changes_only_band_k_of_its_own_bands():
    """Kandinsky 6 holds scale_factor (1, 2, 2): RIFLEx on the height keeps the interpolation on the other bands
    (bit-exact) and lowers band k of the model's own bands angle / 2."""
    model = _kandinsky("Kandinsky6Transformer3DModel")
    pos = [torch.arange(2), torch.arange(40), torch.arange(3)]
    sf = (1.0, 2.0, 2.0)
    own = _k_call(model, pos, sf)
    bands = rope_freqs(6, 10000.0) / 2.0  # height dim 6: the model's own per-position bands
    want = apply_rule(bands, ScalingRule("riflex", k=1, test_len=40), 10000.0, 6)
    assert (want != bands).tolist() == [True, False, False]
    with vd.apply_rule(model, space=({"name": "riflex", "k": 1}, "none"), height=40, units="token") as h:
        got = _k_call(model, pos, sf)
        assert torch.allclose(h.last_bands["height"], want, rtol=1e-12, atol=0)
    flat, ref = got.reshape(-1, 8, 2, 2), own.reshape(-1, 8, 2, 2)  # (T*H*W, 2 + 3 + 3 bands, 2, 2)
    assert torch.equal(flat[:, :2], ref[:, :2]) and torch.equal(flat[:, 3:], ref[:, 3:])
    h_pos = torch.arange(40).repeat_interleave(3).repeat(2).float()
    assert torch.allclose(flat[:, 2, 0, 0], (h_pos * want[0].float()).cos(), atol=1e-6)
    assert _same(_k_call(model, pos, sf), own)


def test_a_training_length_below_one_rope_position_is_refused_naming_it():
    """train_height=1 latent pixel on a patch-2 host is 0 RoPE positions: the error names the argument and the patch
    (it used to surface as ScalingRule's 'train_len must be ... got 0.0')."""
    torch.manual_seed(0)
    model = diffusers.ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=24, in_channels=2, out_channels=2,
        text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1).eval()
    with pytest.raises(ValueError, match=r"train_height=1 is 0 RoPE positions \(height patch 2\)"):
        vd.apply_rule(model, space="ntk", train_height=1, train_width=4)
    with pytest.raises(ValueError, match=r"height=1 is 0 RoPE positions \(height patch 2\)"):
        vd.apply_rule(model, space="ntk", height=1, train_height=4, train_width=4)


@pytest.mark.parametrize("fps", [None, 16, 30])
@torch.no_grad()
def test_cosmos_N_picks_the_same_k_in_vispos_riflex_with_time_step(fps, capsys):
    """Cosmos's temporal position of latent frame i is i * base_fps / fps: `vispos riflex --time-step base_fps/fps`
    on the model's own bands (base 10000 * rope_scale^(d/(d-2))) picks the k apply_rule picks for the same N (latent
    frames), and says whether RIFLEx acts, for the checked mode too. At 16 fps, N = 12 is band 2 (band 1 without the
    step)."""
    from vispos.cli import main
    from vispos.integrations.diffusers.report import riflex_table

    torch.manual_seed(0)
    model = diffusers.CosmosTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=48, num_layers=1, text_embed_dim=8,
        adaln_lora_dim=4, max_size=(128, 4, 4), patch_size=(1, 1, 1), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type=None).eval()
    d, base = model.rope.dim_t, 10000.0 * model.rope.t_ntk_factor
    step = 1.0 if fps is None else 24 / fps
    frames = 100
    x = torch.zeros(1, 2, frames, 1, 1)
    own = rope_freqs(d, base) * step  # per latent frame
    for N, mode in ((5, "unchecked"), (12, "unchecked"), (30, "checked"), (60, "checked"), (90, "checked")):
        with vd.apply_rule(model, time={"name": "riflex", "N": N, "mode": mode}, num_frames=frames) as h:
            model.rope(x, fps=fps)
            moved = [j + 1 for j in range(d // 2) if h.last_bands["time"][j] != pytest.approx(own[j].item(), rel=1e-12)]
        rep = riflex_table(base=base, dim=d, train_frames=10, frames=frames, N=N, mode=mode, time_step=step)
        assert moved == ([rep["k"]] if rep["applied"] else []), (N, mode)
        assert main(["riflex", "--base", repr(base), "--dim", str(d), "--train-frames", "10", "--frames", str(frames),
                     "--N", str(N), "--mode", mode, "--time-step", repr(step), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["k"] == rep["k"]
    if fps == 16:
        assert riflex_table(base=base, dim=d, train_frames=10, frames=frames, N=12, time_step=step)["k"] == 2
        assert riflex_table(base=base, dim=d, train_frames=10, frames=frames, N=12)["k"] == 1


@torch.no_grad()
def test_time_aware_rules_on_a_video_host_are_refused_at_apply_rule_naming_why():
    """TimeAware reads the transformer call's timestep on the image-DiT adapters only: the video adapters used to
    accept it and fail at the first transformer call with 'call the transformer, not its rope module'."""
    ta = vd.TimeAware("pi", "ntk_base")
    models = [_cosmos((2.0, 1.0, 1.0)), _kandinsky("Kandinsky6Transformer3DModel"), _chronoedit(), _ltx2()]
    for model in models:
        for kw in (dict(space=ta, train_height=4, train_width=4), dict(time=ta, train_frames=4)):
            with pytest.raises(ValueError, match=r"TimeAware .* does not read the denoising timestep .* ids-style"):
                vd.apply_rule(model, **kw)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def test_ltx2_with_a_single_band_per_axis_is_refused_at_apply_rule():
    """dim 6 is one LTX band per axis: refused when the rule is applied (it used to be accepted and raise at the
    first forward); the rule none is still accepted."""
    torch.manual_seed(0)
    model = diffusers.LTX2VideoTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=6, cross_attention_dim=6,
        audio_in_channels=2, audio_out_channels=2, audio_num_attention_heads=1, audio_attention_head_dim=12,
        audio_cross_attention_dim=12, num_layers=1, caption_channels=8).eval()
    with pytest.raises(ValueError, match=r"dim 6 has a single band per axis: rules need 2"):
        vd.apply_rule(model, time={"name": "riflex", "k": 1}, num_frames=30)
    assert not model.rope._forward_hooks
    coords = model.rope.prepare_video_coords(1, 4, 2, 2, "cpu", fps=24.0)
    with vd.apply_rule(model, time="none"):
        assert _same(model.rope(coords, device="cpu"), model.rope(coords, device="cpu"))
